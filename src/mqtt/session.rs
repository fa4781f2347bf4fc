//! One MQTT connection attempt and its life (3.1.1 or 5), seen through one small
//! interface. A new session is made for every attempt, so no state of a dead
//! connection leaks into the next one: what to resend is the outbox's business.
//!
//! The connection runs in a task of its own. Requests reach it over a channel, and it
//! takes every request already waiting before it writes, so a burst of messages leaves
//! in one write rather than one system call per message. What happens comes back in
//! batches over a second channel; waiting on it can be cancelled at any point.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::auth::Credentials;
use super::config::{LinkSettings, Protocol};
use super::message::{Incoming, Message, QoS};
use super::wire::{self, Packet, Version};

/// What happened on the connection.
#[derive(Debug)]
pub enum SessionEvent {
    /// The broker accepted the connection; `session_present`: it resumed the session it
    /// kept for this client.
    Connected {
        session_present: bool,
    },
    /// A PUBLISH left; its packet id (0 for QoS 0).
    Sent(u16),
    /// A SUBSCRIBE or DISCONNECT left.
    OtherRequestSent,
    PubAck(u16),
    /// A message from the broker; at QoS 1 with its packet id, to be acknowledged
    /// (`Session::ack`) once it has been handed on.
    Message(Incoming, Option<u16>),
    /// A PUBLISH over mqtt.max_packet_size was skipped (and, at QoS 1, acknowledged).
    TooLarge {
        topic: String,
        size: usize,
        limit: usize,
    },
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
    /// The broker refused the connection's last will for its QoS (MQTT 5, code 155).
    WillQos(String),
    /// Network: unreachable, reset, timed out. Usually passes by itself.
    Network(String),
    Protocol(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Auth(s) => write!(f, "the broker refused the credentials ({s})"),
            Failure::Tls(s) => write!(f, "TLS failed: {s}"),
            Failure::Refused(s) | Failure::WillQos(s) => {
                write!(f, "the broker refused the connection ({s})")
            }
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
            Failure::Auth(_) | Failure::Tls(_) | Failure::Refused(_) | Failure::WillQos(_)
        )
    }

    fn from_io(e: &std::io::Error) -> Self {
        // rustls reports certificate problems through the I/O error of the handshake,
        // with the rustls error inside.
        let text = e.to_string();
        let from_tls = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if from_tls || e.kind() == std::io::ErrorKind::InvalidData {
            Failure::Tls(text)
        } else {
            Failure::Network(text)
        }
    }

    fn refused(v: Version, code: u8, reason: Option<String>) -> Self {
        let mut text = format!("{}, code {code}", wire::code_text(v, code));
        if let Some(r) = reason {
            text.push_str(": ");
            text.push_str(&r);
        }
        if wire::is_auth_code(v, code) {
            Failure::Auth(text)
        } else if v == Version::V5 && code == 0x9B {
            Failure::WillQos(text)
        } else {
            Failure::Refused(text)
        }
    }
}

/// Requests (publish, subscribe) the session may have queued at once.
pub fn request_capacity(window: u16) -> usize {
    usize::from(window) * 2 + 64
}

/// Bytes gathered before a write goes out, when requests keep coming.
const WRITE_BATCH: usize = 64 * 1024;
/// Event batches that may wait for the link.
const EVENT_BATCHES: usize = 64;
/// A refused-publish WARN at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

enum Request {
    Publish(Message),
    Subscribe(String, QoS),
    Disconnect,
}

type Batch = Result<Vec<SessionEvent>, Failure>;

/// A connection: requests go to its task, events come back from it.
pub struct Session {
    requests: mpsc::Sender<Request>,
    /// PUBACKs for messages the agent has handed on; never queued behind publishes.
    acks: mpsc::UnboundedSender<u16>,
    events: mpsc::Receiver<Batch>,
    waiting: VecDeque<SessionEvent>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// What the connection task needs, owned.
struct Params {
    version: Version,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    tcp_nodelay: bool,
    connect_timeout: Duration,
    keep_alive: Duration,
    max_packet_size: usize,
    creds: Credentials,
    will: Option<Message>,
    clean_start: bool,
    session_expiry_secs: u32,
    receive_max: u16,
}

fn ended() -> Failure {
    Failure::Protocol("the connection task ended".into())
}

/// Why a request was not queued for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The topic or filter can never be sent: the message must be dropped.
    #[error("{0}")]
    Invalid(String),
    /// The connection's queue has no room now; try again later.
    #[error("the request queue is full")]
    Full,
    /// The connection has ended; what was not queued goes on the next one.
    #[error("the connection has ended")]
    Closed,
}

/// A topic a PUBLISH may carry.
fn check_topic(topic: &str) -> Result<(), RequestError> {
    if topic.is_empty() {
        return Err(RequestError::Invalid("the topic is empty".into()));
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(RequestError::Invalid(format!(
            "the topic {topic:?} has a wildcard or NUL in it"
        )));
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(RequestError::Invalid(
            "the topic is longer than 65,535 bytes".into(),
        ));
    }
    Ok(())
}

