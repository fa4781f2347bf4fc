//! The `[mqtt]`, `[outbox]` and `[device_log]` sections of the configuration, and their
//! validation into the settings the link runs with. Every check happens here, before a
//! socket is opened, and an error quotes the key and the value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::auth::{self, Auth};
use super::tls;
use crate::config::values::{ByteSize, Dur, SecretSource, TopicTemplate};
use crate::config::{ConfigError, DeviceConfig};

/// Placeholders every cloud topic may use.
pub const DEVICE_VARS: &[&str] = &["productKey", "deviceName"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// TCP, optional user name and password.
    #[default]
    Plain,
    /// TLS: server verification, optional client certificate (AWS IoT Core).
    Tls,
    /// Alibaba Cloud IoT Platform: device-secret signing, TLS by default.
    Aliyun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Protocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// `[mqtt]`: how to reach the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `plain`, `tls` or `aliyun`.
    #[serde(default)]
    pub profile: Profile,
    /// MQTT protocol version: "3.1.1" or "5".
    #[serde(default)]
    pub protocol: Protocol,
    /// Broker host name or address (for `aliyun`, derived from the region unless given).
    pub host: Option<String>,
    /// Broker port; 1883 for plain and aliyun, 8883 for tls.
    pub port: Option<u16>,
    /// MQTT client id; defaults to the device name.
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// `"inline"`, `{ env = "NAME" }` or `{ file = "/path" }`.
    pub password: Option<SecretSource>,
    /// Keep-alive interval (5s..20m; Aliyun wants 30s..20m).
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Dur,
    /// Largest MQTT packet the broker accepts: AWS IoT Core 128KB, Aliyun 256KB,
    /// mosquitto 256MB by default.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: ByteSize,
    /// QoS 1 messages sent and not yet acknowledged, at most.
    #[serde(default = "default_window")]
    pub window: u16,
    /// Give up a connection attempt after this long.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Send every write the moment it is made (TCP_NODELAY, on by default). The link
    /// already gathers a burst of messages into one write; with it off, the kernel also
    /// holds a lone small write while an earlier one is unacknowledged (Nagle), which
    /// delays QoS 0 messages by up to the broker's delayed acknowledgement.
    #[serde(default = "default_tcp_nodelay")]
    pub tcp_nodelay: bool,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    pub tls: Option<TlsConfig>,
    pub aliyun: Option<AliyunConfig>,
    /// The retained online/offline status (birth and last will).
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// Start a new session at every connection. Off by default: the broker then keeps
    /// the session while the robot is away and delivers the commands sent meanwhile when
    /// it is back (the client id must stay the same; it does unless set otherwise).
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps the session after the robot went away.
    #[serde(default = "default_session_expiry")]
    pub session_expiry: Dur,
    /// MQTT 5: how many QoS 1 messages the broker may send before the agent has handed
    /// them on and acknowledged them (Receive Maximum), at least 1.
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
}

const fn default_session_expiry() -> Dur {
    Dur::secs(24 * 3600)
}
const fn default_receive_maximum() -> u16 {
    32
}

const fn default_keep_alive() -> Dur {
    Dur::secs(60)
}
const fn default_tcp_nodelay() -> bool {
    true
}

const fn default_max_packet_size() -> ByteSize {
    ByteSize(256 * 1024)
}
const fn default_window() -> u16 {
    100
}
const fn default_connect_timeout() -> Dur {
    Dur::secs(10)
}
fn default_status_topic() -> String {
    "/${productKey}/${deviceName}/user/status".into()
}

/// `[mqtt.reconnect]`: jittered exponential backoff between attempts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    #[serde(default = "default_initial_delay")]
    pub initial_delay: Dur,
    #[serde(default = "default_max_delay")]
    pub max_delay: Dur,
}

const fn default_initial_delay() -> Dur {
    Dur::secs(1)
}
const fn default_max_delay() -> Dur {
    Dur::secs(60)
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial_delay: default_initial_delay(),
            max_delay: default_max_delay(),
        }
    }
}

/// `[mqtt.tls]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust; the system's roots when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (AWS IoT Core device certificate).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1).
    pub client_key_file: Option<PathBuf>,
    /// ALPN protocols to offer, e.g. ["x-amzn-mqtt-ca"] for AWS IoT Core on port 443.
    #[serde(default)]
    pub alpn: Vec<String>,
}

impl TlsConfig {
    /// With relative files taken from `base`.
    pub fn rooted(mut self, base: &std::path::Path) -> Self {
        for f in [
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            *f = base.join(&*f);
        }
        self
    }
}

