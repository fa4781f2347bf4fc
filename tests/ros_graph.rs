//! The agent in the ROS 2 graph, with one binary for every distribution: against the
//! Cyclone DDS 0.10 peer acting as a Humble-style participant (24-byte ids in
//! ros_discovery_info) and as a Jazzy-style one (16-byte ids), the agent shows in the
//! peer's node list, and the peer never reads an announcement it cannot parse (what
//! makes `ros2 node list` fail for every node on a real robot). A wrong `ROS_DISTRO`
//! leaves the graph alone with one ERROR that says what to change. The parameter
//! services answer a Cyclone client (`ros2 param` under rmw_cyclonedds) and a client
//! with rmw_fastrtps's request ids.

mod support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_agent::ros::codec::{self, DecodeOptions, EncodeOptions};
use edge_agent::ros::transport::dds::{DdsOptions, DdsTransport};
use edge_agent::ros::transport::{ServiceRmw, Transport};
use edge_agent::ros::TypeName;
use serde_json::json;
use support::agent::AgentDir;
use support::mosquitto::{Mosquitto, Options};
use support::ros_peer::{RosPeer, CYCLONE_LOOPBACK};

const T: Duration = Duration::from_secs(30);

/// One rule, so the agent joins ROS 2.
const RULES: &str = r#"
[[ros_to_mqtt]]
name = "chatter"
ros_topic = "/chatter"
ros_type = "std_msgs/msg/String"
mqtt_topic = "/${productKey}/${deviceName}/user/chatter"
"#;

/// The agent as a child process with `ROS_DISTRO` set to `distro` (or unset); its log
/// goes to `log`.
fn agent(config: &Path, distro: Option<&str>, log: &Path) -> Child {
    let mut cmd = support::agent::agent();
    cmd.args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,rustdds=error")
        .env("CYCLONEDDS_URI", CYCLONE_LOOPBACK)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    match distro {
        Some(d) => cmd.env("ROS_DISTRO", d),
        None => cmd.env_remove("ROS_DISTRO"),
    };
    cmd.spawn().expect("start edge-agent run")
}

fn stop(mut child: Child) {
    support::agent::signal(&child, "-TERM");
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0));
}

