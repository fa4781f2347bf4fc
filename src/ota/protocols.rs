//! The OTA service inside the agent: takes update jobs from the configured cloud
//! protocol (Alibaba Cloud OTA over MQTT, AWS IoT Jobs, or an HTTP update server), runs
//! them through the installer, and reports progress and results the way each protocol
//! expects, plus the robot's own result and log reports.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::{OtaProtocol, OtaSettings};
use super::installer::{Installer, ModelCheck, OtaError, OtaEvent, Recovery};
use super::machine::{FullPackage, Hash, Job, Origin, Phase};
use super::report;
use super::store::LockError;
use crate::mqtt::{Incoming, LinkHandle, LinkState, Message, QoS};

/// Signals the rest of the agent can use.
#[derive(Clone)]
pub struct OtaHandles {
    /// The active slot's folder after every switch or rollback (the detector reloads).
    pub current: watch::Receiver<Option<PathBuf>>,
    /// Set when the active slot came to hold another agent build than the one running:
    /// the agent stops and starts again through the installed launcher.
    pub restart: watch::Receiver<Option<PathBuf>>,
}

/// Aliyun topics for this device.
struct AliyunTopics {
    inform: String,
    upgrade: String,
    progress: String,
    get: String,
    get_reply: String,
}

fn aliyun_topics(s: &OtaSettings) -> AliyunTopics {
    let (pk, dn) = (&s.product_key, &s.device_name);
    AliyunTopics {
        inform: format!("/ota/device/inform/{pk}/{dn}"),
        upgrade: format!("/ota/device/upgrade/{pk}/{dn}"),
        progress: format!("/ota/device/progress/{pk}/{dn}"),
        get: format!("/sys/{pk}/{dn}/thing/ota/firmware/get"),
        get_reply: format!("/sys/{pk}/{dn}/thing/ota/firmware/get_reply"),
    }
}

