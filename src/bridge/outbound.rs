//! ROS 2 -> MQTT: one task per rule. Takes samples from the transport, applies the rate
//! limit (the newest value wins), turns each into the configured payload and hands it
//! to the cloud link.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::image::{self, ImageError};
use super::rules::{Envelope, ImageFormat, ImagePayload, MetaPlacement, RosToMqtt};
use super::stats::RuleStats;
use crate::loglimit::{self, Verdict};
use crate::mqtt::{LinkHandle, Message, Props};
use crate::ros::codec::{self, DecodeOptions};
use crate::ros::transport::Sample;

/// Alink request ids, unique in the process.
static ALINK_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_alink_id() -> u64 {
    ALINK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Why a sample could not become an MQTT message.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("message does not fit {type_name}: {source}")]
    Decode {
        type_name: String,
        #[source]
        source: codec::DecodeError,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl BuildError {
    /// The kind of failure, for the log's rate limit: a new kind is always logged.
    pub fn kind(&self) -> &'static str {
        match self {
            BuildError::Decode { .. } => "decode",
            BuildError::Image(ImageError::Cdr(_)) => "image-cdr",
            BuildError::Image(ImageError::Encoding(_) | ImageError::Format(..)) => "image-encoding",
            BuildError::Image(_) => "image",
        }
    }
}

/// Builds the MQTT message for one sample.
pub fn build(
    rule: &RosToMqtt,
    sample: &Sample,
    v5: bool,
    scratch: &mut Vec<u8>,
) -> Result<Message, BuildError> {
    if let Some(plan) = &rule.image {
        return Ok(build_image(rule, sample, v5, plan)?);
    }
    let not_fit = |source| BuildError::Decode {
        type_name: rule.type_name.to_string(),
        source,
    };
    let ts_ms = sample.source_time_ns.map(|n| n / 1_000_000);
    let mut props = Props::default();
    if rule.timestamp == MetaPlacement::Property {
        if let Some(ts) = ts_ms {
            props.user.push(("ts".into(), ts.to_string()));
        }
    }
    if rule.type_meta == MetaPlacement::Property {
        props
            .user
            .push(("ros_type".into(), rule.type_name.to_string()));
    }
    let payload: Vec<u8> = if rule.fields.is_none() && rule.rename.is_empty() {
        // Fast path: the decoder writes JSON text; envelope and extra fields are spliced.
        scratch.clear();
        codec::decode_to_json(
            &rule.schema,
            &sample.cdr,
            &DecodeOptions::default(),
            scratch,
        )
        .map_err(not_fit)?;
        let mut extra = String::new();
        if rule.timestamp == MetaPlacement::Field {
            if let Some(ts) = ts_ms {
                extra.push_str(&format!("\"_ts\":{ts},"));
            }
        }
        if rule.type_meta == MetaPlacement::Field {
            extra.push_str(&format!("\"_type\":\"{}\",", rule.type_name));
        }
        let mut body = Vec::with_capacity(scratch.len() + extra.len() + 96);
        if extra.is_empty() {
            body.extend_from_slice(scratch);
        } else {
            body.push(b'{');
            body.extend_from_slice(extra.as_bytes());
            if scratch.as_slice() == b"{}" {
                body.pop(); // the trailing comma of `extra`
                body.push(b'}');
            } else {
                body.extend_from_slice(&scratch[1..]);
            }
        }
        envelope(rule, body)
    } else {
        let v = codec::decode_to_value(&rule.schema, &sample.cdr, &DecodeOptions::default())
            .map_err(not_fit)?;
        let mut obj = select(rule, v);
        if rule.timestamp == MetaPlacement::Field {
            if let Some(ts) = ts_ms {
                obj.insert("_ts".into(), Value::from(ts));
            }
        }
        if rule.type_meta == MetaPlacement::Field {
            obj.insert("_type".into(), Value::from(rule.type_name.to_string()));
        }
        envelope(
            rule,
            serde_json::to_vec(&Value::Object(obj)).unwrap_or_default(),
        )
    };
    let mut msg = Message::new(rule.mqtt_topic.as_str(), payload, rule.mqtt_qos);
    msg.retain = rule.retain;
    if v5 && !props.user.is_empty() {
        props.content_type = Some("application/json".into());
        msg.props = Some(Box::new(props));
    }
    Ok(msg)
}

