//! The rcl transport (cargo feature `rcl`): the agent is an ordinary rcl node on whatever
//! RMW the robot uses (`RMW_IMPLEMENTATION`), through rcl's C interface (r2r's `r2r_rcl`
//! bindings, generated from the sourced ROS 2 when the agent is built). rcl reads the
//! `--ros-args` on the command line (remaps, log levels, enclaves) and takes the domain
//! from `ROS_DOMAIN_ID`.
//!
//! Messages move as serialized CDR (`rcl_take_serialized_message`,
//! `rcl_publish_serialized_message`), which is what the agent's codec reads and writes.
//! rcl still needs each type's type support; it is loaded by name when a topic or service
//! is created ([`super::typesupport`]), from the packages installed in the environment
//! the agent runs in, so a new message package needs no new build of the agent.
//!
//! Services have no serialized form in rcl (Humble): a request or reply goes through the
//! type's C struct, laid out by its introspection type support and converted to and from
//! CDR by the RMW (`rmw_serialize`, `rmw_deserialize`).
//!
//! One thread waits on every subscription, service and client (`rcl_wait`) and hands
//! what arrives to tokio: samples into each subscription's channel, requests to their
//! handler's task, replies to their caller. A subscription whose channel is full is left
//! out of the wait until there is room, so the middleware's history (the rule's depth)
//! decides what is kept, as with the DDS transport.

#![allow(unsafe_code)]

mod node;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use tokio::sync::mpsc;

use self::node::{Client, Node, Publisher, Service, Subscription};
use super::typesupport::{Flavor, Handle, Loader, TypeSupportError};
use super::{
    Qos, RawPublisher, Sample, ServeFn, ServiceRmw, SetBoolReply, Transport, TransportError,
};
use crate::ros::registry::TypeName;
use crate::ros::schema::MsgSchema;

/// As whom the node joins the graph; `--ros-args` remaps on the command line win.
#[derive(Debug, Clone)]
pub struct RclOptions {
    pub node_name: String,
    pub namespace: String,
    /// The configured domain; rcl takes it from `ROS_DOMAIN_ID`, so the two must agree.
    pub domain_id: u16,
    /// Served as the node's `config_file` parameter.
    pub config_file: Option<PathBuf>,
}

/// The domain rcl will join: `ROS_DOMAIN_ID`, 0 when unset.
pub fn environment_domain() -> Result<u16, String> {
    match std::env::var("ROS_DOMAIN_ID") {
        Err(_) => Ok(0),
        Ok(v) if v.trim().is_empty() => Ok(0),
        Ok(v) => v
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("ROS_DOMAIN_ID is '{v}', not a domain number")),
    }
}

/// Why `ros.domain_id` cannot be used with the rcl transport, if it cannot.
pub fn check_domain(configured: u16) -> Result<(), String> {
    let env = environment_domain()?;
    if env != configured {
        return Err(format!(
            "ros.domain_id is {configured} but ROS_DOMAIN_ID is {env}; under the rcl \
             transport the domain comes from ROS_DOMAIN_ID, so set that instead"
        ));
    }
    Ok(())
}

/// The process's type support loader (libraries stay loaded for the process's life).
fn loader() -> &'static Loader {
    static L: std::sync::OnceLock<Loader> = std::sync::OnceLock::new();
    L.get_or_init(Loader::default)
}

