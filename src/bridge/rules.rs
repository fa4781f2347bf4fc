//! Mapping rules: which ROS 2 topics go to which MQTT topics and how, and which cloud
//! commands go back onto ROS 2. Rules live in TOML files (one per concern) under
//! `msg_mappings/`; they are checked when the agent starts, with errors that name the
//! file, the rule and the key.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::values::{Dur, TopicTemplate};
use crate::config::DeviceConfig;
use crate::mqtt::QoS;
use crate::ros::msgdef::ArrayKind;
use crate::ros::schema::{Elem, MsgSchema};
use crate::ros::transport::{Durability, Qos, Reliability, ServiceRmw};
use crate::ros::{Registry, TypeName};

#[derive(Debug, thiserror::Error)]
#[error("{file}: rule '{rule}': {key}: {message}")]
pub struct RuleError {
    pub file: String,
    pub rule: String,
    pub key: String,
    pub message: String,
}

/// QoS as written in a rule: a profile name, or the three policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum QosSetting {
    /// "default", "sensor-data" or "auto" (copy the discovered publisher's).
    Named(String),
    Explicit {
        reliability: Reliability,
        #[serde(default = "volatile")]
        durability: Durability,
        #[serde(default = "ten")]
        depth: usize,
    },
}

const fn volatile() -> Durability {
    Durability::Volatile
}
const fn ten() -> usize {
    10
}

impl Default for QosSetting {
    fn default() -> Self {
        QosSetting::Named("default".into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Envelope {
    /// The message JSON as it is.
    #[default]
    Raw,
    /// Alibaba Cloud property post: `{"id","version":"1.0","params":{…},"method":"thing.event.property.post"}`.
    Alink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MetaPlacement {
    #[default]
    None,
    /// Added to the JSON payload (`_ts` in ms, `_type`).
    Field,
    /// As MQTT 5 user properties (`ts`, `ros_type`); ignored on MQTT 3.1.1.
    Property,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    Jpeg,
    Png,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ImagePayload {
    /// Binary on MQTT 5 (with a content type), base64 in JSON on MQTT 3.1.1.
    #[default]
    Auto,
    Binary,
    Json,
}

/// `image = { … }` in a ros_to_mqtt rule for `sensor_msgs/Image` or `CompressedImage`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSettings {
    /// `jpeg` for rgb8/bgr8/mono8; `png` for 16UC1 depth (and any of those).
    pub format: Option<ImageFormat>,
    #[serde(default = "default_quality")]
    pub quality: u8,
    /// Scale down to at most this width (keeping the aspect ratio).
    pub max_width: Option<u32>,
    #[serde(default)]
    pub payload: ImagePayload,
}

const fn default_quality() -> u8 {
    80
}

/// `[[ros_to_mqtt]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosToMqttRaw {
    pub name: String,
    pub ros_topic: String,
    pub ros_type: String,
    #[serde(default)]
    pub qos: QosSetting,
    /// Template: `${productKey}`, `${deviceName}`, `${ros_topic}` (without the leading
    /// slash), `${name}`.
    pub mqtt_topic: String,
    #[serde(default = "qos1")]
    pub mqtt_qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default = "telemetry")]
    pub class: String,
    /// At most this many messages per second; the newest value is kept in between.
    pub max_rate_hz: Option<f64>,
    #[serde(default)]
    pub envelope: Envelope,
    /// With the alink envelope: put the message under this property name.
    pub params_key: Option<String>,
    /// Only these fields (dot paths, e.g. `pose.position`).
    pub fields: Option<Vec<String>>,
    /// New names for fields (path -> name).
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub timestamp: MetaPlacement,
    #[serde(default)]
    pub type_name: MetaPlacement,
    pub image: Option<ImageSettings>,
}

const fn qos1() -> u8 {
    1
}
fn telemetry() -> String {
    "telemetry".into()
}

/// `[[mqtt_to_ros]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttToRosRaw {
    pub name: String,
    /// Template; may end in a wildcard (`+`, `#`).
    pub mqtt_topic: String,
    pub ros_topic: String,
    pub ros_type: String,
    #[serde(default)]
    pub qos: QosSetting,
    /// Missing fields are an error instead of taking defaults.
    #[serde(default)]
    pub strict: bool,
    /// `alink`: the message is the `params` member of an Alink request.
    #[serde(default)]
    pub envelope: Envelope,
    /// Where errors about bad commands go.
    #[serde(default = "default_error_topic")]
    pub error_topic: String,
    /// A command older than this is not carried out (it is answered on error_topic):
    /// a robot must not act on a command queued while it was out of coverage. Its age is
    /// taken from `timestamp_field` when given, and counts the time the agent held it.
    pub max_age: Option<Dur>,
    /// Where in the command its time of sending is (a dot path, e.g. "ts" or
    /// "params.time"): milliseconds or seconds since the epoch, or RFC 3339 text. When it
    /// is not a field of the ROS message it is taken out before the command is converted.
    pub timestamp_field: Option<String>,
    /// How long a command waits for the ROS topic to have a subscriber (after the agent
    /// starts, its publishers take a moment to be matched) before it goes out anyway.
    #[serde(default = "default_wait_for_subscriber")]
    pub wait_for_subscriber: Dur,
}

const fn default_wait_for_subscriber() -> Dur {
    Dur::secs(10)
}

fn default_error_topic() -> String {
    "/${productKey}/${deviceName}/user/cmd/error".into()
}

