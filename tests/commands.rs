//! Cloud commands onto ROS 2 that are neither lost nor carried out late, against a real
//! mosquitto (MQTT 3.1.1 and 5) and a Cyclone DDS 0.10 subscriber: a command is
//! acknowledged to the broker only once it is on ROS, a burst that arrives while ROS
//! cannot take it yet waits instead of being dropped, commands sent while the agent is
//! away arrive when it is back (in order, none twice), a stale command is refused with
//! the reason, and a command too large to read is answered without the link dropping.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::agent::{payloads, spawn_run, stop, AgentDir};
use support::mosquitto::{publish, ready_sub, Mosquitto, Options, Sub};
use support::ros_peer::RosPeer;

const T: Duration = Duration::from_secs(60);
const CMD: &str = "/pk1/robot-7/user/cmd/mode";
const ERRORS: &str = "/pk1/robot-7/user/cmd/error";

/// One command rule; `extra` adds keys to it.
fn rules(extra: &str) -> String {
    format!(
        r#"
[[mqtt_to_ros]]
name = "mode"
mqtt_topic = "/${{productKey}}/${{deviceName}}/user/cmd/mode"
ros_topic = "/robot/mode"
ros_type = "std_msgs/msg/String"
qos = {{ reliability = "reliable", depth = 1000 }}
{extra}
"#
    )
}

fn agent_dir(port: u16, domain: u16, rule_extra: &str, mqtt: &str) -> AgentDir {
    AgentDir::with_mqtt(
        port,
        &format!("domain_id = {domain}\nonly_networks = [\"127.0.0.1\"]"),
        &rules(rule_extra),
        mqtt,
        "",
    )
}

/// Publishes every line of `lines` at QoS 1 in one burst (mosquitto_pub -l).
fn burst(port: u16, topic: &str, lines: &[String], extra: &[&str]) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
            "-l",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)");
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

/// Waits until the agent's command subscription is live: a bad command is answered.
fn wait_subscribed(port: u16, errors: &Sub) {
    support::agent::wait_subscribed(port, errors, CMD, "probe: not JSON", ERRORS, T);
}

