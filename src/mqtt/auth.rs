//! Who the agent says it is when it connects: a fixed login, or the Alibaba Cloud IoT
//! Platform's device-secret signature, computed afresh (new timestamp) for every
//! connection attempt.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::values::Secret;

#[derive(Clone)]
pub enum Auth {
    Static {
        client_id: String,
        username: Option<String>,
        password: Option<Secret>,
    },
    Aliyun {
        product_key: String,
        device_name: String,
        client_id: String,
        device_secret: Secret,
        /// securemode=2 (TLS) or 3 (TCP).
        tls: bool,
    },
}

/// What goes into the MQTT CONNECT packet.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Auth {
    pub fn static_login(
        client_id: String,
        username: Option<String>,
        password: Option<Secret>,
    ) -> Self {
        Self::Static {
            client_id,
            username,
            password,
        }
    }

    /// Credentials for a connection attempt at `now_ms` (milliseconds since the epoch).
    pub fn credentials(&self, now_ms: u64) -> Credentials {
        match self {
            Auth::Static {
                client_id,
                username,
                password,
            } => Credentials {
                client_id: client_id.clone(),
                username: username.clone(),
                password: password.as_ref().map(|p| p.expose().to_owned()),
            },
            Auth::Aliyun {
                product_key,
                device_name,
                client_id,
                device_secret,
                tls,
            } => aliyun_sign(
                product_key,
                device_name,
                client_id,
                device_secret.expose(),
                now_ms,
                *tls,
            ),
        }
    }

    /// Like [`Auth::credentials`] with another client id (for a probe connection).
    pub fn credentials_for_client(&self, client_id: &str, now_ms: u64) -> Credentials {
        match self {
            Auth::Static { .. } => {
                let mut c = self.credentials(now_ms);
                c.client_id = client_id.to_owned();
                c
            }
            Auth::Aliyun {
                product_key,
                device_name,
                device_secret,
                tls,
                ..
            } => aliyun_sign(
                product_key,
                device_name,
                client_id,
                device_secret.expose(),
                now_ms,
                *tls,
            ),
        }
    }

    /// The client id as the platform shows it (without Aliyun's signing parameters).
    pub fn client_id(&self) -> &str {
        match self {
            Auth::Static { client_id, .. } | Auth::Aliyun { client_id, .. } => client_id,
        }
    }
}

/// The Alibaba Cloud IoT Platform's MQTT login for a device certificate
/// (ProductKey, DeviceName, DeviceSecret), signed with HMAC-SHA256:
///
/// - client id: `<clientId>|securemode=2,signmethod=hmacsha256,timestamp=<ms>|`
///   (securemode=3 without TLS);
/// - user name: `<deviceName>&<productKey>`;
/// - password: hex HMAC-SHA256 keyed by the device secret over the parameters sorted by
///   name and concatenated without separators:
///   `clientId<clientId>deviceName<deviceName>productKey<productKey>timestamp<ms>`.
pub fn aliyun_sign(
    product_key: &str,
    device_name: &str,
    client_id: &str,
    device_secret: &str,
    timestamp_ms: u64,
    tls: bool,
) -> Credentials {
    let content = format!(
        "clientId{client_id}deviceName{device_name}productKey{product_key}timestamp{timestamp_ms}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(device_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(content.as_bytes());
    let password = hex::encode(mac.finalize().into_bytes());
    let mode = if tls { 2 } else { 3 };
    Credentials {
        client_id: format!(
            "{client_id}|securemode={mode},signmethod=hmacsha256,timestamp={timestamp_ms}|"
        ),
        username: Some(format!("{device_name}&{product_key}")),
        password: Some(password),
    }
}

/// The MQTT endpoint of a public instance: `<productKey>.iot-as-mqtt.<region>.aliyuncs.com`.
pub fn aliyun_public_host(product_key: &str, region: &str) -> String {
    format!("{product_key}.iot-as-mqtt.{region}.aliyuncs.com")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliyun_login_shape() {
        let c = aliyun_sign("a1pk", "dev1", "dev1", "secret", 1_700_000_000_000, true);
        assert_eq!(
            c.client_id,
            "dev1|securemode=2,signmethod=hmacsha256,timestamp=1700000000000|"
        );
        assert_eq!(c.username.as_deref(), Some("dev1&a1pk"));
        let p = c.password.unwrap();
        assert_eq!(p.len(), 64);
        assert!(p
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(!format!("{:?}", aliyun_sign("a", "b", "c", "d", 1, false)).contains(&p));
    }
}
