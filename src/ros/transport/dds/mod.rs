//! The default transport: DDS in pure Rust (RustDDS), no ROS installation needed. The
//! agent is an ordinary ROS 2 node to the rest of the robot: topics by ROS conventions
//! (`rt/<name>`, type `pkg::msg::dds_::Type_`, CDR), its entry in the ROS graph
//! (`ros2 node list`, `ros2 node info`), the parameter services (`ros2 param`), and
//! service calls to other nodes, with the request ids of rmw_fastrtps and
//! rmw_cyclonedds.
//!
//! The ROS layer over DDS is written here rather than taken from a crate because the
//! ROS 2 distribution (which decides the graph's layout) is known only where the agent
//! runs: one binary serves Humble, Jazzy and later (see [`graph`]). Messages move as
//! bytes ([`raw`]): no code exists per message type.

mod announce;
pub mod graph;
mod lo_relay;

mod raw;
mod service;
mod threads;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use rustdds::no_key::DataWriter;
use rustdds::policy::{Deadline, Durability as DDurability, History, Lifespan, Liveliness};
use rustdds::{
    DomainParticipant, QosPolicies, QosPolicyBuilder, RTPSEntity as _, Topic, TopicKind,
};
use tokio::sync::mpsc;

use self::announce::Announcer;
use self::graph::GraphPolicy;
use self::raw::{RawAdapter, RawSample};
use self::threads::DdsThreads;
use super::{
    Durability, Qos, RawPublisher, Reliability, Sample, ServiceRmw, SetBoolReply, Transport,
    TransportError,
};
use crate::ros::codec::{self, DecodeOptions, EncodeOptions};
use crate::ros::registry::TypeName;
use crate::ros::schema::MsgSchema;

type RawReader = rustdds::no_key::SimpleDataReader<RawSample, RawAdapter>;
type RawWriter = DataWriter<RawSample, RawAdapter>;

/// Where and as whom the node joins the ROS graph.
#[derive(Debug, Clone)]
pub struct DdsOptions {
    pub domain_id: u16,
    pub node_name: String,
    pub namespace: String,
    /// Only these local addresses are used for DDS (empty: every interface).
    pub only_networks: Vec<IpAddr>,
    /// `ros.distro`: the robot's ROS 2 distribution when `ROS_DISTRO` is not set.
    pub distro: Option<String>,
    /// The configuration file, shown as the node's `config_file` parameter.
    pub config_file: Option<PathBuf>,
}

pub struct DdsTransport {
    dp: DomainParticipant,
    publisher: rustdds::Publisher,
    subscriber: rustdds::Subscriber,
    namespace: String,
    fq_name: String,
    announcer: Arc<Announcer>,
    clients: Mutex<HashMap<(String, ServiceRmw), Arc<service::Client>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    threads: DdsThreads,
    /// Topics whose cache size was logged: readers of one topic share its cache, so
    /// the second reader (an image rule beside detection) says nothing new.
    large_noted: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Drop for DdsTransport {
    fn drop(&mut self) {
        if let Ok(t) = self.tasks.lock() {
            for t in t.iter() {
                t.abort();
            }
        }
    }
}

/// A ROS 2 name as the node sees it: absolute, relative to its namespace, or private
/// (`~/…`, under the node's own name). Each part: letters, digits and `_`, not
/// starting with a digit.
pub fn resolve_name(namespace: &str, fq_node: &str, name: &str) -> Result<String, TransportError> {
    let bad = |why: &str| TransportError::Name(name.to_owned(), why.to_owned());
    let full = if name == "~" {
        fq_node.to_owned()
    } else if let Some(rest) = name.strip_prefix("~/") {
        format!("{fq_node}/{rest}")
    } else if name.starts_with('/') {
        name.to_owned()
    } else if namespace == "/" {
        format!("/{name}")
    } else {
        format!("{namespace}/{name}")
    };
    if full.len() > 1 && full.ends_with('/') {
        return Err(bad("it ends with '/'"));
    }
    for part in full[1..].split('/') {
        let ok = part
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(bad(
                "each part takes letters, digits and '_', not starting with a digit",
            ));
        }
    }
    Ok(full)
}

