//! The Request_object_detection service: ROS requests in, camera frames, the cloud
//! detector over MQTT, the local model, results back onto ROS and reports to the cloud.
//! All decisions are the state machine's (`machine.rs`); this task only carries out
//! its actions and feeds it what happened.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cloud::{self, CloudAnswer};
use super::config::{DetectSettings, ImageKind};
use super::entry::{self, Entry};
use super::frame::{self, Depth, Frame, Intrinsics};
use super::local::{Found, LocalModel, StageTimes};
use super::machine::{Action, Input, Machine, Request, Source, Status};
use crate::clock::now_ms;
use crate::mqtt::{LinkHandle, LinkState, Message, QoS};
use crate::onnx::OnnxConfig;
use crate::ros::codec::{decode_to_value, encode_value, DecodeOptions, EncodeOptions};
use crate::ros::registry::TypeName;
use crate::ros::schema::MsgSchema;
use crate::ros::transport::{Durability, Qos, RawPublisher, Reliability, Sample, Transport};
use crate::ros::Registry;

/// The models in use, by scene ("" for the default), swapped whole when a new OTA
/// slot becomes active. A detection in progress keeps the model it started with.
#[derive(Default)]
struct Models {
    by_scene: HashMap<String, Arc<Mutex<LocalModel>>>,
    /// Why a scene has no model.
    errors: HashMap<String, String>,
}

fn load_models(
    settings: &DetectSettings,
    onnx: &OnnxConfig,
    slot: Option<&std::path::Path>,
) -> Models {
    let mut m = Models::default();
    let rt = match crate::onnx::runtime(onnx) {
        Ok(rt) => rt,
        Err(e) => {
            for scene in settings.models.keys() {
                m.errors.insert(scene.clone(), e.clone());
            }
            return m;
        }
    };
    let mut loaded: HashMap<PathBuf, Arc<Mutex<LocalModel>>> = HashMap::new();
    for scene in settings.models.keys() {
        let Some(path) = settings.model_path(scene, slot) else {
            continue;
        };
        // Through the OTA `current` link to the slot itself, so logs and reports say which.
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        if let Some(existing) = loaded.get(&path) {
            m.by_scene.insert(scene.clone(), existing.clone());
            continue;
        }
        match LocalModel::load(rt, &path) {
            Ok(mut model) => {
                match model.warm_up() {
                    Ok(took) => {
                        tracing::info!(scene = %scene_name(scene), model = %path.display(), classes = model.names.len(), warm_up_ms = took.round(), expected_ms = model.expected_ms(), "Detection model loaded.");
                    }
                    Err(e) => {
                        tracing::error!(scene = %scene_name(scene), model = %path.display(), error = %e, "Detection model cannot run; this scene has no local fallback.");
                        m.errors.insert(scene.clone(), e);
                        continue;
                    }
                }
                let model = Arc::new(Mutex::new(model));
                loaded.insert(path, model.clone());
                m.by_scene.insert(scene.clone(), model);
            }
            Err(e) => {
                tracing::error!(scene = %scene_name(scene), model = %path.display(), error = %e, "Detection model cannot be loaded; this scene has no local fallback.");
                m.errors.insert(scene.clone(), e);
            }
        }
    }
    m
}

fn scene_name(s: &str) -> &str {
    if s.is_empty() {
        "(default)"
    } else {
        s
    }
}

impl Models {
    /// Each scene's measured local time in ms.
    fn estimates(&self) -> Vec<(String, u64)> {
        self.by_scene
            .iter()
            .filter_map(|(scene, m)| Some((scene.clone(), m.lock().ok()?.expected_ms()?)))
            .collect()
    }

    fn for_scene(&self, scene: &str) -> Result<Arc<Mutex<LocalModel>>, String> {
        if let Some(m) = self.by_scene.get(scene).or_else(|| self.by_scene.get("")) {
            return Ok(m.clone());
        }
        let why = self
            .errors
            .get(scene)
            .or_else(|| self.errors.get(""))
            .cloned()
            .unwrap_or_else(|| format!("no model for scene '{scene}'"));
        Err(format!("no local model: {why}"))
    }
}

struct Schemas {
    request: Arc<MsgSchema>,
    status: Arc<MsgSchema>,
    det2d: Arc<MsgSchema>,
    det3d: Arc<MsgSchema>,
    camera_info: Arc<MsgSchema>,
}

/// What the service knows about the request in service beyond the machine's view.
struct InService {
    req: Request,
    accepted: Instant,
    frame: Option<Arc<Frame>>,
    frame_at: Option<Instant>,
    /// When the local model was handed the request.
    local_at: Option<Instant>,
    cloud_sent: Option<(Instant, usize, usize)>,
    cloud: Option<(CloudAnswer, Instant)>,
    local: Option<(Vec<Found>, StageTimes, String)>,
}

/// A request from the DetectObjects service or action, waiting for its answer.
struct Caller {
    reply: tokio::sync::oneshot::Sender<Value>,
    feedback: Option<entry::Feedback>,
    accepted: Instant,
    /// The last stage told.
    stage: &'static str,
}