impl Session {
    /// Starts connecting at once (in its own task). Needs a tokio runtime.
    pub fn new(s: &LinkSettings, creds: &Credentials, will: Option<&Message>) -> Self {
        let cap = request_capacity(s.window);
        let (requests, requests_rx) = mpsc::channel(cap);
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::channel(EVENT_BATCHES);
        let params = Params {
            version: match s.protocol {
                Protocol::V311 => Version::V311,
                Protocol::V5 => Version::V5,
            },
            host: s.host.clone(),
            port: s.port,
            tls: s.tls.clone(),
            tcp_nodelay: s.tcp_nodelay,
            connect_timeout: s.connect_timeout.max(Duration::from_secs(1)),
            keep_alive: s.keep_alive,
            max_packet_size: s.max_packet_size,
            creds: creds.clone(),
            will: will.cloned(),
            clean_start: s.clean_session,
            session_expiry_secs: s.session_expiry.as_secs().min(u64::from(u32::MAX)) as u32,
            receive_max: s.receive_max,
        };
        let driver = tokio::spawn(async move {
            if let Err(f) = drive(params, requests_rx, acks_rx, &events_tx).await {
                let _ = events_tx.send(Err(f)).await;
            }
        });
        Session {
            requests,
            acks,
            events,
            waiting: VecDeque::new(),
            driver,
        }
    }

    fn request(&self, r: Request) -> Result<(), RequestError> {
        self.requests.try_send(r).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RequestError::Full,
            mpsc::error::TrySendError::Closed(_) => RequestError::Closed,
        })
    }

    /// Queues a PUBLISH. Fails if the topic is invalid, the queue is full or the
    /// connection has ended.
    pub fn try_publish(&self, m: &Message) -> Result<(), RequestError> {
        check_topic(&m.topic)?;
        self.request(Request::Publish(m.clone()))
    }

    pub fn try_subscribe(&self, filter: &str, qos: QoS) -> Result<(), RequestError> {
        if filter.is_empty() || filter.len() > usize::from(u16::MAX) {
            return Err(RequestError::Invalid(format!(
                "the filter {filter:?} is empty or too long"
            )));
        }
        self.request(Request::Subscribe(filter.to_owned(), qos))
    }

    /// Acknowledges a QoS 1 message the broker sent on this connection.
    pub fn ack(&self, pkid: u16) {
        let _ = self.acks.send(pkid);
    }

    pub fn try_disconnect(&self) -> Result<(), RequestError> {
        self.request(Request::Disconnect)
    }

    /// The next thing that happened. Safe to cancel.
    pub async fn poll(&mut self) -> Result<SessionEvent, Failure> {
        if let Some(ev) = self.waiting.pop_front() {
            return Ok(ev);
        }
        match self.events.recv().await {
            Some(batch) => self.unpack(batch),
            None => Err(ended()),
        }
    }

    /// The next event if one is already waiting.
    pub fn try_poll(&mut self) -> Option<Result<SessionEvent, Failure>> {
        use tokio::sync::mpsc::error::TryRecvError;
        if let Some(ev) = self.waiting.pop_front() {
            return Some(Ok(ev));
        }
        match self.events.try_recv() {
            Ok(batch) => Some(self.unpack(batch)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(ended())),
        }
    }

    fn unpack(&mut self, batch: Batch) -> Result<SessionEvent, Failure> {
        let mut evs = batch?.into_iter();
        let first = evs.next().unwrap_or(SessionEvent::Other);
        self.waiting.extend(evs);
        Ok(first)
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn open(p: &Params) -> Result<Box<dyn Io>, Failure> {
    let tcp = tokio::net::TcpStream::connect((p.host.as_str(), p.port))
        .await
        .map_err(|e| Failure::Network(e.to_string()))?;
    let _ = tcp.set_nodelay(p.tcp_nodelay);
    let Some(tls) = &p.tls else {
        return Ok(Box::new(tcp));
    };
    let name = rustls_pki_types::ServerName::try_from(p.host.clone())
        .map_err(|e| Failure::Tls(format!("{:?} is not a TLS server name: {e}", p.host)))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| Failure::from_io(&e))?;
    Ok(Box::new(stream))
}