/// `[[mqtt_to_service]]`: a cloud request calls a ROS 2 service; its response goes back
/// as the reply (docs/commands.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttToServiceRaw {
    pub name: String,
    /// Where requests arrive; may end in a wildcard (`+`, `#`).
    pub mqtt_topic: String,
    pub ros_service: String,
    /// `pkg/srv/Name`.
    pub ros_type: String,
    /// How the robot's middleware carries the request id: `fastrtps` or `cyclonedds`.
    #[serde(default)]
    pub rmw: ServiceRmw,
    /// `alink`: an Alink service call, `{"id","version","params":{…},"method"}`; the
    /// request is `params`.
    #[serde(default)]
    pub envelope: Envelope,
    #[serde(default)]
    pub strict: bool,
    /// Where in the request its id is (a dot path). MQTT 5 Correlation Data, when
    /// present, is the id instead.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// The id is the last level of the request's topic (Aliyun RRPC:
    /// `…/rrpc/request/<messageId>`).
    #[serde(default)]
    pub id_from_topic: bool,
    /// Where the reply goes when the request names no MQTT 5 Response Topic; `${topic}`
    /// is the request's topic and `${id}` its id.
    #[serde(default = "default_reply_topic")]
    pub reply_topic: String,
    /// Where refusals of requests without an id (or too broken to have one) go.
    #[serde(default = "default_error_topic")]
    pub error_topic: String,
    /// How long the service has to answer.
    #[serde(default = "default_call_timeout")]
    pub timeout: Dur,
    /// How long a request waits for the service to be on the ROS graph, counted from
    /// the agent's start (discovery takes a moment); later, a missing server is
    /// answered at once.
    #[serde(default = "default_wait_for_server")]
    pub wait_for_server: Dur,
    pub max_age: Option<Dur>,
    pub timestamp_field: Option<String>,
}

fn default_id_field() -> String {
    "id".into()
}

fn default_reply_topic() -> String {
    "${topic}_reply".into()
}

const fn default_call_timeout() -> Dur {
    Dur::secs(10)
}

/// Long enough for the robot's nodes, started with the agent at boot, to be up and
/// discovered; a command queued while the robot was away arrives right then.
const fn default_wait_for_server() -> Dur {
    Dur::secs(15)
}

/// `[[mqtt_to_action]]`: a cloud request sends a goal to a ROS 2 action; feedback goes
/// to the feedback topic, the result is the reply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttToActionRaw {
    pub name: String,
    pub mqtt_topic: String,
    pub ros_action: String,
    /// `pkg/action/Name`.
    pub ros_type: String,
    #[serde(default)]
    pub rmw: ServiceRmw,
    #[serde(default)]
    pub envelope: Envelope,
    #[serde(default)]
    pub strict: bool,
    #[serde(default = "default_id_field")]
    pub id_field: String,
    #[serde(default)]
    pub id_from_topic: bool,
    #[serde(default = "default_reply_topic")]
    pub reply_topic: String,
    #[serde(default = "default_feedback_topic")]
    pub feedback_topic: String,
    /// Feedback of one goal sent at most this often (the latest wins).
    #[serde(default = "default_feedback_rate")]
    pub feedback_max_rate_hz: f64,
    #[serde(default = "default_cancel_topic")]
    pub cancel_topic: String,
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    #[serde(default = "default_error_topic")]
    pub error_topic: String,
    #[serde(default = "default_goal_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_wait_for_server")]
    pub wait_for_server: Dur,
    pub max_age: Option<Dur>,
    pub timestamp_field: Option<String>,
}

fn default_feedback_topic() -> String {
    "${topic}_feedback".into()
}

fn default_cancel_topic() -> String {
    "/${productKey}/${deviceName}/user/action/${name}/cancel".into()
}

fn default_status_topic() -> String {
    "/${productKey}/${deviceName}/user/action/${name}/status".into()
}

const fn default_feedback_rate() -> f64 {
    2.0
}

const fn default_goal_timeout() -> Dur {
    Dur::secs(600)
}

/// `[[property_set]]`: an Alink property set (`thing/service/property/set`) publishes
/// each property on its own ROS topic; the reply goes to `…/set_reply`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertySetRaw {
    pub name: String,
    #[serde(default = "default_property_set_topic")]
    pub mqtt_topic: String,
    #[serde(default = "default_reply_topic")]
    pub reply_topic: String,
    #[serde(default = "default_error_topic")]
    pub error_topic: String,
    #[serde(default)]
    pub strict: bool,
    pub max_age: Option<Dur>,
    /// Where the request's time of sending is, a dot path into the Alink request
    /// (e.g. "time"); never one of the properties.
    pub timestamp_field: Option<String>,
    #[serde(default = "default_wait_for_subscriber")]
    pub wait_for_subscriber: Dur,
    pub properties: std::collections::BTreeMap<String, PropertyRaw>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertyRaw {
    pub ros_topic: String,
    pub ros_type: String,
    /// Where in the message the value goes, a dot path (e.g. "data"); without it the
    /// value is the whole message's JSON.
    pub field: Option<String>,
    #[serde(default)]
    pub qos: QosSetting,
}

fn default_property_set_topic() -> String {
    "/sys/${productKey}/${deviceName}/thing/service/property/set".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    ros_to_mqtt: Vec<RosToMqttRaw>,
    #[serde(default)]
    mqtt_to_ros: Vec<MqttToRosRaw>,
    #[serde(default)]
    mqtt_to_service: Vec<MqttToServiceRaw>,
    #[serde(default)]
    property_set: Vec<PropertySetRaw>,
    #[serde(default)]
    mqtt_to_action: Vec<MqttToActionRaw>,
}

/// How a rule's ROS QoS is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosChoice {
    Fixed(Qos),
    /// Copy the discovered publisher's, else this.
    Auto(Qos),
}

/// A field selected for the payload: its path in the message and its output name.
#[derive(Debug, Clone)]
pub struct Selected {
    pub path: Vec<String>,
    pub output: String,
}

/// What the image step does with a message.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub format: ImageFormat,
    pub quality: u8,
    pub max_width: Option<u32>,
    pub payload: ImagePayload,
    /// The message is `sensor_msgs/CompressedImage`: pass it through.
    pub compressed: bool,
}

#[derive(Debug, Clone)]
pub struct RosToMqtt {
    pub name: String,
    pub file: String,
    pub ros_topic: String,
    pub type_name: TypeName,
    pub schema: Arc<MsgSchema>,
    pub qos: QosChoice,
    pub mqtt_topic: String,
    pub mqtt_qos: QoS,
    pub retain: bool,
    pub class: String,
    pub min_interval: Option<Duration>,
    pub envelope: Envelope,
    pub params_key: Option<String>,
    pub fields: Option<Vec<Selected>>,
    /// Top-level renames when `fields` is not used.
    pub rename: std::collections::BTreeMap<String, String>,
    pub timestamp: MetaPlacement,
    pub type_meta: MetaPlacement,
    pub image: Option<ImagePlan>,
}

