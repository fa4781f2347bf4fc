//! The Request_object_detection state machine. No I/O and no clock inside: the service
//! feeds it inputs with the current time (ms on a monotonic clock) and carries out the
//! actions it returns.
//!
//! One request is served at a time:
//! `idle -> accepted -> sensor_activating -> frame_captured -> cloud_pending ->
//! answered -> published -> idle`. Requests arriving while one is served wait in a
//! FIFO queue of `max_queued`; beyond that they are rejected at once with an error
//! status, and a request whose id is in service, queued, or among the last 64 served is
//! ignored (DDS may deliver a sample twice). Each request
//! has a deadline (its own `deadline_ms`, else the configured default) counted from
//! when it was accepted; time spent queued counts.
//!
//! Where the answer comes from is the policy's choice:
//! - `cloud-first`: the cloud is asked; the local model starts when the deadline minus
//!   the expected local time is reached, when the cloud answers with an error or
//!   garbage, or at once when the circuit breaker is open.
//! - `local-only`, `cloud-only`: one source.
//! - `race`: both at once; the first valid answer wins.
//!
//! Once the local model runs, its answer is waited for up to `local_timeout_ms` past
//! the deadline (so with the cloud gone every answer arrives within the deadline plus
//! the local inference time); a cloud-only request with no answer by its deadline
//! ends in the error state.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Which source answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    CloudFirst,
    LocalOnly,
    CloudOnly,
    Race,
}

/// Where an answer came from (the numbers of edge_agent_msgs/DetectionStatus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cloud = 1,
    Local = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Idle,
    Accepted,
    SensorActivating,
    FrameCaptured,
    CloudPending,
    Answered,
    Published,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Accepted => "accepted",
            State::SensorActivating => "sensor_activating",
            State::FrameCaptured => "frame_captured",
            State::CloudPending => "cloud_pending",
            State::Answered => "answered",
            State::Published => "published",
            State::Error => "error",
        }
    }
}

/// Timing rules, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub default_deadline_ms: u64,
    /// No frame this long after the sensor was asked for one: error.
    pub frame_timeout_ms: u64,
    /// The least time cloud-first leaves the local model before the deadline; it leaves
    /// more when the model's measured time needs it (see [`Machine::set_local_estimate`]).
    pub expected_local_ms: u64,
    /// How long past the deadline a running local inference is waited for.
    pub local_timeout_ms: u64,
    pub max_queued: usize,
}

impl Timing {
    /// A request's deadline in ms: its own, or the default when it gives 0.
    pub fn deadline_of(&self, req: &Request) -> u64 {
        if req.deadline_ms == 0 {
            self.default_deadline_ms
        } else {
            req.deadline_ms
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            default_deadline_ms: 1500,
            frame_timeout_ms: 2000,
            expected_local_ms: 300,
            local_timeout_ms: 2000,
            max_queued: 4,
        }
    }
}

/// The circuit breaker in front of the cloud: `threshold` failures in a row open it;
/// while open, one request every `probe_interval_ms` still goes to the cloud as a
/// probe (its answer only informs the breaker); a probe or any cloud answer in time
/// closes it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    pub threshold: u32,
    pub probe_interval_ms: u64,
    failures: u32,
    open_since: Option<u64>,
    last_probe: Option<u64>,
}

/// What the breaker allows for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    Cloud,
    Probe,
    No,
}

impl Breaker {
    pub fn new(threshold: u32, probe_interval_ms: u64) -> Self {
        Breaker {
            threshold: threshold.max(1),
            probe_interval_ms,
            failures: 0,
            open_since: None,
            last_probe: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_since.is_some()
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn allow(&mut self, now: u64) -> Allow {
        let Some(since) = self.open_since else {
            return Allow::Cloud;
        };
        let from = self.last_probe.unwrap_or(since);
        if now.saturating_sub(from) >= self.probe_interval_ms {
            self.last_probe = Some(now);
            Allow::Probe
        } else {
            Allow::No
        }
    }

    /// Returns true when this success closed an open breaker.
    pub fn success(&mut self) -> bool {
        self.failures = 0;
        self.last_probe = None;
        self.open_since.take().is_some()
    }

    /// Returns true when this failure opened the breaker.
    pub fn failure(&mut self, now: u64) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.open_since.is_none() && self.failures >= self.threshold {
            self.open_since = Some(now);
            self.last_probe = None;
            return true;
        }
        false
    }
}

/// A request as the machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: String,
    pub scene: String,
    /// 0: the default deadline.
    pub deadline_ms: u64,
    pub depth: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Request(Request),
    Cancel(String),
    /// The camera was switched on (or needs no switching).
    SensorReady,
    /// The camera could not be switched on.
    SensorFailed(String),
    /// A frame for the request in service, or why it could not be used.
    Frame(Result<(), String>),
    /// The cloud's answer for `id`: Ok, or what was wrong with it.
    Cloud {
        id: String,
        ok: Result<(), String>,
    },
    /// The local model's answer for `id`.
    Local {
        id: String,
        ok: Result<(), String>,
    },
    /// Time passed; deadlines are checked.
    Tick,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Switch the camera on and take the next frame for `id`.
    ActivateSensor { id: String },
    /// Switch the camera off (nothing is queued).
    DeactivateSensor,
    /// Send the captured frame to the cloud; `probe` when the breaker is open.
    AskCloud { id: String, probe: bool },
    /// Run the local model on the captured frame.
    RunLocal { id: String },
    /// Publish the answer from `source` and report it.
    Publish { id: String, source: Source },
    /// The request failed; tell the robot.
    Fail { id: String, error: String },
    /// A request was rejected without being served (queue full).
    Reject { id: String, error: String },
    /// The status changed.
    Status(Status),
    /// The breaker opened (true) or closed (false).
    Breaker { open: bool },
}

