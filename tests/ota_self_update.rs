//! The agent updating itself, end to end: a real agent process (this build, version
//! 0.1.0) on the Aliyun OTA protocol over a real mosquitto installs a package carrying
//! another build of itself (`scripts/second-build.sh`, version 0.1.1-next) at
//! `bin/edge-agent`, restarts into it in the same process, and the new build confirms
//! the slot and reports its version. A package whose agent exits at once is started
//! `max_starts` times (the test restarts the process as systemd's `Restart=on-failure`
//! does) and then rolled back by the installed agent, which reports ROLLBACK_RESULT.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use edge_agent::ota::package::{HealthCheck, Hooks};
use serde_json::{json, Value};
use support::agent::{payloads, spawn_watched, stop_watched, AgentDir, LogWatch};
use support::mosquitto::{publish, ready_sub, Mosquitto, Options, Sub};
use support::ota::{
    active_slot_is_complete, install_committed, make_package, make_package_with_hooks, HttpServer,
};

const T: Duration = Duration::from_secs(60);
const NEXT: &str = "0.1.1-next";
const INFORM: &str = "/ota/device/inform/pk1/robot-7";
const RESULT: &str = "/pk1/robot-7/user/ota/result";
/// The test's subscriptions: QoS 1 persistent sessions, kept by the broker while down.
const INFORM_SUB: [&str; 5] = ["-q", "1", "-c", "-i", "self-update-inform"];
const REPORT_SUB: [&str; 5] = ["-q", "1", "-c", "-i", "self-update-report"];

/// The second build of the agent, made by `scripts/second-build.sh` when it is missing
/// (scripts/test.sh makes it before the tests).
fn second_build() -> PathBuf {
    let bin = support::repo().join("target/second-build/edge-agent");
    let is_next = |p: &Path| {
        Command::new(p).arg("--version").output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).trim() == format!("edge-agent {NEXT}")
        })
    };
    if !is_next(&bin) {
        let o = Command::new(support::repo().join("scripts/second-build.sh"))
            .arg(NEXT)
            .output()
            .expect("run scripts/second-build.sh");
        assert!(
            o.status.success(),
            "scripts/second-build.sh {NEXT} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(is_next(&bin), "{} is not version {NEXT}", bin.display());
    }
    bin
}

struct Robot {
    mq: Mosquitto,
    srv: HttpServer,
    www: tempfile::TempDir,
    a: AgentDir,
    _dom: support::Domain,
    inform: Sub,
    rep: Sub,
}

impl Robot {
    /// An agent folder on the Aliyun protocol with 1.0.0 (no agent in it) installed.
    fn new() -> Self {
        Self::with("")
    }

    /// [`Robot::new`] with more `[ota]` settings, on a broker that keeps sessions across
    /// restarts (the test's subscriptions are persistent).
    fn with(ota: &str) -> Self {
        let mq = Mosquitto::start(Options {
            persistence: true,
            ..Options::default()
        });
        let www = tempfile::tempdir().unwrap();
        let srv = HttpServer::start(www.path());
        let dom = support::domain();
        let a = AgentDir::new(
            mq.port,
            dom.id,
            "",
            &format!("[ota]\nprotocol = \"aliyun\"\nallow_http = true\nconfirm_after = \"1s\"\nmax_starts = 2\n{ota}"),
        );
        let v1 = make_package(
            &www.path().join("v1"),
            "1.0.0",
            &[("detect.toml", b"# 1.0.0\n".to_vec())],
            None,
            None,
        );
        install_committed(&v1.package, &a.path().join("state/ota"));
        let inform = ready_sub(mq.port, "/ota/device/#", "/ota/device/probe", &INFORM_SUB);
        let rep = ready_sub(
            mq.port,
            "/pk1/robot-7/user/ota/#",
            "/pk1/robot-7/user/ota/probe",
            &REPORT_SUB,
        );
        Robot {
            mq,
            srv,
            www,
            a,
            _dom: dom,
            inform,
            rep,
        }
    }

    fn ota_dir(&self) -> PathBuf {
        self.a.path().join("state/ota")
    }

    /// The installed agent (this build), as systemd starts it.
    fn start(&self) -> (Child, LogWatch) {
        spawn_watched(&self.a.config(), &[])
    }

    /// Packs `version` with `agent` at bin/edge-agent and pushes it as the cloud does.
    fn push(&self, version: &str, agent: &[u8]) {
        self.push_with_hooks(version, agent, &[], Hooks::default());
    }

