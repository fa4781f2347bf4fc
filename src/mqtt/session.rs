//! One MQTT connection attempt and its life, over rumqttc's 3.1.1 or 5 client, seen
//! through one small interface. A new session is made for every attempt, so no state
//! of a dead connection (rumqttc's own resend queue) leaks into the next one: what to
//! resend is the outbox's business.

use std::time::Duration;

use rumqttc::v5;

use super::auth::Credentials;
use super::config::{LinkSettings, Protocol};
use super::message::{Incoming, Message, Props, QoS};

/// What happened on the connection.
#[derive(Debug)]
pub enum SessionEvent {
    Connected,
    /// A PUBLISH left; its packet id (0 for QoS 0).
    Sent(u16),
    /// A SUBSCRIBE or DISCONNECT left.
    OtherRequestSent,
    PubAck(u16),
    Message(Incoming),
    Other,
}

/// Why the connection failed or ended, sorted by what a technician has to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The broker refused the credentials: configuration must change.
    Auth(String),
    /// TLS failed (unknown CA, wrong host name, bad client certificate).
    Tls(String),
    /// The broker refused for another reason (client id, protocol version, unavailable).
    Refused(String),
    /// Network: unreachable, reset, timed out. Usually passes by itself.
    Network(String),
    Protocol(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Auth(s) => write!(f, "the broker refused the credentials ({s})"),
            Failure::Tls(s) => write!(f, "TLS failed: {s}"),
            Failure::Refused(s) => write!(f, "the broker refused the connection ({s})"),
            Failure::Network(s) => write!(f, "network: {s}"),
            Failure::Protocol(s) => write!(f, "protocol: {s}"),
        }
    }
}

impl Failure {
    /// Failures an operator must fix (logged as ERROR).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Failure::Auth(_) | Failure::Tls(_) | Failure::Refused(_)
        )
    }

    fn from_io(e: &std::io::Error) -> Self {
        // rustls reports certificate problems through the I/O error of the handshake.
        let text = e.to_string();
        if e.kind() == std::io::ErrorKind::InvalidData
            || text.contains("certificate")
            || text.contains("tls")
        {
            Failure::Tls(text)
        } else {
            Failure::Network(text)
        }
    }

    fn refused(code: String) -> Self {
        if code.contains("UserName") || code.contains("Username") || code.contains("NotAuthorized")
        {
            Failure::Auth(code)
        } else {
            Failure::Refused(code)
        }
    }
}

fn v4_failure(e: rumqttc::ConnectionError) -> Failure {
    use rumqttc::ConnectionError as E;
    match e {
        E::ConnectionRefused(code) => Failure::refused(format!("{code:?}")),
        E::Tls(t) => Failure::Tls(t.to_string()),
        E::Io(io) => Failure::from_io(&io),
        E::NetworkTimeout | E::FlushTimeout => Failure::Network("timed out".into()),
        other => Failure::Protocol(other.to_string()),
    }
}

fn v5_failure(e: v5::ConnectionError) -> Failure {
    use v5::ConnectionError as E;
    match e {
        E::ConnectionRefused(code) => Failure::refused(format!("{code:?}")),
        E::Tls(t) => Failure::Tls(t.to_string()),
        E::Io(io) => Failure::from_io(&io),
        E::Timeout(_) => Failure::Network("timed out".into()),
        other => Failure::Protocol(other.to_string()),
    }
}

fn v4_qos(q: QoS) -> rumqttc::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
    }
}