/// Connects, sends CONNECT and reads the CONNACK.
async fn handshake(
    p: &Params,
    rbuf: &mut BytesMut,
) -> Result<(Box<dyn Io>, wire::ConnAck), Failure> {
    let mut io = open(p).await?;
    let mut out = BytesMut::new();
    let user = p.creds.username.as_deref();
    wire::encode_connect(
        &wire::Connect {
            version: p.version,
            client_id: &p.creds.client_id,
            keep_alive_secs: p.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16,
            username: user,
            password: user.and(p.creds.password.as_deref()),
            will: p.will.as_ref(),
            max_packet_size: p.max_packet_size.min(u32::MAX as usize) as u32,
            clean_start: p.clean_start,
            session_expiry_secs: p.session_expiry_secs,
            receive_max: p.receive_max,
        },
        &mut out,
    );
    io.write_all(&out).await.map_err(|e| Failure::from_io(&e))?;
    io.flush().await.map_err(|e| Failure::from_io(&e))?;
    loop {
        match next_packet(p, rbuf)? {
            Some(Packet::ConnAck(ack)) => {
                if ack.code != 0 {
                    return Err(Failure::refused(p.version, ack.code, ack.reason));
                }
                return Ok((io, ack));
            }
            Some(other) => {
                return Err(Failure::Protocol(format!(
                    "the broker answered CONNECT with {other:?} instead of CONNACK"
                )))
            }
            None => {}
        }
        rbuf.reserve(4096);
        let n = io.read_buf(rbuf).await.map_err(|e| Failure::from_io(&e))?;
        if n == 0 {
            return Err(Failure::Network(
                "the broker closed the connection before answering CONNECT".into(),
            ));
        }
    }
}

/// Packet ids in use, so a new one never collides with one awaiting its ack.
struct Ids {
    used: Vec<u64>,
    next: u16,
}

impl Ids {
    fn new() -> Self {
        Ids {
            used: vec![0; 1024],
            next: 1,
        }
    }
    fn take(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            let (w, b) = (usize::from(id / 64), id % 64);
            if self.used[w] & (1 << b) == 0 {
                self.used[w] |= 1 << b;
                return Some(id);
            }
        }
        None
    }
    /// Frees an id; false if it was not in use.
    fn free(&mut self, id: u16) -> bool {
        let (w, b) = (usize::from(id / 64), id % 64);
        let was = self.used[w] & (1 << b) != 0;
        self.used[w] &= !(1 << b);
        was
    }
}

/// The state of a live connection.
struct Conn {
    version: Version,
    ids: Ids,
    /// QoS 1 PUBLISHes awaiting PUBACK, and how many the broker allows.
    in_flight: usize,
    receive_max: usize,
    subscriptions: HashMap<u16, String>,
    /// The largest packet the broker accepts (MQTT 5 CONNACK).
    server_max_packet: usize,
    /// Whether the broker accepts QoS 1 PUBLISHes (MQTT 5 CONNACK Maximum QoS).
    qos1_allowed: bool,
    ping_out: bool,
    disconnecting: bool,
    last_refusal_log: Option<tokio::time::Instant>,
    last_too_large_log: Option<tokio::time::Instant>,
    /// Bytes of an oversized PUBLISH still to be read and thrown away.
    skip: usize,
    max_packet_size: usize,
}

