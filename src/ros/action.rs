//! A ROS 2 action server for an action type named at run time, made of what any
//! transport offers: three services (`send_goal`, `cancel_goal`, `get_result` under
//! `<action>/_action/`) and two topics (`feedback`, and `status`: every goal the server
//! knows with its state, transient local). `ros2 action send_goal` and rclcpp/rclpy
//! action clients use it as they use any action server.
//!
//! The server accepts every goal it can read and hands it on as a [`Goal`]; whoever
//! takes it sends feedback, learns of a cancel, and ends it. Results are kept for
//! [`RESULT_KEPT`] after a goal ends (ROS 2's default `result_timeout`), for clients that
//! ask late.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::codec::{decode_to_value, encode_value, DecodeOptions, EncodeOptions};
use super::registry::{Registry, TypeName};
use super::schema::MsgSchema;
use super::transport::{Durability, Qos, RawPublisher, Reliability, Transport, TransportError};

/// How long a finished goal's result can still be asked for.
pub const RESULT_KEPT: Duration = Duration::from_secs(900);
/// At most this many finished goals are kept; the oldest go first.
pub const FINISHED_KEPT: usize = 256;
/// Feedback sent this soon after a goal's acceptance while no reader of the feedback
/// topic is matched waits for one (in order), then goes out anyway. A client's feedback
/// reader is made before its goal is sent, but the server's side of that match can come
/// after the goal; feedback published before it is lost to that client. A result asked
/// for meanwhile waits for the feedback: clients drop a goal's feedback after its result.
pub const FEEDBACK_HOLD: Duration = Duration::from_secs(2);
/// How long a result waits for its goal's feedback to be acknowledged by the readers.
const FEEDBACK_ACK: Duration = Duration::from_millis(500);

/// action_msgs/msg/GoalStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum Status {
    Unknown = 0,
    Accepted = 1,
    Executing = 2,
    Canceling = 3,
    Succeeded = 4,
    Canceled = 5,
    Aborted = 6,
}

impl Status {
    fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Canceled | Status::Aborted)
    }
}

/// action_msgs/srv/CancelGoal's return codes.
const CANCEL_OK: i8 = 0;
const CANCEL_UNKNOWN_GOAL: i8 = 2;
const CANCEL_TERMINATED: i8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("the action type {0} is not usable: {1}")]
    Type(String, String),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What the server encodes itself; each service's halves go with its handler.
struct Schemas {
    feedback: Arc<MsgSchema>,
    status: Arc<MsgSchema>,
}

struct Known {
    /// `goal_info` as JSON: the goal id and when it was accepted.
    info: Value,
    accepted: Instant,
    status: Status,
    /// Set when the goal ends.
    result: Option<Value>,
    ended: Option<Instant>,
    cancel: watch::Sender<bool>,
    done: watch::Sender<bool>,
}

struct Inner {
    name: String,
    schemas: Schemas,
    goals: Mutex<HashMap<String, Known>>,
    feedback: Arc<dyn RawPublisher>,
    status: Arc<dyn RawPublisher>,
    /// Feedback waiting for a reader (see [`FEEDBACK_HOLD`]).
    held: Mutex<Held>,
    hold: Duration,
    /// Notified when the held feedback has gone out.
    flushed: tokio::sync::Notify,
}

/// Feedback messages waiting for a matched reader, oldest first, each with the time it
/// goes out regardless; `flushing`: a task is sending them.
#[derive(Default)]
struct Held {
    queue: VecDeque<(Instant, Bytes)>,
    flushing: bool,
}

/// One accepted goal, for whoever carries it out. Dropped without [`Goal::finish`], it
/// ends as aborted.
pub struct Goal {
    inner: Arc<Inner>,
    key: String,
    id: Value,
    /// The goal message, as JSON.
    pub goal: Value,
    cancel: watch::Receiver<bool>,
    finished: bool,
}

impl Goal {
    /// Publishes one feedback message (the action's `_Feedback` type, as JSON).
    pub fn feedback(&self, feedback: Value) {
        self.feedback_sender().send(feedback);
    }