/// A job from an Aliyun push (or get_reply): `{"code":"1000","data":{…},"id":…}`.
pub fn aliyun_job(v: &Value, module_default: &str) -> Result<Job, String> {
    let data = v.get("data").ok_or("no \"data\"")?;
    if let Some(code) = v.get("code").and_then(|c| {
        c.as_str()
            .map(str::to_owned)
            .or_else(|| c.as_i64().map(|n| n.to_string()))
    }) {
        if code != "1000" && code != "200" {
            return Err(format!(
                "code {code}: {}",
                v.get("message").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    let s = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_owned);
    let version = s("version").ok_or("data.version is missing")?;
    let url = s("url").ok_or("data.url is missing")?;
    let method = s("signMethod").unwrap_or_else(|| "SHA256".into());
    let hash = if method.eq_ignore_ascii_case("md5") {
        s("sign").or_else(|| s("md5")).map(Hash::Md5)
    } else {
        s("sign")
            .map(Hash::Sha256)
            .or_else(|| s("md5").map(Hash::Md5))
    };
    let id = v
        .get("id")
        .map(|i| {
            i.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| i.to_string())
        })
        .unwrap_or_default();
    Ok(Job {
        origin: Origin::Aliyun { request_id: id },
        module: s("module").unwrap_or_else(|| module_default.to_owned()),
        version,
        url,
        size: data.get("size").and_then(Value::as_u64),
        hash,
        // The agent's own `extData.signature`, or AliOS Things' `digestsign` (base64).
        signature: ["/extData/signature", "/digestsign", "/extData/digestsign"]
            .iter()
            .find_map(|p| data.pointer(p).and_then(Value::as_str))
            .map(str::to_owned),
        force: false,
        oss: None,
        full: full_package(data.pointer("/extData/full"))?,
    })
}

/// The full package offered beside a delta, when there is one.
fn full_package(v: Option<&Value>) -> Result<Option<FullPackage>, String> {
    v.map(FullPackage::from_json).transpose()
}

/// A job from an AWS IoT job document
/// `{"firmware":{version,size,url,sha256,sig-sha256-ecdsa}}`.
pub fn aws_job(job_id: &str, doc: &Value, module: &str) -> Result<Job, String> {
    let fw = doc
        .get("firmware")
        .ok_or("the job document has no \"firmware\"")?;
    let s = |k: &str| fw.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Job {
        origin: Origin::Aws {
            job_id: job_id.to_owned(),
        },
        module: s("module").unwrap_or_else(|| module.to_owned()),
        version: s("version")
            .or_else(|| {
                fw.get("version")
                    .and_then(Value::as_u64)
                    .map(|n| n.to_string())
            })
            .ok_or("firmware.version is missing")?,
        url: s("url").ok_or("firmware.url is missing")?,
        size: fw.get("size").and_then(Value::as_u64),
        hash: s("sha256").map(Hash::Sha256),
        // AWS IoT code signing's `sig-sha256-ecdsa` (base64 DER), or `signature`.
        signature: s("sig-sha256-ecdsa").or_else(|| s("signature")),
        force: false,
        oss: None,
        full: full_package(fw.get("full"))?,
    })
}

/// An interrupted download from OSS, waiting for the update server to give fresh
/// credentials (the journal never keeps them).
fn awaits_oss_credentials(inst: &Installer) -> bool {
    matches!(inst.journal.phase, Phase::Downloading { .. })
        && inst
            .journal
            .phase
            .job()
            .and_then(|j| j.oss.as_ref())
            .is_some_and(|o| !o.has_credentials())
}

/// A job from an HTTP update server's `check_update` answer.
pub fn http_job(v: &Value, module: &str) -> Result<Option<Job>, String> {
    if !v
        .get("update_available")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Ok(None);
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    // The package is either at `url`, or in OSS with temporary STS credentials.
    let oss = match v.get("oss") {
        Some(o) => Some(std::sync::Arc::new(super::oss::OssAccess::from_json(o)?)),
        None => None,
    };
    let url = match (&oss, s("url")) {
        (Some(o), _) => o.url(),
        (None, Some(u)) => u,
        (None, None) => return Err("url (or oss) is missing".into()),
    };
    Ok(Some(Job {
        origin: Origin::Http,
        module: module.to_owned(),
        version: s("latest_version").ok_or("latest_version is missing")?,
        url,
        size: v.get("size").and_then(Value::as_u64),
        hash: s("sha256").map(Hash::Sha256),
        signature: s("signature"),
        force: false,
        oss,
        full: full_package(v.get("full"))?,
    }))
}

struct Service {
    s: OtaSettings,
    link: LinkHandle,
    aws_version: std::collections::HashMap<String, i64>,
    request_id: u64,
    last_progress: Option<(std::time::Instant, u8)>,
    /// Asks the agent to restart into another build (see `restart_if_needed`).
    restart: watch::Sender<Option<PathBuf>>,
}

impl Service {
    fn next_id(&mut self) -> u64 {
        self.request_id += 1;
        self.request_id
    }

    async fn publish(&self, topic: &str, body: &Value, class: &str) {
        let msg = Message::new(
            topic,
            serde_json::to_vec(body).unwrap_or_default(),
            QoS::AtLeastOnce,
        );
        if let Err(e) = self.link.publish(msg, class).await {
            tracing::warn!(topic, error = %e, "Cannot send an OTA report.");
        }
    }

    async fn inform(&mut self, version: &str) {
        if self.s.protocol == OtaProtocol::Aliyun {
            let t = aliyun_topics(&self.s);
            let id = self.next_id();
            let body = json!({"id": id.to_string(), "params": {"version": version, "module": self.s.module}});
            self.publish(&t.inform, &body, "reports").await;
            // The agent's own build, as a module of its own (self-update).
            if self.s.module != super::selfupdate::AGENT_KIND {
                let id = self.next_id();
                let body = json!({"id": id.to_string(), "params": {"version": crate::VERSION, "module": super::selfupdate::AGENT_KIND}});
                self.publish(&t.inform, &body, "reports").await;
            }
        }
    }

    async fn request_update(&mut self) {
        match self.s.protocol {
            OtaProtocol::Aliyun => {
                let t = aliyun_topics(&self.s);
                let id = self.next_id();
                let body = json!({"id": id.to_string(), "version": "1.0", "params": {"module": self.s.module}, "method": "thing.ota.firmware.get"});
                self.publish(&t.get, &body, "reports").await;
            }
            OtaProtocol::Aws => {
                let topic = format!("$aws/things/{}/jobs/start-next", self.s.aws_thing);
                let id = self.next_id();
                self.publish(
                    &topic,
                    &json!({"clientToken": format!("edge-agent-{id}")}),
                    "reports",
                )
                .await;
            }
            _ => {}
        }
    }

    /// Progress and results, as the job's origin wants them.
    async fn report(&mut self, e: &OtaEvent) {
        match e {
            OtaEvent::Progress {
                job,
                percent,
                desc,
                bytes,
                total,
            } => {
                // At most once a second or every 5%.
                let now = std::time::Instant::now();
                if let Some((t, p)) = self.last_progress {
                    if now.duration_since(t) < Duration::from_secs(1)
                        && percent.saturating_sub(p) < 5
                    {
                        return;
                    }
                }
                self.last_progress = Some((now, *percent));
                self.origin_progress(job, i32::from(*percent), desc, Some((*bytes, *total)))
                    .await;
            }
            OtaEvent::Deferred { job, reason } => {
                tracing::info!(version = %job.version, reason = %reason, "Switch deferred.");
                self.origin_progress(job, 98, &format!("switch deferred: {reason}"), None)
                    .await;
            }
            OtaEvent::Switched { .. } => {}
            OtaEvent::Committed { job, .. } => {
                self.origin_progress(job, 100, "upgrade succeeded", None)
                    .await;
                self.origin_final(job, true, "").await;
                self.inform(&job.version).await;
                self.final_reports(e).await;
            }
            OtaEvent::Failed {
                job, step, reason, ..
            } => {
                self.origin_progress(job, step.aliyun_step(), reason, None)
                    .await;
                self.origin_final(job, false, reason).await;
                self.final_reports(e).await;
            }
            OtaEvent::RolledBack { job, reason, .. } => {
                self.origin_progress(job, -1, reason, None).await;
                self.origin_final(job, false, reason).await;
                self.final_reports(e).await;
            }
        }
    }

    async fn origin_progress(
        &mut self,
        job: &Job,
        step: i32,
        desc: &str,
        bytes: Option<(u64, Option<u64>)>,
    ) {
        match &job.origin {
            Origin::Aliyun { .. } => {
                let t = aliyun_topics(&self.s);
                let id = self.next_id();
                let body = report::aliyun_progress(id, step, desc, &job.module);
                self.publish(&t.progress, &body, "reports").await;
            }
            Origin::Aws { job_id } if step >= 0 => {
                let mut details = json!({"progress": step.to_string(), "step": desc});
                if let Some((b, t)) = bytes {
                    details["bytes"] = Value::from(b.to_string());
                    if let Some(t) = t {
                        details["total"] = Value::from(t.to_string());
                    }
                }
                self.aws_update(job_id, "IN_PROGRESS", details).await;
            }
            _ => {}
        }
    }

    async fn origin_final(&mut self, job: &Job, ok: bool, reason: &str) {
        if let Origin::Aws { job_id } = &job.origin {
            let details = if ok {
                json!({"version": job.version})
            } else {
                json!({"reason": reason.chars().take(200).collect::<String>()})
            };
            self.aws_update(job_id, if ok { "SUCCEEDED" } else { "FAILED" }, details)
                .await;
        }
    }

    async fn aws_update(&mut self, job_id: &str, status: &str, details: Value) {
        let topic = format!("$aws/things/{}/jobs/{job_id}/update", self.s.aws_thing);
        let mut body =
            json!({"status": status, "statusDetails": details, "includeJobExecutionState": true});
        if let Some(v) = self.aws_version.get(job_id) {
            body["expectedVersion"] = Value::from(*v);
            // Each accepted update moves the version on.
            self.aws_version.insert(job_id.to_owned(), v + 1);
        }
        self.publish(&topic, &body, "reports").await;
    }

    async fn final_reports(&self, e: &OtaEvent) {
        if let Some(r) = report::result(e) {
            self.publish(&self.s.result_topic, &r, "reports").await;
        }
        if let Some(l) = report::log(e, &Installer::log_file_name()) {
            self.publish(&self.s.log_topic, &l, "reports").await;
        }
    }

    /// Answers a job that cannot run now, so the cloud's job does not stay pending.
    async fn refuse(&mut self, job: &Job, reason: &str) {
        tracing::warn!(version = %job.version, reason = %reason, "An update arrived while the update slots are busy; it is refused.");
        match &job.origin {
            Origin::Aliyun { .. } => self.origin_progress(job, -1, reason, None).await,
            Origin::Aws { job_id } if !job_id.is_empty() => {
                self.aws_update(job_id, "FAILED", json!({"reason": reason}))
                    .await
            }
            _ => {}
        }
    }

    /// A push that arrived while a job runs: refused with `reason`. True when it was an
    /// update (the cloud is then asked again once the slots are free).
    async fn refuse_push(&mut self, m: &Incoming, reason: &str) -> bool {
        match self.job_from(m) {
            Some(job) if !job.version.is_empty() => {
                self.refuse(&job, reason).await;
                true
            }
            _ => false,
        }
    }

    /// A job (or nothing) from an incoming message.
    fn job_from(&mut self, m: &Incoming) -> Option<Job> {
        let v: Value = match serde_json::from_slice(&m.payload) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(topic = %m.topic, error = %e, "An OTA message is not JSON; ignored.");
                return None;
            }
        };
        let r = match self.s.protocol {
            OtaProtocol::Aliyun => {
                if v.get("data")
                    .is_some_and(|d| d.as_object().is_some_and(|o| o.is_empty()))
                {
                    return None; // get_reply: no update
                }
                aliyun_job(&v, &self.s.module).map(Some)
            }
            OtaProtocol::Aws => {
                if m.topic.ends_with("/update/accepted") {
                    if let (Some(id), Some(ver)) = (
                        m.topic.split('/').nth(4),
                        v.pointer("/executionState/versionNumber")
                            .and_then(Value::as_i64),
                    ) {
                        self.aws_version.insert(id.to_owned(), ver);
                    }
                    return None;
                }
                if m.topic.ends_with("/rejected") {
                    tracing::warn!(topic = %m.topic, reason = %v, "AWS IoT rejected a job request.");
                    return None;
                }
                let exec = v.get("execution")?;
                let id = exec
                    .get("jobId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if let Some(ver) = exec.get("versionNumber").and_then(Value::as_i64) {
                    self.aws_version.insert(id.clone(), ver);
                }
                if m.topic.ends_with("/notify-next") {
                    // Claim it: start-next answers with the execution, IN_PROGRESS.
                    return Some(Job {
                        origin: Origin::Aws {
                            job_id: String::new(),
                        },
                        module: String::new(),
                        version: String::new(),
                        url: String::new(),
                        size: None,
                        hash: None,
                        signature: None,
                        force: false,
                        oss: None,
                        full: None,
                    });
                }
                let doc = exec.get("jobDocument").cloned().unwrap_or(Value::Null);
                aws_job(&id, &doc, &self.s.module).map(Some)
            }
            _ => Ok(None),
        };
        match r {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(topic = %m.topic, error = %e, "An OTA message could not be understood; ignored.");
                None
            }
        }
    }
}

