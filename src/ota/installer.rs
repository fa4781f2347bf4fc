//! The installer: takes one update job through download, verification, installation
//! into the inactive slot, health check, switch, and confirmation or rollback, saving
//! the journal at every step, and recovering from wherever a power cut stopped it.
//!
//! Every change needs the store's lock ([`Installer::acquire`]), which also reads the
//! journal again from disk: the agent and a technician's `ota` command share one store,
//! and acting on a journal read before the other changed it could overwrite the slot
//! the robot falls back to.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::OtaSettings;
use super::download::{self, DownloadError, DownloadSettings};
use super::machine::{FailStep, Hash, InvalidTransition, Job, Phase};
use super::package::{self, Limits, Manifest, PackageError};
use super::store::{Committed, Journal, LockError, StateLock, Store, StoreError};
use super::{crash_point, hooks, selfupdate, version, Slot};
use crate::clock::{file_stamp, now_ms, rfc3339_ms};

/// Checks a model file of a new slot (loads and runs it). Provided by the detector.
/// What a hook is told, as environment variables.
type HookEnv = Vec<(&'static str, String)>;

pub type ModelCheck = Arc<dyn Fn(&Path) -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    #[error("OTA state: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A change was attempted without the store's lock: a fault in the caller.
    #[error("the OTA state is changed only under its lock")]
    NotLocked,
    #[error("{0}")]
    Refused(String),
}

/// What happened to a job, for reports.
#[derive(Debug, Clone)]
pub enum OtaEvent {
    Progress {
        job: Job,
        percent: u8,
        desc: String,
        bytes: u64,
        total: Option<u64>,
    },
    Deferred {
        job: Job,
        reason: String,
    },
    Switched {
        job: Job,
    },
    Committed {
        job: Job,
        log: Vec<String>,
    },
    Failed {
        job: Job,
        step: FailStep,
        reason: String,
        current: Option<String>,
        log: Vec<String>,
    },
    RolledBack {
        job: Job,
        reason: String,
        restored: bool,
        current: Option<String>,
        log: Vec<String>,
    },
}

/// Whether two jobs are the same update, the one read back from the journal (URL
/// redacted) or not.
pub fn same_job(a: &Job, b: &Job) -> bool {
    // Temporary credentials change from one offer to the next; the job does not.
    let shown = |j: &Job| Job {
        url: download::redact_url(&j.url),
        oss: None,
        ..j.clone()
    };
    shown(a) == shown(b)
}

/// What recovery found on start.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    Nothing,
    /// An interrupted job to take up again.
    Resume(Job),
    /// A new slot still waiting for confirmation.
    PendingConfirm(Job),
    RolledBack(String),
}

pub struct Installer {
    pub store: Store,
    pub journal: Journal,
    pub settings: OtaSettings,
    http: Option<reqwest::Client>,
    events: Option<mpsc::Sender<OtaEvent>>,
    model_check: Option<ModelCheck>,
    busy: Option<watch::Receiver<bool>>,
    log: Vec<String>,
    lock: Option<StateLock>,
    /// The launcher counted this process's start of an unconfirmed slot already.
    start_counted: bool,
}

impl Installer {
    pub fn open(settings: OtaSettings) -> Result<Self, OtaError> {
        let store = Store::open(&settings.dir)?;
        let journal = store.load_journal()?;
        // New models are loaded and run once with the process's ONNX runtime.
        let onnx = settings.onnx.clone();
        let model_check: ModelCheck = Arc::new(move |path: &Path| {
            let rt = crate::onnx::runtime(&onnx)?;
            crate::onnx::smoke_test(rt, path)
        });
        Ok(Self {
            store,
            journal,
            settings,
            http: None,
            events: None,
            model_check: Some(model_check),
            busy: None,
            log: Vec::new(),
            lock: None,
            start_counted: false,
        })
    }

    /// Takes the store's lock (refused at once when another process holds it) and reads
    /// the journal again: whatever was in memory may be out of date.
    pub fn acquire(&mut self) -> Result<(), OtaError> {
        if self.lock.is_none() {
            self.lock = Some(StateLock::try_acquire(&self.store.root)?);
        }
        self.journal = self.store.load_journal()?;
        Ok(())
    }

