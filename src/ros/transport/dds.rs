//! The default transport: ros2-client (pure-Rust DDS, RustDDS underneath), no ROS
//! installation needed. The node joins the ROS graph under its configured name and
//! namespace (`ros2 node list` shows it when the ROS distribution it was built for
//! matches the robot's). Types are handled through [`RawCdrSeed`] and [`RawBody`], so
//! no per-type code exists.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use ros2_client::dds::rustdds;
use ros2_client::dds::{Context, Node, Publisher};
use ros2_client::qos::{Durability as RDurability, History, QosProfile, WhenFull};
use ros2_client::{MessageTypeName, Name, NodeName, NodeOptions};
use tokio::sync::mpsc;

use super::dds_threads::DdsThreads;
use super::{
    Durability, Qos, RawBody, RawCdr, RawCdrSeed, RawPublisher, Reliability, Sample, ServiceRmw,
    SetBoolReply, Transport, TransportError,
};
use crate::ros::registry::TypeName;
use crate::ros::schema::MsgSchema;

/// Where and as whom the node joins the ROS graph.
#[derive(Debug, Clone)]
pub struct DdsOptions {
    pub domain_id: u16,
    pub node_name: String,
    pub namespace: String,
    /// Only these local addresses are used for DDS (empty: every interface).
    pub only_networks: Vec<IpAddr>,
}

/// `std_srvs/srv/SetBool` request and response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SetBoolRequest {
    data: bool,
}
impl ros2_client::Message for SetBoolRequest {}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SetBoolResponse {
    success: bool,
    message: String,
}
impl ros2_client::Message for SetBoolResponse {}

type SetBoolClient = ros2_client::Client<SetBoolRequest, SetBoolResponse>;

pub struct DdsTransport {
    context: Context,
    node: Mutex<Node>,
    set_bool_clients: Mutex<std::collections::HashMap<(String, ServiceRmw), Arc<SetBoolClient>>>,
    fq_name: String,
    spinner: tokio::task::JoinHandle<()>,
    readers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    threads: DdsThreads,
}

impl Drop for DdsTransport {
    fn drop(&mut self) {
        self.spinner.abort();
        if let Ok(r) = self.readers.lock() {
            for t in r.iter() {
                t.abort();
            }
        }
    }
}

fn to_profile(q: Qos) -> QosProfile {
    let base = match q.reliability {
        Reliability::Reliable => {
            QosProfile::publisher_default().reliability_reliable(WhenFull::DEFAULT)
        }
        Reliability::BestEffort => QosProfile::publisher_default().reliability_best_effort(),
    };
    base.durability(match q.durability {
        Durability::Volatile => RDurability::Volatile,
        Durability::TransientLocal => RDurability::TransientLocal,
    })
    .history(History::KeepLast {
        depth: q.depth.max(1),
    })
}

fn message_type(t: &TypeName) -> MessageTypeName {
    MessageTypeName::new(&t.package, &t.name)
}

fn topic_name(topic: &str) -> Result<Name, TransportError> {
    Name::parse(topic).map_err(|e| TransportError::Name(topic.to_owned(), e.to_string()))
}

