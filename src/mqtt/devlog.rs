//! The device log: the agent's own WARN and ERROR lines (INFO too when configured) also
//! go to the platform's log topic as JSON records, batched and rate-limited, through the
//! outbox's `log` class, so the cloud keeps the robot's log across outages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::config::DeviceLogSettings;
use super::link::LinkHandle;
use super::message::{Message, QoS};
use crate::clock::{now_ms, rfc3339_ms};
use crate::logging::Scrubber;

/// One log line as the platform receives it.
#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    #[serde(rename = "utcTime")]
    pub utc_time: String,
    #[serde(rename = "logLevel")]
    pub level: &'static str,
    pub module: String,
    #[serde(rename = "logContent")]
    pub content: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// Feeds log events to the shipper; never blocks the code that logs.
pub struct DeviceLogLayer {
    tx: mpsc::Sender<LogRecord>,
    max_level: Level,
    scrubber: Scrubber,
    pub dropped: Arc<AtomicU64>,
}

/// The layer for the logging setup, and the receiving end for [`run_shipper`].
pub fn channel(info: bool, scrubber: Scrubber) -> (DeviceLogLayer, mpsc::Receiver<LogRecord>) {
    let (tx, rx) = mpsc::channel(1024);
    (
        DeviceLogLayer {
            tx,
            max_level: if info { Level::INFO } else { Level::WARN },
            scrubber,
            dropped: Arc::new(AtomicU64::new(0)),
        },
        rx,
    )
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().to_owned(), text);
        }
    }
}

impl<S: Subscriber> Layer<S> for DeviceLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > self.max_level || !meta.target().starts_with("edge_agent") {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let record = LogRecord {
            utc_time: rfc3339_ms(now_ms()),
            level: match *meta.level() {
                Level::ERROR => "ERROR",
                Level::WARN => "WARN",
                Level::INFO => "INFO",
                Level::DEBUG => "DEBUG",
                Level::TRACE => "TRACE",
            },
            module: meta.target().trim_start_matches("edge_agent::").to_owned(),
            content: self.scrubber.scrub(&f.message).into_owned(),
            fields: f
                .fields
                .into_iter()
                .map(|(k, v)| (k, self.scrubber.scrub(&v).into_owned()))
                .collect(),
        };
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends batches of records every `batch_interval`, at most `max_per_minute`; lines
/// over the budget are counted and reported in one summary record.
pub async fn run_shipper(
    mut rx: mpsc::Receiver<LogRecord>,
    link: LinkHandle,
    settings: DeviceLogSettings,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.batch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_ms = f64::from(settings.max_per_minute) / 60_000.0;
    let mut budget = f64::from(settings.max_per_minute);
    let mut last = now_ms();
    let mut batch: Vec<LogRecord> = Vec::new();
    let mut suppressed = 0u64;
    let mut id = 0u64;
    loop {
        let stopping = tokio::select! {
            r = rx.recv() => match r {
                Some(rec) => {
                    let now = now_ms();
                    budget = (budget + (now - last) as f64 * per_ms).min(f64::from(settings.max_per_minute));
                    last = now;
                    if budget >= 1.0 {
                        budget -= 1.0;
                        batch.push(rec);
                    } else {
                        suppressed += 1;
                    }
                    continue;
                }
                None => true,
            },
            _ = tick.tick() => false,
            _ = shutdown.cancelled() => true,
        };
        if suppressed > 0 && (!batch.is_empty() || stopping || budget >= 1.0) {
            batch.push(LogRecord {
                utc_time: rfc3339_ms(now_ms()),
                level: "WARN",
                module: "device_log".into(),
                content: format!(
                    "{suppressed} log lines were not sent (over device_log.max_per_minute)"
                ),
                fields: BTreeMap::new(),
            });
            suppressed = 0;
        }
        if !batch.is_empty() {
            id += 1;
            let body = serde_json::json!({
                "id": id.to_string(),
                "version": "1.0",
                "params": batch,
                "method": "thing.log.post",
            });
            batch = Vec::new();
            let payload = serde_json::to_vec(&body).unwrap_or_default();
            let msg = Message::new(settings.topic.as_str(), payload, QoS::AtLeastOnce);
            if link.publish_nowait(msg, "log").await.is_err() {
                break;
            }
        }
        if stopping {
            break;
        }
    }
}
