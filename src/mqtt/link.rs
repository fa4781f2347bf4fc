//! The link task: owns the outbox and the MQTT session, connects and reconnects, hands
//! held messages to the broker in order within a window, retires them on PUBACK, routes
//! incoming messages to subscribers, and shuts down cleanly.
//!
//! Log discipline: one WARN when the link drops, one INFO when it is back (with how long
//! it was down and how much was held); repeated failures of the same kind are counted,
//! not logged; failures an operator must fix (credentials, TLS) are ERROR once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::LinkSettings;
use super::message::{topic_matches, Ack, Incoming, Message, QoS};
use super::outbox::{Outbox, OutboxError};
use super::session::{backoff, request_capacity, Failure, RequestError, Session, SessionEvent};
use super::stats::LinkStats;
use crate::clock::{now_ms, rfc3339_ms};
use crate::config::values::format_duration;

/// Why a publish was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("message of {size} bytes is larger than the broker accepts (mqtt.max_packet_size = {limit})")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("the cloud link is shutting down")]
    Closed,
}

impl PublishError {
    /// The kind of failure, for the log's rate limit: a new kind is always logged.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::TooLarge { .. } => "too-large",
            PublishError::Outbox(OutboxError::Full { .. }) => "outbox-full",
            PublishError::Outbox(OutboxError::TooLarge { .. }) => "outbox-too-large",
            PublishError::Outbox(_) => "outbox",
            PublishError::Closed => "closed",
        }
    }
}

/// Link state as other modules (health, systemd readiness) see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Up,
    Down,
    Stopped,
}

enum Command {
    Publish {
        msg: Message,
        class: usize,
        reply: Option<oneshot::Sender<Result<(), PublishError>>>,
    },
    Subscribe {
        filter: String,
        qos: QoS,
        sink: mpsc::Sender<Incoming>,
    },
    /// Reply once nothing is held and nothing is in flight.
    Drained { reply: oneshot::Sender<()> },
}

/// How other modules use the link. Cheap to clone.
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Command>,
    max_packet_size: usize,
    classes: Arc<HashMap<String, usize>>,
    stats: Arc<LinkStats>,
    state: watch::Receiver<LinkState>,
}

impl LinkHandle {
    fn class(&self, name: &str) -> Result<usize, PublishError> {
        self.classes
            .get(name)
            .copied()
            .ok_or_else(|| PublishError::Outbox(OutboxError::UnknownClass(name.to_owned())))
    }

    /// Publishes through the outbox class `class` (QoS 1) or directly (QoS 0). Returns
    /// once a QoS 1 message is on disk, or with the reason it was refused.
    pub async fn publish(&self, msg: Message, class: &str) -> Result<(), PublishError> {
        let class = self.class(class)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish {
                msg,
                class,
                reply: Some(reply),
            })
            .await
            .map_err(|_| PublishError::Closed)?;
        rx.await.map_err(|_| PublishError::Closed)?
    }

    /// Publishes without waiting for the outcome (telemetry at high rates); failures
    /// are counted in the stats.
    pub async fn publish_nowait(&self, msg: Message, class: &str) -> Result<(), PublishError> {
        let class = self.class(class)?;
        self.tx
            .send(Command::Publish {
                msg,
                class,
                reply: None,
            })
            .await
            .map_err(|_| PublishError::Closed)
    }

    /// Messages matching `filter` arrive on the returned channel, across reconnects.
    pub async fn subscribe(
        &self,
        filter: &str,
        qos: QoS,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Incoming>, PublishError> {
        let (sink, rx) = mpsc::channel(capacity.max(1));
        self.tx
            .send(Command::Subscribe {
                filter: filter.to_owned(),
                qos,
                sink,
            })
            .await
            .map_err(|_| PublishError::Closed)?;
        Ok(rx)
    }

    /// Waits until every held message has been acknowledged.
    pub async fn drained(&self) -> Result<(), PublishError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Drained { reply })
            .await
            .map_err(|_| PublishError::Closed)?;
        rx.await.map_err(|_| PublishError::Closed)
    }

    /// The broker's limit on a PUBLISH packet (`mqtt.max_packet_size`).
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    pub fn stats(&self) -> &Arc<LinkStats> {
        &self.stats
    }

    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }
}