#[derive(Debug, Clone)]
pub struct MqttToRos {
    pub name: String,
    pub file: String,
    pub mqtt_filter: String,
    pub ros_topic: String,
    pub type_name: TypeName,
    pub schema: Arc<MsgSchema>,
    pub qos: QosChoice,
    pub strict: bool,
    pub envelope: Envelope,
    pub error_topic: String,
    pub age: AgeLimit,
    pub wait_for_subscriber: std::time::Duration,
}

/// How old a cloud command may be.
#[derive(Debug, Clone, Default)]
pub struct AgeLimit {
    pub max_age: Option<std::time::Duration>,
    /// `timestamp_field` split at the dots.
    pub timestamp_field: Option<Vec<String>>,
    /// The timestamp is not a field of the ROS message (it is taken out of the command
    /// before the command is converted, so a strict rule does not refuse it).
    pub timestamp_outside_message: bool,
}

impl AgeLimit {
    /// `in_message`: whether a timestamp path is a field of the message (it is then
    /// left in the command).
    fn compile(
        ctx: &Ctx<'_>,
        r: &str,
        max_age: Option<Dur>,
        field: Option<&str>,
        in_message: impl Fn(&[String]) -> bool,
    ) -> Result<Self, RuleError> {
        let max_age = match max_age {
            Some(d) if d.0.is_zero() => return Err(ctx.err(r, "max_age", "must be more than 0s")),
            d => d.map(|d| d.0),
        };
        let timestamp_field: Option<Vec<String>> = match field {
            Some(f) if f.is_empty() || f.split('.').any(str::is_empty) => {
                return Err(ctx.err(
                    r,
                    "timestamp_field",
                    "a dot path of field names, e.g. \"ts\"",
                ))
            }
            f => f.map(|f| f.split('.').map(str::to_owned).collect()),
        };
        let timestamp_outside_message = timestamp_field.as_deref().is_some_and(|p| !in_message(p));
        Ok(Self {
            max_age,
            timestamp_field,
            timestamp_outside_message,
        })
    }

    /// Whether `path` is a field of the message in a command of `envelope`.
    fn in_message(schema: &MsgSchema, envelope: Envelope, path: &[String]) -> bool {
        match envelope {
            Envelope::Raw => resolve_path(schema, path).is_some(),
            Envelope::Alink => {
                path.len() >= 2 && path[0] == "params" && resolve_path(schema, &path[1..]).is_some()
            }
        }
    }
}

/// A compiled `[[mqtt_to_service]]` or `[[property_set]]` rule: a cloud request with
/// an id and a reply.
#[derive(Debug, Clone)]
pub struct MqttToService {
    pub name: String,
    pub file: String,
    pub mqtt_filter: String,
    pub envelope: Envelope,
    pub strict: bool,
    /// `id_field` split at the dots.
    pub id_field: Vec<String>,
    /// The id is not a field of the request (it is taken out before conversion).
    pub id_outside_request: bool,
    pub id_from_topic: bool,
    /// The reply topic with the device filled in; `${topic}` and `${id}` are filled
    /// per request.
    pub reply_topic: TopicTemplate,
    pub error_topic: String,
    pub age: AgeLimit,
    pub target: Target,
}

/// What a request does.
#[derive(Debug, Clone)]
pub enum Target {
    /// Calls a ROS 2 service.
    Call(ServiceCall),
    /// Publishes each property of an Alink property set on its ROS topic.
    Set(PropertySet),
    /// Sends a goal to a ROS 2 action server; its result is the reply.
    Goal(ActionGoal),
}

/// A `[[mqtt_to_action]]` rule's action.
#[derive(Debug, Clone)]
pub struct ActionGoal {
    pub ros_action: String,
    /// `pkg/action/Name`.
    pub type_name: TypeName,
    pub goal: Arc<MsgSchema>,
    pub send_goal: (Arc<MsgSchema>, Arc<MsgSchema>),
    pub get_result: (Arc<MsgSchema>, Arc<MsgSchema>),
    pub feedback: Arc<MsgSchema>,
    pub cancel: (Arc<MsgSchema>, Arc<MsgSchema>),
    pub rmw: ServiceRmw,
    /// How long a goal may run before its reply says so (the goal itself goes on).
    pub timeout: Duration,
    pub wait_for_server: Duration,
    /// Where feedback goes: `${topic}` and `${id}` are the goal request's.
    pub feedback_topic: TopicTemplate,
    pub feedback_min_interval: Duration,
    /// Where cancel requests arrive (`{"id": <the goal's id>}`); answered on
    /// `<cancel_topic>_reply`.
    pub cancel_topic: String,
    /// Where status requests arrive (`{"id": <the goal's id>}`); answered on
    /// `<status_topic>_reply`.
    pub status_topic: String,
}

impl ActionGoal {
    /// The type of one of the action's services or messages, e.g. `SendGoal`.
    pub fn part(&self, part: &str) -> TypeName {
        TypeName {
            package: self.type_name.package.clone(),
            kind: "action",
            name: format!("{}_{part}", self.type_name.name),
        }
    }

    /// The name of one of the action's services or topics, e.g. `send_goal`.
    pub fn endpoint(&self, what: &str) -> String {
        format!("{}/_action/{what}", self.ros_action)
    }
}

#[derive(Debug, Clone)]
pub struct ServiceCall {
    pub ros_service: String,
    /// `pkg/srv/Name`.
    pub type_name: TypeName,
    pub request: Arc<MsgSchema>,
    pub response: Arc<MsgSchema>,
    pub rmw: ServiceRmw,
    pub timeout: Duration,
    pub wait_for_server: Duration,
}

#[derive(Debug, Clone)]
pub struct PropertySet {
    pub properties: Vec<Property>,
    pub wait_for_subscriber: Duration,
}

/// One property of a `[[property_set]]` rule.
#[derive(Debug, Clone)]
pub struct Property {
    /// The property's identifier in the platform's thing model.
    pub identifier: String,
    pub ros_topic: String,
    pub type_name: TypeName,
    pub schema: Arc<MsgSchema>,
    /// Where in the message the value goes (a dot path); without it the value is the
    /// whole message.
    pub field: Option<Vec<String>>,
    pub qos: Qos,
}

