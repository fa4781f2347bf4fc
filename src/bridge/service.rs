//! MQTT -> ROS 2 service calls: one task per `[[mqtt_to_service]]` rule. A cloud
//! request (JSON) becomes a call of the rule's service; the response, as JSON, is the
//! reply. Each request is carried out at most once: the call log ([`super::calls`])
//! remembers, by request id, what was called and how it was answered, and a request
//! that comes again gets the stored reply instead of a second call.
//!
//! Replies: `{"id","code","data","message"}` (the Alink service reply form), to the
//! request's MQTT 5 Response Topic with its Correlation Data when it names one, else to
//! the rule's `reply_topic`. A request is acknowledged to the broker once its reply is
//! in the outbox (class `reports`); one still waiting when the agent stops is not, so
//! the next run gets it again. Codes are listed in docs/commands.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::calls::{CallLog, Known};
use super::inbound::{withhold_rest, Received, Refusal};
use super::rules::{ActionGoal, Envelope, MqttToService, PropertySet, ServiceCall, Target};
use super::stats::RuleStats;
use crate::clock::{now_ms, rfc3339_ms};
use crate::loglimit::{self, Verdict};
use crate::mqtt::{Incoming, LinkHandle, Message, Props, QoS};
use crate::ros::codec::{self, DecodeOptions, EncodeOptions};
use crate::ros::transport::{RawPublisher, Transport};

pub const OK: u16 = 200;
pub const BAD_REQUEST: u16 = 400;
pub const NO_SERVER: u16 = 404;
pub const STALE: u16 = 408;
pub const UNKNOWN_OUTCOME: u16 = 409;
pub const TOO_LARGE: u16 = 413;
pub const FAILED: u16 = 500;
pub const CALL_FAILED: u16 = 502;
pub const NO_ANSWER: u16 = 504;
pub const REJECTED: u16 = 403;

/// How long an action server has to accept or reject a goal.
const GOAL_ACCEPT_WAIT: Duration = Duration::from_secs(10);

/// The goal id of request `id` of rule `rule`: the same for the same request, so a goal
/// sent by an earlier run can be asked for its result.
pub fn goal_uuid(rule: &str, id: &str) -> [u8; 16] {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(format!("{rule}\0{id}").as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u
}

fn uuid_json(u: &[u8; 16]) -> Value {
    use base64::Engine as _;
    Value::String(base64::engine::general_purpose::STANDARD.encode(u))
}

/// action_msgs/GoalStatus in words.
fn goal_status(status: i64) -> &'static str {
    match status {
        1 => "accepted",
        2 => "executing",
        3 => "canceling",
        4 => "succeeded",
        5 => "canceled",
        6 => "aborted",
        _ => "unknown",
    }
}

/// A request about a goal already sent: `{"id": <the goal request's id>}` on one of an
/// action rule's topics, answered on `<that topic>_reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoalRequest {
    /// Cancels the goal.
    Cancel,
    /// The goal's status and latest feedback while it runs, its stored reply once it
    /// has ended.
    Status,
}

impl GoalRequest {
    fn name(self) -> &'static str {
        match self {
            GoalRequest::Cancel => "cancel",
            GoalRequest::Status => "status",
        }
    }
}

/// Answers cancel or status requests (see [`GoalRequest`]) of an action rule.
pub async fn serve_goal_requests(
    svc: Arc<Service>,
    kind: GoalRequest,
    mut rx: mpsc::Receiver<Incoming>,
    shutdown: CancellationToken,
) {
    let Target::Goal(g) = &svc.rule.target else {
        return;
    };
    loop {
        let m = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
        };
        let Some(id) = goal_id_of(&m) else {
            let what = kind.name();
            let body = reply_body(
                "",
                BAD_REQUEST,
                Value::Null,
                &format!("a {what} request names its goal: {{\"id\": <the goal request's id>}}"),
            );
            svc.refused(
                &m,
                BAD_REQUEST,
                &format!("a {what} request without the goal's id"),
            );
            svc.send(&Address::ErrorTopic, &m, &body).await;
            continue;
        };
        let body = match kind {
            GoalRequest::Cancel => svc.cancel(g, &id, &shutdown).await,
            GoalRequest::Status => svc.status(&id).await,
        };
        let to = Address::Reply {
            topic: format!("{}_reply", m.topic),
            correlation: None,
        };
        svc.send(&to, &m, &body).await;
    }
    withhold_rest(&mut rx);
}