/// What a PUBLISH handed to the session was.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Held { class: usize, seq: u64, size: u64 },
    Status,
    Direct,
}

struct Subscription {
    filter: String,
    qos: QoS,
    /// One forwarder per handler: an unbounded queue into a task that waits for room in
    /// the handler's channel. A busy handler holds messages back rather than losing
    /// them; QoS 1 ones stay unacknowledged meanwhile, so the broker's in-flight window
    /// (mqtt.receive_maximum on MQTT 5) bounds what waits.
    sinks: Vec<mpsc::UnboundedSender<Incoming>>,
}

/// Starts the forwarder of one handler's channel.
fn forwarder(sink: mpsc::Sender<Incoming>) -> mpsc::UnboundedSender<Incoming> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Incoming>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if let Err(mpsc::error::SendError(m)) = sink.send(m).await {
                // The handler has stopped: what it did not take is not acknowledged.
                m.withhold();
                while let Ok(m) = rx.try_recv() {
                    m.withhold();
                }
                break;
            }
        }
    });
    tx
}

/// How long a message that matches no subscription yet is kept (a broker resuming a
/// session may deliver before the agent's handlers have subscribed again).
const PARK_FOR: Duration = Duration::from_secs(30);

struct Connected {
    session: Session,
    /// Which connection this is, for acknowledgements made after it ended.
    generation: u64,
    /// Handed to the session, packet id not known yet (in request order).
    queued: VecDeque<Sent>,
    /// Other requests (subscribe, disconnect) not yet processed by the session.
    queued_other: usize,
    in_flight: HashMap<u16, Sent>,
    held_in_flight: usize,
    since: Instant,
}

enum Phase {
    Waiting { until: Instant },
    Connecting { session: Session, started: Instant },
    Up(Box<Connected>),
}

/// Options of the shutdown sequence.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownPolicy {
    /// How long to wait for in-flight acknowledgements and the offline status.
    pub grace: Duration,
}

impl Default for ShutdownPolicy {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3),
        }
    }
}

/// A connection closed sooner than this after the broker accepted it counts as short.
const SHORT_SESSION: Duration = Duration::from_secs(2);

/// Short connections in a row after which the log suspects a shared client id.
const SHORT_SESSIONS_SAID: u32 = 3;

pub struct Link {
    settings: LinkSettings,
    outbox: Outbox,
    stats: Arc<LinkStats>,
    rx: mpsc::Receiver<Command>,
    state_tx: watch::Sender<LinkState>,
    subs: Vec<Subscription>,
    drained_waiters: Vec<oneshot::Sender<()>>,
    sync_interval: Duration,
    version: String,
    // Reconnect and logging state.
    attempt: u32,
    last_failure: Option<Failure>,
    down_since: Option<Instant>,
    ever_connected: bool,
    /// Connections in a row the broker closed soon after accepting them.
    short_sessions: u32,
    /// Repeated link and outbox troubles: the first of each kind, then a line a minute.
    log: crate::loglimit::LogLimiter,
    acks_since_sync: u32,
    /// The delivery records on disk; held messages wait while they lag too far behind.
    records: Option<Arc<crate::mqtt::outbox::Saved>>,
    records_behind: bool,
    /// QoS 0 messages waiting for room in the session's queue (only while connected).
    qos0: VecDeque<Message>,
    /// The broker refused a QoS 1 last will (MQTT 5 Maximum QoS 0): send it at QoS 0.
    will_qos0: bool,
    /// Acknowledgements of handed-on messages, from [`Ack`] guards.
    acks_tx: mpsc::UnboundedSender<(u64, u16)>,
    acks_rx: mpsc::UnboundedReceiver<(u64, u16)>,
    /// Messages handed on whose acknowledgement is not decided yet.
    acks_outstanding: Arc<std::sync::atomic::AtomicUsize>,
    connections: u64,
    /// Messages no subscription matched yet, with when they came.
    parked: VecDeque<(Instant, Incoming)>,
    last_oversized_log: Option<Instant>,
}

/// QoS 0 messages held in memory while the connection catches up; when full, the link
/// stops taking new messages, which slows the producers instead of dropping.
const QOS0_QUEUE: usize = 1024;

/// Commands taken in one go when several are waiting.
const COMMAND_BATCH: usize = 256;
/// Connection events handled per wake-up, at most.
const EVENT_BATCH: usize = 256;

