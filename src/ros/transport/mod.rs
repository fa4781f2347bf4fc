//! Moving raw CDR on and off the ROS 2 graph, for types named at run time. The bridge
//! and detection see only [`Transport`]; which middleware stack is behind it (the
//! pure-Rust DDS one by default, rcl later) is decided here.

pub mod dds;
pub mod params;
#[cfg(feature = "rcl")]
pub mod rcl;
pub mod typesupport;

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::config::{RosSettings, TransportKind};
use super::registry::TypeName;
use super::schema::MsgSchema;

/// Joins the ROS 2 graph with the transport the configuration names.
pub fn start(ros: &RosSettings) -> Result<Arc<dyn Transport>, TransportError> {
    match ros.transport {
        TransportKind::Dds => Ok(Arc::new(dds::DdsTransport::start(&dds::DdsOptions {
            domain_id: ros.domain_id,
            node_name: ros.node_name.clone(),
            namespace: ros.namespace.clone(),
            only_networks: ros.only_networks.clone(),
            distro: ros.distro.clone(),
            config_file: ros.config_file.clone(),
        })?)),
        #[cfg(feature = "rcl")]
        TransportKind::Rcl => {
            if !ros.only_networks.is_empty() {
                tracing::warn!(
                    "ros.only_networks is not used by the rcl transport: configure the RMW \
                     (e.g. CYCLONEDDS_URI) instead."
                );
            }
            Ok(Arc::new(rcl::RclTransport::start(&rcl::RclOptions {
                node_name: ros.node_name.clone(),
                namespace: ros.namespace.clone(),
                domain_id: ros.domain_id,
                config_file: ros.config_file.clone(),
            })?))
        }
        #[cfg(not(feature = "rcl"))]
        TransportKind::Rcl => Err(TransportError::Start(
            "this edge-agent was built without the rcl transport".into(),
        )),
    }
}

/// One message taken from a topic: its serialized form (encapsulation header
/// included, little-endian) and the publisher's timestamp.
#[derive(Debug, Clone)]
pub struct Sample {
    pub cdr: Bytes,
    /// Nanoseconds since the epoch, as stamped by the publisher's middleware.
    pub source_time_ns: Option<i64>,
    /// Messages of the same publisher that the middleware dropped before this one (its
    /// history was full), known from gaps in the publisher's sequence numbers where the
    /// RMW hands them out (rmw_fastrtps, rcl transport); 0 when none or unknown.
    pub lost_before: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reliability {
    Reliable,
    BestEffort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    Volatile,
    TransientLocal,
}

/// The QoS of one subscription or publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    pub reliability: Reliability,
    pub durability: Durability,
    /// History depth (keep last N).
    pub depth: usize,
}

impl Qos {
    /// ROS 2's default: reliable, volatile, keep last 10.
    pub const fn ros_default() -> Self {
        Self {
            reliability: Reliability::Reliable,
            durability: Durability::Volatile,
            depth: 10,
        }
    }

    /// ROS 2's sensor data profile: best effort, volatile, keep last 5.
    pub const fn sensor_data() -> Self {
        Self {
            reliability: Reliability::BestEffort,
            durability: Durability::Volatile,
            depth: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("ROS 2 name '{0}' is not valid: {1}")]
    Name(String, String),
    #[error("cannot start the ROS 2 node: {0}")]
    Start(String),
    #[error("cannot create {what} for {topic}: {reason}")]
    Create {
        what: &'static str,
        topic: String,
        reason: String,
    },
    #[error("cannot publish on {topic}: {reason}")]
    Publish { topic: String, reason: String },
    #[error("service {service} did not answer within {ms} ms")]
    NoReply { service: String, ms: u64 },
    #[error("cannot call service {service}: {reason}")]
    Call { service: String, reason: String },
}

impl TransportError {
    /// Makes "cannot create `what` on `topic`" errors from their reasons.
    pub fn create<'a>(what: &'static str, topic: &'a str) -> impl Fn(String) -> Self + 'a {
        move |reason| Self::Create {
            what,
            topic: topic.to_owned(),
            reason,
        }
    }
}

/// A publisher of raw CDR on one topic.
pub trait RawPublisher: Send + Sync {
    /// `cdr` is a full serialized message (header included), as the codec makes it.
    fn publish(&self, cdr: &Bytes) -> Result<(), TransportError>;
    /// How many subscriptions on the graph match this publisher.
    fn subscription_count(&self) -> usize;
    /// Waits (blocking, up to `timeout`) until every matched reliable reader has
    /// acknowledged what was published; whether they all did.
    fn wait_acknowledged(&self, timeout: std::time::Duration) -> bool {
        let _ = timeout;
        true
    }
}

/// How the robot's ROS 2 middleware carries service calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceRmw {
    /// rmw_fastrtps (ROS 2's default): the request id travels in the sample's metadata.
    #[default]
    Fastrtps,
    /// rmw_cyclonedds: the request id is the first 16 bytes of each sample.
    Cyclonedds,
}

/// The answer of a `std_srvs/srv/SetBool` service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetBoolReply {
    pub success: bool,
    pub message: String,
}

/// Answers one request of a served service: the request message (encapsulation header
/// included) in, the response message out; `Err` sends no reply (the client times out),
/// so it is for requests that cannot be read at all.
pub type ServeFn =
    Arc<dyn Fn(Bytes) -> futures::future::BoxFuture<'static, Result<Bytes, String>> + Send + Sync>;