/// Whether a rate-limited line may be logged now.
fn may_log(last: &mut Option<tokio::time::Instant>) -> bool {
    let now = tokio::time::Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

impl Conn {
    fn take_id(&mut self) -> Result<u16, Failure> {
        self.ids
            .take()
            .ok_or_else(|| Failure::Protocol("all 65,535 packet ids are awaiting acks".into()))
    }

    fn can_take(&self) -> bool {
        !self.disconnecting && self.in_flight < self.receive_max
    }

    /// Reports a message as sent and, at QoS 1, acknowledged, without an ack from the
    /// broker (one that cannot take it, or cannot confirm it): the link then releases
    /// it from the outbox as it would on a PUBACK.
    fn settled_without_broker(
        &mut self,
        qos: QoS,
        evs: &mut Vec<SessionEvent>,
    ) -> Result<(), Failure> {
        if qos == QoS::AtMostOnce {
            evs.push(SessionEvent::Sent(0));
        } else {
            let id = self.take_id()?;
            self.ids.free(id);
            evs.push(SessionEvent::Sent(id));
            evs.push(SessionEvent::PubAck(id));
        }
        Ok(())
    }

    fn on_request(
        &mut self,
        r: Request,
        out: &mut BytesMut,
        evs: &mut Vec<SessionEvent>,
    ) -> Result<(), Failure> {
        match r {
            Request::Publish(mut m) => {
                let size = wire::publish_size(self.version, &m);
                if size > self.server_max_packet {
                    // The broker would close the connection on it, and it would be sent
                    // again after every reconnect: it is dropped, as if refused.
                    if may_log(&mut self.last_too_large_log) {
                        tracing::warn!(topic = %m.topic, size, limit = self.server_max_packet,
                            "A message is larger than the broker accepts; it is dropped (this line repeats at most once a minute).");
                    }
                    return self.settled_without_broker(m.qos, evs);
                }
                if m.qos != QoS::AtMostOnce && !self.qos1_allowed {
                    // The broker would close the connection on a QoS 1 PUBLISH: the
                    // message goes at QoS 0 and counts as delivered once written.
                    let qos = std::mem::replace(&mut m.qos, QoS::AtMostOnce);
                    wire::encode_publish(self.version, &m, 0, out);
                    return self.settled_without_broker(qos, evs);
                }
                let pkid = if m.qos == QoS::AtMostOnce {
                    0
                } else {
                    let id = self.take_id()?;
                    self.in_flight += 1;
                    id
                };
                wire::encode_publish(self.version, &m, pkid, out);
                evs.push(SessionEvent::Sent(pkid));
            }
            Request::Subscribe(filter, qos) => {
                let id = self.take_id()?;
                wire::encode_subscribe(self.version, id, &filter, qos, out);
                self.subscriptions.insert(id, filter);
                evs.push(SessionEvent::OtherRequestSent);
            }
            Request::Disconnect => {
                wire::encode_disconnect(out);
                self.disconnecting = true;
                evs.push(SessionEvent::OtherRequestSent);
            }
        }
        Ok(())
    }

    fn on_packet(
        &mut self,
        p: Packet,
        out: &mut BytesMut,
        evs: &mut Vec<SessionEvent>,
    ) -> Result<(), Failure> {
        match p {
            Packet::Publish {
                qos,
                pkid,
                topic,
                payload,
                props,
            } => {
                // QoS 1 is acknowledged once the agent has handed the message on (see
                // `Session::ack`): a PUBACK sent now would tell the broker it was
                // delivered while it may still be lost.
                if qos == 2 {
                    wire::encode_pubrec(pkid, out);
                }
                evs.push(SessionEvent::Message(
                    Incoming {
                        topic,
                        payload,
                        props,
                        ack: None,
                        oversized: None,
                    },
                    (qos == 1).then_some(pkid),
                ));
            }
            Packet::PubAck { pkid, code } => {
                if self.ids.free(pkid) {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    if code >= 0x80 {
                        self.log_refusal(code);
                    }
                    evs.push(SessionEvent::PubAck(pkid));
                }
            }
            Packet::PubRel { pkid } => wire::encode_pubcomp(pkid, out),
            Packet::SubAck { pkid, codes } => {
                self.ids.free(pkid);
                let filter = self.subscriptions.remove(&pkid).unwrap_or_default();
                if let Some(code) = codes.iter().find(|c| **c >= 0x80) {
                    tracing::warn!(filter = %filter, code, "The broker refused a subscription; commands on it will not arrive.");
                }
            }
            Packet::PingResp => self.ping_out = false,
            Packet::Disconnect { code, reason } => {
                let mut f = Failure::refused(self.version, code, reason);
                if let Failure::Refused(text) = f {
                    f = Failure::Network(format!("the broker closed the connection ({text})"));
                }
                return Err(f);
            }
            Packet::ConnAck(_) => {
                return Err(Failure::Protocol(
                    "a second CONNACK on one connection".into(),
                ))
            }
            Packet::PubRec { .. } | Packet::PubComp { .. } | Packet::UnsubAck | Packet::Auth => {}
        }
        Ok(())
    }

    /// The broker took a message but will not deliver it (MQTT 5 reason code). The
    /// message counts as delivered: sending it again would be refused again.
    fn log_refusal(&mut self, code: u8) {
        if !may_log(&mut self.last_refusal_log) {
            return;
        }
        tracing::warn!(code, reason = wire::code_text(self.version, code),
            "The broker refused a message; it is dropped (this line repeats at most once a minute).");
    }
}

/// Writes all of `out`. A slow link may take as long as it needs, as long as it keeps
/// taking bytes: only a write that makes no progress for `stall` ends the connection.
async fn write_out(io: &mut Box<dyn Io>, out: &[u8], stall: Duration) -> Result<(), Failure> {
    let stalled = || Failure::Network(format!("the broker took no data for {}s", stall.as_secs()));
    let mut pos = 0;
    while pos < out.len() {
        let n = tokio::time::timeout(stall, io.write(&out[pos..]))
            .await
            .map_err(|_| stalled())?
            .map_err(|e| Failure::from_io(&e))?;
        if n == 0 {
            return Err(Failure::Network(
                "the connection closed during a write".into(),
            ));
        }
        pos += n;
    }
    tokio::time::timeout(stall, io.flush())
        .await
        .map_err(|_| stalled())?
        .map_err(|e| Failure::from_io(&e))
}

/// The next complete packet in `rbuf`, if any.
fn next_packet(p: &Params, rbuf: &mut BytesMut) -> Result<Option<Packet>, Failure> {
    wire::read_packet(p.version, rbuf, p.max_packet_size)
        .map_err(|e| Failure::Protocol(e.to_string()))
}

impl Conn {
    /// Handles every complete packet in `rbuf`; a PUBLISH over the size limit is skipped
    /// (acknowledged at QoS 1, so the broker does not send it again) and reported, and
    /// the connection goes on.
    fn read_all(
        &mut self,
        rbuf: &mut BytesMut,
        out: &mut BytesMut,
        evs: &mut Vec<SessionEvent>,
    ) -> Result<(), Failure> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(rbuf.len());
                rbuf.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(());
                }
            }
            let read = wire::read_packet_or_skip(self.version, rbuf, self.max_packet_size)
                .map_err(|e| Failure::Protocol(e.to_string()))?;
            match read {
                None => return Ok(()),
                Some(wire::Read::Packet(pk)) => self.on_packet(pk, out, evs)?,
                Some(wire::Read::Oversized(o)) => {
                    if o.qos == 1 {
                        wire::encode_puback(o.pkid, out);
                    } else if o.qos == 2 {
                        wire::encode_pubrec(o.pkid, out);
                    }
                    self.skip = o.remaining;
                    evs.push(SessionEvent::TooLarge {
                        topic: o.topic,
                        size: o.size,
                        limit: self.max_packet_size,
                    });
                }
            }
        }
    }
}

