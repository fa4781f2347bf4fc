//! The bridge end to end with real peers: a Cyclone DDS 0.10 ROS 2 peer, the agent as a
//! process, a mosquitto broker and mosquitto_sub / mosquitto_pub.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::agent::{
    finish, finish_watched, payloads, signal, spawn_run, spawn_watched, stop, stop_watched,
    AgentDir,
};
use support::mosquitto::{publish, ready_sub, Mosquitto, Options};
use support::ros_peer::RosPeer;

const RULES: &str = r#"
[[ros_to_mqtt]]
name = "chatter"
ros_topic = "/chatter"
ros_type = "std_msgs/msg/String"
mqtt_topic = "/${productKey}/${deviceName}/user/${ros_topic}"

[[ros_to_mqtt]]
name = "gps"
ros_topic = "/gps/fix"
ros_type = "sensor_msgs/msg/NavSatFix"
mqtt_topic = "/sys/${productKey}/${deviceName}/thing/event/property/post"
envelope = "alink"
params_key = "GeoLocation"
fields = ["latitude", "longitude", "status.status"]
rename = { "status.status" = "fix" }
timestamp = "field"

[[ros_to_mqtt]]
name = "joints"
ros_topic = "/arm/joint_states"
ros_type = "sensor_msgs/msg/JointState"
qos = "auto"
mqtt_topic = "/${productKey}/${deviceName}/user/arm/joints"

[[ros_to_mqtt]]
name = "camera"
ros_topic = "/camera/image_raw"
ros_type = "sensor_msgs/msg/Image"
qos = "sensor-data"
mqtt_topic = "/${productKey}/${deviceName}/user/camera/image"
image = { format = "jpeg", quality = 70 }

# a second reader of the camera topic (as detection is beside an image rule)
[[ros_to_mqtt]]
name = "camera_preview"
ros_topic = "/camera/image_raw"
ros_type = "sensor_msgs/msg/Image"
qos = "sensor-data"
mqtt_topic = "/${productKey}/${deviceName}/user/camera/preview"
image = { format = "jpeg", quality = 30 }
"#;

