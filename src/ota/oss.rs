//! Downloading a package from Alibaba Cloud OSS with temporary STS credentials, as an
//! update server's `check_update` answer may give them (`AccessKeyId`,
//! `AccessKeySecret`, `SecurityToken`, a bucket and an object).
//!
//! Each request (every attempt and every resumed Range request) is signed afresh with
//! OSS signature version 1: `Authorization: OSS <AccessKeyId>:<base64(HMAC-SHA1(secret,
//! StringToSign))>` over `GET\n\n\n<Date>\nx-oss-security-token:<token>\n/<bucket>/<object>`.
//! Version 1 is what `oss2.StsAuth` uses by default, the SDK the reference update code
//! downloads with, and it needs no region name (version 4 does, and the answer carries
//! none). The credentials never reach a log line, a report or the journal.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;

/// Where a package is in OSS and the temporary credentials to fetch it.
#[derive(Clone, PartialEq, Eq)]
pub struct OssAccess {
    /// `https://oss-cn-hangzhou.aliyuncs.com` (a bare host means https).
    pub endpoint: String,
    pub bucket: String,
    pub object: String,
    pub access_key_id: String,
    pub access_key_secret: String,
    pub security_token: String,
}

impl fmt::Debug for OssAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "oss://{}/{} (credentials hidden)",
            self.bucket, self.object
        )
    }
}

impl OssAccess {
    /// False for what the journal kept after a restart: where the package is, without
    /// the credentials, which are never written down.
    pub fn has_credentials(&self) -> bool {
        !self.access_key_secret.is_empty()
    }

    /// From the `oss` object of a `check_update` answer: `endpoint`, `bucket`, `object`
    /// and the STS credentials (`AccessKeyId`, `AccessKeySecret`, `SecurityToken`), at its
    /// top level or under `Credentials` as STS AssumeRole returns them.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let creds = v.get("Credentials").unwrap_or(v);
        let s = |obj: &Value, k: &str| -> Result<String, String> {
            obj.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("oss.{k} is missing"))
        };
        let object = s(v, "object")?;
        Ok(OssAccess {
            endpoint: s(v, "endpoint")?,
            bucket: s(v, "bucket")?,
            object: object.trim_start_matches('/').to_owned(),
            access_key_id: s(creds, "AccessKeyId")?,
            access_key_secret: s(creds, "AccessKeySecret")?,
            security_token: s(creds, "SecurityToken")?,
        })
    }

    /// The object's URL: virtual-hosted (`https://<bucket>.<endpoint>/<object>`), or
    /// path-style for an IP address or localhost endpoint, as the OSS SDKs do.
    pub fn url(&self) -> String {
        let (scheme, host) = match self.endpoint.split_once("://") {
            Some((s, h)) => (s, h.trim_end_matches('/')),
            None => ("https", self.endpoint.trim_end_matches('/')),
        };
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let by_address = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok();
        let object = encode_path(&self.object);
        if by_address {
            format!("{scheme}://{host}/{}/{object}", self.bucket)
        } else {
            format!("{scheme}://{}.{host}/{object}", self.bucket)
        }
    }

    /// The headers that sign a GET sent at `date` (RFC 1123, GMT).
    pub fn headers(&self, date: &str) -> [(&'static str, String); 3] {
        let to_sign = format!(
            "GET\n\n\n{date}\nx-oss-security-token:{}\n/{}/{}",
            self.security_token, self.bucket, self.object
        );
        // HMAC takes a key of any length.
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(self.access_key_secret.as_bytes())
            .expect("HMAC accepts any key length");
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        [
            ("Date", date.to_owned()),
            ("x-oss-security-token", self.security_token.clone()),
            ("Authorization", format!("OSS {}:{sig}", self.access_key_id)),
        ]
    }
}

/// The current time as an HTTP date (`Sun, 06 Dec 2026 23:59:01 GMT`).
pub fn http_date_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// An object key in a URL path: each byte outside the unreserved set and `/`
/// percent-encoded.
fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(endpoint: &str) -> OssAccess {
        OssAccess::from_json(&serde_json::json!({
            "endpoint": endpoint, "bucket": "orchard-ota", "object": "/pkgs/detector 2.tar.gz",
            "Credentials": {"AccessKeyId": "STS.id", "AccessKeySecret": "s3cr3t", "SecurityToken": "tok"}
        }))
        .unwrap()
    }

    #[test]
    fn urls_are_virtual_hosted_or_path_style_by_address() {
        assert_eq!(
            access("oss-cn-hangzhou.aliyuncs.com").url(),
            "https://orchard-ota.oss-cn-hangzhou.aliyuncs.com/pkgs/detector%202.tar.gz"
        );
        assert_eq!(
            access("http://127.0.0.1:8080").url(),
            "http://127.0.0.1:8080/orchard-ota/pkgs/detector%202.tar.gz"
        );
        let e = OssAccess::from_json(
            &serde_json::json!({"endpoint": "e", "bucket": "b", "object": "o"}),
        )
        .unwrap_err();
        assert_eq!(e, "oss.AccessKeyId is missing");
        assert!(!format!("{:?}", access("e")).contains("s3cr3t"));
    }
}

/// The journal keeps where a package in OSS is (endpoint, bucket, object), never the
/// credentials: read back, it has none, and the update server is asked for fresh ones.
pub mod journal_form {
    use super::OssAccess;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    #[derive(Serialize, Deserialize)]
    struct Kept {
        endpoint: String,
        bucket: String,
        object: String,
    }

    pub fn serialize<S: Serializer>(v: &Option<Arc<OssAccess>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|o| Kept {
                endpoint: o.endpoint.clone(),
                bucket: o.bucket.clone(),
                object: o.object.clone(),
            })
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Arc<OssAccess>>, D::Error> {
        Ok(Option::<Kept>::deserialize(d)?.map(|k| {
            Arc::new(OssAccess {
                endpoint: k.endpoint,
                bucket: k.bucket,
                object: k.object,
                access_key_id: String::new(),
                access_key_secret: String::new(),
                security_token: String::new(),
            })
        }))
    }
}