impl MqttToService {
    /// What the rule calls or sets, for messages and the status: the service, or the
    /// properties' topics.
    pub fn target_name(&self) -> String {
        match &self.target {
            Target::Call(c) => c.ros_service.clone(),
            Target::Goal(g) => g.ros_action.clone(),
            Target::Set(p) => p
                .properties
                .iter()
                .map(|p| p.ros_topic.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The reply topic for one request; `None` when the id cannot be put in a topic.
    pub fn reply_topic_for(&self, topic: &str, id: &str) -> Option<String> {
        if self.reply_topic.uses("id") && (id.is_empty() || id.contains(['/', '+', '#', '\0'])) {
            return None;
        }
        Some(self.reply_topic.render(|v| match v {
            "topic" => Some(topic.to_owned()),
            "id" => Some(id.to_owned()),
            _ => None,
        }))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub outbound: Vec<RosToMqtt>,
    pub inbound: Vec<MqttToRos>,
    pub services: Vec<MqttToService>,
    pub files: Vec<PathBuf>,
}

/// The `.toml` files of the given files and folders, sorted.
pub fn rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RuleError> {
    let mut out = Vec::new();
    for p in paths {
        let err = |m: String| RuleError {
            file: p.display().to_string(),
            rule: "-".into(),
            key: "-".into(),
            message: m,
        };
        let meta = std::fs::metadata(p).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| err(format!("cannot read: {e}")))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

struct Ctx<'a> {
    file: String,
    device: &'a DeviceConfig,
    registry: &'a Registry,
    mqtt_v5: bool,
    classes: &'a HashSet<String>,
}

impl Ctx<'_> {
    fn err(&self, rule: &str, key: &str, message: impl Into<String>) -> RuleError {
        RuleError {
            file: self.file.clone(),
            rule: rule.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn template(
        &self,
        rule: &str,
        key: &str,
        text: &str,
        extra: &[(&str, &str)],
        wildcards: bool,
    ) -> Result<String, RuleError> {
        let mut vars = vec!["productKey", "deviceName"];
        vars.extend(extra.iter().map(|(k, _)| *k));
        // Filters may end in + or #; check the template with those taken out.
        let checked = if wildcards {
            text.split('/')
                .map(|level| {
                    if level == "+" || level == "#" {
                        "w"
                    } else {
                        level
                    }
                })
                .collect::<Vec<_>>()
                .join("/")
        } else {
            text.to_owned()
        };
        TopicTemplate::parse(&checked, &vars).map_err(|e| self.err(rule, key, e))?;
        if wildcards {
            let levels: Vec<&str> = text.split('/').collect();
            if let Some(i) = levels.iter().position(|l| *l == "#") {
                if i + 1 != levels.len() {
                    return Err(self.err(
                        rule,
                        key,
                        format!("'#' must be the last level in '{text}'"),
                    ));
                }
            }
        }
        let t = TopicTemplate::parse(&checked, &vars).map_err(|e| self.err(rule, key, e))?;
        let rendered = t.render(|v| match v {
            "productKey" => Some(self.device.product_key.clone()),
            "deviceName" => Some(self.device.device_name.clone()),
            other => extra
                .iter()
                .find(|(k, _)| *k == other)
                .map(|(_, val)| (*val).to_owned()),
        });
        if !wildcards {
            return Ok(rendered);
        }
        // Put the wildcards back.
        let orig: Vec<&str> = text.split('/').collect();
        Ok(rendered
            .split('/')
            .zip(orig.iter())
            .map(|(r, o)| if *o == "+" || *o == "#" { *o } else { r })
            .collect::<Vec<_>>()
            .join("/"))
    }

    /// A reply topic: the device's names and `extra` filled in now, the request's
    /// `${topic}` and `${id}` per request.
    fn reply_template(
        &self,
        rule: &str,
        text: &str,
        extra: &[(&str, &str)],
    ) -> Result<TopicTemplate, RuleError> {
        let mut vars = vec!["productKey", "deviceName", "topic", "id"];
        vars.extend(extra.iter().map(|(k, _)| *k));
        let t = TopicTemplate::parse(text, &vars).map_err(|e| self.err(rule, "reply_topic", e))?;
        let partly = t.render(|v| match v {
            "productKey" => Some(self.device.product_key.clone()),
            "deviceName" => Some(self.device.device_name.clone()),
            "topic" | "id" => Some(format!("${{{v}}}")),
            other => extra
                .iter()
                .find(|(k, _)| *k == other)
                .map(|(_, val)| (*val).to_owned()),
        });
        TopicTemplate::parse(&partly, &["topic", "id"])
            .map_err(|e| self.err(rule, "reply_topic", e))
    }

    /// Where a request's id is: `id_field` split at the dots, and whether it is outside
    /// `request` (then taken out before conversion; an Alink id always is). With
    /// `id_from_topic` the filter must end in the id's level.
    fn request_id(
        &self,
        rule: &str,
        id_field: &str,
        id_from_topic: bool,
        mqtt_filter: &str,
        envelope: Envelope,
        request: &MsgSchema,
    ) -> Result<(Vec<String>, bool), RuleError> {
        if id_from_topic && !mqtt_filter.ends_with("/+") {
            return Err(self.err(
                rule,
                "id_from_topic",
                "needs an mqtt_topic that ends in '/+' (the id's level)",
            ));
        }
        let path: Vec<String> = id_field.split('.').map(str::to_owned).collect();
        if id_field.is_empty() || path.iter().any(String::is_empty) {
            return Err(self.err(rule, "id_field", "a dot path of field names, e.g. \"id\""));
        }
        let outside = match envelope {
            Envelope::Raw => resolve_path(request, &path).is_none(),
            // The Alink id is beside params, never in the request.
            Envelope::Alink => true,
        };
        Ok((path, outside))
    }

    fn ros_topic(&self, rule: &str, key: &str, topic: &str) -> Result<String, RuleError> {
        let ok = !topic.is_empty()
            && !topic.ends_with('/')
            && !topic.contains("//")
            && topic.trim_start_matches('/').split('/').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !l.as_bytes()[0].is_ascii_digit()
            });
        if !ok {
            return Err(self.err(
                rule,
                key,
                format!("'{topic}' is not a valid ROS 2 topic name (letters, digits and '_' between single '/', not starting with a digit)"),
            ));
        }
        Ok(topic.to_owned())
    }

    fn ros_type(
        &self,
        rule: &str,
        key: &str,
        ty: &str,
    ) -> Result<(TypeName, Arc<MsgSchema>), RuleError> {
        let t = TypeName::parse(ty).map_err(|e| self.err(rule, key, e.to_string()))?;
        let schema = self
            .registry
            .schema(ty)
            .map_err(|e| self.err(rule, key, e.to_string()))?;
        Ok((t, schema))
    }

    fn qos(&self, rule: &str, q: &QosSetting) -> Result<QosChoice, RuleError> {
        Ok(match q {
            QosSetting::Named(n) => match n.as_str() {
                "default" => QosChoice::Fixed(Qos::ros_default()),
                "sensor-data" => QosChoice::Fixed(Qos::sensor_data()),
                "auto" => QosChoice::Auto(Qos::ros_default()),
                other => {
                    return Err(self.err(
                        rule,
                        "qos",
                        format!("'{other}' is not a QoS profile: use \"default\", \"sensor-data\", \"auto\" or {{ reliability, durability, depth }}"),
                    ))
                }
            },
            QosSetting::Explicit {
                reliability,
                durability,
                depth,
            } => {
                if *depth == 0 || *depth > 10_000 {
                    return Err(self.err(rule, "qos.depth", format!("{depth} is not between 1 and 10000")));
                }
                QosChoice::Fixed(Qos {
                    reliability: *reliability,
                    durability: *durability,
                    depth: *depth,
                })
            }
        })
    }
}

fn resolve_path(schema: &MsgSchema, path: &[String]) -> Option<()> {
    let mut s = schema;
    for (i, part) in path.iter().enumerate() {
        let f = s.field(part)?;
        if i + 1 < path.len() {
            match (&f.ty.elem, f.ty.array) {
                (Elem::Msg(m), ArrayKind::Single) => s = m,
                _ => return None,
            }
        }
    }
    Some(())
}

impl RosToMqtt {
    fn compile(raw: RosToMqttRaw, ctx: &Ctx<'_>) -> Result<Self, RuleError> {
        let r = raw.name.as_str();
        let ros_topic = ctx.ros_topic(r, "ros_topic", &raw.ros_topic)?;
        let (type_name, schema) = ctx.ros_type(r, "ros_type", &raw.ros_type)?;
        let short = ros_topic.trim_start_matches('/').to_owned();
        let mqtt_topic = ctx.template(
            r,
            "mqtt_topic",
            &raw.mqtt_topic,
            &[("ros_topic", &short), ("name", r)],
            false,
        )?;
        let mqtt_qos = match raw.mqtt_qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            q => return Err(ctx.err(r, "mqtt_qos", format!("{q} is not supported: use 0 or 1"))),
        };
        if !ctx.classes.contains(&raw.class) {
            let mut known: Vec<_> = ctx.classes.iter().cloned().collect();
            known.sort();
            return Err(ctx.err(
                r,
                "class",
                format!(
                    "unknown outbox class '{}': known are {}",
                    raw.class,
                    known.join(", ")
                ),
            ));
        }
        let min_interval = match raw.max_rate_hz {
            None => None,
            Some(hz) if hz.is_finite() && hz > 0.0 && hz <= 10_000.0 => {
                Some(Duration::from_secs_f64(1.0 / hz))
            }
            Some(hz) => {
                return Err(ctx.err(r, "max_rate_hz", format!("{hz} is not between 0 and 10000")))
            }
        };
        if raw.params_key.is_some() && raw.envelope != Envelope::Alink {
            return Err(ctx.err(r, "params_key", "is only used with envelope = \"alink\""));
        }
        let fields = match &raw.fields {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return Err(ctx.err(r, "fields", "is empty; remove it to send every field"));
                }
                let mut sel = Vec::new();
                for f in list {
                    let path: Vec<String> = f.split('.').map(str::to_owned).collect();
                    if resolve_path(&schema, &path).is_none() {
                        return Err(ctx.err(r, "fields", format!("'{f}' is not a field of {} (nested fields are written a.b.c, through messages only)", schema.name)));
                    }
                    let output = raw
                        .rename
                        .get(f)
                        .cloned()
                        .unwrap_or_else(|| f.replace('.', "_"));
                    sel.push(Selected { path, output });
                }
                Some(sel)
            }
        };
        if fields.is_none() {
            for k in raw.rename.keys() {
                if k.contains('.') || schema.field(k).is_none() {
                    return Err(ctx.err(r, "rename", format!("'{k}' is not a top-level field of {} (rename nested fields through `fields`)", schema.name)));
                }
            }
        } else {
            for k in raw.rename.keys() {
                if !raw.fields.as_ref().is_some_and(|l| l.contains(k)) {
                    return Err(ctx.err(r, "rename", format!("'{k}' is not in `fields`")));
                }
            }
        }
        let image = match (&raw.image, type_name.to_string().as_str()) {
            (None, _) => None,
            (Some(i), "sensor_msgs/msg/Image") => {
                if i.quality == 0 || i.quality > 100 {
                    return Err(ctx.err(
                        r,
                        "image.quality",
                        format!("{} is not between 1 and 100", i.quality),
                    ));
                }
                if i.max_width == Some(0) {
                    return Err(ctx.err(r, "image.max_width", "must be at least 1"));
                }
                Some(ImagePlan {
                    format: i.format.unwrap_or(ImageFormat::Jpeg),
                    quality: i.quality,
                    max_width: i.max_width,
                    payload: i.payload,
                    compressed: false,
                })
            }
            (Some(i), "sensor_msgs/msg/CompressedImage") => Some(ImagePlan {
                format: i.format.unwrap_or(ImageFormat::Jpeg),
                quality: i.quality,
                max_width: None,
                payload: i.payload,
                compressed: true,
            }),
            (Some(_), other) => {
                return Err(ctx.err(
                    r,
                    "image",
                    format!("is for sensor_msgs/msg/Image and CompressedImage, not {other}"),
                ))
            }
        };
        if image.is_some() && (raw.fields.is_some() || raw.envelope == Envelope::Alink) {
            return Err(ctx.err(
                r,
                "image",
                "cannot be combined with `fields` or the alink envelope",
            ));
        }
        if image
            .as_ref()
            .is_some_and(|i| i.payload == ImagePayload::Binary)
            && !ctx.mqtt_v5
        {
            return Err(ctx.err(
                r,
                "image.payload",
                "\"binary\" needs mqtt.protocol = \"5\" (content type); use \"json\" or \"auto\"",
            ));
        }
        if (raw.timestamp == MetaPlacement::Property || raw.type_name == MetaPlacement::Property)
            && !ctx.mqtt_v5
        {
            {
                return Err(ctx.err(
                    r,
                    "timestamp",
                    "\"property\" needs mqtt.protocol = \"5\"; use \"field\"",
                ));
            }
        }
        Ok(RosToMqtt {
            qos: ctx.qos(r, &raw.qos)?,
            name: raw.name,
            file: ctx.file.clone(),
            ros_topic,
            type_name,
            schema,
            mqtt_topic,
            mqtt_qos,
            retain: raw.retain,
            class: raw.class,
            min_interval,
            envelope: raw.envelope,
            params_key: raw.params_key,
            rename: if fields.is_none() {
                raw.rename
            } else {
                Default::default()
            },
            fields,
            timestamp: raw.timestamp,
            type_meta: raw.type_name,
            image,
        })
    }
}