/// What edge_agent_msgs/DetectionStatus carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub request_flag: bool,
    pub request_id: String,
    pub state: State,
    pub last_source: Option<Source>,
    pub error: String,
}

#[derive(Debug, Clone)]
struct Active {
    req: Request,
    accepted_at: u64,
    deadline_at: u64,
    state: State,
    /// When the frame was asked for.
    frame_asked_at: Option<u64>,
    cloud: Leg,
    local: Leg,
    /// When cloud-first hands over to the local model.
    local_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    Unused,
    Running,
    Failed,
}

pub struct Machine {
    pub policy: Policy,
    pub timing: Timing,
    pub breaker: Breaker,
    current: Option<Active>,
    queue: VecDeque<(Request, u64)>,
    last_source: Option<Source>,
    last_id: String,
    last_error: String,
    state: State,
    sensor_on: bool,
    /// Ids of the last requests served, so a request delivered twice is served once.
    recent: VecDeque<String>,
    /// The breaker's probe in flight: request id and when it counts as failed. Its
    /// answer may come after the request was answered locally.
    probe: Option<(String, u64)>,
    /// What each scene's local model is measured to need, in ms ("" the default model).
    local_estimates: HashMap<String, u64>,
}

/// How many served request ids are remembered.
const RECENT: usize = 64;

impl Machine {
    pub fn new(policy: Policy, timing: Timing, breaker: Breaker) -> Self {
        Machine {
            policy,
            timing,
            breaker,
            current: None,
            queue: VecDeque::new(),
            last_source: None,
            last_id: String::new(),
            last_error: String::new(),
            state: State::Idle,
            sensor_on: false,
            recent: VecDeque::new(),
            probe: None,
            local_estimates: HashMap::new(),
        }
    }