/// Switches the camera through its SetBool service, one call at a time and in order
/// (so an "off" for one request cannot overtake the "on" of the next). The outcome of
/// each "on" goes back to the service.
fn camera_task(
    transport: Arc<dyn Transport>,
    service: String,
    rmw: crate::ros::transport::ServiceRmw,
    timeout: Duration,
    mut rx: mpsc::Receiver<bool>,
    done: mpsc::Sender<Result<(), String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        while let Some(on) = rx.recv().await {
            let r = transport.set_bool(&service, rmw, on, timeout).await;
            let r = match r {
                Ok(reply) if reply.success => Ok(()),
                Ok(reply) => Err(format!("{service} refused: {}", reply.message)),
                Err(e) => Err(e.to_string()),
            };
            match (&r, failing) {
                (Err(e), false) => {
                    failing = true;
                    tracing::warn!(service = %service, on, error = %e, "The camera could not be switched.");
                }
                (Ok(()), true) => {
                    failing = false;
                    tracing::info!(service = %service, "The camera switches again.");
                }
                _ => {}
            }
            if on && done.send(r).await.is_err() {
                break;
            }
        }
    })
}

struct LocalDone {
    id: String,
    result: Result<(Vec<Found>, StageTimes, String), String>,
}

/// What the detection service shows in the agent's health and `edge-agent status`.
#[derive(Debug, Default)]
pub struct DetectStats(Mutex<StatsInner>);

#[derive(Debug, Default, Clone, serde::Serialize)]
struct StatsInner {
    answered: u64,
    /// Answers later than their deadline, and the latest such lateness.
    late: u64,
    last_late_ms: Option<u64>,
    /// What each scene's local model is expected to need ("" the default), in ms.
    local_expected_ms: std::collections::BTreeMap<String, u64>,
}

impl DetectStats {
    pub fn snapshot(&self) -> Value {
        self.0
            .lock()
            .map(|s| serde_json::to_value(&*s).unwrap_or(Value::Null))
            .unwrap_or(Value::Null)
    }

