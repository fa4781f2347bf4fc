//! The bridge: configured ROS 2 topics to MQTT as JSON (or images), and cloud commands
//! back onto ROS 2, for any message type, following the rules in `msg_mappings/`.

pub mod calls;
pub mod image;
pub mod inbound;
pub mod outbound;
pub mod rules;
pub mod service;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::rules::{QosChoice, Rules};
use self::stats::RuleStats;
use crate::config::values::Dur;
use crate::mqtt::{LinkHandle, QoS};
use crate::ros::transport::{Qos, Transport, TransportError};

/// `[bridge]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Rule files, or folders of `*.toml` rule files. Relative paths are relative to
    /// the configuration file's folder.
    #[serde(default)]
    pub mappings: Vec<PathBuf>,
    /// How often the health message is sent and the one-line summary logged.
    #[serde(default = "default_health_interval")]
    pub health_interval: Dur,
    #[serde(default = "default_health_topic")]
    pub health_topic: String,
}

const fn default_health_interval() -> Dur {
    Dur::secs(60)
}

fn default_health_topic() -> String {
    "/${productKey}/${deviceName}/user/health".into()
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            mappings: Vec::new(),
            health_interval: default_health_interval(),
            health_topic: default_health_topic(),
        }
    }
}

/// The running bridge.
pub struct Bridge {
    pub stats: Vec<Arc<RuleStats>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How long an `auto` QoS rule waits to discover the publisher.
const AUTO_QOS_WAIT: Duration = Duration::from_secs(3);

async fn auto_qos(transport: &Arc<dyn Transport>, topic: &str, fallback: Qos) -> Qos {
    let deadline = tokio::time::Instant::now() + AUTO_QOS_WAIT;
    loop {
        if let Some(q) = transport.discovered_publisher_qos(topic) {
            tracing::debug!(topic, qos = ?q, "Using the discovered publisher's QoS.");
            return q;
        }
        if tokio::time::Instant::now() >= deadline {
            // Best effort + volatile matches every publisher, reliable or not.
            let q = Qos {
                reliability: crate::ros::transport::Reliability::BestEffort,
                ..fallback
            };
            tracing::warn!(topic, "No publisher of this topic discovered yet; subscribing best-effort, which matches any publisher but does not ask for retransmission.");
            return q;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How often a rule with a fixed QoS looks for its topic's publisher.
const QOS_CHECK: Duration = Duration::from_secs(2);

/// Why a subscription with `ours` receives nothing from a publisher offering `theirs`,
/// if it does not.
pub fn incompatible(ours: Qos, theirs: Qos) -> Option<&'static str> {
    use crate::ros::transport::{Durability, Reliability};
    if ours.reliability == Reliability::Reliable && theirs.reliability == Reliability::BestEffort {
        return Some("the rule asks for reliable delivery and the publisher offers best-effort");
    }
    if ours.durability == Durability::TransientLocal && theirs.durability == Durability::Volatile {
        return Some(
            "the rule asks for transient-local durability and the publisher offers volatile",
        );
    }
    None
}

/// Warns once when the first publisher of a rule's topic offers a QoS the rule's
/// subscription cannot match (DDS then delivers nothing, and says nothing).
async fn watch_qos(
    transport: Arc<dyn Transport>,
    rule: Arc<rules::RosToMqtt>,
    ours: Qos,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(QOS_CHECK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(theirs) = transport.discovered_publisher_qos(&rule.ros_topic) {
            if let Some(why) = incompatible(ours, theirs) {
                tracing::warn!(rule = %rule.name, ros_topic = %rule.ros_topic, reason = why,
                    "This rule receives nothing from the topic's publisher: {}. Use qos = \"auto\" (or \"sensor-data\" for a best-effort publisher).", why);
            }
            return;
        }
    }
}

/// Starts every rule. Subscriptions with `auto` QoS start once the publisher is known
/// (or after a short wait).
/// The call log of cloud service requests, in the state folder.
pub const CALL_LOG: &str = "service-calls.jsonl";

pub async fn start(
    rules: &Rules,
    transport: Arc<dyn Transport>,
    link: LinkHandle,
    v5: bool,
    state_dir: &std::path::Path,
    shutdown: CancellationToken,
) -> Result<Bridge, TransportError> {
    let started = std::time::Instant::now();
    let mut stats = Vec::new();
    let mut tasks = Vec::new();
    for rule in &rules.outbound {
        let rule = Arc::new(rule.clone());
        let st = Arc::new(RuleStats::new(
            &rule.name,
            "ros_to_mqtt",
            &rule.ros_topic,
            &rule.mqtt_topic,
        ));
        stats.push(st.clone());
        let (tx, rx) = mpsc::channel(1024);
        match rule.qos {
            QosChoice::Fixed(q) => {
                transport.subscribe(
                    &rule.ros_topic,
                    &rule.type_name,
                    rule.schema.clone(),
                    q,
                    tx,
                )?;
                tasks.push(tokio::spawn(watch_qos(
                    transport.clone(),
                    rule.clone(),
                    q,
                    shutdown.clone(),
                )));
            }
            QosChoice::Auto(fallback) => {
                let t = transport.clone();
                let r = rule.clone();
                tasks.push(tokio::spawn(async move {
                    let q = auto_qos(&t, &r.ros_topic, fallback).await;
                    if let Err(e) = t.subscribe(&r.ros_topic, &r.type_name, r.schema.clone(), q, tx) {
                        tracing::error!(rule = %r.name, error = %e, "Cannot subscribe; this rule does nothing.");
                    }
                }));
            }
        }
        tasks.push(tokio::spawn(outbound::run(
            rule,
            rx,
            link.clone(),
            st,
            v5,
            shutdown.clone(),
        )));
    }
    for rule in &rules.inbound {
        let rule = Arc::new(rule.clone());
        let st = Arc::new(RuleStats::new(
            &rule.name,
            "mqtt_to_ros",
            &rule.ros_topic,
            &rule.mqtt_filter,
        ));
        stats.push(st.clone());
        let qos = match rule.qos {
            QosChoice::Fixed(q) | QosChoice::Auto(q) => q,
        };
        let publisher =
            transport.publisher(&rule.ros_topic, &rule.type_name, rule.schema.clone(), qos)?;
        let rx = link
            .subscribe(&rule.mqtt_filter, QoS::AtLeastOnce, 256)
            .await
            .map_err(|e| TransportError::Start(e.to_string()))?;
        tasks.push(tokio::spawn(inbound::run(
            rule,
            rx,
            publisher,
            link.clone(),
            st,
            shutdown.clone(),
        )));
    }
    if !rules.services.is_empty() {
        let path = state_dir.join(CALL_LOG);
        let log = calls::CallLog::open(&path, calls::KEPT).map_err(|e| {
            TransportError::Start(format!(
                "cannot open the service call log {}: {e}",
                path.display()
            ))
        })?;
        let log = Arc::new(std::sync::Mutex::new(log));
        for rule in &rules.services {
            let rule = Arc::new(rule.clone());
            let st = Arc::new(RuleStats::new(
                &rule.name,
                match rule.target {
                    rules::Target::Call(_) => "mqtt_to_service",
                    rules::Target::Set(_) => "property_set",
                    rules::Target::Goal(_) => "mqtt_to_action",
                },
                &rule.target_name(),
                &rule.mqtt_filter,
            ));
            stats.push(st.clone());
            let mut publishers = Vec::new();
            match &rule.target {
                // The client now, so that it is matched with the server by the first
                // request.
                rules::Target::Call(c) => {
                    transport.service_ready(&c.ros_service, &c.type_name, c.rmw)?;
                }
                rules::Target::Goal(g) => {
                    // The clients now, so that they are matched by the first request.
                    for (what, ty) in [
                        ("send_goal", g.part("SendGoal")),
                        ("get_result", g.part("GetResult")),
                        ("cancel_goal", service::cancel_type()),
                    ] {
                        transport.service_ready(&g.endpoint(what), &ty, g.rmw)?;
                    }
                }
                rules::Target::Set(p) => {
                    for prop in &p.properties {
                        publishers.push(transport.publisher(
                            &prop.ros_topic,
                            &prop.type_name,
                            prop.schema.clone(),
                            prop.qos,
                        )?);
                    }
                }
            }
            let rx = link
                .subscribe(&rule.mqtt_filter, QoS::AtLeastOnce, 256)
                .await
                .map_err(|e| TransportError::Start(e.to_string()))?;
            let svc = service::Service {
                rule,
                transport: transport.clone(),
                link: link.clone(),
                stats: st,
                log: log.clone(),
                started,
                publishers,
                active: Arc::default(),
                goal_topics: std::sync::Mutex::default(),
            };
            let svc = Arc::new(svc);
            if let rules::Target::Goal(g) = &svc.rule.target {
                let (tx, frx) = mpsc::channel(256);
                transport.subscribe(
                    &g.endpoint("feedback"),
                    &g.part("FeedbackMessage"),
                    g.feedback.clone(),
                    Qos::ros_default(),
                    tx,
                )?;
                tasks.push(tokio::spawn(service::forward_feedback(
                    svc.clone(),
                    frx,
                    shutdown.clone(),
                )));
                for (topic, kind) in [
                    (&g.cancel_topic, service::GoalRequest::Cancel),
                    (&g.status_topic, service::GoalRequest::Status),
                ] {
                    let grx = link
                        .subscribe(topic, QoS::AtLeastOnce, 64)
                        .await
                        .map_err(|e| TransportError::Start(e.to_string()))?;
                    tasks.push(tokio::spawn(service::serve_goal_requests(
                        svc.clone(),
                        kind,
                        grx,
                        shutdown.clone(),
                    )));
                }
            }
            tasks.push(tokio::spawn(svc.run(rx, shutdown.clone())));
        }
    }
    tracing::info!(
        to_cloud = rules.outbound.len(),
        from_cloud = rules.inbound.len(),
        services = rules.services.len(),
        files = rules.files.len(),
        "Bridge rules started."
    );
    Ok(Bridge { stats, tasks })
}