async fn drive(
    p: Params,
    mut requests: mpsc::Receiver<Request>,
    mut acks: mpsc::UnboundedReceiver<u16>,
    events: &mpsc::Sender<Batch>,
) -> Result<(), Failure> {
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let (mut io, ack) = tokio::time::timeout(p.connect_timeout, handshake(&p, &mut rbuf))
        .await
        .map_err(|_| {
            Failure::Network(format!(
                "no answer within {}s (mqtt.connect_timeout)",
                p.connect_timeout.as_secs()
            ))
        })??;
    let keep_alive = match ack.server_keep_alive {
        Some(secs) => Duration::from_secs(u64::from(secs)),
        None => p.keep_alive,
    };
    let mut c = Conn {
        version: p.version,
        ids: Ids::new(),
        in_flight: 0,
        receive_max: ack.receive_max.map_or(usize::MAX, usize::from),
        server_max_packet: ack
            .max_packet_size
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        qos1_allowed: ack.max_qos.is_none_or(|q| q >= 1),
        subscriptions: HashMap::new(),
        ping_out: false,
        disconnecting: false,
        last_refusal_log: None,
        last_too_large_log: None,
        skip: 0,
        max_packet_size: p.max_packet_size,
    };
    if !c.qos1_allowed {
        tracing::warn!(
            "The broker accepts only QoS 0 (its MQTT 5 Maximum QoS): messages go out at QoS 0, and the broker cannot confirm them."
        );
    }
    events
        .send(Ok(vec![SessionEvent::Connected {
            session_present: ack.session_present,
        }]))
        .await
        .map_err(|_| ended())?;
    // Packets that came with the CONNACK.
    let mut out = BytesMut::with_capacity(WRITE_BATCH + 1024);
    let mut evs = Vec::new();
    c.read_all(&mut rbuf, &mut out, &mut evs)?;
    let ping_every = if keep_alive.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        keep_alive
    };
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !out.is_empty() {
            write_out(&mut io, &out, p.connect_timeout.max(keep_alive)).await?;
            out.clear();
        }
        if !evs.is_empty() {
            events
                .send(Ok(std::mem::take(&mut evs)))
                .await
                .map_err(|_| ended())?;
        }
        if c.disconnecting {
            let _ = io.shutdown().await;
            return Ok(());
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        tokio::select! {
            biased;
            r = io.read_buf(&mut rbuf) => {
                let n = r.map_err(|e| Failure::from_io(&e))?;
                if n == 0 {
                    return Err(Failure::Network("the broker closed the connection".into()));
                }
                c.read_all(&mut rbuf, &mut out, &mut evs)?;
            }
            Some(pkid) = acks.recv() => {
                wire::encode_puback(pkid, &mut out);
                while let Ok(pkid) = acks.try_recv() {
                    wire::encode_puback(pkid, &mut out);
                }
            }
            r = requests.recv(), if c.can_take() => {
                let Some(r) = r else {
                    // The session was dropped.
                    return Ok(());
                };
                c.on_request(r, &mut out, &mut evs)?;
                // Take what else is waiting, so it leaves in the same write.
                while c.can_take() && out.len() < WRITE_BATCH {
                    match requests.try_recv() {
                        Ok(r) => c.on_request(r, &mut out, &mut evs)?,
                        Err(_) => break,
                    }
                }
            }
            _ = ping.tick(), if !keep_alive.is_zero() => {
                if c.ping_out {
                    return Err(Failure::Network(format!(
                        "the broker did not answer a ping within {}s (mqtt.keep_alive)",
                        keep_alive.as_secs()
                    )));
                }
                wire::encode_pingreq(&mut out);
                c.ping_out = true;
            }
        }
    }
}

#[cfg(test)]
mod id_tests {
    use super::Ids;