    pub fn status(&self) -> Status {
        Status {
            request_flag: self.current.is_some(),
            request_id: self
                .current
                .as_ref()
                .map_or_else(|| self.last_id.clone(), |a| a.req.id.clone()),
            state: self.state,
            last_source: self.last_source,
            error: self.last_error.clone(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether a request with this id is in service, queued, or was served lately.
    pub fn knows(&self, id: &str) -> bool {
        self.current.as_ref().is_some_and(|a| a.req.id == id)
            || self.queue.iter().any(|(q, _)| q.id == id)
            || self.recent.iter().any(|r| r == id)
    }

    /// The request in service.
    pub fn current(&self) -> Option<&Request> {
        self.current.as_ref().map(|a| &a.req)
    }

    /// When `Tick` must next be fed, if anything is timed.
    pub fn next_deadline(&self) -> Option<u64> {
        let probe = self.probe.as_ref().map(|(_, t)| *t);
        let Some(a) = self.current.as_ref() else {
            return probe;
        };
        let mut t: Vec<u64> = probe.into_iter().collect();
        if let (State::SensorActivating, Some(at)) = (a.state, a.frame_asked_at) {
            t.push(at + self.timing.frame_timeout_ms);
        }
        if a.state == State::Accepted {
            t.push(a.deadline_at);
        }
        if a.local == Leg::Running {
            t.push(a.deadline_at + self.timing.local_timeout_ms);
        } else {
            t.push(a.deadline_at);
        }
        if let (Some(at), Leg::Unused) = (a.local_at, a.local) {
            t.push(at);
        }
        t.into_iter().min()
    }

    pub fn handle(&mut self, input: Input, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Request(req) => self.on_request(req, now, &mut out),
            Input::Cancel(id) => self.on_cancel(&id, now, &mut out),
            Input::SensorReady => {
                if let Some(a) = self.current.as_mut() {
                    if a.state == State::Accepted {
                        a.state = State::SensorActivating;
                        a.frame_asked_at = Some(now);
                        self.sensor_on = true;
                        self.set_state(State::SensorActivating, &mut out);
                    }
                }
            }
            Input::SensorFailed(e) => {
                if self.current.is_some() {
                    self.fail(
                        format!("camera could not be switched on: {e}"),
                        now,
                        &mut out,
                    );
                }
            }
            Input::Frame(r) => self.on_frame(r, now, &mut out),
            Input::Cloud { id, ok } => self.on_cloud(&id, ok, now, &mut out),
            Input::Local { id, ok } => self.on_local(&id, ok, now, &mut out),
            Input::Tick => self.on_tick(now, &mut out),
        }
        out
    }

    fn set_state(&mut self, s: State, out: &mut Vec<Action>) {
        self.state = s;
        if let Some(a) = self.current.as_mut() {
            a.state = s;
        }
        out.push(Action::Status(self.status()));
    }

    fn on_request(&mut self, req: Request, now: u64, out: &mut Vec<Action>) {
        if self.knows(&req.id) {
            return;
        }
        if self.current.is_none() {
            self.start(req, now, now, out);
        } else if self.queue.len() < self.timing.max_queued {
            self.queue.push_back((req, now));
        } else {
            out.push(Action::Reject {
                id: req.id,
                error: format!(
                    "busy: one request in service and {} queued",
                    self.queue.len()
                ),
            });
        }
    }

    fn start(&mut self, req: Request, accepted_at: u64, now: u64, out: &mut Vec<Action>) {
        let deadline = self.timing.deadline_of(&req);
        let id = req.id.clone();
        self.last_error.clear();
        self.current = Some(Active {
            req,
            accepted_at,
            deadline_at: accepted_at + deadline,
            state: State::Accepted,
            frame_asked_at: None,
            cloud: Leg::Unused,
            local: Leg::Unused,
            local_at: None,
        });
        self.set_state(State::Accepted, out);
        if self.sensor_on {
            // The camera is already on: wait for the next frame straight away.
            self.handle_into(Input::SensorReady, now, out);
        } else {
            out.push(Action::ActivateSensor { id });
        }
    }

    fn handle_into(&mut self, input: Input, now: u64, out: &mut Vec<Action>) {
        let more = self.handle(input, now);
        out.extend(more);
    }

    fn on_cancel(&mut self, id: &str, now: u64, out: &mut Vec<Action>) {
        if let Some(pos) = self.queue.iter().position(|(q, _)| q.id == id) {
            self.queue.remove(pos);
            out.push(Action::Reject {
                id: id.to_owned(),
                error: "cancelled".into(),
            });
            return;
        }
        if self.current.as_ref().is_some_and(|a| a.req.id == id) {
            self.fail("cancelled".into(), now, out);
        }
    }

    /// What the local model of `scene` is measured to need from hand-over to answer.
    pub fn set_local_estimate(&mut self, scene: &str, ms: u64) {
        self.local_estimates.insert(scene.to_owned(), ms);
    }

    /// How long before the deadline cloud-first hands a request of `scene` over to the
    /// local model: its measured time, and at least `expected_local_ms`.
    pub fn local_lead(&self, scene: &str) -> u64 {
        self.local_estimates
            .get(scene)
            .or_else(|| self.local_estimates.get(""))
            .copied()
            .unwrap_or(0)
            .max(self.timing.expected_local_ms)
    }

    fn on_frame(&mut self, r: Result<(), String>, now: u64, out: &mut Vec<Action>) {
        let Some(a) = self.current.as_ref() else {
            return;
        };
        if a.state != State::SensorActivating {
            return;
        }
        if let Err(e) = r {
            self.fail(format!("bad camera frame: {e}"), now, out);
            return;
        }
        let id = a.req.id.clone();
        let lead = self.local_lead(&a.req.scene);
        self.set_state(State::FrameCaptured, out);
        let local_only = || vec![Action::RunLocal { id: id.clone() }];
        let mut acts = Vec::new();
        let a = self.current.as_mut().expect("in service");
        match self.policy {
            Policy::LocalOnly => {
                a.local = Leg::Running;
                acts = local_only();
            }
            Policy::CloudOnly => match self.breaker.allow(now) {
                Allow::No => {
                    self.fail(
                        "the cloud detector is unavailable (circuit breaker open)".into(),
                        now,
                        out,
                    );
                    return;
                }
                allow => {
                    // Cloud-only: even a probe's answer is this request's answer.
                    a.cloud = Leg::Running;
                    acts.push(Action::AskCloud {
                        id: id.clone(),
                        probe: allow == Allow::Probe,
                    });
                }
            },
            Policy::CloudFirst | Policy::Race => {
                let allow = self.breaker.allow(now);
                match allow {
                    Allow::Cloud => {
                        a.cloud = Leg::Running;
                        acts.push(Action::AskCloud {
                            id: id.clone(),
                            probe: false,
                        });
                    }
                    Allow::Probe => {
                        self.probe = Some((id.clone(), a.deadline_at));
                        acts.push(Action::AskCloud {
                            id: id.clone(),
                            probe: true,
                        });
                    }
                    Allow::No => {}
                }
                let local_now = self.policy == Policy::Race || allow != Allow::Cloud;
                if local_now {
                    a.local = Leg::Running;
                    acts.extend(local_only());
                } else {
                    a.local_at = Some(a.deadline_at.saturating_sub(lead).max(now));
                }
            }
        }
        if a.cloud == Leg::Running {
            self.set_state(State::CloudPending, out);
        }
        out.extend(acts);
    }

    fn on_cloud(&mut self, id: &str, ok: Result<(), String>, now: u64, out: &mut Vec<Action>) {
        if self.probe.as_ref().is_some_and(|(p, _)| p == id) {
            self.probe = None;
            match ok {
                Ok(()) if self.breaker.success() => out.push(Action::Breaker { open: false }),
                Ok(()) => {}
                Err(_) => {
                    self.breaker.failure(now);
                }
            }
            return;
        }
        let Some(a) = self.current.as_mut() else {
            return;
        };
        if a.req.id != id || a.cloud != Leg::Running {
            return;
        }
        match ok {
            Ok(()) => {
                if self.breaker.success() {
                    out.push(Action::Breaker { open: false });
                }
                self.answer(Source::Cloud, now, out);
            }
            Err(e) => {
                a.cloud = Leg::Failed;
                self.last_error = format!("cloud: {e}");
                if self.breaker.failure(now) {
                    out.push(Action::Breaker { open: true });
                }
                self.cloud_gone(now, out);
            }
        }
    }

    /// The cloud will not answer this request: go local, or fail.
    fn cloud_gone(&mut self, now: u64, out: &mut Vec<Action>) {
        let a = self.current.as_mut().expect("in service");
        match (self.policy, a.local) {
            (Policy::CloudOnly, _) => {
                let e = std::mem::take(&mut self.last_error);
                self.fail(e, now, out);
            }
            (_, Leg::Unused) => {
                a.local = Leg::Running;
                out.push(Action::RunLocal {
                    id: a.req.id.clone(),
                });
            }
            (_, Leg::Running) => {}
            (_, Leg::Failed) => {
                let e = format!("local model failed and {}", self.last_error);
                self.fail(e, now, out);
            }
        }
    }

    fn on_local(&mut self, id: &str, ok: Result<(), String>, now: u64, out: &mut Vec<Action>) {
        let Some(a) = self.current.as_mut() else {
            return;
        };
        if a.req.id != id || a.local != Leg::Running {
            return;
        }
        match ok {
            Ok(()) => self.answer(Source::Local, now, out),
            Err(e) => {
                a.local = Leg::Failed;
                if a.cloud == Leg::Running {
                    self.last_error = format!("model failure: {e}");
                } else {
                    self.fail(format!("model failure: {e}"), now, out);
                }
            }
        }
    }

    fn on_tick(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.probe.as_ref().is_some_and(|(_, t)| now >= *t) {
            // The probe was not answered in time: the breaker stays open.
            self.probe = None;
            self.breaker.failure(now);
        }
        let Some(a) = self.current.as_mut() else {
            return;
        };
        if let (State::SensorActivating, Some(at)) = (a.state, a.frame_asked_at) {
            if now >= at + self.timing.frame_timeout_ms {
                let ms = self.timing.frame_timeout_ms;
                self.fail(format!("no camera frame within {ms} ms"), now, out);
                return;
            }
        }
        if a.local == Leg::Unused && a.local_at.is_some_and(|t| now >= t) {
            // Cloud-first hands over: the cloud did not answer in time.
            a.local_at = None;
            if a.cloud == Leg::Running {
                a.cloud = Leg::Failed;
                self.last_error = "cloud: no answer in time".into();
                if self.breaker.failure(now) {
                    out.push(Action::Breaker { open: true });
                }
            }
            self.cloud_gone(now, out);
            return;
        }
        let a = self.current.as_mut().expect("in service");
        let limit = if a.local == Leg::Running {
            a.deadline_at + self.timing.local_timeout_ms
        } else {
            a.deadline_at
        };
        if now >= limit {
            let waited = now.saturating_sub(a.accepted_at);
            let why = match (a.state, a.local) {
                (State::Accepted, _) => "the camera was not switched on",
                (_, Leg::Running) => "model failure: the local model did not finish",
                _ => "no answer",
            };
            if a.cloud == Leg::Running && self.breaker.failure(now) {
                out.push(Action::Breaker { open: true });
            }
            self.fail(format!("{why} within {waited} ms"), now, out);
        }
    }

    fn answer(&mut self, source: Source, now: u64, out: &mut Vec<Action>) {
        let id = self.current.as_ref().expect("in service").req.id.clone();
        self.last_source = Some(source);
        self.last_error.clear();
        self.set_state(State::Answered, out);
        out.push(Action::Publish {
            id: id.clone(),
            source,
        });
        self.set_state(State::Published, out);
        self.finish(now, out);
    }

    fn fail(&mut self, error: String, now: u64, out: &mut Vec<Action>) {
        let id = self.current.as_ref().expect("in service").req.id.clone();
        self.last_error = error.clone();
        self.set_state(State::Error, out);
        out.push(Action::Fail { id, error });
        self.finish(now, out);
    }

    /// The request is over: serve the next one, or go idle.
    fn finish(&mut self, now: u64, out: &mut Vec<Action>) {
        if let Some(a) = self.current.take() {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(a.req.id.clone());
            self.last_id = a.req.id;
        }
        // Queued requests whose deadline already passed are failed without being served.
        while let Some((req, at)) = self.queue.pop_front() {
            let deadline = self.timing.deadline_of(&req);
            if now >= at + deadline {
                out.push(Action::Reject {
                    id: req.id,
                    error: format!("deadline of {deadline} ms passed while queued"),
                });
                continue;
            }
            self.start(req, at, now, out);
            return;
        }
        self.state = State::Idle;
        out.push(Action::Status(self.status()));
        if self.sensor_on {
            self.sensor_on = false;
            out.push(Action::DeactivateSensor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, deadline_ms: u64) -> Request {
        Request {
            id: id.into(),
            scene: "day".into(),
            deadline_ms,
            depth: false,
        }
    }

    fn timing() -> Timing {
        Timing {
            default_deadline_ms: 1000,
            frame_timeout_ms: 500,
            expected_local_ms: 200,
            local_timeout_ms: 700,
            max_queued: 1,
        }
    }

    fn machine(policy: Policy) -> Machine {
        Machine::new(policy, timing(), Breaker::new(2, 5000))
    }

    fn states(acts: &[Action]) -> Vec<&'static str> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Status(s) => Some(s.state.as_str()),
                _ => None,
            })
            .collect()
    }

    fn others(acts: &[Action]) -> Vec<Action> {
        acts.iter()
            .filter(|a| !matches!(a, Action::Status(_)))
            .cloned()
            .collect()
    }

    fn ok() -> Result<(), String> {
        Ok(())
    }

    /// Request, camera on, frame: returns the actions of the frame step.
    fn to_frame(m: &mut Machine, id: &str, t: u64) -> Vec<Action> {
        let a = m.handle(Input::Request(req(id, 0)), t);
        assert_eq!(states(&a), ["accepted"]);
        assert_eq!(others(&a), [Action::ActivateSensor { id: id.into() }]);
        let a = m.handle(Input::SensorReady, t + 10);
        assert_eq!(states(&a), ["sensor_activating"]);
        m.handle(Input::Frame(ok()), t + 50)
    }

    fn cloud(id: &str, ok: Result<(), String>) -> Input {
        Input::Cloud { id: id.into(), ok }
    }

    fn local(id: &str, ok: Result<(), String>) -> Input {
        Input::Local { id: id.into(), ok }
    }

    #[test]
    fn cloud_first_answered_by_the_cloud_walks_every_state() {
        let mut m = machine(Policy::CloudFirst);
        let a = to_frame(&mut m, "r1", 0);
        assert_eq!(states(&a), ["frame_captured", "cloud_pending"]);
        assert_eq!(
            others(&a),
            [Action::AskCloud {
                id: "r1".into(),
                probe: false
            }]
        );
        assert!(m.status().request_flag);
        // The local model would start 200 ms before the 1000 ms deadline.
        assert_eq!(m.next_deadline(), Some(800));
        let a = m.handle(cloud("r1", ok()), 300);
        assert_eq!(states(&a), ["answered", "published", "idle"]);
        assert_eq!(
            others(&a),
            [
                Action::Publish {
                    id: "r1".into(),
                    source: Source::Cloud
                },
                Action::DeactivateSensor
            ]
        );
        let s = m.status();
        assert!(!s.request_flag);
        assert_eq!(s.request_id, "r1");
        assert_eq!(s.last_source, Some(Source::Cloud));
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn the_hand_over_follows_the_models_measured_time_never_less_than_expected_local() {
        let mut m = machine(Policy::CloudFirst);
        // Measured 450 ms for the default model: handed over 450 ms before the deadline.
        m.set_local_estimate("", 450);
        to_frame(&mut m, "r1", 0);
        assert!(others(&m.handle(Input::Tick, 549)).is_empty());
        assert_eq!(
            others(&m.handle(Input::Tick, 550)),
            [Action::RunLocal { id: "r1".into() }]
        );
        // A fast model still gets the configured 200 ms; another scene without its own
        // model goes by the default model's time.
        m.set_local_estimate("", 50);
        assert_eq!(m.local_lead(""), 200);
        m.set_local_estimate("orchard", 900);
        assert_eq!(m.local_lead("orchard"), 900);
        assert_eq!(m.local_lead("greenhouse"), 200);
    }

    #[test]
    fn cloud_first_hands_over_to_the_local_model_before_the_deadline() {
        let mut m = machine(Policy::CloudFirst);
        to_frame(&mut m, "r1", 0);
        assert!(others(&m.handle(Input::Tick, 799)).is_empty());
        let a = m.handle(Input::Tick, 800);
        assert_eq!(others(&a), [Action::RunLocal { id: "r1".into() }]);
        assert_eq!(m.breaker.failures(), 1);
        // Now the limit is the deadline plus the local timeout.
        assert_eq!(m.next_deadline(), Some(1700));
        // A late cloud answer after hand-over is not used.
        assert!(m.handle(cloud("r1", ok()), 900).is_empty());
        let a = m.handle(local("r1", ok()), 1050);
        assert!(others(&a).contains(&Action::Publish {
            id: "r1".into(),
            source: Source::Local
        }));
        assert_eq!(m.status().last_source, Some(Source::Local));
    }

    #[test]
    fn garbage_from_the_cloud_starts_the_local_model_at_once() {
        let mut m = machine(Policy::CloudFirst);
        to_frame(&mut m, "r1", 0);
        let a = m.handle(cloud("r1", Err("no 'detections' list".into())), 120);
        assert_eq!(others(&a), [Action::RunLocal { id: "r1".into() }]);
        let a = m.handle(local("r1", ok()), 200);
        assert!(states(&a).contains(&"published"));
    }

    #[test]
    fn the_breaker_opens_goes_local_at_once_probes_and_closes() {
        let mut m = machine(Policy::CloudFirst);
        let mut t = 0;
        for (i, expect_open) in [(1, false), (2, true)] {
            let id = format!("r{i}");
            to_frame(&mut m, &id, t);
            let a = m.handle(Input::Tick, t + 800);
            assert_eq!(
                others(&a).contains(&Action::Breaker { open: true }),
                expect_open
            );
            m.handle(local(&id, ok()), t + 900);
            t += 1000;
        }
        assert!(m.breaker.is_open());
        // Open: local at once, no cloud request (the probe interval has not passed).
        let a = to_frame(&mut m, "r3", t);
        assert_eq!(others(&a), [Action::RunLocal { id: "r3".into() }]);
        assert_eq!(states(&a), ["frame_captured"]);
        m.handle(local("r3", ok()), t + 100);
        // 5 s after opening (at 1800): a probe goes to the cloud while the local model answers.
        let t = 7000;
        let a = to_frame(&mut m, "r4", t);
        assert_eq!(
            others(&a),
            [
                Action::AskCloud {
                    id: "r4".into(),
                    probe: true
                },
                Action::RunLocal { id: "r4".into() }
            ]
        );
        // The local model answers first; the probe's answer still closes the breaker.
        let a = m.handle(local("r4", ok()), t + 50);
        assert!(others(&a).contains(&Action::Publish {
            id: "r4".into(),
            source: Source::Local
        }));
        assert!(m.breaker.is_open());
        assert_eq!(m.next_deadline(), Some(t + 1000));
        let a = m.handle(cloud("r4", ok()), t + 100);
        assert_eq!(others(&a), [Action::Breaker { open: false }]);
        assert!(!m.breaker.is_open());
        assert_eq!(m.next_deadline(), None);
        // Closed again: the next request asks the cloud first.
        let a = to_frame(&mut m, "r5", t + 1000);
        assert_eq!(
            others(&a),
            [Action::AskCloud {
                id: "r5".into(),
                probe: false
            }]
        );
    }

    #[test]
    fn an_unanswered_probe_counts_as_a_failure_at_its_deadline() {
        let mut m = Machine::new(Policy::CloudFirst, timing(), Breaker::new(1, 1000));
        to_frame(&mut m, "r1", 0);
        m.handle(cloud("r1", Err("x".into())), 10);
        m.handle(local("r1", ok()), 20);
        assert!(m.breaker.is_open());
        let a = to_frame(&mut m, "r2", 2000);
        assert!(others(&a).contains(&Action::AskCloud {
            id: "r2".into(),
            probe: true
        }));
        m.handle(local("r2", ok()), 2060);
        assert_eq!(m.next_deadline(), Some(3000));
        m.handle(Input::Tick, 3000);
        assert_eq!(m.breaker.failures(), 2);
        assert!(m.breaker.is_open());
        // A late answer to the expired probe changes nothing.
        assert!(m.handle(cloud("r2", ok()), 3100).is_empty());
        assert!(m.breaker.is_open());
    }

    #[test]
    fn a_failed_probe_keeps_the_breaker_open_until_the_next_interval() {
        let mut b = Breaker::new(1, 1000);
        assert_eq!(b.allow(0), Allow::Cloud);
        assert!(b.failure(0));
        assert_eq!(b.allow(500), Allow::No);
        assert_eq!(b.allow(1000), Allow::Probe);
        assert_eq!(b.allow(1500), Allow::No);
        assert!(!b.failure(1600));
        assert_eq!(b.allow(1999), Allow::No);
        assert_eq!(b.allow(2000), Allow::Probe);
        assert!(b.success());
        assert_eq!(b.allow(2001), Allow::Cloud);
    }

    #[test]
    fn local_only_never_asks_the_cloud() {
        let mut m = machine(Policy::LocalOnly);
        let a = to_frame(&mut m, "r1", 0);
        assert_eq!(states(&a), ["frame_captured"]);
        assert_eq!(others(&a), [Action::RunLocal { id: "r1".into() }]);
        let a = m.handle(local("r1", Err("output has NaN".into())), 100);
        assert_eq!(states(&a), ["error", "idle"]);
        assert!(others(&a).contains(&Action::Fail {
            id: "r1".into(),
            error: "model failure: output has NaN".into()
        }));
        assert_eq!(m.status().error, "model failure: output has NaN");
    }

    #[test]
    fn cloud_only_fails_at_the_deadline_and_when_the_breaker_is_open() {
        let mut m = machine(Policy::CloudOnly);
        to_frame(&mut m, "r1", 0);
        assert_eq!(m.next_deadline(), Some(1000));
        let a = m.handle(Input::Tick, 1000);
        assert!(others(&a).contains(&Action::Fail {
            id: "r1".into(),
            error: "no answer within 1000 ms".into()
        }));
        to_frame(&mut m, "r2", 2000);
        let a = m.handle(cloud("r2", Err("bad json".into())), 2100);
        assert!(others(&a).contains(&Action::Breaker { open: true }));
        assert!(others(&a).contains(&Action::Fail {
            id: "r2".into(),
            error: "cloud: bad json".into()
        }));
        let a = to_frame(&mut m, "r3", 3000);
        assert!(others(&a).contains(&Action::Fail {
            id: "r3".into(),
            error: "the cloud detector is unavailable (circuit breaker open)".into()
        }));
    }

    #[test]
    fn race_takes_the_first_valid_answer() {
        let mut m = machine(Policy::Race);
        let a = to_frame(&mut m, "r1", 0);
        assert_eq!(
            others(&a),
            [
                Action::AskCloud {
                    id: "r1".into(),
                    probe: false
                },
                Action::RunLocal { id: "r1".into() }
            ]
        );
        // The cloud fails: the local answer is still awaited.
        let a = m.handle(cloud("r1", Err("timeout".into())), 60);
        assert!(states(&a).is_empty());
        let a = m.handle(local("r1", ok()), 90);
        assert!(others(&a).contains(&Action::Publish {
            id: "r1".into(),
            source: Source::Local
        }));
        // Local fails first, the cloud answers.
        to_frame(&mut m, "r2", 1000);
        assert!(states(&m.handle(local("r2", Err("x".into())), 1060)).is_empty());
        let a = m.handle(cloud("r2", ok()), 1100);
        assert!(others(&a).contains(&Action::Publish {
            id: "r2".into(),
            source: Source::Cloud
        }));
    }

    #[test]
    fn no_frame_in_time_and_bad_frames_are_errors() {
        let mut m = machine(Policy::CloudFirst);
        m.handle(Input::Request(req("r1", 5000)), 0);
        m.handle(Input::SensorReady, 10);
        assert_eq!(m.next_deadline(), Some(510));
        assert!(m.handle(Input::Tick, 509).is_empty());
        let a = m.handle(Input::Tick, 510);
        assert!(others(&a).contains(&Action::Fail {
            id: "r1".into(),
            error: "no camera frame within 500 ms".into()
        }));
        m.handle(Input::Request(req("r2", 0)), 1000);
        m.handle(Input::SensorReady, 1010);
        let a = m.handle(
            Input::Frame(Err("encoding 'yuv422' not supported".into())),
            1020,
        );
        assert!(others(&a).contains(&Action::Fail {
            id: "r2".into(),
            error: "bad camera frame: encoding 'yuv422' not supported".into()
        }));
        m.handle(Input::Request(req("r3", 0)), 2000);
        let a = m.handle(Input::SensorFailed("service not available".into()), 2100);
        assert!(others(&a).contains(&Action::Fail {
            id: "r3".into(),
            error: "camera could not be switched on: service not available".into()
        }));
    }

    #[test]
    fn requests_queue_in_order_duplicates_are_ignored_and_overflow_is_rejected() {
        let mut m = machine(Policy::LocalOnly);
        to_frame(&mut m, "r1", 0);
        assert!(m.handle(Input::Request(req("r1", 0)), 60).is_empty());
        assert!(m.handle(Input::Request(req("r2", 0)), 60).is_empty());
        assert!(m.handle(Input::Request(req("r2", 0)), 61).is_empty());
        assert_eq!(m.queued(), 1);
        let a = m.handle(Input::Request(req("r3", 0)), 70);
        assert_eq!(
            others(&a),
            [Action::Reject {
                id: "r3".into(),
                error: "busy: one request in service and 1 queued".into()
            }]
        );
        // r1 answered: r2 starts with the camera still on (no switching off and on).
        let a = m.handle(local("r1", ok()), 100);
        assert_eq!(
            states(&a),
            ["answered", "published", "accepted", "sensor_activating"]
        );
        assert!(!others(&a).contains(&Action::DeactivateSensor));
        assert_eq!(m.current().map(|r| r.id.as_str()), Some("r2"));
        // r2's deadline counts from when it was queued.
        m.handle(Input::Frame(ok()), 150);
        assert_eq!(m.next_deadline(), Some(60 + 1000 + 700));
        // r1 again, after it was served (a sample delivered twice): ignored.
        assert!(m.handle(Input::Request(req("r1", 0)), 200).is_empty());
        assert_eq!(m.queued(), 0);
    }

    #[test]
    fn queued_requests_past_their_deadline_are_rejected_unserved() {
        let mut m = machine(Policy::LocalOnly);
        to_frame(&mut m, "r1", 0);
        m.handle(Input::Request(req("r2", 100)), 10);
        let a = m.handle(local("r1", ok()), 500);
        assert!(others(&a).contains(&Action::Reject {
            id: "r2".into(),
            error: "deadline of 100 ms passed while queued".into()
        }));
        assert_eq!(m.state(), State::Idle);
    }

    #[test]
    fn cancel_ends_the_request_in_service_or_removes_a_queued_one() {
        let mut m = machine(Policy::CloudFirst);
        to_frame(&mut m, "r1", 0);
        m.handle(Input::Request(req("r2", 0)), 5);
        let a = m.handle(Input::Cancel("r2".into()), 10);
        assert_eq!(
            others(&a),
            [Action::Reject {
                id: "r2".into(),
                error: "cancelled".into()
            }]
        );
        let a = m.handle(Input::Cancel("r1".into()), 20);
        assert_eq!(states(&a), ["error", "idle"]);
        // Answers for a cancelled request are ignored.
        assert!(m.handle(cloud("r1", ok()), 30).is_empty());
        assert!(m.handle(Input::Cancel("nope".into()), 40).is_empty());
    }

    #[test]
    fn a_local_model_that_never_finishes_fails_after_the_grace_time() {
        let mut m = machine(Policy::LocalOnly);
        to_frame(&mut m, "r1", 0);
        assert_eq!(m.next_deadline(), Some(1700));
        let a = m.handle(Input::Tick, 1700);
        assert!(others(&a).contains(&Action::Fail {
            id: "r1".into(),
            error: "model failure: the local model did not finish within 1700 ms".into()
        }));
    }

    #[test]
    fn answers_for_other_requests_are_ignored() {
        let mut m = machine(Policy::CloudFirst);
        to_frame(&mut m, "r1", 0);
        assert!(m.handle(cloud("other", ok()), 10).is_empty());
        assert!(m.handle(local("r1", ok()), 10).is_empty()); // local never started
        assert_eq!(m.state(), State::CloudPending);
    }
}