    fn update(&self, f: impl FnOnce(&mut StatsInner)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
}

/// Starts the service. `busy` is true while a request is served (the OTA installer
/// waits with a switch until it is false).
#[allow(clippy::too_many_arguments)]
pub async fn start(
    settings: DetectSettings,
    onnx: OnnxConfig,
    transport: Arc<dyn Transport>,
    registry: Arc<Registry>,
    link: LinkHandle,
    slot: Option<watch::Receiver<Option<PathBuf>>>,
    busy: watch::Sender<bool>,
    shutdown: CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, Arc<DetectStats>)> {
    let schema = |n: &str| {
        registry
            .schema(n)
            .with_context(|| format!("message type {n} is needed for detection"))
    };
    let tn = |n: &str| TypeName::parse(n).with_context(|| format!("type name {n}"));
    let schemas = Schemas {
        request: schema("edge_agent_msgs/msg/DetectionRequest")?,
        status: schema("edge_agent_msgs/msg/DetectionStatus")?,
        det2d: schema("vision_msgs/msg/Detection2DArray")?,
        det3d: schema("vision_msgs/msg/Detection3DArray")?,
        camera_info: schema("sensor_msgs/msg/CameraInfo")?,
    };
    let (req_tx, req_rx) = mpsc::channel(16);
    transport.subscribe(
        &settings.request_topic,
        &tn("edge_agent_msgs/msg/DetectionRequest")?,
        schemas.request.clone(),
        Qos::ros_default(),
        req_tx,
    )?;
    let image_type = match settings.image_kind {
        ImageKind::Raw => "sensor_msgs/msg/Image",
        ImageKind::Compressed => "sensor_msgs/msg/CompressedImage",
    };
    let (img_tx, img_rx) = mpsc::channel(2);
    // With a V4L2 camera the agent takes the frames itself, and the image topic is unused.
    let v4l2_camera = if let Some(v) = settings.v4l2.clone() {
        Some((v, img_tx))
    } else {
        transport.subscribe(
            &settings.image_topic,
            &tn(image_type)?,
            schema(image_type)?,
            Qos::sensor_data(),
            img_tx,
        )?;
        None
    };
    let (depth_tx, depth_rx) = mpsc::channel(2);
    let (info_tx, info_rx) = mpsc::channel(2);
    if let (Some(d), Some(i)) = (&settings.depth_topic, &settings.camera_info_topic) {
        transport.subscribe(
            d,
            &tn("sensor_msgs/msg/Image")?,
            schema("sensor_msgs/msg/Image")?,
            Qos::sensor_data(),
            depth_tx,
        )?;
        transport.subscribe(
            i,
            &tn("sensor_msgs/msg/CameraInfo")?,
            schemas.camera_info.clone(),
            Qos::sensor_data(),
            info_tx,
        )?;
    }
    let (entry_tx, entry_rx) = mpsc::channel(16);
    // The request topic serves on without them (a transport that cannot serve).
    if let Err(e) = entry::start(
        &transport,
        &registry,
        settings.service.as_deref(),
        settings.action.as_deref(),
        entry_tx,
    ) {
        tracing::warn!(error = %e, "The DetectObjects service and action are not available; requests on the topic still work.");
    }
    let (pose_tx, pose_rx) = mpsc::channel(4);
    let pose_schema = match &settings.pose {
        Some((topic, ty)) => {
            let sch = schema(ty)?;
            transport.subscribe(topic, &tn(ty)?, sch.clone(), Qos::ros_default(), pose_tx)?;
            Some(sch)
        }
        None => None,
    };
    let status_pub = transport.publisher(
        &settings.status_topic,
        &tn("edge_agent_msgs/msg/DetectionStatus")?,
        schemas.status.clone(),
        Qos {
            reliability: Reliability::Reliable,
            durability: Durability::TransientLocal,
            depth: 1,
        },
    )?;
    let det2d_pub = transport.publisher(
        &settings.result_topic,
        &tn("vision_msgs/msg/Detection2DArray")?,
        schemas.det2d.clone(),
        Qos::ros_default(),
    )?;
    let det3d_pub = transport.publisher(
        &settings.result_3d_topic,
        &tn("vision_msgs/msg/Detection3DArray")?,
        schemas.det3d.clone(),
        Qos::ros_default(),
    )?;
    let cloud_rx = if settings.policy == super::machine::Policy::LocalOnly {
        None
    } else {
        Some(
            link.subscribe(&settings.cloud_response_topic, QoS::AtLeastOnce, 16)
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe to the detection responses: {e}"))?,
        )
    };
    let models = {
        let s = settings.clone();
        let o = onnx.clone();
        let dir = slot.as_ref().and_then(|w| w.borrow().clone());
        tokio::task::spawn_blocking(move || load_models(&s, &o, dir.as_deref()))
            .await
            .context("model loading stopped")?
    };
    let (camera_tx, camera_done) = match (&settings.camera_service, v4l2_camera) {
        #[cfg(feature = "v4l2")]
        (_, Some((v, frames))) => {
            let (tx, rx) = mpsc::channel(8);
            let (done_tx, done_rx) = mpsc::channel(8);
            super::v4l2::camera_task(v, rx, done_tx, frames)
                .context("cannot start the V4L2 camera thread")?;
            (Some(tx), Some(done_rx))
        }
        #[cfg(not(feature = "v4l2"))]
        (_, Some(_)) => anyhow::bail!("detect.v4l2 needs a build with --features v4l2"),
        (Some(name), None) => {
            let (tx, rx) = mpsc::channel(8);
            let (done_tx, done_rx) = mpsc::channel(8);
            camera_task(
                transport.clone(),
                name.clone(),
                settings.camera_service_rmw,
                Duration::from_millis(settings.timing.frame_timeout_ms.max(100)),
                rx,
                done_tx,
            );
            (Some(tx), Some(done_rx))
        }
        (None, None) => (None, None),
    };
    let mut svc = Service {
        camera_tx,
        machine: Machine::new(settings.policy, settings.timing, settings.breaker()),
        settings,
        onnx,
        schemas,
        link,
        models: Arc::new(RwLock::new(models)),
        status_pub,
        det2d_pub,
        det3d_pub,
        busy,
        t0: Instant::now(),
        latest_frame: None,
        depth: None,
        intrinsics: None,
        in_service: None,
        pending: HashMap::new(),
        callers: HashMap::new(),
        warned_depth: false,
        probe: None,
        pose_schema,
        pose: None,
        stats: Arc::default(),
        log: crate::loglimit::LogLimiter::default(),
    };
    svc.refresh_estimates();
    let stats = svc.stats.clone();
    Ok((
        tokio::spawn(svc.run(
            req_rx,
            entry_rx,
            img_rx,
            depth_rx,
            info_rx,
            pose_rx,
            cloud_rx,
            camera_done,
            slot,
            shutdown,
        )),
        stats,
    ))
}

struct Service {
    /// The camera's on/off switch, when one is configured.
    camera_tx: Option<mpsc::Sender<bool>>,
    settings: DetectSettings,
    onnx: OnnxConfig,
    schemas: Schemas,
    link: LinkHandle,
    models: Arc<RwLock<Models>>,
    machine: Machine,
    status_pub: Arc<dyn RawPublisher>,
    det2d_pub: Arc<dyn RawPublisher>,
    det3d_pub: Arc<dyn RawPublisher>,
    busy: watch::Sender<bool>,
    t0: Instant,
    latest_frame: Option<(Bytes, Instant)>,
    depth: Option<Bytes>,
    intrinsics: Option<Intrinsics>,
    in_service: Option<InService>,
    /// Requests queued in the machine, with when they arrived.
    pending: HashMap<String, (Request, Instant)>,
    /// Requests from the service or action, by id, until answered.
    callers: HashMap<String, Caller>,
    warned_depth: bool,
    /// The breaker's probe in flight: request id, size sent, source size. Its answer
    /// may come after the request was answered by the local model.
    probe: Option<Probe>,
    pose_schema: Option<Arc<MsgSchema>>,
    /// The robot's latest pose, for cloud requests.
    pose: Option<Value>,
    stats: Arc<DetectStats>,
    /// Late answers: the first, then a line a minute with a count.
    log: crate::loglimit::LogLimiter,
}

/// The next message on an optional channel; never, when there is no channel.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A probe's request id, the size of the image sent, and the source image's size.
type Probe = (String, (usize, usize), (usize, usize));

impl Service {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// The request in service, if it is `id`.
    fn serving(&self, id: &str) -> Option<&InService> {
        self.in_service.as_ref().filter(|s| s.req.id == id)
    }