    /// Pushes `version` with the agent `agent`, `extra` files (e.g. hook programs) and
    /// `hooks` in its manifest.
    fn push_with_hooks(&self, version: &str, agent: &[u8], extra: &[(&str, &[u8])], hooks: Hooks) {
        let mut files = vec![
            ("detect.toml", format!("# {version}\n").into_bytes()),
            ("bin/edge-agent", agent.to_vec()),
        ];
        files.extend(extra.iter().map(|(p, d)| (*p, d.to_vec())));
        files.sort();
        let p = make_package_with_hooks(
            &self.www.path().join(version),
            version,
            &files,
            None,
            None,
            hooks,
        );
        let rel = p.package.strip_prefix(self.www.path()).unwrap();
        let push = json!({"code": "1000", "data": {
            "size": std::fs::metadata(&p.package).unwrap().len(), "version": version,
            "url": self.srv.url(rel.to_str().unwrap()), "sign": p.sha256, "signMethod": "SHA256",
            "module": "detector", "extData": {}}, "id": 1700, "message": "success"});
        publish(
            self.mq.port,
            "/ota/device/upgrade/pk1/robot-7",
            &push.to_string(),
            &["-q", "1"],
        );
    }

    /// The versions the agent informed for `module`, in order.
    fn informed(&self, module: &str) -> Vec<String> {
        payloads(&self.inform.snapshot(), INFORM)
            .iter()
            .filter(|p| p["params"]["module"] == module)
            .filter_map(|p| p["params"]["version"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits for the first result report while the agent keeps running (its log back).
    fn wait_result(&self, child: &mut Child, log: LogWatch) -> LogWatch {
        let deadline = Instant::now() + T;
        while self.results().is_empty() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("the agent ended ({st}):\n{}", log.text());
            }
            assert!(Instant::now() < deadline, "no result:\n{}", log.text());
            std::thread::sleep(Duration::from_millis(100));
        }
        log
    }

    fn results(&self) -> Vec<Value> {
        payloads(&self.rep.snapshot(), RESULT)
    }
}

/// A result report of a rollback to 1.0.0, for `reason`.
fn assert_rolled_back_to_1(result: &Value, reason: &str) {
    assert_eq!(result["RESULT"], 1, "{result}");
    let failed = &result["UPGRADE_FAILED_COMPONENT_ARRAY"][0];
    assert_eq!(failed["ROLLBACK_RESULT"], 1, "{result}");
    assert_eq!(failed["CURRENT_VERSION"], "1.0.0", "{result}");
    assert!(
        result["ERROR_INFO"].as_str().unwrap().contains(reason),
        "{result}"
    );
}

#[test]
fn the_agent_installs_a_newer_build_of_itself_restarts_into_it_and_reports_its_version() {
    let next = std::fs::read(second_build()).unwrap();
    let r = Robot::new();
    let (mut child, log) = r.start();
    let pid = child.id();
    r.inform.wait_for("the first version report", T, |_| {
        r.informed("edge-agent").contains(&"0.1.0".to_owned())
    });
    r.push("2.0.0", &next);

    let log = r.wait_result(&mut child, log);
    let result = &r.results()[0];
    assert_eq!(result["RESULT"], 0, "{result}");
    // The same process now runs the slot's build, which confirmed the slot and says so.
    r.inform.wait_for("the new build's version", T, |_| {
        r.informed("edge-agent").contains(&NEXT.to_owned())
            && r.informed("detector").contains(&"2.0.0".to_owned())
    });
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.ends_with("bin/edge-agent") && exe.starts_with(r.ota_dir().join("slots")),
        "the process runs {}",
        exe.display()
    );
    let _ = child.try_wait();
    let text = stop_watched(child, log);
    assert!(
        text.contains("The active update slot holds another edge-agent build; restarting into it.")
            && text.contains("Starting the agent of the active update slot."),
        "{text}"
    );
    assert!(
        text.contains(&format!("edge-agent starting. version=\"{NEXT}\"")),
        "{text}"
    );
    assert_eq!(active_slot_is_complete(&r.ota_dir()).unwrap(), "2.0.0");
    let st = support::ota::status(&r.ota_dir());
    assert_eq!(st["journal"]["state"], "committed", "{st}");
}

