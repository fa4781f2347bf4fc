//! The update state machine. No I/O here: every transition is a method that checks
//! where it comes from and returns an error on one that is not allowed, and the journal
//! stores the result. Time is passed in, so plain tests drive every path.

use serde::{Deserialize, Serialize};

use super::Slot;

/// Where an update came from, so its progress and result go back there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Aliyun { request_id: String },
    Aws { job_id: String },
    Http,
    Cli,
}

/// The package hash the cloud gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hash {
    Sha256(String),
    Md5(String),
}

impl Hash {
    pub fn hex(&self) -> &str {
        match self {
            Hash::Sha256(h) | Hash::Md5(h) => h,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Hash::Sha256(_) => "sha256",
            Hash::Md5(_) => "md5",
        }
    }
}

/// One update to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub origin: Origin,
    pub module: String,
    pub version: String,
    /// `https://…`, `http://…` (when allowed) or a local file. Written down (journal,
    /// reports) without its query string: a presigned URL's credentials are there. The
    /// installer keeps the whole URL beside the download for resuming.
    #[serde(serialize_with = "redacted")]
    pub url: String,
    pub size: Option<u64>,
    pub hash: Option<Hash>,
    /// Detached signature of the package (docs/ota.md, Signatures), as it came.
    pub signature: Option<String>,
    /// The package is in Alibaba Cloud OSS, fetched with these temporary credentials.
    /// The journal keeps where it is but not the credentials: after a restart the
    /// update server is asked again and gives fresh ones.
    #[serde(
        default,
        with = "super::oss::journal_form",
        skip_serializing_if = "Option::is_none"
    )]
    pub oss: Option<std::sync::Arc<super::oss::OssAccess>>,
    /// A technician's `--force`: allows downgrades and going under the floor.
    #[serde(default)]
    pub force: bool,
    /// The same version as a full package, offered beside a delta package: installed
    /// instead when the robot is not the delta's base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<FullPackage>,
}

/// A full package offered beside a delta (docs/ota.md, Delta packages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullPackage {
    #[serde(serialize_with = "redacted")]
    pub url: String,
    pub size: Option<u64>,
    pub hash: Option<Hash>,
    pub signature: Option<String>,
}

impl FullPackage {
    /// `{"url", "sha256" | "md5", "size", "signature"}` as the update offers it.
    pub fn from_json(v: &serde_json::Value) -> Result<FullPackage, String> {
        let s = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        Ok(FullPackage {
            url: s("url").ok_or("the full package has no url")?,
            size: v.get("size").and_then(serde_json::Value::as_u64),
            hash: s("sha256")
                .map(Hash::Sha256)
                .or_else(|| s("md5").map(Hash::Md5)),
            signature: s("signature"),
        })
    }
}

impl Job {
    /// The same update from its full package (the delta's offer taken away).
    pub fn full_instead(&self) -> Option<Job> {
        let f = self.full.clone()?;
        Some(Job {
            url: f.url,
            size: f.size,
            hash: f.hash,
            signature: f.signature,
            oss: None,
            full: None,
            ..self.clone()
        })
    }
}

fn redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::download::redact_url(url))
}

/// Which step failed, as the platforms want it reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailStep {
    /// -1: the upgrade failed (refused, health check, too many restarts).
    Upgrade,
    /// -2: download failed.
    Download,
    /// -3: verification failed (hash, signature, package contents).
    Verify,
    /// -4: installation failed.
    Install,
}