impl MqttToRos {
    fn compile(raw: MqttToRosRaw, ctx: &Ctx<'_>) -> Result<Self, RuleError> {
        let r = raw.name.as_str();
        let ros_topic = ctx.ros_topic(r, "ros_topic", &raw.ros_topic)?;
        let (type_name, schema) = ctx.ros_type(r, "ros_type", &raw.ros_type)?;
        let short = ros_topic.trim_start_matches('/').to_owned();
        let mqtt_filter = ctx.template(
            r,
            "mqtt_topic",
            &raw.mqtt_topic,
            &[("ros_topic", &short), ("name", r)],
            true,
        )?;
        let error_topic = ctx.template(
            r,
            "error_topic",
            &raw.error_topic,
            &[("ros_topic", &short), ("name", r)],
            false,
        )?;
        let age = AgeLimit::compile(ctx, r, raw.max_age, raw.timestamp_field.as_deref(), |p| {
            AgeLimit::in_message(&schema, raw.envelope, p)
        })?;
        Ok(MqttToRos {
            qos: ctx.qos(r, &raw.qos)?,
            age,
            name: raw.name,
            file: ctx.file.clone(),
            mqtt_filter,
            ros_topic,
            type_name,
            schema,
            strict: raw.strict,
            envelope: raw.envelope,
            error_topic,
            wait_for_subscriber: raw.wait_for_subscriber.0,
        })
    }
}