/// The goal a cancel or status request names: `{"id": <the goal request's id>}`.
fn goal_id_of(m: &Incoming) -> Option<String> {
    let v: Value = serde_json::from_slice(&m.payload).ok()?;
    match &v["id"] {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `action_msgs/srv/CancelGoal`, the cancel service of every action.
pub fn cancel_type() -> crate::ros::TypeName {
    crate::ros::TypeName {
        package: "action_msgs".into(),
        kind: "srv",
        name: "CancelGoal".into(),
    }
}

/// Forwards an action's feedback to the cloud: each goal of this rule's at most once
/// per `feedback_min_interval` (what comes between is dropped; the latest is sent at
/// the next chance).
pub async fn forward_feedback(
    svc: Arc<Service>,
    mut rx: mpsc::Receiver<crate::ros::transport::Sample>,
    shutdown: CancellationToken,
) {
    let Target::Goal(g) = &svc.rule.target else {
        return;
    };
    loop {
        let sample = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = rx.recv() => match s { Some(s) => s, None => return },
        };
        let Ok(v) = codec::decode_to_value(&g.feedback, &sample.cdr, &DecodeOptions::default())
        else {
            continue;
        };
        let uuid: Option<[u8; 16]> = v["goal_id"]["uuid"].as_str().and_then(|b| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .ok()
                .and_then(|b| b.try_into().ok())
        });
        let Some(uuid) = uuid else { continue };
        let id = {
            let Ok(mut a) = svc.active.lock() else { return };
            let Some(goal) = a.get_mut(&uuid) else {
                continue;
            };
            goal.feedback = Some(v["feedback"].clone());
            if goal
                .last_sent
                .is_some_and(|t| t.elapsed() < g.feedback_min_interval)
            {
                continue;
            }
            goal.last_sent = Some(Instant::now());
            goal.id.clone()
        };
        svc.feedback_event(g, &id, json!({ "id": id, "feedback": v["feedback"] }))
            .await;
    }
}

/// How often a request that waits for its server looks again.
const SERVER_POLL: Duration = Duration::from_millis(20);

/// How long a call in progress may still finish once the agent is told to stop.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// Where a request's reply goes.
#[derive(Debug, Clone, PartialEq)]
enum Address {
    Reply {
        topic: String,
        correlation: Option<Bytes>,
    },
    /// The request has no id (or none that fits in a topic): its refusal goes to the
    /// rule's error topic.
    ErrorTopic,
}

