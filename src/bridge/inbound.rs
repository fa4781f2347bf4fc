//! MQTT -> ROS 2: one task per rule. Each cloud command is parsed, checked against the
//! message definition and published on the ROS topic; a bad one gets an error message
//! on the rule's error topic (with the JSON path of what was wrong), and the agent goes on.
//!
//! A command is acknowledged to the broker only once it has been dealt with here
//! (published, or refused with an answer): the message's [`crate::mqtt::Ack`] goes with
//! it and is sent when it is dropped at the end of its turn. Commands are taken one at
//! a time, in order; a command that comes before the topic has a subscriber (just after
//! the agent started, while DDS matches its publishers) waits for one, up to the rule's
//! `wait_for_subscriber`. A command older than the rule's `max_age` is not carried out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rules::{AgeLimit, Envelope, MqttToRos};
use super::stats::RuleStats;
use crate::clock::{now_ms, rfc3339_ms};
use crate::loglimit::{self, Verdict};
use crate::mqtt::{Incoming, LinkHandle, Message, QoS};
use crate::ros::codec::{self, EncodeOptions};
use crate::ros::transport::RawPublisher;

/// The CDR for one command, or why not.
pub fn convert(rule: &MqttToRos, payload: &[u8]) -> Result<Bytes, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
    convert_value(rule, v)
}

fn convert_value(rule: &MqttToRos, v: Value) -> Result<Bytes, String> {
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

/// When a command was sent, from its `timestamp_field`: milliseconds since the epoch
/// (a number from 1e11 up), seconds (a smaller number), or RFC 3339 text.
pub fn sent_at_ms(v: &Value, path: &[String]) -> Result<u64, String> {
    let name = path.join(".");
    let mut at = v;
    for part in path {
        at = at
            .get(part)
            .ok_or_else(|| format!("{name}: missing (the rule's timestamp_field)"))?;
    }
    match at {
        Value::Number(n) => {
            let f = n
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .ok_or_else(|| format!("{name}: {n} is not a time"))?;
            Ok(if f >= 1e11 {
                f as u64
            } else {
                (f * 1000.0) as u64
            })
        }
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis().max(0) as u64)
            .map_err(|e| format!("{name}: {s:?} is not an RFC 3339 time ({e})")),
        other => Err(format!("{name}: {other} is not a time")),
    }
}

/// Takes the member at `path` out of `v` (the timestamp, when it is not in the message).
fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = v;
    for p in parents {
        match at.get_mut(p) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Value::Object(m) = at {
        m.remove(last);
    }
}

/// Why a command is too old, if it is: `sent_ms` is when it was sent (if known),
/// `arrived_ms` when the agent took it from the broker.
pub fn staleness(
    age: &AgeLimit,
    sent_ms: Option<u64>,
    arrived_ms: u64,
    now: u64,
) -> Option<String> {
    let max = age.max_age?;
    let max_ms = max.as_millis() as u64;
    let from = sent_ms.unwrap_or(arrived_ms);
    let old = now.saturating_sub(from);
    (old > max_ms).then(|| {
        format!(
            "stale: {} {:.1} s ago, more than max_age {:.1} s; not carried out",
            if sent_ms.is_some() {
                "sent"
            } else {
                "received"
            },
            old as f64 / 1000.0,
            max.as_secs_f64()
        )
    })
}

impl Refusal {
    /// The kind of failure, in the log and its summaries.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Invalid => "invalid",
            Refusal::Stale => "stale",
            Refusal::TooLarge => "too-large",
            Refusal::Failed => "ros",
        }
    }
}

/// Why a command was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON, or not the rule's type.
    Invalid,
    /// Older than the rule's `max_age`, or past its MQTT 5 Message Expiry.
    Stale,
    /// Over `mqtt.max_packet_size`: not read.
    TooLarge,
    /// ROS could not take it.
    Failed,
}

