//! Value types that appear in the configuration file: durations (`"30s"`), byte sizes
//! (`"128KiB"`), secrets (inline, from an environment variable or from a file) and MQTT
//! topic templates (`/${productKey}/${deviceName}/user/status`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as `"500ms"`, `"30s"`, `"5m"`, `"2h"` or `"7d"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format_duration(self.0))
    }
}

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("'{text}' has no unit: write e.g. 500ms, 30s, 5m, 2h or 7d"))?;
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!("'{text}' is not a duration: write e.g. 500ms, 30s, 5m, 2h or 7d")
        })?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => {
                return Err(format!(
                    "unknown unit '{other}' in '{text}': use ms, s, m, h or d"
                ))
            }
        };
        Ok(Self(Duration::from_secs_f64(n * scale)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `1h30m` style text for logs and summaries.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (v, u) in [(days, "d"), (h, "h"), (m, "m"), (sec, "s")] {
        if v > 0 {
            out.push_str(&format!("{v}{u}"));
        }
    }
    out
}

/// A size in bytes, written as a number or `"64KiB"`, `"10MB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("'{text}' is not a size: write e.g. 65536, 64KiB or 10MB"))?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1024,
            "MB" => 1000 * 1000,
            "MiB" => 1024 * 1024,
            "GB" => 1000 * 1000 * 1000,
            "GiB" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "unknown unit '{other}' in '{text}': use B, KB, KiB, MB, MiB, GB or GiB"
                ))
            }
        };
        n.checked_mul(scale)
            .map(Self)
            .ok_or_else(|| format!("'{text}' is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Self(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Where a secret comes from. Its value never reaches a log line or a `Debug` print.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SecretSource {
    /// Written in the file (discouraged outside a laptop).
    Inline(String),
    /// `{ env = "NAME" }`: read from an environment variable at start.
    Env { env: String },
    /// `{ file = "/path" }`: the file's content, surrounding blanks removed. A relative
    /// path is relative to the configuration file's folder.
    File { file: PathBuf },
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("<inline secret>"),
            SecretSource::Env { env } => write!(f, "<secret from ${env}>"),
            SecretSource::File { file } => write!(f, "<secret from {}>", file.display()),
        }
    }
}

impl SecretSource {
    /// The same source, a relative file taken from `base`.
    pub fn rooted(&self, base: &std::path::Path) -> Self {
        match self {
            SecretSource::File { file } => SecretSource::File {
                file: base.join(file),
            },
            other => other.clone(),
        }
    }

    /// Reads the secret; a relative file is looked up in `base` (the configuration
    /// file's folder). The error says where it looked, never what it found.
    pub fn resolve(&self, base: &std::path::Path) -> Result<Secret, String> {
        match self {
            SecretSource::Inline(s) => Ok(Secret(s.clone())),
            SecretSource::Env { env } => std::env::var(env)
                .map(Secret)
                .map_err(|_| format!("environment variable {env} is not set")),
            SecretSource::File { file } => {
                let file = base.join(file);
                std::fs::read_to_string(&file)
                    .map(|s| Secret(s.trim().to_owned()))
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))
            }
        }
    }
}

/// A resolved secret; prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An MQTT topic with `${name}` placeholders, checked when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

impl TopicTemplate {
    /// Parses `text`, allowing only the placeholders in `vars`.
    pub fn parse(text: &str, vars: &[&str]) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a topic cannot be empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed '${{' in topic '{text}'"))?;
            let name = &after[..end];
            if !vars.contains(&name) {
                return Err(format!(
                    "unknown placeholder ${{{name}}} in topic '{text}': allowed are {}",
                    vars.iter()
                        .map(|v| format!("${{{v}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        for p in &parts {
            if let Part::Lit(l) = p {
                if l.contains(['+', '#', '\0']) {
                    return Err(format!("topic '{text}' contains a wildcard or NUL, which a publish topic cannot have"));
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    /// Fills the placeholders; `lookup` returns the value of a name.
    pub fn render(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(v) => out.push_str(&lookup(v).unwrap_or_default()),
            }
        }
        out
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the template uses `${name}`.
    pub fn uses(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(v) if v == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(Dur::parse("30s").unwrap().0, Duration::from_secs(30));
        assert_eq!(Dur::parse("1.5m").unwrap().0, Duration::from_secs(90));
        assert_eq!(Dur::parse("7d").unwrap().0, Duration::from_secs(7 * 86400));
        assert!(Dur::parse("30").unwrap_err().contains("no unit"));
        assert!(Dur::parse("3 weeks").unwrap_err().contains("unknown unit"));
        assert_eq!(format_duration(Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(format_duration(Duration::from_millis(20)), "20ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("128KiB").unwrap().0, 131072);
        assert_eq!(ByteSize::parse("10MB").unwrap().0, 10_000_000);
        assert_eq!(ByteSize::parse("42").unwrap().0, 42);
        assert!(ByteSize::parse("1TB").is_err());
    }

    #[test]
    fn topics() {
        let t = TopicTemplate::parse(
            "/${productKey}/${deviceName}/user/status",
            &["productKey", "deviceName"],
        )
        .unwrap();
        let r = t.render(|v| {
            Some(if v == "productKey" {
                "pk".into()
            } else {
                "dev".into()
            })
        });
        assert_eq!(r, "/pk/dev/user/status");
        assert!(TopicTemplate::parse("/${nope}/x", &["productKey"])
            .unwrap_err()
            .contains("unknown placeholder ${nope}"));
        assert!(TopicTemplate::parse("/a/+/b", &[]).is_err());
        assert!(TopicTemplate::parse("/a/${x", &["x"]).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = SecretSource::Inline("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            format!("{:?}", s.resolve(std::path::Path::new("/")).unwrap()),
            "***"
        );
        let e = SecretSource::Env {
            env: "EDGE_AGENT_SURELY_UNSET_VAR".into(),
        }
        .resolve(std::path::Path::new("/"))
        .unwrap_err();
        assert_eq!(
            e,
            "environment variable EDGE_AGENT_SURELY_UNSET_VAR is not set"
        );
    }

    #[test]
    fn a_relative_secret_file_is_read_beside_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("device-secret"), " s3cr3t\n").unwrap();
        let s = SecretSource::File {
            file: "device-secret".into(),
        };
        assert_eq!(s.resolve(dir.path()).unwrap().expose(), "s3cr3t");
        assert_eq!(
            s.rooted(dir.path())
                .resolve(std::path::Path::new("/x"))
                .unwrap()
                .expose(),
            "s3cr3t"
        );
        let e = s.resolve(std::path::Path::new("/nonexistent")).unwrap_err();
        assert!(e.contains("/nonexistent/device-secret"), "{e}");
    }
}