/// The request's id: the topic's last level (`id_from_topic`), the `id_field` of the
/// request, or its MQTT 5 Correlation Data (as text, or hex when not UTF-8).
fn request_id(rule: &MqttToService, m: &Incoming, value: Option<&Value>) -> Option<String> {
    if rule.id_from_topic {
        return m
            .topic
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
    }
    let mut at = value;
    for part in &rule.id_field {
        at = at.and_then(|v| v.get(part));
    }
    match at {
        Some(Value::String(s)) if !s.is_empty() => return Some(s.clone()),
        Some(Value::Number(n)) => return Some(n.to_string()),
        _ => {}
    }
    let c = m.props.as_ref()?.correlation.as_ref()?;
    Some(match std::str::from_utf8(c) {
        Ok(s) if !s.is_empty() && !s.chars().any(char::is_control) => s.to_owned(),
        _ => c.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

fn address(rule: &MqttToService, m: &Incoming, id: Option<&str>) -> Address {
    if let Some(p) = &m.props {
        if let Some(t) = &p.response_topic {
            return Address::Reply {
                topic: t.clone(),
                correlation: p.correlation.clone(),
            };
        }
    }
    match id.and_then(|id| rule.reply_topic_for(&m.topic, id)) {
        Some(topic) => Address::Reply {
            topic,
            correlation: None,
        },
        None => Address::ErrorTopic,
    }
}

fn reply_body(id: &str, code: u16, data: Value, message: &str) -> Value {
    json!({ "id": id, "code": code, "data": data, "message": message })
}

/// Runs `f` on the call log off the runtime's threads (it fsyncs).
async fn with_log<T: Send + 'static>(
    log: &Arc<Mutex<CallLog>>,
    f: impl FnOnce(&mut CallLog) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || {
        let mut l = log
            .lock()
            .map_err(|_| std::io::Error::other("the call log's lock is poisoned"))?;
        f(&mut l)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A reply to a request that was not carried out.
fn refusal(code: u16, message: String) -> Outcome {
    Outcome::Reply {
        code,
        data: Value::Null,
        message,
        record: false,
    }
}

/// What became of one request.
enum Outcome {
    /// A reply (to be sent to the request's address); `record` when it answers a call
    /// that was made, so it is kept in the call log.
    Reply {
        code: u16,
        data: Value,
        message: String,
        record: bool,
    },
    /// A request seen before: its stored reply.
    Stored(Value),
    /// The agent is stopping: not acknowledged, the broker sends it again.
    Withheld,
}

/// A goal in progress.
#[derive(Debug, Default)]
pub struct ActiveGoal {
    /// The goal request's id.
    pub id: String,
    /// When its feedback was last sent to the cloud.
    pub last_sent: Option<Instant>,
    /// Its latest feedback.
    pub feedback: Option<Value>,
}

/// Everything a rule's task works with.
pub struct Service {
    pub rule: Arc<MqttToService>,
    pub transport: Arc<dyn Transport>,
    pub link: LinkHandle,
    pub stats: Arc<RuleStats>,
    pub log: Arc<Mutex<CallLog>>,
    /// When the agent started: a missing server is waited for until `wait_for_server`
    /// after this (discovery), and answered at once later.
    pub started: Instant,
    /// For a property set: a publisher per property, in the rule's order.
    pub publishers: Vec<Arc<dyn RawPublisher>>,
    /// For an action: goals in progress by goal id, with their request id and when
    /// their feedback was last sent.
    pub active: Arc<Mutex<HashMap<[u8; 16], ActiveGoal>>>,
    /// For an action: the topic each goal request came on.
    pub goal_topics: Mutex<HashMap<String, String>>,
}

impl Service {
    /// `value`: the request's JSON, when it is JSON (parsed once, by [`Service::serve`]).
    async fn handle(
        &self,
        m: &Incoming,
        value: Option<Value>,
        id: &str,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let rule = &self.rule;
        // Seen before?
        let (name, key) = (rule.name.clone(), id.to_owned());
        let known = with_log(&self.log, move |l| Ok(l.get(&name, &key).cloned())).await;
        match known {
            Ok(Some(Known::Answered(body))) => return Outcome::Stored(body),
            Ok(Some(Known::Started)) if matches!(rule.target, Target::Goal(_)) => {
                // A goal sent by an earlier run: its result is asked for again (the
                // action server keeps it for a while); the goal is not sent twice.
                if let Target::Goal(g) = &rule.target {
                    return self.result_of(g, id, None, shutdown).await;
                }
            }
            Ok(Some(Known::Started)) => {
                return Outcome::Reply {
                    code: UNKNOWN_OUTCOME,
                    data: Value::Null,
                    message: format!(
                        "outcome unknown: this request was being carried out ({}) when the agent stopped; not carried out again",
                        rule.target_name()
                    ),
                    record: true,
                }
            }
            Ok(None) => {}
            Err(e) => {
                return refusal(
                    FAILED,
                    format!("cannot read the call log: {e}; not carried out"),
                )
            }
        }
        let read = match value {
            Some(v) => Received::of_json(&rule.age, m, v),
            None => Received::read(&rule.age, m),
        };
        let cmd = match read {
            Ok(c) => c,
            Err((Refusal::TooLarge, why)) => return refusal(TOO_LARGE, why),
            Err((_, why)) => return refusal(BAD_REQUEST, why),
        };
        if let Some(why) = cmd.too_old(&rule.age, now_ms()) {
            return refusal(STALE, why);
        }
        let mut request = match rule.envelope {
            Envelope::Raw => cmd.value.clone(),
            Envelope::Alink => match cmd.value.get("params") {
                Some(p) => p.clone(),
                None => {
                    return refusal(
                        BAD_REQUEST,
                        "params: missing (an Alink request carries its content in \"params\")"
                            .into(),
                    )
                }
            },
        };
        if rule.envelope == Envelope::Raw && rule.id_outside_request && !rule.id_from_topic {
            if let Value::Object(o) = &mut request {
                if rule.id_field.len() == 1 {
                    o.remove(&rule.id_field[0]);
                }
            }
        }
        match &rule.target {
            Target::Call(c) => self.call(c, id, &cmd, request, shutdown).await,
            Target::Set(p) => self.set(p, id, &cmd, request, shutdown).await,
            Target::Goal(g) => self.goal(g, id, &cmd, request, shutdown).await,
        }
    }

    /// Writes down that request `id` is about to be carried out.
    async fn started(&self, id: &str) -> Result<(), Outcome> {
        let (name, key, at) = (self.rule.name.clone(), id.to_owned(), now_ms());
        with_log(&self.log, move |l| l.started(&name, &key, at))
            .await
            .map_err(|e| {
                refusal(
                    FAILED,
                    format!("cannot write the call log: {e}; not carried out"),
                )
            })
    }

    async fn call(
        &self,
        c: &ServiceCall,
        id: &str,
        cmd: &Received,
        request: Value,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let rule = &self.rule;
        let opts = EncodeOptions {
            strict: rule.strict,
            big_endian: false,
        };
        let cdr = match codec::encode_value(&c.request, &request, &opts) {
            Ok(b) => Bytes::from(b),
            Err(e) => return refusal(BAD_REQUEST, e.to_string()),
        };

        // The server: waited for while the agent has just started, else at once.
        loop {
            match self
                .transport
                .service_ready(&c.ros_service, &c.type_name, c.rmw)
            {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return refusal(FAILED, e.to_string()),
            }
            let until_start = c.wait_for_server.saturating_sub(self.started.elapsed());
            let limit = cmd.wait_limit(&rule.age, until_start, now_ms());
            if limit.is_zero() {
                if let Some(why) = cmd.too_old(&rule.age, now_ms() + 1) {
                    return refusal(STALE, format!("{why} (no server of {})", c.ros_service));
                }
                return refusal(
                    NO_SERVER,
                    format!(
                        "no server of {} on the ROS 2 graph; not called",
                        c.ros_service
                    ),
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(SERVER_POLL.min(limit)) => {}
                _ = shutdown.cancelled() => return Outcome::Withheld,
            }
        }

        // Written down before the call: a request found written down without a reply
        // was cut off in the middle, and is not called again.
        if let Err(o) = self.started(id).await {
            return o;
        }
        RuleStats::inc(&self.stats.sent);
        let call = self
            .transport
            .call(&c.ros_service, &c.type_name, cdr, c.rmw, c.timeout, false);
        tokio::pin!(call);
        let result = tokio::select! {
            r = &mut call => r,
            _ = shutdown.cancelled() => {
                match tokio::time::timeout(STOP_WAIT, &mut call).await {
                    Ok(r) => r,
                    // Left written down without a reply: the next run answers it as
                    // cut off, and does not call again.
                    Err(_) => return Outcome::Withheld,
                }
            }
        };
        let (code, data, message) = match result {
            Ok(Some(body)) => {
                match codec::decode_to_value(&c.response, &body, &DecodeOptions::default()) {
                    Ok(v) => (OK, v, "success".to_owned()),
                    Err(e) => (
                        CALL_FAILED,
                        Value::Null,
                        format!("the response of {} cannot be read: {e}", c.ros_service),
                    ),
                }
            }
            Ok(None) => (
                NO_ANSWER,
                Value::Null,
                format!(
                    "{} did not answer within {:.1} s; it may still carry the request out",
                    c.ros_service,
                    c.timeout.as_secs_f64()
                ),
            ),
            Err(e) => (CALL_FAILED, Value::Null, e.to_string()),
        };
        Outcome::Reply {
            code,
            data,
            message,
            record: true,
        }
    }

    /// Waits for a service of the action to be ready (as for a service call).
    async fn wait_ready(
        &self,
        g: &ActionGoal,
        what: &str,
        ty: &crate::ros::TypeName,
        cmd: Option<&Received>,
        patience: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Result<(), Outcome> {
        let rule = &self.rule;
        let service = g.endpoint(what);
        let since = Instant::now();
        loop {
            match self.transport.service_ready(&service, ty, g.rmw) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(refusal(FAILED, e.to_string())),
            }
            // Waited for while the agent has just started (or, with `patience`, that
            // long: the result of a goal already accepted).
            let wait = match patience {
                Some(p) => p.saturating_sub(since.elapsed()),
                None => g.wait_for_server.saturating_sub(self.started.elapsed()),
            };
            let limit = match cmd {
                Some(c) => c.wait_limit(&rule.age, wait, now_ms()),
                None => wait,
            };
            if limit.is_zero() {
                return Err(refusal(
                    NO_SERVER,
                    format!(
                        "no server of the action {} ({what}) on the ROS 2 graph; {}",
                        g.ros_action,
                        if what == "send_goal" {
                            "the goal was not sent"
                        } else {
                            "not asked"
                        }
                    ),
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(SERVER_POLL.min(limit)) => {}
                _ = shutdown.cancelled() => return Err(Outcome::Withheld),
            }
        }
    }

    /// Sends a goal, then waits for its result. Feedback meanwhile goes to the rule's
    /// feedback topic (see [`forward_feedback`]).
    async fn goal(
        &self,
        g: &ActionGoal,
        id: &str,
        cmd: &Received,
        request: Value,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let rule = &self.rule;
        let uuid = goal_uuid(&rule.name, id);
        let send = json!({ "goal_id": { "uuid": uuid_json(&uuid) }, "goal": request });
        let opts = EncodeOptions {
            strict: rule.strict,
            big_endian: false,
        };
        // The goal is checked on its own, so that errors name its fields.
        if let Err(e) = codec::encode_value(&g.goal, &send["goal"], &opts) {
            return refusal(BAD_REQUEST, e.to_string());
        }
        let cdr = match codec::encode_value(&g.send_goal.0, &send, &opts) {
            Ok(b) => Bytes::from(b),
            Err(e) => return refusal(BAD_REQUEST, e.to_string()),
        };
        if let Err(o) = self
            .wait_ready(
                g,
                "send_goal",
                &g.part("SendGoal"),
                Some(cmd),
                None,
                shutdown,
            )
            .await
        {
            return o;
        }
        if let Err(o) = self.started(id).await {
            return o;
        }
        RuleStats::inc(&self.stats.sent);
        if let Ok(mut a) = self.active.lock() {
            a.insert(
                uuid,
                ActiveGoal {
                    id: id.to_owned(),
                    ..ActiveGoal::default()
                },
            );
        }
        let sent = self
            .transport
            .call(
                &g.endpoint("send_goal"),
                &g.part("SendGoal"),
                cdr,
                g.rmw,
                GOAL_ACCEPT_WAIT,
                false,
            )
            .await;
        let accepted = match sent {
            Ok(Some(body)) => {
                codec::decode_to_value(&g.send_goal.1, &body, &DecodeOptions::default())
                    .map(|v| v["accepted"] == true)
                    .map_err(|e| format!("the answer of {} cannot be read: {e}", g.ros_action))
            }
            Ok(None) => Err(format!(
                "{} did not answer the goal within {} s; it may still carry it out",
                g.ros_action,
                GOAL_ACCEPT_WAIT.as_secs()
            )),
            Err(e) => Err(e.to_string()),
        };
        match accepted {
            Ok(true) => {}
            Ok(false) => {
                self.forget(&uuid);
                return Outcome::Reply {
                    code: REJECTED,
                    data: Value::Null,
                    message: format!("{} rejected the goal", g.ros_action),
                    record: true,
                };
            }
            Err(why) => {
                self.forget(&uuid);
                return Outcome::Reply {
                    code: NO_ANSWER,
                    data: Value::Null,
                    message: why,
                    record: true,
                };
            }
        }
        self.feedback_event(g, id, json!({ "id": id, "status": "accepted" }))
            .await;
        // Accepted: its result is waited for as long as the goal may run.
        let out = self.result_of(g, id, Some(g.timeout), shutdown).await;
        self.forget(&uuid);
        out
    }

    /// Cancels goal `id`; the answer to the cancel request.
    async fn cancel(&self, g: &ActionGoal, id: &str, shutdown: &CancellationToken) -> Value {
        let uuid = goal_uuid(&self.rule.name, id);
        let ask = json!({ "goal_info": { "goal_id": { "uuid": uuid_json(&uuid) }, "stamp": { "sec": 0, "nanosec": 0 } } });
        let ty = cancel_type();
        let cdr = match codec::encode_value(&g.cancel.0, &ask, &EncodeOptions::default()) {
            Ok(cdr) => Bytes::from(cdr),
            Err(e) => return reply_body(id, CALL_FAILED, Value::Null, &e.to_string()),
        };
        if let Err(Outcome::Reply { code, message, .. }) = self
            .wait_ready(g, "cancel_goal", &ty, None, None, shutdown)
            .await
        {
            return reply_body(id, code, Value::Null, &message);
        }
        let answer = self
            .transport
            .call(
                &g.endpoint("cancel_goal"),
                &ty,
                cdr,
                g.rmw,
                GOAL_ACCEPT_WAIT,
                false,
            )
            .await;
        match answer {
            Ok(Some(b)) => match codec::decode_to_value(&g.cancel.1, &b, &DecodeOptions::default())
            {
                Ok(v) => {
                    let message = match v["return_code"].as_i64() {
                        Some(0) => "canceling",
                        Some(1) => "the action server rejected the cancel",
                        Some(2) => "the action server does not know this goal",
                        Some(3) => "the goal has already finished",
                        _ => "unknown answer",
                    };
                    reply_body(id, OK, v, message)
                }
                Err(e) => reply_body(id, CALL_FAILED, Value::Null, &e.to_string()),
            },
            Ok(None) => reply_body(
                id,
                NO_ANSWER,
                Value::Null,
                &format!("{} did not answer the cancel", g.ros_action),
            ),
            Err(e) => reply_body(id, CALL_FAILED, Value::Null, &e.to_string()),
        }
    }

    /// The status of goal `id`: executing with its latest feedback while it runs, its
    /// stored reply once it has ended.
    async fn status(&self, id: &str) -> Value {
        let uuid = goal_uuid(&self.rule.name, id);
        let running = self.active.lock().ok().and_then(|a| {
            a.get(&uuid)
                .map(|g| g.feedback.clone().unwrap_or(Value::Null))
        });
        if let Some(feedback) = running {
            return reply_body(
                id,
                OK,
                json!({ "status": "executing", "feedback": feedback }),
                "executing",
            );
        }
        let (name, key) = (self.rule.name.clone(), id.to_owned());
        match with_log(&self.log, move |l| Ok(l.get(&name, &key).cloned())).await {
            Ok(Some(Known::Answered(stored))) => stored,
            Ok(Some(Known::Started)) => reply_body(
                id,
                OK,
                json!({ "status": "unknown" }),
                "sent by an earlier run; its result is asked for when the goal request comes again",
            ),
            _ => reply_body(id, NO_SERVER, Value::Null, "no goal with this id"),
        }
    }

    /// Asks for the result of goal `id` and waits for it, up to the rule's timeout.
    async fn result_of(
        &self,
        g: &ActionGoal,
        id: &str,
        patience: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let uuid = goal_uuid(&self.rule.name, id);
        if let Err(o) = self
            .wait_ready(
                g,
                "get_result",
                &g.part("GetResult"),
                None,
                patience,
                shutdown,
            )
            .await
        {
            return match o {
                // The goal was sent: its outcome is not known.
                Outcome::Reply { message, .. } => Outcome::Reply {
                    code: UNKNOWN_OUTCOME,
                    data: Value::Null,
                    message: format!("outcome unknown: {message}"),
                    record: true,
                },
                o => o,
            };
        }
        let ask = json!({ "goal_id": { "uuid": uuid_json(&uuid) } });
        let cdr = match codec::encode_value(&g.get_result.0, &ask, &EncodeOptions::default()) {
            Ok(b) => Bytes::from(b),
            Err(e) => return refusal(FAILED, e.to_string()),
        };
        let call = self.transport.call(
            &g.endpoint("get_result"),
            &g.part("GetResult"),
            cdr,
            g.rmw,
            g.timeout,
            false,
        );
        tokio::pin!(call);
        let result = tokio::select! {
            r = &mut call => r,
            // The goal goes on; the next run asks for its result again.
            _ = shutdown.cancelled() => return Outcome::Withheld,
        };
        let (code, data, message) = match result {
            Ok(Some(body)) => {
                match codec::decode_to_value(&g.get_result.1, &body, &DecodeOptions::default()) {
                    Ok(v) => {
                        let status = v["status"].as_i64().unwrap_or(0);
                        if status == 0 {
                            (
                                UNKNOWN_OUTCOME,
                                Value::Null,
                                format!("outcome unknown: {} does not know this goal (any more); not sent again", g.ros_action),
                            )
                        } else {
                            let name = goal_status(status);
                            (
                                OK,
                                json!({ "status": name, "result": v["result"] }),
                                name.to_owned(),
                            )
                        }
                    }
                    Err(e) => (
                        CALL_FAILED,
                        Value::Null,
                        format!("the result of {} cannot be read: {e}", g.ros_action),
                    ),
                }
            }
            Ok(None) => (
                NO_ANSWER,
                Value::Null,
                format!(
                    "{} did not finish the goal within {:.0} s; it may still be working on it",
                    g.ros_action,
                    g.timeout.as_secs_f64()
                ),
            ),
            Err(e) => (CALL_FAILED, Value::Null, e.to_string()),
        };
        Outcome::Reply {
            code,
            data,
            message,
            record: true,
        }
    }

    fn forget(&self, uuid: &[u8; 16]) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(uuid);
        }
    }

    async fn feedback_event(&self, g: &ActionGoal, id: &str, body: Value) {
        let topic = g.feedback_topic.render(|v| match v {
            "id" => Some(id.to_owned()),
            "topic" => Some(self.goal_topic(id)),
            _ => None,
        });
        let msg = Message::new(
            topic.as_str(),
            serde_json::to_vec(&body).unwrap_or_default(),
            QoS::AtLeastOnce,
        );
        let _ = self.link.publish_nowait(msg, "telemetry").await;
    }

    /// The topic the goal request `id` came on (for `${topic}` in the feedback topic).
    fn goal_topic(&self, id: &str) -> String {
        self.goal_topics
            .lock()
            .ok()
            .and_then(|t| t.get(id).cloned())
            .unwrap_or_default()
    }

    /// An Alink property set: every property is checked first (nothing is published
    /// when one is wrong), then each goes out on its topic.
    async fn set(
        &self,
        p: &PropertySet,
        id: &str,
        cmd: &Received,
        request: Value,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let rule = &self.rule;
        let Value::Object(values) = request else {
            return refusal(
                BAD_REQUEST,
                "params: expected an object of property values".into(),
            );
        };
        let opts = EncodeOptions {
            strict: rule.strict,
            big_endian: false,
        };
        let mut out = Vec::new();
        for (name, value) in values {
            let Some((prop, publisher)) = p
                .properties
                .iter()
                .zip(&self.publishers)
                .find(|(q, _)| q.identifier == name)
            else {
                let known: Vec<&str> = p.properties.iter().map(|q| q.identifier.as_str()).collect();
                return refusal(
                    BAD_REQUEST,
                    format!(
                        "params.{name}: not a property of this robot (known: {})",
                        known.join(", ")
                    ),
                );
            };
            let msg = match &prop.field {
                None => value,
                Some(path) => path
                    .iter()
                    .rev()
                    .fold(value, |inner, part| json!({ part.as_str(): inner })),
            };
            match codec::encode_value(&prop.schema, &msg, &opts) {
                Ok(b) => out.push((prop, publisher, Bytes::from(b))),
                Err(e) => return refusal(BAD_REQUEST, format!("params.{name}: {e}")),
            }
        }
        // Held until every topic has a subscriber, never past the request's age.
        let limit = cmd.wait_limit(&rule.age, p.wait_for_subscriber, now_ms());
        let deadline = tokio::time::Instant::now() + limit;
        while out
            .iter()
            .any(|(_, publ, _)| publ.subscription_count() == 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::select! {
                _ = tokio::time::sleep(SERVER_POLL) => {}
                _ = shutdown.cancelled() => return Outcome::Withheld,
            }
        }
        if let Some(why) = cmd.too_old(&rule.age, now_ms()) {
            return refusal(STALE, why);
        }
        if let Err(o) = self.started(id).await {
            return o;
        }
        for (prop, publisher, cdr) in &out {
            if let Err(e) = publisher.publish(cdr) {
                return Outcome::Reply {
                    code: FAILED,
                    data: Value::Null,
                    message: format!("{}: {e}", prop.identifier),
                    record: true,
                };
            }
            RuleStats::inc(&self.stats.sent);
        }
        Outcome::Reply {
            code: OK,
            data: json!({}),
            message: "success".into(),
            record: true,
        }
    }

    async fn send(&self, to: &Address, m: &Incoming, body: &Value) {
        let rule = &self.rule;
        let msg = match to {
            Address::Reply { topic, correlation } => {
                let mut msg = Message::new(
                    topic.as_str(),
                    serde_json::to_vec(body).unwrap_or_default(),
                    QoS::AtLeastOnce,
                );
                if let Some(c) = correlation {
                    msg.props = Some(Box::new(Props {
                        correlation: Some(c.clone()),
                        ..Props::default()
                    }));
                }
                msg
            }
            Address::ErrorTopic => {
                let e = json!({
                    "rule": rule.name,
                    "topic": m.topic,
                    "ros_service": rule.target_name(),
                    "error": body["message"],
                    "code": body["code"],
                    "time": rfc3339_ms(now_ms()),
                });
                Message::new(
                    rule.error_topic.as_str(),
                    serde_json::to_vec(&e).unwrap_or_default(),
                    QoS::AtLeastOnce,
                )
            }
        };
        match self.link.publish(msg, "reports").await {
            Ok(()) => RuleStats::inc(&self.stats.replies),
            Err(e) => {
                if let Verdict::Log { left_out } = self
                    .stats
                    .error("reply", format!("cannot queue the reply: {e}"))
                {
                    tracing::warn!(rule = %rule.name, error = %e, "Cannot queue a service reply{}.", loglimit::more(left_out));
                }
            }
        }
    }

    /// Deals with one request; false when it is to be left with the broker.
    async fn serve(&self, m: &Incoming, shutdown: &CancellationToken) -> bool {
        let rule = &self.rule;
        let value: Option<Value> = serde_json::from_slice(&m.payload).ok();
        let id = request_id(rule, m, value.as_ref());
        let to = address(rule, m, id.as_deref());
        let Some(id) = id.filter(|_| to != Address::ErrorTopic) else {
            let why = match &value {
                None if m.oversized.is_some() => {
                    let (size, limit) = m.oversized.unwrap_or_default();
                    format!("the request is {size} bytes, more than mqtt.max_packet_size ({limit} bytes); it was not read")
                }
                None => match Received::read(&rule.age, m) {
                    Err((_, why)) => why,
                    Ok(_) => "the request has no id".into(),
                },
                Some(_) if rule.id_from_topic => "the request's topic has no id".into(),
                Some(_) => format!(
                    "the request has no id: put it in \"{}\" or send MQTT 5 Correlation Data; not carried out",
                    rule.id_field.join(".")
                ),
            };
            RuleStats::inc(&self.stats.refused_invalid);
            self.refused(m, BAD_REQUEST, &why);
            let body = reply_body("", BAD_REQUEST, Value::Null, &why);
            self.send(&Address::ErrorTopic, m, &body).await;
            return true;
        };
        if let (Target::Goal(_), Ok(mut t)) = (&rule.target, self.goal_topics.lock()) {
            t.insert(id.clone(), m.topic.clone());
        }
        let outcome = self.handle(m, value, &id, shutdown).await;
        if let Ok(mut t) = self.goal_topics.lock() {
            t.remove(&id);
        }
        let body = match outcome {
            Outcome::Withheld => return false,
            Outcome::Stored(body) => {
                RuleStats::inc(&self.stats.duplicates);
                tracing::debug!(rule = %rule.name, id = %id, "A request seen before; sent its stored reply, not called again.");
                body
            }
            Outcome::Reply {
                code,
                data,
                message,
                record,
            } => {
                let body = reply_body(&id, code, data, &message);
                if code != OK {
                    match code {
                        BAD_REQUEST => RuleStats::inc(&self.stats.refused_invalid),
                        STALE => RuleStats::inc(&self.stats.refused_stale),
                        TOO_LARGE => RuleStats::inc(&self.stats.refused_too_large),
                        UNKNOWN_OUTCOME => RuleStats::inc(&self.stats.duplicates),
                        _ => {}
                    }
                    self.refused(m, code, &message);
                }
                if record {
                    let (name, key, b, at) =
                        (rule.name.clone(), id.clone(), body.clone(), now_ms());
                    if let Err(e) =
                        with_log(&self.log, move |l| l.answered(&name, &key, at, b)).await
                    {
                        tracing::warn!(rule = %rule.name, id = %id, error = %e,
                            "Cannot write a reply to the call log; a repeat of this request would be answered as cut off.");
                    }
                }
                body
            }
        };
        self.send(&to, m, &body).await;
        true
    }

    fn refused(&self, m: &Incoming, code: u16, why: &str) {
        let kind = match code {
            BAD_REQUEST => "invalid",
            NO_SERVER => "no-server",
            STALE => "stale",
            UNKNOWN_OUTCOME => "cut-off",
            TOO_LARGE => "too-large",
            NO_ANSWER => "no-answer",
            CALL_FAILED => "call-failed",
            _ => "failed",
        };
        if let Verdict::Log { left_out } = self.stats.error(kind, why.to_owned()) {
            tracing::warn!(rule = %self.rule.name, topic = %m.topic, code, error = %why,
                "A cloud request was not carried out as asked; the reason went back to the cloud{}.", loglimit::more(left_out));
        } else {
            tracing::debug!(rule = %self.rule.name, topic = %m.topic, error = %why, "A cloud service request was not carried out.");
        }
    }

    pub async fn run(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Incoming>,
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
            RuleStats::inc(&self.stats.received);
            if !self.serve(&m, &shutdown).await {
                m.withhold();
            }
            // `m` goes here, and with it the acknowledgement to the broker.
            drop(m);
        }
        withhold_rest(&mut rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(topic: &str, correlation: Option<&'static [u8]>) -> Incoming {
        Incoming {
            topic: topic.into(),
            payload: Bytes::new(),
            props: correlation.map(|c| Props {
                correlation: Some(Bytes::from_static(c)),
                ..Props::default()
            }),
            ack: None,
            oversized: None,
        }
    }

    fn rule(id_from_topic: bool) -> MqttToService {
        let text = format!(
            "[[mqtt_to_service]]\nname = \"s\"\nmqtt_topic = \"/a/+\"\nros_service = \"/s\"\nros_type = \"std_srvs/srv/Trigger\"\nid_from_topic = {id_from_topic}\nid_field = \"meta.id\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.toml");
        std::fs::write(&f, text).unwrap();
        let device = crate::config::DeviceConfig {
            product_key: "p".into(),
            device_name: "d".into(),
        };
        let reg = crate::ros::Registry::standard(&[]).unwrap();
        let rules =
            crate::bridge::rules::load(&[f], &device, &reg, true, &Default::default()).unwrap();
        rules.services[0].clone()
    }

    #[test]
    fn the_request_id_comes_from_the_topic_the_request_or_the_correlation_data() {
        let r = rule(false);
        let v = json!({"meta": {"id": "from-payload"}});
        let m = incoming("/a/x", Some(b"corr"));
        assert_eq!(
            request_id(&r, &m, Some(&v)).as_deref(),
            Some("from-payload")
        );
        let n = json!({"meta": {"id": 17}});
        assert_eq!(request_id(&r, &m, Some(&n)).as_deref(), Some("17"));
        assert_eq!(
            request_id(&r, &m, Some(&json!({}))).as_deref(),
            Some("corr")
        );
        let binary = incoming("/a/x", Some(b"\x00\xff"));
        assert_eq!(request_id(&r, &binary, None).as_deref(), Some("00ff"));
        assert_eq!(
            request_id(&r, &incoming("/a/x", None), Some(&json!({}))),
            None
        );
        let r = rule(true);
        assert_eq!(
            request_id(&r, &incoming("/a/1520848234", Some(b"c")), Some(&v)).as_deref(),
            Some("1520848234")
        );
    }

    #[test]
    fn a_reply_names_its_request() {
        assert_eq!(
            reply_body("7", NO_SERVER, Value::Null, "no server"),
            json!({"id": "7", "code": 404, "data": null, "message": "no server"})
        );
    }
}