/// The DDS QoS of a ROS 2 profile (the rest as rclcpp leaves it: automatic liveliness,
/// no deadline, no lifespan).
fn to_qos(q: Qos) -> QosPolicies {
    let b = QosPolicyBuilder::new()
        .durability(match q.durability {
            Durability::Volatile => DDurability::Volatile,
            Durability::TransientLocal => DDurability::TransientLocal,
        })
        .history(History::KeepLast {
            depth: q.depth.clamp(1, i32::MAX as usize) as i32,
        })
        .liveliness(Liveliness::Automatic {
            lease_duration: rustdds::Duration::INFINITE,
        })
        .deadline(Deadline(rustdds::Duration::INFINITE))
        .lifespan(Lifespan {
            duration: rustdds::Duration::INFINITE,
        });
    match q.reliability {
        Reliability::Reliable => b.reliable(rustdds::Duration::from_millis(100)),
        Reliability::BestEffort => b.best_effort(),
    }
    .build()
}

/// Nanoseconds since the epoch of a DDS timestamp (seconds and 2^-32 fractions).
fn nanos(t: rustdds::Timestamp) -> Option<i64> {
    if t == rustdds::Timestamp::INVALID || t == rustdds::Timestamp::INFINITE {
        return None;
    }
    let ticks = t.to_ticks();
    let secs = (ticks >> 32) as i64;
    let frac = ((ticks & 0xffff_ffff) * 1_000_000_000) >> 32;
    Some(secs * 1_000_000_000 + frac as i64)
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
/// larger) after they were taken, and offers no way to lower that.
const DDS_KEEPS: usize = 64;

/// How many of a topic's samples the DDS cache holds and what they add up to, in bytes,
/// A subscription's status change, for the log.
fn note_reader_status(topic: &str, st: &rustdds::dds::statusevents::DataReaderStatus) {
    if let rustdds::dds::statusevents::DataReaderStatus::SubscriptionMatched { current, .. } = st {
        if current.count_change() > 0 {
            tracing::debug!(topic = %topic, publishers = current.count(),
                "A publisher of this topic was matched: its messages are received from now on.");
        } else {
            tracing::debug!(topic = %topic, publishers = current.count(), "A publisher of this topic left.");
        }
    }
}

/// when that is worth a line in the log (camera frames): `None` under 16 MB.
fn cache_footprint(sample_len: usize, depth: usize) -> Option<(usize, usize)> {
    let kept = depth.max(DDS_KEEPS);
    let bytes = sample_len.saturating_mul(kept);
    (bytes >= 16 << 20).then_some((kept, bytes))
}

/// Whether DDS is limited to loopback addresses while the loopback interface has
/// multicast off (Linux's default): RustDDS then announces the participant by unicast
/// only, and a peer that listens for announcements by multicast alone (Cyclone DDS, as
/// ROS 2 nodes run it with ROS_LOCALHOST_ONLY) finds the agent only when it repeats
/// its own announcement, seconds later. `flags` is /sys/class/net/lo/flags.
fn loopback_without_multicast(only: &[IpAddr], flags: Option<&str>) -> bool {
    const IFF_MULTICAST: u32 = 0x1000;
    let multicast = flags
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & IFF_MULTICAST != 0);
    !only.is_empty() && only.iter().all(IpAddr::is_loopback) && !multicast
}

/// Services: reliable, volatile, the last 10 (rmw's default for services).
fn service_qos() -> QosPolicies {
    to_qos(Qos::ros_default())
}