/// Acknowledgements after which the delivery record is saved even before the sync
/// interval: bounds what a kill -9 makes the agent send twice.
const SYNC_EVERY_ACKS: u32 = 256;
/// Acknowledged messages the delivery records on disk may lag behind before held
/// messages wait for them: a disk busy with other writers can take a second to write a
/// small file, and without this bound a kill -9 then made the agent send again
/// everything of that second.
const MAX_UNSAVED_ACKS: u64 = 2 * SYNC_EVERY_ACKS as u64;

/// Creates the link and its handle. Run it with [`Link::run`].
pub fn link(settings: LinkSettings, outbox: Outbox, sync_interval: Duration) -> (Link, LinkHandle) {
    let (tx, rx) = mpsc::channel(1024);
    let (state_tx, state_rx) = watch::channel(LinkState::Connecting);
    let stats = Arc::new(LinkStats::default());
    stats.set_classes(outbox.stats());
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let records = outbox.saved();
    let classes: HashMap<String, usize> = outbox
        .stats()
        .iter()
        .map(|c| c.class.clone())
        .filter_map(|name| outbox.class_index(&name).ok().map(|i| (name, i)))
        .collect();
    let handle = LinkHandle {
        tx,
        max_packet_size: settings.max_packet_size,
        classes: Arc::new(classes),
        stats: stats.clone(),
        state: state_rx,
    };
    let link = Link {
        settings,
        outbox,
        stats,
        rx,
        state_tx,
        subs: Vec::new(),
        drained_waiters: Vec::new(),
        sync_interval,
        version: crate::VERSION.to_owned(),
        attempt: 0,
        last_failure: None,
        down_since: None,
        ever_connected: false,
        short_sessions: 0,
        log: crate::loglimit::LogLimiter::default(),
        will_qos0: false,
        acks_since_sync: 0,
        records,
        records_behind: false,
        qos0: VecDeque::new(),
        acks_tx,
        acks_rx,
        acks_outstanding: Default::default(),
        connections: 0,
        parked: VecDeque::new(),
        last_oversized_log: None,
    };
    (link, handle)
}