    /// A handle that publishes this goal's feedback, for whoever reports progress.
    pub fn feedback_sender(&self) -> FeedbackSender {
        let accepted = self
            .inner
            .goals
            .lock()
            .ok()
            .and_then(|g| g.get(&self.key).map(|k| k.accepted))
            .unwrap_or_else(Instant::now);
        FeedbackSender {
            inner: self.inner.clone(),
            id: self.id.clone(),
            accepted,
        }
    }

    /// The goal id in hex (32 digits), as `ros2 action` shows it without dashes.
    pub fn id_hex(&self) -> String {
        use base64::Engine as _;
        let bytes = self.id["uuid"]
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .unwrap_or_default();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Marks the goal as being carried out.
    pub fn executing(&self) {
        self.inner.set_status(&self.key, Status::Executing, None);
    }

    /// Resolves when a client asks to cancel the goal.
    pub async fn cancel_requested(&mut self) {
        let _ = self.cancel.wait_for(|c| *c).await;
    }

    /// Whether a client has asked to cancel the goal.
    pub fn is_cancel_requested(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Ends the goal: `status` is succeeded, canceled or aborted; `result` is the
    /// action's `_Result` type as JSON.
    pub fn finish(mut self, status: Status, result: Value) {
        self.finished = true;
        self.inner.set_status(&self.key, status, Some(result));
    }
}

impl Drop for Goal {
    fn drop(&mut self) {
        if !self.finished {
            self.inner
                .set_status(&self.key, Status::Aborted, Some(json!({})));
        }
    }
}

/// Publishes the feedback of one goal.
pub struct FeedbackSender {
    inner: Arc<Inner>,
    id: Value,
    accepted: Instant,
}

impl FeedbackSender {
    /// Publishes one feedback message (the action's `_Feedback` type, as JSON). Soon
    /// after the goal's acceptance, with no reader matched yet, it waits for one (see
    /// [`FEEDBACK_HOLD`]); feedback always goes out in the order it was sent.
    pub fn send(&self, feedback: Value) {
        let msg = json!({"goal_id": self.id, "feedback": feedback});
        let cdr = match encode_value(
            &self.inner.schemas.feedback,
            &msg,
            &EncodeOptions::default(),
        ) {
            Ok(cdr) => Bytes::from(cdr),
            Err(e) => {
                tracing::error!(action = %self.inner.name, error = %e, "Action feedback cannot be encoded.");
                return;
            }
        };
        let until = self.accepted + self.inner.hold;
        {
            let mut held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
            let wait = !held.queue.is_empty()
                || (Instant::now() < until && self.inner.feedback.subscription_count() == 0);
            if wait {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    held.queue.push_back((until, cdr));
                    if !held.flushing {
                        held.flushing = true;
                        rt.spawn(flush_held(self.inner.clone()));
                    }
                    return;
                }
            }
        }
        self.inner.publish_feedback(&cdr);
    }
}

/// Sends held feedback once a reader is matched, or when its time is up.
async fn flush_held(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut held = inner.held.lock().unwrap_or_else(|p| p.into_inner());
        let matched = inner.feedback.subscription_count() > 0;
        while let Some((until, _)) = held.queue.front() {
            if !matched && Instant::now() < *until {
                break;
            }
            if let Some((_, cdr)) = held.queue.pop_front() {
                if !matched {
                    tracing::debug!(action = %inner.name, "Action feedback sent with no reader matched.");
                }
                inner.publish_feedback(&cdr);
            }
        }
        if held.queue.is_empty() {
            held.flushing = false;
            inner.flushed.notify_waiters();
            return;
        }
    }
}

/// The key of a goal id (its JSON form: the 16 bytes as base64).
fn key_of(goal_id: &Value) -> String {
    goal_id["uuid"].to_string()
}

fn is_zero_uuid(goal_id: &Value) -> bool {
    use base64::Engine as _;
    match goal_id["uuid"].as_str() {
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .is_ok_and(|b| b.iter().all(|x| *x == 0)),
        None => goal_id["uuid"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.as_u64() == Some(0))),
    }
}

fn stamp_ns(stamp: &Value) -> i128 {
    i128::from(stamp["sec"].as_i64().unwrap_or(0)) * 1_000_000_000
        + i128::from(stamp["nanosec"].as_u64().unwrap_or(0))
}