impl DdsTransport {
    /// Joins the domain and starts the node. Needs a tokio runtime.
    pub fn start(opts: &DdsOptions) -> Result<Self, TransportError> {
        let start = |e: String| TransportError::Start(e);
        let lo_flags = std::fs::read_to_string("/sys/class/net/lo/flags").ok();
        let relay = if loopback_without_multicast(&opts.only_networks, lo_flags.as_deref()) {
            match lo_relay::Relay::bind(opts.domain_id) {
                Ok(r) => {
                    tracing::debug!(
                        participant_slot = r.participant,
                        "The loopback interface has multicast off: the agent's DDS announcements are passed on to the multicast group through it, for Cyclone DDS nodes."
                    );
                    Some(r)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DDS is limited to the loopback interface, which has multicast off, and the agent cannot pass its announcements on to the multicast group: nodes on Cyclone DDS find the agent only when they repeat their announcement, seconds from now. `ip link set lo multicast on` (as root) makes discovery immediate; docs/bridge.md says how to make it stick.");
                    None
                }
            }
        } else {
            None
        };
        let mut builder = rustdds::DomainParticipantBuilder::new(opts.domain_id);
        if !opts.only_networks.is_empty() {
            builder = builder.with_only_networks(opts.only_networks.clone());
        }
        let (dp, threads) =
            DdsThreads::start(|| builder.build()).map_err(|e| start(e.to_string()))?;
        let publisher = dp
            .create_publisher(&QosPolicies::qos_none())
            .map_err(|e| start(format!("{e:?}")))?;
        let subscriber = dp
            .create_subscriber(&QosPolicies::qos_none())
            .map_err(|e| start(format!("{e:?}")))?;
        let namespace = opts.namespace.clone();
        let fq_name = if namespace == "/" {
            format!("/{}", opts.node_name)
        } else {
            format!("{namespace}/{}", opts.node_name)
        };
        resolve_name(&namespace, &fq_name, &fq_name)?;
        let announcer = Arc::new(Announcer::new(&namespace, &opts.node_name));
        let env = std::env::var("ROS_DISTRO").ok();
        let policy = GraphPolicy::new(env.as_deref(), opts.distro.as_deref(), opts.domain_id);
        let t = Self {
            dp: dp.clone(),
            publisher: publisher.clone(),
            subscriber: subscriber.clone(),
            namespace,
            fq_name,
            announcer: announcer.clone(),
            clients: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            threads,
            large_noted: Arc::default(),
        };
        if let Some(r) = relay {
            // Announcements sent since the participant started wait in its socket.
            t.spawn(r.run());
        }
        t.spawn(announce::run(dp, publisher, subscriber, announcer, policy));
        super::params::serve(&t, &t.fq_name, opts.config_file.as_deref())?;
        tracing::info!(node = %t.fq_name, domain = opts.domain_id, "Joined the ROS 2 graph.");
        Ok(t)
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(f);
        if let Ok(mut t) = self.tasks.lock() {
            t.push(task);
        }
    }

    fn topic(&self, dds_name: &str, dds_type: &str, qos: &QosPolicies) -> Result<Topic, String> {
        self.dp
            .create_topic(
                dds_name.to_owned(),
                dds_type.to_owned(),
                qos,
                TopicKind::NoKey,
            )
            .map_err(|e| format!("{e:?}"))
    }

    fn resolve(&self, name: &str) -> Result<String, TransportError> {
        resolve_name(&self.namespace, &self.fq_name, name)
    }

    /// A reader and a writer of raw samples on the topics of service `fq` (type `ty`:
    /// `pkg::srv::dds_::Name_`), recorded in the node's graph entry.
    fn service_endpoints(
        &self,
        fq: &str,
        request_type: &str,
        reply_type: &str,
        server: bool,
    ) -> Result<(RawReader, RawWriter), TransportError> {
        let err = TransportError::create(
            if server {
                "a service"
            } else {
                "a service client"
            },
            fq,
        );
        let qos = service_qos();
        let rq = self
            .topic(&format!("rq{fq}Request"), request_type, &qos)
            .map_err(&err)?;
        let rr = self
            .topic(&format!("rr{fq}Reply"), reply_type, &qos)
            .map_err(&err)?;
        let (read_t, write_t) = if server { (&rq, &rr) } else { (&rr, &rq) };
        let reader = self
            .subscriber
            .create_simple_datareader_no_key::<RawSample, RawAdapter>(read_t, Some(qos.clone()))
            .map_err(|e| err(format!("{e:?}")))?;
        let writer = self
            .publisher
            .create_datawriter_no_key::<RawSample, RawAdapter>(write_t, Some(qos))
            .map_err(|e| err(format!("{e:?}")))?;
        self.announcer.add_reader(reader.guid());
        self.announcer.add_writer(writer.guid());
        Ok((reader, writer))
    }

    /// The DDS type names of a service's request and response.
    fn service_types(ty: &TypeName) -> (String, String) {
        let dds = |half: &str| format!("{}::{}::dds_::{}_{half}_", ty.package, ty.kind, ty.name);
        (dds("Request"), dds("Response"))
    }