    /// Gives the lock back (the other process may now change the store).
    pub fn release(&mut self) {
        self.lock = None;
    }

    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }

    /// Reads the journal again without the lock (it is replaced atomically, so it is
    /// always whole); true when another process has changed it since.
    pub fn reload(&mut self) -> Result<bool, OtaError> {
        let j = self.store.load_journal()?;
        let changed = j != self.journal;
        self.journal = j;
        Ok(changed)
    }

    fn held(&self) -> Result<(), OtaError> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(OtaError::NotLocked),
        }
    }

    /// Why `slot` may not be written: it is the one `current` points at, or it holds the
    /// committed version (the robot's fallback). Checked before any slot is cleared or
    /// written.
    pub fn slot_in_use(&self, slot: Slot) -> Option<String> {
        if self.store.active() == Some(slot) {
            return Some(format!("slot {} is the one the robot runs", slot.name()));
        }
        match &self.journal.committed {
            Some(c) if c.slot == slot => Some(format!(
                "slot {} holds the committed version {}",
                slot.name(),
                c.version
            )),
            _ => None,
        }
    }

    /// The slot a new package goes into: the other one than `current` (or, with no
    /// `current`, than the committed one).
    fn target_slot(&self) -> Result<Slot, String> {
        let base = self
            .store
            .active()
            .or(self.journal.committed.as_ref().map(|c| c.slot));
        let slot = base.map_or(Slot::A, Slot::other);
        match self.slot_in_use(slot) {
            Some(why) => Err(format!(
                "no slot is free to install into: {why} (`edge-agent ota recover` puts the store in order)"
            )),
            None => Ok(slot),
        }
    }

    pub fn with_events(mut self, tx: mpsc::Sender<OtaEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// This process's start was counted by the launcher (docs/ota.md, Self-update).
    pub fn with_start_counted(mut self, counted: bool) -> Self {
        self.start_counted = counted;
        self
    }

    /// The launcher's count of a start (src/ota/selfupdate.rs): with a slot waiting for
    /// confirmation, counts this start and says whether its agent may run (`Some(true)`),
    /// or, when it has used up its starts, leaves the count to the installed agent, which
    /// rolls back (`None`). `Some(false)`: nothing to count.
    pub fn count_launch(&mut self) -> Result<Option<bool>, OtaError> {
        self.held()?;
        let Phase::SwitchedPendingConfirm { starts, .. } = &self.journal.phase else {
            return Ok(Some(false));
        };
        if starts + 1 > self.settings.max_starts {
            return Ok(None);
        }
        let next = self.journal.phase.agent_started()?;
        self.save(next)?;
        Ok(Some(true))
    }

    pub fn with_model_check(mut self, check: ModelCheck) -> Self {
        self.model_check = Some(check);
        self
    }

    /// A "robot busy" signal (e.g. a detection in progress): switches wait while true.
    pub fn with_busy(mut self, busy: watch::Receiver<bool>) -> Self {
        self.busy = Some(busy);
        self
    }

    /// The committed version, if any.
    pub fn current_version(&self) -> Option<String> {
        self.journal.committed.as_ref().map(|c| c.version.clone())
    }

    /// The folder of the active slot (`current`), if one is installed.
    pub fn current_dir(&self) -> Option<PathBuf> {
        self.store.active().map(|_| self.store.current_link())
    }

    /// A line of the job's upgrade log. It is also appended to `job.log` in the store,
    /// so the report of a job that spans restarts (a resumed download, a rollback after
    /// the new agent kept crashing) carries all of it.
    fn note(&mut self, line: impl Into<String>) {
        let line = format!("{} {}", rfc3339_ms(now_ms()), line.into());
        tracing::debug!(target: "edge_agent::ota", "{line}");
        if self.lock.is_some() {
            use std::io::Write as _;
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.job_log_path())
                .and_then(|mut f| writeln!(f, "{line}"));
        }
        self.log.push(line);
    }

    fn job_log_path(&self) -> PathBuf {
        self.store.root.join("job.log")
    }

    /// A new job's log starts empty.
    fn start_log(&mut self) {
        self.log.clear();
        let _ = std::fs::write(self.job_log_path(), b"");
    }

    /// The job's log so far, for a final report: from `job.log` when it can be read.
    fn take_log(&mut self) -> Vec<String> {
        let mem = std::mem::take(&mut self.log);
        match std::fs::read_to_string(self.job_log_path()) {
            Ok(text) if !text.is_empty() => text.lines().map(str::to_owned).collect(),
            _ => mem,
        }
    }

    fn emit(&self, e: OtaEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.try_send(e);
        }
    }

    fn save(&mut self, phase: Phase) -> Result<(), OtaError> {
        self.held()?;
        self.journal.phase = phase;
        self.store.save_journal(&mut self.journal)?;
        Ok(())
    }

    fn package_path(&self, job: &Job) -> PathBuf {
        let safe: String = format!("{}-{}", job.module, job.version)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.store.downloads().join(format!("{safe}.pkg"))
    }

    /// Brings the store to a known state after a restart or power cut.
    pub fn recover(&mut self) -> Result<Recovery, OtaError> {
        self.held()?;
        let phase = self.journal.phase.clone();
        let r = match &phase {
            Phase::Downloading { job }
            | Phase::Verifying { job }
            | Phase::Installing { job, .. } => {
                tracing::info!(version = %job.version, state = phase.name(), "An update was interrupted; taking it up again.");
                Recovery::Resume(job.clone())
            }
            Phase::InstalledPendingSwitch { job, slot, .. } => {
                if self.store.active() == Some(*slot) {
                    // The switch happened; the journal write after it did not.
                    let previous = Some(slot.other());
                    self.save(phase.switched(previous, now_ms())?)?;
                    Recovery::PendingConfirm(job.clone())
                } else {
                    Recovery::Resume(job.clone())
                }
            }
            // The launcher counted this start already.
            Phase::SwitchedPendingConfirm { job, .. }
                if std::mem::take(&mut self.start_counted) =>
            {
                Recovery::PendingConfirm(job.clone())
            }
            Phase::SwitchedPendingConfirm {
                job,
                starts,
                previous,
                slot,
                ..
            } => {
                let next = phase.agent_started()?;
                let starts = starts + 1;
                if starts > self.settings.max_starts {
                    let reason = format!(
                        "the agent started {starts} times on the new slot without confirming it"
                    );
                    tracing::warn!(version = %job.version, starts, "Rolling back an update that did not settle.");
                    let restored = self.switch_back(*previous)?;
                    self.save(next.rolled_back(reason.clone(), now_ms())?)?;
                    self.clear_rejected(*slot);
                    self.note(format!("rolled back: {reason}"));
                    let log = self.take_log();
                    self.emit(OtaEvent::RolledBack {
                        job: job.clone(),
                        reason: reason.clone(),
                        restored,
                        current: self.current_version(),
                        log,
                    });
                    Recovery::RolledBack(reason)
                } else {
                    self.save(next)?;
                    Recovery::PendingConfirm(job.clone())
                }
            }
            Phase::Idle
            | Phase::Committed { .. }
            | Phase::RolledBack { .. }
            | Phase::Failed { .. } => {
                self.align_current()?;
                Recovery::Nothing
            }
        };
        Ok(r)
    }

    /// Removes complete packages and kept URLs from `downloads/`: with no update under
    /// way none belongs to anything (a cut between a commit and this clean-up leaves
    /// them). Partial downloads stay, for a new job of the same file to resume.
    fn remove_downloads(&self) {
        let Ok(dir) = std::fs::read_dir(self.store.downloads()) else {
            return;
        };
        for e in dir.flatten() {
            let p = e.path();
            if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("pkg" | "source")
            ) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }

    /// With no update under way, `current` is the committed slot (a cut during a
    /// rollback switch can leave it elsewhere), and `downloads/` holds no package.
    fn align_current(&mut self) -> Result<(), OtaError> {
        self.held()?;
        self.remove_downloads();
        if let Some(c) = &self.journal.committed {
            if self.store.active() != Some(c.slot) {
                tracing::warn!(
                    slot = c.slot.name(),
                    "Pointing current back at the committed slot."
                );
                self.store.switch_to(c.slot)?;
            }
        }
        Ok(())
    }

    fn download_settings(&self) -> DownloadSettings {
        DownloadSettings {
            retries: self.settings.download_retries,
            stall_timeout: self.settings.stall_timeout,
            max_rate: self.settings.max_download_rate,
            allow_http: self.settings.allow_http,
            max_bytes: self.settings.max_package_bytes,
            oss: None,
        }
    }

    /// The HTTP client downloads use (the configured CA, if any), made once.
    pub fn http(&mut self) -> Result<reqwest::Client, OtaError> {
        if let Some(c) = &self.http {
            return Ok(c.clone());
        }
        let tls = match &self.settings.ca_file {
            Some(ca) => Some(
                crate::mqtt::tls::client_config(&crate::mqtt::config::TlsConfig {
                    ca_file: Some(ca.clone()),
                    ..Default::default()
                })
                .map_err(|e| OtaError::Refused(e.to_string()))?,
            ),
            None => None,
        };
        let c = download::client(tls).map_err(OtaError::Refused)?;
        self.http = Some(c.clone());
        Ok(c)
    }

    fn fail(&mut self, step: FailStep, reason: String) -> Result<Phase, OtaError> {
        let job = self.journal.phase.job().cloned();
        // The package goes; a partial download stays for a retry of the same file.
        self.remove_downloads();
        self.note(format!("failed: {reason}"));
        tracing::warn!(step = ?step, reason = %reason, "Update failed; the robot stays on its current software.");
        let next = self.journal.phase.failed(step, reason.clone(), now_ms())?;
        self.save(next.clone())?;
        if let Some(job) = job {
            let log = self.take_log();
            self.emit(OtaEvent::Failed {
                job,
                step,
                reason,
                current: self.current_version(),
                log,
            });
        }
        Ok(next)
    }

    fn progress(&self, job: &Job, percent: u8, desc: &str, bytes: u64, total: Option<u64>) {
        self.emit(OtaEvent::Progress {
            job: job.clone(),
            percent,
            desc: desc.to_owned(),
            bytes,
            total,
        });
    }

    /// The whole URL of a job (with its query string), kept beside the download so a job
    /// taken up after a restart can fetch again: the journal holds the URL redacted.
    fn source_path(pkg: &Path) -> PathBuf {
        pkg.with_extension("source")
    }

    fn keep_source(&self, job: &Job) {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = Self::source_path(&self.package_path(job));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(job.url.as_bytes()));
    }

    /// A job read back from the journal has its URL redacted: the whole one comes from
    /// beside the download, when it is the same URL.
    fn restore_source(&self, job: &mut Job) {
        let shown = download::redact_url(&job.url);
        if let Ok(full) = std::fs::read_to_string(Self::source_path(&self.package_path(job))) {
            if download::redact_url(full.trim()) == shown {
                job.url = full.trim().to_owned();
            }
        }
    }

    /// The URL (redacted) a partial download beside `pkg` came from.
    fn partial_url(&self, pkg: &Path) -> String {
        std::fs::read(pkg.with_extension("part.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["url"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Checks a job before anything is fetched: module, version, floor.
    pub fn admit(&self, job: &Job) -> Result<(), String> {
        if job.module != self.settings.module {
            return Err(format!(
                "module '{}' is not the one this agent installs ('{}')",
                job.module, self.settings.module
            ));
        }
        if job.force {
            return Ok(());
        }
        if let Some(c) = &self.journal.committed {
            if !version::newer(&job.version, &c.version) {
                return Err(format!(
                    "version {} is not newer than the installed {}",
                    job.version, c.version
                ));
            }
        }
        if let Some(floor) = &self.journal.floor {
            if version::compare(&job.version, floor) == std::cmp::Ordering::Less {
                return Err(format!(
                    "version {} is under the minimum {} (anti-rollback)",
                    job.version, floor
                ));
            }
        }
        Ok(())
    }

    /// Runs `job` to a switched (and, with `commit`, committed) slot, or to a failure
    /// or rollback; every outcome is in the journal and in the events.
    pub async fn install(
        &mut self,
        mut job: Job,
        commit: bool,
        cancel: &CancellationToken,
    ) -> Result<Phase, OtaError> {
        self.held()?;
        // Taking up an interrupted job, or starting a new one. A delta offered again
        // after the robot turned to its full package goes on with the full one.
        let mut resuming = false;
        if self.journal.phase.busy() {
            if let Some(j) = self.journal.phase.job() {
                if same_job(j, &job) {
                    resuming = true;
                } else if let Some(full) = job.full_instead().filter(|f| same_job(j, f)) {
                    job = full;
                    resuming = true;
                }
            }
        }
        if resuming {
            self.restore_source(&mut job);
        }
        if !resuming {
            if !self.journal.phase.busy() {
                self.align_current()?;
            }
            if let Err(reason) = self.admit(&job) {
                tracing::warn!(version = %job.version, reason = %reason, "Update refused.");
                // The last job's log stays in job.log: a refusal has a line of its own.
                let log = vec![format!(
                    "{} refused {} {}: {reason}",
                    rfc3339_ms(now_ms()),
                    job.module,
                    job.version
                )];
                self.emit(OtaEvent::Failed {
                    job: job.clone(),
                    step: FailStep::Upgrade,
                    reason: reason.clone(),
                    current: self.current_version(),
                    log,
                });
                return Err(OtaError::Refused(reason));
            }
            self.start_log();
            // Nothing of an earlier job may pass for this one's package.
            let pkg = self.package_path(&job);
            let _ = std::fs::remove_file(&pkg);
            if download::redact_url(&job.url) != self.partial_url(&pkg) {
                let _ = std::fs::remove_file(pkg.with_extension("part"));
            }
            self.keep_source(&job);
            self.note(format!(
                "update {} {} from {}",
                job.module,
                job.version,
                download::redact_url(&job.url)
            ));
            let next = self.journal.phase.start(job.clone())?;
            self.save(next)?;
        }
        tracing::info!(module = %job.module, version = %job.version, "Installing an update.");
        let pkg = self.package_path(&job);

        // Download (skipped when the package is already here).
        if matches!(self.journal.phase, Phase::Downloading { .. }) {
            if !pkg.exists() {
                self.progress(&job, 1, "downloading", 0, job.size);
                let http = self.http()?;
                let mut settings = self.download_settings();
                settings.oss = job.oss.clone();
                let events = self.events.clone();
                let j2 = job.clone();
                let mut last_pct = 0u8;
                let mut on_progress = move |bytes: u64, total: Option<u64>| {
                    let total = total.or(j2.size);
                    let pct = total.map_or(1, |t| {
                        (1 + bytes.saturating_mul(79) / t.max(1)).min(80) as u8
                    });
                    if pct != last_pct {
                        last_pct = pct;
                        if let Some(tx) = &events {
                            let _ = tx.try_send(OtaEvent::Progress {
                                job: j2.clone(),
                                percent: pct,
                                desc: "downloading".into(),
                                bytes,
                                total,
                            });
                        }
                    }
                };
                match download::download(&http, &job.url, &pkg, &settings, &mut on_progress, cancel)
                    .await
                {
                    Ok(n) => self.note(format!("downloaded {n} bytes")),
                    Err(DownloadError::Stopped) => return Ok(self.journal.phase.clone()),
                    Err(e) => return self.fail(FailStep::Download, e.to_string()),
                }
            }
            let next = self.journal.phase.downloaded()?;
            self.save(next)?;
        }

        // Verify the package file.
        if matches!(self.journal.phase, Phase::Verifying { .. }) {
            self.progress(&job, 82, "verifying", 0, None);
            if let Err(e) = self.verify_package(&job, &pkg).await {
                let _ = std::fs::remove_file(&pkg);
                return self.fail(FailStep::Verify, e);
            }
            self.note("package verified");
            let manifest = match package::read_member(&pkg, package::MANIFEST, 1 << 20)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    serde_json::from_slice::<Manifest>(&t)
                        .map_err(|e| format!("the package's manifest is not valid: {e}"))
                }) {
                Ok(m) => m,
                Err(reason) => {
                    let _ = std::fs::remove_file(&pkg);
                    return self.fail(FailStep::Verify, reason);
                }
            };
            if let Err(reason) = self.check_base(&manifest) {
                let _ = std::fs::remove_file(&pkg);
                return self.not_the_base(job, reason, commit, cancel).await;
            }
            if let Err(reason) = self.pre_install(&job, &pkg, &manifest).await {
                tracing::warn!(version = %job.version, reason = %reason, "Update refused by the package's pre_install hook.");
                let _ = std::fs::remove_file(&pkg);
                return self.fail(FailStep::Upgrade, reason);
            }
            let slot = match self.target_slot() {
                Ok(slot) => slot,
                Err(reason) => return self.fail(FailStep::Install, reason),
            };
            let next = self.journal.phase.verified(slot)?;
            self.save(next)?;
        }

        // Install into the inactive slot and check it.
        if let Phase::Installing { slot, .. } = self.journal.phase.clone() {
            self.progress(&job, 88, "installing", 0, None);
            if let Some(why) = self.slot_in_use(slot) {
                tracing::error!(slot = slot.name(), reason = %why, "Refusing to install into a slot in use.");
                return self.fail(FailStep::Install, format!("not installing: {why}"));
            }
            self.store.clear_slot(slot)?;
            let dir = self.store.slot_dir(slot);
            let limits = Limits::for_package(
                std::fs::metadata(&pkg).map(|m| m.len()).unwrap_or(0),
                self.settings.max_extracted_bytes,
                self.settings.max_expansion,
                &self.store.root,
                self.settings.max_files,
            );
            let pkg2 = pkg.clone();
            let dir2 = dir.clone();
            let base = self.store.active().map(|s| self.store.slot_dir(s));
            let total = std::fs::metadata(&pkg).map(|m| m.len()).unwrap_or(0);
            let mut progress = self.step_progress(&job, 88, "installing", total);
            let extracted = tokio::task::spawn_blocking(move || {
                package::extract_with(&pkg2, &dir2, limits, base.as_deref(), &mut progress)
            })
            .await
            .map_err(|e| OtaError::Refused(e.to_string()))?;
            let manifest = match extracted {
                Ok(m) => m,
                Err(PackageError::Base(reason)) => {
                    let _ = self.store.clear_slot(slot);
                    let _ = std::fs::remove_file(&pkg);
                    return self.not_the_base(job, reason, commit, cancel).await;
                }
                Err(e) => {
                    let step = match e {
                        PackageError::Io(..) => FailStep::Install,
                        _ => FailStep::Verify,
                    };
                    let _ = self.store.clear_slot(slot);
                    return self.fail(step, e.to_string());
                }
            };
            if let Err(e) = self.check_manifest(&job, &manifest) {
                let _ = self.store.clear_slot(slot);
                return self.fail(FailStep::Verify, e);
            }
            crate::ota::store::sync_dir(&dir)?;
            if let Some(b) = &manifest.base {
                let patched = |p: bool| {
                    manifest
                        .components
                        .iter()
                        .filter(|c| c.delta.as_ref().is_some_and(|d| d.patch.is_some() == p))
                        .count()
                };
                self.note(format!(
                    "rebuilt from version {}: {} patched, {} unchanged",
                    b.version,
                    patched(true),
                    patched(false)
                ));
            }
            self.note(format!("installed into slot {}", slot.name()));
            self.progress(&job, 94, "health check", 0, None);
            if let Err(reason) = self.health_check(&dir, &manifest).await {
                self.note(format!("health check failed: {reason}"));
                tracing::warn!(reason = %reason, "The new slot failed its health check; staying on the current one.");
                let next = self
                    .journal
                    .phase
                    .rolled_back(format!("health check failed: {reason}"), now_ms())?;
                self.save(next.clone())?;
                let old = self.store.active();
                if let Some((hook, dir, env)) =
                    self.slot_hook("post_rollback", |h| h.post_rollback, &job, slot, old)
                {
                    if let Ok(ran) =
                        tokio::task::spawn_blocking(move || hooks::run(&hook, &dir, &env)).await
                    {
                        self.note_hook("post_rollback", &ran);
                    }
                }
                // Nothing may ever start the rejected package.
                self.clear_rejected(slot);
                let log = self.take_log();
                self.emit(OtaEvent::RolledBack {
                    job: job.clone(),
                    reason: format!("health check failed: {reason}"),
                    restored: true,
                    current: self.current_version(),
                    log,
                });
                return Ok(next);
            }
            self.note("health check passed");
            let next = self.journal.phase.installed(now_ms())?;
            self.save(next)?;
        }

        // Switch, when the robot is not busy (or the deadline passed).
        if let Phase::InstalledPendingSwitch { slot, .. } = self.journal.phase.clone() {
            self.wait_not_busy(&job, cancel).await;
            let previous = self.store.active();
            self.store.switch_to(slot)?;
            crash_point("switch: done, journal not written");
            let next = self.journal.phase.switched(previous, now_ms())?;
            self.save(next)?;
            self.note(format!("switched to slot {}", slot.name()));
            tracing::info!(version = %job.version, slot = slot.name(), "Switched to the new slot.");
            if let Some((hook, dir, env)) =
                self.slot_hook("post_switch", |h| h.post_switch, &job, slot, previous)
            {
                let ran = tokio::task::spawn_blocking(move || hooks::run(&hook, &dir, &env))
                    .await
                    .map_err(|e| OtaError::Refused(e.to_string()))?;
                self.note_hook("post_switch", &ran);
                if let Some(why) = ran.failure {
                    tracing::warn!(version = %job.version, reason = %why, "The package's post_switch hook failed; rolling back.");
                    self.rollback(&format!("the post_switch hook failed: {why}"))?;
                    return Ok(self.journal.phase.clone());
                }
            }
            self.progress(&job, 98, "switched", 0, None);
            self.emit(OtaEvent::Switched { job: job.clone() });
        }
        if commit && matches!(self.journal.phase, Phase::SwitchedPendingConfirm { .. }) {
            self.confirm()?;
        }
        Ok(self.journal.phase.clone())
    }

    /// A progress callback for a blocking step over the package file (`total` bytes):
    /// sends progress events, at most one per percent of the file.
    fn step_progress(
        &self,
        job: &Job,
        percent: u8,
        desc: &'static str,
        total: u64,
    ) -> impl FnMut(u64) + Send + 'static {
        let events = self.events.clone();
        let job = job.clone();
        let mut last = 0u64;
        move |bytes: u64| {
            let step = (total / 100).max(1);
            if bytes / step != last / step || bytes == total {
                last = bytes;
                if let Some(tx) = &events {
                    let _ = tx.try_send(OtaEvent::Progress {
                        job: job.clone(),
                        percent,
                        desc: desc.to_owned(),
                        bytes,
                        total: Some(total),
                    });
                }
            }
        }
    }

    async fn verify_package(&mut self, job: &Job, pkg: &Path) -> Result<(), String> {
        let remote = job.url.starts_with("http://") || job.url.starts_with("https://");
        if job.hash.is_none() && remote {
            return Err("the update gives no package hash".into());
        }
        let signature: Option<Vec<u8>> = match (self.settings.keys.is_empty(), &job.signature) {
            (true, _) => None,
            (false, Some(s)) => Some(s.as_bytes().to_vec()),
            (false, None) => Some(self.fetch_signature(&job.url).await?),
        };
        // One pass over the file, off the runtime's thread, for the hash and the
        // signature alike.
        let total = std::fs::metadata(pkg).map(|m| m.len()).unwrap_or(0);
        let mut progress = self.step_progress(job, 82, "verifying", total);
        let md5 = matches!(job.hash, Some(Hash::Md5(_)));
        let path = pkg.to_path_buf();
        let d = tokio::task::spawn_blocking(move || package::digests(&path, md5, &mut progress))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        match &job.hash {
            Some(h) => package::check_digest(&d, h).map_err(|e| e.to_string())?,
            None => self.note("no hash given for a local package"),
        }
        if let Some(sig) = signature {
            let key = self
                .settings
                .keys
                .verify(&d.sha256, &sig)
                .map_err(|e| e.to_string())?;
            let note = format!("signature verified ({}, {})", key.algorithm(), key.source);
            self.note(note);
        }
        Ok(())
    }

    /// `<url>.sig` (or `<file>.sig`) when the update did not carry the signature.
    async fn fetch_signature(&mut self, url: &str) -> Result<Vec<u8>, String> {
        let http = self.http().map_err(|e| e.to_string())?;
        download::fetch_small(&http, &download::sibling_url(url, ".sig"))
            .await
            .map_err(|e| format!("a signature is required and none came with the update ({e})"))
    }

    fn check_manifest(&self, job: &Job, m: &Manifest) -> Result<(), String> {
        m.check_hooks()?;
        if m.version != job.version {
            return Err(format!(
                "the package is version {}, the update announced {}",
                m.version, job.version
            ));
        }
        if let Some(min) = &m.min_agent_version {
            if version::compare(crate::VERSION, min) == std::cmp::Ordering::Less {
                return Err(format!(
                    "the package needs edge-agent {min} or newer; this is {}",
                    crate::VERSION
                ));
            }
        }
        Ok(())
    }

    /// A delta package fits when the active slot holds its base version and every base
    /// file it names (by the manifest installed there; the rebuild checks the files).
    fn check_base(&self, m: &Manifest) -> Result<(), String> {
        let Some(b) = &m.base else { return Ok(()) };
        let have = self.store.active().and_then(|s| self.slot_manifest(s));
        let Some(have) = have else {
            return Err(format!(
                "it updates version {} and no version is installed",
                b.version
            ));
        };
        if have.name != m.name || have.version != b.version {
            return Err(format!(
                "it updates {} {}; the robot has {} {}",
                m.name, b.version, have.name, have.version
            ));
        }
        for c in &m.components {
            let Some(d) = &c.delta else { continue };
            let same = have
                .components
                .iter()
                .any(|h| h.path == c.path && h.sha256.eq_ignore_ascii_case(&d.base_sha256));
            if !same {
                return Err(format!(
                    "the robot's {} is not the file the delta patches",
                    c.path
                ));
            }
        }
        Ok(())
    }

    /// A delta package that does not fit the robot: the full package of the same update
    /// when one was offered, else a refusal naming why.
    async fn not_the_base(
        &mut self,
        job: Job,
        reason: String,
        commit: bool,
        cancel: &CancellationToken,
    ) -> Result<Phase, OtaError> {
        let Some(full) = job.full_instead() else {
            tracing::warn!(version = %job.version, reason = %reason, "Delta update refused: this robot is not its base, and no full package was offered.");
            return self.fail(
                FailStep::Upgrade,
                format!("the delta package does not fit this robot: {reason}"),
            );
        };
        tracing::info!(version = %job.version, reason = %reason, "The delta package does not fit this robot; fetching the full package instead.");
        self.note(format!(
            "the delta package does not fit this robot ({reason}); fetching the full package from {}",
            download::redact_url(&full.url)
        ));
        let next = self.journal.phase.refetch(full.clone())?;
        self.keep_source(&full);
        self.save(next)?;
        Box::pin(self.install(full, commit, cancel)).await
    }

    /// The manifest installed in `slot`.
    fn slot_manifest(&self, slot: Slot) -> Option<Manifest> {
        let bytes = std::fs::read(self.store.slot_dir(slot).join(package::MANIFEST)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// What a hook is told: which hook, the module, the new and the old version and slot.
    fn hook_env(&self, name: &str, job: &Job, new: Option<Slot>, old: Option<Slot>) -> HookEnv {
        let dir = |s: Option<Slot>| {
            s.map(|s| self.store.slot_dir(s).display().to_string())
                .unwrap_or_default()
        };
        let old_version = old
            .and_then(|s| self.slot_manifest(s))
            .map(|m| m.version)
            .unwrap_or_default();
        vec![
            ("EDGE_AGENT_OTA_HOOK", name.to_owned()),
            ("EDGE_AGENT_OTA_MODULE", job.module.clone()),
            ("EDGE_AGENT_OTA_NEW_VERSION", job.version.clone()),
            ("EDGE_AGENT_OTA_NEW_SLOT", dir(new)),
            ("EDGE_AGENT_OTA_OLD_VERSION", old_version),
            ("EDGE_AGENT_OTA_OLD_SLOT", dir(old)),
        ]
    }

    /// The hook `pick` chooses from the manifest installed in `slot`, ready to run there:
    /// (hook, the slot's folder, its environment).
    fn slot_hook(
        &self,
        name: &str,
        pick: fn(package::Hooks) -> Option<package::HealthCheck>,
        job: &Job,
        slot: Slot,
        old: Option<Slot>,
    ) -> Option<(package::HealthCheck, PathBuf, HookEnv)> {
        let hook = pick(self.slot_manifest(slot)?.hooks)?;
        let env = self.hook_env(name, job, Some(slot), old);
        Some((hook, self.store.slot_dir(slot), env))
    }

    /// A hook's output and result into the OTA log (and so into the upgrade report).
    fn note_hook(&mut self, name: &str, ran: &hooks::Ran) {
        for line in &ran.output {
            self.note(format!("{name}: {line}"));
        }
        match &ran.failure {
            None => self.note(format!("{name} hook succeeded")),
            Some(why) => self.note(format!("{name} hook failed: {why}")),
        }
    }

    /// The package's `pre_install` hook, before anything touches the inactive slot: its
    /// program alone, taken from the verified package and checked against the manifest,
    /// runs from `<ota>/hook/`. Err: the update is refused, with the hook's output.
    async fn pre_install(&mut self, job: &Job, pkg: &Path, m: &Manifest) -> Result<(), String> {
        let Some(hook) = m.hooks.pre_install.clone() else {
            return Ok(());
        };
        m.check_hooks()?;
        let prog = hook.command[0].clone();
        let data = package::read_member(pkg, &prog, 16 << 20).map_err(|e| e.to_string())?;
        let listed = m.components.iter().find(|c| c.path == prog);
        let actual = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(&data))
        };
        if !listed.is_some_and(|c| c.sha256.eq_ignore_ascii_case(&actual)) {
            return Err(format!(
                "the pre_install hook '{prog}' does not match its hash in the manifest"
            ));
        }
        let dir = self.store.root.join("hook");
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join(&prog);
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::create_dir_all(path.parent().unwrap_or(&dir))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o700)
                .open(&path)?;
            std::io::Write::write_all(&mut f, &data)
        };
        write().map_err(|e| format!("cannot stage the pre_install hook: {e}"))?;
        let env = self.hook_env("pre_install", job, None, self.store.active());
        let d2 = dir.clone();
        let ran = tokio::task::spawn_blocking(move || hooks::run(&hook, &d2, &env))
            .await
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&dir);
        self.note_hook("pre_install", &ran);
        match ran.failure {
            None => Ok(()),
            Some(why) => Err(format!("the pre_install hook refused the update: {why}")),
        }
    }

    async fn health_check(&self, dir: &Path, m: &Manifest) -> Result<(), String> {
        if let Some(hc) = &m.health_check {
            let Some((prog, args)) = hc.command.split_first() else {
                return Err("the manifest's health check command is empty".into());
            };
            let prog = if prog.contains('/') && !prog.starts_with('/') {
                dir.join(prog).display().to_string()
            } else {
                prog.clone()
            };
            let mut cmd = tokio::process::Command::new(&prog);
            cmd.args(args)
                .current_dir(dir)
                .env("EDGE_AGENT_SLOT", dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let child = cmd.spawn().map_err(|e| format!("cannot run {prog}: {e}"))?;
            let out =
                tokio::time::timeout(Duration::from_secs(hc.timeout_s), child.wait_with_output())
                    .await
                    .map_err(|_| format!("{prog} did not finish within {}s", hc.timeout_s))?
                    .map_err(|e| format!("{prog}: {e}"))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: String = err
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join(" / ");
                return Err(format!("{prog} exited with {}: {tail}", out.status));
            }
        }
        for c in m
            .components
            .iter()
            .filter(|c| c.kind.as_deref() == Some(selfupdate::AGENT_KIND))
        {
            // The new agent must at least start on this machine (architecture, libraries).
            let check = package::HealthCheck {
                command: vec![c.path.clone(), "--version".into()],
                timeout_s: 20,
            };
            let d = dir.to_path_buf();
            let ran = tokio::task::spawn_blocking(move || hooks::run(&check, &d, &[]))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(why) = ran.failure {
                return Err(format!("the agent {} does not run here: {why}", c.path));
            }
            selfupdate::check_version_output(&ran.output)?;
        }
        for c in m
            .components
            .iter()
            .filter(|c| c.kind.as_deref() == Some("onnx-model"))
        {
            match &self.model_check {
                Some(check) => {
                    let check = check.clone();
                    let path = dir.join(&c.path);
                    tokio::task::spawn_blocking(move || check(&path))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("model {}: {e}", c.path))?;
                }
                None => {
                    return Err(format!(
                        "model {} cannot be checked: no ONNX Runtime in this agent",
                        c.path
                    ))
                }
            }
        }
        Ok(())
    }

    async fn wait_not_busy(&self, job: &Job, cancel: &CancellationToken) {
        let Some(mut busy) = self.busy.clone() else {
            return;
        };
        if !*busy.borrow() {
            return;
        }
        self.emit(OtaEvent::Deferred {
            job: job.clone(),
            reason: "the robot is busy (a detection is in progress)".into(),
        });
        tracing::info!("Waiting for the robot to be idle before switching.");
        let _ = tokio::time::timeout(self.settings.busy_deadline, async {
            loop {
                if !*busy.borrow_and_update() {
                    return;
                }
                tokio::select! {
                    r = busy.changed() => if r.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
            }
        })
        .await;
    }

    /// Points `current` back at `previous`; with no earlier slot the link goes away (the
    /// robot runs its built-in defaults). True when a slot was restored.
    fn switch_back(&mut self, previous: Option<Slot>) -> Result<bool, OtaError> {
        self.held()?;
        match previous {
            Some(p) => {
                self.store.switch_to(p)?;
                Ok(true)
            }
            None => {
                match std::fs::remove_file(self.store.current_link()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError {
                            path: self.store.current_link().display().to_string(),
                            source: e,
                        }
                        .into())
                    }
                }
                crate::ota::store::sync_dir(&self.store.root)?;
                Ok(false)
            }
        }
    }

    /// Empties a slot whose package was rejected, unless the robot runs it or it holds
    /// the committed version. A failure here is only logged: the journal already says
    /// the slot is not to be used.
    fn clear_rejected(&mut self, slot: Slot) {
        self.remove_downloads();
        if self.slot_in_use(slot).is_some() {
            return;
        }
        match self.store.clear_slot(slot) {
            Ok(()) => self.note(format!("emptied slot {}", slot.name())),
            Err(e) => {
                tracing::warn!(slot = slot.name(), error = %e, "Cannot empty the slot of a rejected update.")
            }
        }
    }

    /// Gives up an interrupted job that has not switched yet (it is recorded as failed).
    pub fn abandon(&mut self, reason: &str) -> Result<(), OtaError> {
        self.held()?;
        match self.journal.phase {
            Phase::Downloading { .. } | Phase::Verifying { .. } | Phase::Installing { .. } => {
                let step = match self.journal.phase {
                    Phase::Downloading { .. } => FailStep::Download,
                    Phase::Verifying { .. } => FailStep::Verify,
                    _ => FailStep::Install,
                };
                if let Phase::Installing { slot, .. } = self.journal.phase {
                    self.store.clear_slot(slot)?;
                }
                self.fail(step, reason.to_owned())?;
                Ok(())
            }
            _ => Err(OtaError::Refused(format!(
                "the update in state {} cannot be abandoned",
                self.journal.phase.name()
            ))),
        }
    }

    /// The new slot is good: commit it, raise the floor, forget the package.
    pub fn confirm(&mut self) -> Result<(), OtaError> {
        self.held()?;
        let Phase::SwitchedPendingConfirm { job, slot, .. } = self.journal.phase.clone() else {
            return Err(OtaError::Refused(format!(
                "nothing to confirm (state: {})",
                self.journal.phase.name()
            )));
        };
        let next = self.journal.phase.confirmed(now_ms())?;
        self.journal.committed = Some(Committed {
            slot,
            version: job.version.clone(),
            name: job.module.clone(),
        });
        let floor_up = self
            .journal
            .floor
            .as_ref()
            .is_none_or(|f| version::newer(&job.version, f));
        if floor_up {
            self.journal.floor = Some(job.version.clone());
        }
        self.save(next)?;
        crash_point("confirm: committed, package not removed");
        self.remove_downloads();
        self.note(format!("committed {}", job.version));
        tracing::info!(version = %job.version, "Update committed.");
        let log = self.take_log();
        self.emit(OtaEvent::Committed { job, log });
        Ok(())
    }

    /// Back to the previous slot (an unconfirmed update, or a technician's request).
    pub fn rollback(&mut self, reason: &str) -> Result<(), OtaError> {
        self.held()?;
        let phase = self.journal.phase.clone();
        let (job, previous, rejected) = match &phase {
            Phase::SwitchedPendingConfirm {
                job,
                previous,
                slot,
                ..
            } => (job.clone(), *previous, *slot),
            Phase::InstalledPendingSwitch { job, slot, .. } => {
                (job.clone(), self.store.active(), *slot)
            }
            other => {
                return Err(OtaError::Refused(format!(
                    "nothing to roll back (state: {}); to go back to an older version, install it with --force",
                    other.name()
                )))
            }
        };
        let restored = self.switch_back(previous)?;
        let next = phase.rolled_back(reason.to_owned(), now_ms())?;
        self.save(next)?;
        if let Some((hook, dir, env)) = self.slot_hook(
            "post_rollback",
            |h| h.post_rollback,
            &job,
            rejected,
            previous,
        ) {
            // Blocking: a technician's `ota rollback` runs it alike.
            let ran = hooks::run(&hook, &dir, &env);
            self.note_hook("post_rollback", &ran);
        }
        self.clear_rejected(rejected);
        self.note(format!("rolled back: {reason}"));
        tracing::warn!(version = %job.version, reason, "Rolled back to the previous slot.");
        let log = self.take_log();
        self.emit(OtaEvent::RolledBack {
            job,
            reason: reason.to_owned(),
            restored,
            current: self.current_version(),
            log,
        });
        Ok(())
    }

    /// Slots, versions and state, for `ota status` and the health report.
    pub fn status_json(&self) -> serde_json::Value {
        let slot_info = |s: Slot| {
            let dir = self.store.slot_dir(s);
            let manifest: Option<Manifest> = std::fs::read(dir.join(package::MANIFEST))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            serde_json::json!({
                "path": dir.display().to_string(),
                "name": manifest.as_ref().map(|m| m.name.clone()),
                "version": manifest.as_ref().map(|m| m.version.clone()),
            })
        };
        serde_json::json!({
            "dir": self.store.root.display().to_string(),
            "active": self.store.active().map(Slot::name),
            "slots": {"a": slot_info(Slot::A), "b": slot_info(Slot::B)},
            "committed": self.journal.committed,
            "floor": self.journal.floor,
            "journal": self.journal.phase,
            "generation": self.journal.generation,
        })
    }

    /// The upgrade log file name for the robot's report format.
    pub fn log_file_name() -> String {
        format!("ota-{}.log", file_stamp(now_ms()))
    }
}