impl Inner {
    fn publish_feedback(&self, cdr: &Bytes) {
        if let Err(e) = self.feedback.publish(cdr) {
            tracing::debug!(action = %self.name, error = %e, "Action feedback not published.");
        }
    }

    fn set_status(&self, key: &str, status: Status, result: Option<Value>) {
        let Ok(mut goals) = self.goals.lock() else {
            return;
        };
        let Some(g) = goals.get_mut(key) else {
            return;
        };
        if g.status.is_terminal() {
            return;
        }
        g.status = status;
        if status.is_terminal() {
            g.result = Some(result.unwrap_or_else(|| json!({})));
            g.ended = Some(Instant::now());
            g.done.send_replace(true);
        }
        Self::expire(&mut goals);
        self.publish_status(&goals);
    }

    /// Forgets finished goals past [`RESULT_KEPT`], and the oldest beyond
    /// [`FINISHED_KEPT`].
    fn expire(goals: &mut HashMap<String, Known>) {
        goals.retain(|_, g| g.ended.is_none_or(|t| t.elapsed() < RESULT_KEPT));
        let mut ended: Vec<(Instant, String)> = goals
            .iter()
            .filter_map(|(k, g)| g.ended.map(|t| (t, k.clone())))
            .collect();
        if ended.len() > FINISHED_KEPT {
            ended.sort();
            for (_, k) in &ended[..ended.len() - FINISHED_KEPT] {
                goals.remove(k);
            }
        }
    }

    fn publish_status(&self, goals: &HashMap<String, Known>) {
        let mut list: Vec<&Known> = goals.values().collect();
        list.sort_by_key(|g| g.accepted);
        let v = json!({"status_list": list.iter().map(|g| json!({"goal_info": g.info, "status": g.status as i8})).collect::<Vec<_>>()});
        match encode_value(&self.schemas.status, &v, &EncodeOptions::default()) {
            Ok(cdr) => {
                if let Err(e) = self.status.publish(&Bytes::from(cdr)) {
                    tracing::debug!(action = %self.name, error = %e, "Action status not published.");
                }
            }
            Err(e) => {
                tracing::error!(action = %self.name, error = %e, "Action status cannot be encoded.")
            }
        }
    }

    fn send_goal(self: &Arc<Self>, rq: &Value, goals_tx: &mpsc::Sender<Goal>) -> Value {
        let id = rq["goal_id"].clone();
        let key = key_of(&id);
        let stamp = crate::clock::ros_stamp_now();
        let Ok(mut goals) = self.goals.lock() else {
            return json!({"accepted": false, "stamp": stamp});
        };
        if goals.contains_key(&key) {
            tracing::debug!(action = %self.name, "A goal id already known was sent again; refused.");
            return json!({"accepted": false, "stamp": stamp});
        }
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let goal = Goal {
            inner: self.clone(),
            key: key.clone(),
            id: id.clone(),
            goal: rq["goal"].clone(),
            cancel: cancel_rx,
            finished: false,
        };
        // The goals lock is held: whoever takes the goal cannot report on it before
        // it is known.
        if let Err(e) = goals_tx.try_send(goal) {
            let mut goal = match e {
                mpsc::error::TrySendError::Full(g) | mpsc::error::TrySendError::Closed(g) => g,
            };
            goal.finished = true;
            tracing::warn!(action = %self.name, "An action goal was refused: too many goals are waiting.");
            return json!({"accepted": false, "stamp": stamp});
        }
        goals.insert(
            key,
            Known {
                info: json!({"goal_id": id, "stamp": stamp}),
                accepted: Instant::now(),
                status: Status::Accepted,
                result: None,
                ended: None,
                cancel: cancel_tx,
                done: watch::channel(false).0,
            },
        );
        Self::expire(&mut goals);
        self.publish_status(&goals);
        json!({"accepted": true, "stamp": stamp})
    }

