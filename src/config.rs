//! The agent's configuration file (TOML): typed sections, defaults, and validation with
//! errors that name the key and the value. Nothing here opens a socket; `check-config`
//! runs exactly this.

pub mod values;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bridge::rules::{self, RuleError, Rules};
use crate::bridge::BridgeConfig;
use crate::mqtt::config::{
    device_topic, DeviceLogConfig, DeviceLogSettings, LinkSettings, MqttConfig, OutboxConfig,
    OutboxSettings, Protocol,
};
use crate::ros::config::{RosConfig, RosSettings};
use crate::ros::Registry;

/// The example configuration for a laptop with a local mosquitto (config/local.toml).
pub const DEFAULT_CONFIG: &str = include_str!("../config/local.toml");

/// What `edge-agent print-default-config` prints: the example, standing on its own
/// (no rule folder it would need beside it).
pub fn default_config_text() -> String {
    DEFAULT_CONFIG.replace(
        "mappings = [\"../msg_mappings\"]",
        "mappings = []   # e.g. [\"/etc/edge-agent/msg_mappings\"]; see msg_mappings/ in the sources",
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{key} = {value} is not valid: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Rule(#[from] RuleError),
}

/// `[device]`: who this robot is on the cloud platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The product (device type) key on the platform: `${productKey}` in topics.
    pub product_key: String,
    /// This robot's name on the platform: `${deviceName}` in topics.
    pub device_name: String,
}

/// `[log]`: the agent's own log on stderr (the journal under systemd).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// error, warn, info, debug or trace; RUST_LOG overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent keeps its state (outbox, OTA slots); must be writable.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub device: DeviceConfig,
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub device_log: DeviceLogConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub ros: RosConfig,
    #[serde(default)]
    pub bridge: BridgeConfig,
    #[serde(default)]
    pub ota: crate::ota::config::OtaConfig,
    #[serde(default)]
    pub onnx: crate::onnx::OnnxConfig,
    #[serde(default)]
    pub detect: crate::detect::config::DetectConfig,
    /// The folder relative paths in the file are relative to (the file's own).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this configuration was read from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/edge-agent")
}

/// A configuration that passed every check, with secrets and certificates loaded.
#[derive(Debug, Clone)]
pub struct Settings {
    pub file: AgentConfig,
    pub link: LinkSettings,
    pub outbox: OutboxSettings,
    pub device_log: DeviceLogSettings,
    pub ros: RosSettings,
    pub registry: std::sync::Arc<Registry>,
    pub rules: Rules,
    pub health_interval: std::time::Duration,
    pub health_topic: String,
    pub ota: crate::ota::config::OtaSettings,
    pub detect: Option<crate::detect::config::DetectSettings>,
}

