//! One writer at a time on the OTA store: the running agent and a technician's `ota`
//! command share it, and neither may act on a journal the other has changed, nor write
//! into the slot the robot runs or falls back to. Real processes race here: the agent
//! (Aliyun protocol over a real mosquitto), the command line, and a real HTTP server.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::agent::{payloads, spawn_run, Agent, AgentDir};
use support::mosquitto::{publish, ready_sub, Mosquitto, Options, Sub};
use support::ota::{
    active_slot_is_complete, install_committed, make_package, ota, status, stderr, HttpServer,
};

const T: Duration = Duration::from_secs(30);
const PROGRESS: &str = "/ota/device/progress/pk1/robot-7";
const INFORM: &str = "/ota/device/inform/pk1/robot-7";
const UPGRADE: &str = "/ota/device/upgrade/pk1/robot-7";
const GET: &str = "/sys/pk1/robot-7/thing/ota/firmware/get";
const RESULT: &str = "/pk1/robot-7/user/ota/result";

/// 64 KB that do not compress, so a throttled server takes seconds to serve a package.
fn noise(tag: &str) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ tag.bytes().fold(0, |h, b| h * 31 + b as u64);
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn files(tag: &str, healthy: bool) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("model/weights.bin", noise(tag)),
        (
            "check.sh",
            if healthy {
                b"#!/bin/sh\nexit 0\n".to_vec()
            } else {
                b"#!/bin/sh\necho 'the model does not load' >&2\nexit 1\n".to_vec()
            },
        ),
    ]
}

fn push(srv: &HttpServer, p: &edge_agent::ota::package::Packed, id: u64) -> String {
    let url = srv.url(p.package.file_name().unwrap().to_str().unwrap());
    json!({"code": "1000", "data": {"size": std::fs::metadata(&p.package).unwrap().len(),
        "version": p.manifest.version, "url": url, "sign": p.sha256, "signMethod": "SHA256",
        "module": "detector", "extData": {}}, "id": id, "message": "success"})
    .to_string()
}

fn agent_config(port: u16, domain: u16) -> AgentDir {
    AgentDir::new(
        port,
        domain,
        "",
        "[ota]\nprotocol = \"aliyun\"\nallow_http = true\nconfirm_after = \"1s\"\n",
    )
}

/// The cloud's view: version reports, progress and firmware/get requests.
fn cloud(port: u16) -> (Sub, Sub, Sub) {
    let dev = ready_sub(port, "/ota/device/#", "/ota/device/probe", &["-q", "1"]);
    let sys = ready_sub(
        port,
        "/sys/pk1/robot-7/thing/ota/#",
        "/sys/pk1/robot-7/thing/ota/probe",
        &["-q", "1"],
    );
    let rep = ready_sub(
        port,
        "/pk1/robot-7/user/ota/#",
        "/pk1/robot-7/user/ota/probe",
        &["-q", "1"],
    );
    (dev, sys, rep)
}

fn informed(lines: &[String], version: &str) -> bool {
    payloads(lines, INFORM)
        .iter()
        .any(|p| p["params"]["version"] == version)
}