    fn cancel(&self, rq: &Value) -> Value {
        let info = &rq["goal_info"];
        let (all, before) = (is_zero_uuid(&info["goal_id"]), stamp_ns(&info["stamp"]));
        let key = key_of(&info["goal_id"]);
        let Ok(mut goals) = self.goals.lock() else {
            return json!({"return_code": 1, "goals_canceling": []});
        };
        let mut canceling = Vec::new();
        let mut terminated = false;
        for (k, g) in goals.iter_mut() {
            let chosen = (all && before == 0)
                || (!all && *k == key)
                || (before != 0 && stamp_ns(&g.info["stamp"]) <= before);
            if !chosen {
                continue;
            }
            if g.status.is_terminal() {
                terminated = true;
                continue;
            }
            g.status = Status::Canceling;
            g.cancel.send_replace(true);
            canceling.push(g.info.clone());
        }
        let code = if !canceling.is_empty() {
            CANCEL_OK
        } else if !all && !goals.contains_key(&key) {
            CANCEL_UNKNOWN_GOAL
        } else if terminated {
            CANCEL_TERMINATED
        } else {
            CANCEL_OK
        };
        if !canceling.is_empty() {
            self.publish_status(&goals);
        }
        json!({"return_code": code, "goals_canceling": canceling})
    }

    async fn result(&self, rq: &Value) -> Value {
        let key = key_of(&rq["goal_id"]);
        let mut done = {
            let Ok(goals) = self.goals.lock() else {
                return json!({"status": Status::Unknown as i8});
            };
            match goals.get(&key) {
                Some(g) => g.done.subscribe(),
                None => return json!({"status": Status::Unknown as i8}),
            }
        };
        let _ = done.wait_for(|d| *d).await;
        // Held feedback goes first: a client forgets a goal's feedback once it has
        // the result.
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .queue
                .is_empty()
            {
                break;
            }
            flushed.await;
        }
        // ...and has reached its readers: the result comes on another topic, which
        // could overtake it.
        let feedback = self.feedback.clone();
        let acked = tokio::task::spawn_blocking(move || feedback.wait_acknowledged(FEEDBACK_ACK))
            .await
            .unwrap_or(false);
        if !acked {
            tracing::debug!(action = %self.name, "A goal's feedback was not acknowledged before its result.");
        }
        let Ok(goals) = self.goals.lock() else {
            return json!({"status": Status::Unknown as i8});
        };
        match goals.get(&key) {
            Some(g) => {
                json!({"status": g.status as i8, "result": g.result.clone().unwrap_or_default()})
            }
            None => json!({"status": Status::Unknown as i8}),
        }
    }
}