    /// The client of a service, made on first use and kept.
    fn client(
        &self,
        service: &str,
        rmw: ServiceRmw,
        ty: &TypeName,
    ) -> Result<Arc<service::Client>, TransportError> {
        let fq = self.resolve(service)?;
        let key = (fq.clone(), rmw);
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| TransportError::Start("service client lock poisoned".into()))?;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let (rq, rp) = Self::service_types(ty);
        let (reader, writer) = self.service_endpoints(&fq, &rq, &rp, false)?;
        let client = Arc::new(service::Client::new(writer, reader, rmw));
        clients.insert(key, client.clone());
        Ok(client)
    }
}

struct DdsPublisher {
    /// The DDS topic name (`rt/…`).
    dds_topic: String,
    writer: RawWriter,
    /// Readers this writer itself is matched with, and since when.
    matches: raw::WriterMatches,
}

/// How long after this writer matched a reader it counts as a subscriber. Matching is
/// not symmetric: the reader's side learns of this writer a moment later, and a volatile
/// reader (Cyclone DDS's) drops what was written before its side matched. A command
/// published right at the match was lost; [`MATCH_SETTLE`] later it arrives.
///
/// The first sample after a new match also waits (up to [`MATCH_SETTLE`]) for the
/// readers' acknowledgement: a volatile reader counts whatever it has not yet received
/// when it reads this writer's first heartbeat as history and never asks for it, so a
/// burst written at once could lose its tail. Once acknowledged, losses are repaired.
pub const MATCH_SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// As [`MATCH_SETTLE`], for a service client called once per request (never resent,
/// so that nothing is carried out twice): a request written before the server's
/// volatile reader has matched this client is lost, so the server counts only once
/// matched this long. A loaded computer takes longer to match than an idle one.
pub const SERVICE_SETTLE: std::time::Duration = std::time::Duration::from_millis(1500);

impl DdsPublisher {
    /// Waits (blocking, up to [`MATCH_SETTLE`]) for every matched reader, a new one
    /// among them, to acknowledge what was written.
    fn wait_new_reader_acknowledged(&self) {
        let wait = || RawPublisher::wait_acknowledged(self, MATCH_SETTLE);
        let acked = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        if !acked {
            tracing::debug!(
                topic = &self.dds_topic[2..],
                "A new subscriber has not acknowledged the first message yet."
            );
        }
    }
}

impl RawPublisher for DdsPublisher {
    fn publish(&self, cdr: &Bytes) -> Result<(), TransportError> {
        self.matches.settled(&self.writer, MATCH_SETTLE);
        self.writer
            .write(RawSample(cdr.clone()), Some(rustdds::Timestamp::now()))
            .map_err(|e| TransportError::Publish {
                topic: self.dds_topic[2..].to_owned(),
                reason: format!("{e:?}"),
            })?;
        if self.matches.take_new() {
            self.wait_new_reader_acknowledged();
        }
        Ok(())
    }

    fn subscription_count(&self) -> usize {
        // Readers of other participants this writer has been matched with for a moment.
        self.matches.settled(&self.writer, MATCH_SETTLE)
    }