/// A cloud command as read: its JSON (with the timestamp taken out when it is not part
/// of the message) and the times that decide whether it is still fresh.
pub struct Received {
    pub value: Value,
    pub sent_ms: Option<u64>,
    pub arrived_ms: u64,
    /// MQTT 5 Message Expiry: the seconds left on arrival, and when that runs out.
    expiry: Option<(u32, u64)>,
}

impl Received {
    pub fn read(age: &AgeLimit, m: &Incoming) -> Result<Self, (Refusal, String)> {
        if let Some((size, limit)) = m.oversized {
            return Err((
                Refusal::TooLarge,
                format!("the command is {size} bytes, more than mqtt.max_packet_size ({limit} bytes); it was not read"),
            ));
        }
        let value: Value = serde_json::from_slice(&m.payload)
            .map_err(|e| (Refusal::Invalid, format!("invalid JSON: {e}")))?;
        Self::of_json(age, m, value)
    }

    /// As [`Received::read`], for a command whose JSON is already parsed.
    pub fn of_json(
        age: &AgeLimit,
        m: &Incoming,
        mut value: Value,
    ) -> Result<Self, (Refusal, String)> {
        let arrived_ms = now_ms();
        let sent_ms = match &age.timestamp_field {
            Some(path) => {
                let t = sent_at_ms(&value, path).map_err(|e| (Refusal::Invalid, e))?;
                if age.timestamp_outside_message {
                    remove_path(&mut value, path);
                }
                Some(t)
            }
            None => None,
        };
        // MQTT 5 Message Expiry: the broker forwards what is left of the command's life.
        let expiry = m
            .props
            .as_ref()
            .and_then(|p| p.expiry)
            .map(|secs| (secs, arrived_ms + u64::from(secs) * 1000));
        Ok(Self {
            value,
            sent_ms,
            arrived_ms,
            expiry,
        })
    }

    /// Why the command is too old at `now`, if it is.
    pub fn too_old(&self, age: &AgeLimit, now: u64) -> Option<String> {
        staleness(age, self.sent_ms, self.arrived_ms, now).or_else(|| {
            self.expiry.filter(|&(_, at)| now > at).map(|(secs, _)| {
                format!("stale: its MQTT message expiry ({secs} s) passed before it could be carried out")
            })
        })
    }

    /// `wait`, shortened so that the command does not age past its limits meanwhile.
    pub fn wait_limit(&self, age: &AgeLimit, wait: Duration, now: u64) -> Duration {
        let mut limit = wait;
        if let Some(max) = age.max_age {
            let used =
                Duration::from_millis(now.saturating_sub(self.sent_ms.unwrap_or(self.arrived_ms)));
            limit = limit.min(max.saturating_sub(used));
        }
        if let Some((_, at)) = self.expiry {
            limit = limit.min(Duration::from_millis(at.saturating_sub(now)));
        }
        limit
    }
}

/// How often a waiting command looks for a subscriber.
const MATCH_POLL: Duration = Duration::from_millis(20);

/// Waits until the topic has a subscriber, or `limit` passes; false then.
async fn wait_for_subscriber(
    publisher: &dyn RawPublisher,
    limit: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if publisher.subscription_count() > 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(MATCH_POLL) => {}
            _ = shutdown.cancelled() => return false,
        }
    }
}

/// What became of one command.
enum Outcome {
    Sent,
    /// The agent is stopping: not carried out and not acknowledged, so the broker
    /// sends it again to the next run.
    Withheld,
    Refused(Refusal, String),
}