fn status_payload(online: bool, version: &str, reason: Option<&str>) -> Vec<u8> {
    let mut v = serde_json::json!({
        "online": online,
        "version": version,
        "since": rfc3339_ms(now_ms()),
    });
    if let Some(r) = reason {
        v["reason"] = serde_json::Value::from(r);
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

async fn poll_phase(phase: &mut Phase) -> Result<SessionEvent, Failure> {
    match phase {
        Phase::Connecting { session, .. } => session.poll().await,
        Phase::Up(c) => c.session.poll().await,
        Phase::Waiting { .. } => std::future::pending().await,
    }
}

/// An event the connection already has waiting, if any.
fn try_poll_phase(phase: &mut Phase) -> Option<Result<SessionEvent, Failure>> {
    match phase {
        Phase::Connecting { session, .. } => session.try_poll(),
        Phase::Up(c) => c.session.try_poll(),
        Phase::Waiting { .. } => None,
    }
}

impl Link {
    fn will(&self) -> Message {
        Message::new(
            self.settings.status_topic.as_str(),
            status_payload(false, &self.version, Some("connection lost")),
            if self.will_qos0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
        )
        .retained()
    }

    fn new_session(&mut self) -> Phase {
        let creds = self.settings.auth.credentials(now_ms());
        let will = self.will();
        let _ = self.state_tx.send(LinkState::Connecting);
        tracing::debug!(broker = %format!("{}:{}", self.settings.host, self.settings.port),
            client_id = %self.settings.auth.client_id(), attempt = self.attempt, "Connecting to the broker.");
        Phase::Connecting {
            session: Session::new(&self.settings, &creds, Some(&will)),
            started: Instant::now(),
        }
    }

    /// Runs until `shutdown` is cancelled, then flushes and disconnects cleanly.
    pub async fn run(self, shutdown: CancellationToken, policy: ShutdownPolicy) {
        use tracing::Instrument as _;
        let broker = format!("{}:{}", self.settings.host, self.settings.port);
        let span = tracing::info_span!("mqtt", broker = %broker);
        self.run_inner(shutdown, policy).instrument(span).await;
    }

    async fn run_inner(mut self, shutdown: CancellationToken, policy: ShutdownPolicy) {
        let mut phase = self.new_session();
        let mut sync_tick = tokio::time::interval(self.sync_interval);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Phase::Up(c) = &mut phase {
                self.feed(c);
            }
            self.answer_drained(&phase);
            let wait_until = match &phase {
                Phase::Waiting { until } => Some(*until),
                _ => None,
            };
            let records = self.records.clone().filter(|_| self.records_behind);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ev = poll_phase(&mut phase) => {
                    self.on_poll(&mut phase, ev);
                    // Take what else the connection has waiting (acks come in bursts),
                    // rather than one event per turn of this loop.
                    for _ in 0..EVENT_BATCH {
                        match try_poll_phase(&mut phase) {
                            Some(ev) => self.on_poll(&mut phase, ev),
                            None => break,
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(wait_until.unwrap_or_else(Instant::now)).await }, if wait_until.is_some() => {
                    phase = self.new_session();
                }
                cmd = self.rx.recv(), if self.qos0.len() < QOS0_QUEUE => match cmd {
                    Some(cmd) => {
                        self.on_command(&mut phase, cmd);
                        // Take what else is waiting, so its outbox records go out in one write.
                        for _ in 0..COMMAND_BATCH {
                            if self.qos0.len() >= QOS0_QUEUE {
                                break;
                            }
                            match self.rx.try_recv() {
                                Ok(cmd) => self.on_command(&mut phase, cmd),
                                Err(_) => break,
                            }
                        }
                        // One write for the whole batch, connected or not.
                        if let Err(e) = self.outbox.flush_writes() {
                            self.outbox_error("write", &e);
                        }
                    }
                    None => break,
                },
                Some((generation, pkid)) = self.acks_rx.recv() => {
                    if let Phase::Up(c) = &phase {
                        if c.generation == generation {
                            c.session.ack(pkid);
                        }
                    }
                }
                _ = sync_tick.tick() => {
                    self.sync();
                    self.expire_parked();
                }
                // The delivery records caught up: feed again at the top of the loop.
                _ = async { if let Some(r) = &records { r.moved.notified().await } }, if records.is_some() => {}
            }
        }
        self.shutdown(phase, policy).await;
    }

    fn on_poll(&mut self, phase: &mut Phase, ev: Result<SessionEvent, Failure>) {
        match ev {
            Ok(ev) => self.on_event(phase, ev),
            Err(f) => {
                self.on_failure(phase, f);
                let delay = backoff(
                    self.settings.initial_delay,
                    self.settings.max_delay,
                    self.attempt,
                );
                self.attempt = self.attempt.saturating_add(1);
                *phase = Phase::Waiting {
                    until: Instant::now() + delay,
                };
            }
        }
    }

    fn save_delivered(&mut self) {
        self.acks_since_sync = 0;
        if let Err(e) = self.outbox.save_delivered() {
            tracing::warn!(error = %e, "Cannot save the outbox's delivery record.");
        }
    }

    fn sync(&mut self) {
        self.acks_since_sync = 0;
        if let Err(e) = self.outbox.sync(now_ms()) {
            if let crate::loglimit::Verdict::Log { left_out } = self.log.note("outbox-save", "") {
                tracing::error!(error = %e, "Cannot save the outbox; messages may be sent twice after a restart{}.", crate::loglimit::more(left_out));
            }
        }
        self.stats.set_classes(self.outbox.stats());
    }

    fn answer_drained(&mut self, phase: &Phase) {
        if self.drained_waiters.is_empty() {
            return;
        }
        let in_flight = match phase {
            Phase::Up(c) => c.held_in_flight,
            _ => 0,
        };
        if self.outbox.held() == 0 && in_flight == 0 {
            self.sync();
            for w in self.drained_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// Hands held messages to the session while the window and its queue have room.
    fn feed(&mut self, c: &mut Connected) {
        // What was accepted reaches the disk before anything is handed to the broker.
        if let Err(e) = self.outbox.flush_writes() {
            self.outbox_error("write", &e);
            return;
        }
        let window = usize::from(self.settings.window);
        let cap = request_capacity(self.settings.window);
        while c.queued.len() + c.queued_other < cap - 8 {
            let Some(m) = self.qos0.pop_front() else {
                break;
            };
            match c.session.try_publish(&m) {
                Ok(()) => {
                    c.queued.push_back(Sent::Direct);
                    LinkStats::add(&self.stats.sent, 1);
                    LinkStats::add(&self.stats.bytes_sent, m.payload.len() as u64);
                }
                Err(RequestError::Invalid(e)) => {
                    tracing::warn!(topic = %m.topic, error = %e, "Dropped a message the broker cannot take.");
                }
                // The connection is ending: the message waits for the next one.
                Err(RequestError::Full | RequestError::Closed) => {
                    self.qos0.push_front(m);
                    break;
                }
            }
        }
        self.records_behind = false;
        while c.held_in_flight < window && c.queued.len() + c.queued_other < cap - 8 {
            if self.outbox.unsaved() >= MAX_UNSAVED_ACKS {
                if !self.outbox.save_asked() {
                    self.save_delivered();
                }
                self.records_behind = true;
                break;
            }
            let next = match self.outbox.next_to_send(now_ms()) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    self.outbox_error("read", &e);
                    break;
                }
            };
            let (class, stored) = next;
            match c.session.try_publish(&stored.msg) {
                Ok(()) => {
                    c.queued.push_back(Sent::Held {
                        class,
                        seq: stored.seq,
                        size: stored.disk_size,
                    });
                    c.held_in_flight += 1;
                    LinkStats::add(&self.stats.sent, 1);
                    LinkStats::add(&self.stats.bytes_sent, stored.msg.payload.len() as u64);
                }
                Err(RequestError::Invalid(e)) => {
                    // It can never be sent.
                    tracing::warn!(topic = %stored.msg.topic, error = %e, "Dropped a message the broker cannot take.");
                    self.outbox.mark_done(class, stored.seq, stored.disk_size);
                }
                // The connection is ending: the message stays in the outbox, unsent,
                // and goes on the next connection.
                Err(RequestError::Full | RequestError::Closed) => break,
            }
        }
    }

    fn on_event(&mut self, phase: &mut Phase, ev: SessionEvent) {
        match ev {
            SessionEvent::Connected { session_present } => {
                if session_present {
                    tracing::info!("The broker kept this agent's session: what it holds for the agent (commands sent while it was away) follows.");
                }
                let old = std::mem::replace(
                    phase,
                    Phase::Waiting {
                        until: Instant::now(),
                    },
                );
                let Phase::Connecting { session, started } = old else {
                    *phase = old;
                    return;
                };
                self.connections += 1;
                let mut c = Box::new(Connected {
                    session,
                    generation: self.connections,
                    queued: VecDeque::new(),
                    queued_other: 0,
                    in_flight: HashMap::new(),
                    held_in_flight: 0,
                    since: Instant::now(),
                });
                self.on_connected(&mut c, started);
                *phase = Phase::Up(c);
            }
            SessionEvent::Sent(pkid) => {
                if let Phase::Up(c) = phase {
                    if let Some(sent) = c.queued.pop_front() {
                        if pkid != 0 {
                            c.in_flight.insert(pkid, sent);
                        }
                    }
                }
            }
            SessionEvent::OtherRequestSent => {
                if let Phase::Up(c) = phase {
                    c.queued_other = c.queued_other.saturating_sub(1);
                }
            }
            SessionEvent::PubAck(pkid) => {
                if let Phase::Up(c) = phase {
                    if let Some(Sent::Held { class, seq, size }) = c.in_flight.remove(&pkid) {
                        self.outbox.mark_done(class, seq, size);
                        c.held_in_flight = c.held_in_flight.saturating_sub(1);
                        LinkStats::add(&self.stats.acked, 1);
                        self.acks_since_sync += 1;
                        if self.acks_since_sync >= SYNC_EVERY_ACKS {
                            self.save_delivered();
                        }
                    }
                }
            }
            SessionEvent::Message(mut m, pkid) => {
                if let (Some(pkid), Phase::Up(c)) = (pkid, &*phase) {
                    m.ack = Some(Arc::new(Ack::new(
                        c.generation,
                        pkid,
                        self.acks_tx.clone(),
                        self.acks_outstanding.clone(),
                    )));
                }
                self.route(m);
            }
            SessionEvent::TooLarge { topic, size, limit } => {
                LinkStats::add(&self.stats.dropped_incoming, 1);
                let now = Instant::now();
                if self
                    .last_oversized_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                {
                    self.last_oversized_log = Some(now);
                    tracing::warn!(topic = %topic, size, limit,
                        "A cloud message is larger than mqtt.max_packet_size; it was skipped and its handler answers with the reason (this line repeats at most once a minute).");
                }
                self.route(Incoming {
                    topic,
                    payload: bytes::Bytes::new(),
                    props: None,
                    ack: None,
                    oversized: Some((size, limit)),
                });
            }
            SessionEvent::Other => {}
        }
    }

    fn on_connected(&mut self, c: &mut Connected, started: Instant) {
        let held = self.outbox.held();
        if let Some(down) = self.down_since.take() {
            LinkStats::add(&self.stats.reconnects, 1);
            if let crate::loglimit::Verdict::Log { left_out } = self.log.note("back", "") {
                tracing::info!(down_for = %format_duration(down.elapsed()), held, attempts = self.attempt,
                    "MQTT link is back; sending held messages{}.", crate::loglimit::more(left_out));
            }
        } else if !self.ever_connected {
            tracing::info!(client_id = %self.settings.auth.client_id(), held,
                connect_ms = started.elapsed().as_millis() as u64, "Connected to the broker.");
        } else {
            tracing::info!(held, "Connected to the broker again.");
        }
        self.ever_connected = true;
        self.attempt = 0;
        self.last_failure = None;
        self.stats.connected.store(true, Ordering::Relaxed);
        let _ = self.state_tx.send(LinkState::Up);

        // Birth: the retained status says we are online (replacing the will).
        let birth = Message::new(
            self.settings.status_topic.as_str(),
            status_payload(true, &self.version, None),
            QoS::AtLeastOnce,
        )
        .retained();
        if c.session.try_publish(&birth).is_ok() {
            c.queued.push_back(Sent::Status);
        }
        for s in &self.subs {
            if c.session.try_subscribe(&s.filter, s.qos).is_ok() {
                c.queued_other += 1;
            }
        }
        self.outbox.rewind();
    }

    /// An outbox error (a full or failing disk repeats it for every batch): logged the
    /// first time, then once a minute with the count.
    fn outbox_error(&self, what: &'static str, e: &dyn std::fmt::Display) {
        if let crate::loglimit::Verdict::Log { left_out } = self.log.note(what, "") {
            tracing::error!(error = %e, "Cannot {} the outbox{}.", what, crate::loglimit::more(left_out));
        }
    }

    fn on_failure(&mut self, phase: &Phase, f: Failure) {
        if matches!(f, Failure::WillQos(_)) && !self.will_qos0 {
            // A broker allowing only QoS 0 refuses a QoS 1 will; the messages then go
            // at QoS 0 too (the session sees the broker's Maximum QoS once connected).
            self.will_qos0 = true;
            tracing::warn!(reason = %f, "The broker does not accept a QoS 1 last will; connecting again with a QoS 0 one.");
            return;
        }
        let was_up = matches!(phase, Phase::Up(_));
        LinkStats::add(&self.stats.dropped_qos0_offline, self.qos0.len() as u64);
        self.qos0.clear();
        self.stats.connected.store(false, Ordering::Relaxed);
        let _ = self.state_tx.send(LinkState::Down);
        if was_up {
            self.down_since = Some(Instant::now());
            let up = match phase {
                Phase::Up(c) => c.since.elapsed(),
                _ => Duration::ZERO,
            };
            let up_for = format_duration(up);
            // Two clients with one id take turns: the broker closes each one's
            // connection when the other connects.
            if up < SHORT_SESSION && matches!(f, Failure::Network(_)) {
                self.short_sessions += 1;
            } else {
                self.short_sessions = 0;
            }
            if self.short_sessions >= SHORT_SESSIONS_SAID {
                if let crate::loglimit::Verdict::Log { left_out } = self.log.note("client-id", "") {
                    tracing::warn!(client_id = %self.settings.auth.client_id(), closes = self.short_sessions + left_out as u32,
                        "The broker keeps closing the connection right after accepting it: another client may be using this client id ({}). Give every robot its own device name or client id.",
                        self.settings.auth.client_id());
                }
            }
            if let crate::loglimit::Verdict::Log { left_out } = self.log.note("lost", "") {
                tracing::warn!(reason = %f, up_for = %up_for, held = self.outbox.held(),
                    "Lost the MQTT link; holding messages in the outbox until it is back{}.", crate::loglimit::more(left_out));
            }
        } else {
            LinkStats::add(&self.stats.connect_failures, 1);
            if self.down_since.is_none() {
                self.down_since = Some(Instant::now());
            }
            let same_kind = self
                .last_failure
                .as_ref()
                .is_some_and(|l| std::mem::discriminant(l) == std::mem::discriminant(&f));
            if !same_kind {
                if f.needs_operator() {
                    tracing::error!(reason = %f, client_id = %self.settings.auth.client_id(),
                        "Cannot connect to the broker; check the mqtt section of the configuration. Retrying with backoff.");
                } else {
                    tracing::warn!(reason = %f, "Cannot reach the broker; retrying with backoff.");
                }
            } else {
                tracing::debug!(reason = %f, attempt = self.attempt, "Connection attempt failed.");
            }
        }
        self.last_failure = Some(f);
    }

    fn on_command(&mut self, phase: &mut Phase, cmd: Command) {
        match cmd {
            Command::Publish { msg, class, reply } => {
                let r = self.accept(phase, msg, class);
                if let Err(e) = &r {
                    if reply.is_none() {
                        tracing::debug!(error = %e, "Publish refused.");
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Command::Subscribe { filter, qos, sink } => {
                let sink = forwarder(sink);
                // What came for this filter before anyone asked for it.
                let mut kept = VecDeque::new();
                for (at, m) in self.parked.drain(..) {
                    if topic_matches(&filter, &m.topic) {
                        let _ = sink.send(m);
                    } else {
                        kept.push_back((at, m));
                    }
                }
                self.parked = kept;
                if let Some(s) = self.subs.iter_mut().find(|s| s.filter == filter) {
                    s.sinks.push(sink);
                    return;
                }
                if let Phase::Up(c) = phase {
                    if c.session.try_subscribe(&filter, qos).is_ok() {
                        c.queued_other += 1;
                    }
                }
                self.subs.push(Subscription {
                    filter,
                    qos,
                    sinks: vec![sink],
                });
            }
            Command::Drained { reply } => self.drained_waiters.push(reply),
        }
    }

    fn accept(
        &mut self,
        phase: &mut Phase,
        msg: Message,
        class: usize,
    ) -> Result<(), PublishError> {
        let size = msg.packet_size();
        if size > self.settings.max_packet_size {
            LinkStats::add(&self.stats.dropped_too_large, 1);
            return Err(PublishError::TooLarge {
                size,
                limit: self.settings.max_packet_size,
            });
        }
        LinkStats::add(&self.stats.accepted, 1);
        match msg.qos {
            QoS::AtLeastOnce => match self.outbox.append(class, &msg, now_ms()) {
                Ok(_) => Ok(()),
                Err(e) => {
                    LinkStats::add(&self.stats.refused, 1);
                    Err(e.into())
                }
            },
            QoS::AtMostOnce => {
                // Never written to disk: sent while connected, or not at all.
                match phase {
                    Phase::Up(_) => self.qos0.push_back(msg),
                    _ => LinkStats::add(&self.stats.dropped_qos0_offline, 1),
                }
                Ok(())
            }
        }
    }

    /// Hands a message to every handler whose filter matches; one that matches none is
    /// parked until a handler subscribes (or [`PARK_FOR`] passes).
    fn route(&mut self, m: Incoming) {
        LinkStats::add(&self.stats.received, 1);
        let mut routed = false;
        for s in &mut self.subs {
            if !topic_matches(&s.filter, &m.topic) {
                continue;
            }
            s.sinks.retain(|sink| !sink.is_closed());
            for sink in &s.sinks {
                routed |= sink.send(m.clone()).is_ok();
            }
        }
        if !routed {
            self.parked.push_back((Instant::now(), m));
        }
    }

    /// Messages parked too long match no rule of this agent: they are dropped (and so
    /// acknowledged, or the broker would send them again at every start).
    fn expire_parked(&mut self) {
        while self
            .parked
            .front()
            .is_some_and(|(at, _)| at.elapsed() >= PARK_FOR)
        {
            if let Some((_, m)) = self.parked.pop_front() {
                LinkStats::add(&self.stats.dropped_incoming, 1);
                tracing::warn!(topic = %m.topic, "A cloud message matches no rule of this agent; it is dropped.");
            }
        }
    }

    /// Takes what is still queued into the outbox, waits briefly for acknowledgements,
    /// publishes the clean offline status and disconnects.
    async fn shutdown(mut self, mut phase: Phase, policy: ShutdownPolicy) {
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            self.on_command(&mut phase, cmd);
        }
        let deadline = Instant::now() + policy.grace;
        // Messages no handler took are left to the broker; those the handlers dealt
        // with are acknowledged now, or the next run would carry them out again.
        for (_, m) in self.parked.drain(..) {
            m.withhold();
        }
        self.subs.clear();
        while self.acks_outstanding.load(Ordering::Relaxed) > 0 || !self.acks_rx.is_empty() {
            match tokio::time::timeout_at(deadline, self.acks_rx.recv()).await {
                Ok(Some((generation, pkid))) => {
                    if let Phase::Up(c) = &phase {
                        if c.generation == generation {
                            c.session.ack(pkid);
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if let Phase::Up(c) = &mut phase {
            // Finish what is in flight so it is not sent twice on the next start.
            while c.held_in_flight > 0 && Instant::now() < deadline {
                match tokio::time::timeout_at(deadline, c.session.poll()).await {
                    Ok(Ok(SessionEvent::PubAck(pkid))) => {
                        if let Some(Sent::Held { class, seq, size }) = c.in_flight.remove(&pkid) {
                            self.outbox.mark_done(class, seq, size);
                            c.held_in_flight -= 1;
                            LinkStats::add(&self.stats.acked, 1);
                        }
                    }
                    Ok(Ok(SessionEvent::Sent(pkid))) => {
                        if let Some(sent) = c.queued.pop_front() {
                            if pkid != 0 {
                                c.in_flight.insert(pkid, sent);
                            }
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            let offline = Message::new(
                self.settings.status_topic.as_str(),
                status_payload(false, &self.version, Some("shutdown")),
                QoS::AtLeastOnce,
            )
            .retained();
            if c.session.try_publish(&offline).is_ok() {
                // It is the (queued + 1)-th PUBLISH the session will send from now.
                let mut ahead = c.queued.len();
                let mut offline_pkid = None;
                while Instant::now() < deadline {
                    match tokio::time::timeout_at(deadline, c.session.poll()).await {
                        Ok(Ok(SessionEvent::Sent(pkid))) => {
                            c.queued.pop_front();
                            if ahead == 0 {
                                offline_pkid = Some(pkid);
                            } else {
                                ahead -= 1;
                            }
                        }
                        Ok(Ok(SessionEvent::PubAck(pkid))) if Some(pkid) == offline_pkid => break,
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
            }
            if c.session.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    loop {
                        match c.session.poll().await {
                            Ok(SessionEvent::OtherRequestSent) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
            }
        }
        self.sync();
        self.stats.connected.store(false, Ordering::Relaxed);
        let _ = self.state_tx.send(LinkState::Stopped);
        tracing::info!(
            held = self.outbox.held(),
            "MQTT link closed; held messages will be sent after the next start."
        );
    }
}

/// Connects once (client id `<id>-check`, no last will), disconnects, and reports how
/// long the connection took or why it failed. For `edge-agent mqtt check`.
pub async fn probe(settings: &LinkSettings, timeout: Duration) -> Result<Duration, Failure> {
    let creds = settings
        .auth
        .credentials_for_client(&format!("{}-check", settings.auth.client_id()), now_ms());
    let started = Instant::now();
    let mut session = Session::new(settings, &creds, None);
    let result = tokio::time::timeout(timeout, async {
        loop {
            if let SessionEvent::Connected { .. } = session.poll().await? {
                return Ok(());
            }
        }
    })
    .await;
    match result {
        Ok(Ok(())) => {
            let took = started.elapsed();
            if session.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(Duration::from_millis(500), session.poll()).await;
            }
            Ok(took)
        }
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure::Network(format!(
            "no answer within {}",
            format_duration(timeout)
        ))),
    }
}