    fn wait_acknowledged(&self, timeout: std::time::Duration) -> bool {
        matches!(self.writer.wait_for_acknowledgments(timeout), Ok(true))
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
        let fq = self.resolve(topic)?;
        let err = TransportError::create("a subscription", topic);
        let dds_qos = to_qos(qos);
        let t = self
            .topic(&format!("rt{fq}"), &type_name.dds_name(), &dds_qos)
            .map_err(&err)?;
        let reader = self
            .subscriber
            .create_simple_datareader_no_key::<RawSample, RawAdapter>(&t, Some(dds_qos))
            .map_err(|e| err(format!("{e:?}")))?;
        self.announcer.add_reader(reader.guid());
        let topic = fq;
        let ty = type_name.to_string();
        let depth = qos.depth;
        let large_noted = self.large_noted.clone();
        self.spawn(async move {
            let stream = reader.as_async_stream();
            futures::pin_mut!(stream);
            // Publishers matched and lost: a debug line each, which says from when a
            // publisher's messages are received.
            let status = rustdds::StatusEvented::as_async_status_stream(&reader);
            futures::pin_mut!(status);
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
                        tokio::select! {
                            biased;
                            r = stream.next() => match r {
                                Some(r) => r,
                                None => break,
                            },
                            Some(st) = status.next() => {
                                note_reader_status(&topic, &st);
                                continue;
                            }
                        }
                    }
                };
                let dcc = match r {
                    Ok(dcc) => dcc,
                    Err(e) => {
                        tracing::debug!(topic = %topic, error = ?e, "A sample could not be read.");
                        continue;
                    }
                };
                let mut cdr = dcc.sample.0;
                if !noted {
                    noted = true;
                    if let Some((kept, bytes)) = cache_footprint(cdr.len(), depth) {
                        // Said by the topic's first reader only.
                        let first = large_noted
                            .lock()
                            .map(|mut n| n.insert(topic.clone()))
                            .unwrap_or(true);
                        if first {
                            tracing::info!(topic = %topic, sample_bytes = cdr.len(), held_mb = (bytes + 500_000) / 1_000_000,
                                "Messages on this topic are large: the DDS transport keeps the last {kept} of them in memory.");
                        }
                    }
                }
                // Everything past the transport is little-endian; the rare big-endian
                // publisher is converted here.
                if raw::is_big_endian(&cdr) {
                    match codec::decode_to_value(&schema, &cdr, &DecodeOptions::default())
                        .map_err(|e| e.to_string())
                        .and_then(|v| {
                            codec::encode_value(&schema, &v, &EncodeOptions::default())
                                .map_err(|e| e.to_string())
                        }) {
                        Ok(le) => cdr = Bytes::from(le),
                        Err(e) => {
                            if !warned {
                                warned = true;
                                tracing::warn!(topic = %topic, type_name = %ty, error = %e,
                                    "A message on this topic does not fit its configured type; such messages are skipped.");
                            }
                            continue;
                        }
                    }
                }
                let sample = Sample {
                    cdr,
                    source_time_ns: dcc.write_options.source_timestamp().and_then(nanos),
                    lost_before: 0,
                };
                if sink.send(sample).await.is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    fn publisher(
        &self,
        topic: &str,
        type_name: &TypeName,
        _schema: Arc<MsgSchema>,
        qos: Qos,
    ) -> Result<Arc<dyn RawPublisher>, TransportError> {
        let fq = self.resolve(topic)?;
        let err = TransportError::create("a publisher", topic);
        let dds_qos = to_qos(qos);
        let dds_topic = format!("rt{fq}");
        let t = self
            .topic(&dds_topic, &type_name.dds_name(), &dds_qos)
            .map_err(&err)?;
        let writer = self
            .publisher
            .create_datawriter_no_key::<RawSample, RawAdapter>(&t, Some(dds_qos))
            .map_err(|e| err(format!("{e:?}")))?;
        self.announcer.add_writer(writer.guid());
        Ok(Arc::new(DdsPublisher {
            dds_topic,
            writer,
            matches: Default::default(),
        }))
    }

    fn discovered_publisher_qos(&self, topic: &str) -> Option<Qos> {
        let fq = self.resolve(topic).ok()?;
        let dds_name = format!("rt{fq}");
        let writers = self.dp.discovered_writers();
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

    fn call(
        &self,
        service: &str,
        srv: &TypeName,
        request: Bytes,
        rmw: ServiceRmw,
        timeout: std::time::Duration,
        resend: bool,
    ) -> futures::future::BoxFuture<'static, Result<Option<Bytes>, TransportError>> {
        let client = self.client(service, rmw, srv);
        let service = service.to_owned();
        Box::pin(async move {
            let every = resend.then_some(std::time::Duration::from_millis(500));
            client?
                .call(&request, timeout, every)
                .await
                .map_err(|reason| TransportError::Call { service, reason })
        })
    }

    fn serve(
        &self,
        service: &str,
        srv: &TypeName,
        handler: super::ServeFn,
    ) -> Result<(), TransportError> {
        let fq = self.resolve(service)?;
        let (rq, rp) = Self::service_types(srv);
        let (reader, writer) = self.service_endpoints(&fq, &rq, &rp, true)?;
        let writer = Arc::new(writer);
        let dp = self.dp.clone();
        let reply_topic = format!("rr{fq}Reply");
        // Said once per service (see service::reply_may_be_garbled).
        let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tracing::debug!(service = %fq, "Serving.");
        self.spawn(async move {
            let stream = reader.as_async_stream();
            futures::pin_mut!(stream);
            while let Some(r) = stream.next().await {
                let Ok(dcc) = r else { continue };
                let Some(req) = service::unwrap_request(&dcc) else {
                    tracing::debug!(service = %fq, "A request without its id; ignored.");
                    continue;
                };
                let (handler, writer, dp, warned) =
                    (handler.clone(), writer.clone(), dp.clone(), warned.clone());
                let (fq, reply_topic) = (fq.clone(), reply_topic.clone());
                tokio::spawn(async move {
                    let reply = match handler(req.cdr).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(service = %fq, error = %e, "A service request could not be read; not answered.");
                            return;
                        }
                    };
                    if !service::wait_for_reader(&dp, &reply_topic, req.reader).await {
                        tracing::debug!(service = %fq, "The client's reply reader is not discovered; replying anyway.");
                    }
                    if service::reply_may_be_garbled(&dp, &reply_topic, req.reader, &req.reply_to, reply.len())
                        && !warned.swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(service = %fq, bytes = reply.len(),
                            "A reply too large for one network frame goes to an rmw_fastrtps client on a network interface; the DDS library writes such fragmented replies so that Fast DDS may not read them. Call from rmw_cyclonedds, or keep caller and agent on the loopback interface (ROS_LOCALHOST_ONLY=1 and ros.only_networks = [\"127.0.0.1\"]), or use the rcl transport.");
                    }
                    if let Err(e) = service::send_reply(&writer, &req.reply_to, &reply) {
                        tracing::warn!(service = %fq, error = %e, "A service reply could not be sent.");
                    }
                });
            }
        });
        Ok(())
    }

    fn service_ready(
        &self,
        service: &str,
        srv: &TypeName,
        rmw: ServiceRmw,
    ) -> Result<bool, TransportError> {
        let client = self.client(service, rmw, srv)?;
        if !client.server_matched(SERVICE_SETTLE) {
            return Ok(false);
        }
        let reply_topic = format!("rr{}Reply", self.resolve(service)?);
        let own = self.dp.guid().prefix;
        Ok(self.dp.discovered_writers().iter().any(|w| {
            w.publication_topic_data.topic_name == reply_topic
                && w.writer_proxy.remote_writer_guid.prefix != own
        }))
    }

    fn set_bool(
        &self,
        service: &str,
        rmw: ServiceRmw,
        data: bool,
        timeout: std::time::Duration,
    ) -> futures::future::BoxFuture<'static, Result<SetBoolReply, TransportError>> {
        super::set_bool_by_call(self, service, rmw, data, timeout)
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

    #[test]
    fn names_resolve_against_the_namespace_and_the_node() {
        let r = |ns, n| resolve_name(ns, "/robot/edge_agent", n);
        assert_eq!(r("/robot", "gps/fix").unwrap(), "/robot/gps/fix");
        assert_eq!(r("/", "gps/fix").unwrap(), "/gps/fix");
        assert_eq!(r("/robot", "/abs").unwrap(), "/abs");
        assert_eq!(r("/robot", "~/detect").unwrap(), "/robot/edge_agent/detect");
        assert!(r("/", "a//b").is_err());
        assert!(r("/", "9lives").is_err());
        assert!(r("/", "a/").is_err());
        assert!(r("/", "{node}/x").is_err());
    }

    #[test]
    fn loopback_only_without_multicast_is_recognised() {
        let lo: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let eth: Vec<IpAddr> = vec!["192.168.1.20".parse().unwrap()];
        // Linux's lo: UP, LOOPBACK, RUNNING (0x49); with multicast on: 0x1049.
        assert!(loopback_without_multicast(&lo, Some("0x49\n")));
        assert!(!loopback_without_multicast(&lo, Some("0x1049\n")));
        assert!(!loopback_without_multicast(&eth, Some("0x49")));
        assert!(!loopback_without_multicast(&[], Some("0x49")));
        assert!(loopback_without_multicast(&lo, None));
    }

    #[test]
    fn dds_timestamps_become_nanoseconds() {
        let t = rustdds::Timestamp::from_ticks((1_700_000_000u64 << 32) | (1 << 31));
        assert_eq!(nanos(t), Some(1_700_000_000_500_000_000));
        assert_eq!(nanos(rustdds::Timestamp::INVALID), None);
    }
}