async fn handle(
    rule: &MqttToRos,
    m: &Incoming,
    publisher: &dyn RawPublisher,
    shutdown: &CancellationToken,
) -> Outcome {
    let cmd = match Received::read(&rule.age, m) {
        Ok(c) => c,
        Err((kind, why)) => return Outcome::Refused(kind, why),
    };
    if let Some(why) = cmd.too_old(&rule.age, now_ms()) {
        return Outcome::Refused(Refusal::Stale, why);
    }
    let cdr = match convert_value(rule, cmd.value.clone()) {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(Refusal::Invalid, e),
    };
    if publisher.subscription_count() == 0 {
        // Held, not published into the void; but never past its max_age or expiry.
        let limit = cmd.wait_limit(&rule.age, rule.wait_for_subscriber, now_ms());
        if !wait_for_subscriber(publisher, limit, shutdown).await {
            if shutdown.is_cancelled() {
                return Outcome::Withheld;
            }
            // Just past the limit: a command held to its last moment is refused.
            if let Some(why) = cmd.too_old(&rule.age, now_ms() + 1) {
                return Outcome::Refused(
                    Refusal::Stale,
                    format!("{why} (no subscriber on {})", rule.ros_topic),
                );
            }
            tracing::debug!(rule = %rule.name, ros_topic = %rule.ros_topic, "No subscriber yet; the command goes out anyway.");
        }
    }
    match publisher.publish(&cdr) {
        Ok(()) => Outcome::Sent,
        Err(e) => Outcome::Refused(Refusal::Failed, e.to_string()),
    }
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
            biased;
            _ = shutdown.cancelled() => break,
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        RuleStats::inc(&stats.received);
        match handle(&rule, &m, publisher.as_ref(), &shutdown).await {
            Outcome::Sent => RuleStats::inc(&stats.sent),
            Outcome::Withheld => m.withhold(),
            Outcome::Refused(kind, why) => {
                stats.refused(kind);
                if let Verdict::Log { left_out } = stats.error(kind.name(), why.clone()) {
                    tracing::warn!(rule = %rule.name, topic = %m.topic, error = %why,
                        "Refused a cloud command; the reason went back to the cloud{}.", loglimit::more(left_out));
                } else {
                    tracing::debug!(rule = %rule.name, topic = %m.topic, error = %why, "Refused a cloud command.");
                }
                let body = serde_json::json!({
                    "rule": rule.name,
                    "topic": m.topic,
                    "ros_topic": rule.ros_topic,
                    "error": why,
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
        // `m` goes here, and with it the acknowledgement to the broker.
        drop(m);
    }
    withhold_rest(&mut rx);
}

/// Closes `rx` and leaves what it still holds unacknowledged: commands taken from the
/// broker but not carried out stay with the broker for the next run.
pub fn withhold_rest(rx: &mut mpsc::Receiver<Incoming>) {
    rx.close();
    while let Ok(m) = rx.try_recv() {
        m.withhold();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_in_commands() {
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            sent_at_ms(&json!({"ts": 1_765_000_000_123u64}), &p("ts")).unwrap(),
            1_765_000_000_123
        );
        assert_eq!(
            sent_at_ms(&json!({"ts": 1_765_000_000.5}), &p("ts")).unwrap(),
            1_765_000_000_500
        );
        assert_eq!(
            sent_at_ms(
                &json!({"params": {"t": "2026-12-06T10:00:00.250Z"}}),
                &p("params.t")
            )
            .unwrap(),
            1_796_551_200_250
        );
        assert!(sent_at_ms(&json!({}), &p("ts"))
            .unwrap_err()
            .contains("missing"));
        assert!(sent_at_ms(&json!({"ts": "yesterday"}), &p("ts")).is_err());
        assert!(sent_at_ms(&json!({"ts": -5}), &p("ts")).is_err());
    }

    #[test]
    fn the_timestamp_is_taken_out_of_the_command() {
        let mut v = json!({"params": {"t": 1, "mode": "pick"}, "ts": 2});
        remove_path(&mut v, &["params".into(), "t".into()]);
        assert_eq!(v, json!({"params": {"mode": "pick"}, "ts": 2}));
        remove_path(&mut v, &["ts".into()]);
        remove_path(&mut v, &["nope".into(), "x".into()]);
        assert_eq!(v, json!({"params": {"mode": "pick"}}));
    }
}
