//! `[detect]`: the Request_object_detection service — its ROS topics, the cloud
//! detector's MQTT topics, the policy, deadlines, breaker, and the local models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::machine::{Breaker, Policy, Timing};
use crate::config::values::Dur;
use crate::config::{ConfigError, DeviceConfig};
use crate::mqtt::config::device_topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// sensor_msgs/msg/Image (rgb8, bgr8, rgba8, bgra8, mono8).
    #[default]
    Raw,
    /// sensor_msgs/msg/CompressedImage (JPEG or PNG).
    Compressed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub policy: Policy,
    /// edge_agent_msgs/msg/DetectionRequest from the robot.
    #[serde(default = "d_request_topic")]
    pub request_topic: String,
    /// The edge_agent_msgs/srv/DetectObjects service; "" serves none.
    #[serde(default = "d_entry_name")]
    pub service: String,
    /// The edge_agent_msgs/action/DetectObjects action; "" serves none.
    #[serde(default = "d_entry_name")]
    pub action: String,
    /// edge_agent_msgs/msg/DetectionStatus (transient local, so late joiners see it).
    #[serde(default = "d_status_topic")]
    pub status_topic: String,
    /// vision_msgs/msg/Detection2DArray.
    #[serde(default = "d_result_topic")]
    pub result_topic: String,
    /// vision_msgs/msg/Detection3DArray, for requests with depth positioning.
    #[serde(default = "d_result_3d_topic")]
    pub result_3d_topic: String,
    #[serde(default = "d_image_topic")]
    pub image_topic: String,
    #[serde(default)]
    pub image_kind: ImageKind,
    /// The depth image aligned to the colour image (16UC1 in mm or 32FC1 in m).
    pub depth_topic: Option<String>,
    /// sensor_msgs/msg/CameraInfo of the colour camera (needed with depth).
    pub camera_info_topic: Option<String>,
    /// The robot's pose, sent with each cloud request (its latest message, as JSON).
    pub pose_topic: Option<String>,
    /// The type on `pose_topic`.
    #[serde(default = "d_pose_type")]
    pub pose_type: String,
    /// A `std_srvs/srv/SetBool` service that switches the camera on (true) for a
    /// request and off (false) when nothing is left to serve.
    pub camera_service: Option<String>,
    /// How the robot's middleware carries service calls: `fastrtps` or `cyclonedds`.
    #[serde(default)]
    pub camera_service_rmw: crate::ros::transport::ServiceRmw,
    /// Frames straight from a V4L2 camera instead of `image_topic` (cargo feature
    /// `v4l2`), for robots without a camera driver node.
    pub v4l2: Option<V4l2Config>,
    /// A frame this recent when a request arrives is used at once; else the next one.
    #[serde(default = "d_frame_max_age")]
    pub frame_max_age: Dur,
    #[serde(default = "d_deadline")]
    pub deadline: Dur,
    #[serde(default = "d_frame_timeout")]
    pub frame_timeout: Dur,
    /// What the local model takes here; cloud-first starts it this long before the
    /// deadline.
    #[serde(default = "d_expected_local")]
    pub expected_local: Dur,
    #[serde(default = "d_local_timeout")]
    pub local_timeout: Dur,
    #[serde(default = "d_max_queued")]
    pub max_queued: usize,
    /// Cloud failures in a row that open the breaker.
    #[serde(default = "d_breaker_failures")]
    pub breaker_failures: u32,
    /// While open, one request this often still asks the cloud.
    #[serde(default = "d_breaker_probe")]
    pub breaker_probe: Dur,
    #[serde(default = "d_cloud_request_topic")]
    pub cloud_request_topic: String,
    #[serde(default = "d_cloud_response_topic")]
    pub cloud_response_topic: String,
    /// Each result (counts per class, source, latency, model) for the platform.
    #[serde(default = "d_report_topic")]
    pub report_topic: String,
    #[serde(default = "d_jpeg_quality")]
    pub jpeg_quality: u8,
    /// Largest JPEG sent (bytes); 0: the broker's packet limit minus room for the rest.
    #[serde(default)]
    pub max_jpeg_bytes: usize,
    /// The model for scenes without their own. Relative paths are looked up in the
    /// active OTA slot first, then next to this file.
    pub model: Option<PathBuf>,
    /// Scene -> model.
    #[serde(default)]
    pub models: BTreeMap<String, PathBuf>,
    #[serde(default = "d_conf")]
    pub conf: f32,
    #[serde(default = "d_iou")]
    pub iou: f32,
    #[serde(default = "d_max_det")]
    pub max_det: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [detect] key has a default")
    }
}