/// Serves action `name` of type `action` (`pkg/action/Name`); accepted goals come on the
/// returned channel, which holds `queue` goals (more are refused).
pub fn serve(
    transport: &Arc<dyn Transport>,
    registry: &Registry,
    name: &str,
    action: &str,
    queue: usize,
) -> Result<mpsc::Receiver<Goal>, ActionError> {
    let bad = |e: &dyn std::fmt::Display| ActionError::Type(action.into(), e.to_string());
    let action_type = TypeName::parse(action).map_err(|e| bad(&e))?;
    // One of the types ROS 2 makes of the action, e.g. `X_SendGoal`.
    let own = |part: &str| TypeName {
        package: action_type.package.clone(),
        kind: "action",
        name: format!("{}_{part}", action_type.name),
    };
    let parse = |n: &str| TypeName::parse(n).map_err(|e| bad(&e));
    // `suffix`: "" for a message, "_Request" or "_Response" for a service's halves.
    let schema = |t: &TypeName, suffix: &str| {
        registry
            .schema(&format!("{t}{suffix}"))
            .map_err(|e| bad(&e))
    };
    let fb_type = own("FeedbackMessage");
    let status_type = parse("action_msgs/msg/GoalStatusArray")?;
    let schemas = Schemas {
        feedback: schema(&fb_type, "")?,
        status: schema(&status_type, "")?,
    };
    let base = format!("{}/_action", name.trim_end_matches('/'));
    let feedback_pub = transport.publisher(
        &format!("{base}/feedback"),
        &fb_type,
        schemas.feedback.clone(),
        Qos::ros_default(),
    )?;
    let status_pub = transport.publisher(
        &format!("{base}/status"),
        &status_type,
        schemas.status.clone(),
        Qos {
            reliability: Reliability::Reliable,
            durability: Durability::TransientLocal,
            depth: 1,
        },
    )?;
    let inner = Arc::new(Inner {
        name: name.to_owned(),
        schemas,
        goals: Mutex::default(),
        feedback: feedback_pub,
        status: status_pub,
        held: Mutex::default(),
        hold: FEEDBACK_HOLD,
        flushed: tokio::sync::Notify::new(),
    });
    // An empty status to start with: a client that has it knows this server's
    // writers have matched its readers (feedback sent before that is not delivered).
    inner.publish_status(&HashMap::new());
    let (tx, rx) = mpsc::channel(queue.max(1));

    // Each service: decode the request, answer as JSON, encode the reply.
    type Answer =
        Box<dyn Fn(Arc<Inner>, Value) -> futures::future::BoxFuture<'static, Value> + Send + Sync>;
    let services: [(&str, TypeName, Answer); 3] = [
        ("send_goal", own("SendGoal"), {
            let tx = tx.clone();
            Box::new(move |inner, rq| {
                let v = inner.send_goal(&rq, &tx);
                Box::pin(async move { v })
            })
        }),
        (
            "cancel_goal",
            parse("action_msgs/srv/CancelGoal")?,
            Box::new(|inner, rq| {
                let v = inner.cancel(&rq);
                Box::pin(async move { v })
            }),
        ),
        (
            "get_result",
            own("GetResult"),
            Box::new(|inner, rq| Box::pin(async move { inner.result(&rq).await })),
        ),
    ];
    for (what, ty, answer) in services {
        let (rq_s, rp_s) = (schema(&ty, "_Request")?, schema(&ty, "_Response")?);
        let answer = Arc::new(answer);
        let inner2 = inner.clone();
        let handler: super::transport::ServeFn = Arc::new(move |cdr: Bytes| {
            let (inner, answer) = (inner2.clone(), answer.clone());
            let (rq_s, rp_s) = (rq_s.clone(), rp_s.clone());
            Box::pin(async move {
                let rq = decode_to_value(&rq_s, &cdr, &DecodeOptions::default())
                    .map_err(|e| format!("{what} request: {e}"))?;
                let rp = answer(inner, rq).await;
                encode_value(&rp_s, &rp, &EncodeOptions::default())
                    .map(Bytes::from)
                    .map_err(|e| format!("{what} reply: {e}"))
            })
        });
        transport.serve(&format!("{base}/{what}"), &ty, handler)?;
    }
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publisher that keeps what it is given, with as many matched readers as said.
    #[derive(Default)]
    struct Kept(Mutex<Vec<Bytes>>, std::sync::atomic::AtomicUsize);

    impl Kept {
        fn readers(n: usize) -> Arc<Self> {
            Arc::new(Self(Mutex::default(), n.into()))
        }
    }

    impl RawPublisher for Kept {
        fn publish(&self, cdr: &Bytes) -> Result<(), TransportError> {
            self.0.lock().unwrap().push(cdr.clone());
            Ok(())
        }
        fn subscription_count(&self) -> usize {
            self.1.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn server() -> (Arc<Inner>, Arc<Kept>, Arc<Kept>) {
        server_with(Kept::readers(1), Duration::from_secs(2))
    }

    fn server_with(feedback: Arc<Kept>, hold: Duration) -> (Arc<Inner>, Arc<Kept>, Arc<Kept>) {
        let mut reg = Registry::default();
        reg.add_bundled();
        let s = |n: &str| reg.schema(n).unwrap();
        let a = "edge_agent_msgs/action/DetectObjects";
        let status = Kept::readers(1);
        let inner = Arc::new(Inner {
            name: "/detect".into(),
            schemas: Schemas {
                feedback: s(&format!("{a}_FeedbackMessage")),
                status: s("action_msgs/msg/GoalStatusArray"),
            },
            goals: Mutex::default(),
            feedback: feedback.clone(),
            status: status.clone(),
            held: Mutex::default(),
            hold,
            flushed: tokio::sync::Notify::new(),
        });
        (inner, feedback, status)
    }

    fn uuid(n: u8) -> Value {
        use base64::Engine as _;
        let mut b = [0u8; 16];
        b[15] = n;
        json!({"uuid": base64::engine::general_purpose::STANDARD.encode(b)})
    }

    fn cancel_one(inner: &Inner, n: u8) -> Value {
        inner.cancel(&json!({"goal_info": {"goal_id": uuid(n), "stamp": {"sec": 0, "nanosec": 0}}}))
    }

    /// Waits (10 s at most) until `kept` holds `n` messages.
    async fn kept(kept: &Kept, n: usize) -> Vec<Bytes> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = kept.0.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn early_feedback_waits_for_a_reader_and_keeps_its_order() {
        let feedback = Kept::readers(0);
        let (inner, feedback, _) = server_with(feedback, Duration::from_secs(60));
        let (tx, mut rx) = mpsc::channel(4);
        inner.send_goal(&json!({"goal_id": uuid(1), "goal": {}}), &tx);
        let mut goal = rx.recv().await.unwrap();
        goal.feedback(json!({"stage": "camera"}));
        goal.feedback(json!({"stage": "local"}));
        let fb = goal.feedback_sender();
        // The goal ends; its result waits for its feedback.
        goal.finished = true;
        inner.set_status(&goal.key, Status::Succeeded, Some(json!({"success": true})));
        let result = {
            let inner = inner.clone();
            tokio::spawn(async move { inner.result(&json!({"goal_id": uuid(1)})).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(feedback.0.lock().unwrap().is_empty(), "sent with no reader");
        assert!(!result.is_finished(), "the result went before its feedback");
        // A reader is matched: both go out, in order, and then the result.
        feedback.1.store(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(result.await.unwrap()["status"], Status::Succeeded as i8);
        let got = kept(&feedback, 2).await;
        let stage = |b: &Bytes| {
            let s = inner.schemas.feedback.clone();
            decode_to_value(&s, b, &DecodeOptions::default()).unwrap()["feedback"]["stage"].clone()
        };
        assert_eq!(
            got.iter().map(stage).collect::<Vec<_>>(),
            ["camera", "local"]
        );
        // Later feedback goes out at once.
        fb.send(json!({"stage": "done"}));
        assert_eq!(feedback.0.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn early_feedback_goes_out_when_its_time_is_up() {
        let (inner, feedback, _) = server_with(Kept::readers(0), Duration::from_millis(100));
        let (tx, mut rx) = mpsc::channel(4);
        inner.send_goal(&json!({"goal_id": uuid(1), "goal": {}}), &tx);
        let goal = rx.recv().await.unwrap();
        goal.feedback(json!({"stage": "camera"}));
        assert_eq!(kept(&feedback, 1).await.len(), 1);
        // Past its hold, with still no reader: at once.
        goal.feedback(json!({"stage": "local"}));
        assert_eq!(feedback.0.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn goals_are_accepted_once_cancelled_and_their_results_kept() {
        let (inner, feedback, status) = server();
        let (tx, mut rx) = mpsc::channel(4);
        let rp = inner.send_goal(&json!({"goal_id": uuid(1), "goal": {"scene": "day"}}), &tx);
        assert_eq!(rp["accepted"], true);
        // The same goal id again is refused.
        let again = inner.send_goal(&json!({"goal_id": uuid(1), "goal": {}}), &tx);
        assert_eq!(again["accepted"], false);
        let mut goal = rx.recv().await.unwrap();
        assert_eq!(goal.goal["scene"], "day");
        assert_eq!(goal.id_hex(), format!("{}01", "0".repeat(30)));
        goal.executing();
        goal.feedback(json!({"stage": "camera"}));
        assert_eq!(feedback.0.lock().unwrap().len(), 1);

        // Unknown goals: UNKNOWN_GOAL_ID, and a result of status UNKNOWN at once.
        assert_eq!(cancel_one(&inner, 9)["return_code"], CANCEL_UNKNOWN_GOAL);
        let unknown = inner.result(&json!({"goal_id": uuid(9)})).await;
        assert_eq!(unknown["status"], Status::Unknown as i8);

        // A result asked for while the goal runs comes when it ends.
        let waiting = {
            let inner = inner.clone();
            tokio::spawn(async move { inner.result(&json!({"goal_id": uuid(1)})).await })
        };
        let c = cancel_one(&inner, 1);
        assert_eq!(c["return_code"], CANCEL_OK);
        assert_eq!(c["goals_canceling"].as_array().unwrap().len(), 1);
        assert!(goal.is_cancel_requested());
        goal.cancel_requested().await;
        assert!(!waiting.is_finished());
        goal.finish(
            Status::Canceled,
            json!({"success": false, "message": "cancelled"}),
        );
        let r = waiting.await.unwrap();
        assert_eq!(r["status"], Status::Canceled as i8);
        assert_eq!(r["result"]["message"], "cancelled");
        // Ended: a second cancel says so; the result is still there.
        assert_eq!(cancel_one(&inner, 1)["return_code"], CANCEL_TERMINATED);
        let r = inner.result(&json!({"goal_id": uuid(1)})).await;
        assert_eq!(r["status"], Status::Canceled as i8);
        // Every change was published on the status topic, each encodable.
        assert!(status.0.lock().unwrap().len() >= 4);
    }

    #[tokio::test]
    async fn a_goal_dropped_unfinished_ends_aborted_and_a_zero_id_cancels_all() {
        let (inner, _, _) = server();
        let (tx, mut rx) = mpsc::channel(4);
        for n in [1, 2] {
            inner.send_goal(&json!({"goal_id": uuid(n), "goal": {}}), &tx);
        }
        let (g1, g2) = (rx.recv().await.unwrap(), rx.recv().await.unwrap());
        drop(g1);
        let r = inner.result(&json!({"goal_id": uuid(1)})).await;
        assert_eq!(r["status"], Status::Aborted as i8);
        let c = cancel_one(&inner, 0);
        assert_eq!(c["return_code"], CANCEL_OK);
        assert_eq!(c["goals_canceling"].as_array().unwrap().len(), 1);
        assert!(g2.is_cancel_requested());
    }

    #[test]
    fn a_goal_beyond_the_queue_is_refused() {
        let (inner, _, _) = server();
        let (tx, _rx) = mpsc::channel(1);
        assert_eq!(
            inner.send_goal(&json!({"goal_id": uuid(1), "goal": {}}), &tx)["accepted"],
            true
        );
        assert_eq!(
            inner.send_goal(&json!({"goal_id": uuid(2), "goal": {}}), &tx)["accepted"],
            false
        );
        // The refused goal is not remembered as running.
        assert_eq!(cancel_one(&inner, 2)["return_code"], CANCEL_UNKNOWN_GOAL);
    }

    #[test]
    fn a_zero_goal_id_means_every_goal() {
        assert!(is_zero_uuid(&json!({"uuid": "AAAAAAAAAAAAAAAAAAAAAA=="})));
        assert!(!is_zero_uuid(&json!({"uuid": "AQAAAAAAAAAAAAAAAAAAAA=="})));
        assert!(is_zero_uuid(&json!({"uuid": [0, 0, 0]})));
    }

    #[test]
    fn finished_goals_beyond_the_limit_are_forgotten_oldest_first() {
        let mut goals = HashMap::new();
        let t0 = Instant::now();
        for i in 0..FINISHED_KEPT + 3 {
            goals.insert(
                format!("g{i}"),
                Known {
                    info: json!({}),
                    accepted: t0,
                    status: Status::Succeeded,
                    result: Some(json!({})),
                    ended: Some(t0 + Duration::from_millis(i as u64)),
                    cancel: watch::channel(false).0,
                    done: watch::channel(true).0,
                },
            );
        }
        goals.insert(
            "running".into(),
            Known {
                info: json!({}),
                accepted: t0,
                status: Status::Executing,
                result: None,
                ended: None,
                cancel: watch::channel(false).0,
                done: watch::channel(false).0,
            },
        );
        Inner::expire(&mut goals);
        assert_eq!(goals.len(), FINISHED_KEPT + 1);
        assert!(goals.contains_key("running"));
        assert!(!goals.contains_key("g0") && !goals.contains_key("g2"));
        assert!(goals.contains_key("g3"));
    }
}