/// `[mqtt.aliyun]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliyunConfig {
    /// Region of a public instance, e.g. "cn-shanghai".
    pub region: Option<String>,
    /// Endpoint of an Enterprise Edition instance, e.g. "iot-06z00abc.mqtt.iothub.aliyuncs.com".
    pub instance_endpoint: Option<String>,
    pub device_secret: SecretSource,
    /// TLS to the platform (securemode=2); false for plain TCP (securemode=3).
    #[serde(default = "yes")]
    pub tls: bool,
}

const fn yes() -> bool {
    true
}

/// What to do when a class of the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Drop the oldest messages (telemetry).
    DropOldest,
    /// Keep only the newest message per topic, then drop the oldest (status-like data).
    KeepLatest,
    /// Refuse the new message; the caller gets an error (reports that must not be lost).
    Refuse,
}

/// `[outbox.classes.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    pub max_bytes: ByteSize,
    pub max_age: Dur,
    pub policy: FullPolicy,
    /// fsync every message before it is handed to the broker (slower; for reports).
    #[serde(default)]
    pub fsync_each: bool,
}

/// `[outbox]`: durable store-and-forward for QoS 1 messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Defaults to `<state_dir>/outbox`.
    pub dir: Option<PathBuf>,
    /// How often the outbox is fsynced and its delivery state saved.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    /// Classes by name; `telemetry`, `status`, `reports` and `log` always exist.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassConfig>,
}

const fn default_sync_interval() -> Dur {
    Dur::millis(200)
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            dir: None,
            sync_interval: default_sync_interval(),
            classes: BTreeMap::new(),
        }
    }
}

/// The classes every agent has, with their defaults.
pub fn default_classes() -> BTreeMap<String, ClassConfig> {
    let class = |mb: u64, days: u64, policy, fsync_each| ClassConfig {
        max_bytes: ByteSize(mb * 1024 * 1024),
        max_age: Dur::secs(days * 86400),
        policy,
        fsync_each,
    };
    BTreeMap::from([
        (
            "telemetry".to_owned(),
            class(256, 7, FullPolicy::DropOldest, false),
        ),
        (
            "status".to_owned(),
            class(8, 7, FullPolicy::KeepLatest, false),
        ),
        (
            "reports".to_owned(),
            class(32, 30, FullPolicy::Refuse, true),
        ),
        (
            "log".to_owned(),
            class(16, 7, FullPolicy::DropOldest, false),
        ),
    ])
}

/// `[device_log]`: the agent's own log lines, sent to the cloud.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceLogConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// "warn" (WARN and ERROR) or "info".
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default = "default_log_topic")]
    pub topic: String,
    /// Records sent per minute at most; the rest are counted and reported as suppressed.
    #[serde(default = "default_max_per_minute")]
    pub max_per_minute: u32,
    /// Records are gathered and sent together this often.
    #[serde(default = "default_batch_interval")]
    pub batch_interval: Dur,
}

fn default_log_level() -> String {
    "warn".into()
}
fn default_log_topic() -> String {
    "/sys/${productKey}/${deviceName}/thing/log/post".into()
}
const fn default_max_per_minute() -> u32 {
    60
}
const fn default_batch_interval() -> Dur {
    Dur::secs(5)
}

impl Default for DeviceLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            level: default_log_level(),
            topic: default_log_topic(),
            max_per_minute: default_max_per_minute(),
            batch_interval: default_batch_interval(),
        }
    }
}