/// The configured fields, under their output names.
fn select(rule: &RosToMqtt, v: Value) -> Map<String, Value> {
    let Value::Object(mut all) = v else {
        return Map::new();
    };
    match &rule.fields {
        None => {
            for (from, to) in &rule.rename {
                if let Some(x) = all.remove(from) {
                    all.insert(to.clone(), x);
                }
            }
            all
        }
        Some(sel) => {
            let root = Value::Object(all);
            let mut out = Map::new();
            for s in sel {
                let mut cur = &root;
                for part in &s.path {
                    cur = &cur[part.as_str()];
                }
                out.insert(s.output.clone(), cur.clone());
            }
            out
        }
    }
}

fn envelope(rule: &RosToMqtt, body: Vec<u8>) -> Vec<u8> {
    match rule.envelope {
        Envelope::Raw => body,
        Envelope::Alink => {
            let id = next_alink_id();
            let mut out = Vec::with_capacity(body.len() + 96);
            out.extend_from_slice(
                format!("{{\"id\":\"{id}\",\"version\":\"1.0\",\"params\":").as_bytes(),
            );
            if let Some(key) = &rule.params_key {
                out.push(b'{');
                crate::ros::codec::json_out::write_str(&mut out, key);
                out.push(b':');
                out.extend_from_slice(&body);
                out.push(b'}');
            } else {
                out.extend_from_slice(&body);
            }
            out.extend_from_slice(b",\"method\":\"thing.event.property.post\"}");
            out
        }
    }
}

fn build_image(
    rule: &RosToMqtt,
    sample: &Sample,
    v5: bool,
    plan: &super::rules::ImagePlan,
) -> Result<Message, ImageError> {
    let binary = match plan.payload {
        ImagePayload::Binary => true,
        ImagePayload::Json => false,
        ImagePayload::Auto => v5,
    };
    let (data, mime, format, w, h, stamp, frame) = if plan.compressed {
        let c = crate::ros::image::parse_compressed(&sample.cdr)?;
        let mime = image::mime_of_format(&c.format);
        (
            c.data.to_vec(),
            mime,
            c.format,
            0,
            0,
            (c.stamp_sec, c.stamp_nanosec),
            c.frame_id,
        )
    } else {
        let img = crate::ros::image::parse_image(&sample.cdr)?;
        let (data, w, h, mime, fmt) = match plan.format {
            ImageFormat::Jpeg => {
                let (d, w, h) = img.to_jpeg(plan.quality, plan.max_width)?;
                (d, w, h, "image/jpeg", "jpeg")
            }
            ImageFormat::Png => {
                let (d, w, h) = img.to_png(plan.max_width)?;
                (d, w, h, "image/png", "png")
            }
        };
        (
            data,
            mime,
            fmt.to_owned(),
            w,
            h,
            (img.stamp_sec, img.stamp_nanosec),
            img.frame_id,
        )
    };
    let mut msg = if binary {
        let mut m = Message::new(rule.mqtt_topic.as_str(), data, rule.mqtt_qos);
        m.props = Some(Box::new(Props {
            content_type: Some(mime.to_owned()),
            user: vec![
                ("ros_topic".into(), rule.ros_topic.clone()),
                ("frame_id".into(), frame),
                ("stamp".into(), format!("{}.{:09}", stamp.0, stamp.1)),
                ("width".into(), w.to_string()),
                ("height".into(), h.to_string()),
            ],
            ..Props::default()
        }));
        m
    } else {
        use base64::Engine as _;
        let v = serde_json::json!({
            "header": {"stamp": {"sec": stamp.0, "nanosec": stamp.1}, "frame_id": frame},
            "format": format,
            "width": w,
            "height": h,
            "data": base64::engine::general_purpose::STANDARD.encode(&data),
        });
        Message::new(
            rule.mqtt_topic.as_str(),
            serde_json::to_vec(&v).unwrap_or_default(),
            rule.mqtt_qos,
        )
    };
    msg.retain = rule.retain;
    Ok(msg)
}

