//! The rcl transport (cargo feature `rcl`) against a real ROS 2: rclpy nodes, the `ros2`
//! command line and `ros2 launch`, the agent as a process, and mosquitto. These tests
//! exist only in a build with the feature; run them with `scripts/test-rcl.sh` in a
//! sourced ROS 2 environment (README, "The rcl transport").
#![cfg(feature = "rcl")]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::agent::{agent, payloads, Agent, AgentDir};
use support::mosquitto::{publish, ready_sub, Mosquitto, Options};

const RULES: &str = r#"
[[ros_to_mqtt]]
name = "chatter"
ros_topic = "/chatter"
ros_type = "std_msgs/msg/String"
mqtt_topic = "/${productKey}/${deviceName}/user/chatter"

[[ros_to_mqtt]]
name = "status"
ros_topic = "/robot/status"
ros_type = "edge_agent_msgs/msg/RobotStatus"
mqtt_topic = "/${productKey}/${deviceName}/user/robot_status"

[[mqtt_to_ros]]
name = "say"
mqtt_topic = "/${productKey}/${deviceName}/user/cmd/say"
ros_topic = "/say"
ros_type = "std_msgs/msg/String"

[[mqtt_to_ros]]
name = "status-cmd"
mqtt_topic = "/${productKey}/${deviceName}/user/cmd/status"
ros_topic = "/robot/status_cmd"
ros_type = "edge_agent_msgs/msg/RobotStatus"
"#;

fn ros_sourced() {
    assert!(
        std::env::var_os("ROS_DISTRO").is_some() && std::env::var_os("AMENT_PREFIX_PATH").is_some(),
        "these tests need a sourced ROS 2 environment (source <ros2>/setup.bash and the \
         workspace with edge_agent_msgs); run scripts/test-rcl.sh"
    );
}