fn descs(lines: &[String]) -> Vec<(i64, String)> {
    payloads(lines, PROGRESS)
        .iter()
        .filter_map(|p| {
            Some((
                p["params"]["step"].as_str()?.parse().ok()?,
                p["params"]["desc"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Waits until `pid` holds the store's lock, as the kernel's table of locks
/// (/proc/locks: kind, pid, device:inode) shows it; looking does not take the lock.
fn wait_lock_holder(ota_dir: &Path, pid: u32) {
    use std::os::unix::fs::MetadataExt as _;
    let path = ota_dir.join("lock");
    let held_by = || {
        let Ok(ino) = std::fs::metadata(&path).map(|m| m.ino()) else {
            return false;
        };
        std::fs::read_to_string("/proc/locks")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 5
                    && f[1] == "FLOCK"
                    && f[4] == pid.to_string()
                    && f[5].rsplit(':').next() == Some(&ino.to_string())
            })
    };
    let deadline = Instant::now() + T;
    while !held_by() {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never took the OTA lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sequence a field trial found: with the agent running on 1.0.0 (slot a), a
/// technician installs 1.0.1 from the command line (current -> b); then the cloud pushes
/// 1.0.2, which fails its health check. The agent must install 1.0.2 into slot a (the
/// only slot that is neither running nor committed), reject it, report 1.0.1 as the
/// current version, and after a restart the robot must still run 1.0.1.
#[test]
fn a_technician_install_beside_the_agent_never_leaves_the_robot_on_a_rejected_package() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let www = tempfile::tempdir().unwrap();
    let srv = HttpServer::start(www.path());
    let a = agent_config(mq.port, dom.id);
    let ota_dir = a.path().join("state/ota");
    let v100 = make_package(www.path(), "1.0.0", &files("v100", true), None, None);
    install_committed(&v100.package, &ota_dir);
    let (dev, _sys, rep) = cloud(mq.port);
    let agent = Agent::from_child(spawn_run(&a.config(), &[]));
    dev.wait_for("the agent's version report", T, |l| informed(l, "1.0.0"));

    // The technician, beside the running agent.
    let v101 = make_package(
        www.path(),
        "1.0.1",
        &files("v101", true),
        Some("./check.sh"),
        None,
    );
    let o = ota(&[
        "install",
        v101.package.to_str().unwrap(),
        "--yes",
        "-c",
        a.config().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(status(&ota_dir)["active"], "b");
    // The agent notices and tells the cloud what the robot runs now.
    dev.wait_for("the technician's version reported", T, |l| {
        informed(l, "1.0.1")
    });

    // The cloud's 1.0.2 fails its health check.
    let v102 = make_package(
        www.path(),
        "1.0.2",
        &files("v102", false),
        Some("./check.sh"),
        None,
    );
    publish(mq.port, UPGRADE, &push(&srv, &v102, 1800), &["-q", "1"]);
    let lines = rep.wait_for("the failure report", T, |l| !payloads(l, RESULT).is_empty());
    let r = &payloads(&lines, RESULT)[0];
    assert_eq!(r["RESULT"], 1, "{r}");
    assert_eq!(
        r["UPGRADE_FAILED_COMPONENT_ARRAY"][0]["CURRENT_VERSION"], "1.0.1",
        "{r}"
    );
    let st = status(&ota_dir);
    assert_eq!(st["active"], "b", "{st}");
    assert_eq!(st["committed"]["slot"], "b", "{st}");
    assert_eq!(st["committed"]["version"], "1.0.1", "{st}");
    assert_eq!(st["journal"]["state"], "rolled-back", "{st}");
    // The rejected package is gone from the slot it was checked in.
    assert_eq!(st["slots"]["a"]["version"], Value::Null, "{st}");
    assert_eq!(
        std::fs::read_dir(ota_dir.join("slots/a")).unwrap().count(),
        0
    );
    let log = agent.stop();
    assert!(log.contains("health check failed"), "{log}");
    assert!(
        !log.contains("Refusing to install into a slot in use"),
        "{log}"
    );

    // After a restart the robot still runs 1.0.1, and says so.
    let agent = Agent::from_child(spawn_run(&a.config(), &[]));
    let before = dev.count();
    dev.wait_for("the version report after the restart", T, |l| {
        l.len() > before && informed(&l[before..], "1.0.1")
    });
    assert_eq!(active_slot_is_complete(&ota_dir).unwrap(), "1.0.1");
    let log = agent.stop();
    assert!(!log.contains("Pointing current back"), "{log}");
}

/// `edge-agent ota install URL` of a package on the test server, as a child process.
fn slow_install(
    srv: &HttpServer,
    p: &edge_agent::ota::package::Packed,
    config: &Path,
) -> std::process::Child {
    let url = srv.url(p.package.file_name().unwrap().to_str().unwrap());
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["ota", "install", &url, "--sha256", &p.sha256, "--version"])
        .arg(&p.manifest.version)
        .args(["--yes", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge-agent ota install")
}

/// The command line, the agent and the command line again, racing on one store: each
/// writer holds the store's lock for its whole job, and the others are refused with who
/// holds it. A push refused while a technician installs is answered (progress -1 with
/// the reason), and the agent asks the cloud again once the slots are free.
#[test]
fn cli_agent_and_cli_racing_take_turns_and_the_refused_are_told_who_has_the_slots() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let www = tempfile::tempdir().unwrap();
    let srv = HttpServer::start(www.path());
    let a = agent_config(mq.port, dom.id);
    let ota_dir = a.path().join("state/ota");
    let v1 = make_package(www.path(), "1.0.0", &files("v1", true), None, None);
    install_committed(&v1.package, &ota_dir);
    let (dev, sys, _rep) = cloud(mq.port);
    let agent = Agent::from_child(spawn_run(&a.config(), &[]));
    dev.wait_for("the agent's version report", T, |l| informed(l, "1.0.0"));
    let gets_at_start = sys.wait_for("the first firmware/get", T, |l| {
        !payloads(l, GET).is_empty()
    });
    let gets_at_start = payloads(&gets_at_start, GET).len();

    // A technician's install, slowed down by the server.
    let v2 = make_package(www.path(), "2.0.0", &files("v2", true), None, None);
    srv.control("rate?bps=8000");
    let first = slow_install(&srv, &v2, &a.config());
    wait_lock_holder(&ota_dir, first.id());

    // A second technician: refused at once, told who holds the slots.
    let v3 = make_package(www.path(), "3.0.0", &files("v3", true), None, None);
    let o = ota(&[
        "install",
        v3.package.to_str().unwrap(),
        "--yes",
        "-c",
        a.config().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("an update is under way (pid {})", first.id())),
        "{}",
        stderr(&o)
    );
    // The cloud: answered, not ignored.
    publish(mq.port, UPGRADE, &push(&srv, &v3, 1901), &["-q", "1"]);
    let lines = dev.wait_for("the refusal of the push", T, |l| {
        descs(l).iter().any(|(step, _)| *step == -1)
    });
    let (_, desc) = descs(&lines).into_iter().find(|(s, _)| *s == -1).unwrap();
    assert!(
        desc.contains(&format!("an update is under way (pid {})", first.id())),
        "{desc}"
    );

    // The technician's install finishes; the agent then asks the cloud again.
    srv.control("rate?bps=0");
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sys.wait_for("a new firmware/get once the slots are free", T, |l| {
        payloads(l, GET).len() > gets_at_start
    });
    dev.wait_for("the technician's version reported", T, |l| {
        informed(l, "2.0.0")
    });

    // Now the agent's own job holds the lock, and the command line is refused.
    srv.control("rate?bps=8000");
    publish(mq.port, UPGRADE, &push(&srv, &v3, 1902), &["-q", "1"]);
    let agent_pid = agent.pid();
    wait_lock_holder(&ota_dir, agent_pid);
    let o = ota(&["rollback", "-c", a.config().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("an update is under way (pid {agent_pid})")),
        "{}",
        stderr(&o)
    );
    // A push while the agent's own job runs is answered too, and asked for again after.
    let gets_before = payloads(&sys.snapshot(), GET).len();
    let v4 = make_package(www.path(), "4.0.0", &files("v4", true), None, None);
    publish(mq.port, UPGRADE, &push(&srv, &v4, 1903), &["-q", "1"]);
    dev.wait_for("the refusal of the push during the agent's job", T, |l| {
        descs(l)
            .iter()
            .any(|(step, d)| *step == -1 && d.contains("another update is under way"))
    });
    srv.control("rate?bps=0");
    sys.wait_for("a new firmware/get after the agent's job", T, |l| {
        payloads(l, GET).len() > gets_before
    });
    dev.wait_for("3.0.0 installed by the agent", T, |l| informed(l, "3.0.0"));
    let st = status(&ota_dir);
    assert_eq!(st["committed"]["version"], "3.0.0", "{st}");
    assert_eq!(active_slot_is_complete(&ota_dir).unwrap(), "3.0.0");
    // Every writer went by the journal on disk: the generations follow each other.
    agent.stop();
}