/// Runs one rule until `shutdown`, then hands over what it still holds.
pub async fn run(
    rule: Arc<RosToMqtt>,
    mut rx: mpsc::Receiver<Sample>,
    link: LinkHandle,
    stats: Arc<RuleStats>,
    v5: bool,
    shutdown: CancellationToken,
) {
    let mut scratch = Vec::with_capacity(4096);
    let mut pending: Option<Sample> = None;
    let mut next_allowed = Instant::now();
    loop {
        let wait = pending.as_ref().map(|_| next_allowed);
        let sample = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            s = rx.recv() => match s {
                Some(s) => s,
                None => break,
            },
            _ = async { tokio::time::sleep_until(wait.unwrap_or_else(Instant::now)).await }, if wait.is_some() => {
                if let Some(s) = pending.take() {
                    next_allowed = Instant::now() + rule.min_interval.unwrap_or_default();
                    send(&rule, &s, &link, &stats, v5, &mut scratch).await;
                }
                continue;
            }
        };
        RuleStats::inc(&stats.received);
        if sample.lost_before > 0 {
            stats
                .lost
                .fetch_add(sample.lost_before, std::sync::atomic::Ordering::Relaxed);
            let what = format!(
                "{} messages dropped by the ROS middleware before the agent took them",
                sample.lost_before
            );
            if let Verdict::Log { left_out } = stats.log.note("lost", &what) {
                tracing::warn!(rule = %rule.name, topic = %rule.ros_topic, lost = sample.lost_before,
                    "Messages of this topic were lost before the agent took them: the rule's depth was exceeded{}.",
                    loglimit::more(left_out));
            }
        }
        match rule.min_interval {
            None => send(&rule, &sample, &link, &stats, v5, &mut scratch).await,
            Some(interval) => {
                let now = Instant::now();
                if pending.is_none() && now >= next_allowed {
                    next_allowed = now + interval;
                    send(&rule, &sample, &link, &stats, v5, &mut scratch).await;
                } else if pending.replace(sample).is_some() {
                    RuleStats::inc(&stats.rate_dropped);
                }
            }
        }
    }
    // Stop taking ROS messages; what was taken goes to the outbox.
    rx.close();
    if let Some(s) = pending.take() {
        send(&rule, &s, &link, &stats, v5, &mut scratch).await;
    }
    while let Ok(s) = rx.try_recv() {
        RuleStats::inc(&stats.received);
        if rule.min_interval.is_none() {
            send(&rule, &s, &link, &stats, v5, &mut scratch).await;
        }
    }
}

async fn send(
    rule: &RosToMqtt,
    sample: &Sample,
    link: &LinkHandle,
    stats: &RuleStats,
    v5: bool,
    scratch: &mut Vec<u8>,
) {
    match build(rule, sample, v5, scratch) {
        Ok(msg) if msg.packet_size() > link.max_packet_size() => {
            let e = format!(
                "message of {} bytes is larger than the broker accepts (mqtt.max_packet_size = {})",
                msg.packet_size(),
                link.max_packet_size()
            );
            if let Verdict::Log { left_out } = stats.error("too-large", e.clone()) {
                tracing::warn!(rule = %rule.name, topic = %rule.ros_topic, error = %e,
                    "Cannot send this topic to the cloud{}.", loglimit::more(left_out));
            }
        }
        // Not waiting for the link's answer saves a task switch per message; a refused
        // message is counted in the link's statistics.
        Ok(msg) => match link.publish_nowait(msg, &rule.class).await {
            Ok(()) => RuleStats::inc(&stats.sent),
            Err(e) => {
                if let Verdict::Log { left_out } = stats.error(e.kind(), e.to_string()) {
                    tracing::warn!(rule = %rule.name, topic = %rule.ros_topic, error = %e,
                        "Cannot send this topic to the cloud{}.", loglimit::more(left_out));
                }
            }
        },
        Err(e) => {
            if let Verdict::Log { left_out } = stats.error(e.kind(), e.to_string()) {
                tracing::warn!(rule = %rule.name, topic = %rule.ros_topic, error = %e,
                    "A ROS message could not be converted{}.", loglimit::more(left_out));
            }
        }
    }
}