impl FailStep {
    /// The Aliyun progress `step` for this failure.
    pub fn aliyun_step(self) -> i32 {
        match self {
            FailStep::Upgrade => -1,
            FailStep::Download => -2,
            FailStep::Verify => -3,
            FailStep::Install => -4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Phase {
    Idle,
    Downloading {
        job: Job,
    },
    Verifying {
        job: Job,
    },
    Installing {
        job: Job,
        slot: Slot,
    },
    /// Installed and health-checked in the inactive slot; waiting to switch (e.g. while
    /// the robot is busy).
    InstalledPendingSwitch {
        job: Job,
        slot: Slot,
        since_ms: u64,
    },
    /// `current` points at the new slot; it is committed after the soak time, and
    /// rolled back after a failure or too many agent starts.
    SwitchedPendingConfirm {
        job: Job,
        slot: Slot,
        previous: Option<Slot>,
        since_ms: u64,
        starts: u32,
    },
    Committed {
        job: Job,
        slot: Slot,
        at_ms: u64,
    },
    RolledBack {
        job: Job,
        reason: String,
        at_ms: u64,
    },
    Failed {
        job: Job,
        step: FailStep,
        reason: String,
        at_ms: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot {event} while {state}")]
pub struct InvalidTransition {
    pub event: &'static str,
    pub state: &'static str,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Downloading { .. } => "downloading",
            Phase::Verifying { .. } => "verifying",
            Phase::Installing { .. } => "installing",
            Phase::InstalledPendingSwitch { .. } => "installed-pending-switch",
            Phase::SwitchedPendingConfirm { .. } => "switched-pending-confirm",
            Phase::Committed { .. } => "committed",
            Phase::RolledBack { .. } => "rolled-back",
            Phase::Failed { .. } => "failed",
        }
    }

    /// Whether an update is under way (another one must wait).
    pub fn busy(&self) -> bool {
        matches!(
            self,
            Phase::Downloading { .. }
                | Phase::Verifying { .. }
                | Phase::Installing { .. }
                | Phase::InstalledPendingSwitch { .. }
                | Phase::SwitchedPendingConfirm { .. }
        )
    }

    pub fn job(&self) -> Option<&Job> {
        match self {
            Phase::Idle => None,
            Phase::Downloading { job }
            | Phase::Verifying { job }
            | Phase::Installing { job, .. }
            | Phase::InstalledPendingSwitch { job, .. }
            | Phase::SwitchedPendingConfirm { job, .. }
            | Phase::Committed { job, .. }
            | Phase::RolledBack { job, .. }
            | Phase::Failed { job, .. } => Some(job),
        }
    }

    fn invalid(&self, event: &'static str) -> InvalidTransition {
        InvalidTransition {
            event,
            state: self.name(),
        }
    }

    pub fn start(&self, job: Job) -> Result<Phase, InvalidTransition> {
        if self.busy() {
            return Err(self.invalid("start an update"));
        }
        Ok(Phase::Downloading { job })
    }

    /// Back to downloading, for another package of the same update (a delta's full
    /// package), before anything was switched.
    pub fn refetch(&self, job: Job) -> Result<Phase, InvalidTransition> {
        match self {
            Phase::Verifying { .. } | Phase::Installing { .. } => Ok(Phase::Downloading { job }),
            _ => Err(self.invalid("fetch the full package")),
        }
    }

    pub fn downloaded(&self) -> Result<Phase, InvalidTransition> {
        match self {
            Phase::Downloading { job } => Ok(Phase::Verifying { job: job.clone() }),
            _ => Err(self.invalid("finish a download")),
        }
    }

    pub fn verified(&self, slot: Slot) -> Result<Phase, InvalidTransition> {
        match self {
            Phase::Verifying { job } => Ok(Phase::Installing {
                job: job.clone(),
                slot,
            }),
            _ => Err(self.invalid("finish verification")),
        }
    }

    /// Installed and health-checked.
    pub fn installed(&self, now_ms: u64) -> Result<Phase, InvalidTransition> {
        match self {
            Phase::Installing { job, slot } => Ok(Phase::InstalledPendingSwitch {
                job: job.clone(),
                slot: *slot,
                since_ms: now_ms,
            }),
            _ => Err(self.invalid("finish installing")),
        }
    }

    pub fn switched(
        &self,
        previous: Option<Slot>,
        now_ms: u64,
    ) -> Result<Phase, InvalidTransition> {
        match self {
            Phase::InstalledPendingSwitch { job, slot, .. } => Ok(Phase::SwitchedPendingConfirm {
                job: job.clone(),
                slot: *slot,
                previous,
                since_ms: now_ms,
                starts: 0,
            }),
            _ => Err(self.invalid("switch slots")),
        }
    }

    /// The agent started while an update waited for confirmation.
    pub fn agent_started(&self) -> Result<Phase, InvalidTransition> {
        match self {
            Phase::SwitchedPendingConfirm {
                job,
                slot,
                previous,
                since_ms,
                starts,
            } => Ok(Phase::SwitchedPendingConfirm {
                job: job.clone(),
                slot: *slot,
                previous: *previous,
                since_ms: *since_ms,
                starts: starts + 1,
            }),
            _ => Err(self.invalid("count an agent start")),
        }
    }

    pub fn confirmed(&self, now_ms: u64) -> Result<Phase, InvalidTransition> {
        match self {
            Phase::SwitchedPendingConfirm { job, slot, .. } => Ok(Phase::Committed {
                job: job.clone(),
                slot: *slot,
                at_ms: now_ms,
            }),
            _ => Err(self.invalid("confirm an update")),
        }
    }

    /// Back to the previous slot (switched) or stay on it (not switched yet).
    pub fn rolled_back(&self, reason: String, now_ms: u64) -> Result<Phase, InvalidTransition> {
        match self {
            Phase::SwitchedPendingConfirm { job, .. }
            | Phase::InstalledPendingSwitch { job, .. }
            | Phase::Installing { job, .. } => Ok(Phase::RolledBack {
                job: job.clone(),
                reason,
                at_ms: now_ms,
            }),
            _ => Err(self.invalid("roll back")),
        }
    }

    pub fn failed(
        &self,
        step: FailStep,
        reason: String,
        now_ms: u64,
    ) -> Result<Phase, InvalidTransition> {
        match self {
            Phase::Downloading { job }
            | Phase::Verifying { job }
            | Phase::Installing { job, .. }
            | Phase::InstalledPendingSwitch { job, .. } => Ok(Phase::Failed {
                job: job.clone(),
                step,
                reason,
                at_ms: now_ms,
            }),
            _ => Err(self.invalid("fail an update")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            origin: Origin::Cli,
            module: "detector".into(),
            version: "1.5.0".into(),
            url: "https://x/p.tar.gz".into(),
            size: Some(10),
            hash: Some(Hash::Sha256("ab".into())),
            signature: None,
            force: false,
            oss: None,
            full: None,
        }
    }

    #[test]
    fn the_happy_path() {
        let p = Phase::Idle.start(job()).unwrap();
        assert_eq!(p.name(), "downloading");
        let p = p.downloaded().unwrap().verified(Slot::B).unwrap();
        assert_eq!(p.name(), "installing");
        let p = p
            .installed(10)
            .unwrap()
            .switched(Some(Slot::A), 20)
            .unwrap();
        let p = p.agent_started().unwrap().agent_started().unwrap();
        match &p {
            Phase::SwitchedPendingConfirm {
                starts, previous, ..
            } => {
                assert_eq!((*starts, *previous), (2, Some(Slot::A)));
            }
            other => panic!("{other:?}"),
        }
        let p = p.confirmed(30).unwrap();
        assert_eq!(p.name(), "committed");
        assert!(!p.busy());
        // A new update may start after a commit, a rollback or a failure.
        assert!(p.start(job()).is_ok());
    }

    #[test]
    fn transitions_check_where_they_come_from() {
        let idle = Phase::Idle;
        assert_eq!(
            idle.downloaded().unwrap_err().to_string(),
            "cannot finish a download while idle"
        );
        assert!(idle.confirmed(0).is_err());
        assert!(idle.rolled_back("x".into(), 0).is_err());
        assert!(idle.failed(FailStep::Download, "x".into(), 0).is_err());
        let d = idle.start(job()).unwrap();
        assert_eq!(
            d.start(job()).unwrap_err().to_string(),
            "cannot start an update while downloading"
        );
        assert!(d.verified(Slot::A).is_err());
        assert!(d.switched(None, 0).is_err());
        assert!(d.agent_started().is_err());
        let f = d.failed(FailStep::Download, "404".into(), 5).unwrap();
        assert_eq!(f.name(), "failed");
        assert!(f.rolled_back("x".into(), 0).is_err());
        let s = Phase::Idle
            .start(job())
            .unwrap()
            .downloaded()
            .unwrap()
            .verified(Slot::A)
            .unwrap()
            .installed(0)
            .unwrap()
            .switched(None, 0)
            .unwrap();
        assert!(s.failed(FailStep::Install, "x".into(), 0).is_err());
        let r = s.rolled_back("health check failed".into(), 9).unwrap();
        assert_eq!(r.name(), "rolled-back");
        assert_eq!(FailStep::Verify.aliyun_step(), -3);
    }
}
