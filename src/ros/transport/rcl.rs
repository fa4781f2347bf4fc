//! The rcl transport (cargo feature `rcl`): the agent is an ordinary rcl node through
//! r2r, on whatever RMW the robot uses (`RMW_IMPLEMENTATION`). rcl itself reads the
//! `--ros-args` on the command line (remaps, parameters, log levels, enclaves), takes the
//! domain from `ROS_DOMAIN_ID`, and the node serves ROS parameter services, so
//! `ros2 param get <node> config_file` works.
//!
//! Raw CDR moves through `subscribe_raw` and `publish_raw`. rcl needs a type support for
//! every topic, even raw ones, and r2r generates them when the agent is built: a type
//! that was not in the sourced ROS 2 environment then is refused by [`check_type`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use r2r::qos::{DurabilityPolicy, HistoryPolicy, ReliabilityPolicy};
use r2r::{Parameter, ParameterValue, QosProfile};
use tokio::sync::mpsc;

use super::{
    Durability, Qos, RawPublisher, Reliability, Sample, ServiceRmw, SetBoolReply, Transport,
    TransportError,
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

/// Whether this binary carries the type support of `type_name`.
pub fn check_type(type_name: &TypeName) -> Result<(), String> {
    let name = type_name.to_string();
    r2r::WrappedNativeMsgUntyped::new_from(&name)
        .map(|_| ())
        .map_err(|_| {
            format!(
                "{name} was not in the ROS 2 environment this edge-agent was built in (rcl \
             transport); source a workspace that has it and rebuild, with its package in \
             IDL_PACKAGE_FILTER"
            )
        })
}

/// The node and the thread that spins it. Callers that need the node (to create
/// subscriptions, publishers, clients) announce themselves in `waiting`, and the spinner
/// steps aside for them between two waits.
struct Spun {
    node: Mutex<r2r::Node>,
    waiting: AtomicUsize,
    stop: AtomicBool,
}

impl Spun {
    fn lock(&self) -> MutexGuard<'_, r2r::Node> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = self.node.lock().unwrap_or_else(|p| p.into_inner());
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    fn spin(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            self.node
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .spin_once(Duration::from_millis(20));
            while self.waiting.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

pub struct RclTransport {
    spun: Arc<Spun>,
    spinner: Option<std::thread::JoinHandle<()>>,
    fq_name: String,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    set_bool_clients: Mutex<HashMap<String, Arc<r2r::ClientUntyped>>>,
}

impl Drop for RclTransport {
    fn drop(&mut self) {
        self.spun.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.spinner.take() {
            let _ = t.join();
        }
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
    }
}

fn start_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Start(e.to_string())
}

fn to_profile(q: Qos) -> QosProfile {
    let p = QosProfile::default().keep_last(q.depth.max(1));
    let p = match q.reliability {
        Reliability::Reliable => p.reliable(),
        Reliability::BestEffort => p.best_effort(),
    };
    match q.durability {
        Durability::Volatile => p.volatile(),
        Durability::TransientLocal => p.transient_local(),
    }
}

fn from_profile(p: &QosProfile) -> Qos {
    Qos {
        reliability: match p.reliability {
            ReliabilityPolicy::BestEffort => Reliability::BestEffort,
            _ => Reliability::Reliable,
        },
        durability: match p.durability {
            DurabilityPolicy::TransientLocal => Durability::TransientLocal,
            _ => Durability::Volatile,
        },
        depth: match p.history {
            HistoryPolicy::KeepLast if p.depth > 0 => p.depth,
            _ => Qos::ros_default().depth,
        },
    }
}

impl RclTransport {
    /// Initialises rcl (with this process's command line) and creates the node. Must be
    /// called inside a tokio runtime: the parameter services run as a task.
    pub fn start(opts: &RclOptions) -> Result<Self, TransportError> {
        let env_domain = std::env::var("ROS_DOMAIN_ID")
            .ok()
            .and_then(|v| v.trim().parse::<u16>().ok())
            .unwrap_or(0);
        if env_domain != opts.domain_id {
            return Err(start_error(format!(
                "ros.domain_id is {} but ROS_DOMAIN_ID is {env_domain}; under the rcl \
                 transport the domain comes from ROS_DOMAIN_ID, so set that instead",
                opts.domain_id
            )));
        }
        let ctx = r2r::Context::create().map_err(start_error)?;
        let mut node =
            r2r::Node::create(ctx, &opts.node_name, &opts.namespace).map_err(start_error)?;
        let fq_name = node.fully_qualified_name().map_err(start_error)?;
        if let Some(path) = &opts.config_file {
            let mut params = node.params.lock().unwrap_or_else(|p| p.into_inner());
            params.insert(
                "config_file".to_owned(),
                Parameter {
                    value: ParameterValue::String(path.display().to_string()),
                    description: "The configuration file the agent was started with",
                },
            );
        }
        let (param_services, mut changes) = node.make_parameter_handler().map_err(start_error)?;
        let spun = Arc::new(Spun {
            node: Mutex::new(node),
            waiting: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let spinner = {
            let spun = spun.clone();
            std::thread::Builder::new()
                .name("rcl-spin".into())
                .spawn(move || spun.spin())
                .map_err(start_error)?
        };
        let tasks = vec![
            tokio::spawn(param_services),
            tokio::spawn(async move {
                while let Some((name, value)) = changes.next().await {
                    tracing::warn!(
                        parameter = %name, value = ?value,
                        "ROS parameter changed. The agent reads its configuration at start only: restart it to apply."
                    );
                }
            }),
        ];
        tracing::info!(node = %fq_name, "Joined the ROS 2 graph through rcl.");
        Ok(Self {
            spun,
            spinner: Some(spinner),
            fq_name,
            tasks: Mutex::new(tasks),
            set_bool_clients: Mutex::new(HashMap::new()),
        })
    }

    fn set_bool_client(&self, service: &str) -> Result<Arc<r2r::ClientUntyped>, TransportError> {
        let mut clients = self
            .set_bool_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(service) {
            return Ok(c.clone());
        }
        let client = self
            .spun
            .lock()
            .create_client_untyped(
                service,
                "std_srvs/srv/SetBool",
                QosProfile::services_default(),
            )
            .map_err(|e| TransportError::Call {
                service: service.to_owned(),
                reason: e.to_string(),
            })?;
        let client = Arc::new(client);
        clients.insert(service.to_owned(), client.clone());
        Ok(client)
    }
}

struct RclPublisher {
    publisher: Mutex<r2r::PublisherUntyped>,
    topic: String,
}

impl RawPublisher for RclPublisher {
    fn publish(&self, cdr: &Bytes) -> Result<(), TransportError> {
        self.publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .publish_raw(cdr)
            .map_err(|e| TransportError::Publish {
                topic: self.topic.clone(),
                reason: e.to_string(),
            })
    }

    fn subscription_count(&self) -> usize {
        self.publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_inter_process_subscription_count()
            .unwrap_or(0)
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
        let create = |reason: String| TransportError::Create {
            what: "a subscription",
            topic: topic.to_owned(),
            reason,
        };
        check_type(type_name).map_err(create)?;
        let mut stream = self
            .spun
            .lock()
            .subscribe_raw(topic, &type_name.to_string(), to_profile(qos))
            .map_err(|e| create(e.to_string()))?;
        let task = tokio::spawn(async move {
            while let Some(cdr) = stream.next().await {
                // rcl's raw take does not hand out the source timestamp: the time of
                // arrival stands in for it.
                let arrived = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .and_then(|d| i64::try_from(d.as_nanos()).ok());
                let sample = Sample {
                    cdr: Bytes::from(cdr),
                    source_time_ns: arrived,
                };
                if sink.send(sample).await.is_err() {
                    break;
                }
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        Ok(())
    }

    fn publisher(
        &self,
        topic: &str,
        type_name: &TypeName,
        _schema: Arc<MsgSchema>,
        qos: Qos,
    ) -> Result<Arc<dyn RawPublisher>, TransportError> {
        let create = |reason: String| TransportError::Create {
            what: "a publisher",
            topic: topic.to_owned(),
            reason,
        };
        check_type(type_name).map_err(create)?;
        let publisher = self
            .spun
            .lock()
            .create_publisher_untyped(topic, &type_name.to_string(), to_profile(qos))
            .map_err(|e| create(e.to_string()))?;
        Ok(Arc::new(RclPublisher {
            publisher: Mutex::new(publisher),
            topic: topic.to_owned(),
        }))
    }

    fn discovered_publisher_qos(&self, topic: &str) -> Option<Qos> {
        let infos = self
            .spun
            .lock()
            .get_publishers_info_by_topic(topic, false)
            .ok()?;
        infos.first().map(|i| from_profile(&i.qos_profile))
    }

    fn node_name(&self) -> String {
        self.fq_name.clone()
    }

    fn set_bool(
        &self,
        service: &str,
        _rmw: ServiceRmw,
        data: bool,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<SetBoolReply, TransportError>> {
        let client = self.set_bool_client(service);
        let service = service.to_owned();
        async move {
            let client = client?;
            let call_error = |reason: String| TransportError::Call {
                service: service.clone(),
                reason,
            };
            let no_reply = || TransportError::NoReply {
                service: service.clone(),
                ms: timeout.as_millis() as u64,
            };
            let deadline = tokio::time::Instant::now() + timeout;
            // One request once rcl sees the server: a request sent before that would be
            // lost, and r2r keeps a slot for every request that is never answered.
            let available =
                r2r::Node::is_available(&*client).map_err(|e| call_error(e.to_string()))?;
            match tokio::time::timeout_at(deadline, available).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(call_error(e.to_string())),
                Err(_) => return Err(no_reply()),
            }
            let reply = client
                .request(serde_json::json!({ "data": data }))
                .map_err(|e| call_error(e.to_string()))?;
            let v = match tokio::time::timeout_at(deadline, reply).await {
                Ok(Ok(Ok(v))) => v,
                Ok(Ok(Err(e))) => return Err(call_error(e.to_string())),
                Ok(Err(e)) => return Err(call_error(e.to_string())),
                Err(_) => return Err(no_reply()),
            };
            Ok(SetBoolReply {
                success: v
                    .get("success")
                    .and_then(|s| s.as_bool())
                    .ok_or_else(|| call_error(format!("the reply has no 'success': {v}")))?,
                message: v
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_owned(),
            })
        }
        .boxed()
    }
}