/// How often the service reads the journal again for changes another process (a
/// technician's `ota` command) made, and retries what waited for the store's lock.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// How long a confirmation that found the store locked waits before trying again.
const CONFIRM_RETRY: Duration = Duration::from_secs(5);

/// Starts the OTA service. Returns the handles other modules use.
pub async fn start(
    settings: OtaSettings,
    link: LinkHandle,
    model_check: Option<ModelCheck>,
    busy: Option<watch::Receiver<bool>>,
    shutdown: CancellationToken,
) -> Result<(OtaHandles, tokio::task::JoinHandle<()>), OtaError> {
    let (tx, events) = mpsc::channel(256);
    let mut inst = Installer::open(settings.clone())?
        .with_events(tx)
        .with_start_counted(super::selfupdate::start_counted());
    if let Some(c) = model_check {
        inst = inst.with_model_check(c);
    }
    if let Some(b) = busy {
        inst = inst.with_busy(b);
    }
    let recovery = try_recover(&mut inst, true)?;
    let (cur_tx, cur_rx) = watch::channel(inst.current_dir());
    let (restart_tx, restart_rx) = watch::channel(None);
    let mut subs: Vec<mpsc::Receiver<Incoming>> = Vec::new();
    let topics = match settings.protocol {
        OtaProtocol::Aliyun => {
            let t = aliyun_topics(&settings);
            vec![t.upgrade, t.get_reply]
        }
        OtaProtocol::Aws => {
            let base = format!("$aws/things/{}/jobs", settings.aws_thing);
            vec![
                format!("{base}/notify-next"),
                format!("{base}/start-next/accepted"),
                format!("{base}/start-next/rejected"),
                format!("{base}/+/update/accepted"),
                format!("{base}/+/update/rejected"),
            ]
        }
        _ => Vec::new(),
    };
    for f in topics {
        subs.push(
            link.subscribe(&f, QoS::AtLeastOnce, 8)
                .await
                .map_err(|e| OtaError::Refused(e.to_string()))?,
        );
    }
    let (in_tx, incoming) = mpsc::channel::<Incoming>(32);
    for mut rx in subs {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(in_tx);
    let svc = Service {
        s: settings,
        link,
        aws_version: Default::default(),
        request_id: 0,
        last_progress: None,
        restart: restart_tx,
    };
    let task = tokio::spawn(run(svc, inst, recovery, events, incoming, cur_tx, shutdown));
    Ok((
        OtaHandles {
            current: cur_rx,
            restart: restart_rx,
        },
        task,
    ))
}

/// Takes the store's lock and recovers. `None` when another process (a technician's
/// `ota` command) holds the lock: the service tries again later. The lock is kept only
/// for an interrupted job to take up.
fn try_recover(inst: &mut Installer, first: bool) -> Result<Option<Recovery>, OtaError> {
    match inst.acquire() {
        Ok(()) => {}
        Err(OtaError::Lock(LockError::Busy { pid })) => {
            if first {
                tracing::info!(pid = ?pid, "Another process is changing the update slots; the agent takes over once it has finished.");
            }
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let r = inst.recover();
    if !matches!(r, Ok(Recovery::Resume(_))) {
        inst.release();
    }
    r.map(Some)
}

/// When a switched slot waiting for confirmation is confirmed.
fn confirm_deadline(inst: &Installer, s: &OtaSettings) -> Option<tokio::time::Instant> {
    matches!(inst.journal.phase, Phase::SwitchedPendingConfirm { .. })
        .then(|| tokio::time::Instant::now() + s.confirm_after)
}

/// Asks the agent to restart when the active slot holds another agent build than the
/// one running (after a switch or a rollback). True once asked.
fn restart_if_needed(s: &OtaSettings, restart: &watch::Sender<Option<PathBuf>>) -> bool {
    if restart.borrow().is_some() {
        return true;
    }
    let Some(to) = super::selfupdate::restart_into(&s.dir) else {
        return false;
    };
    tracing::info!(agent = %to.display(), "The active update slot holds another edge-agent build; restarting into it.");
    let _ = restart.send(Some(to));
    true
}

/// When a slot that brought an agent is rolled back for not reaching the broker.
fn broker_deadline(inst: &Installer, s: &OtaSettings) -> Option<tokio::time::Instant> {
    (matches!(inst.journal.phase, Phase::SwitchedPendingConfirm { .. })
        && super::selfupdate::slot_agent(&s.dir).is_some())
    .then(|| tokio::time::Instant::now() + s.broker_deadline)
}

/// The service's loop: runs one job at a time to its end (reporting as it goes), answers
/// pushes that arrive meanwhile, confirms switched slots after their soak time, and
/// follows what other processes change in the store.
async fn run(
    mut svc: Service,
    mut inst: Installer,
    recovery: Option<Recovery>,
    mut events: mpsc::Receiver<OtaEvent>,
    mut incoming: mpsc::Receiver<Incoming>,
    cur_tx: watch::Sender<Option<PathBuf>>,
    shutdown: CancellationToken,
) {
    let restart = svc.restart.clone();
    let settings = svc.s.clone();
    // The launcher could not start the new slot's agent: that slot is not confirmed.
    if let Some((agent, why)) = super::selfupdate::exec_failure() {
        let pending = matches!(inst.journal.phase, Phase::SwitchedPendingConfirm { .. });
        if pending
            && super::selfupdate::slot_agent(&settings.dir).as_ref() == Some(agent)
            && inst.acquire().is_ok()
        {
            let reason = format!("the new agent could not be started: {why}");
            if let Err(e) = inst.rollback(&reason) {
                tracing::warn!(error = %e, "Cannot roll back.");
            }
            inst.release();
            let _ = cur_tx.send(inst.current_dir());
        }
    }
    if restart_if_needed(&settings, &restart) {
        // Reports of the recovery (a rollback) are in the outbox: the next agent sends them.
        while let Ok(e) = events.try_recv() {
            svc.report(&e).await;
        }
        return;
    }
    let mut recovered = recovery.is_some();
    let mut pending: Option<Job> = match recovery {
        // A download from OSS goes on once the update server has given fresh
        // credentials (the first poll, at once): the journal never keeps them.
        Some(Recovery::Resume(j)) if j.oss.as_ref().is_some_and(|o| !o.has_credentials()) => {
            tracing::info!(version = %j.version, "An interrupted download from OSS goes on with the update server's next answer.");
            None
        }
        Some(Recovery::Resume(j)) => Some(j),
        _ => None,
    };
    let mut confirm_at = confirm_deadline(&inst, &settings);
    // A new agent must reach the broker: before its slot is confirmed, and by a deadline.
    let mut broker_by = broker_deadline(&inst, &settings);
    let mut reached_broker = false;
    // A push was turned away while the slots were busy: ask for it again once free.
    let mut ask_when_free = false;
    let mut state = svc.link.state();
    let mut poll = tokio::time::interval(settings.http_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch_tick = tokio::time::interval(WATCH_INTERVAL);
    watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_poll_error: Option<String> = None;
    let mut last_watch_error: Option<String> = None;
    loop {
        if let Some(job) = pending.take() {
            // The lock, and with it the journal as it is on disk now.
            if let Err(e) = inst.acquire() {
                svc.refuse(&job, &e.to_string()).await;
                ask_when_free = true;
                continue;
            }
            let result = {
                let run = inst.install(job, false, &shutdown);
                tokio::pin!(run);
                loop {
                    tokio::select! {
                        r = &mut run => break r,
                        Some(e) = events.recv() => svc.report(&e).await,
                        Some(m) = incoming.recv() => {
                            if svc.refuse_push(&m, "another update is under way").await {
                                ask_when_free = true;
                            }
                        }
                    }
                }
            };
            inst.release();
            while let Ok(e) = events.try_recv() {
                svc.report(&e).await;
            }
            if let Err(e) = result {
                tracing::debug!(error = %e, "Update not run.");
            }
            if confirm_at.is_none() {
                confirm_at = confirm_deadline(&inst, &settings);
            }
            broker_by = broker_deadline(&inst, &settings);
            let _ = cur_tx.send(inst.current_dir());
            if restart_if_needed(&settings, &restart) {
                return;
            }
            if ask_when_free && !inst.journal.phase.busy() {
                ask_when_free = false;
                svc.request_update().await;
            }
            continue;
        }
        let wait_confirm = confirm_at;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(e) = events.recv() => svc.report(&e).await,
            Some(m) = incoming.recv() => {
                if let Some(job) = svc.job_from(&m) {
                    if job.version.is_empty() {
                        svc.request_update().await;
                    } else if inst.journal.phase.busy() {
                        let reason = format!(
                            "another update is under way ({} {})",
                            inst.journal.phase.job().map_or("", |j| j.version.as_str()),
                            inst.journal.phase.name()
                        );
                        svc.refuse(&job, &reason).await;
                        ask_when_free = true;
                    } else {
                        pending = Some(job);
                    }
                }
            }
            r = state.changed() => {
                if r.is_err() { break; }
                if *state.borrow_and_update() == LinkState::Up {
                    reached_broker = true;
                    let v = inst.current_version().unwrap_or_else(|| "0.0.0".into());
                    svc.inform(&v).await;
                    svc.request_update().await;
                }
            }
            // Only an idle installer asks (an update on soak is not "under way" again).
            _ = poll.tick(), if settings.protocol == OtaProtocol::Http && (!inst.journal.phase.busy() || awaits_oss_credentials(&inst)) => {
                if let Some(job) = check_http(&mut inst, &settings, &mut last_poll_error).await {
                    pending = Some(job);
                }
            }
            _ = async { tokio::time::sleep_until(broker_by.unwrap_or_else(tokio::time::Instant::now)).await }, if broker_by.is_some() && !reached_broker => {
                broker_by = None;
                if inst.acquire().is_ok() {
                    if matches!(inst.journal.phase, Phase::SwitchedPendingConfirm { .. }) {
                        let reason = format!(
                            "the new agent did not reach the broker within {}s",
                            settings.broker_deadline.as_secs()
                        );
                        if let Err(e) = inst.rollback(&reason) {
                            tracing::warn!(error = %e, "Cannot roll back.");
                        }
                        while let Ok(e) = events.try_recv() {
                            svc.report(&e).await;
                        }
                    }
                    inst.release();
                    confirm_at = None;
                    let _ = cur_tx.send(inst.current_dir());
                    if restart_if_needed(&settings, &restart) {
                        return;
                    }
                }
            }
            _ = async { tokio::time::sleep_until(wait_confirm.unwrap_or_else(tokio::time::Instant::now)).await }, if wait_confirm.is_some() => {
                if broker_by.is_some() && !reached_broker {
                    // A new agent is confirmed only once it has reached the broker.
                    confirm_at = Some(tokio::time::Instant::now() + CONFIRM_RETRY);
                    continue;
                }
                match inst.acquire() {
                    Ok(()) => {
                        confirm_at = None;
                        // A technician may have rolled back or confirmed meanwhile.
                        if matches!(inst.journal.phase, Phase::SwitchedPendingConfirm { .. }) {
                            if let Err(e) = inst.confirm() {
                                tracing::warn!(error = %e, "Cannot confirm the update.");
                            }
                        }
                        inst.release();
                        let _ = cur_tx.send(inst.current_dir());
                        if ask_when_free && !inst.journal.phase.busy() {
                            ask_when_free = false;
                            svc.request_update().await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "The update is confirmed once the store is free.");
                        confirm_at = Some(tokio::time::Instant::now() + CONFIRM_RETRY);
                    }
                }
            }
            _ = watch_tick.tick() => {
                if !recovered {
                    match try_recover(&mut inst, false) {
                        Ok(Some(r)) => {
                            recovered = true;
                            if let Recovery::Resume(j) = r {
                                pending = Some(j);
                            }
                            confirm_at = confirm_deadline(&inst, &settings);
                            let _ = cur_tx.send(inst.current_dir());
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot recover the update state.");
                            recovered = true;
                        }
                    }
                    continue;
                }
                let before = inst.journal.clone();
                match inst.reload() {
                    Ok(true) => {
                        last_watch_error = None;
                        tracing::info!(state = inst.journal.phase.name(),
                            version = inst.current_version().as_deref().unwrap_or("none"),
                            "The update slots were changed by another process.");
                        if !matches!(inst.journal.phase, Phase::SwitchedPendingConfirm { .. }) {
                            confirm_at = None;
                            broker_by = None;
                        } else if confirm_at.is_none() {
                            confirm_at = confirm_deadline(&inst, &settings);
                        }
                        let _ = cur_tx.send(inst.current_dir());
                        if restart_if_needed(&settings, &restart) {
                            return;
                        }
                        let now = inst.current_version();
                        if now != before.committed.as_ref().map(|c| c.version.clone()) {
                            if let Some(v) = now {
                                svc.inform(&v).await;
                            }
                        }
                    }
                    Ok(false) => last_watch_error = None,
                    Err(e) => {
                        let e = e.to_string();
                        if last_watch_error.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "Cannot read the update journal.");
                            last_watch_error = Some(e);
                        }
                    }
                }
                if ask_when_free && !inst.journal.phase.busy() && inst.acquire().is_ok() {
                    inst.release();
                    ask_when_free = false;
                    svc.request_update().await;
                }
            }
        }
    }
}

/// Asks the update server. A failure is logged as a warning once, then at debug level
/// until the answer changes (the server may be down for hours).
async fn check_http(
    inst: &mut Installer,
    s: &OtaSettings,
    last_error: &mut Option<String>,
) -> Option<Job> {
    let r = ask_http(inst, s).await;
    match &r {
        Err(e) if last_error.as_ref() != Some(e) => {
            tracing::warn!(server = s.http_server.as_deref().unwrap_or(""), error = %e, "Cannot ask the update server; will try again.");
            *last_error = Some(e.clone());
        }
        Err(e) => tracing::debug!(error = %e, "The update server still cannot be asked."),
        Ok(_) => {
            if last_error.take().is_some() {
                tracing::info!("The update server answers again.");
            }
        }
    }
    r.ok().flatten()
}

async fn ask_http(inst: &mut Installer, s: &OtaSettings) -> Result<Option<Job>, String> {
    let Some(server) = s.http_server.as_ref() else {
        return Ok(None);
    };
    let current = inst.current_version().unwrap_or_else(|| "0.0.0".into());
    let url = format!(
        "{}/api/check_update?version={}",
        server.trim_end_matches('/'),
        current
    );
    let tls = match &s.ca_file {
        Some(ca) => Some(
            crate::mqtt::tls::client_config(&crate::mqtt::config::TlsConfig {
                ca_file: Some(ca.clone()),
                ..Default::default()
            })
            .map_err(|e| format!("the CA file: {e}"))?,
        ),
        None => None,
    };
    let http = super::download::client(tls).map_err(|e| e.to_string())?;
    let r = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("{url} answered {}", r.status().as_u16()));
    }
    let b = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    let v: Value =
        serde_json::from_slice(&b).map_err(|e| format!("{url} did not answer JSON: {e}"))?;
    match http_job(&v, &s.module).map_err(|e| format!("{url}: {e}"))? {
        // A server that offers what the robot already runs (or older) is not news.
        Some(j) if !super::version::newer(&j.version, &current) => {
            tracing::debug!(offered = %j.version, current = %current, "No newer update on the server.");
            Ok(None)
        }
        j => Ok(j),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pushes() {
        let v = json!({"code":"1000","data":{"size":10,"version":"1.5.0","url":"https://x/p","sign":"AB","signMethod":"SHA256","md5":"cd","module":"detector","extData":{"signature":"c2ln"}},"id":1700,"message":"success"});
        let j = aliyun_job(&v, "detector").unwrap();
        assert_eq!(j.hash, Some(Hash::Sha256("AB".into())));
        assert_eq!(j.signature.as_deref(), Some("c2ln"));
        assert_eq!(
            j.origin,
            Origin::Aliyun {
                request_id: "1700".into()
            }
        );
        let v = json!({"code":"1000","data":{"version":"2","url":"https://x","sign":"ff","signMethod":"Md5"},"id":"3"});
        assert_eq!(
            aliyun_job(&v, "m").unwrap().hash,
            Some(Hash::Md5("ff".into()))
        );
        assert!(aliyun_job(&json!({"code":"1000","data":{}}), "m").is_err());
        let j = aws_job("job-1", &json!({"firmware":{"version":"41811020","size":87232512,"url":"https://x","sha256":"aa"}}), "detector").unwrap();
        assert_eq!((j.version.as_str(), j.size), ("41811020", Some(87232512)));
        assert_eq!(j.signature, None);
        let j = aws_job("job-2", &json!({"firmware":{"version":"2","url":"https://x","sha256":"aa","sig-sha256-ecdsa":"MEUCIQ=="}}), "detector").unwrap();
        assert_eq!(j.signature.as_deref(), Some("MEUCIQ=="));
        let v = json!({"code":"1000","data":{"version":"1.6.0","url":"https://x/p","sign":"AB","signMethod":"SHA256","digestsign":"ZGln"},"id":1701});
        assert_eq!(
            aliyun_job(&v, "detector").unwrap().signature.as_deref(),
            Some("ZGln")
        );
        assert!(http_job(&json!({"update_available":false}), "m")
            .unwrap()
            .is_none());
        assert_eq!(http_job(&json!({"update_available":true,"latest_version":"3","url":"https://u","sha256":"bb"}), "m").unwrap().unwrap().version, "3");
    }
}