    fn serving_mut(&mut self, id: &str) -> Option<&mut InService> {
        self.in_service.as_mut().filter(|s| s.req.id == id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        mut self,
        mut req_rx: mpsc::Receiver<Sample>,
        mut entry_rx: mpsc::Receiver<Entry>,
        mut img_rx: mpsc::Receiver<Sample>,
        mut depth_rx: mpsc::Receiver<Sample>,
        mut info_rx: mpsc::Receiver<Sample>,
        mut pose_rx: mpsc::Receiver<Sample>,
        mut cloud_rx: Option<mpsc::Receiver<crate::mqtt::Incoming>>,
        mut camera_done: Option<mpsc::Receiver<Result<(), String>>>,
        mut slot: Option<watch::Receiver<Option<PathBuf>>>,
        shutdown: CancellationToken,
    ) {
        let (local_tx, mut local_rx) = mpsc::channel::<LocalDone>(8);
        let (swap_tx, mut swap_rx) = mpsc::channel::<Models>(1);
        self.publish_status(&self.machine.status());
        let image = match &self.settings.v4l2 {
            Some(v) => v.device.as_str(),
            None => self.settings.image_topic.as_str(),
        };
        tracing::info!(policy = ?self.settings.policy, request = %self.settings.request_topic, image = %image, "Detection service ready.");
        loop {
            let wake = self
                .machine
                .next_deadline()
                .map(|ms| self.t0 + Duration::from_millis(ms))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(s) = req_rx.recv() => self.on_request(&s.cdr, &local_tx),
                Some(e) = entry_rx.recv() => self.on_entry(e, &local_tx),
                Some(s) = img_rx.recv() => {
                    self.latest_frame = Some((s.cdr, Instant::now()));
                    self.maybe_capture(&local_tx);
                }
                Some(s) = depth_rx.recv() => {
                    if self.depth.is_none() {
                        tracing::debug!("A depth image has arrived: detections can be positioned from now on.");
                    }
                    self.depth = Some(s.cdr);
                }
                Some(s) = info_rx.recv() => self.on_camera_info(&s.cdr),
                Some(s) = pose_rx.recv() => {
                    if let Some(sch) = &self.pose_schema {
                        match decode_to_value(sch, &s.cdr, &DecodeOptions::default()) {
                            Ok(v) => {
                                if self.pose.is_none() {
                                    tracing::debug!("The robot's pose is known: it goes with each cloud request from now on.");
                                }
                                self.pose = Some(v);
                            }
                            Err(e) => tracing::debug!(error = %e, "A pose message could not be decoded."),
                        }
                    }
                }
                Some(m) = recv_opt(&mut cloud_rx) => {
                    self.on_cloud(&m.payload, &local_tx);
                }
                Some(done) = local_rx.recv() => self.on_local(done, &local_tx),
                Some(r) = recv_opt(&mut camera_done) => {
                    let input = match r {
                        Ok(()) => Input::SensorReady,
                        Err(e) => Input::SensorFailed(e),
                    };
                    let now = self.now();
                    self.feed(input, now, &local_tx);
                }
                Ok(()) = async { match slot.as_mut() { Some(s) => s.changed().await, None => std::future::pending().await } } => {
                    let dir = slot.as_ref().and_then(|s| s.borrow().clone());
                    let (s, o, tx) = (self.settings.clone(), self.onnx.clone(), swap_tx.clone());
                    tracing::info!(slot = ?dir, "New OTA slot active; loading its detection models.");
                    tokio::task::spawn_blocking(move || {
                        let m = load_models(&s, &o, dir.as_deref());
                        let _ = tx.blocking_send(m);
                    });
                }
                Some(m) = swap_rx.recv() => {
                    if let Ok(mut cur) = self.models.write() {
                        *cur = m;
                    }
                    tracing::info!("Detection models swapped.");
                    self.refresh_estimates();
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = self.now();
                    self.feed(Input::Tick, now, &local_tx);
                }
            }
        }
        let _ = self.busy.send(false);
    }

    fn feed(&mut self, input: Input, now: u64, local_tx: &mpsc::Sender<LocalDone>) {
        let mut todo: std::collections::VecDeque<Action> = self.machine.handle(input, now).into();
        while let Some(a) = todo.pop_front() {
            for more in self.act(a, local_tx) {
                todo.extend(self.machine.handle(more, self.now()));
            }
        }
        self.maybe_capture(local_tx);
    }