#[test]
fn a_new_agent_that_exits_at_once_is_rolled_back_and_the_old_one_reports_it() {
    let r = Robot::new();
    // It answers --version (the check before the switch) and exits at once otherwise.
    let bad = "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'edge-agent 9.9.9'; exit 0; fi\necho 'bad agent: exiting' >&2\nexit 1\n";
    let (mut child, mut log) = r.start();
    r.inform.wait_for("the first version report", T, |_| {
        !r.informed("detector").is_empty()
    });
    r.push("3.0.0", bad.as_bytes());

    // Play systemd: start the installed agent again whenever the process ends.
    let mut restarts = 0;
    let mut logs = String::new();
    let deadline = Instant::now() + T;
    while r.results().is_empty() {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(!st.success(), "the agent stopped cleanly:\n{}", log.text());
            logs.push_str(&log.text());
            restarts += 1;
            assert!(restarts <= 5, "restarted {restarts} times:\n{logs}");
            (child, log) = r.start();
        }
        assert!(Instant::now() < deadline, "no result:\n{logs}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = &r.results()[0];
    assert_rolled_back_to_1(
        result,
        "started 3 times on the new slot without confirming it",
    );
    // The bad agent ran twice (max_starts), then the installed agent rolled back.
    assert_eq!(restarts, 2, "{logs}");
    assert_eq!(logs.matches("bad agent: exiting").count(), 2, "{logs}");
    let text = stop_watched(child, log);
    assert!(
        text.contains(
            "The new slot's agent did not settle; running the installed agent, which rolls back."
        ),
        "{text}"
    );
    assert_eq!(active_slot_is_complete(&r.ota_dir()).unwrap(), "1.0.0");
    assert!(r.informed("edge-agent").iter().all(|v| v == "0.1.0"));
}

#[test]
fn a_new_agent_that_cannot_reach_the_broker_is_rolled_back_by_its_deadline() {
    let next = std::fs::read(second_build()).unwrap();
    let mut r = Robot::with("broker_deadline = \"3s\"\n");
    let (child, log) = r.start();
    let pid = child.id();
    r.inform.wait_for("the first version report", T, |_| {
        !r.informed("detector").is_empty()
    });
    // The broker goes away once the package is verified: the new agent never reaches it.
    // A pre_install hook holds the install until the broker is down, so that the new
    // agent cannot start before (on a loaded machine it could, by watching the log).
    let gate = r.www.path().join("broker-is-down");
    let hooks = Hooks {
        pre_install: Some(HealthCheck {
            command: vec!["hooks/gate.sh".into(), gate.display().to_string()],
            timeout_s: 60,
        }),
        ..Hooks::default()
    };
    let gate_sh: &[u8] = b"#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.05; done\n";
    r.push_with_hooks("2.0.0", &next, &[("hooks/gate.sh", gate_sh)], hooks);
    log.wait_for("the package verified", T, |l| {
        l.contains("package verified")
    });
    r.mq.stop();
    std::fs::write(&gate, b"").unwrap();
    log.wait_for("the rollback", T, |l| {
        l.contains("Rolled back to the previous slot.")
    });
    r.mq.start_again();
    // The first subscriber reconnects by itself and may take the queued result before
    // this one (same client id, same session) is up: the result is in either.
    let rep = support::mosquitto::Sub::start(r.mq.port, "/pk1/robot-7/user/ota/#", &REPORT_SUB);
    let deadline = std::time::Instant::now() + T;
    let lines = loop {
        let mut lines = r.rep.snapshot();
        lines.extend(rep.snapshot());
        if !payloads(&lines, RESULT).is_empty() {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the rollback's result: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let results = payloads(&lines, RESULT);
    let result = results.last().unwrap();
    assert_rolled_back_to_1(result, "the new agent did not reach the broker within 3s");
    // The installed agent runs again, in the same process.
    let exe = std::fs::canonicalize(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(env!("CARGO_BIN_EXE_edge-agent")).unwrap()
    );
    let text = stop_watched(child, log);
    let rolled = text.find("Rolled back to the previous slot.").unwrap();
    assert!(
        text[rolled..].contains("Restarting through the installed edge-agent.")
            && text[rolled..].contains("edge-agent starting. version=\"0.1.0\""),
        "{text}"
    );
    assert_eq!(active_slot_is_complete(&r.ota_dir()).unwrap(), "1.0.0");
}

#[test]
fn a_new_agent_that_cannot_be_started_is_rolled_back_without_a_restart_loop() {
    let r = Robot::new();
    // It passes the check before the switch, then cannot be executed any more (as on a
    // slot's disk remounted noexec).
    let bad = "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'edge-agent 9.9.9'; chmod -x \"$0\"; exit 0; fi\nexit 1\n";
    let (mut child, log) = r.start();
    r.inform.wait_for("the first version report", T, |_| {
        !r.informed("detector").is_empty()
    });
    r.push("3.0.0", bad.as_bytes());
    let log = r.wait_result(&mut child, log);
    assert_rolled_back_to_1(
        &r.results()[0],
        "the new agent could not be started: Permission denied",
    );
    // The installed agent keeps running: one failed start, no loop of restarts.
    r.inform.wait_for("the version after the rollback", T, |_| {
        r.informed("detector")
            .iter()
            .filter(|v| *v == "1.0.0")
            .count()
            >= 2
    });
    assert!(child.try_wait().unwrap().is_none());
    let text = stop_watched(child, log);
    assert_eq!(
        text.matches("Cannot start this edge-agent build.").count(),
        1,
        "{text}"
    );
    assert_eq!(active_slot_is_complete(&r.ota_dir()).unwrap(), "1.0.0");
}