/// A state folder, rules and a configuration for the rcl transport on `domain`.
fn agent_dir(port: u16, domain: u16, rules: &str) -> AgentDir {
    AgentDir::with_ros(
        port,
        &format!("transport = \"rcl\"\ndomain_id = {domain}"),
        rules,
        "",
    )
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rclpy(domain: u16, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(support::repo().join("tests/py/rclpy_peer.py"))
        .args(args)
        .env("ROS_DOMAIN_ID", domain.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// The lines `child` prints, as they come.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// An rclpy subscriber, started: each line on the receiver is one message as JSON.
fn echo(domain: u16, topic: &str, type_name: &str) -> (Kill, mpsc::Receiver<String>) {
    let mut child = rclpy(domain, &["echo", topic, type_name, "--seconds", "60"])
        .spawn()
        .expect("python3 with rclpy (sourced ROS 2 environment)");
    let rx = stdout_lines(&mut child);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("ready"),
        "the rclpy subscriber started"
    );
    (Kill(child), rx)
}

fn spawn_agent(config: &Path, domain: u16, extra: &[&str]) -> Agent {
    let child = agent()
        .arg("run")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("ROS_DOMAIN_ID", domain.to_string())
        .env("RUST_LOG", "edge_agent=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge-agent");
    Agent::from_child(child)
}

/// Runs a `ros2` command (without the daemon) until its output satisfies `ok` or 20 s pass.
fn ros2_until(domain: u16, args: &[&str], ok: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("ros2")
            .args(args)
            // No ros2 daemon is left behind on the test's domain.
            .arg("--no-daemon")
            .env("ROS_DOMAIN_ID", domain.to_string())
            .output()
            .expect("the ros2 command (sourced ROS 2 environment)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if ok(&text) || Instant::now() > end {
            return text;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn standard_and_custom_types_cross_both_ways() {
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let sub = ready_sub(broker.port, "#", "probe/ready", &["-q", "1"]);
    let dir = agent_dir(broker.port, domain, RULES);
    let config = dir.config();
    let agent = spawn_agent(&config, domain, &[]);

    // ROS 2 -> MQTT: a standard and an edge_agent_msgs type from rclpy.
    let _chatter = Kill(
        rclpy(
            domain,
            &[
                "pub",
                "/chatter",
                "std_msgs/msg/String",
                r#"{"data": "hello from rclpy"}"#,
            ],
        )
        .spawn()
        .unwrap(),
    );
    let status = json!({"state": 2, "mode": "auto", "fruits_picked": 41, "working_time_s": 3600.5,
        "row_id": "R12", "active_faults": ["E7"], "emergency_stop": false});
    let _status = Kill(
        rclpy(
            domain,
            &[
                "pub",
                "/robot/status",
                "edge_agent_msgs/msg/RobotStatus",
                &status.to_string(),
            ],
        )
        .spawn()
        .unwrap(),
    );
    let lines = sub.wait_for("chatter and status on MQTT", Duration::from_secs(30), |l| {
        !payloads(l, "/pk1/robot-7/user/chatter").is_empty()
            && !payloads(l, "/pk1/robot-7/user/robot_status").is_empty()
    });
    assert_eq!(
        payloads(&lines, "/pk1/robot-7/user/chatter")[0],
        json!({"data": "hello from rclpy"})
    );
    let s = &payloads(&lines, "/pk1/robot-7/user/robot_status")[0];
    for key in [
        "state",
        "mode",
        "fruits_picked",
        "working_time_s",
        "row_id",
        "active_faults",
    ] {
        assert_eq!(s[key], status[key], "{key} in {s}");
    }

    // MQTT -> ROS 2: both types reach rclpy subscribers.
    let (_say, say_rx) = echo(domain, "/say", "std_msgs/msg/String");
    let (_st, st_rx) = echo(
        domain,
        "/robot/status_cmd",
        "edge_agent_msgs/msg/RobotStatus",
    );
    let cmd = json!({"state": 4, "mode": "remote", "fruits_picked": 7, "active_faults": ["E1", "E2"],
        "emergency_stop": true});
    let recv = |rx: &mpsc::Receiver<String>, topic: &str, payload: &str| -> Value {
        // Repeat until discovery has matched the agent's publisher and the subscriber.
        for _ in 0..40 {
            publish(broker.port, topic, payload, &["-q", "1"]);
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                return serde_json::from_str(&line).expect("the rclpy subscriber prints JSON");
            }
        }
        panic!("nothing arrived from {topic}");
    };
    let said = recv(
        &say_rx,
        "/pk1/robot-7/user/cmd/say",
        r#"{"data": "stop at row 12"}"#,
    );
    assert_eq!(said, json!({"data": "stop at row 12"}));
    let got = recv(&st_rx, "/pk1/robot-7/user/cmd/status", &cmd.to_string());
    for key in [
        "state",
        "mode",
        "fruits_picked",
        "active_faults",
        "emergency_stop",
    ] {
        assert_eq!(got[key], cmd[key], "{key} in {got}");
    }
    assert_eq!(
        got["working_time_s"],
        json!(0.0),
        "defaults for fields left out"
    );

    let log = agent.stop();
    assert!(log.contains("through rcl"), "{log}");
}

#[test]
fn node_name_namespace_and_config_file_parameter() {
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let dir = agent_dir(broker.port, domain, RULES);
    let config = dir.config();
    let agent = spawn_agent(
        &config,
        domain,
        &[
            "--ros-args",
            "-r",
            "__node:=cloud_link",
            "-r",
            "__ns:=/picker07",
            "--log-level",
            "warn",
        ],
    );
    let nodes = ros2_until(domain, &["node", "list"], |t| {
        t.contains("/picker07/cloud_link")
    });
    assert!(nodes.contains("/picker07/cloud_link"), "{nodes}");
    let value = ros2_until(
        domain,
        &["param", "get", "/picker07/cloud_link", "config_file"],
        |t| t.contains("agent.toml"),
    );
    assert!(
        value.contains(&config.display().to_string()),
        "ros2 param get: {value}"
    );
    let list = ros2_until(domain, &["param", "list", "/picker07/cloud_link"], |t| {
        t.contains("config_file")
    });
    assert!(list.contains("config_file"), "ros2 param list: {list}");
    agent.stop();
}

#[test]
fn ros2_launch_starts_the_agent() {
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let dir = agent_dir(broker.port, domain, RULES);
    let config = dir.config();
    let launch = Command::new("ros2")
        .arg("launch")
        .arg(support::repo().join("launch/edge_agent.launch.py"))
        .arg(format!("config_file:={}", config.display()))
        .arg("node_name:=launched_agent")
        .arg(format!("executable:={}", env!("CARGO_BIN_EXE_edge-agent")))
        .env("ROS_DOMAIN_ID", domain.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ros2 launch (sourced ROS 2 environment)");
    let launch = Kill(launch);
    let nodes = ros2_until(domain, &["node", "list"], |t| t.contains("/launched_agent"));
    assert!(nodes.contains("/launched_agent"), "{nodes}");
    let value = ros2_until(
        domain,
        &["param", "get", "/launched_agent", "config_file"],
        |t| t.contains("agent.toml"),
    );
    assert!(value.contains(&config.display().to_string()), "{value}");
    // SIGINT, as a Ctrl-C in the launch terminal: launch stops the agent, and both exit.
    let mut launch = launch;
    support::agent::signal(&launch.0, "-INT");
    let end = Instant::now() + Duration::from_secs(20);
    while launch.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < end,
            "ros2 launch did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = Command::new("pgrep")
        .args(["-f", &format!("config_file:={}", config.display())])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "the agent outlived ros2 launch: pid {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn check_config_names_a_type_the_binary_was_not_built_with() {
    ros_sourced();
    let rules = r#"
[[ros_to_mqtt]]
name = "odom"
ros_topic = "/odom"
ros_type = "nav_msgs/msg/Odometry"
mqtt_topic = "/${productKey}/${deviceName}/user/odom"
"#;
    let bad = agent_dir(1883, 0, rules);
    let config = bad.config();
    let out = agent().arg("check-config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted it: {err}");
    assert!(
        err.contains("rule 'odom'")
            && err.contains("nav_msgs/msg/Odometry")
            && err.contains("IDL_PACKAGE_FILTER"),
        "{err}"
    );

    let good = agent_dir(1883, 0, RULES);
    let ok = good.config();
    let out = agent().arg("check-config").arg(&ok).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("rcl transport"), "{text}");
}

#[test]
fn camera_switch_calls_an_rclpy_setbool_service() {
    use edge_agent::ros::transport::rcl::{RclOptions, RclTransport};
    use edge_agent::ros::transport::{ServiceRmw, Transport};
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    // rcl takes the domain from the environment; this test process is its only user.
    std::env::set_var("ROS_DOMAIN_ID", domain.to_string());
    let mut server = rclpy(
        domain,
        &[
            "setbool",
            "/camera/enable",
            "std_srvs/srv/SetBool",
            "--seconds",
            "60",
        ],
    )
    .spawn()
    .expect("python3 with rclpy (sourced ROS 2 environment)");
    let rx = stdout_lines(&mut server);
    let _server = Kill(server);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("ready")
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = RclTransport::start(&RclOptions {
            node_name: "switch_test".into(),
            namespace: "/".into(),
            domain_id: domain,
            config_file: None,
        })
        .expect("rcl node");
        assert_eq!(t.node_name(), "/switch_test");
        for (data, message) in [(true, "on"), (false, "off")] {
            let reply = t
                .set_bool(
                    "/camera/enable",
                    ServiceRmw::default(),
                    data,
                    Duration::from_secs(10),
                )
                .await
                .expect("SetBool reply");
            assert!(reply.success);
            assert_eq!(reply.message, message);
        }
        // Nobody serves this one: a clear error after the timeout.
        let err = t
            .set_bool(
                "/no/such/switch",
                ServiceRmw::default(),
                true,
                Duration::from_millis(1200),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/switch"), "{err}");

        // A switch whose node comes up after the call started: answered once it is there.
        let script = support::repo().join("tests/py/rclpy_peer.py");
        let _late = Kill(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "sleep 1.5; exec python3 {} setbool /camera/late std_srvs/srv/SetBool --seconds 30",
                    script.display()
                ))
                .env("ROS_DOMAIN_ID", domain.to_string())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let reply = t
            .set_bool(
                "/camera/late",
                ServiceRmw::default(),
                true,
                Duration::from_secs(15),
            )
            .await
            .expect("SetBool reply from the late server");
        assert!(reply.success && reply.message == "on", "{reply:?}");
    });
    let calls: Vec<String> = rx.try_iter().collect();
    assert!(calls.contains(&"called True".to_owned()), "{calls:?}");
    assert!(calls.contains(&"called False".to_owned()), "{calls:?}");
}

#[test]
fn auto_qos_takes_a_latched_publishers_durability() {
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    let rules = r#"
[[ros_to_mqtt]]
name = "map-info"
ros_topic = "/map_info"
ros_type = "std_msgs/msg/String"
qos = "auto"
mqtt_topic = "/${productKey}/${deviceName}/user/map_info"
"#;
    let broker = Mosquitto::start(Options::default());
    let sub = ready_sub(broker.port, "#", "probe/ready", &["-q", "1"]);
    // Published once, transient-local, before the agent starts: only a subscription that
    // copied that durability gets it.
    let _publisher = Kill(
        rclpy(
            domain,
            &[
                "pub",
                "/map_info",
                "std_msgs/msg/String",
                r#"{"data": "orchard block 7"}"#,
                "--latched",
                "--seconds",
                "60",
            ],
        )
        .spawn()
        .unwrap(),
    );
    let info = ros2_until(domain, &["topic", "info", "/map_info"], |t| {
        t.contains("Publisher count: 1")
    });
    assert!(info.contains("Publisher count: 1"), "{info}");
    let dir = agent_dir(broker.port, domain, rules);
    let agent = spawn_agent(&dir.config(), domain, &[]);
    let lines = sub.wait_for(
        "the latched message on MQTT",
        Duration::from_secs(30),
        |l| !payloads(l, "/pk1/robot-7/user/map_info").is_empty(),
    );
    assert_eq!(
        payloads(&lines, "/pk1/robot-7/user/map_info")[0],
        json!({"data": "orchard block 7"})
    );
    agent.stop();
}
