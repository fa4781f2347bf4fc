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
use support::agent::{agent, assert_goal_feedback, payloads, wait_subscribed, Agent, AgentDir};
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

/// `edge-agent run` on `config` with `extra` arguments, in `domain`, logging at debug,
/// with `env` on top of this process's environment.
fn spawn_agent(config: &Path, domain: u16, extra: &[&str], env: &[(String, String)]) -> Agent {
    let child = agent()
        .arg("run")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("ROS_DOMAIN_ID", domain.to_string())
        .env("RUST_LOG", "edge_agent=debug")
        .envs(env.iter().cloned())
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
    let agent = spawn_agent(&config, domain, &[], &[]);

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
        &[],
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

/// A message package built with colcon into `ws` (merged install): its prefix.
/// Builds a ROS 2 interface package from `files` (`msg/Tree.msg`, `action/Pick.action`:
/// path and text) with colcon into `ws`; `depends`: the interface packages it uses.
fn build_package(
    ws: &Path,
    package: &str,
    files: &[(&str, &str)],
    depends: &[&str],
) -> std::path::PathBuf {
    let src = ws.join("src").join(package);
    for (path, text) in files {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    let listed: Vec<String> = files.iter().map(|(p, _)| format!("\"{p}\"")).collect();
    let finds: String = depends
        .iter()
        .map(|d| format!("find_package({d} REQUIRED)\n"))
        .collect();
    let deps = if depends.is_empty() {
        String::new()
    } else {
        format!(" DEPENDENCIES {}", depends.join(" "))
    };
    let xml_deps: String = depends
        .iter()
        .map(|d| format!("<depend>{d}</depend>"))
        .collect();
    std::fs::write(
        src.join("CMakeLists.txt"),
        format!(
            "cmake_minimum_required(VERSION 3.8)\nproject({package})\n\
             find_package(ament_cmake REQUIRED)\nfind_package(rosidl_default_generators REQUIRED)\n\
             {finds}rosidl_generate_interfaces(${{PROJECT_NAME}} {}{deps})\n\
             ament_export_dependencies(rosidl_default_runtime)\nament_package()\n",
            listed.join(" ")
        ),
    )
    .unwrap();
    std::fs::write(
        src.join("package.xml"),
        format!(
            "<?xml version=\"1.0\"?>\n<package format=\"3\">\n<name>{package}</name>\
             <version>0.0.1</version><description>test messages</description>\
             <maintainer email=\"t@example.com\">t</maintainer><license>Apache-2.0</license>\
             <buildtool_depend>ament_cmake</buildtool_depend>\
             <buildtool_depend>rosidl_default_generators</buildtool_depend>{xml_deps}\
             <exec_depend>rosidl_default_runtime</exec_depend>\
             <member_of_group>rosidl_interface_packages</member_of_group>\
             <export><build_type>ament_cmake</build_type></export>\n</package>\n"
        ),
    )
    .unwrap();
    let python = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v python3"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let out = Command::new("colcon")
        .arg("--log-base")
        .arg(ws.join("log"))
        .arg("build")
        .arg("--merge-install")
        .arg("--base-paths")
        .arg(ws.join("src"))
        .arg("--build-base")
        .arg(ws.join("build"))
        .arg("--install-base")
        .arg(ws.join("install"))
        .arg("--cmake-args")
        .arg("-DBUILD_TESTING=OFF")
        .arg(format!("-DPython3_EXECUTABLE={}", python.trim()))
        .output()
        .expect("colcon (sourced ROS 2 environment)");
    assert!(
        out.status.success(),
        "colcon build of {package}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ws.join("install")
}

/// The environment with `prefix` sourced in front of the current one (what its
/// setup.bash adds for a message package).
fn with_prefix(prefix: &Path) -> Vec<(String, String)> {
    let front = |var: &str, dir: std::path::PathBuf| {
        let old = std::env::var(var).unwrap_or_default();
        let new = if old.is_empty() {
            dir.display().to_string()
        } else {
            format!("{}:{old}", dir.display())
        };
        (var.to_owned(), new)
    };
    let mut env = vec![
        front("AMENT_PREFIX_PATH", prefix.to_owned()),
        front("LD_LIBRARY_PATH", prefix.join("lib")),
    ];
    let python: Vec<std::path::PathBuf> = ["lib", "local/lib"]
        .iter()
        .filter_map(|l| std::fs::read_dir(prefix.join(l)).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .flat_map(|e| ["site-packages", "dist-packages"].map(|d| e.path().join(d)))
        .filter(|p| p.is_dir())
        .collect();
    for p in python {
        env.push(front("PYTHONPATH", p));
    }
    env
}

#[test]
fn a_message_package_built_after_the_agent_is_bridged_without_rebuilding_it() {
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    let ws = tempfile::tempdir().unwrap();

    // Rules on types whose definitions the agent has (an interfaces folder) but whose
    // packages are not installed: check-config names each of them.
    let defs = ws.path().join("defs");
    for (pkg, msg) in [
        ("orchard_field", "Row"),
        ("orchard_field", "Tree"),
        ("pick_msgs", "Grip"),
    ] {
        std::fs::create_dir_all(defs.join(pkg).join("msg")).unwrap();
        std::fs::write(
            defs.join(pkg).join("msg").join(format!("{msg}.msg")),
            "string id\n",
        )
        .unwrap();
    }
    let missing = r#"
[[ros_to_mqtt]]
name = "rows"
ros_topic = "/rows"
ros_type = "orchard_field/msg/Row"
mqtt_topic = "/${productKey}/${deviceName}/user/rows"

[[mqtt_to_ros]]
name = "grip"
mqtt_topic = "/${productKey}/${deviceName}/user/cmd/grip"
ros_topic = "/grip"
ros_type = "pick_msgs/msg/Grip"
"#;
    let bad = AgentDir::with_ros(
        1883,
        &format!("transport = \"rcl\"\ninterfaces = [\"{}\"]", defs.display()),
        missing,
        "",
    );
    let out = agent()
        .arg("check-config")
        .arg(bad.config())
        .env("ROS_DOMAIN_ID", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted it: {err}");
    for needle in [
        "rule 'rows'",
        "orchard_field/msg/Row",
        "package orchard_field is not installed",
        "rule 'grip'",
        "pick_msgs/msg/Grip",
    ] {
        assert!(err.contains(needle), "{needle} in: {err}");
    }

    // A disagreeing ros.domain_id is caught by check-config, not only by `run`.
    let other = AgentDir::with_ros(1883, "transport = \"rcl\"\ndomain_id = 7", RULES, "");
    let out = agent()
        .arg("check-config")
        .arg(other.config())
        .env("ROS_DOMAIN_ID", "8")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ROS_DOMAIN_ID is 8"),
        "{err}"
    );

    // A new package, built now, long after the agent: bridged both ways.
    let tree = "string variety\nfloat32 height_m\nuint32 fruits\nstring[] tags\n";
    let prefix = build_package(
        ws.path(),
        "orchard_test_msgs",
        &[("msg/Tree.msg", tree)],
        &[],
    );
    let env = with_prefix(&prefix);
    let rules = r#"
[[ros_to_mqtt]]
name = "trees"
ros_topic = "/trees"
ros_type = "orchard_test_msgs/msg/Tree"
mqtt_topic = "/${productKey}/${deviceName}/user/trees"

[[mqtt_to_ros]]
name = "tree-cmd"
mqtt_topic = "/${productKey}/${deviceName}/user/cmd/tree"
ros_topic = "/tree_cmd"
ros_type = "orchard_test_msgs/msg/Tree"
"#;
    let broker = Mosquitto::start(Options::default());
    let sub = ready_sub(broker.port, "#", "probe/ready", &["-q", "1"]);
    let dir = agent_dir(broker.port, domain, rules);
    let out = agent()
        .arg("check-config")
        .arg(dir.config())
        .env("ROS_DOMAIN_ID", domain.to_string())
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = spawn_agent(&dir.config(), domain, &[], &env);
    let sent =
        json!({"variety": "Gala", "height_m": 2.5, "fruits": 140, "tags": ["row-3", "north"]});
    let _pub = Kill(
        rclpy(
            domain,
            &[
                "pub",
                "/trees",
                "orchard_test_msgs/msg/Tree",
                &sent.to_string(),
            ],
        )
        .envs(env.iter().cloned())
        .spawn()
        .unwrap(),
    );
    let lines = sub.wait_for("a tree on MQTT", Duration::from_secs(30), |l| {
        !payloads(l, "/pk1/robot-7/user/trees").is_empty()
    });
    assert_eq!(payloads(&lines, "/pk1/robot-7/user/trees")[0], sent);

    let mut echo = rclpy(
        domain,
        &[
            "echo",
            "/tree_cmd",
            "orchard_test_msgs/msg/Tree",
            "--seconds",
            "60",
        ],
    );
    let mut child = echo.envs(env.iter().cloned()).spawn().unwrap();
    let rx = stdout_lines(&mut child);
    let _echo = Kill(child);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("ready")
    );
    let cmd = json!({"variety": "Fuji", "height_m": 3.0, "fruits": 12, "tags": ["east"]});
    let mut got = None;
    for _ in 0..40 {
        publish(
            broker.port,
            "/pk1/robot-7/user/cmd/tree",
            &cmd.to_string(),
            &["-q", "1"],
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            got = Some(serde_json::from_str::<Value>(&line).unwrap());
            break;
        }
    }
    assert_eq!(got, Some(cmd));
    let log = agent.stop();
    assert!(!log.contains("ERROR"), "{log}");
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
    let agent = spawn_agent(&dir.config(), domain, &[], &[]);
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

#[test]
fn a_cloud_request_calls_an_rclpy_service_through_rcl() {
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let sub = ready_sub(broker.port, "#", "probe/ready", &["-q", "1"]);
    let rules = r#"
[[mqtt_to_service]]
name = "light"
mqtt_topic = "/${productKey}/${deviceName}/user/service/light"
ros_service = "/arm/light"
ros_type = "std_srvs/srv/SetBool"
"#;
    let mut server = rclpy(
        domain,
        &[
            "setbool",
            "/arm/light",
            "std_srvs/srv/SetBool",
            "--seconds",
            "90",
        ],
    )
    .spawn()
    .unwrap();
    let calls = stdout_lines(&mut server);
    let _server = Kill(server);
    assert_eq!(
        calls.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("ready")
    );
    let dir = agent_dir(broker.port, domain, rules);
    let agent = spawn_agent(&dir.config(), domain, &[], &[]);
    let reply_topic = "/pk1/robot-7/user/service/light_reply";
    // The agent subscribes to the request topic once it has started: ask until answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let reply = loop {
        n += 1;
        let id = format!("l-{n}");
        publish(
            broker.port,
            "/pk1/robot-7/user/service/light",
            &json!({"id": id, "data": true}).to_string(),
            &["-q", "1"],
        );
        let t = Instant::now() + Duration::from_secs(2);
        let mut found = None;
        while Instant::now() < t && found.is_none() {
            found = payloads(&sub.snapshot(), reply_topic)
                .into_iter()
                .find(|r| r["id"] == json!(id));
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no reply on {reply_topic}");
    };
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(
        reply["data"],
        json!({"success": true, "message": "on"}),
        "{reply}"
    );
    assert_eq!(
        calls.recv_timeout(Duration::from_secs(5)).as_deref(),
        Ok("called True")
    );
    let log = agent.stop();
    assert!(!log.contains("ERROR"), "{log}");
}

/// A cloud goal runs an rclpy action server's action through rcl (a package of
/// actions built now): accepted, its feedback forwarded, its result the reply, the
/// cloud's retry answered from the stored reply; a second goal is cancelled from the
/// cloud and ends canceled.
#[test]
fn a_cloud_goal_runs_an_rclpy_action_through_rcl() {
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    let ws = tempfile::tempdir().unwrap();
    let pick = std::fs::read_to_string(
        support::repo().join("tests/fixtures/interfaces/orchard_test_srvs/action/PickApple.action"),
    )
    .unwrap();
    let prefix = build_package(
        ws.path(),
        "orchard_test_srvs",
        &[("action/PickApple.action", &pick)],
        &["geometry_msgs", "action_msgs"],
    );
    let env = with_prefix(&prefix);
    let mut server = rclpy(
        domain,
        &[
            "action",
            "/arm/pick_apple",
            "orchard_test_srvs/action/PickApple",
            r#"{"picked": true, "log": ["reached", "gripped"]}"#,
            // 20 feedback messages, 4 s: time for the cancel below.
            "--count",
            "20",
            "--seconds",
            "120",
        ],
    )
    .envs(env.iter().cloned())
    .spawn()
    .unwrap();
    let goals = stdout_lines(&mut server);
    let _server = Kill(server);
    assert_eq!(
        goals.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("ready")
    );

    let broker = Mosquitto::start(Options::default());
    let sub = ready_sub(broker.port, "#", "probe/ready", &["-q", "1"]);
    let rules = r#"
[[mqtt_to_action]]
name = "pick"
mqtt_topic = "/${productKey}/${deviceName}/user/action/pick"
ros_action = "/arm/pick_apple"
ros_type = "orchard_test_srvs/action/PickApple"
feedback_max_rate_hz = 100
"#;
    let dir = agent_dir(broker.port, domain, rules);
    let agent = spawn_agent(&dir.config(), domain, &[], &env);
    let topic = "/pk1/robot-7/user/action/pick";
    wait_subscribed(
        broker.port,
        &sub,
        topic,
        r#"{"probe": true}"#,
        "/pk1/robot-7/user/cmd/error",
        Duration::from_secs(30),
    );

    let goal = json!({"id": "g-1", "target": {"x": 1.0, "y": 2.0, "z": 3.0}, "grip_force": 0.5});
    publish(broker.port, topic, &goal.to_string(), &["-q", "1"]);
    let reply_topic = format!("{topic}_reply");
    let lines = sub.wait_for("the goal's result", Duration::from_secs(60), |l| {
        !payloads(l, &reply_topic).is_empty()
    });
    assert_eq!(
        payloads(&lines, &reply_topic)[0],
        json!({"id": "g-1", "code": 200, "message": "succeeded",
               "data": {"status": "succeeded", "result": {"picked": true, "log": ["reached", "gripped"]}}}),
    );
    let first = goals.recv_timeout(Duration::from_secs(5)).unwrap();
    let sent: Value = serde_json::from_str(first.strip_prefix("goal ").unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"target": {"x": 1.0, "y": 2.0, "z": 3.0}, "grip_force": 0.5})
    );
    assert_goal_feedback(&payloads(&lines, &format!("{topic}_feedback")), "g-1");

    // The cloud's retry: the stored result, no second goal.
    publish(broker.port, topic, &goal.to_string(), &["-q", "1"]);
    let lines = sub.wait_for("the stored reply", Duration::from_secs(30), |l| {
        payloads(l, &reply_topic).len() >= 2
    });
    let replies = payloads(&lines, &reply_topic);
    assert_eq!(replies[1], replies[0]);

    // A long goal, cancelled from the cloud.
    let slow = json!({"id": "g-2", "grip_force": 0.2});
    publish(broker.port, topic, &slow.to_string(), &["-q", "1"]);
    let second = goals.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(second.starts_with("goal "), "{second}");
    let cancel = format!("{topic}/cancel");
    publish(broker.port, &cancel, r#"{"id": "g-2"}"#, &["-q", "1"]);
    let lines = sub.wait_for(
        "the cancelled goal's result",
        Duration::from_secs(30),
        |l| payloads(l, &reply_topic).iter().any(|r| r["id"] == "g-2"),
    );
    let answer = payloads(&lines, &format!("{cancel}_reply"));
    assert_eq!(answer[0]["message"], "canceling", "{answer:?}");
    let done = payloads(&lines, &reply_topic)
        .into_iter()
        .find(|r| r["id"] == "g-2")
        .unwrap();
    assert_eq!(done["data"]["status"], "canceled", "{done}");
    assert_eq!(
        goals.recv_timeout(Duration::from_secs(5)).as_deref(),
        Ok("canceled")
    );
    assert!(goals.try_recv().is_err(), "a goal was sent twice");
    let log = agent.stop();
    assert!(!log.contains("ERROR"), "{log}");
}

/// An rclpy `burst` publisher (tests/py/rclpy_peer.py) of `n` more messages on
/// `/burst`: once started, a subscriber is matched and its first message is out.
struct Burst {
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
    _child: Kill,
}

impl Burst {
    fn start(domain: u16, n: usize, env: &[(String, String)]) -> Self {
        let mut child = rclpy(
            domain,
            &[
                "burst",
                "/burst",
                "std_msgs/msg/String",
                "--count",
                &n.to_string(),
            ],
        )
        .envs(env.iter().cloned())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = stdout_lines(&mut child);
        let burst = Self {
            stdin,
            lines,
            _child: Kill(child),
        };
        burst.next("matched");
        burst.next("one");
        burst
    }

    /// Asserts the publisher's next line.
    fn next(&self, what: &str) {
        assert_eq!(
            self.lines.recv_timeout(Duration::from_secs(30)).as_deref(),
            Ok(what)
        );
    }

    /// Writes the other messages, as fast as it can.
    fn go(&mut self) {
        use std::io::Write as _;
        writeln!(self.stdin, "go").unwrap();
    }
}

/// The rule's counters in the agent's status file.
fn rule_counters(dir: &AgentDir, name: &str) -> Value {
    let text = std::fs::read_to_string(dir.path().join("state/status.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// On rmw_fastrtps (whatever RMW the shell names: Fast DDS hands out the publisher's
/// sequence numbers, which this is about), a burst the agent cannot take in time
/// overflows the rule's depth of 1 in the middleware: every message is either taken or
/// counted as lost, and the loss is logged.
#[test]
fn messages_the_middleware_drops_are_counted_and_logged() {
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let rules = r#"
[[ros_to_mqtt]]
name = "burst"
ros_topic = "/burst"
ros_type = "std_msgs/msg/String"
qos = { reliability = "reliable", depth = 1 }
mqtt_topic = "/${productKey}/${deviceName}/user/burst"
"#;
    let dir = agent_dir(broker.port, domain, rules);
    let fastrtps = [(
        "RMW_IMPLEMENTATION".to_owned(),
        "rmw_fastrtps_cpp".to_owned(),
    )];
    let agent = spawn_agent(&dir.config(), domain, &[], &fastrtps);
    let pid = agent.pid().to_string();
    const N: u64 = 500;
    let mut burst = Burst::start(domain, N as usize, &fastrtps);
    // The agent has taken the first message: from here on its publisher is known.
    let wait = |ok: &dyn Fn(&Value) -> bool| {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let c = rule_counters(&dir, "burst");
            if ok(&c) {
                return c;
            }
            assert!(Instant::now() < end, "rule counters: {c}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait(&|c| c["received"] == json!(1));
    // The agent is stopped while the burst is written, so that it lands in the
    // middleware's history of one all at once.
    let signal = |s: &str| {
        assert!(Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    burst.go();
    burst.next("done");
    signal("-CONT");
    let c =
        wait(&|c| c["received"].as_u64().unwrap_or(0) + c["lost"].as_u64().unwrap_or(0) == N + 1);
    assert!(c["lost"].as_u64().unwrap_or(0) > 0, "{c}");
    let log = agent.stop();
    assert!(log.contains("lost before the agent took them"), "{log}");
}

/// A burst on a deep rule (taken in batches while it lasts) reaches MQTT whole and in
/// order.
#[test]
fn a_burst_on_a_deep_rule_arrives_whole_and_in_order() {
    ros_sourced();
    let dom = support::domain();
    let domain = dom.id;
    let broker = Mosquitto::start(Options::default());
    let sub = ready_sub(broker.port, "#", "probe/ready", &["-q", "1"]);
    let rules = r#"
[[ros_to_mqtt]]
name = "burst"
ros_topic = "/burst"
ros_type = "std_msgs/msg/String"
qos = { reliability = "reliable", depth = 1000 }
mqtt_topic = "/${productKey}/${deviceName}/user/burst"
mqtt_qos = 1
"#;
    let dir = agent_dir(broker.port, domain, rules);
    let agent = spawn_agent(&dir.config(), domain, &[], &[]);
    const N: usize = 3000;
    let mut burst = Burst::start(domain, N, &[]);
    let topic = "/pk1/robot-7/user/burst";
    sub.wait_for("the first message", Duration::from_secs(30), |l| {
        !payloads(l, topic).is_empty()
    });
    burst.go();
    let got = sub.wait_for("the whole burst", Duration::from_secs(60), |l| {
        payloads(l, topic).len() > N
    });
    let data: Vec<String> = payloads(&got, topic)
        .iter()
        .map(|v| v["data"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<String> = (0..=N).map(|i| i.to_string()).collect();
    assert_eq!(data, expected);
    let log = agent.stop();
    assert!(!log.contains("ERROR"), "{log}");
}