    #[test]
    fn packet_ids_skip_those_awaiting_acks_and_wrap() {
        let mut ids = Ids::new();
        let a = ids.take().unwrap();
        let b = ids.take().unwrap();
        assert_eq!((a, b), (1, 2));
        assert!(ids.free(a));
        assert!(!ids.free(a));
        // Go round the whole space once: 2 is still taken, so it is skipped.
        let mut seen = 0;
        while let Some(id) = ids.take() {
            assert_ne!(id, 0);
            seen += 1;
        }
        assert_eq!(seen, 65_534);
        assert!(ids.free(b));
        assert_eq!(ids.take(), Some(2));
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

    /// What the link decides on: an invalid topic is dropped, an ended connection keeps
    /// the message for the next one.
    #[tokio::test]
    async fn request_errors_say_whether_a_message_can_ever_be_sent() {
        // A port nothing listens on: the connection fails and its task ends.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "state_dir = {:?}\n[device]\nproduct_key = \"p\"\ndevice_name = \"d\"\n[mqtt]\nprofile = \"plain\"\nhost = \"127.0.0.1\"\nport = {port}\n",
            dir.path()
        );
        let settings = crate::config::AgentConfig::parse(&text, "test.toml")
            .unwrap()
            .validate()
            .unwrap();
        let creds = settings.link.auth.credentials(0);
        let mut s = Session::new(&settings.link, &creds, None);
        let bad = Message::new("a/+/b", "x", QoS::AtLeastOnce);
        assert!(matches!(s.try_publish(&bad), Err(RequestError::Invalid(_))));
        assert!(matches!(
            s.try_subscribe("", QoS::AtLeastOnce),
            Err(RequestError::Invalid(_))
        ));
        assert!(s.poll().await.is_err(), "nothing listens on port {port}");
        // The failure is reported once the connection task has ended.
        (&mut s.driver).await.unwrap();
        let good = Message::new("a/b", "x", QoS::AtLeastOnce);
        assert_eq!(s.try_publish(&good), Err(RequestError::Closed));
        assert_eq!(
            s.try_publish(&bad).unwrap_err().to_string(),
            "the topic \"a/+/b\" has a wildcard or NUL in it"
        );
    }

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

/// The connection's protocol state, packet by packet, and the keep-alive against a
/// broker that stops answering.
#[cfg(test)]
mod conn_tests {
    use super::*;

    fn conn(version: Version, receive_max: usize) -> Conn {
        Conn {
            version,
            ids: Ids::new(),
            in_flight: 0,
            receive_max,
            subscriptions: HashMap::new(),
            server_max_packet: usize::MAX,
            qos1_allowed: true,
            ping_out: false,
            disconnecting: false,
            last_refusal_log: None,
            last_too_large_log: None,
            skip: 0,
            max_packet_size: 1024,
        }
    }

    fn publish(c: &mut Conn, qos: QoS) -> (Vec<SessionEvent>, BytesMut) {
        let (mut out, mut evs) = (BytesMut::new(), Vec::new());
        c.on_request(
            Request::Publish(Message::new("t/a", "payload", qos)),
            &mut out,
            &mut evs,
        )
        .unwrap();
        (evs, out)
    }

    fn packet(c: &mut Conn, p: Packet) -> Result<(Vec<SessionEvent>, BytesMut), Failure> {
        let (mut out, mut evs) = (BytesMut::new(), Vec::new());
        c.on_packet(p, &mut out, &mut evs)?;
        Ok((evs, out))
    }

    fn puback(pkid: u16, code: u8) -> Packet {
        Packet::PubAck { pkid, code }
    }

    fn sent_id(evs: &[SessionEvent]) -> u16 {
        match evs {
            [SessionEvent::Sent(id)] => *id,
            other => panic!("expected one Sent, got {other:?}"),
        }
    }

    #[test]
    fn a_puback_frees_its_id_once_and_unknown_or_repeated_ones_are_ignored() {
        let mut c = conn(Version::V311, usize::MAX);
        let id = sent_id(&publish(&mut c, QoS::AtLeastOnce).0);
        assert_eq!(id, 1);
        assert_eq!(c.in_flight, 1);
        let (evs, _) = packet(&mut c, puback(id, 0)).unwrap();
        assert!(matches!(evs[..], [SessionEvent::PubAck(1)]));
        assert_eq!(c.in_flight, 0);
        // The broker repeats it: nothing happens, the count stays right.
        let (evs, _) = packet(&mut c, puback(id, 0)).unwrap();
        assert!(evs.is_empty());
        assert_eq!(c.in_flight, 0);
        // An id never used.
        let (evs, _) = packet(&mut c, puback(777, 0)).unwrap();
        assert!(evs.is_empty());
        assert_eq!(c.in_flight, 0);
        // A freed id is used again only after going round: the next is 2.
        assert_eq!(sent_id(&publish(&mut c, QoS::AtLeastOnce).0), 2);
    }

