//! MQTT -> ROS 2: one task per rule. Each cloud command is parsed, checked against the
//! message definition and published on the ROS topic; a bad one gets an error message
//! on the rule's error topic (with the JSON path of what was wrong), and the agent goes on.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rules::{Envelope, MqttToRos};
use super::stats::RuleStats;
use crate::clock::{now_ms, rfc3339_ms};
use crate::mqtt::{Incoming, LinkHandle, Message, QoS};
use crate::ros::codec::{self, EncodeOptions};
use crate::ros::transport::RawPublisher;

/// The CDR for one command, or why not.
pub fn convert(rule: &MqttToRos, payload: &[u8]) -> Result<Bytes, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
    let msg = match rule.envelope {
        Envelope::Raw => v,
        Envelope::Alink => match v {
            Value::Object(mut m) => m.remove("params").ok_or_else(|| {
                "params: missing (the alink envelope carries the message in \"params\")".to_owned()
            })?,
            _ => return Err("expected an Alink request object with \"params\"".into()),
        },
    };
    let opts = EncodeOptions {
        strict: rule.strict,
        big_endian: false,
    };
    codec::encode_value(&rule.schema, &msg, &opts)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

pub async fn run(
    rule: Arc<MqttToRos>,
    mut rx: mpsc::Receiver<Incoming>,
    publisher: Arc<dyn RawPublisher>,
    link: LinkHandle,
    stats: Arc<RuleStats>,
    shutdown: CancellationToken,
) {
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        RuleStats::inc(&stats.received);
        let result = convert(&rule, &m.payload)
            .and_then(|cdr| publisher.publish(&cdr).map_err(|e| e.to_string()));
        match result {
            Ok(()) => RuleStats::inc(&stats.sent),
            Err(e) => {
                if stats.error(e.clone()) {
                    tracing::warn!(rule = %rule.name, topic = %m.topic, error = %e,
                        "Rejected a cloud command; an error message went back to the cloud. Further rejections are only counted.");
                } else {
                    tracing::debug!(rule = %rule.name, topic = %m.topic, error = %e, "Rejected a cloud command.");
                }
                let body = serde_json::json!({
                    "rule": rule.name,
                    "topic": m.topic,
                    "ros_topic": rule.ros_topic,
                    "error": e,
                    "time": rfc3339_ms(now_ms()),
                });
                let reply = Message::new(
                    rule.error_topic.as_str(),
                    serde_json::to_vec(&body).unwrap_or_default(),
                    QoS::AtLeastOnce,
                );
                let _ = link.publish_nowait(reply, "telemetry").await;
            }
        }
    }
}