fn d_pose_type() -> String {
    "geometry_msgs/msg/PoseStamped".into()
}
fn d_image_topic() -> String {
    "/camera/color/image_raw".into()
}
fn d_request_topic() -> String {
    "/edge_agent/detect/request".into()
}
fn d_entry_name() -> String {
    "/edge_agent/detect_objects".into()
}
fn d_status_topic() -> String {
    "/edge_agent/detect/status".into()
}
fn d_result_topic() -> String {
    "/edge_agent/detect/detections".into()
}
fn d_result_3d_topic() -> String {
    "/edge_agent/detect/detections_3d".into()
}
fn d_frame_max_age() -> Dur {
    Dur(Duration::from_millis(200))
}
fn d_deadline() -> Dur {
    Dur(Duration::from_millis(1500))
}
fn d_frame_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn d_expected_local() -> Dur {
    Dur(Duration::from_millis(300))
}
fn d_local_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
const fn d_max_queued() -> usize {
    4
}
const fn d_breaker_failures() -> u32 {
    3
}
fn d_breaker_probe() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_cloud_request_topic() -> String {
    "/${productKey}/${deviceName}/user/detect/request".into()
}
fn d_cloud_response_topic() -> String {
    "/${productKey}/${deviceName}/user/detect/response".into()
}
fn d_report_topic() -> String {
    "/${productKey}/${deviceName}/user/detect/result".into()
}
const fn d_jpeg_quality() -> u8 {
    80
}
const fn d_conf() -> f32 {
    0.25
}
const fn d_iou() -> f32 {
    0.45
}
const fn d_max_det() -> usize {
    super::yolo::DEFAULT_MAX_DET
}

/// `[detect.v4l2]`: the camera device and the mode asked of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Config {
    pub device: String,
    #[serde(default = "d_v4l2_width")]
    pub width: u32,
    #[serde(default = "d_v4l2_height")]
    pub height: u32,
    #[serde(default = "d_v4l2_fps")]
    pub fps: u32,
    #[serde(default = "d_v4l2_frame_id")]
    pub frame_id: String,
}

fn d_v4l2_width() -> u32 {
    640
}
fn d_v4l2_height() -> u32 {
    480
}
fn d_v4l2_fps() -> u32 {
    30
}
fn d_v4l2_frame_id() -> String {
    "camera".into()
}

/// `[detect]` after validation.
#[derive(Debug, Clone)]
pub struct DetectSettings {
    pub policy: Policy,
    pub timing: Timing,
    pub breaker_failures: u32,
    pub breaker_probe_ms: u64,
    pub request_topic: String,
    /// The DetectObjects service and action, when served.
    pub service: Option<String>,
    pub action: Option<String>,
    pub status_topic: String,
    pub result_topic: String,
    pub result_3d_topic: String,
    pub image_topic: String,
    pub image_kind: ImageKind,
    pub depth_topic: Option<String>,
    pub camera_info_topic: Option<String>,
    pub frame_max_age: Duration,
    pub camera_service: Option<String>,
    pub camera_service_rmw: crate::ros::transport::ServiceRmw,
    /// Frames from a V4L2 camera instead of `image_topic`.
    pub v4l2: Option<super::v4l2::V4l2Settings>,
    /// Topic and type of the robot's pose.
    pub pose: Option<(String, String)>,
    pub cloud_request_topic: String,
    pub cloud_response_topic: String,
    pub report_topic: String,
    pub jpeg_quality: u8,
    pub max_jpeg_bytes: usize,
    /// "" for the default model.
    pub models: BTreeMap<String, PathBuf>,
    /// Folder relative model paths fall back to.
    pub base_dir: PathBuf,
    pub post: super::yolo::PostParams,
}

impl DetectSettings {
    pub fn breaker(&self) -> Breaker {
        Breaker::new(self.breaker_failures, self.breaker_probe_ms)
    }

    /// Where the model of `scene` is: the active OTA slot holds relative paths first.
    pub fn model_path(&self, scene: &str, slot: Option<&Path>) -> Option<PathBuf> {
        let p = self.models.get(scene).or_else(|| self.models.get(""))?;
        if p.is_absolute() {
            return Some(p.clone());
        }
        if let Some(s) = slot {
            let in_slot = s.join(p);
            if in_slot.exists() {
                return Some(in_slot);
            }
        }
        Some(self.base_dir.join(p))
    }
}