fn invalid(key: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Under the rcl transport: every type a rule names can be loaded in this environment,
/// and the domain agrees with `ROS_DOMAIN_ID`. Every rule whose type cannot be loaded is
/// named, not only the first.
#[cfg(feature = "rcl")]
fn check_rcl(rules: &rules::Rules, domain_id: u16) -> Result<(), ConfigError> {
    use crate::ros::registry::TypeName;
    use crate::ros::transport::rcl;
    rcl::check_domain(domain_id).map_err(|reason| invalid("ros.domain_id", domain_id, reason))?;
    let mut named: Vec<(&String, &String, TypeName)> = Vec::new();
    for r in &rules.outbound {
        named.push((&r.file, &r.name, r.type_name.clone()));
    }
    for r in &rules.inbound {
        named.push((&r.file, &r.name, r.type_name.clone()));
    }
    for r in &rules.services {
        match &r.target {
            rules::Target::Call(c) => named.push((&r.file, &r.name, c.type_name.clone())),
            rules::Target::Set(p) => {
                for prop in &p.properties {
                    named.push((&r.file, &r.name, prop.type_name.clone()));
                }
            }
            rules::Target::Goal(g) => {
                for part in ["SendGoal", "GetResult"] {
                    named.push((
                        &r.file,
                        &r.name,
                        TypeName {
                            package: g.type_name.package.clone(),
                            kind: "action",
                            name: format!("{}_{part}", g.type_name.name),
                        },
                    ));
                }
            }
        }
    }
    let mut failures: Vec<String> = Vec::new();
    for (file, name, t) in named {
        let handle = if matches!(t.kind, "srv" | "action")
            && !t.name.ends_with("Message")
            && !t.name.ends_with("_Request")
            && !t.name.ends_with("_Response")
        {
            crate::ros::transport::typesupport::Handle::Service
        } else {
            crate::ros::transport::typesupport::Handle::Message
        };
        if let Err(reason) = rcl::check_type_as(&t, handle) {
            let line = format!("{file}: rule '{name}': {t}: {reason}");
            if !failures.contains(&line) {
                failures.push(line);
            }
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(invalid(
        "ros_type",
        format!("{} rule type(s)", failures.len()),
        format!(
            "cannot be loaded here (rcl transport):\n  {}",
            failures.join("\n  ")
        ),
    ))
}

/// Deserializes TOML text; on error, the dot path of the key it is about (when it is
/// about one) and the error.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, (Option<String>, toml::de::Error)> {
    let de = toml::Deserializer::parse(text).map_err(|e| (None, e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = (path != "." && !path.is_empty()).then_some(path);
        (key, e.into_inner())
    })
}

/// `key: message`, unless the message names the key already.
pub fn with_key(key: Option<&str>, message: &str) -> String {
    match key {
        Some(k) => format!("{k}: {message}"),
        _ => message.to_owned(),
    }
}

impl AgentConfig {
    /// Parses TOML text; `path` names the source in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        parse_toml(text).map_err(|(key, e)| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: with_key(key.as_deref(), e.message().trim()),
            }
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = Self::parse(&text, &path.display().to_string())?;
        c.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        c.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(c)
    }

    /// Every check that needs no network.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        for (key, value) in [
            ("device.product_key", &self.device.product_key),
            ("device.device_name", &self.device.device_name),
        ] {
            if value.is_empty() || value.contains(['/', '+', '#', '\0']) || value.len() > 64 {
                return Err(invalid(
                    key,
                    format!("{value:?}"),
                    "must be 1 to 64 characters without '/', '+' or '#'",
                ));
            }
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(invalid(
                "log.level",
                format!("{:?}", self.log.level),
                "must be error, warn, info, debug or trace",
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "\"\"", "cannot be empty"));
        }
        let base = if self.base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            self.base_dir.clone()
        };
        let link = self.mqtt.resolve(&self.device, &base)?;
        let outbox = self.outbox.resolve(&self.state_dir)?;
        let device_log = self.device_log.resolve(&self.device)?;
        let ros = self.ros.resolve(&base, self.source.as_deref())?;
        let registry = Registry::standard(&ros.interfaces).map_err(|e| {
            invalid(
                "ros.interfaces",
                format!("{:?}", self.ros.interfaces),
                e.to_string(),
            )
        })?;
        let classes = outbox.classes.keys().cloned().collect();
        let mappings: Vec<PathBuf> = self.bridge.mappings.iter().map(|p| base.join(p)).collect();
        let rules = rules::load(
            &mappings,
            &self.device,
            &registry,
            link.protocol == Protocol::V5,
            &classes,
        )?;
        #[cfg(feature = "rcl")]
        if ros.transport == crate::ros::config::TransportKind::Rcl {
            check_rcl(&rules, ros.domain_id)?;
        }
        let hi = self.bridge.health_interval.0;
        if hi < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "bridge.health_interval",
                format!("{:?}", self.bridge.health_interval),
                "must be at least 1s",
            ));
        }
        let health_topic = device_topic(
            "bridge.health_topic",
            &self.bridge.health_topic,
            &self.device,
        )?;
        let mut ota_cfg = self.ota.clone();
        if let Some(ca) = &ota_cfg.ca_file {
            ota_cfg.ca_file = Some(base.join(ca));
        }
        ota_cfg.public_key = ota_cfg.public_key.map(|k| k.rooted(&base));
        ota_cfg.public_keys = ota_cfg
            .public_keys
            .iter()
            .map(|k| k.rooted(&base))
            .collect();
        let mut ota = ota_cfg.resolve(&self.state_dir, &self.device)?;
        ota.onnx = self.onnx.clone();
        if let Some(why) = crate::onnx::threads_out_of_range(self.onnx.threads) {
            return Err(invalid("onnx.threads", self.onnx.threads, &why));
        }
        if let Some(lib) = &self.onnx.library {
            let lib = base.join(lib);
            if !lib.exists() {
                return Err(invalid(
                    "onnx.library",
                    format!("{:?}", lib.display().to_string()),
                    "does not exist (the path to libonnxruntime.so; leave it out to search the system)",
                ));
            }
            ota.onnx.library = Some(lib);
        }
        let detect = self.detect.resolve(
            &self.device,
            &base,
            ota.protocol != crate::ota::config::OtaProtocol::None,
        )?;
        Ok(Settings {
            file: self,
            link,
            outbox,
            device_log,
            ros,
            registry: std::sync::Arc::new(registry),
            rules,
            health_interval: hi,
            health_topic,
            ota,
            detect,
        })
    }
}