    #[test]
    fn qos_0_takes_no_id_and_no_place_in_flight() {
        let mut c = conn(Version::V311, 1);
        for _ in 0..3 {
            assert_eq!(sent_id(&publish(&mut c, QoS::AtMostOnce).0), 0);
        }
        assert_eq!(c.in_flight, 0);
        assert!(c.can_take());
    }

    #[test]
    fn receive_maximum_stops_requests_until_an_ack_comes() {
        let mut c = conn(Version::V5, 2);
        let a = sent_id(&publish(&mut c, QoS::AtLeastOnce).0);
        assert!(c.can_take());
        sent_id(&publish(&mut c, QoS::AtLeastOnce).0);
        assert!(!c.can_take(), "two in flight, the broker allows two");
        packet(&mut c, puback(a, 0)).unwrap();
        assert!(c.can_take());
        // A DISCONNECT request stops everything after it.
        let (mut out, mut evs) = (BytesMut::new(), Vec::new());
        c.on_request(Request::Disconnect, &mut out, &mut evs)
            .unwrap();
        assert!(!c.can_take());
        assert_eq!(&out[..], &[0xe0, 0x00]);
    }

    #[test]
    fn a_refused_publish_is_released_like_a_delivered_one() {
        let mut c = conn(Version::V5, usize::MAX);
        let id = sent_id(&publish(&mut c, QoS::AtLeastOnce).0);
        // 0x87 Not authorized: sending it again would be refused again.
        let (evs, _) = packet(&mut c, puback(id, 0x87)).unwrap();
        assert!(matches!(evs[..], [SessionEvent::PubAck(i)] if i == id));
        assert_eq!(c.in_flight, 0);
    }

    #[test]
    fn what_the_broker_cannot_take_is_settled_without_it() {
        let mut c = conn(Version::V5, usize::MAX);
        c.server_max_packet = 10;
        let (evs, out) = publish(&mut c, QoS::AtLeastOnce);
        assert!(out.is_empty(), "nothing is written");
        assert!(
            matches!(evs[..], [SessionEvent::Sent(i), SessionEvent::PubAck(j)] if i == j && i != 0)
        );
        assert_eq!(c.in_flight, 0);
        // The id went back: nothing waits for an ack that will never come.
        assert!(!c.ids.free(1));

        let mut c = conn(Version::V5, usize::MAX);
        c.qos1_allowed = false;
        let (evs, out) = publish(&mut c, QoS::AtLeastOnce);
        assert_eq!(out[0], 0x30, "written at QoS 0: {out:?}");
        assert!(matches!(
            evs[..],
            [SessionEvent::Sent(_), SessionEvent::PubAck(_)]
        ));
        assert_eq!(c.in_flight, 0);
    }

    #[test]
    fn incoming_messages_are_acked_by_the_agent_at_qos_1_and_completed_at_qos_2() {
        let mut c = conn(Version::V311, usize::MAX);
        let incoming = |qos: u8, pkid: u16| Packet::Publish {
            qos,
            pkid,
            topic: "cmd".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            props: None,
        };
        // QoS 1: no PUBACK until the agent has handed it on (Session::ack).
        let (evs, out) = packet(&mut c, incoming(1, 9)).unwrap();
        assert!(out.is_empty());
        assert!(matches!(&evs[..], [SessionEvent::Message(m, Some(9))] if m.topic == "cmd"));
        // QoS 0: no id.
        let (evs, _) = packet(&mut c, incoming(0, 0)).unwrap();
        assert!(matches!(&evs[..], [SessionEvent::Message(_, None)]));
        // QoS 2: PUBREC at once, PUBCOMP for the PUBREL.
        let (_, out) = packet(&mut c, incoming(2, 5)).unwrap();
        assert_eq!(&out[..], &[0x50, 0x02, 0x00, 0x05]);
        let (_, out) = packet(&mut c, Packet::PubRel { pkid: 5 }).unwrap();
        assert_eq!(&out[..], &[0x70, 0x02, 0x00, 0x05]);
    }

    #[test]
    fn a_broker_disconnect_or_a_second_connack_ends_the_connection() {
        let mut c = conn(Version::V5, usize::MAX);
        let e = packet(
            &mut c,
            Packet::Disconnect {
                code: 0x8b,
                reason: Some("shutting down".into()),
            },
        )
        .unwrap_err();
        assert!(
            matches!(&e, Failure::Network(t) if t.contains("shutting down")),
            "{e:?}"
        );
        let mut rbuf = BytesMut::from(&[0x20u8, 0x03, 0x00, 0x00, 0x00][..]);
        let (mut out, mut evs) = (BytesMut::new(), Vec::new());
        let e = c.read_all(&mut rbuf, &mut out, &mut evs).unwrap_err();
        assert!(matches!(e, Failure::Protocol(_)), "{e:?}");
    }

