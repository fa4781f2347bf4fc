//! `edge-agent demo` end to end: it runs its quick schedule and every stage happens —
//! telemetry for every shipped rule, cloud commands, detections answered by the cloud
//! and by the local model, the breaker opening and closing, one update committed and
//! one rolled back — as its summary says and as a mosquitto_sub on its embedded broker
//! sees.
#![cfg(feature = "demo")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agent::{agent, payloads};
use support::mosquitto::{free_port, ready_sub};

/// `edge-agent demo ARGS --port P --dir D` with its stdout collected; returns once the
/// demo printed where its broker is.
fn start_demo(
    args: &[&str],
    port: u16,
    dir: &std::path::Path,
) -> (
    std::process::Child,
    Arc<Mutex<Vec<String>>>,
    std::thread::JoinHandle<()>,
) {
    let mut child = agent()
        .args(args)
        .arg("--port")
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir)
        .env("ORT_DYLIB_PATH", support::onnxruntime_lib())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge-agent demo");
    let out = Arc::new(Mutex::new(Vec::<String>::new()));
    let o2 = out.clone();
    let stdout = child.stdout.take().unwrap();
    // Ends when the demo closes its stdout, i.e. when it has exited.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            o2.lock().unwrap().push(line);
        }
    });
    let t0 = Instant::now();
    while !out
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("watch it: mosquitto_sub"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the demo did not start: {:?}",
            out.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, out, reader)
}

#[test]
fn the_demo_shows_every_stage_of_the_loop() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let dom = support::domain();
    let domain = dom.id.to_string();
    let (mut child, out, reader) = start_demo(
        &["demo", "--fast", "--duration", "60", "--domain", &domain],
        port,
        dir.path(),
    );
    let t0 = Instant::now();
    let sub = ready_sub(port, "#", "probe/ready", &["-q", "1"]);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "the demo did not stop after --duration"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    reader.join().unwrap();
    let lines = out.lock().unwrap().clone();
    let log = std::fs::read_to_string(dir.path().join("edge-agent-demo.log")).unwrap_or_default();
    let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
    assert!(
        status.success(),
        "demo failed; stdout:\n{}\nlog tail:\n{tail}",
        lines.join("\n")
    );

    let summary: Value = lines
        .iter()
        .find_map(|l| l.strip_prefix("summary-json "))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or_else(|| panic!("no summary: {lines:?}"));
    assert_eq!(summary["all_stages"], true, "{summary}");
    for rule in [
        "gps",
        "arm_pose",
        "arm_joints",
        "battery",
        "temperature",
        "humidity",
        "robot_status",
        "camera",
    ] {
        assert!(
            summary["rules"][rule].as_u64().unwrap_or(0) > 0,
            "{rule}: {summary}"
        );
    }
    assert!(summary["answers_by_source"]["cloud"].as_u64().unwrap() > 0);
    assert!(summary["answers_by_source"]["local"].as_u64().unwrap() > 0);
    assert!(
        summary["breaker_opened"].as_u64().unwrap() >= 1
            && summary["breaker_closed"].as_u64().unwrap() >= 1
    );
    assert_eq!(summary["ota_committed"][0], "2.0.0", "{summary}");
    assert_eq!(summary["ota_rolled_back"][0], "3.0.0", "{summary}");
    assert!(summary["commands_delivered"].as_u64().unwrap() > 0);

    // What an outside subscriber saw on the demo's broker.
    let seen = sub.snapshot();
    let post = payloads(&seen, "/sys/demo/picker-01/thing/event/property/post");
    for key in ["GeoLocation", "Battery", "Temperature", "Humidity"] {
        assert!(
            post.iter().any(|p| p["params"].get(key).is_some()),
            "no {key} property post"
        );
    }
    for topic in [
        "/demo/picker-01/user/arm/pose",
        "/demo/picker-01/user/arm/joints",
        "/demo/picker-01/user/robot/status",
        "/demo/picker-01/user/camera/image",
        "/demo/picker-01/user/detect/request",
        "/demo/picker-01/user/detect/response",
        "/ota/device/progress/demo/picker-01",
        "/ota/device/inform/demo/picker-01",
    ] {
        assert!(
            seen.iter().any(|l| l.starts_with(&format!("{topic} "))),
            "nothing on {topic}"
        );
    }
    let results = payloads(&seen, "/demo/picker-01/user/detect/result");
    assert!(results.iter().any(|r| r["source"] == "cloud"));
    assert!(results.iter().any(|r| r["source"] == "local"));
    assert!(results.iter().any(|r| r["breaker"] == "open"));
    let ota = payloads(&seen, "/demo/picker-01/user/ota/result");
    assert!(ota.iter().any(|r| r["RESULT"] == 0));
    assert!(ota.iter().any(|r| r["RESULT"] == 1
        && r["ERROR_INFO"]
            .as_str()
            .unwrap_or("")
            .contains("health check failed")));
}

#[test]
fn ctrl_c_stops_the_demo_cleanly_with_a_summary() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let dom = support::domain();
    let domain = dom.id.to_string();
    let (mut child, out, reader) =
        start_demo(&["demo", "--fast", "--domain", &domain], port, dir.path());
    let t0 = Instant::now();
    // Stopped once the simulated robot's traffic flows through the agent.
    let sub = ready_sub(port, "#", "probe/ready", &["-q", "1"]);
    sub.wait_for("the demo's traffic", Duration::from_secs(60), |l| {
        l.iter().any(|l| !l.starts_with("probe/"))
    });
    support::agent::signal(&child, "-INT");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the demo did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    let lines = out.lock().unwrap().clone();
    assert!(status.success(), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("summary-json ")),
        "{lines:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("edge-agent-demo.log")).unwrap();
    assert!(
        log.contains("edge-agent") || log.contains("Detection service ready"),
        "{log}"
    );
    assert!(!log.contains("did not stop in time"), "{log}");
    assert!(!log.contains("did not close in time"), "{log}");
}
