//! ROS-native ways to ask for a detection, beside the request topic: the
//! `edge_agent_msgs/srv/DetectObjects` service (the answer comes in the reply) and the
//! `edge_agent_msgs/action/DetectObjects` action (feedback per stage, cancellation, the
//! answer as the result). Both hand the request to the detection service, which serves
//! it like a request from the topic: same queue, deadlines, cloud and local model.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::machine::Request;
use crate::ros::action::{self, Status};
use crate::ros::codec::{decode_to_value, encode_value, DecodeOptions, EncodeOptions};
use crate::ros::registry::TypeName;
use crate::ros::transport::Transport;
use crate::ros::Registry;

pub const SERVICE_TYPE: &str = "edge_agent_msgs/srv/DetectObjects";
pub const ACTION_TYPE: &str = "edge_agent_msgs/action/DetectObjects";

/// What a caller hears while its request is served: the stage ("queued", "camera",
/// "cloud", "local"), milliseconds since it was accepted, and goals ahead while queued.
pub type Feedback = Box<dyn Fn(&str, f64, u32) + Send + Sync>;

/// A request from the service or the action.
pub struct Call {
    /// `request_id` may be empty: the detection service then chooses one.
    pub req: Request,
    /// The answer: the fields of DetectObjects' response (and the action's result).
    pub reply: oneshot::Sender<Value>,
    pub feedback: Option<Feedback>,
}

/// What the service and the action send the detection service.
pub enum Entry {
    Call(Call),
    /// The caller cancelled this request.
    Cancel(String),
}

/// The answer when none could be given.
pub fn failure(request_id: &str, message: &str) -> Value {
    json!({"success": false, "message": message, "request_id": request_id})
}

/// The request in a DetectObjects request or goal; `id` when it names none.
fn request_of(v: &Value, id: impl FnOnce() -> String) -> Request {
    let given = v["request_id"].as_str().unwrap_or_default();
    Request {
        id: if given.is_empty() {
            id()
        } else {
            given.to_owned()
        },
        scene: v["scene"].as_str().unwrap_or_default().to_owned(),
        deadline_ms: v["deadline_ms"].as_u64().unwrap_or(0),
        depth: v["depth_positioning"].as_bool().unwrap_or(false),
    }
}

/// Serves the DetectObjects service and action under the names given (either may be
/// absent); their requests go to `tx`.
pub fn start(
    transport: &Arc<dyn Transport>,
    registry: &Registry,
    service: Option<&str>,
    action_name: Option<&str>,
    tx: mpsc::Sender<Entry>,
) -> anyhow::Result<()> {
    if let Some(name) = service {
        serve_service(transport, registry, name, tx.clone())?;
        tracing::info!(service = %name, "Detection service call ready ({SERVICE_TYPE}).");
    }
    if let Some(name) = action_name {
        let goals = action::serve(transport, registry, name, ACTION_TYPE, 16)?;
        tokio::spawn(run_goals(goals, tx));
        tracing::info!(action = %name, "Detection action ready ({ACTION_TYPE}).");
    }
    Ok(())
}

fn serve_service(
    transport: &Arc<dyn Transport>,
    registry: &Registry,
    name: &str,
    tx: mpsc::Sender<Entry>,
) -> anyhow::Result<()> {
    let rq = registry.schema(&format!("{SERVICE_TYPE}_Request"))?;
    let rp = registry.schema(&format!("{SERVICE_TYPE}_Response"))?;
    let handler: crate::ros::transport::ServeFn = Arc::new(move |cdr: Bytes| {
        let (rq, rp, tx) = (rq.clone(), rp.clone(), tx.clone());
        Box::pin(async move {
            let v = decode_to_value(&rq, &cdr, &DecodeOptions::default())
                .map_err(|e| format!("a DetectObjects request could not be decoded: {e}"))?;
            let req = request_of(&v, || {
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("call-{}-{n}", crate::clock::now_ms())
            });
            let id = req.id.clone();
            let (reply, answer) = oneshot::channel();
            let call = Call {
                req,
                reply,
                feedback: None,
            };
            let answer = match tx.send(Entry::Call(call)).await {
                Ok(()) => answer
                    .await
                    .unwrap_or_else(|_| failure(&id, "the detection service stopped")),
                Err(_) => failure(&id, "the detection service stopped"),
            };
            encode_value(&rp, &answer, &EncodeOptions::default())
                .map(Bytes::from)
                .map_err(|e| format!("a DetectObjects reply could not be encoded: {e}"))
        })
    });
    let ty = TypeName::parse(SERVICE_TYPE)?;
    transport.serve(name, &ty, handler)?;
    Ok(())
}

/// Calls made, for the ids of calls that name none.
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Carries each accepted goal to the detection service and back.
async fn run_goals(mut goals: mpsc::Receiver<action::Goal>, tx: mpsc::Sender<Entry>) {
    while let Some(goal) = goals.recv().await {
        tokio::spawn(run_goal(goal, tx.clone()));
    }
}

async fn run_goal(mut goal: action::Goal, tx: mpsc::Sender<Entry>) {
    // A goal that names no request id is known by its goal id.
    let req = request_of(&goal.goal, || goal.id_hex());
    let id = req.id.clone();
    let (reply, mut answer) = oneshot::channel();
    let fb = goal.feedback_sender();
    let call = Call {
        req,
        reply,
        feedback: Some(Box::new(move |stage, elapsed_ms, queue_position| {
            fb.send(
                json!({"stage": stage, "elapsed_ms": elapsed_ms, "queue_position": queue_position}),
            );
        })),
    };
    if tx.send(Entry::Call(call)).await.is_err() {
        goal.finish(
            Status::Aborted,
            failure(&id, "the detection service stopped"),
        );
        return;
    }
    goal.executing();
    let mut cancelled = false;
    let result = loop {
        tokio::select! {
            a = &mut answer => break a.unwrap_or_else(|_| failure(&id, "the detection service stopped")),
            _ = goal.cancel_requested(), if !cancelled => {
                cancelled = true;
                let _ = tx.send(Entry::Cancel(id.clone())).await;
            }
        }
    };
    let status = if result["success"] == json!(true) {
        Status::Succeeded
    } else if cancelled {
        Status::Canceled
    } else {
        Status::Aborted
    };
    goal.finish(status, result);
}