/// Whether the type support of `type_name` (a message, or a service with
/// [`Handle::Service`]) can be loaded in this environment.
pub fn check_type_as(type_name: &TypeName, handle: Handle) -> Result<(), String> {
    loader()
        .get(Flavor::C, handle, type_name)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A message type as rcl and the RMW handle it: the type support rcl and `rmw_serialize`
/// take, and the C layout of its struct.
#[derive(Clone, Copy)]
pub(crate) struct MessageType {
    pub ts: *const r2r_rcl::rosidl_message_type_support_t,
    pub members: *const r2r_rcl::rosidl_typesupport_introspection_c__MessageMembers,
}

// Both point at constant data of libraries that stay loaded.
unsafe impl Send for MessageType {}
unsafe impl Sync for MessageType {}

fn message_type(ty: &TypeName, with_layout: bool) -> Result<MessageType, TypeSupportError> {
    let ts = loader().get(Flavor::C, Handle::Message, ty)?;
    let members = if with_layout {
        let intro = loader().get(Flavor::IntrospectionC, Handle::Message, ty)?;
        // SAFETY: an introspection handle's `data` is its MessageMembers.
        unsafe {
            (*(intro.0 as *const r2r_rcl::rosidl_message_type_support_t)).data
                as *const r2r_rcl::rosidl_typesupport_introspection_c__MessageMembers
        }
    } else {
        std::ptr::null()
    };
    Ok(MessageType {
        ts: ts.0 as *const _,
        members,
    })
}

/// A service's type support and its request's and reply's message types.
pub(crate) struct ServiceType {
    pub ts: *const r2r_rcl::rosidl_service_type_support_t,
    pub request: MessageType,
    pub response: MessageType,
}

unsafe impl Send for ServiceType {}
unsafe impl Sync for ServiceType {}

fn service_type(srv: &TypeName) -> Result<ServiceType, TypeSupportError> {
    let part = |suffix: &str| TypeName {
        package: srv.package.clone(),
        kind: srv.kind,
        name: format!("{}_{suffix}", srv.name),
    };
    // An action's parts name their request and reply after the whole:
    // `Fibonacci_SendGoal` has `Fibonacci_SendGoal_Request`.
    let ts = loader().get(Flavor::C, Handle::Service, srv)?;
    Ok(ServiceType {
        ts: ts.0 as *const _,
        request: message_type(&part("Request"), true)?,
        response: message_type(&part("Response"), true)?,
    })
}

/// Sets `q` in `p` (a default profile of rcl's entity options).
pub(crate) fn apply_qos(p: &mut r2r_rcl::rmw_qos_profile_t, q: Qos) {
    use r2r_rcl::*;
    p.history = rmw_qos_history_policy_t::RMW_QOS_POLICY_HISTORY_KEEP_LAST;
    p.depth = q.depth.max(1);
    p.reliability = match q.reliability {
        super::Reliability::Reliable => {
            rmw_qos_reliability_policy_t::RMW_QOS_POLICY_RELIABILITY_RELIABLE
        }
        super::Reliability::BestEffort => {
            rmw_qos_reliability_policy_t::RMW_QOS_POLICY_RELIABILITY_BEST_EFFORT
        }
    };
    p.durability = match q.durability {
        super::Durability::Volatile => {
            rmw_qos_durability_policy_t::RMW_QOS_POLICY_DURABILITY_VOLATILE
        }
        super::Durability::TransientLocal => {
            rmw_qos_durability_policy_t::RMW_QOS_POLICY_DURABILITY_TRANSIENT_LOCAL
        }
    };
}

fn from_rmw_qos(p: &r2r_rcl::rmw_qos_profile_t) -> Qos {
    use r2r_rcl::*;
    Qos {
        reliability: match p.reliability {
            rmw_qos_reliability_policy_t::RMW_QOS_POLICY_RELIABILITY_BEST_EFFORT => {
                super::Reliability::BestEffort
            }
            _ => super::Reliability::Reliable,
        },
        durability: match p.durability {
            rmw_qos_durability_policy_t::RMW_QOS_POLICY_DURABILITY_TRANSIENT_LOCAL => {
                super::Durability::TransientLocal
            }
            _ => super::Durability::Volatile,
        },
        depth: match p.history {
            rmw_qos_history_policy_t::RMW_QOS_POLICY_HISTORY_KEEP_LAST if p.depth > 0 => p.depth,
            _ => Qos::ros_default().depth,
        },
    }
}

pub struct RclTransport {
    node: Arc<Node>,
    fq_name: String,
    clients: Mutex<HashMap<String, Arc<Client>>>,
}

impl Drop for RclTransport {
    fn drop(&mut self) {
        self.node.stop();
    }
}

impl RclTransport {
    /// Initialises rcl (with this process's command line) and creates the node. Must be
    /// called inside a tokio runtime: requests are handled on its tasks.
    pub fn start(opts: &RclOptions) -> Result<Self, TransportError> {
        check_domain(opts.domain_id).map_err(TransportError::Start)?;
        let node = Node::start(
            &opts.node_name,
            &opts.namespace,
            tokio::runtime::Handle::current(),
        )
        .map_err(TransportError::Start)?;
        let fq_name = node.fully_qualified_name();
        let t = Self {
            node,
            fq_name,
            clients: Mutex::new(HashMap::new()),
        };
        super::params::serve(&t, &t.fq_name, opts.config_file.as_deref())?;
        tracing::info!(node = %t.fq_name, "Joined the ROS 2 graph through rcl.");
        Ok(t)
    }

    fn client(&self, service: &str, srv: &TypeName) -> Result<Arc<Client>, TransportError> {
        let key = format!("{service} {srv}");
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let call = |reason: String| TransportError::Call {
            service: service.to_owned(),
            reason,
        };
        let ty = service_type(srv).map_err(|e| call(e.to_string()))?;
        let client = self.node.client(service, ty).map_err(call)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

struct RclPublisher {
    publisher: Publisher,
    topic: String,
}

impl RawPublisher for RclPublisher {
    fn publish(&self, cdr: &Bytes) -> Result<(), TransportError> {
        self.publisher
            .publish(cdr)
            .map_err(|reason| TransportError::Publish {
                topic: self.topic.clone(),
                reason,
            })
    }

    fn subscription_count(&self) -> usize {
        self.publisher.subscription_count()
    }

    fn wait_acknowledged(&self, timeout: Duration) -> bool {
        self.publisher.wait_acknowledged(timeout)
    }
}

impl Transport for RclTransport {
    fn subscribe(
        &self,
        topic: &str,
        type_name: &TypeName,
        _schema: Arc<MsgSchema>,
        qos: Qos,
        sink: mpsc::Sender<Sample>,
    ) -> Result<(), TransportError> {
        let create = TransportError::create("a subscription", topic);
        let ty = message_type(type_name, false).map_err(|e| create(e.to_string()))?;
        let sub: Subscription = self
            .node
            .subscription(topic, ty, qos, sink)
            .map_err(create)?;
        self.node.add_subscription(sub);
        Ok(())
    }

    fn publisher(
        &self,
        topic: &str,
        type_name: &TypeName,
        _schema: Arc<MsgSchema>,
        qos: Qos,
    ) -> Result<Arc<dyn RawPublisher>, TransportError> {
        let create = TransportError::create("a publisher", topic);
        let ty = message_type(type_name, false).map_err(|e| create(e.to_string()))?;
        let publisher = self.node.publisher(topic, ty, qos).map_err(create)?;
        Ok(Arc::new(RclPublisher {
            publisher,
            topic: topic.to_owned(),
        }))
    }

    fn discovered_publisher_qos(&self, topic: &str) -> Option<Qos> {
        self.node
            .publishers_qos(topic)
            .ok()?
            .first()
            .map(from_rmw_qos)
    }

    fn node_name(&self) -> String {
        self.fq_name.clone()
    }

    fn stopped(&self) -> Option<String> {
        self.node.stopped()
    }

    fn call(
        &self,
        service: &str,
        srv: &TypeName,
        request: Bytes,
        _rmw: ServiceRmw,
        timeout: Duration,
        resend: bool,
    ) -> futures::future::BoxFuture<'static, Result<Option<Bytes>, TransportError>> {
        let client = self.client(service, srv);
        let service = service.to_owned();
        async move {
            let client = client?;
            client
                .call(request, timeout, resend)
                .await
                .map_err(|reason| TransportError::Call { service, reason })
        }
        .boxed()
    }

    fn service_ready(
        &self,
        service: &str,
        srv: &TypeName,
        _rmw: ServiceRmw,
    ) -> Result<bool, TransportError> {
        let client = self.client(service, srv)?;
        client
            .server_available()
            .map_err(|reason| TransportError::Call {
                service: service.to_owned(),
                reason,
            })
    }

    fn serve(&self, service: &str, srv: &TypeName, handler: ServeFn) -> Result<(), TransportError> {
        let create = TransportError::create("a service", service);
        let ty = service_type(srv).map_err(|e| create(e.to_string()))?;
        let s: Service = self.node.service(service, ty, handler).map_err(create)?;
        self.node.add_service(s);
        Ok(())
    }

    fn set_bool(
        &self,
        service: &str,
        rmw: ServiceRmw,
        data: bool,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<SetBoolReply, TransportError>> {
        super::set_bool_by_call(self, service, rmw, data, timeout)
    }
}