impl MqttToService {
    fn compile(raw: MqttToServiceRaw, ctx: &Ctx<'_>) -> Result<Self, RuleError> {
        let r = raw.name.as_str();
        let ros_service = ctx.ros_topic(r, "ros_service", &raw.ros_service)?;
        let type_name =
            TypeName::parse(&raw.ros_type).map_err(|e| ctx.err(r, "ros_type", e.to_string()))?;
        if type_name.kind != "srv" {
            return Err(ctx.err(
                r,
                "ros_type",
                format!("'{}' is not a service type (pkg/srv/Name)", raw.ros_type),
            ));
        }
        let half = |h: &str| {
            ctx.registry
                .schema(&format!("{type_name}_{h}"))
                .map_err(|e| ctx.err(r, "ros_type", e.to_string()))
        };
        let (request, response) = (half("Request")?, half("Response")?);
        let short = ros_service.trim_start_matches('/').to_owned();
        let names = [("ros_service", short.as_str()), ("name", r)];
        let mqtt_filter = ctx.template(r, "mqtt_topic", &raw.mqtt_topic, &names, true)?;
        let error_topic = ctx.template(r, "error_topic", &raw.error_topic, &names, false)?;
        let reply_topic = ctx.reply_template(r, &raw.reply_topic, &names)?;
        let (id_field, id_outside_request) = ctx.request_id(
            r,
            &raw.id_field,
            raw.id_from_topic,
            &mqtt_filter,
            raw.envelope,
            &request,
        )?;
        if raw.timeout.0.is_zero() {
            return Err(ctx.err(r, "timeout", "must be more than 0s"));
        }
        let age = AgeLimit::compile(ctx, r, raw.max_age, raw.timestamp_field.as_deref(), |p| {
            AgeLimit::in_message(&request, raw.envelope, p)
        })?;
        Ok(MqttToService {
            name: raw.name,
            file: ctx.file.clone(),
            mqtt_filter,
            envelope: raw.envelope,
            strict: raw.strict,
            id_field,
            id_outside_request,
            id_from_topic: raw.id_from_topic,
            reply_topic,
            error_topic,
            age,
            target: Target::Call(ServiceCall {
                ros_service,
                type_name,
                request,
                response,
                rmw: raw.rmw,
                timeout: raw.timeout.0,
                wait_for_server: raw.wait_for_server.0,
            }),
        })
    }
}

