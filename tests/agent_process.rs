//! The agent as a process, as systemd runs it: birth, clean offline and last will on
//! the status topic; kill -9 in the middle of a replay; a damaged outbox on start; the
//! device log; the technician commands' exit codes.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::mosquitto::{ready_sub, Mosquitto, Options};

const STATUS: &str = "/pk1/robot-7/user/status";

fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            r#"state_dir = "{}"
[device]
product_key = "pk1"
device_name = "robot-7"
[mqtt]
host = "127.0.0.1"
port = {port}
keep_alive = "5s"
connect_timeout = "2s"
[mqtt.reconnect]
initial_delay = "50ms"
max_delay = "300ms"
[device_log]
batch_interval = "200ms"
{extra}
"#,
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
}

fn spawn_run(config: &Path) -> Child {
    agent()
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge-agent run")
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("{STATUS} ")))
        .map(|j| serde_json::from_str(j).unwrap())
        .collect()
}

#[test]
fn birth_clean_offline_and_last_will_on_the_status_topic() {
    let broker = Mosquitto::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, "");
    let sub = ready_sub(broker.port, "/pk1/#", "/pk1/probe", &["-q", "1"]);

    // Orderly: online, then a clean offline on SIGTERM.
    let child = spawn_run(&config);
    sub.wait_for("online", Duration::from_secs(10), |l| {
        status_lines(l).len() == 1
    });
    signal(&child, "-TERM");
    let (code, log) = finish(child);
    assert_eq!(code, Some(0), "{log}");
    let lines = sub.wait_for("offline", Duration::from_secs(10), |l| {
        status_lines(l).len() == 2
    });
    let st = status_lines(&lines);
    assert_eq!(st[0]["online"], true);
    assert_eq!(st[0]["version"], env!("CARGO_PKG_VERSION"));
    assert!(st[0]["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(st[1]["online"], false);
    assert_eq!(st[1]["reason"], "shutdown");
    assert!(log.contains("Connected to the broker."), "{log}");
    assert!(log.contains("MQTT link closed"), "{log}");

    // Killed: the broker delivers the last will.
    let child = spawn_run(&config);
    sub.wait_for("online again", Duration::from_secs(10), |l| {
        status_lines(l).len() == 3
    });
    signal(&child, "-KILL");
    let _ = finish(child);
    let lines = sub.wait_for("the last will", Duration::from_secs(15), |l| {
        status_lines(l).len() == 4
    });
    let st = status_lines(&lines);
    assert_eq!(st[2]["online"], true);
    assert_eq!(st[3]["online"], false);
    assert_eq!(st[3]["reason"], "connection lost");
}

#[test]
fn kill_9_in_the_middle_of_a_replay_loses_nothing() {
    let broker = Mosquitto::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, "");
    // Held while the agent is not running (as after hours without coverage).
    let out = agent()
        .args(["mqtt", "pub", "--config"])
        .arg(&config)
        .args(["--topic", "t/seq", "--count", "10000", "--no-wait", "${n}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10000 messages held in the outbox for the agent"
    );

    let sub = ready_sub(broker.port, "t/#", "t/probe", &["-q", "1"]);
    let child = spawn_run(&config);
    sub.wait_for("part of the replay", Duration::from_secs(30), |l| {
        l.len() > 2000
    });
    signal(&child, "-KILL");
    let _ = finish(child);
    let seen_at_kill = sub.count();
    assert!(
        seen_at_kill < 10_001,
        "the replay finished before the kill; nothing was tested"
    );

    let child = spawn_run(&config);
    let lines = sub.wait_for("the rest of the replay", Duration::from_secs(60), |l| {
        l.iter()
            .filter_map(|x| x.strip_prefix("t/seq "))
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 10_000
    });
    signal(&child, "-TERM");
    let (code, _) = finish(child);
    assert_eq!(code, Some(0));
    let got: Vec<u64> = lines
        .iter()
        .filter_map(|x| x.strip_prefix("t/seq ")?.parse().ok())
        .collect();
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<u64> = got.iter().copied().filter(|x| seen.insert(*x)).collect();
    assert_eq!(
        firsts,
        (1..=10_000).collect::<Vec<_>>(),
        "first deliveries in order, no gaps"
    );
    // At least once: a few may come twice (sent, killed before the ack was saved). The
    // link holds messages back while the saved delivery record lags 512 acknowledgements
    // behind, so at most that plus twice the window (100 in flight, 100 acked meanwhile)
    // come twice, however slow the disk.
    let dups = got.len() - firsts.len();
    assert!(dups <= 512 + 2 * 100, "{dups} duplicates");
}

#[test]
fn a_damaged_outbox_is_recovered_up_to_the_last_good_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), support::mosquitto::free_port(), "");
    let out = agent()
        .args(["mqtt", "pub", "-c"])
        .arg(&config)
        .args(["-t", "t/x", "--count", "100", "--no-wait", "message ${n}"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let class_dir = dir.path().join("state/outbox/telemetry");
    let seg = std::fs::read_dir(&class_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "seg") && std::fs::metadata(p).unwrap().len() > 8
        })
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 7); // a torn last write
    std::fs::write(&seg, &bytes).unwrap();

    let out = agent()
        .args(["outbox", "status", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("WARN"), "{log}");
    assert!(
        log.contains("Outbox segment was cut at a torn or corrupt record"),
        "{log}"
    );
    assert!(log.contains("kept_messages=99"), "{log}");
    assert!(
        log.contains(&seg.file_name().unwrap().to_string_lossy().to_string()),
        "{log}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["held"], 99);
}

#[test]
fn warnings_reach_the_device_log_topic_after_an_outage() {
    const LOG_TOPIC: &str = "/sys/pk1/robot-7/thing/log/post";
    // The watcher has a persistent QoS 1 session on a persistent broker, so the record
    // waits for it however soon the agent reconnects after the outage.
    let mut broker = Mosquitto::start(Options {
        persistence: true,
        ..Options::default()
    });
    let port = broker.port;
    let watch = ["-q", "1", "-c", "-i", "devlog-watch"];
    drop(ready_sub(
        port,
        "/sys/pk1/robot-7/thing/log/#",
        "/sys/pk1/robot-7/thing/log/probe",
        &watch,
    ));
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), port, "");
    // Started while the broker is down: it warns, and that warning is held.
    let mut child = spawn_run(&config);
    let log = support::agent::LogWatch::of(&mut child);
    log.wait_for(
        "warning that the broker is down",
        Duration::from_secs(20),
        |l| l.contains("WARN") && l.contains("Cannot reach the broker"),
    );
    broker.start_again();
    let sub = support::mosquitto::Sub::start(port, "/sys/pk1/robot-7/thing/log/#", &watch);
    let lines = sub.wait_for("a device log record", Duration::from_secs(20), |l| {
        l.iter().any(|l| l.starts_with(LOG_TOPIC))
    });
    let lines: Vec<&String> = lines.iter().filter(|l| l.starts_with(LOG_TOPIC)).collect();
    signal(&child, "-TERM");
    let _ = finish(child);
    let body: serde_json::Value =
        serde_json::from_str(lines[0].split_once(' ').unwrap().1).unwrap();
    assert_eq!(body["method"], "thing.log.post");
    let rec = &body["params"][0];
    assert_eq!(rec["logLevel"], "WARN");
    assert!(
        rec["logContent"]
            .as_str()
            .unwrap()
            .contains("Cannot reach the broker"),
        "{rec}"
    );
    assert!(rec["utcTime"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn technician_commands_report_clearly() {
    let broker = Mosquitto::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, "");
    let out: Output = agent()
        .args(["mqtt", "check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!(
        "connected to 127.0.0.1:{} as robot-7-check",
        broker.port
    )));

    std::fs::create_dir_all(dir.path().join("x")).unwrap();
    let down = write_config(&dir.path().join("x"), support::mosquitto::free_port(), "");
    let out = agent()
        .args(["mqtt", "check", "--timeout", "3s", "-c"])
        .arg(&down)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to 127.0.0.1:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[device]\nproduct_key = \"p\"\ndevice_name = \"d\"\n[mqtt]\nhost = \"h\"\nkeep_alive = \"1s\"\n").unwrap();
    let out = agent().args(["check-config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "edge-agent: mqtt.keep_alive = 1s is not valid: must be between 5s and 18h12m15s"
    );
    let out = agent()
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("broker     127.0.0.1:"));

    // While the agent runs, the outbox is its alone.
    let mut child = spawn_run(&config);
    // Once connected, the agent has long held its outbox (it opens it first). Asking
    // sooner would race it: the command holds the outbox for a moment itself.
    let log = support::agent::LogWatch::of(&mut child);
    log.wait_for("the connection", Duration::from_secs(20), |l| {
        l.contains("Connected to the broker")
    });
    let out = agent()
        .args(["outbox", "status", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    signal(&child, "-TERM");
    let _ = finish(child);
    assert_eq!(out.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another edge-agent process"));

    // The printed default configuration is valid.
    let out = agent().arg("print-default-config").output().unwrap();
    let p = dir.path().join("default.toml");
    std::fs::write(&p, &out.stdout).unwrap();
    assert_eq!(
        agent()
            .arg("check-config")
            .arg(&p)
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
}

/// Two agents configured with the same device (one client id) make the broker close
/// each one's connection when the other connects; the log says what is going on, not
/// only that the broker closed the connection, and does not write a line per close.
#[test]
fn two_agents_with_one_client_id_are_named_as_the_cause() {
    let mq = Mosquitto::start(Options::default());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut children = Vec::new();
    for d in &dirs {
        let cfg = write_config(d.path(), mq.port, "");
        let log = std::fs::File::create(d.path().join("agent.log")).unwrap();
        children.push(
            agent()
                .args(["run", "--config"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    let said = |d: &tempfile::TempDir| {
        std::fs::read_to_string(d.path().join("agent.log"))
            .unwrap_or_default()
            .contains("another client may be using this client id (robot-7)")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !dirs.iter().any(said) {
        assert!(
            std::time::Instant::now() < deadline,
            "no diagnosis:\n{}",
            std::fs::read_to_string(dirs[0].path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in &children {
        signal(c, "-TERM");
    }
    for c in children {
        finish(c);
    }
    for d in &dirs {
        let log = std::fs::read_to_string(d.path().join("agent.log")).unwrap();
        let lost = log
            .lines()
            .filter(|l| l.contains("Lost the MQTT link"))
            .count();
        assert!(lost <= 2, "{lost} lines about the lost link:\n{log}");
    }
}
