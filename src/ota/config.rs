//! `[ota]`: where updates come from, how they are checked, and the installer's bounds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::values::{ByteSize, Dur, SecretSource};
use crate::config::{ConfigError, DeviceConfig};
use crate::mqtt::config::device_topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OtaProtocol {
    /// Updates only from the command line (`edge-agent ota install`).
    #[default]
    None,
    /// Alibaba Cloud IoT Platform OTA over MQTT.
    Aliyun,
    /// AWS IoT Jobs over MQTT.
    Aws,
    /// `GET <server>/api/check_update?version=<current>` on an interval.
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaConfig {
    #[serde(default)]
    pub protocol: OtaProtocol,
    /// The module (Aliyun) or component this agent installs.
    #[serde(default = "default_module")]
    pub module: String,
    /// Defaults to `<state_dir>/ota`.
    pub dir: Option<PathBuf>,
    /// The key packages must be signed with: a PEM public key or X.509 certificate
    /// (ECDSA P-256, RSA 2048-4096; several PEM blocks trust each of them), or an ed25519
    /// key (base64 or hex, 32 bytes). Packages must then carry a valid signature.
    pub public_key: Option<SecretSource>,
    /// More trusted keys, in the same forms (key rotation: old and new side by side).
    #[serde(default)]
    pub public_keys: Vec<SecretSource>,
    /// Accept plain-HTTP package URLs.
    #[serde(default)]
    pub allow_http: bool,
    /// PEM CA file for HTTPS downloads; the system's roots otherwise.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_max_package")]
    pub max_package_bytes: ByteSize,
    /// The most a package may expand to; less when the package is small (see
    /// `max_expansion`) or the state folder's disk has less room.
    #[serde(default = "default_max_extracted")]
    pub max_extracted_bytes: ByteSize,
    /// A package may expand to at most this many times its own size (plus 1 MiB).
    #[serde(default = "default_max_expansion")]
    pub max_expansion: u64,
    #[serde(default = "default_max_files")]
    pub max_files: u64,
    #[serde(default = "default_retries")]
    pub download_retries: u32,
    #[serde(default = "default_stall")]
    pub stall_timeout: Dur,
    /// Bytes per second, 0 for no cap.
    #[serde(default)]
    pub max_download_rate: ByteSize,
    /// How long a new slot must run without trouble before it is committed.
    #[serde(default = "default_confirm_after")]
    pub confirm_after: Dur,
    /// Agent starts on an unconfirmed slot before it is rolled back.
    #[serde(default = "default_max_starts")]
    pub max_starts: u32,
    /// A slot that brought a new agent is rolled back when that agent has not reached the
    /// broker within this time; it is confirmed only once it has.
    #[serde(default = "default_broker_deadline")]
    pub broker_deadline: Dur,
    /// How long a switch may wait while the robot is busy.
    #[serde(default = "default_busy_deadline")]
    pub busy_deadline: Dur,
    #[serde(default = "default_result_topic")]
    pub result_topic: String,
    #[serde(default = "default_log_topic")]
    pub log_topic: String,
    /// `[ota.aws] thing_name`; defaults to the device name.
    pub aws_thing_name: Option<String>,
    /// `http` protocol: the update server.
    pub http_server: Option<String>,
    #[serde(default = "default_poll")]
    pub http_interval: Dur,
}

fn default_module() -> String {
    "detector".into()
}
const fn default_max_package() -> ByteSize {
    ByteSize(1024 * 1024 * 1024)
}
const fn default_max_extracted() -> ByteSize {
    ByteSize(2 * 1024 * 1024 * 1024)
}
const fn default_max_expansion() -> u64 {
    50
}
const fn default_max_files() -> u64 {
    10_000
}
const fn default_retries() -> u32 {
    8
}
const fn default_stall() -> Dur {
    Dur::secs(60)
}
const fn default_confirm_after() -> Dur {
    Dur::secs(120)
}
const fn default_max_starts() -> u32 {
    3
}
const fn default_broker_deadline() -> Dur {
    Dur::secs(600)
}
const fn default_busy_deadline() -> Dur {
    Dur::secs(600)
}
fn default_result_topic() -> String {
    "/${productKey}/${deviceName}/user/ota/result".into()
}
fn default_log_topic() -> String {
    "/${productKey}/${deviceName}/user/ota/log".into()
}
const fn default_poll() -> Dur {
    Dur::secs(3600)
}

impl Default for OtaConfig {
    fn default() -> Self {
        // Every key has a serde default, so an empty table always parses (unit-tested).
        toml::from_str("").expect("every [ota] key has a default")
    }
}

/// The checked settings.
#[derive(Debug, Clone)]
pub struct OtaSettings {
    pub protocol: OtaProtocol,
    pub module: String,
    pub dir: PathBuf,
    /// The keys whose signatures are accepted; empty: packages need no signature.
    pub keys: super::signing::Keyring,
    pub allow_http: bool,
    pub ca_file: Option<PathBuf>,
    pub max_package_bytes: u64,
    pub max_extracted_bytes: u64,
    pub max_expansion: u64,
    pub max_files: u64,
    pub download_retries: u32,
    pub stall_timeout: Duration,
    pub max_download_rate: u64,
    pub confirm_after: Duration,
    pub max_starts: u32,
    pub broker_deadline: Duration,
    pub busy_deadline: Duration,
    pub result_topic: String,
    pub log_topic: String,
    pub aws_thing: String,
    pub http_server: Option<String>,
    pub http_interval: Duration,
    pub product_key: String,
    pub device_name: String,
    /// The top-level `[onnx]` section: how new models are loaded for their check.
    pub onnx: crate::onnx::OnnxConfig,
}

fn invalid(key: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl OtaConfig {
    pub fn resolve(
        &self,
        state_dir: &Path,
        device: &DeviceConfig,
    ) -> Result<OtaSettings, ConfigError> {
        let mut keys = super::signing::Keyring::default();
        let sources = self
            .public_key
            .iter()
            .map(|k| ("ota.public_key".to_string(), k))
            .chain(
                self.public_keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (format!("ota.public_keys[{i}]"), k)),
            );
        for (key, src) in sources {
            // Relative files were rooted at the configuration's folder by the caller.
            let text = src
                .resolve(Path::new(""))
                .map_err(|e| invalid(&key, format!("{src:?}"), e))?;
            let found = super::signing::TrustedKey::parse_all(text.expose(), &key)
                .map_err(|e| invalid(&key, format!("{src:?}"), e))?;
            keys.keys.extend(found);
        }
        if self.module.is_empty() {
            return Err(invalid("ota.module", "\"\"", "cannot be empty"));
        }
        if self.max_starts == 0 {
            return Err(invalid("ota.max_starts", 0, "must be at least 1"));
        }
        if self.protocol == OtaProtocol::Http && self.http_server.is_none() {
            return Err(invalid(
                "ota.http_server",
                "(missing)",
                "is required with protocol = \"http\"",
            ));
        }
        if let Some(s) = &self.http_server {
            if !(s.starts_with("https://") || (self.allow_http && s.starts_with("http://"))) {
                return Err(invalid(
                    "ota.http_server",
                    format!("{s:?}"),
                    "must be an https:// URL (or http:// with ota.allow_http = true)",
                ));
            }
        }
        if self.http_interval.0 < Duration::from_secs(1) {
            return Err(invalid(
                "ota.http_interval",
                format!("{:?}", self.http_interval),
                "must be at least 1s",
            ));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.exists() {
                return Err(invalid(
                    "ota.ca_file",
                    format!("{:?}", ca.display().to_string()),
                    "does not exist",
                ));
            }
        }
        Ok(OtaSettings {
            protocol: self.protocol,
            module: self.module.clone(),
            dir: self.dir.clone().unwrap_or_else(|| state_dir.join("ota")),
            keys,
            allow_http: self.allow_http,
            ca_file: self.ca_file.clone(),
            max_package_bytes: self.max_package_bytes.0,
            max_extracted_bytes: self.max_extracted_bytes.0,
            max_expansion: if self.max_expansion >= 1 {
                self.max_expansion
            } else {
                return Err(invalid(
                    "ota.max_expansion",
                    self.max_expansion.to_string(),
                    "must be at least 1",
                ));
            },
            max_files: self.max_files,
            download_retries: self.download_retries,
            stall_timeout: self.stall_timeout.0,
            max_download_rate: self.max_download_rate.0,
            confirm_after: self.confirm_after.0,
            max_starts: self.max_starts,
            broker_deadline: self.broker_deadline.0,
            busy_deadline: self.busy_deadline.0,
            result_topic: device_topic("ota.result_topic", &self.result_topic, device)?,
            log_topic: device_topic("ota.log_topic", &self.log_topic, device)?,
            aws_thing: self
                .aws_thing_name
                .clone()
                .unwrap_or_else(|| device.device_name.clone()),
            http_server: self.http_server.clone(),
            http_interval: self.http_interval.0,
            product_key: device.product_key.clone(),
            device_name: device.device_name.clone(),
            onnx: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c = OtaConfig::default();
        assert_eq!(c.protocol, OtaProtocol::None);
        let device = DeviceConfig {
            product_key: "pk".into(),
            device_name: "d".into(),
        };
        let s = c
            .resolve(Path::new("/var/lib/edge-agent"), &device)
            .unwrap();
        assert_eq!(s.dir, Path::new("/var/lib/edge-agent/ota"));
        assert_eq!(s.result_topic, "/pk/d/user/ota/result");
        let bad: OtaConfig = toml::from_str("public_key = \"QUJD\"").unwrap();
        let e = bad
            .resolve(Path::new("/x"), &device)
            .unwrap_err()
            .to_string();
        assert!(e.contains("32 bytes, this one 3"), "{e}");
        let bad: OtaConfig = toml::from_str("protocol = \"http\"").unwrap();
        assert!(bad
            .resolve(Path::new("/x"), &device)
            .unwrap_err()
            .to_string()
            .contains("ota.http_server"));
    }
}