/// Waits for `n` messages on the peer's `mode` subscription; on time-out the agent is
/// stopped and its log is part of the failure.
fn wait_mode(peer: &RosPeer, n: usize, agent: &mut Option<std::process::Child>) {
    let deadline = std::time::Instant::now() + T;
    while peer.received("mode").len() < n {
        if std::time::Instant::now() > deadline {
            let log = agent.take().map(stop).unwrap_or_default();
            panic!(
                "Cyclone received {} of {n} commands: {:?}\nagent log:\n{log}",
                peer.received("mode").len(),
                datas(peer, "mode")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn datas(peer: &RosPeer, id: &str) -> Vec<String> {
    peer.received(id)
        .iter()
        .map(|m| m["value"]["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// 600 commands in a burst while the ROS topic has no subscriber yet: the first one
/// waits for the subscriber, the others wait behind it (more than the handler's queue
/// holds; the broker holds the rest unacknowledged), and all 600 reach ROS in order.
#[test]
fn a_burst_that_ros_cannot_take_yet_waits_and_every_command_arrives_in_order() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let a = agent_dir(mq.port, dom.id, "wait_for_subscriber = \"30s\"", "");
    let errors = ready_sub(mq.port, ERRORS, ERRORS, &["-q", "1"]);
    let mut agent = Some(spawn_run(&a.config(), &[]));
    wait_subscribed(mq.port, &errors);
    let cmds: Vec<String> = (0..600)
        .map(|i| json!({"data": format!("cmd-{i:03}")}).to_string())
        .collect();
    burst(mq.port, CMD, &cmds, &[]);
    // Only now does the robot's node come up.
    let mut peer = RosPeer::start(dom.id);
    peer.subscriber(
        "mode",
        "/robot/mode",
        "std_msgs/msg/String",
        json!({"depth": 1000}),
    );
    wait_mode(&peer, 600, &mut agent);
    let want: Vec<String> = (0..600).map(|i| format!("cmd-{i:03}")).collect();
    assert_eq!(datas(&peer, "mode"), want);
    let log = stop(agent.unwrap());
    assert!(!log.contains("dropped"), "{log}");
}

/// Commands sent while the agent is away arrive when it is back, in order and once:
/// the broker kept the session (MQTT 3.1.1 clean session off; MQTT 5 a session expiry),
/// and what the agent handled before was acknowledged, so nothing comes twice.
#[test]
fn commands_sent_while_the_agent_is_away_arrive_once_it_is_back_in_order_none_twice() {
    for (protocol, mqtt) in [("3.1.1", ""), ("5", "protocol = \"5\"\n")] {
        let mq = Mosquitto::start(Options::default());
        let dom = support::domain();
        let a = agent_dir(mq.port, dom.id, "", mqtt);
        let errors = ready_sub(mq.port, ERRORS, ERRORS, &["-q", "1"]);
        let mut peer = RosPeer::start(dom.id);
        peer.subscriber(
            "mode",
            "/robot/mode",
            "std_msgs/msg/String",
            json!({"depth": 1000}),
        );
        let mut agent = Some(spawn_run(&a.config(), &[]));
        wait_subscribed(mq.port, &errors);
        publish(
            mq.port,
            CMD,
            &json!({"data": "before"}).to_string(),
            &["-q", "1"],
        );
        wait_mode(&peer, 1, &mut agent);
        let log = stop(agent.unwrap());
        assert!(!log.contains("ERROR"), "{protocol}: {log}");

        // Away: 50 commands.
        let away: Vec<String> = (0..50)
            .map(|i| json!({"data": format!("away-{i:02}")}).to_string())
            .collect();
        burst(mq.port, CMD, &away, &[]);
        let mut agent = Some(spawn_run(&a.config(), &[]));
        wait_mode(&peer, 51, &mut agent);
        let log = stop(agent.unwrap());
        assert!(
            log.contains("The broker kept this agent's session"),
            "{protocol}: {log}"
        );
        // Once more: nothing of the above comes again; a new command is next.
        let mut agent = Some(spawn_run(&a.config(), &[]));
        wait_subscribed(mq.port, &errors);
        publish(
            mq.port,
            CMD,
            &json!({"data": "after"}).to_string(),
            &["-q", "1"],
        );
        wait_mode(&peer, 52, &mut agent);
        stop(agent.unwrap());
        let mut want = vec!["before".to_owned()];
        want.extend((0..50).map(|i| format!("away-{i:02}")));
        want.push("after".into());
        assert_eq!(datas(&peer, "mode"), want, "{protocol}");
    }
}

/// A command older than the rule's max_age (by its timestamp) is not carried out: the
/// cloud is told why, and a fresh one goes through.
#[test]
fn a_stale_command_is_refused_with_the_reason() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let a = agent_dir(
        mq.port,
        dom.id,
        "max_age = \"30s\"\ntimestamp_field = \"ts\"",
        "",
    );
    let errors = ready_sub(mq.port, ERRORS, ERRORS, &["-q", "1"]);
    let mut peer = RosPeer::start(dom.id);
    peer.subscriber(
        "mode",
        "/robot/mode",
        "std_msgs/msg/String",
        json!({"depth": 100}),
    );
    let mut agent = Some(spawn_run(&a.config(), &[]));
    wait_subscribed(mq.port, &errors);
    // The agent's publisher and the robot's subscriber have found each other.
    peer.wait_matched("mode");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let before = payloads(&errors.snapshot(), ERRORS).len();
    publish(
        mq.port,
        CMD,
        &json!({"data": "two hours old", "ts": now_ms - 7_200_000}).to_string(),
        &["-q", "1"],
    );
    let lines = errors.wait_for("the stale refusal", T, |l| {
        payloads(l, ERRORS).len() > before
    });
    let e: Value = payloads(&lines, ERRORS)[before].clone();
    let why = e["error"].as_str().unwrap();
    assert!(
        why.starts_with("stale: sent 7200.") && why.contains("max_age 30.0 s"),
        "{e}"
    );
    publish(
        mq.port,
        CMD,
        &json!({"data": "fresh", "ts": now_ms}).to_string(),
        &["-q", "1"],
    );
    wait_mode(&peer, 1, &mut agent);
    assert_eq!(datas(&peer, "mode"), vec!["fresh".to_owned()]);
    let log = stop(agent.unwrap());
    assert!(log.contains("stale"), "{log}");
}

/// A command over mqtt.max_packet_size (MQTT 3.1.1: the broker sends it anyway) is
/// skipped without dropping the link, answered with its size and the limit, and the
/// next command goes through.
#[test]
fn an_oversized_command_is_answered_and_the_link_stays_up() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let a = agent_dir(mq.port, dom.id, "", "max_packet_size = \"64KiB\"\n");
    let errors = ready_sub(mq.port, ERRORS, ERRORS, &["-q", "1"]);
    let mut peer = RosPeer::start(dom.id);
    peer.subscriber(
        "mode",
        "/robot/mode",
        "std_msgs/msg/String",
        json!({"depth": 100}),
    );
    let mut agent = Some(spawn_run(&a.config(), &[]));
    wait_subscribed(mq.port, &errors);
    // This test is about the link, not about the first match: the peer's reader has
    // matched the agent's writer before the command that must reach it is sent.
    peer.wait_matched("mode");
    let before = payloads(&errors.snapshot(), ERRORS).len();
    let big = json!({"data": "x".repeat(200_000)}).to_string();
    let path = std::env::temp_dir().join(format!("edge-agent-big-{}.json", std::process::id()));
    std::fs::write(&path, &big).unwrap();
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mq.port.to_string(),
            "-t",
            CMD,
            "-q",
            "1",
            "-f",
        ])
        .arg(&path)
        .status()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(st.success());
    let lines = errors.wait_for("the refusal of the large command", T, |l| {
        payloads(l, ERRORS).len() > before
    });
    let e = payloads(&lines, ERRORS)[before].clone();
    let why = e["error"].as_str().unwrap();
    assert!(
        why.contains("200") && why.contains("65536") && why.contains("mqtt.max_packet_size"),
        "{e}"
    );
    publish(
        mq.port,
        CMD,
        &json!({"data": "small"}).to_string(),
        &["-q", "1"],
    );
    wait_mode(&peer, 1, &mut agent);
    let log = stop(agent.unwrap());
    assert!(
        !log.contains("Lost the MQTT link"),
        "the link dropped:\n{log}"
    );
    assert!(log.contains("larger than mqtt.max_packet_size"), "{log}");
}

/// Commands the agent took from the broker but had not carried out when it was told to
/// stop (waiting for the robot's node) are not acknowledged: the next run gets them
/// again and carries each out once.
#[test]
fn commands_waiting_when_the_agent_stops_are_carried_out_by_the_next_run() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let a = agent_dir(mq.port, dom.id, "wait_for_subscriber = \"60s\"", "");
    let errors = ready_sub(mq.port, ERRORS, ERRORS, &["-q", "1"]);
    let agent = spawn_run(&a.config(), &[]);
    wait_subscribed(mq.port, &errors);
    let cmds: Vec<String> = (0..5)
        .map(|i| json!({"data": format!("held-{i}")}).to_string())
        .collect();
    burst(mq.port, CMD, &cmds, &[]);
    // The agent has taken them (the first waits for a subscriber, the rest queue): its
    // status counts 5 messages received besides the probes its rule refused.
    let status = a.path().join("state/status.json");
    let deadline = std::time::Instant::now() + T;
    loop {
        let v: Value = std::fs::read(&status)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let taken = v["link"]["received"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(v["rules"][0]["errors"].as_u64().unwrap_or(0));
        if taken >= 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent took {taken} of 5: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stop(agent);
    assert!(!log.contains("goes out anyway"), "{log}");

    let mut peer = RosPeer::start(dom.id);
    peer.subscriber(
        "mode",
        "/robot/mode",
        "std_msgs/msg/String",
        json!({"depth": 100}),
    );
    let mut agent = Some(spawn_run(&a.config(), &[]));
    wait_mode(&peer, 5, &mut agent);
    // Nothing more comes: a marker command arrives right after the five.
    publish(
        mq.port,
        CMD,
        &json!({"data": "marker"}).to_string(),
        &["-q", "1"],
    );
    wait_mode(&peer, 6, &mut agent);
    stop(agent.unwrap());
    let mut want: Vec<String> = (0..5).map(|i| format!("held-{i}")).collect();
    want.push("marker".into());
    assert_eq!(datas(&peer, "mode"), want);
}

/// MQTT 5: a command whose Message Expiry passes while it waits for the robot's node is
/// refused as stale, with the reason on the error topic.
#[test]
fn an_mqtt5_command_that_expires_while_waiting_is_refused() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let a = agent_dir(
        mq.port,
        dom.id,
        "wait_for_subscriber = \"60s\"",
        "protocol = \"5\"\n",
    );
    let errors = ready_sub(mq.port, ERRORS, ERRORS, &["-q", "1"]);
    let agent = spawn_run(&a.config(), &[]);
    wait_subscribed(mq.port, &errors);
    let before = payloads(&errors.snapshot(), ERRORS).len();
    publish(
        mq.port,
        CMD,
        &json!({"data": "drive"}).to_string(),
        &[
            "-q",
            "1",
            "-V",
            "mqttv5",
            "-D",
            "publish",
            "message-expiry-interval",
            "2",
        ],
    );
    let lines = errors.wait_for("the expiry refusal", T, |l| {
        payloads(l, ERRORS).len() > before
    });
    let e = payloads(&lines, ERRORS)[before].clone();
    let why = e["error"].as_str().unwrap();
    assert!(
        why.contains("expiry") && why.contains("no subscriber on /robot/mode"),
        "{e}"
    );
    let log = stop(agent);
    assert!(!log.contains("goes out anyway"), "{log}");
}

/// The log neither floods nor goes quiet: a refusal of a kind already logged is only
/// counted (for a minute), while the first refusal of a new kind is logged at once.
#[test]
fn a_new_kind_of_refusal_reaches_the_log_after_many_of_another() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let a = agent_dir(
        mq.port,
        dom.id,
        "max_age = \"30s\"\ntimestamp_field = \"ts\"",
        "",
    );
    let errors = ready_sub(mq.port, ERRORS, ERRORS, &["-q", "1"]);
    let agent = spawn_run(&a.config(), &[]);
    wait_subscribed(mq.port, &errors);
    let before = payloads(&errors.snapshot(), ERRORS).len();
    for _ in 0..20 {
        publish(mq.port, CMD, "not JSON either", &["-q", "1"]);
    }
    publish(
        mq.port,
        CMD,
        &json!({"data": "from 1970", "ts": 1000}).to_string(),
        &["-q", "1"],
    );
    errors.wait_for("21 answers", T, |l| {
        payloads(l, ERRORS).len() >= before + 21
    });
    let log = stop(agent);
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("Refused a cloud command"))
        .collect();
    assert_eq!(
        warns.iter().filter(|l| l.contains("invalid JSON")).count(),
        1,
        "{log}"
    );
    assert_eq!(
        warns.iter().filter(|l| l.contains("stale")).count(),
        1,
        "{log}"
    );
}