fn wait_log(log: &Path, what: &str) -> String {
    let deadline = Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(Instant::now() < deadline, "no '{what}' in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the peer lists the agent; fails on any announcement it could not read.
fn wait_listed(peer: &mut RosPeer) {
    let deadline = Instant::now() + T;
    loop {
        let (nodes, errors) = peer.graph();
        assert!(errors.is_empty(), "the peer misread the graph: {errors:?}");
        if nodes.contains(&("/".to_owned(), "edge_agent".to_owned())) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent is not listed: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_binary_joins_a_humble_and_a_jazzy_graph_in_each_ones_layout() {
    let mq = Mosquitto::start(Options::default());
    for distro in ["humble", "jazzy"] {
        // Told by ROS_DISTRO (a sourced environment, ros2 launch), or learnt from the
        // other participants when nothing says.
        for told in [Some(distro), None] {
            let dom = support::domain();
            let mut peer = RosPeer::start_as(dom.id, distro, "arm_controller");
            let a = AgentDir::new(mq.port, dom.id, RULES, "");
            let log = a.path().join("agent.log");
            let child = agent(&a.config(), told, &log);
            wait_listed(&mut peer);
            let text = wait_log(&log, "Publishing the node's graph information");
            let why = if told.is_some() {
                format!("from ROS_DISTRO={distro}")
            } else {
                "as the other participants publish it".into()
            };
            assert!(text.contains(&why), "{distro} {told:?}:\n{text}");
            // Still nothing misread once the agent has been up a while.
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(peer.graph().1, Vec::<String>::new());
            stop(child);
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(!text.contains("ERROR"), "{text}");
        }
    }
}

#[test]
fn a_wrong_ros_distro_leaves_the_graph_alone_and_says_what_to_change() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let mut peer = RosPeer::start_as(dom.id, "humble", "arm_controller");
    let a = AgentDir::new(mq.port, dom.id, RULES, "");
    let log = a.path().join("agent.log");
    let child = agent(&a.config(), Some("jazzy"), &log);
    let text = wait_log(&log, "leaves the ROS 2 graph alone");
    let line = text
        .lines()
        .find(|l| l.contains("leaves the ROS 2 graph alone"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("ROS_DISTRO=jazzy"), "{line}");
    assert!(line.contains("Humble"), "{line}");
    assert!(line.contains(&format!("domain {}", dom.id)), "{line}");
    // The peer's graph stays whole, without the agent.
    let (nodes, errors) = peer.graph();
    assert!(errors.is_empty(), "the peer misread the graph: {errors:?}");
    assert!(!nodes.iter().any(|(_, n)| n == "edge_agent"), "{nodes:?}");
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("leaves the ROS 2 graph alone").count(),
        1,
        "said once:\n{text}"
    );
    assert!(
        !text.contains("Publishing the node's graph information"),
        "{text}"
    );
}

#[test]
fn parameters_answer_a_cyclone_client_and_refuse_to_be_set() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let mut peer = RosPeer::start_as(dom.id, "jazzy", "cli");
    let a = AgentDir::new(mq.port, dom.id, RULES, "");
    let log = a.path().join("agent.log");
    let child = agent(&a.config(), Some("jazzy"), &log);
    let l = peer.param("/edge_agent", "list", json!({}));
    assert_eq!(l["names"], json!(["config_file", "use_sim_time"]));
    let g = peer.param(
        "/edge_agent",
        "get",
        json!({"names": ["config_file", "use_sim_time"]}),
    );
    assert_eq!(g["values"][0]["type"], 4);
    assert_eq!(
        g["values"][0]["string_value"],
        a.config().display().to_string()
    );
    assert_eq!(g["values"][1]["type"], 1);
    assert_eq!(g["values"][1]["bool_value"], false);
    let s = peer.param(
        "/edge_agent",
        "set",
        json!({"params": [{"name": "use_sim_time", "value": {"type": 1, "bool_value": true}}]}),
    );
    assert_eq!(s["results"][0]["successful"], false, "{s}");
    assert!(
        s["results"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("system clock"),
        "{s}"
    );
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("parameters are read-only"), "{text}");
}

/// Both request-id conventions against the agent's parameter services, from a second
/// node in this process: rmw_fastrtps's (the id in the sample's metadata) and
/// rmw_cyclonedds's (16 bytes before the request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_answer_both_request_id_conventions() {
    let dom = support::domain();
    let start = |name: &str| {
        DdsTransport::start(&DdsOptions {
            domain_id: dom.id,
            node_name: name.into(),
            namespace: "/robot".into(),
            only_networks: vec!["127.0.0.1".parse().unwrap()],
            distro: Some("jazzy".into()),
            config_file: Some("/etc/edge-agent/agent.toml".into()),
        })
        .unwrap()
    };
    let _agent = start("edge_agent");
    let caller = start("caller");
    let reg = support::test_registry();
    let rq = reg
        .schema("rcl_interfaces/srv/GetParameters_Request")
        .unwrap();
    let rs = reg
        .schema("rcl_interfaces/srv/GetParameters_Response")
        .unwrap();
    let srv = TypeName::parse("rcl_interfaces/srv/GetParameters").unwrap();
    let req = Bytes::from(
        codec::encode_value(
            &rq,
            &json!({"names": ["config_file"]}),
            &EncodeOptions::default(),
        )
        .unwrap(),
    );
    for rmw in [ServiceRmw::Fastrtps, ServiceRmw::Cyclonedds] {
        let reply = caller
            .call(
                "/robot/edge_agent/get_parameters",
                &srv,
                req.clone(),
                rmw,
                T,
                true,
            )
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{rmw:?}: no reply"));
        let v = codec::decode_to_value(&rs, &reply, &DecodeOptions::default()).unwrap();
        assert_eq!(
            v["values"][0]["string_value"], "/etc/edge-agent/agent.toml",
            "{rmw:?}: {v}"
        );
    }
}
