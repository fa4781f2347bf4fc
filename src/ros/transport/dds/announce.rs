//! The node's place in the ROS 2 graph: reads the other participants'
//! `ros_discovery_info` to learn the layout the domain speaks, and publishes the node's
//! entry (its readers and writers) in that layout, or nothing (see [`super::graph`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use rustdds::no_key::DataWriter;
use rustdds::policy::{Durability, History, Reliability};
use rustdds::{DomainParticipant, QosPolicies, QosPolicyBuilder, RTPSEntity as _, TopicKind, GUID};
use tokio::sync::Notify;

use super::graph::{self, Decision, GraphFormat, GraphPolicy, NodeEntry, ParticipantInfo};
use super::raw::{RawAdapter, RawSample};

pub const TOPIC: &str = "ros_discovery_info";
pub const TYPE: &str = "rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_";

/// How often peers that left are forgotten (and the decision looked at again).
const PEER_CHECK: Duration = Duration::from_millis(500);

/// What rmw uses for this topic: reliable, transient local, the last sample.
fn qos(depth: i32) -> QosPolicies {
    QosPolicyBuilder::new()
        .reliability(Reliability::Reliable {
            max_blocking_time: rustdds::Duration::from_millis(100),
        })
        .durability(Durability::TransientLocal)
        .history(History::KeepLast { depth })
        .build()
}

/// The node's endpoints, which the transport adds to as it creates them.
pub struct Announcer {
    entry: Mutex<NodeEntry>,
    changed: Notify,
    /// The layout in use (for `status`), or why none is.
    pub state: Mutex<String>,
}

impl Announcer {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            entry: Mutex::new(NodeEntry {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                readers: Vec::new(),
                writers: Vec::new(),
            }),
            changed: Notify::new(),
            state: Mutex::new("not decided yet".into()),
        }
    }

    pub fn add_reader(&self, guid: GUID) {
        if let Ok(mut e) = self.entry.lock() {
            e.readers.push(guid.to_bytes());
        }
        self.changed.notify_one();
    }

    pub fn add_writer(&self, guid: GUID) {
        if let Ok(mut e) = self.entry.lock() {
            e.writers.push(guid.to_bytes());
        }
        self.changed.notify_one();
    }

    fn entry(&self) -> NodeEntry {
        self.entry
            .lock()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// Runs until the transport goes: follows the domain and keeps the node's entry
/// published (or not) as the policy decides.
pub async fn run(
    dp: DomainParticipant,
    publisher: rustdds::Publisher,
    subscriber: rustdds::Subscriber,
    announcer: Arc<Announcer>,
    mut policy: GraphPolicy,
) {
    let topic = match dp.create_topic(TOPIC.into(), TYPE.into(), &qos(1), TopicKind::NoKey) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = ?e, "Cannot follow the ROS 2 graph: the node will not show in `ros2 node list`.");
            return;
        }
    };
    let reader = match subscriber
        .create_simple_datareader_no_key::<RawSample, RawAdapter>(&topic, Some(qos(64)))
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = ?e, "Cannot follow the ROS 2 graph: the node will not show in `ros2 node list`.");
            return;
        }
    };
    let own = dp.guid().to_bytes();
    let started = tokio::time::Instant::now();
    let mut writer: Option<(GraphFormat, DataWriter<RawSample, RawAdapter>)> = None;
    let mut last: Option<Decision> = None;
    let stream = reader.as_async_stream();
    futures::pin_mut!(stream);
    let mut tick = tokio::time::interval(PEER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut republish = false;
        tokio::select! {
            s = stream.next() => match s {
                Some(Ok(dcc)) => {
                    if dcc.writer_guid.to_bytes()[..12] != own[..12] {
                        match graph::classify(&dcc.sample.0) {
                            Some((format, info)) => policy.peer(info.gid, format),
                            None => tracing::debug!(writer = ?dcc.writer_guid, "A ros_discovery_info sample fits neither layout; ignored."),
                        }
                    }
                }
                Some(Err(e)) => tracing::debug!(error = ?e, "Cannot read ros_discovery_info."),
                None => return,
            },
            _ = announcer.changed.notified() => republish = true,
            _ = tick.tick() => {
                let present: Vec<[u8; 16]> = dp
                    .discovered_writers()
                    .iter()
                    .filter(|w| w.publication_topic_data.topic_name == TOPIC)
                    .map(|w| w.writer_proxy.remote_writer_guid.to_bytes())
                    .collect();
                policy.retain_peers(|gid| present.iter().any(|p| p[..12] == gid[..12]));
            }
        }
        let decision = policy.decide(started.elapsed());
        if last.as_ref() != Some(&decision) {
            republish = true;
            report(&decision, &announcer);
        }
        match &decision {
            Decision::Speak(format, _) => {
                if writer.as_ref().is_some_and(|(f, _)| f != format) {
                    writer = None;
                }
                if writer.is_none() {
                    match publisher
                        .create_datawriter_no_key::<RawSample, RawAdapter>(&topic, Some(qos(1)))
                    {
                        Ok(w) => writer = Some((*format, w)),
                        Err(e) => {
                            tracing::error!(error = ?e, "Cannot publish the node's graph information: it will not show in `ros2 node list`.")
                        }
                    }
                }
                if republish {
                    if let Some((f, w)) = &writer {
                        let info = ParticipantInfo {
                            gid: own,
                            nodes: vec![announcer.entry()],
                        };
                        let sample = RawSample(bytes::Bytes::from(graph::encode(*f, &info)));
                        if let Err(e) = w.write(sample, None) {
                            tracing::warn!(error = ?e, "Cannot publish the node's graph information.");
                        }
                    }
                }
            }
            Decision::Wait | Decision::Hold | Decision::Silent(_) => writer = None,
        }
        last = Some(decision);
    }
}

/// Says once what changed about the graph, at the level a technician needs.
fn report(d: &Decision, announcer: &Announcer) {
    let state = match d {
        Decision::Speak(f, why) => {
            tracing::info!(
                layout = f.label(),
                "Publishing the node's graph information ({why})."
            );
            format!("publishing, {} ({why})", f.label())
        }
        Decision::Hold => {
            tracing::debug!(
                "Waiting a moment for the other participants before joining the ROS 2 graph."
            );
            "waiting a moment for the other participants".into()
        }
        Decision::Wait => {
            tracing::info!("No ROS_DISTRO and no ros.distro: the node joins the graph once another participant shows which ROS 2 distribution the robot runs.");
            "waiting for a participant that shows the distribution".into()
        }
        Decision::Silent(why) => {
            tracing::error!("The agent leaves the ROS 2 graph alone: {why}. Topics still flow; `ros2 node list` will not show the agent.");
            format!("not published: {why}")
        }
    };
    if let Ok(mut s) = announcer.state.lock() {
        *s = state;
    }
}