    #[test]
    fn a_refused_subscription_frees_its_id() {
        let mut c = conn(Version::V311, usize::MAX);
        let (mut out, mut evs) = (BytesMut::new(), Vec::new());
        c.on_request(
            Request::Subscribe("cmd/#".into(), QoS::AtLeastOnce),
            &mut out,
            &mut evs,
        )
        .unwrap();
        assert_eq!(c.subscriptions.get(&1).map(String::as_str), Some("cmd/#"));
        packet(
            &mut c,
            Packet::SubAck {
                pkid: 1,
                codes: vec![0x80],
            },
        )
        .unwrap();
        assert!(c.subscriptions.is_empty());
        assert!(!c.ids.free(1));
    }

    #[test]
    fn an_oversized_publish_is_skipped_across_reads_and_acked() {
        let mut c = conn(Version::V311, usize::MAX);
        c.max_packet_size = 64;
        let mut big = BytesMut::new();
        wire::encode_publish(
            Version::V311,
            &Message::new("big", vec![7u8; 300], QoS::AtLeastOnce),
            42,
            &mut big,
        );
        let mut small = BytesMut::new();
        wire::encode_publish(
            Version::V311,
            &Message::new("ok", "x", QoS::AtMostOnce),
            0,
            &mut small,
        );
        // The big one arrives in three reads, the small one right after it.
        let all = [&big[..], &small[..]].concat();
        let (mut out, mut evs, mut rbuf) = (BytesMut::new(), Vec::new(), BytesMut::new());
        for chunk in [&all[..40], &all[40..200], &all[200..]] {
            rbuf.extend_from_slice(chunk);
            c.read_all(&mut rbuf, &mut out, &mut evs).unwrap();
        }
        assert_eq!(
            &out[..],
            &[0x40, 0x02, 0x00, 42],
            "PUBACK for the skipped one"
        );
        assert!(
            matches!(&evs[..], [SessionEvent::TooLarge { topic, limit: 64, .. }, SessionEvent::Message(m, None)]
                if topic == "big" && m.topic == "ok"),
            "{evs:?}"
        );
        assert!(rbuf.is_empty());
    }

    /// A broker on a local port: answers CONNECT with CONNACK, then PINGREQs with
    /// PINGRESP while `answer_pings`; returns the port and how many pings it saw.
    async fn broker(answer_pings: bool) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let pings = Arc::new(AtomicUsize::new(0));
        let p2 = pings.clone();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let mut connected = false;
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !connected && buf[0] == 0x10 {
                    connected = true;
                    s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
                    continue;
                }
                for _ in buf[..n].windows(2).filter(|w| w == &[0xc0, 0x00]) {
                    p2.fetch_add(1, Ordering::Relaxed);
                    if answer_pings {
                        s.write_all(&[0xd0, 0x00]).await.unwrap();
                    }
                }
            }
        });
        (port, pings)
    }

    fn settings(port: u16, dir: &std::path::Path) -> crate::config::Settings {
        let text = format!(
            "state_dir = {dir:?}\n[device]\nproduct_key = \"p\"\ndevice_name = \"d\"\n[mqtt]\nprofile = \"plain\"\nhost = \"127.0.0.1\"\nport = {port}\n",
        );
        let mut s = crate::config::AgentConfig::parse(&text, "test.toml")
            .unwrap()
            .validate()
            .unwrap();
        // Below what a configuration may set (5 s), to keep the test short.
        s.link.keep_alive = Duration::from_secs(1);
        s
    }

    #[tokio::test]
    async fn a_broker_that_stops_answering_pings_ends_the_connection_after_a_keep_alive() {
        let dir = tempfile::tempdir().unwrap();
        let (port, pings) = broker(false).await;
        let s = settings(port, dir.path());
        let mut session = Session::new(&s.link, &s.link.auth.credentials(0), None);
        assert!(matches!(
            session.poll().await,
            Ok(SessionEvent::Connected { .. })
        ));
        let t0 = tokio::time::Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(10), session.poll())
            .await
            .expect("the connection outlived an unanswered ping")
            .unwrap_err();
        assert!(
            matches!(&e, Failure::Network(t) if t.contains("did not answer a ping")),
            "{e:?}"
        );
        // One ping unanswered for one keep-alive: two keep-alives after connecting.
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        assert_eq!(pings.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_broker_that_answers_pings_keeps_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (port, pings) = broker(true).await;
        let s = settings(port, dir.path());
        let mut session = Session::new(&s.link, &s.link.auth.credentials(0), None);
        assert!(matches!(
            session.poll().await,
            Ok(SessionEvent::Connected { .. })
        ));
        // Three keep-alives pass: pings go and are answered; the connection stays.
        let r = tokio::time::timeout(Duration::from_millis(3500), session.poll()).await;
        assert!(r.is_err(), "the connection ended: {r:?}");
        assert!(pings.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    }
}
