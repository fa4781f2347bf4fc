//! The agent's periodic health: a message on MQTT for the platform, one INFO line in
//! the journal for the technician, and `<state_dir>/status.json` for `edge-agent status`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::bridge::stats::RuleStats;
use crate::clock::{now_ms, rfc3339_ms};
use crate::mqtt::{LinkHandle, Message, QoS};

/// The longest the status file goes without being written.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

pub struct Health {
    pub link: LinkHandle,
    pub rules: Vec<Arc<RuleStats>>,
    pub interval: Duration,
    pub topic: String,
    pub status_file: PathBuf,
    pub node: Option<String>,
    pub started_ms: u64,
    /// The detection service's answers, late answers and local estimates, when it runs.
    pub detect: Option<Arc<crate::detect::service::DetectStats>>,
}

impl Health {
    pub fn snapshot(&self, state: &str) -> Value {
        let now = now_ms();
        json!({
            "time": rfc3339_ms(now),
            "state": state,
            "version": crate::VERSION,
            "pid": std::process::id(),
            "uptime_s": (now.saturating_sub(self.started_ms)) / 1000,
            "health_interval_s": self.interval.as_secs(),
            "status_interval_s": self.status_every().as_secs(),
            "ros_node": self.node,
            "link": self.link.stats().snapshot(),
            "rules": self.rules.iter().map(|r| r.snapshot()).collect::<Vec<_>>(),
            "detect": self.detect.as_ref().map(|d| d.snapshot()),
        })
    }

    /// How often the status file is written: at every health report, and at least
    /// every [`STATUS_EVERY`], so `edge-agent status` shows the present whatever the
    /// health interval.
    pub fn status_every(&self) -> Duration {
        self.interval.min(STATUS_EVERY)
    }

    /// Replaces the status file (write, then rename), on the blocking pool: a slow disk
    /// must not hold up the runtime thread that bridges messages.
    async fn write_status(&self, v: &Value) {
        let file = self.status_file.clone();
        let text = serde_json::to_vec_pretty(v).unwrap_or_default();
        let written = tokio::task::spawn_blocking(move || {
            let tmp = file.with_extension("json.tmp");
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &file))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = written {
            tracing::debug!(error = %e, file = %self.status_file.display(), "Cannot write the status file.");
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut status_tick = tokio::time::interval(self.status_every());
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status_tick.tick().await;
        let first = self.snapshot("running");
        self.write_status(&first).await;
        let mut last_in = 0u64;
        let mut last_out = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = status_tick.tick() => {
                    let snap = self.snapshot("running");
                    self.write_status(&snap).await;
                    continue;
                }
                _ = tick.tick() => {}
            }
            let snap = self.snapshot("running");
            self.write_status(&snap).await;
            let (mut rin, mut rout, mut errors) = (0, 0, 0);
            for r in &self.rules {
                r.log_summaries();
                let s = r.snapshot();
                rin += s.received;
                rout += s.sent;
                errors += s.errors;
            }
            let link = self.link.stats().snapshot();
            let dropped: u64 = link.outbox.iter().map(|c| c.counters.dropped_full).sum();
            tracing::info!(
                link = if link.connected { "up" } else { "down" },
                held = link.held,
                dropped = (dropped > 0).then_some(dropped),
                msgs_in = rin - last_in,
                msgs_out = rout - last_out,
                rules = self.rules.len(),
                errors,
                reconnects = link.reconnects,
                "Health: {} in, {} out in the last {}s; link {}, {} held{}.",
                rin - last_in,
                rout - last_out,
                self.interval.as_secs(),
                if link.connected { "up" } else { "down" },
                link.held,
                if dropped > 0 {
                    format!(", {dropped} dropped by full outbox classes since the start")
                } else {
                    String::new()
                }
            );
            last_in = rin;
            last_out = rout;
            let msg = Message::new(
                self.topic.as_str(),
                serde_json::to_vec(&snap).unwrap_or_default(),
                QoS::AtLeastOnce,
            );
            let _ = self.link.publish_nowait(msg, "status").await;
        }
        let last = self.snapshot("stopped");
        self.write_status(&last).await;
    }
}