impl DdsTransport {
    /// The client of a SetBool service, made on first use and kept.
    fn set_bool_client(
        &self,
        service: &str,
        rmw: ServiceRmw,
    ) -> Result<Arc<SetBoolClient>, TransportError> {
        let key = (service.to_owned(), rmw);
        let mut clients = self
            .set_bool_clients
            .lock()
            .map_err(|_| TransportError::Start("service client lock poisoned".into()))?;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let name = topic_name(service)?;
        let mapping = match rmw {
            ServiceRmw::Fastrtps => ros2_client::ServiceMapping::Enhanced,
            ServiceRmw::Cyclonedds => ros2_client::ServiceMapping::Cyclone,
        };
        let qos = to_profile(Qos::ros_default());
        let client = self
            .node
            .lock()
            .map_err(|_| TransportError::Start("node lock poisoned".into()))?
            .create_client::<SetBoolRequest, SetBoolResponse>(
                mapping,
                &name,
                &ros2_client::ServiceTypeName::new("std_srvs", "SetBool"),
                qos.clone(),
                qos,
            )
            .map_err(|e| TransportError::Create {
                what: "a service client",
                topic: service.to_owned(),
                reason: format!("{e:?}"),
            })?;
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Joins the domain and starts the node. Needs a tokio runtime.
    pub fn start(opts: &DdsOptions) -> Result<Self, TransportError> {
        if let Ok(distro) = std::env::var("ROS_DISTRO") {
            let built = ros2_client::COMPILED_ROS_DISTRO.as_str();
            if !distro.is_empty() && distro != built {
                tracing::warn!(built_for = built, ros_distro = %distro,
                    "This agent was built for another ROS 2 distribution: data flows, but `ros2 node list` will not show it. Build with the matching feature.");
            }
        }
        let mut builder = rustdds::DomainParticipantBuilder::new(opts.domain_id);
        if !opts.only_networks.is_empty() {
            builder = builder.with_only_networks(opts.only_networks.clone());
        }
        let (dp, threads) = DdsThreads::start(|| builder.build())
            .map_err(|e| TransportError::Start(e.to_string()))?;
        let context = Context::from_domain_participant(dp)
            .map_err(|e| TransportError::Start(e.to_string()))?;
        let name = NodeName::new(&opts.namespace, &opts.node_name).map_err(|e| {
            TransportError::Name(
                format!("{}/{}", opts.namespace, opts.node_name),
                e.to_string(),
            )
        })?;
        let fq_name = name.fully_qualified_name();
        let mut node = context
            .new_node(name, NodeOptions::new().enable_rosout(true))
            .map_err(|e| TransportError::Start(format!("{e:?}")))?;
        let spinner = node
            .spinner()
            .map_err(|e| TransportError::Start(format!("{e:?}")))?;
        let spinner = tokio::spawn(async move {
            if let Err(e) = spinner.spin().await {
                tracing::warn!(error = ?e, "The ROS 2 node's background task stopped.");
            }
        });
        tracing::info!(node = %fq_name, domain = opts.domain_id, distro = ros2_client::COMPILED_ROS_DISTRO.as_str(),
            "Joined the ROS 2 graph.");
        Ok(Self {
            context,
            node: Mutex::new(node),
            set_bool_clients: Mutex::new(std::collections::HashMap::new()),
            fq_name,
            spinner,
            readers: Mutex::new(Vec::new()),
            threads,
        })
    }
}

/// Under load a reader takes samples in rounds: once a round (the samples that were
/// ready without waiting) reaches `ROUND`, it pauses `ROUND_PAUSE` before the next
/// instead of waiting to be woken. Otherwise the DDS thread wakes the agent every few
/// samples, and each wake-up costs two thread switches: at 30,000 msgs/s this takes a
/// fifth of the agent's CPU. A reader pauses only while its rounds stay under a
/// quarter of its history (QoS depth): a reader falling behind, or with a short
/// history, takes samples as they come, so a pause cannot make the history overflow.
/// At low rates rounds are a sample or two and nothing waits.
const ROUND: usize = 8;
const ROUND_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// RustDDS keeps the last 64 samples of each topic it reads (or the QoS depth, if
/// larger) after they were taken, and ros2-client has no way to lower that.
const DDS_KEEPS: usize = 64;

/// How many of a topic's samples the DDS cache holds and what they add up to, in bytes,
/// when that is worth a line in the log (camera frames): `None` under 16 MB.
fn cache_footprint(sample_len: usize, depth: usize) -> Option<(usize, usize)> {
    let kept = depth.max(DDS_KEEPS);
    let bytes = sample_len.saturating_mul(kept);
    (bytes >= 16 << 20).then_some((kept, bytes))
}

struct DdsPublisher {
    topic: String,
    inner: Publisher<RawBody>,
    context: Context,
}

impl RawPublisher for DdsPublisher {
    fn publish(&self, cdr: &Bytes) -> Result<(), TransportError> {
        self.inner
            .publish(RawBody::from_cdr(cdr))
            .map_err(|e| TransportError::Publish {
                topic: self.topic.clone(),
                reason: format!("{e:?}"),
            })
    }

    fn subscription_count(&self) -> usize {
        // Matched readers as DDS discovery knows them.
        let guid = self.inner.guid();
        self.context
            .domain_participant()
            .discovered_readers()
            .iter()
            .filter(|r| {
                r.subscription_topic_data.topic_name() == &format!("rt{}", self.topic)
                    && r.reader_proxy.remote_reader_guid != guid
            })
            .count()
    }
}

impl Transport for DdsTransport {
    fn subscribe(
        &self,
        topic: &str,
        type_name: &TypeName,
        schema: Arc<MsgSchema>,
        qos: Qos,
        sink: mpsc::Sender<Sample>,
    ) -> Result<(), TransportError> {
        let name = topic_name(topic)?;
        let create = |what: &'static str, e: String| TransportError::Create {
            what,
            topic: topic.to_owned(),
            reason: e,
        };
        let profile = to_profile(qos);
        let sub = {
            let mut node = self
                .node
                .lock()
                .map_err(|_| create("a subscription", "node lock poisoned".into()))?;
            let t = node
                .create_topic(&name, message_type(type_name), &profile)
                .map_err(|e| create("a topic", format!("{e:?}")))?;
            node.create_subscription::<RawCdr>(&t, Some(profile))
                .map_err(|e| create("a subscription", format!("{e:?}")))?
        };
        let topic = topic.to_owned();
        let ty = type_name.to_string();
        let depth = qos.depth;
        let task = tokio::spawn(async move {
            let stream = sub.async_stream_seed(RawCdrSeed { schema });
            futures::pin_mut!(stream);
            let mut warned = false;
            let mut noted = false;
            let mut round = 0usize;
            loop {
                let r = match stream.next().now_or_never() {
                    Some(Some(r)) => {
                        round += 1;
                        r
                    }
                    Some(None) => break,
                    None => {
                        if round >= ROUND && round * 4 < depth {
                            round = 0;
                            tokio::time::sleep(ROUND_PAUSE).await;
                            continue;
                        }
                        round = 1;
                        match stream.next().await {
                            Some(r) => r,
                            None => break,
                        }
                    }
                };
                match r {
                    Ok((raw, info)) => {
                        if !noted {
                            noted = true;
                            if let Some((kept, bytes)) = cache_footprint(raw.0.len(), depth) {
                                tracing::info!(topic = %topic, sample_bytes = raw.0.len(), held_mb = (bytes + 500_000) / 1_000_000,
                                    "Messages on this topic are large: the DDS transport keeps the last {kept} of them in memory.");
                            }
                        }
                        let sample = Sample {
                            cdr: raw.0,
                            source_time_ns: info.source_timestamp().map(|t| t.to_nanos()),
                        };
                        if sink.send(sample).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if !warned {
                            warned = true;
                            tracing::warn!(topic = %topic, type_name = %ty, error = ?e,
                                "A message on this topic does not fit its configured type; such messages are skipped.");
                        }
                    }
                }
            }
        });
        if let Ok(mut r) = self.readers.lock() {
            r.push(task);
        }
        Ok(())
    }