/// Loads and validates a configuration file.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    AgentConfig::load(path)?.validate()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Settings, ConfigError> {
        AgentConfig::parse(text, "test.toml")?.validate()
    }

    const BASE: &str =
        "[device]\nproduct_key = \"pk\"\ndevice_name = \"robot-1\"\n[mqtt]\nhost = \"localhost\"\n";

    #[test]
    fn the_default_config_is_valid() {
        let s = AgentConfig::parse(&default_config_text(), "printed")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.link.host, "localhost");
        assert_eq!(s.link.status_topic, "/a1EdgeDemo/picker-01/user/status");
        assert!(s.outbox.classes.contains_key("telemetry"));
        // The file in the repository, with the shipped rules.
        let s = AgentConfig::load(std::path::Path::new("config/local.toml"))
            .unwrap()
            .validate()
            .unwrap();
        assert!(s.rules.outbound.len() >= 7 && s.rules.inbound.len() >= 3);
    }

    #[test]
    fn errors_quote_key_and_value() {
        let e = check(&format!("{BASE}keep_alive = \"0s\"\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mqtt.keep_alive = 0ms is not valid: must be between 5s and 18h12m15s"
        );
        let e = check(&format!("{BASE}kepalive = \"10s\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml:6:1: mqtt.kepalive: unknown field `kepalive`"),
            "{e}"
        );
        let e = check(&format!("{BASE}keep_alive = \"10 parsecs\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown unit 'parsecs'"), "{e}");
        let e = check(&format!(
            "{BASE}status_topic = \"/${{productKey}}/${{robot}}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("mqtt.status_topic = \"/${productKey}/${robot}\" is not valid: unknown placeholder ${robot}"), "{e}");
        let e = check(&format!(
            "{BASE}password = {{ env = \"EDGE_AGENT_NO_SUCH_VAR\" }}\nusername = \"u\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(e, "mqtt.password = <secret from $EDGE_AGENT_NO_SUCH_VAR> is not valid: environment variable EDGE_AGENT_NO_SUCH_VAR is not set");
        let e =
            check("[device]\nproduct_key = \"a/b\"\ndevice_name = \"x\"\n[mqtt]\nhost = \"h\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.starts_with("device.product_key = \"a/b\" is not valid"),
            "{e}"
        );
    }

    #[test]
    fn aliyun_profile_derives_the_host() {
        let s = check(
            "[device]\nproduct_key = \"a1pk\"\ndevice_name = \"d1\"\n[mqtt]\nprofile = \"aliyun\"\n[mqtt.aliyun]\nregion = \"cn-shanghai\"\ndevice_secret = \"s3cr3t\"\ntls = false\n",
        )
        .unwrap();
        assert_eq!(s.link.host, "a1pk.iot-as-mqtt.cn-shanghai.aliyuncs.com");
        assert_eq!(s.link.port, 1883);
        assert!(!format!("{:?}", s.link).contains("s3cr3t"));
        let e = check(
            "[device]\nproduct_key = \"a1pk\"\ndevice_name = \"d1\"\n[mqtt]\nprofile = \"aliyun\"\nkeep_alive = \"10s\"\n[mqtt.aliyun]\nregion = \"cn-shanghai\"\ndevice_secret = \"s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("for the aliyun profile"), "{e}");
    }
}