impl MqttToService {
    fn compile_action(raw: MqttToActionRaw, ctx: &Ctx<'_>) -> Result<Self, RuleError> {
        let r = raw.name.as_str();
        let ros_action = ctx.ros_topic(r, "ros_action", &raw.ros_action)?;
        let type_name =
            TypeName::parse(&raw.ros_type).map_err(|e| ctx.err(r, "ros_type", e.to_string()))?;
        if type_name.kind != "action" || crate::ros::msgdef::is_action_part(&type_name.name) {
            return Err(ctx.err(
                r,
                "ros_type",
                format!("'{}' is not an action type (pkg/action/Name)", raw.ros_type),
            ));
        }
        let schema = |name: String| {
            ctx.registry
                .schema(&name)
                .map_err(|e| ctx.err(r, "ros_type", e.to_string()))
        };
        let part = |p: &str| schema(format!("{type_name}_{p}"));
        let goal = part("Goal")?;
        let send_goal = (part("SendGoal_Request")?, part("SendGoal_Response")?);
        let get_result = (part("GetResult_Request")?, part("GetResult_Response")?);
        let feedback = part("FeedbackMessage")?;
        let cancel = (
            schema("action_msgs/srv/CancelGoal_Request".into())?,
            schema("action_msgs/srv/CancelGoal_Response".into())?,
        );
        let short = ros_action.trim_start_matches('/').to_owned();
        let names = [("ros_action", short.as_str()), ("name", r)];
        let mqtt_filter = ctx.template(r, "mqtt_topic", &raw.mqtt_topic, &names, true)?;
        let error_topic = ctx.template(r, "error_topic", &raw.error_topic, &names, false)?;
        let cancel_topic = ctx.template(r, "cancel_topic", &raw.cancel_topic, &names, false)?;
        let status_topic = ctx.template(r, "status_topic", &raw.status_topic, &names, false)?;
        let reply_topic = ctx.reply_template(r, &raw.reply_topic, &names)?;
        let feedback_topic = ctx
            .reply_template(r, &raw.feedback_topic, &names)
            .map_err(|e| RuleError {
                key: "feedback_topic".into(),
                ..e
            })?;
        let hz = raw.feedback_max_rate_hz;
        if !(hz.is_finite() && hz > 0.0 && hz <= 1000.0) {
            return Err(ctx.err(
                r,
                "feedback_max_rate_hz",
                format!("{hz} is not between 0 and 1000"),
            ));
        }
        if raw.timeout.0.is_zero() {
            return Err(ctx.err(r, "timeout", "must be more than 0s"));
        }
        let (id_field, id_outside_request) = ctx.request_id(
            r,
            &raw.id_field,
            raw.id_from_topic,
            &mqtt_filter,
            raw.envelope,
            &goal,
        )?;
        let age = AgeLimit::compile(ctx, r, raw.max_age, raw.timestamp_field.as_deref(), |p| {
            AgeLimit::in_message(&goal, raw.envelope, p)
        })?;
        Ok(MqttToService {
            name: raw.name,
            file: ctx.file.clone(),
            mqtt_filter,
            envelope: raw.envelope,
            strict: raw.strict,
            id_field,
            id_outside_request,
            id_from_topic: raw.id_from_topic,
            reply_topic,
            error_topic,
            age,
            target: Target::Goal(ActionGoal {
                ros_action,
                type_name,
                goal,
                send_goal,
                get_result,
                feedback,
                cancel,
                rmw: raw.rmw,
                timeout: raw.timeout.0,
                wait_for_server: raw.wait_for_server.0,
                feedback_topic,
                feedback_min_interval: Duration::from_secs_f64(1.0 / hz),
                cancel_topic,
                status_topic,
            }),
        })
    }

    fn compile_set(raw: PropertySetRaw, ctx: &Ctx<'_>) -> Result<Self, RuleError> {
        let r = raw.name.as_str();
        let names = [("name", r)];
        let mqtt_filter = ctx.template(r, "mqtt_topic", &raw.mqtt_topic, &names, true)?;
        let error_topic = ctx.template(r, "error_topic", &raw.error_topic, &names, false)?;
        let reply_topic = ctx.reply_template(r, &raw.reply_topic, &names)?;
        if raw.properties.is_empty() {
            return Err(ctx.err(r, "properties", "names no property"));
        }
        let mut properties = Vec::new();
        for (id, p) in raw.properties {
            let key = |k: &str| format!("properties.{id}.{k}");
            let ros_topic = ctx.ros_topic(r, &key("ros_topic"), &p.ros_topic)?;
            let (type_name, schema) = ctx.ros_type(r, &key("ros_type"), &p.ros_type)?;
            let field = match &p.field {
                None => None,
                Some(f) => {
                    let path: Vec<String> = f.split('.').map(str::to_owned).collect();
                    if f.is_empty() || resolve_path(&schema, &path).is_none() {
                        return Err(ctx.err(
                            r,
                            &key("field"),
                            format!("'{f}' is not a field of {}", schema.name),
                        ));
                    }
                    Some(path)
                }
            };
            let qos = match ctx.qos(r, &p.qos)? {
                QosChoice::Fixed(q) | QosChoice::Auto(q) => q,
            };
            properties.push(Property {
                identifier: id,
                ros_topic,
                type_name,
                schema,
                field,
                qos,
            });
        }
        // The time is never one of the properties.
        let age = AgeLimit::compile(ctx, r, raw.max_age, raw.timestamp_field.as_deref(), |_| {
            false
        })?;
        Ok(MqttToService {
            name: raw.name,
            file: ctx.file.clone(),
            mqtt_filter,
            envelope: Envelope::Alink,
            strict: raw.strict,
            id_field: vec!["id".into()],
            id_outside_request: true,
            id_from_topic: false,
            reply_topic,
            error_topic,
            age,
            target: Target::Set(PropertySet {
                properties,
                wait_for_subscriber: raw.wait_for_subscriber.0,
            }),
        })
    }
}

/// Reads and checks every rule file. `classes` are the outbox classes that exist.
pub fn load(
    paths: &[PathBuf],
    device: &DeviceConfig,
    registry: &Registry,
    mqtt_v5: bool,
    classes: &HashSet<String>,
) -> Result<Rules, RuleError> {
    let files = rule_files(paths)?;
    let mut rules = Rules {
        files: files.clone(),
        ..Rules::default()
    };
    let mut names = HashSet::new();
    for file in &files {
        let label = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| RuleError {
            file: label.clone(),
            rule: "-".into(),
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        let parsed: RuleFile = crate::config::parse_toml(&text).map_err(|(path, e)| {
            let (line, col) = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    (
                        before.matches('\n').count() + 1,
                        before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                    )
                })
                .unwrap_or((1, 1));
            let (rule, key) = locate(&text, path.as_deref());
            RuleError {
                file: format!("{label}:{line}:{col}"),
                rule,
                key,
                message: e.message().trim().to_owned(),
            }
        })?;
        let ctx = Ctx {
            file: label.clone(),
            device,
            registry,
            mqtt_v5,
            classes,
        };
        for raw in parsed.ros_to_mqtt {
            check_name(&ctx, &raw.name, &mut names)?;
            rules.outbound.push(RosToMqtt::compile(raw, &ctx)?);
        }
        for raw in parsed.mqtt_to_ros {
            check_name(&ctx, &raw.name, &mut names)?;
            rules.inbound.push(MqttToRos::compile(raw, &ctx)?);
        }
        for raw in parsed.mqtt_to_service {
            check_name(&ctx, &raw.name, &mut names)?;
            rules.services.push(MqttToService::compile(raw, &ctx)?);
        }
        for raw in parsed.property_set {
            check_name(&ctx, &raw.name, &mut names)?;
            rules.services.push(MqttToService::compile_set(raw, &ctx)?);
        }
        for raw in parsed.mqtt_to_action {
            check_name(&ctx, &raw.name, &mut names)?;
            rules
                .services
                .push(MqttToService::compile_action(raw, &ctx)?);
        }
    }
    Ok(rules)
}