    /// Carries out one action; returns inputs it produced at once.
    fn act(&mut self, a: Action, local_tx: &mpsc::Sender<LocalDone>) -> Vec<Input> {
        match a {
            Action::Status(s) => {
                self.begin_if_new(&s);
                let _ = self.busy.send(s.request_flag);
                self.publish_status(&s);
                match s.state {
                    super::machine::State::SensorActivating => {
                        self.tell(&s.request_id, "camera", 0)
                    }
                    super::machine::State::CloudPending => self.tell(&s.request_id, "cloud", 0),
                    _ => {}
                }
                vec![]
            }
            Action::ActivateSensor { .. } => match &self.camera_tx {
                // Frames older than the switch-on are not this request's.
                Some(tx) => {
                    self.latest_frame = None;
                    match tx.try_send(true) {
                        Ok(()) => vec![],
                        Err(_) => vec![Input::SensorFailed(
                            "the camera switch is not answering".into(),
                        )],
                    }
                }
                // No camera service: the camera is expected to stream.
                None => vec![Input::SensorReady],
            },
            Action::DeactivateSensor => {
                if let Some(tx) = &self.camera_tx {
                    let _ = tx.try_send(false);
                }
                vec![]
            }
            Action::AskCloud { id, probe } => self.ask_cloud(&id, probe),
            Action::RunLocal { id } => {
                self.tell(&id, "local", 0);
                self.run_local(&id, local_tx);
                vec![]
            }
            Action::Publish { id, source } => {
                self.publish_answer(&id, source);
                vec![]
            }
            Action::Fail { id, error } => {
                // A cancel was logged when it came.
                if error == "cancelled" {
                    tracing::debug!(request = %id, "Detection request ended: cancelled.");
                } else {
                    tracing::warn!(request = %id, error = %error, "Detection request failed.");
                }
                let latency = self
                    .serving(&id)
                    .map(|s| s.accepted.elapsed().as_secs_f64() * 1e3);
                self.report(json!({"id": id, "error": error, "latency_ms": {"total": latency}}));
                self.answer_caller(&id, entry::failure(&id, &error));
                self.in_service = None;
                vec![]
            }
            Action::Reject { id, error } => {
                if error == "cancelled" {
                    tracing::debug!(request = %id, "Queued detection request dropped: cancelled.");
                } else {
                    tracing::warn!(request = %id, error = %error, "Detection request rejected.");
                }
                self.pending.remove(&id);
                self.report(json!({"id": id, "error": error}));
                self.answer_caller(&id, entry::failure(&id, &error));
                let mut s = self.machine.status();
                s.request_id = id;
                s.state = super::machine::State::Error;
                s.error = error;
                self.publish_status(&s);
                vec![]
            }
            Action::Breaker { open: true } => {
                tracing::warn!(
                    failures = self.machine.breaker.failures(),
                    "Cloud detector not answering; using the local model until it does."
                );
                vec![]
            }
            Action::Breaker { open: false } => {
                tracing::info!("Cloud detector answering again.");
                vec![]
            }
        }
    }

    /// A request the machine just started (from the queue or new) gets its record.
    fn begin_if_new(&mut self, s: &Status) {
        if s.state != super::machine::State::Accepted {
            return;
        }
        if self
            .in_service
            .as_ref()
            .is_some_and(|r| r.req.id == s.request_id)
        {
            return;
        }
        let Some((req, at)) = self.pending.remove(&s.request_id) else {
            return;
        };
        self.in_service = Some(InService {
            req,
            accepted: at,
            frame: None,
            frame_at: None,
            local_at: None,
            cloud_sent: None,
            cloud: None,
            local: None,
        });
    }

