//! Messages as the rest of the agent hands them to the cloud link, and as they arrive.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// Delivery guarantee. QoS 1 messages go through the durable outbox; QoS 0 messages are
/// sent only while the link is up and never written to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[repr(u8)]
pub enum QoS {
    #[serde(rename = "0")]
    AtMostOnce = 0,
    #[serde(rename = "1")]
    AtLeastOnce = 1,
}

/// MQTT 5 properties the agent uses; ignored on MQTT 3.1.1. The outbox keeps the
/// content type and user properties of what it holds; the others are for messages
/// sent at once (replies) and those that arrive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    pub content_type: Option<String>,
    pub user: Vec<(String, String)>,
    /// Message Expiry Interval, seconds (what is left of it, on arrival).
    pub expiry: Option<u32>,
    /// Response Topic: where a request wants its reply.
    pub response_topic: Option<String>,
    /// Correlation Data: given back with the reply.
    pub correlation: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub props: Option<Box<Props>>,
}

impl Message {
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>, qos: QoS) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            props: None,
        }
    }

    pub fn retained(mut self) -> Self {
        self.retain = true;
        self
    }

    /// Size of the PUBLISH packet on the wire, compared with the broker's limit. Counted
    /// as MQTT 5 (properties included), which is never less than the same message on
    /// MQTT 3.1.1.
    pub fn packet_size(&self) -> usize {
        super::wire::publish_size(super::wire::Version::V5, self)
    }
}

/// A message that arrived from the broker on a subscription.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub props: Option<Props>,
    /// At QoS 1: the acknowledgement, sent to the broker when the last copy of this
    /// message is dropped, that is once every handler has dealt with it. Until then the
    /// broker holds the message and sends it again after a reconnect.
    pub ack: Option<Arc<Ack>>,
    /// A message too large to be taken: (its size, mqtt.max_packet_size). Its payload is
    /// empty; the handler answers that it was refused.
    pub oversized: Option<(usize, usize)>,
}

impl Incoming {
    /// Leaves this message unacknowledged (the agent is stopping before dealing with
    /// it): the broker sends it again on the next connection.
    pub fn withhold(&self) {
        if let Some(a) = &self.ack {
            a.withhold();
        }
    }
}

/// The pending acknowledgement of one QoS 1 message: (connection, packet id), sent to
/// the link when dropped. An acknowledgement for a connection that has since ended is
/// not sent: the broker sends that message again.
#[derive(Debug)]
pub struct Ack {
    connection: u64,
    pkid: u16,
    tx: tokio::sync::mpsc::UnboundedSender<(u64, u16)>,
    /// How many acknowledgements are still undecided (the link waits for them when
    /// it stops).
    outstanding: Arc<AtomicUsize>,
    /// Not acknowledged after all: the agent stopped before the message was dealt
    /// with, and the broker is to send it again.
    withheld: AtomicBool,
}

impl Ack {
    pub fn new(
        connection: u64,
        pkid: u16,
        tx: tokio::sync::mpsc::UnboundedSender<(u64, u16)>,
        outstanding: Arc<AtomicUsize>,
    ) -> Self {
        outstanding.fetch_add(1, Ordering::Relaxed);
        Ack {
            connection,
            pkid,
            tx,
            outstanding,
            withheld: AtomicBool::new(false),
        }
    }

    /// The message was not dealt with; the broker keeps it for the next connection.
    pub fn withhold(&self) {
        self.withheld.store(true, Ordering::Relaxed);
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.withheld.load(Ordering::Relaxed) {
            let _ = self.tx.send((self.connection, self.pkid));
        }
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a topic matches an MQTT filter (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(topic_matches(
            "/pk/dev/user/cmd/#",
            "/pk/dev/user/cmd/arm/stop"
        ));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(topic_matches("a/#", "a"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("#", "anything/at/all"));
    }

    #[test]
    fn packet_size_counts_headers() {
        // fixed header, remaining length, topic length, topic, packet id, no properties
        let m = Message::new("t", vec![0u8; 100], QoS::AtLeastOnce);
        assert_eq!(m.packet_size(), 1 + 1 + 2 + 1 + 2 + 1 + 100);
        let m = Message::new("t", vec![0u8; 200], QoS::AtLeastOnce);
        assert_eq!(m.packet_size(), 1 + 2 + 2 + 1 + 2 + 1 + 200);
        let mut m = Message::new("t", vec![0u8; 10], QoS::AtMostOnce);
        m.props = Some(Box::new(Props {
            content_type: Some("a/b".into()),
            user: vec![("k".into(), "v".into())],
            ..Props::default()
        }));
        // content type: id, length, 3 bytes; user property: id, two lengths, 1 + 1 bytes
        assert_eq!(m.packet_size(), 1 + 1 + 2 + 1 + 1 + (6 + 7) + 10);
    }
}
