//! Per-rule counters, for the health message, the log summary and `edge-agent status`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::loglimit::{LogLimiter, Verdict};

#[derive(Debug, Default)]
pub struct RuleStats {
    pub name: String,
    pub direction: &'static str,
    pub ros_topic: String,
    pub mqtt_topic: String,
    /// Messages taken from the source (ROS or MQTT).
    pub received: AtomicU64,
    /// Messages handed to the destination.
    pub sent: AtomicU64,
    /// Replaced by a newer value under the rate limit.
    pub rate_dropped: AtomicU64,
    /// Dropped by the ROS middleware before the agent took them (the rule's depth was
    /// exceeded), where the RMW makes that known (see `Sample::lost_before`).
    pub lost: AtomicU64,
    pub errors: AtomicU64,
    /// Cloud commands not carried out because they were older than the rule's max_age.
    pub refused_stale: AtomicU64,
    /// Cloud commands over mqtt.max_packet_size.
    pub refused_too_large: AtomicU64,
    /// Cloud commands that were not JSON or not the rule's type.
    pub refused_invalid: AtomicU64,
    /// Service requests whose id was answered before: given the stored reply, not
    /// carried out again.
    pub duplicates: AtomicU64,
    /// Replies sent to service requests (the stored ones given to duplicates included).
    pub replies: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Which errors are logged: the first of each kind, then one line a minute.
    pub log: LogLimiter,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleSnapshot {
    pub name: String,
    pub direction: &'static str,
    pub ros_topic: String,
    pub mqtt_topic: String,
    pub received: u64,
    pub sent: u64,
    pub rate_dropped: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub lost: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub refused_stale: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub refused_too_large: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub refused_invalid: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub duplicates: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub replies: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl RuleStats {
    pub fn new(name: &str, direction: &'static str, ros_topic: &str, mqtt_topic: &str) -> Self {
        Self {
            name: name.to_owned(),
            direction,
            ros_topic: ros_topic.to_owned(),
            mqtt_topic: mqtt_topic.to_owned(),
            ..Self::default()
        }
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused cloud command by its reason.
    pub fn refused(&self, kind: crate::bridge::inbound::Refusal) {
        use crate::bridge::inbound::Refusal;
        match kind {
            Refusal::Invalid => Self::inc(&self.refused_invalid),
            Refusal::Stale => Self::inc(&self.refused_stale),
            Refusal::TooLarge => Self::inc(&self.refused_too_large),
            Refusal::Failed => {}
        }
    }

    /// Counts an error of `kind` and remembers it; says whether to log it (the first
    /// of its kind, then at most one a minute: see [`crate::loglimit`]).
    pub fn error(&self, kind: &'static str, message: String) -> Verdict {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let verdict = self.log.note(kind, &message);
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(message);
        }
        verdict
    }

    /// Logs, once each, the errors left out of the log for a whole minute.
    pub fn log_summaries(&self) {
        for s in self.log.summaries() {
            tracing::warn!(rule = %self.name, kind = s.kind, count = s.left_out, last_error = %s.last_message,
                "Rule {}: {} more {} errors in the last {} s.", self.name, s.left_out, s.kind, s.over.as_secs());
        }
    }

    pub fn snapshot(&self) -> RuleSnapshot {
        RuleSnapshot {
            name: self.name.clone(),
            direction: self.direction,
            ros_topic: self.ros_topic.clone(),
            mqtt_topic: self.mqtt_topic.clone(),
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            rate_dropped: self.rate_dropped.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            refused_stale: self.refused_stale.load(Ordering::Relaxed),
            refused_too_large: self.refused_too_large.load(Ordering::Relaxed),
            refused_invalid: self.refused_invalid.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            replies: self.replies.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
        }
    }
}