    fn publisher(
        &self,
        topic: &str,
        type_name: &TypeName,
        _schema: Arc<MsgSchema>,
        qos: Qos,
    ) -> Result<Arc<dyn RawPublisher>, TransportError> {
        let name = topic_name(topic)?;
        let create = |e: String| TransportError::Create {
            what: "a publisher",
            topic: topic.to_owned(),
            reason: e,
        };
        let profile = to_profile(qos);
        let mut node = self
            .node
            .lock()
            .map_err(|_| create("node lock poisoned".into()))?;
        let t = node
            .create_topic(&name, message_type(type_name), &profile)
            .map_err(|e| create(format!("{e:?}")))?;
        let inner = node
            .create_publisher::<RawBody>(&t, Some(profile))
            .map_err(|e| create(format!("{e:?}")))?;
        let resolved = if topic.starts_with('/') {
            topic.to_owned()
        } else {
            format!("{}/{}", node.namespace().trim_end_matches('/'), topic)
        };
        Ok(Arc::new(DdsPublisher {
            topic: resolved,
            inner,
            context: self.context.clone(),
        }))
    }

    fn discovered_publisher_qos(&self, topic: &str) -> Option<Qos> {
        let dds_name = format!(
            "rt{}",
            if topic.starts_with('/') {
                topic.to_owned()
            } else {
                format!("/{topic}")
            }
        );
        let writers = self.context.domain_participant().discovered_writers();
        let w = writers
            .iter()
            .find(|w| w.publication_topic_data.topic_name == dds_name)?;
        let d = &w.publication_topic_data;
        Some(Qos {
            reliability: match d.reliability {
                Some(rustdds::policy::Reliability::BestEffort) => Reliability::BestEffort,
                _ => Reliability::Reliable,
            },
            durability: match d.durability {
                Some(rustdds::policy::Durability::Volatile) | None => Durability::Volatile,
                Some(_) => Durability::TransientLocal,
            },
            depth: 10,
        })
    }

    fn node_name(&self) -> String {
        self.fq_name.clone()
    }

    fn stopped(&self) -> Option<String> {
        self.threads.ended().map(|name| {
            let what = if name.contains("discove") {
                "discovery"
            } else {
                "event loop"
            };
            format!("the DDS {what} thread ({name}) ended")
        })
    }

    fn set_bool(
        &self,
        service: &str,
        rmw: ServiceRmw,
        data: bool,
        timeout: std::time::Duration,
    ) -> futures::future::BoxFuture<'static, Result<SetBoolReply, TransportError>> {
        let client = self.set_bool_client(service, rmw);
        let service = service.to_owned();
        Box::pin(async move {
            let client = client?;
            let call = |reason: String| TransportError::Call {
                service: service.clone(),
                reason,
            };
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let id = client
                    .async_send_request(SetBoolRequest { data })
                    .await
                    .map_err(|e| call(format!("{e:?}")))?;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let wait = left.min(std::time::Duration::from_millis(500));
                match tokio::time::timeout(wait, client.async_receive_response(id)).await {
                    Ok(Ok(r)) => {
                        return Ok(SetBoolReply {
                            success: r.success,
                            message: r.message,
                        })
                    }
                    Ok(Err(e)) => return Err(call(format!("{e:?}"))),
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        return Err(TransportError::NoReply {
                            service,
                            ms: timeout.as_millis() as u64,
                        })
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_topics_holding_many_megabytes_are_named() {
        // A 640x480 rgb8 frame with its header: 64 of them.
        let frame = 640 * 480 * 3 + 60;
        assert_eq!(cache_footprint(frame, 5), Some((64, frame * 64)));
        // A deeper history holds more.
        assert_eq!(cache_footprint(frame, 100), Some((100, frame * 100)));
        // Small messages, even with a deep history, are not worth a line.
        assert_eq!(cache_footprint(130, 1000), None);
        assert_eq!(cache_footprint(200_000, 10), None);
    }
}