fn invalid(key: &str, value: impl std::fmt::Display, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

fn ms(d: Dur) -> u64 {
    d.0.as_millis().min(u128::from(u64::MAX)) as u64
}

fn ros_topic(key: &str, t: &str) -> Result<String, ConfigError> {
    let ok = t.starts_with('/')
        && t.len() > 1
        && !t.ends_with('/')
        && t[1..].split('/').all(crate::ros::config::valid_node_name);
    if ok {
        Ok(t.to_owned())
    } else {
        Err(invalid(
            key,
            format!("{t:?}"),
            "must be an absolute ROS topic such as /camera/image_raw",
        ))
    }
}

impl DetectConfig {
    pub fn resolve(
        &self,
        device: &DeviceConfig,
        base: &Path,
        ota_enabled: bool,
    ) -> Result<Option<DetectSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let mut models = BTreeMap::new();
        if let Some(m) = &self.model {
            models.insert(String::new(), m.clone());
        }
        for (scene, m) in &self.models {
            if scene.is_empty() {
                return Err(invalid("detect.models", "\"\"", "a scene needs a name"));
            }
            models.insert(scene.clone(), m.clone());
        }
        if self.policy != Policy::CloudOnly && models.is_empty() {
            return Err(invalid(
                "detect.model",
                "(none)",
                "a local model is needed unless policy = \"cloud-only\"",
            ));
        }
        for (scene, m) in &models {
            // A relative path may appear with the first OTA package; otherwise it must exist.
            let found = if m.is_absolute() {
                m.exists()
            } else {
                base.join(m).exists() || ota_enabled
            };
            if !found {
                let key = if scene.is_empty() {
                    "detect.model".to_owned()
                } else {
                    format!("detect.models.{scene}")
                };
                return Err(invalid(
                    &key,
                    format!("{:?}", m.display().to_string()),
                    "does not exist",
                ));
            }
        }
        let post = super::yolo::PostParams {
            conf: self.conf,
            iou: self.iou,
            max_det: self.max_det,
        };
        if let Some((name, value, why)) = post.out_of_range() {
            return Err(invalid(&format!("detect.{name}"), value, why));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(invalid(
                "detect.jpeg_quality",
                self.jpeg_quality,
                "must be between 1 and 100",
            ));
        }
        if self.deadline.0 < Duration::from_millis(10) {
            return Err(invalid(
                "detect.deadline",
                format!("{:?}", self.deadline),
                "must be at least 10ms",
            ));
        }
        if self.depth_topic.is_some() != self.camera_info_topic.is_some() {
            return Err(invalid(
                "detect.depth_topic",
                format!("{:?}", self.depth_topic),
                "depth positioning needs both depth_topic and camera_info_topic",
            ));
        }
        let v4l2 = match &self.v4l2 {
            None => None,
            Some(v) => {
                if !cfg!(feature = "v4l2") {
                    return Err(invalid(
                        "detect.v4l2.device",
                        format!("{:?}", v.device),
                        "this build has no V4L2 capture; rebuild with `cargo build --release --features v4l2`, or publish the camera on image_topic with a driver node",
                    ));
                }
                super::v4l2::device_index(&v.device)
                    .map_err(|e| invalid("detect.v4l2.device", format!("{:?}", v.device), &e))?;
                if self.camera_service.is_some() {
                    return Err(invalid(
                        "detect.camera_service",
                        format!("{:?}", self.camera_service),
                        "with detect.v4l2 the agent opens and closes the camera itself; remove camera_service",
                    ));
                }
                if v.width == 0 || v.height == 0 || v.fps == 0 {
                    return Err(invalid(
                        "detect.v4l2",
                        format!("{}x{} at {} fps", v.width, v.height, v.fps),
                        "width, height and fps must be above 0",
                    ));
                }
                Some(super::v4l2::V4l2Settings {
                    device: v.device.clone(),
                    width: v.width,
                    height: v.height,
                    fps: v.fps,
                    frame_id: v.frame_id.clone(),
                })
            }
        };
        let opt_topic =
            |key: &str, t: &Option<String>| t.as_deref().map(|t| ros_topic(key, t)).transpose();
        Ok(Some(DetectSettings {
            policy: self.policy,
            timing: Timing {
                default_deadline_ms: ms(self.deadline),
                frame_timeout_ms: ms(self.frame_timeout),
                expected_local_ms: ms(self.expected_local),
                local_timeout_ms: ms(self.local_timeout),
                max_queued: self.max_queued,
            },
            breaker_failures: self.breaker_failures.max(1),
            breaker_probe_ms: ms(self.breaker_probe),
            request_topic: ros_topic("detect.request_topic", &self.request_topic)?,
            service: (!self.service.is_empty())
                .then(|| ros_topic("detect.service", &self.service))
                .transpose()?,
            action: (!self.action.is_empty())
                .then(|| ros_topic("detect.action", &self.action))
                .transpose()?,
            status_topic: ros_topic("detect.status_topic", &self.status_topic)?,
            result_topic: ros_topic("detect.result_topic", &self.result_topic)?,
            result_3d_topic: ros_topic("detect.result_3d_topic", &self.result_3d_topic)?,
            image_topic: ros_topic("detect.image_topic", &self.image_topic)?,
            depth_topic: opt_topic("detect.depth_topic", &self.depth_topic)?,
            camera_info_topic: opt_topic("detect.camera_info_topic", &self.camera_info_topic)?,
            frame_max_age: self.frame_max_age.0,
            camera_service: opt_topic("detect.camera_service", &self.camera_service)?,
            camera_service_rmw: self.camera_service_rmw,
            image_kind: if v4l2.is_some() {
                ImageKind::Raw
            } else {
                self.image_kind
            },
            v4l2,
            pose: opt_topic("detect.pose_topic", &self.pose_topic)?
                .map(|t| (t, self.pose_type.clone())),
            cloud_request_topic: device_topic(
                "detect.cloud_request_topic",
                &self.cloud_request_topic,
                device,
            )?,
            cloud_response_topic: device_topic(
                "detect.cloud_response_topic",
                &self.cloud_response_topic,
                device,
            )?,
            report_topic: device_topic("detect.report_topic", &self.report_topic, device)?,
            jpeg_quality: self.jpeg_quality,
            max_jpeg_bytes: self.max_jpeg_bytes,
            models,
            base_dir: base.to_path_buf(),
            post: super::yolo::PostParams {
                conf: self.conf,
                iou: self.iou,
                max_det: self.max_det,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    const BASE: &str =
        "[device]\nproduct_key = \"pk\"\ndevice_name = \"robot-1\"\n[mqtt]\nhost = \"localhost\"\n";

    fn check(detect: &str) -> Result<crate::config::Settings, String> {
        AgentConfig::parse(
            &format!("{BASE}[detect]\nenabled = true\n{detect}"),
            "t.toml",
        )
        .map_err(|e| e.to_string())?
        .validate()
        .map_err(|e| e.to_string())
    }

    #[test]
    fn v4l2_camera_keys() {
        let base = "policy = \"cloud-only\"\n";
        let e = check(&format!("{base}[detect.v4l2]\ndevice = \"/dev/video0\"\n")).map(|_| ());
        if cfg!(feature = "v4l2") {
            e.expect("a V4L2 camera in a v4l2 build");
            let e = check(&format!("{base}[detect.v4l2]\ndevice = \"/dev/sda\"\n")).unwrap_err();
            assert!(
                e.contains("detect.v4l2.device") && e.contains("/dev/video0"),
                "{e}"
            );
            let e = check(&format!(
                "{base}camera_service = \"/cam/on\"\n[detect.v4l2]\ndevice = \"/dev/video0\"\n"
            ))
            .unwrap_err();
            assert!(e.contains("remove camera_service"), "{e}");
        } else {
            let e = e.unwrap_err();
            assert!(
                e.contains("detect.v4l2.device") && e.contains("--features v4l2"),
                "{e}"
            );
        }
        let e = check(&format!(
            "{base}[detect.v4l2]\ndevice = \"/dev/video0\"\nzoom = 2\n"
        ))
        .unwrap_err();
        assert!(e.contains("zoom"), "{e}");
    }

    #[test]
    fn detect_keys_are_checked_with_names() {
        let e = check("").unwrap_err();
        assert!(
            e.starts_with("detect.model = (none) is not valid: a local model is needed"),
            "{e}"
        );
        let s = check("policy = \"cloud-only\"\n").unwrap();
        let d = s.detect.unwrap();
        assert_eq!(d.cloud_request_topic, "/pk/robot-1/user/detect/request");
        assert_eq!(d.timing.default_deadline_ms, 1500);
        let e = check("model = \"/nonexistent/m.onnx\"\n").unwrap_err();
        assert!(
            e.contains("detect.model = \"/nonexistent/m.onnx\" is not valid: does not exist"),
            "{e}"
        );
        let e = check("policy = \"cloud-only\"\ndepth_topic = \"/d\"\n").unwrap_err();
        assert!(
            e.contains("needs both depth_topic and camera_info_topic"),
            "{e}"
        );
        let e = check("policy = \"cloud-only\"\nimage_topic = \"camera\"\n").unwrap_err();
        assert!(
            e.starts_with("detect.image_topic = \"camera\" is not valid"),
            "{e}"
        );
        let e = check("policy = \"fastest\"\n").unwrap_err();
        assert!(e.contains("unknown variant `fastest`"), "{e}");
        let e = check("policy = \"cloud-only\"\nconf = 2.0\n").unwrap_err();
        assert!(e.starts_with("detect.conf = 2 is not valid"), "{e}");
        let e = check("policy = \"cloud-only\"\nmax_det = 0\n").unwrap_err();
        assert!(e.starts_with("detect.max_det = 0 is not valid"), "{e}");
        let e = check("policy = \"cloud-only\"\n[onnx]\nthreads = 10000\n").unwrap_err();
        assert!(e.starts_with("onnx.threads = 10000 is not valid"), "{e}");
        assert!(AgentConfig::parse(BASE, "t")
            .unwrap()
            .validate()
            .unwrap()
            .detect
            .is_none());
    }
}