#[test]
fn ros_topics_arrive_on_mqtt_as_json() {
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let sub = ready_sub(broker.port, "#", "probe/ready", &["-q", "1"]);
    let a = AgentDir::new(broker.port, domain, RULES, "");
    let (agent, agent_log) = spawn_watched(&a.config(), &[]);
    let mut peer = RosPeer::start(domain);

    peer.publisher("chat", "/chatter", "std_msgs/msg/String", json!({}));
    peer.publisher("gps", "/gps/fix", "sensor_msgs/msg/NavSatFix", json!({}));
    peer.publisher(
        "joints",
        "/arm/joint_states",
        "sensor_msgs/msg/JointState",
        json!({}),
    );
    peer.publisher(
        "cam",
        "/camera/image_raw",
        "sensor_msgs/msg/Image",
        json!({"reliability": "best-effort"}),
    );
    for id in ["chat", "gps", "joints", "cam"] {
        peer.wait_matched(id);
    }
    for topic in [
        "/chatter",
        "/gps/fix",
        "/arm/joint_states",
        "/camera/image_raw",
    ] {
        agent_log.wait_publisher(topic);
    }
    peer.write("chat", json!({"data": "hello orchard ü"}));
    peer.write("gps", json!({"header":{"stamp":{"sec":1763789000,"nanosec":0},"frame_id":"gps"},
        "status":{"status":2,"service":1},"latitude":30.274085,"longitude":120.15507,"altitude":12.5}));
    peer.write(
        "joints",
        json!({"header":{"frame_id":"arm"},"name":["j1","j2","j3","j4","j5","j6","j7"],
        "position":[0.1,0.2,0.3,0.4,0.5,0.6,0.7],"velocity":[],"effort":[]}),
    );
    // A 640x480 rgb8 frame: a red disc on green.
    let (w, h) = (640usize, 480usize);
    let mut px = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) * 3;
            let inside = (x as i64 - 320).pow(2) + (y as i64 - 240).pow(2) < 80 * 80;
            px[i..i + 3].copy_from_slice(if inside {
                &[220, 20, 30]
            } else {
                &[30, 140, 40]
            });
        }
    }
    peer.write(
        "cam",
        json!({"header":{"frame_id":"camera_color_optical_frame"},"height":h,"width":w,
        "encoding":"rgb8","step":w*3,"data":base64::engine::general_purpose::STANDARD.encode(&px)}),
    );

    let lines = sub.wait_for("all five topics", Duration::from_secs(20), |l| {
        [
            "/pk1/robot-7/user/chatter",
            "/sys/pk1/robot-7/thing/event/property/post",
            "/pk1/robot-7/user/arm/joints",
            "/pk1/robot-7/user/camera/image",
            "/pk1/robot-7/user/camera/preview",
        ]
        .iter()
        .all(|t| !payloads(l, t).is_empty())
    });
    let log = stop_watched(agent, agent_log);

    assert_eq!(
        payloads(&lines, "/pk1/robot-7/user/chatter")[0],
        json!({"data": "hello orchard ü"})
    );

    let gps = &payloads(&lines, "/sys/pk1/robot-7/thing/event/property/post")[0];
    assert_eq!(gps["method"], "thing.event.property.post");
    assert_eq!(gps["version"], "1.0");
    assert!(gps["id"].as_str().is_some());
    let geo = &gps["params"]["GeoLocation"];
    assert_eq!(geo["latitude"], 30.274085);
    assert_eq!(geo["longitude"], 120.15507);
    assert_eq!(geo["fix"], 2);
    assert!(geo["_ts"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(geo.get("altitude").is_none());

    let joints = &payloads(&lines, "/pk1/robot-7/user/arm/joints")[0];
    assert_eq!(joints["name"].as_array().unwrap().len(), 7);
    assert_eq!(joints["position"][6], 0.7);
    assert_eq!(joints["header"]["frame_id"], "arm");

    let img = &payloads(&lines, "/pk1/robot-7/user/camera/image")[0];
    assert_eq!(img["format"], "jpeg");
    assert_eq!(
        (img["width"].as_u64(), img["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert_eq!(img["header"]["frame_id"], "camera_color_optical_frame");
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(img["data"].as_str().unwrap())
        .unwrap();
    let img = edge_agent::detect::local::decode_image(&jpeg).expect("a decodable JPEG");
    assert_eq!((img.width, img.height), (640, 480));
    let pixels = img.data;
    // The disc is still red in the middle, the background green.
    let at = |x: usize, y: usize| &pixels[(y * 640 + x) * 3..(y * 640 + x) * 3 + 3];
    assert!(
        at(320, 240)[0] > 180 && at(320, 240)[1] < 70,
        "{:?}",
        at(320, 240)
    );
    assert!(
        at(10, 10)[1] > 100 && at(10, 10)[0] < 80,
        "{:?}",
        at(10, 10)
    );
    assert!(log.contains("Bridge rules started."), "{log}");
    // What the camera topic holds in memory is named once, for that topic only: its
    // two readers share one cache.
    let large: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Messages on this topic are large"))
        .collect();
    assert_eq!(large.len(), 1, "{log}");
    assert!(
        large[0].contains("topic=/camera/image_raw") && large[0].contains("held_mb=59"),
        "{log}"
    );
    // A clean stop ends without errors: the journal shows what went wrong, not teardown.
    assert!(
        !log.lines().any(|l| l.contains("ERROR")),
        "a clean stop logged errors:\n{log}"
    );
}

#[test]
fn cloud_commands_arrive_on_ros_byte_correct_and_bad_ones_get_an_error() {
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let rules = r#"
[[mqtt_to_ros]]
name = "arm_target"
mqtt_topic = "/${productKey}/${deviceName}/user/cmd/arm_target"
ros_topic = "/arm/target_pose"
ros_type = "geometry_msgs/msg/PoseStamped"
"#;
    let a = AgentDir::new(broker.port, domain, rules, "");
    let errors = ready_sub(
        broker.port,
        "/pk1/robot-7/user/cmd/error",
        "/pk1/robot-7/user/cmd/error",
        &["-q", "1"],
    );
    let agent = spawn_run(&a.config(), &[]);
    let mut peer = RosPeer::start(domain);
    peer.subscriber(
        "target",
        "/arm/target_pose",
        "geometry_msgs/msg/PoseStamped",
        json!({}),
    );

    let cmd = json!({"header":{"stamp":{"sec":12,"nanosec":34},"frame_id":"base_link"},
        "pose":{"position":{"x":0.5,"y":-0.25,"z":1.25},"orientation":{"x":0,"y":0,"z":0.6,"w":0.8}}});
    // Retry until the agent's subscription and the ROS match are in place.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while peer.received("target").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no command reached ROS"
        );
        publish(
            broker.port,
            "/pk1/robot-7/user/cmd/arm_target",
            &cmd.to_string(),
            &["-q", "1"],
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = &peer.received("target")[0];
    assert_eq!(got["value"]["pose"]["position"]["y"], -0.25);
    assert_eq!(got["value"]["header"]["frame_id"], "base_link");
    // Byte-correct: Cyclone's serialization of what it received is our encoding of the command.
    let reg = support::test_registry();
    let schema = reg.schema("geometry_msgs/msg/PoseStamped").unwrap();
    let ours = edge_agent::ros::codec::encode_value(&schema, &cmd, &Default::default()).unwrap();
    let theirs = support::unhex(got["cdr"].as_str().unwrap());
    assert_eq!(&theirs[4..], &ours[4..]);

    // A bad command: an error naming the JSON path, and the agent goes on.
    publish(
        broker.port,
        "/pk1/robot-7/user/cmd/arm_target",
        r#"{"pose":{"position":{"q":1}}}"#,
        &["-q", "1"],
    );
    publish(
        broker.port,
        "/pk1/robot-7/user/cmd/arm_target",
        "not json",
        &["-q", "1"],
    );
    let lines = errors.wait_for("two error replies", Duration::from_secs(10), |l| {
        payloads(l, "/pk1/robot-7/user/cmd/error").len() >= 2
    });
    let errs = payloads(&lines, "/pk1/robot-7/user/cmd/error");
    assert_eq!(errs[0]["error"], "pose.position.q: unknown field");
    assert_eq!(errs[0]["rule"], "arm_target");
    assert!(
        errs[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON"),
        "{}",
        errs[1]
    );
    let before = peer.received("target").len();
    publish(
        broker.port,
        "/pk1/robot-7/user/cmd/arm_target",
        &cmd.to_string(),
        &["-q", "1"],
    );
    peer.wait_received("target", before + 1, Duration::from_secs(10));
    let log = stop(agent);
    assert!(log.contains("Refused a cloud command"), "{log}");
}

#[test]
fn the_rate_limit_delivers_the_latest_value() {
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let rules = r#"
[[ros_to_mqtt]]
name = "counter"
ros_topic = "/counter"
ros_type = "std_msgs/msg/Int32"
mqtt_topic = "/pk1/robot-7/user/counter"
max_rate_hz = 2.0
"#;
    let a = AgentDir::new(broker.port, domain, rules, "");
    let sub = ready_sub(
        broker.port,
        "/pk1/robot-7/user/counter",
        "/pk1/robot-7/user/counter",
        &["-q", "1"],
    );
    let (agent, agent_log) = spawn_watched(&a.config(), &[]);
    let mut peer = RosPeer::start(domain);
    peer.publisher("c", "/counter", "std_msgs/msg/Int32", json!({"depth": 100}));
    peer.wait_matched("c");
    agent_log.wait_publisher("/counter");
    // 100 values over ~1 s; at 2 Hz a handful go out, and the last one must be 99.
    peer.cmd(json!({"op": "write", "id": "c", "value": {"data": 0}, "count": 1}));
    for i in 1..100 {
        peer.cmd(
            json!({"op": "write", "id": "c", "value": {"data": i}, "count": 1, "interval_ms": 10}),
        );
    }
    sub.wait_for("the final value", Duration::from_secs(10), |l| {
        payloads(l, "/pk1/robot-7/user/counter")
            .iter()
            .any(|v| v["data"] == 99)
    });
    // A clean stop sends whatever the limiter still held; nothing is left to come.
    stop_watched(agent, agent_log);
    let values: Vec<i64> = payloads(&sub.snapshot(), "/pk1/robot-7/user/counter")
        .iter()
        .filter_map(|v| v["data"].as_i64())
        .collect();
    assert_eq!(values.last(), Some(&99), "{values:?}");
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    // Every value taken was either sent or replaced by a newer one under the limit,
    // and the limit replaced most of them.
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(a.path().join("state/status.json")).unwrap())
            .unwrap();
    let rule = &status["rules"][0];
    assert_eq!(rule["received"], 100, "{rule}");
    assert_eq!(rule["sent"].as_u64(), Some(values.len() as u64), "{rule}");
    assert_eq!(
        rule["sent"].as_u64().unwrap() + rule["rate_dropped"].as_u64().unwrap(),
        100,
        "{rule}"
    );
    assert!(values.len() < 50, "{values:?}");
}

#[test]
fn ros2_launch_arguments_name_the_node() {
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let rules = "[[ros_to_mqtt]]\nname = \"c\"\nros_topic = \"/chatter\"\nros_type = \"std_msgs/msg/String\"\nmqtt_topic = \"/t\"\n";
    let a = AgentDir::new(broker.port, domain, rules, "");
    let mut peer = RosPeer::start(domain);
    // As ros2 launch runs an executable: only ROS arguments, the configuration as a
    // parameter in a parameter file, and options the agent does not use.
    let params = a.path().join("params.yaml");
    std::fs::write(
        &params,
        format!(
            "/**:\n  ros__parameters:\n    config_file: {}\n",
            a.config().display()
        ),
    )
    .unwrap();
    let child = support::agent::agent()
        .args([
            "--ros-args",
            "-r",
            "__node:=cloud_link",
            "-r",
            "__ns:=/picker07",
            "--params-file",
        ])
        .arg(&params)
        .args([
            "-r",
            "/chatter:=/talk",
            "--log-level",
            "info",
            "-p",
            "use_sim_time:=false",
        ])
        .env("RUST_LOG", "edge_agent=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = peer.nodes();
        if nodes.contains(&("/picker07".to_owned(), "cloud_link".to_owned())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node not in ros_discovery_info; seen {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = stop(child);
    assert!(log.contains("ROS arguments not used by the agent"), "{log}");
    assert!(log.contains("/chatter:=/talk"), "{log}");
}

#[test]
fn sigterm_during_traffic_loses_no_qos1_message() {
    let dom = support::domain();
    let domain = dom.id;
    let mut broker = Mosquitto::start(Options {
        persistence: true,
        ..Options::default()
    });
    let rules = r#"
[[ros_to_mqtt]]
name = "seq"
ros_topic = "/seq"
ros_type = "std_msgs/msg/Int32"
qos = { reliability = "reliable", depth = 1000 }
mqtt_topic = "/pk1/robot-7/user/seq"
"#;
    let a = AgentDir::new(broker.port, domain, rules, "");
    let sub = ready_sub(
        broker.port,
        "/pk1/robot-7/user/seq",
        "/pk1/robot-7/user/seq",
        &["-q", "1", "-c", "-i", "seq-sub"],
    );
    let (agent, agent_log) = spawn_watched(&a.config(), &[]);
    let mut peer = RosPeer::start(domain);
    peer.publisher("s", "/seq", "std_msgs/msg/Int32", json!({"depth": 1000}));
    peer.wait_matched("s");
    agent_log.wait_publisher("/seq");
    // Traffic while the broker goes away: the rest is held in the outbox.
    for i in 0..300 {
        peer.write("s", json!({"data": i}));
        if i == 100 {
            broker.stop();
        }
    }
    // Stopped once the agent has taken all 300 (its status file says so within 5 s).
    let status_file = a.path().join("state/status.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let taken = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["rules"][0]["received"].as_u64());
        if taken == Some(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stop_watched(agent, agent_log);
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(a.path().join("state/status.json")).unwrap())
            .unwrap();
    assert_eq!(status["state"], "stopped");
    let taken = status["rules"][0]["received"].as_u64().unwrap();
    assert_eq!(
        taken, 300,
        "the agent took {taken} of 300 before SIGTERM\n{log}"
    );

    // Next start, with the broker back: everything taken arrives.
    broker.start_again();
    let agent = spawn_run(&a.config(), &[]);
    let lines = sub.wait_for("every message", Duration::from_secs(30), |l| {
        payloads(l, "/pk1/robot-7/user/seq")
            .iter()
            .filter_map(|v| v["data"].as_i64())
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 300
    });
    stop(agent);
    let got: Vec<i64> = payloads(&lines, "/pk1/robot-7/user/seq")
        .iter()
        .filter_map(|v| v["data"].as_i64())
        .collect();
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<i64> = got.iter().copied().filter(|x| seen.insert(*x)).collect();
    assert_eq!(firsts, (0..300).collect::<Vec<_>>());
}

/// The signals blocked in each DDS thread of process `pid` (the `SigBlk` mask).
fn dds_thread_masks(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = e.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with("RustDDS") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap();
        out.push((name.trim().to_owned(), mask));
    }
    out
}

#[test]
fn after_a_stop_and_continue_the_agent_restarts_and_bridges_again() {
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let sub = ready_sub(broker.port, "#", "probe/ready", &["-q", "1"]);
    let rules = r#"
[[ros_to_mqtt]]
name = "chatter"
ros_topic = "/chatter"
ros_type = "std_msgs/msg/String"
mqtt_topic = "/pk1/robot-7/user/chatter"
"#;
    let a = AgentDir::new(broker.port, domain, rules, "");
    let (agent, agent_log) = spawn_watched(&a.config(), &[]);
    let mut peer = RosPeer::start(domain);
    peer.publisher("chat", "/chatter", "std_msgs/msg/String", json!({}));
    peer.wait_matched("chat");
    agent_log.wait_publisher("/chatter");
    peer.write("chat", json!({"data": "before"}));
    sub.wait_for("the first message", Duration::from_secs(20), |l| {
        !payloads(l, "/pk1/robot-7/user/chatter").is_empty()
    });

    // The DDS threads take no signal, so a SIGTERM or SIGCHLD cannot interrupt them.
    let masks = dds_thread_masks(agent.id());
    assert!(masks.len() >= 2, "DDS threads of the agent: {masks:?}");
    for (name, mask) in &masks {
        assert!(
            mask & (1 << (libc::SIGTERM - 1)) != 0 && mask & (1 << (libc::SIGCHLD - 1)) != 0,
            "{name} does not block signals: {mask:x}"
        );
    }

    // A stop and continue (what a debugger or Ctrl-Z does) ends the DDS threads; the
    // agent says so and exits with an error, for systemd or ros2 launch to restart it.
    signal(&agent, "-STOP");
    std::thread::sleep(Duration::from_millis(300));
    signal(&agent, "-CONT");
    let mut agent = agent;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agent.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if agent.try_wait().unwrap().is_none() {
        let _ = agent.kill();
        let (_, log) = finish_watched(agent, agent_log);
        panic!("the agent ran on after its DDS threads ended:\n{log}");
    }
    let (code, log) = finish_watched(agent, agent_log);
    assert_eq!(code, Some(70), "{log}");
    assert!(
        log.contains("The ROS 2 side of the agent stopped; restarting the agent.")
            && log.contains("the DDS"),
        "{log}"
    );

    let agent = spawn_run(&a.config(), &[]);
    // The peer's writer matches the new reader; write until a message comes through.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let arrived = |l: &[String]| {
        payloads(l, "/pk1/robot-7/user/chatter")
            .iter()
            .any(|v| v["data"] == "after")
    };
    while !arrived(&sub.snapshot()) && std::time::Instant::now() < deadline {
        peer.write("chat", json!({"data": "after"}));
        std::thread::sleep(Duration::from_millis(300));
    }
    let lines = sub.wait_for(
        "a message after the restart",
        Duration::from_secs(1),
        arrived,
    );
    stop(agent);
    assert_eq!(
        payloads(&lines, "/pk1/robot-7/user/chatter")[0],
        json!({"data": "before"})
    );
}

/// A class that fills up while the broker is away drops its oldest messages, and says
/// so: a WARN naming the class, and the health line's count.
#[test]
fn a_full_outbox_class_says_so_in_the_log() {
    let dom = support::domain();
    let mut broker = Mosquitto::start(Options::default());
    broker.stop();
    let rules = r#"
[[ros_to_mqtt]]
name = "chatter"
ros_topic = "/chatter"
ros_type = "std_msgs/msg/String"
qos = { reliability = "reliable", depth = 1000 }
mqtt_topic = "/pk1/robot-7/user/chatter"
class = "small"
"#;
    let extra = "[outbox.classes.small]\nmax_bytes = \"128KiB\"\nmax_age = \"1d\"\npolicy = \"drop-oldest\"\n";
    let a = AgentDir::new(broker.port, dom.id, rules, extra);
    let agent = spawn_run(&a.config(), &[]);
    let mut peer = RosPeer::start(dom.id);
    peer.publisher(
        "c",
        "/chatter",
        "std_msgs/msg/String",
        json!({"depth": 1000}),
    );
    peer.wait_matched("c");
    let text = "x".repeat(1000);
    peer.cmd(
        json!({"op": "write", "id": "c", "value": {"data": text}, "count": 400, "interval_ms": 1}),
    );
    // The status file shows the drop; the health line after it counts it.
    let dropped = || -> u64 {
        let s: Value = std::fs::read_to_string(a.path().join("state/status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        s["link"]["outbox"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["class"] == "small"))
            .and_then(|c| c["dropped_full"].as_u64())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dropped() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the class never dropped: {}",
            std::fs::read_to_string(a.path().join("state/status.json")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = stop(agent);
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("Outbox class small is full"))
        .unwrap_or_else(|| panic!("no WARN about the full class:\n{log}"));
    assert!(warn.contains("dropping_since="), "{warn}");
    assert!(
        log.lines()
            .any(|l| l.contains("Health:") && l.contains("dropped by full outbox classes")),
        "{log}"
    );
}

/// A rule asking for reliable delivery meets a best-effort publisher: DDS matches
/// nothing and says nothing, so the agent says it (as rclcpp warns of incompatible QoS).
#[test]
fn a_publisher_the_rule_cannot_match_is_named_in_the_log() {
    let dom = support::domain();
    let broker = Mosquitto::start(Options::default());
    let rules = r#"
[[ros_to_mqtt]]
name = "scan"
ros_topic = "/scan_count"
ros_type = "std_msgs/msg/Int32"
qos = "default"
mqtt_topic = "/pk1/robot-7/user/scan"
"#;
    let a = AgentDir::new(broker.port, dom.id, rules, "");
    let log_path = a.path().join("agent.log");
    let child = support::agent::agent()
        .args(["run", "--config"])
        .arg(a.config())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut peer = RosPeer::start(dom.id);
    peer.publisher(
        "s",
        "/scan_count",
        "std_msgs/msg/Int32",
        json!({"reliability": "best-effort"}),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("receives nothing from the topic's publisher") {
            break log;
        }
        assert!(std::time::Instant::now() < deadline, "no warning:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    signal(&child, "-TERM");
    finish(child);
    let warn = log
        .lines()
        .find(|l| l.contains("receives nothing"))
        .unwrap();
    assert!(
        warn.contains("WARN") && warn.contains("rule=scan"),
        "{warn}"
    );
    assert!(warn.contains("best-effort"), "{warn}");
}

/// `edge-agent status` shows the present: with an hourly health report the status file
/// is still written every few seconds, and says when.
#[test]
fn status_shows_the_present_whatever_the_health_interval() {
    let dom = support::domain();
    let broker = Mosquitto::start(Options::default());
    let rules = r#"
[[ros_to_mqtt]]
name = "chatter"
ros_topic = "/chatter"
ros_type = "std_msgs/msg/String"
qos = { reliability = "reliable", depth = 100 }
mqtt_topic = "/pk1/robot-7/user/chatter"
"#;
    let a = AgentDir::new(broker.port, dom.id, rules, "");
    let cfg = std::fs::read_to_string(a.config()).unwrap();
    std::fs::write(
        a.config(),
        cfg.replace("health_interval = \"1s\"", "health_interval = \"1h\""),
    )
    .unwrap();
    let agent = spawn_run(&a.config(), &[]);
    let mut peer = RosPeer::start(dom.id);
    peer.publisher(
        "c",
        "/chatter",
        "std_msgs/msg/String",
        json!({"depth": 100}),
    );
    peer.wait_matched("c");
    peer.cmd(json!({"op": "write", "id": "c", "value": {"data": "hi"}, "count": 20}));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let out = support::agent::agent()
            .args(["status", "--config"])
            .arg(a.config())
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["rules"][0]["received"].as_u64() == Some(20) {
            assert!(out.status.success(), "{v}");
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "status: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["health_interval_s"], 3600);
    assert_eq!(status["status_interval_s"], 5);
    assert_eq!(status["running"], true);
    assert!(status["age_s"].as_u64().is_some(), "{status}");
    stop(agent);
}