/// Everything the link needs, checked and resolved (secrets read, TLS built).
#[derive(Clone)]
pub struct LinkSettings {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub auth: Auth,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub keep_alive: Duration,
    pub max_packet_size: usize,
    pub window: u16,
    pub connect_timeout: Duration,
    pub tcp_nodelay: bool,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub status_topic: String,
    pub clean_session: bool,
    pub session_expiry: Duration,
    pub receive_max: u16,
    /// Secret values, so log output can be scrubbed of them.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("protocol", &self.protocol)
            .field("broker", &format_args!("{}:{}", self.host, self.port))
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

fn invalid(key: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Renders a topic template with the device's names.
pub fn device_topic(
    key: &str,
    template: &str,
    device: &DeviceConfig,
) -> Result<String, ConfigError> {
    let t = TopicTemplate::parse(template, DEVICE_VARS)
        .map_err(|e| invalid(key, format!("{template:?}"), e))?;
    Ok(t.render(|v| match v {
        "productKey" => Some(device.product_key.clone()),
        "deviceName" => Some(device.device_name.clone()),
        _ => None,
    }))
}

impl MqttConfig {
    /// Checks every key and resolves secrets and certificates (relative files in `base`,
    /// the configuration file's folder).
    pub fn resolve(
        &self,
        device: &DeviceConfig,
        base: &std::path::Path,
    ) -> Result<LinkSettings, ConfigError> {
        let ka = self.keep_alive.0;
        let (ka_min, ka_max) = if self.profile == Profile::Aliyun {
            (Duration::from_secs(30), Duration::from_secs(1200))
        } else {
            (Duration::from_secs(5), Duration::from_secs(65535))
        };
        if ka < ka_min || ka > ka_max {
            return Err(invalid(
                "mqtt.keep_alive",
                format!("{:?}", self.keep_alive),
                format!(
                    "must be between {} and {}{}",
                    crate::config::values::format_duration(ka_min),
                    crate::config::values::format_duration(ka_max),
                    if self.profile == Profile::Aliyun {
                        " for the aliyun profile"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if self.max_packet_size.0 < 1024 || self.max_packet_size.0 > 268_435_455 {
            return Err(invalid(
                "mqtt.max_packet_size",
                self.max_packet_size.0,
                "must be between 1KiB and 256MiB (the MQTT limit)",
            ));
        }
        if self.window == 0 || self.window > 1000 {
            return Err(invalid(
                "mqtt.window",
                self.window,
                "must be between 1 and 1000",
            ));
        }
        if self.connect_timeout.0 < Duration::from_secs(1) {
            return Err(invalid(
                "mqtt.connect_timeout",
                format!("{:?}", self.connect_timeout),
                "must be at least 1s",
            ));
        }
        let r = &self.reconnect;
        if r.initial_delay.0 < Duration::from_millis(10) {
            return Err(invalid(
                "mqtt.reconnect.initial_delay",
                format!("{:?}", r.initial_delay),
                "must be at least 10ms",
            ));
        }
        if r.max_delay < r.initial_delay {
            return Err(invalid(
                "mqtt.reconnect.max_delay",
                format!("{:?}", r.max_delay),
                "must not be shorter than mqtt.reconnect.initial_delay",
            ));
        }
        let status_topic = device_topic("mqtt.status_topic", &self.status_topic, device)?;
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| device.device_name.clone());
        if client_id.is_empty() || client_id.len() > 64 {
            return Err(invalid(
                "mqtt.client_id",
                format!("{client_id:?}"),
                "must be 1 to 64 characters",
            ));
        }

        let mut secrets = Vec::new();
        let password = match &self.password {
            Some(src) => {
                let s = src
                    .resolve(base)
                    .map_err(|e| invalid("mqtt.password", format!("{src:?}"), e))?;
                secrets.push(s.expose().to_owned());
                Some(s)
            }
            None => None,
        };
        if password.is_some() && self.username.is_none() {
            return Err(invalid("mqtt.password", "(set)", "needs mqtt.username"));
        }

        let (host, port, auth, tls_config) = match self.profile {
            Profile::Plain => {
                if self.tls.is_some() {
                    return Err(invalid(
                        "mqtt.tls",
                        "(set)",
                        "is only used with profile = \"tls\"",
                    ));
                }
                if self.aliyun.is_some() {
                    return Err(invalid(
                        "mqtt.aliyun",
                        "(set)",
                        "is only used with profile = \"aliyun\"",
                    ));
                }
                let host = self.host.clone().ok_or_else(|| {
                    invalid(
                        "mqtt.host",
                        "(missing)",
                        "is required for the plain profile",
                    )
                })?;
                let auth = Auth::static_login(client_id, self.username.clone(), password);
                (host, self.port.unwrap_or(1883), auth, None)
            }
            Profile::Tls => {
                if self.aliyun.is_some() {
                    return Err(invalid(
                        "mqtt.aliyun",
                        "(set)",
                        "is only used with profile = \"aliyun\"",
                    ));
                }
                let host = self.host.clone().ok_or_else(|| {
                    invalid("mqtt.host", "(missing)", "is required for the tls profile")
                })?;
                let tls_cfg = self.tls.clone().unwrap_or_default().rooted(base);
                let config = tls::client_config(&tls_cfg)?;
                let auth = Auth::static_login(client_id, self.username.clone(), password);
                (host, self.port.unwrap_or(8883), auth, Some(config))
            }
            Profile::Aliyun => {
                let a = self.aliyun.as_ref().ok_or_else(|| {
                    invalid(
                        "mqtt.aliyun",
                        "(missing)",
                        "is required for the aliyun profile",
                    )
                })?;
                if self.username.is_some() || self.password.is_some() {
                    return Err(invalid(
                        "mqtt.username",
                        "(set)",
                        "is computed by the aliyun profile from the device secret; remove mqtt.username and mqtt.password",
                    ));
                }
                let host = match (&self.host, &a.instance_endpoint, &a.region) {
                    (Some(h), _, _) => h.clone(),
                    (None, Some(e), _) => e.clone(),
                    (None, None, Some(region)) => {
                        auth::aliyun_public_host(&device.product_key, region)
                    }
                    (None, None, None) => return Err(invalid(
                        "mqtt.aliyun.region",
                        "(missing)",
                        "set mqtt.aliyun.region (public instance) or mqtt.aliyun.instance_endpoint",
                    )),
                };
                let secret = a.device_secret.resolve(base).map_err(|e| {
                    invalid(
                        "mqtt.aliyun.device_secret",
                        format!("{:?}", a.device_secret),
                        e,
                    )
                })?;
                secrets.push(secret.expose().to_owned());
                let tls_config = if a.tls {
                    Some(tls::client_config(
                        &self.tls.clone().unwrap_or_default().rooted(base),
                    )?)
                } else {
                    None
                };
                let auth = Auth::Aliyun {
                    product_key: device.product_key.clone(),
                    device_name: device.device_name.clone(),
                    client_id,
                    device_secret: secret,
                    tls: a.tls,
                };
                (host, self.port.unwrap_or(1883), auth, tls_config)
            }
        };
        if host.trim().is_empty() {
            return Err(invalid("mqtt.host", format!("{host:?}"), "cannot be empty"));
        }
        if self.receive_maximum == 0 {
            return Err(invalid("mqtt.receive_maximum", 0, "must be at least 1"));
        }
        Ok(LinkSettings {
            protocol: self.protocol,
            host,
            port,
            auth,
            tls: tls_config,
            keep_alive: ka,
            max_packet_size: self.max_packet_size.0 as usize,
            window: self.window,
            connect_timeout: self.connect_timeout.0,
            tcp_nodelay: self.tcp_nodelay,
            initial_delay: r.initial_delay.0,
            max_delay: r.max_delay.0,
            status_topic,
            clean_session: self.clean_session,
            session_expiry: self.session_expiry.0,
            receive_max: self.receive_maximum,
            secrets,
        })
    }
}

/// The outbox settings, with the default classes filled in and checked.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub dir: PathBuf,
    pub sync_interval: Duration,
    pub classes: BTreeMap<String, ClassConfig>,
}

impl OutboxConfig {
    pub fn resolve(&self, state_dir: &std::path::Path) -> Result<OutboxSettings, ConfigError> {
        let mut classes = default_classes();
        for (name, c) in &self.classes {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(
                    &format!("outbox.classes.{name}"),
                    name,
                    "class names use letters, digits, '-' and '_'",
                ));
            }
            if c.max_bytes.0 < 64 * 1024 {
                return Err(invalid(
                    &format!("outbox.classes.{name}.max_bytes"),
                    c.max_bytes.0,
                    "must be at least 64KiB",
                ));
            }
            if c.max_age.0 < Duration::from_secs(1) {
                return Err(invalid(
                    &format!("outbox.classes.{name}.max_age"),
                    format!("{:?}", c.max_age),
                    "must be at least 1s",
                ));
            }
            classes.insert(name.clone(), c.clone());
        }
        if self.sync_interval.0 < Duration::from_millis(10)
            || self.sync_interval.0 > Duration::from_secs(60)
        {
            return Err(invalid(
                "outbox.sync_interval",
                format!("{:?}", self.sync_interval),
                "must be between 10ms and 60s",
            ));
        }
        Ok(OutboxSettings {
            dir: self.dir.clone().unwrap_or_else(|| state_dir.join("outbox")),
            sync_interval: self.sync_interval.0,
            classes,
        })
    }
}

/// Device log settings, checked.
#[derive(Debug, Clone)]
pub struct DeviceLogSettings {
    pub enabled: bool,
    pub info: bool,
    pub topic: String,
    pub max_per_minute: u32,
    pub batch_interval: Duration,
}

impl DeviceLogConfig {
    pub fn resolve(&self, device: &DeviceConfig) -> Result<DeviceLogSettings, ConfigError> {
        let info = match self.level.as_str() {
            "warn" => false,
            "info" => true,
            other => {
                return Err(invalid(
                    "device_log.level",
                    format!("{other:?}"),
                    "must be \"warn\" or \"info\"",
                ))
            }
        };
        if self.max_per_minute == 0 {
            return Err(invalid(
                "device_log.max_per_minute",
                0,
                "must be at least 1 (or set enabled = false)",
            ));
        }
        if self.batch_interval.0 < Duration::from_millis(100) {
            return Err(invalid(
                "device_log.batch_interval",
                format!("{:?}", self.batch_interval),
                "must be at least 100ms",
            ));
        }
        Ok(DeviceLogSettings {
            enabled: self.enabled,
            info,
            topic: device_topic("device_log.topic", &self.topic, device)?,
            max_per_minute: self.max_per_minute,
            batch_interval: self.batch_interval.0,
        })
    }
}