fn v5_qos(q: QoS) -> v5::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
    }
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// A connection: the client half stays here; rumqttc's event loop runs in its own task
/// and sends what happens over a channel. Waiting on that channel can be interrupted
/// at any point without harm, which waiting on rumqttc's event loop cannot (dropping
/// it in the middle of a CONNECT opens a second connection, and the broker publishes
/// the first one's last will).
pub struct Session {
    client: Client,
    events: tokio::sync::mpsc::Receiver<Result<SessionEvent, Failure>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Requests (publish, subscribe) the session may have queued for rumqttc at once.
pub fn request_capacity(window: u16) -> usize {
    usize::from(window) * 2 + 64
}

fn map_v4(ev: rumqttc::Event) -> SessionEvent {
    use rumqttc::{Event, Outgoing, Packet};
    match ev {
        Event::Incoming(Packet::ConnAck(_)) => SessionEvent::Connected,
        Event::Incoming(Packet::PubAck(a)) => SessionEvent::PubAck(a.pkid),
        Event::Incoming(Packet::Publish(p)) => SessionEvent::Message(Incoming {
            topic: p.topic,
            payload: p.payload,
            props: None,
        }),
        Event::Outgoing(Outgoing::Publish(pkid)) => SessionEvent::Sent(pkid),
        Event::Outgoing(
            Outgoing::Subscribe(_) | Outgoing::Disconnect | Outgoing::Unsubscribe(_),
        ) => SessionEvent::OtherRequestSent,
        _ => SessionEvent::Other,
    }
}

fn map_v5(ev: v5::Event) -> SessionEvent {
    use v5::mqttbytes::v5::Packet;
    use v5::Event;
    match ev {
        Event::Incoming(Packet::ConnAck(_)) => SessionEvent::Connected,
        Event::Incoming(Packet::PubAck(a)) => SessionEvent::PubAck(a.pkid),
        Event::Incoming(Packet::Publish(p)) => SessionEvent::Message(Incoming {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            props: p.properties.map(|pp| Props {
                content_type: pp.content_type,
                user: pp.user_properties,
            }),
        }),
        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => SessionEvent::Sent(pkid),
        Event::Outgoing(
            rumqttc::Outgoing::Subscribe(_)
            | rumqttc::Outgoing::Disconnect
            | rumqttc::Outgoing::Unsubscribe(_),
        ) => SessionEvent::OtherRequestSent,
        _ => SessionEvent::Other,
    }
}

impl Session {
    /// Starts connecting at once (in its own task). Needs a tokio runtime.
    pub fn new(s: &LinkSettings, creds: &Credentials, will: Option<&Message>) -> Self {
        let cap = request_capacity(s.window);
        // Two more than the outbox window: the birth and offline status messages.
        let inflight = s.window.saturating_add(2);
        let (tx, events) = tokio::sync::mpsc::channel(cap);
        match s.protocol {
            Protocol::V311 => {
                let mut o =
                    rumqttc::MqttOptions::new(creds.client_id.clone(), s.host.clone(), s.port);
                o.set_keep_alive(s.keep_alive)
                    .set_clean_session(true)
                    .set_max_packet_size(s.max_packet_size, s.max_packet_size)
                    .set_inflight(inflight)
                    .set_request_channel_capacity(cap);
                if let Some(will) = will {
                    o.set_last_will(rumqttc::LastWill::new(
                        &*will.topic,
                        will.payload.to_vec(),
                        v4_qos(will.qos),
                        will.retain,
                    ));
                }
                if let Some(user) = &creds.username {
                    o.set_credentials(user.clone(), creds.password.clone().unwrap_or_default());
                }
                if let Some(tls) = &s.tls {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(tls.clone()),
                    ));
                }
                let (client, mut eventloop) = rumqttc::AsyncClient::new(o, cap);
                let mut net = rumqttc::NetworkOptions::new();
                net.set_connection_timeout(s.connect_timeout.as_secs().max(1));
                net.set_tcp_nodelay(s.tcp_nodelay);
                eventloop.set_network_options(net);
                let driver = tokio::spawn(async move {
                    loop {
                        let r = eventloop.poll().await.map(map_v4).map_err(v4_failure);
                        let end = r.is_err();
                        if tx.send(r).await.is_err() || end {
                            break;
                        }
                    }
                });
                Session {
                    client: Client::V4(client),
                    events,
                    driver,
                }
            }
            Protocol::V5 => {
                let mut o = v5::MqttOptions::new(creds.client_id.clone(), s.host.clone(), s.port);
                o.set_keep_alive(s.keep_alive)
                    .set_clean_start(true)
                    .set_max_packet_size(Some(s.max_packet_size as u32))
                    .set_outgoing_inflight_upper_limit(inflight)
                    .set_request_channel_capacity(cap);
                if let Some(will) = will {
                    o.set_last_will(v5::mqttbytes::v5::LastWill::new(
                        &*will.topic,
                        will.payload.clone(),
                        v5_qos(will.qos),
                        will.retain,
                        None,
                    ));
                }
                if let Some(user) = &creds.username {
                    o.set_credentials(user.clone(), creds.password.clone().unwrap_or_default());
                }
                if let Some(tls) = &s.tls {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(tls.clone()),
                    ));
                }
                o.set_connection_timeout(s.connect_timeout.as_secs().max(1));
                let mut net = rumqttc::NetworkOptions::new();
                net.set_connection_timeout(s.connect_timeout.as_secs().max(1));
                net.set_tcp_nodelay(s.tcp_nodelay);
                o.set_network_options(net);
                let (client, mut eventloop) = v5::AsyncClient::new(o, cap);
                let driver = tokio::spawn(async move {
                    loop {
                        let r = eventloop.poll().await.map(map_v5).map_err(v5_failure);
                        let end = r.is_err();
                        if tx.send(r).await.is_err() || end {
                            break;
                        }
                    }
                });
                Session {
                    client: Client::V5(client),
                    events,
                    driver,
                }
            }
        }
    }

    /// Queues a PUBLISH. Fails only if rumqttc's queue is full or the topic is invalid.
    pub fn try_publish(&self, m: &Message) -> Result<(), String> {
        match &self.client {
            Client::V4(c) => c
                .try_publish(
                    &*m.topic,
                    v4_qos(m.qos),
                    m.retain,
                    Vec::from(m.payload.clone()),
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let r = match &m.props {
                    Some(p) => {
                        let props = v5::mqttbytes::v5::PublishProperties {
                            content_type: p.content_type.clone(),
                            user_properties: p.user.clone(),
                            ..Default::default()
                        };
                        c.try_publish_with_properties(
                            &*m.topic,
                            v5_qos(m.qos),
                            m.retain,
                            m.payload.clone(),
                            props,
                        )
                    }
                    None => c.try_publish(&*m.topic, v5_qos(m.qos), m.retain, m.payload.clone()),
                };
                r.map_err(|e| e.to_string())
            }
        }
    }

    pub fn try_subscribe(&self, filter: &str, qos: QoS) -> Result<(), String> {
        match &self.client {
            Client::V4(c) => c
                .try_subscribe(filter, v4_qos(qos))
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, v5_qos(qos))
                .map_err(|e| e.to_string()),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), String> {
        match &self.client {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }

    /// The next thing that happened. Safe to cancel.
    pub async fn poll(&mut self) -> Result<SessionEvent, Failure> {
        match self.events.recv().await {
            Some(r) => r,
            None => Err(Failure::Protocol("the connection task ended".into())),
        }
    }

    /// The next event if one is already waiting.
    pub fn try_poll(&mut self) -> Option<Result<SessionEvent, Failure>> {
        use tokio::sync::mpsc::error::TryRecvError;
        match self.events.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                Some(Err(Failure::Protocol("the connection task ended".into())))
            }
        }
    }
}

/// How long to wait before attempt `n` (0-based): exponential, capped, with jitter
/// between 50% and 100% so a fleet does not reconnect in step.
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let base = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for attempt in 0..40 {
            let d = backoff(i, m, attempt);
            let base = i.saturating_mul(1 << attempt.min(20)).min(m);
            assert!(d >= base / 2 && d <= base, "{attempt}: {d:?}");
        }
    }
}