    fn on_request(&mut self, cdr: &Bytes, local_tx: &mpsc::Sender<LocalDone>) {
        let v = match decode_to_value(&self.schemas.request, cdr, &DecodeOptions::default()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "A detection request could not be decoded; ignored.");
                return;
            }
        };
        let id = v["request_id"].as_str().unwrap_or_default().to_owned();
        if id.is_empty() {
            tracing::warn!("A detection request without request_id was ignored.");
            return;
        }
        let now = self.now();
        if v["cancel"].as_bool() == Some(true) {
            tracing::info!(request = %id, "Detection request cancelled.");
            self.feed(Input::Cancel(id), now, local_tx);
            return;
        }
        let req = Request {
            id: id.clone(),
            scene: v["scene"].as_str().unwrap_or("").to_owned(),
            deadline_ms: v["deadline_ms"].as_u64().unwrap_or(0),
            depth: v["depth_positioning"].as_bool().unwrap_or(false),
        };
        tracing::debug!(request = %id, scene = %req.scene, "Detection requested.");
        if self.machine.knows(&id) {
            tracing::debug!(request = %id, "A repeated detection request was ignored.");
            return;
        }
        self.pending.insert(id, (req.clone(), Instant::now()));
        self.feed(Input::Request(req), now, local_tx);
    }

    /// A request or a cancel from the DetectObjects service or action.
    fn on_entry(&mut self, e: Entry, local_tx: &mpsc::Sender<LocalDone>) {
        let call = match e {
            Entry::Cancel(id) => {
                tracing::info!(request = %id, "Detection request cancelled by its caller.");
                let now = self.now();
                self.feed(Input::Cancel(id.clone()), now, local_tx);
                // Neither queued nor in service: it had ended already.
                self.answer_caller(&id, entry::failure(&id, "cancelled"));
                return;
            }
            Entry::Call(c) => c,
        };
        let id = call.req.id.clone();
        if self.machine.knows(&id) || self.callers.contains_key(&id) {
            tracing::debug!(request = %id, "A detection call repeating a recent request id was refused.");
            let _ = call.reply.send(entry::failure(
                &id,
                "a request with this request_id is in service, queued or was served lately",
            ));
            return;
        }
        tracing::debug!(request = %id, scene = %call.req.scene, "Detection called.");
        self.callers.insert(
            id.clone(),
            Caller {
                reply: call.reply,
                feedback: call.feedback,
                accepted: Instant::now(),
                stage: "",
            },
        );
        self.pending
            .insert(id.clone(), (call.req.clone(), Instant::now()));
        let now = self.now();
        self.feed(Input::Request(call.req), now, local_tx);
        if self.pending.contains_key(&id) && self.serving(&id).is_none() {
            // The request in service and those queued before this one.
            let ahead = self.machine.queued() as u32;
            self.tell(&id, "queued", ahead);
        }
    }

    /// Tells a caller its request reached `stage` (once per stage).
    fn tell(&mut self, id: &str, stage: &'static str, ahead: u32) {
        let Some(c) = self.callers.get_mut(id) else {
            return;
        };
        if c.stage == stage {
            return;
        }
        c.stage = stage;
        if let Some(f) = &c.feedback {
            f(stage, c.accepted.elapsed().as_secs_f64() * 1e3, ahead);
        }
    }

    /// Gives a caller its answer.
    fn answer_caller(&mut self, id: &str, answer: Value) {
        if let Some(c) = self.callers.remove(id) {
            let _ = c.reply.send(answer);
        }
    }

    /// Takes a frame for the request waiting for one: the latest if recent enough.
    fn maybe_capture(&mut self, local_tx: &mpsc::Sender<LocalDone>) {
        if self.machine.state() != super::machine::State::SensorActivating {
            return;
        }
        let Some(svc) = self.in_service.as_mut() else {
            return;
        };
        if svc.frame.is_some() {
            return;
        }
        let Some((cdr, at)) = self.latest_frame.as_ref() else {
            return;
        };
        // A frame from before the request is used only if recent enough.
        if *at < svc.accepted && at.elapsed() > self.settings.frame_max_age {
            return;
        }
        let result = match self.settings.image_kind {
            ImageKind::Raw => frame::from_image(cdr),
            ImageKind::Compressed => frame::from_compressed(cdr),
        };
        if let Ok(Frame { jpeg: Some(j), .. }) = &result {
            if super::local::jpeg_is_truncated(j) {
                tracing::warn!(request = %svc.req.id, bytes = j.len(),
                    "The camera frame is cut short (its JPEG has no end marker): its missing rows are grey and nothing is found there. Check the camera's cable or driver.");
            }
        }
        self.latest_frame = None;
        let input = match result {
            Ok(f) => {
                svc.frame = Some(Arc::new(f));
                svc.frame_at = Some(Instant::now());
                Ok(())
            }
            Err(e) => Err(e),
        };
        let now = self.now();
        self.feed(Input::Frame(input), now, local_tx);
    }

    fn ask_cloud(&mut self, id: &str, probe: bool) -> Vec<Input> {
        let fail = |e: String| {
            vec![Input::Cloud {
                id: id.to_owned(),
                ok: Err(e),
            }]
        };
        if *self.link.state().borrow() != LinkState::Up {
            return fail("the link to the broker is down".into());
        }
        let Some(svc) = self.in_service.as_mut().filter(|s| s.req.id == id) else {
            return vec![];
        };
        let Some(f) = svc.frame.clone() else {
            return vec![];
        };
        let max = if self.settings.max_jpeg_bytes > 0 {
            self.settings.max_jpeg_bytes
        } else {
            // Base64 grows by 4/3; leave room for the rest of the request.
            self.link.max_packet_size().saturating_sub(4096) / 4 * 3
        };
        let (jpeg, w, h) = match frame::jpeg_within(&f, self.settings.jpeg_quality, max) {
            Ok(j) => j,
            Err(e) => return fail(e),
        };
        let deadline = self.settings.timing.deadline_of(&svc.req);
        let payload = cloud::request_json(&cloud::CloudRequest {
            id,
            scene: &svc.req.scene,
            deadline_ms: deadline,
            timestamp_ms: now_ms(),
            frame_id: &f.frame_id,
            jpeg: &jpeg,
            width: w,
            height: h,
            camera: self.intrinsics,
            pose: self.pose.as_ref(),
        });
        svc.cloud_sent = Some((Instant::now(), w, h));
        if probe {
            self.probe = Some((id.to_owned(), (w, h), (f.rgb.width, f.rgb.height)));
        }
        let msg = Message::new(
            self.settings.cloud_request_topic.clone(),
            payload,
            QoS::AtMostOnce,
        );
        let link = self.link.clone();
        let id2 = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = link.publish(msg, "telemetry").await {
                tracing::warn!(request = %id2, error = %e, "Detection request not sent to the cloud.");
            }
        });
        tracing::debug!(request = %id, probe, bytes = jpeg.len(), "Detection request sent to the cloud.");
        vec![]
    }

    /// Gives the machine each model's measured time, so cloud-first hands over in time.
    fn refresh_estimates(&mut self) {
        let estimates = match self.models.read() {
            Ok(m) => m.estimates(),
            Err(_) => return,
        };
        for (scene, ms) in &estimates {
            self.machine.set_local_estimate(scene, *ms);
        }
        self.stats
            .update(|s| s.local_expected_ms = estimates.into_iter().collect());
    }

    fn run_local(&mut self, id: &str, local_tx: &mpsc::Sender<LocalDone>) {
        let Some(svc) = self.serving_mut(id) else {
            return;
        };
        let Some(f) = svc.frame.clone() else {
            return;
        };
        let handed_over = Instant::now();
        svc.local_at = Some(handed_over);
        let scene = svc.req.scene.clone();
        let model = self
            .models
            .read()
            .map_err(|_| "model lock poisoned".to_owned())
            .and_then(|m| m.for_scene(&scene));
        let post = self.settings.post;
        let tx = local_tx.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let result = model.and_then(|m| {
                let mut m = m.lock().map_err(|_| "model lock poisoned".to_owned())?;
                let (found, times) = m.detect(&f.rgb, &post)?;
                // From hand-over to answer: what the schedule must leave it.
                m.observe(handed_over.elapsed().as_secs_f64() * 1e3);
                let name = m.path.display().to_string();
                let version = m
                    .version
                    .clone()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default();
                Ok((found, times, format!("{name}{version}")))
            });
            let _ = tx.blocking_send(LocalDone { id, result });
        });
    }

    fn on_local(&mut self, done: LocalDone, local_tx: &mpsc::Sender<LocalDone>) {
        self.refresh_estimates();
        let ok = match done.result {
            Ok(r) => {
                if let Some(s) = self.serving_mut(&done.id) {
                    s.local = Some(r);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(request = %done.id, error = %e, "Local detection failed.");
                Err(e)
            }
        };
        let now = self.now();
        self.feed(Input::Local { id: done.id, ok }, now, local_tx);
    }

    fn on_cloud(&mut self, payload: &[u8], local_tx: &mpsc::Sender<LocalDone>) {
        let Some(id) = cloud::response_id(payload) else {
            tracing::warn!(
                bytes = payload.len(),
                "A detection response without an id was ignored."
            );
            return;
        };
        if let Some((pid, sent, src)) = self.probe.clone().filter(|(p, ..)| *p == id) {
            // The breaker's probe: only whether it is a usable answer matters.
            self.probe = None;
            let ok = cloud::parse_response(payload, sent, src).map(|_| ());
            if let Err(e) = &ok {
                tracing::debug!(request = %pid, error = %e, "The cloud detector's probe answer is not usable.");
            }
            let now = self.now();
            self.feed(Input::Cloud { id: pid, ok }, now, local_tx);
            return;
        }
        let Some(svc) = self.serving_mut(&id) else {
            tracing::debug!(request = %id, "A detection response for no current request was ignored.");
            return;
        };
        let Some((_, w, h)) = svc.cloud_sent else {
            return;
        };
        let Some(f) = svc.frame.as_ref() else {
            return;
        };
        let ok = match cloud::parse_response(payload, (w, h), (f.rgb.width, f.rgb.height)) {
            Ok(a) => {
                svc.cloud = Some((a, Instant::now()));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(request = %id, error = %e, "The cloud detector's answer is not usable.");
                Err(e)
            }
        };
        let now = self.now();
        self.feed(Input::Cloud { id, ok }, now, local_tx);
    }

    fn on_camera_info(&mut self, cdr: &Bytes) {
        match decode_to_value(&self.schemas.camera_info, cdr, &DecodeOptions::default())
            .map_err(|e| e.to_string())
            .and_then(|v| Intrinsics::from_camera_info(&v))
        {
            Ok(k) => {
                if self.intrinsics.is_none() {
                    tracing::debug!("The camera's intrinsics are known: detections get 3D positions from now on.");
                }
                self.intrinsics = Some(k);
            }
            Err(e) => {
                if self.intrinsics.is_none() && !self.warned_depth {
                    self.warned_depth = true;
                    tracing::warn!(error = %e, "CameraInfo not usable; no depth positioning.");
                }
            }
        }
    }

    fn publish_status(&self, s: &Status) {
        let v = json!({
            "header": {"stamp": crate::clock::ros_stamp_now(), "frame_id": ""},
            "request_flag": s.request_flag,
            "request_id": s.request_id,
            "state": s.state.as_str(),
            "last_source": s.last_source.map_or(0, |x| x as u8),
            "error": s.error,
        });
        self.publish_ros(&self.status_pub, &self.schemas.status, &v, "status");
    }

    fn publish_ros(&self, p: &Arc<dyn RawPublisher>, schema: &MsgSchema, v: &Value, what: &str) {
        match encode_value(schema, v, &EncodeOptions::default()) {
            Ok(cdr) => {
                if let Err(e) = p.publish(&Bytes::from(cdr)) {
                    tracing::warn!(error = %e, "Detection {what} not published.");
                }
            }
            Err(e) => tracing::error!(error = %e, "Detection {what} cannot be encoded."),
        }
    }

    fn publish_answer(&mut self, id: &str, source: Source) {
        // (Neither can happen: an answer needs the request in service and its frame. A
        // caller waiting for it is told all the same, rather than left waiting.)
        let Some(svc) = self.in_service.take().filter(|s| s.req.id == id) else {
            self.answer_caller(
                id,
                entry::failure(id, "the request was no longer in service"),
            );
            return;
        };
        let Some(f) = svc.frame.clone() else {
            self.answer_caller(id, entry::failure(id, "no camera frame was taken"));
            return;
        };
        let (found, model) = match source {
            Source::Cloud => svc
                .cloud
                .as_ref()
                .map(|(a, _)| {
                    (
                        a.found.clone(),
                        a.model_version.clone().unwrap_or_else(|| "cloud".into()),
                    )
                })
                .unwrap_or_default(),
            Source::Local => svc
                .local
                .as_ref()
                .map(|(f, _, m)| (f.clone(), m.clone()))
                .unwrap_or_default(),
        };
        let header = json!({"stamp": {"sec": f.stamp_sec, "nanosec": f.stamp_nanosec}, "frame_id": f.frame_id});
        let dets: Vec<Value> = found
            .iter()
            .map(|d| {
                let [x1, y1, x2, y2] = d.bbox.map(f64::from);
                json!({
                    "header": header,
                    "results": [{"hypothesis": {"class_id": d.class_name, "score": f64::from(d.score)}}],
                    "bbox": {"center": {"position": {"x": (x1 + x2) / 2.0, "y": (y1 + y2) / 2.0}, "theta": 0.0},
                             "size_x": x2 - x1, "size_y": y2 - y1},
                    "id": id,
                })
            })
            .collect();
        let det2d = json!({"header": header, "detections": dets});
        self.publish_ros(&self.det2d_pub, &self.schemas.det2d, &det2d, "result");
        let mut positioned = None;
        let mut det3d = json!({"header": header, "detections": []});
        if svc.req.depth {
            let (n, v) = self.publish_3d(id, &f, &found, &header);
            positioned = Some(n);
            det3d = v;
        }
        let total = svc.accepted.elapsed().as_secs_f64() * 1e3;
        let mut counts = serde_json::Map::new();
        for d in &found {
            let c = counts.entry(d.class_name.clone()).or_insert(json!(0));
            *c = json!(c.as_u64().unwrap_or(0) + 1);
        }
        let since = |t: Instant| t.saturating_duration_since(svc.accepted).as_secs_f64() * 1e3;
        let mut latency = json!({"total": total, "frame": svc.frame_at.map(since)});
        if let (Source::Cloud, Some((sent, ..)), Some((_, got))) =
            (source, svc.cloud_sent, svc.cloud.as_ref())
        {
            latency["cloud"] = json!(got.saturating_duration_since(sent).as_secs_f64() * 1e3);
        }
        if let (Source::Local, Some((_, t, _))) = (source, svc.local.as_ref()) {
            latency["local"] = json!({"start": svc.local_at.map(since), "pre": t.pre_ms, "infer": t.infer_ms, "post": t.post_ms});
        }
        tracing::info!(request = %id, source = ?source, detections = found.len(), ms = total.round(), "Detection answered.");
        let deadline = self.machine.timing.deadline_of(&svc.req);
        let late_ms = (total > deadline as f64).then(|| (total - deadline as f64).ceil() as u64);
        self.stats.update(|s| {
            s.answered += 1;
            if late_ms.is_some() {
                s.late += 1;
                s.last_late_ms = late_ms;
            }
        });
        if let Some(late) = late_ms {
            if let crate::loglimit::Verdict::Log { left_out } = self.log.note("late", "") {
                let lead = self.machine.local_lead(&svc.req.scene);
                tracing::warn!(request = %id, source = ?source, deadline_ms = deadline, late_ms = late, local_lead_ms = lead,
                    "Detection answered after its deadline{}. The local model needs about {lead} ms; give requests a longer deadline or use a faster model.",
                    crate::loglimit::more(left_out));
            }
        }
        self.answer_caller(
            id,
            json!({
                "success": true,
                "request_id": id,
                "source": source as u8,
                "model": model,
                "detections": det2d,
                "detections_3d": det3d,
                "latency_ms": total,
                "late_ms": late_ms.unwrap_or(0).min(u64::from(u32::MAX)),
            }),
        );
        self.report(json!({
            "id": id,
            "scene": svc.req.scene,
            "source": source,
            "detections": found.len(),
            "counts": counts,
            "positioned": positioned,
            "model": model,
            "latency_ms": latency,
            "deadline_ms": deadline,
            "late_ms": late_ms,
        }));
    }

    /// Publishes the Detection3DArray; returns how many detections got a position, and
    /// the array.
    fn publish_3d(
        &mut self,
        id: &str,
        f: &Frame,
        found: &[Found],
        header: &Value,
    ) -> (usize, Value) {
        let depth: Option<Depth> =
            self.depth
                .as_ref()
                .and_then(|d| match frame::depth_from_image(d) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        if !self.warned_depth {
                            self.warned_depth = true;
                            tracing::warn!(error = %e, "Depth image not usable; no positions.");
                        }
                        None
                    }
                });
        let (Some(depth), Some(k)) = (depth, self.intrinsics) else {
            if !self.warned_depth {
                self.warned_depth = true;
                tracing::warn!(request = %id, "Depth positioning asked for, but no depth image or CameraInfo has arrived; publishing no positions.");
            }
            return (0, json!({"header": header, "detections": []}));
        };
        let dets: Vec<Value> = found
            .iter()
            .filter_map(|d| {
                let (p, size) = frame::position(&depth, &k, d.bbox, f.rgb.width, f.rgb.height)?;
                Some(json!({
                    "header": header,
                    "results": [{"hypothesis": {"class_id": d.class_name, "score": f64::from(d.score)},
                                 "pose": {"pose": {"position": {"x": p[0], "y": p[1], "z": p[2]},
                                                   "orientation": {"w": 1.0}}}}],
                    "bbox": {"center": {"position": {"x": p[0], "y": p[1], "z": p[2]}, "orientation": {"w": 1.0}},
                             "size": {"x": size[0], "y": size[1], "z": 0.0}},
                    "id": id,
                }))
            })
            .collect();
        let n = dets.len();
        let v = json!({"header": header, "detections": dets});
        self.publish_ros(&self.det3d_pub, &self.schemas.det3d, &v, "3D result");
        (n, v)
    }

    fn report(&self, mut v: Value) {
        v["timestamp"] = json!(now_ms());
        v["breaker"] = json!(if self.machine.breaker.is_open() {
            "open"
        } else {
            "closed"
        });
        let msg = Message::new(
            self.settings.report_topic.clone(),
            serde_json::to_vec(&v).unwrap_or_default(),
            QoS::AtLeastOnce,
        );
        let link = self.link.clone();
        tokio::spawn(async move {
            if let Err(e) = link.publish(msg, "telemetry").await {
                tracing::debug!(error = %e, "Detection report not stored.");
            }
        });
    }
}