/// The rule and the key a deserialization error's path (`mqtt_to_ros[1].qos.depth`)
/// points at: the rule by its name when it has one (else by its place), the key
/// within it; `-` for what the path does not name.
fn locate(text: &str, path: Option<&str>) -> (String, String) {
    let dash = || "-".to_owned();
    let Some(path) = path else {
        return (dash(), dash());
    };
    let Some((head, rest)) = path.split_once('[') else {
        return (dash(), path.to_owned());
    };
    let Some((index, key)) = rest.split_once(']') else {
        return (dash(), path.to_owned());
    };
    let key = key.trim_start_matches('.');
    let name = index.parse::<usize>().ok().and_then(|i| {
        let table: toml::Table = toml::from_str(text).ok()?;
        let rule = table.get(head)?.as_array()?.get(i)?;
        rule.get("name")?.as_str().map(str::to_owned)
    });
    (
        name.unwrap_or_else(|| format!("{head} #{}", index.parse::<usize>().map_or(0, |i| i + 1))),
        if key.is_empty() {
            dash()
        } else {
            key.to_owned()
        },
    )
}

fn check_name(ctx: &Ctx<'_>, name: &str, names: &mut HashSet<String>) -> Result<(), RuleError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ctx.err(name, "name", "rule names use letters, digits, '-' and '_'"));
    }
    if !names.insert(name.to_owned()) {
        return Err(ctx.err(name, "name", "another rule has this name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_one(text: &str) -> Result<Rules, RuleError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services.toml");
        std::fs::write(&file, text).unwrap();
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interfaces");
        let registry = Registry::standard(&[fixtures]).unwrap();
        let device = DeviceConfig {
            product_key: "pk1".into(),
            device_name: "robot-7".into(),
        };
        let classes: HashSet<String> = ["telemetry".to_owned()].into();
        load(&[file], &device, &registry, false, &classes)
    }

    fn service(extra: &str) -> String {
        format!(
            "[[mqtt_to_service]]\nname = \"goto\"\nmqtt_topic = \"/${{productKey}}/${{deviceName}}/svc/+\"\nros_service = \"/arm/goto\"\nros_type = \"orchard_test_srvs/srv/GoToRow\"\n{extra}\n"
        )
    }

    #[test]
    fn a_service_rule_fills_its_reply_topic_per_request() {
        let rules = load_one(&service(
            "id_from_topic = true\nreply_topic = \"/sys/${productKey}/${deviceName}/rrpc/response/${id}\"",
        ))
        .unwrap();
        let r = &rules.services[0];
        assert_eq!(r.mqtt_filter, "/pk1/robot-7/svc/+");
        assert_eq!(
            r.reply_topic_for("/pk1/robot-7/svc/42", "42").as_deref(),
            Some("/sys/pk1/robot-7/rrpc/response/42")
        );
        // An id that cannot be a topic level has no reply topic.
        assert_eq!(r.reply_topic_for("/x", "a/b"), None);
        assert_eq!(r.reply_topic_for("/x", "#"), None);
        let rules = load_one(&service("")).unwrap();
        assert_eq!(
            rules.services[0]
                .reply_topic_for("/pk1/robot-7/svc/a", "7")
                .as_deref(),
            Some("/pk1/robot-7/svc/a_reply")
        );
        // The id is not a field of the request: it is taken out before conversion.
        assert!(rules.services[0].id_outside_request);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_rule_and_the_key() {
        let text = "[[mqtt_to_ros]]\nname = \"a\"\nmqtt_topic = \"/a\"\nros_topic = \"/a\"\nros_type = \"std_msgs/msg/String\"\n\n[[mqtt_to_ros]]\nname = \"mode\"\nmqtt_topic = \"/m\"\nros_topic = \"/m\"\nros_type = \"std_msgs/msg/String\"\nstrict = \"yes\"\n";
        let e = load_one(text).unwrap_err();
        assert_eq!((e.rule.as_str(), e.key.as_str()), ("mode", "strict"), "{e}");
        assert!(e.file.contains(":12:"), "{e}");
        let e = load_one(&service("colour = \"red\"")).unwrap_err();
        assert_eq!((e.rule.as_str(), e.key.as_str()), ("goto", "colour"), "{e}");
        let e = load_one("[[ros_to_mqtt]]\nros_topic = 5\n").unwrap_err();
        assert_eq!(
            (e.rule.as_str(), e.key.as_str()),
            ("ros_to_mqtt #1", "ros_topic"),
            "{e}"
        );
    }

    #[test]
    fn service_rule_errors_name_the_key() {
        let err = |extra: &str, ty: Option<&str>| {
            let mut text = service(extra);
            if let Some(t) = ty {
                text = text.replace("orchard_test_srvs/srv/GoToRow", t);
            }
            load_one(&text).unwrap_err().to_string()
        };
        let e = err("", Some("std_msgs/msg/String"));
        assert!(
            e.contains("ros_type") && e.contains("not a service type"),
            "{e}"
        );
        let e = err("", Some("orchard_test_srvs/srv/Missing"));
        assert!(e.contains("ros_type"), "{e}");
        let e = err("reply_topic = \"/r/${nope}\"", None);
        assert!(e.contains("reply_topic") && e.contains("${nope}"), "{e}");
        let e = err("timeout = \"0s\"", None);
        assert!(e.contains("timeout"), "{e}");
        let e = err("rmw = \"zenoh\"", None);
        assert!(e.contains("zenoh"), "{e}");
        let text = service("id_from_topic = true").replace("/svc/+", "/svc");
        let e = load_one(&text).unwrap_err().to_string();
        assert!(e.contains("id_from_topic"), "{e}");
    }
}
