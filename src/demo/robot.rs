//! The simulated picking robot: a ROS 2 node of its own (a second DDS participant) that
//! publishes what a robot publishes — GPS along an orchard row, the arm's joints and
//! pose, battery, temperature and humidity, its status, camera frames — and asks for a
//! detection at every tree.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::scene;
use super::DemoState;
use crate::ros::codec::{decode_to_value, encode_value, DecodeOptions, EncodeOptions};
use crate::ros::transport::{Qos, RawPublisher, Transport};
use crate::ros::{Registry, TypeName};

struct Pub {
    p: Arc<dyn RawPublisher>,
    schema: Arc<crate::ros::MsgSchema>,
}

impl Pub {
    fn new(
        t: &dyn Transport,
        reg: &Registry,
        topic: &str,
        ty: &str,
        qos: Qos,
    ) -> anyhow::Result<Self> {
        let schema = reg.schema(ty)?;
        let p = t.publisher(topic, &TypeName::parse(ty)?, schema.clone(), qos)?;
        Ok(Pub { p, schema })
    }

    fn send(&self, v: &Value) {
        if let Ok(cdr) = encode_value(&self.schema, v, &EncodeOptions::default()) {
            let _ = self.p.publish(&Bytes::from(cdr));
        }
    }
}

/// Runs until `shutdown`. A detection request goes out every `request_every`; the tree
/// in front of the camera changes with each request.
pub async fn run(
    transport: Arc<dyn Transport>,
    registry: Arc<Registry>,
    request_every: Duration,
    state: Arc<DemoState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let t = transport.as_ref();
    let r = registry.as_ref();
    let gps = Pub::new(
        t,
        r,
        "/gps/fix",
        "sensor_msgs/msg/NavSatFix",
        Qos::ros_default(),
    )?;
    let pose = Pub::new(
        t,
        r,
        "/arm/pose",
        "geometry_msgs/msg/PoseStamped",
        Qos::ros_default(),
    )?;
    let joints = Pub::new(
        t,
        r,
        "/arm/joint_states",
        "sensor_msgs/msg/JointState",
        Qos::ros_default(),
    )?;
    let battery = Pub::new(
        t,
        r,
        "/battery/state",
        "sensor_msgs/msg/BatteryState",
        Qos::ros_default(),
    )?;
    let temp = Pub::new(
        t,
        r,
        "/environment/temperature",
        "sensor_msgs/msg/Temperature",
        Qos::ros_default(),
    )?;
    let hum = Pub::new(
        t,
        r,
        "/environment/humidity",
        "sensor_msgs/msg/RelativeHumidity",
        Qos::ros_default(),
    )?;
    let status = Pub::new(
        t,
        r,
        "/robot/status",
        "edge_agent_msgs/msg/RobotStatus",
        Qos::ros_default(),
    )?;
    let camera = Pub::new(
        t,
        r,
        "/camera/color/image_raw",
        "sensor_msgs/msg/Image",
        Qos::sensor_data(),
    )?;
    let request = Pub::new(
        t,
        r,
        "/edge_agent/detect/request",
        "edge_agent_msgs/msg/DetectionRequest",
        Qos::ros_default(),
    )?;

    // What comes back: detection results and the detection status.
    let (det_tx, mut det_rx) = mpsc::channel(16);
    let det_ty = "vision_msgs/msg/Detection2DArray";
    t.subscribe(
        "/edge_agent/detect/detections",
        &TypeName::parse(det_ty)?,
        r.schema(det_ty)?,
        Qos::ros_default(),
        det_tx,
    )?;
    let (st_tx, mut st_rx) = mpsc::channel(64);
    let st_ty = "edge_agent_msgs/msg/DetectionStatus";
    let st_schema = r.schema(st_ty)?;
    t.subscribe(
        "/edge_agent/detect/status",
        &TypeName::parse(st_ty)?,
        st_schema.clone(),
        crate::ros::transport::Qos {
            reliability: crate::ros::transport::Reliability::Reliable,
            durability: crate::ros::transport::Durability::TransientLocal,
            depth: 10,
        },
        st_tx,
    )?;
    // Commands from the cloud land on these topics; the robot counts them.
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    for (topic, ty) in [
        ("/cmd_vel", "geometry_msgs/msg/Twist"),
        ("/robot/mode", "std_msgs/msg/String"),
        ("/arm/target_pose", "geometry_msgs/msg/PoseStamped"),
    ] {
        t.subscribe(
            topic,
            &TypeName::parse(ty)?,
            r.schema(ty)?,
            Qos::ros_default(),
            cmd_tx.clone(),
        )?;
    }
    let det_schema = r.schema(det_ty)?;

    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n: u64 = 0;
    let mut tree: u64 = 1;
    let mut next_request = start + Duration::from_secs(2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            Some(s) = det_rx.recv() => {
                if let Ok(v) = decode_to_value(&det_schema, &s.cdr, &DecodeOptions::default()) {
                    let found = v["detections"].as_array().map_or(0, Vec::len);
                    state.detection_result(found);
                }
            }
            Some(_) = cmd_rx.recv() => {
                state.commands.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some(s) = st_rx.recv() => {
                if let Ok(v) = decode_to_value(&st_schema, &s.cdr, &DecodeOptions::default()) {
                    state.detection_status(&v);
                }
            }
            _ = tick.tick() => {
                n += 1;
                let request_now = tokio::time::Instant::now() >= next_request;
                if request_now {
                    // The arm reaches the next tree: its picture first, then the request.
                    tree += 1;
                }
                let el = start.elapsed().as_secs_f64();
                let st = crate::clock::ros_stamp_now();
                // 10 Hz: the arm.
                let a = (el * 0.8).sin();
                joints.send(&json!({"header": {"stamp": st, "frame_id": "arm_base"},
                    "name": ["shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3"],
                    "position": [a * 0.6, -0.8 + a * 0.3, 1.2 - a * 0.4, a * 0.2, 1.57, a],
                    "velocity": [0.48 * a, 0.0, 0.0, 0.0, 0.0, 0.0], "effort": []}));
                pose.send(&json!({"header": {"stamp": st, "frame_id": "arm_base"},
                    "pose": {"position": {"x": 0.55 + 0.1 * a, "y": 0.1 * (el * 0.5).cos(), "z": 1.2 + 0.05 * a},
                             "orientation": {"w": 1.0}}}));
                if n.is_multiple_of(2) || request_now {
                    // 5 Hz: GPS, creeping along the row at 0.3 m/s.
                    gps.send(&json!({"header": {"stamp": st, "frame_id": "gps"},
                        "status": {"status": 2, "service": 1},
                        "latitude": 30.274085 + el * 0.3 / 111_000.0, "longitude": 120.155070 + 0.000002 * (el * 0.1).sin(),
                        "altitude": 12.5, "position_covariance_type": 2}));
                    // The camera: the tree in front of the arm.
                    let px = scene::render(tree, n);
                    camera.send(&json!({"header": {"stamp": st, "frame_id": "camera_color_optical_frame"},
                        "height": scene::HEIGHT, "width": scene::WIDTH, "encoding": "rgb8",
                        "step": scene::WIDTH * 3,
                        "data": base64::engine::general_purpose::STANDARD.encode(px)}));
                }
                if n.is_multiple_of(10) {
                    // 1 Hz: battery, environment, status.
                    let pct = (0.97 - el / 7200.0).max(0.05);
                    battery.send(&json!({"header": {"stamp": st}, "voltage": 46.0 + 4.0 * pct,
                        "current": -6.5, "percentage": pct, "power_supply_status": 2, "present": true}));
                    temp.send(&json!({"header": {"stamp": st, "frame_id": "cabinet"},
                        "temperature": 24.0 + 1.5 * (el / 60.0).sin(), "variance": 0.01}));
                    hum.send(&json!({"header": {"stamp": st, "frame_id": "cabinet"},
                        "relative_humidity": 0.62 + 0.03 * (el / 90.0).cos(), "variance": 0.0001}));
                    status.send(&json!({"header": {"stamp": st}, "state": 2, "mode": "auto",
                        "fruits_picked": state.fruits(), "working_time_s": el, "row_id": "row-07"}));
                }
                if request_now {
                    next_request += request_every;
                    let id = format!("tree-{tree}");
                    state.requested();
                    request.send(&json!({"request_id": id, "scene": "day", "deadline_ms": 1500}));
                }
            }
        }
    }
}