/// The ROS 2 side of the agent.
pub trait Transport: Send + Sync {
    /// Samples of `topic` are sent to `sink` until the transport stops. When `sink` is
    /// full the reader waits, and the middleware's history (QoS depth) decides what
    /// is kept.
    fn subscribe(
        &self,
        topic: &str,
        type_name: &TypeName,
        schema: Arc<MsgSchema>,
        qos: Qos,
        sink: mpsc::Sender<Sample>,
    ) -> Result<(), TransportError>;

    fn publisher(
        &self,
        topic: &str,
        type_name: &TypeName,
        schema: Arc<MsgSchema>,
        qos: Qos,
    ) -> Result<Arc<dyn RawPublisher>, TransportError>;

    /// The QoS a discovered publisher of `topic` offers, if one is known.
    fn discovered_publisher_qos(&self, topic: &str) -> Option<Qos>;

    /// The node's fully qualified name, e.g. `/robot/edge_agent`.
    fn node_name(&self) -> String;

    /// Why the transport can no longer move messages, once that has happened: the
    /// agent then restarts rather than run on deaf to the robot.
    fn stopped(&self) -> Option<String> {
        None
    }

    /// Calls service `service` of type `srv` (`pkg/srv/Name`) with `request` (the request
    /// message, encapsulation header included); the reply message, or `None` when none
    /// came within `timeout`. With `resend` the request goes again every 500 ms until
    /// answered (the server may not have matched the client yet): only for requests
    /// that may be carried out twice.
    fn call(
        &self,
        service: &str,
        srv: &TypeName,
        request: Bytes,
        rmw: ServiceRmw,
        timeout: std::time::Duration,
        resend: bool,
    ) -> futures::future::BoxFuture<'static, Result<Option<Bytes>, TransportError>> {
        let _ = (srv, request, rmw, timeout, resend);
        let service = service.to_owned();
        Box::pin(async move {
            Err(TransportError::Call {
                service,
                reason: "this transport does not call services of any type".into(),
            })
        })
    }

    /// Whether a server of `service` is on the graph and matched with this side's client,
    /// so that a request sent now reaches it and its reply comes back.
    fn service_ready(
        &self,
        service: &str,
        srv: &TypeName,
        rmw: ServiceRmw,
    ) -> Result<bool, TransportError> {
        let _ = (srv, rmw);
        Err(TransportError::Call {
            service: service.to_owned(),
            reason: "this transport does not call services of any type".into(),
        })
    }

    /// Serves service `service` of type `srv` (`pkg/srv/Name`, or an action's part such as
    /// `pkg/action/Name_SendGoal`) to clients of either rmw: each request is handed to
    /// `handler` on its own task, so a slow answer holds up no other request.
    fn serve(&self, service: &str, srv: &TypeName, handler: ServeFn) -> Result<(), TransportError> {
        let _ = (srv, handler);
        Err(TransportError::Create {
            what: "a service",
            topic: service.to_owned(),
            reason: "this transport does not serve services".into(),
        })
    }

    /// Calls the `std_srvs/srv/SetBool` service `service` (a camera's on/off switch),
    /// sending the request again every 500 ms until a reply or `timeout` (the server
    /// may not be discovered yet; switching on or off twice is harmless).
    fn set_bool(
        &self,
        service: &str,
        rmw: ServiceRmw,
        data: bool,
        timeout: std::time::Duration,
    ) -> futures::future::BoxFuture<'static, Result<SetBoolReply, TransportError>>;
}

/// Switches a camera through its `std_srvs/srv/SetBool` service with [`Transport::call`],
/// sending the request again every 500 ms until a reply or `timeout` (switching on or
/// off twice is harmless).
pub(crate) fn set_bool_by_call(
    transport: &(impl Transport + ?Sized),
    service: &str,
    rmw: ServiceRmw,
    data: bool,
    timeout: std::time::Duration,
) -> futures::future::BoxFuture<'static, Result<SetBoolReply, TransportError>> {
    use crate::ros::codec::{self, DecodeOptions, EncodeOptions};
    let ty = TypeName {
        package: "std_srvs".into(),
        kind: "srv",
        name: "SetBool".into(),
    };
    let reg = params::bundled();
    let call = |reason: String| TransportError::Call {
        service: service.to_owned(),
        reason,
    };
    let schemas = reg
        .schema("std_srvs/srv/SetBool_Request")
        .and_then(|rq| Ok((rq, reg.schema("std_srvs/srv/SetBool_Response")?)))
        .map_err(|e| call(e.to_string()));
    let request = schemas
        .as_ref()
        .map_err(|e| call(e.to_string()))
        .and_then(|(rq, _)| {
            codec::encode_value(
                rq,
                &serde_json::json!({ "data": data }),
                &EncodeOptions::default(),
            )
            .map(Bytes::from)
            .map_err(|e| call(e.to_string()))
        });
    let reply = request.map(|r| transport.call(service, &ty, r, rmw, timeout, true));
    let service = service.to_owned();
    Box::pin(async move {
        let (_, rs) = schemas?;
        let Some(reply) = reply?.await? else {
            return Err(TransportError::NoReply {
                service,
                ms: timeout.as_millis() as u64,
            });
        };
        let v = codec::decode_to_value(&rs, &reply, &DecodeOptions::default()).map_err(|e| {
            TransportError::Call {
                service: service.clone(),
                reason: format!("the reply: {e}"),
            }
        })?;
        Ok(SetBoolReply {
            success: v["success"].as_bool().unwrap_or(false),
            message: v["message"].as_str().unwrap_or_default().to_owned(),
        })
    })
}
