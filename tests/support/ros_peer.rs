//! The Cyclone DDS 0.10 ROS 2 peer (tests/py/ros_peer.py) as a child process, restricted
//! to the loopback interface, on a ROS domain of the test's own.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Cyclone on loopback only: nothing leaves the machine, and tests on other domains
/// never see each other.
pub const CYCLONE_LOOPBACK: &str = r#"<CycloneDDS><Domain><General><Interfaces><NetworkInterface name="lo" multicast="true"/></Interfaces><AllowMulticast>true</AllowMulticast></General></Domain></CycloneDDS>"#;

pub struct RosPeer {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Value>,
    msgs: Arc<Mutex<Vec<Value>>>,
}

impl RosPeer {
    /// A Jazzy-style peer (16-byte ids in ros_discovery_info).
    pub fn start(domain: u16) -> Self {
        Self::start_as(domain, "jazzy", "ros_peer")
    }

    /// A peer acting as a participant of `distro` ("humble" or "jazzy"), announcing
    /// itself as node `node`.
    pub fn start_as(domain: u16, distro: &str, node: &str) -> Self {
        let repo = super::repo();
        let mut child = Command::new(super::python())
            .arg(repo.join("tests/py/ros_peer.py"))
            .args(["--domain", &domain.to_string()])
            .args(["--distro", distro, "--node", node])
            .arg(repo.join("interfaces"))
            .arg(repo.join("tests/fixtures/interfaces"))
            .env("CYCLONEDDS_URI", CYCLONE_LOOPBACK)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Cyclone DDS peer (tests/py/ros_peer.py)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = mpsc::channel();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m2 = msgs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("event").is_some() {
                    m2.lock().unwrap().push(v);
                } else if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut peer = RosPeer {
            child,
            stdin,
            replies,
            msgs,
        };
        let ready = peer.reply(Duration::from_secs(30));
        assert_eq!(
            ready["ready"], true,
            "the Cyclone peer did not start: {ready}"
        );
        peer
    }

    fn reply(&mut self, timeout: Duration) -> Value {
        self.replies
            .recv_timeout(timeout)
            .expect("the Cyclone peer did not answer (it may have crashed; see its stderr)")
    }

    /// Sends a command and returns its answer; fails the test on an error answer.
    pub fn cmd(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let r = self.reply(Duration::from_secs(60));
        assert!(
            r.get("error").is_none(),
            "Cyclone peer: {} (command {cmd})",
            r["error"]
        );
        r
    }

    pub fn publisher(&mut self, id: &str, topic: &str, ty: &str, qos: Value) {
        self.cmd(json!({"op":"pub","id":id,"topic":topic,"type":ty,"qos":qos}));
    }

    pub fn subscriber(&mut self, id: &str, topic: &str, ty: &str, qos: Value) {
        self.cmd(json!({"op":"sub","id":id,"topic":topic,"type":ty,"qos":qos}));
    }

    /// The robot's side of the agent's detection service at its default topics: `req`
    /// publishes DetectionRequest, `det` reads Detection2DArray, `status` reads the
    /// transient-local DetectionStatus.
    pub fn detection_endpoints(&mut self) {
        self.publisher(
            "req",
            "/edge_agent/detect/request",
            "edge_agent_msgs/msg/DetectionRequest",
            json!({}),
        );
        self.subscriber(
            "det",
            "/edge_agent/detect/detections",
            "vision_msgs/msg/Detection2DArray",
            json!({}),
        );
        self.subscriber(
            "status",
            "/edge_agent/detect/status",
            "edge_agent_msgs/msg/DetectionStatus",
            json!({"durability": "transient-local", "depth": 100}),
        );
    }

    pub fn wait_matched(&mut self, id: &str) {
        self.cmd(json!({"op":"wait_matched","id":id,"count":1,"timeout_ms":20000}));
    }

    pub fn write(&mut self, id: &str, value: Value) {
        self.cmd(json!({"op":"write","id":id,"value":value}));
    }

    /// Writes and waits until the agent's reader has acknowledged the sample, so a
    /// message written next on another topic cannot overtake it.
    pub fn write_acked(&mut self, id: &str, value: Value) {
        self.cmd(json!({"op":"write","id":id,"value":value,"acked":true}));
    }

    /// Messages received so far on subscription `id`.
    pub fn received(&self, id: &str) -> Vec<Value> {
        let msgs = self.msgs.lock().unwrap();
        if let Some(e) = msgs.iter().find(|m| m["event"] == "peer-error") {
            panic!("the Cyclone peer stopped reading: {}", e["error"]);
        }
        msgs.iter().filter(|m| m["id"] == id).cloned().collect()
    }

    pub fn wait_received(&self, id: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received(id);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "Cyclone received {} of {n} messages on {id}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Nodes announced on ros_discovery_info (what `ros2 node list` reads).
    pub fn nodes(&mut self) -> Vec<(String, String)> {
        self.graph().0
    }

    /// The nodes, and every announcement the peer could not read or read as garbage.
    pub fn graph(&mut self) -> (Vec<(String, String)>, Vec<String>) {
        let r = self.cmd(json!({"op":"nodes","id":"nodes"}));
        let errors = r["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_owned())
            .collect();
        let nodes = r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["namespace"].as_str().unwrap().to_owned(),
                    n["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (nodes, errors)
    }

    /// Calls service `service` of type `ty` once, as an rmw_cyclonedds client, in the
    /// background; its reply is the event `id` (`{"value": reply}` or `{"error": ...}`).
    pub fn call(&mut self, id: &str, service: &str, ty: &str, request: Value) {
        self.cmd(json!({"op":"call","id":id,"service":service,"type":ty,"request":request,"timeout_ms":30000}));
    }

    /// Sends a goal to action `action` of type `ty` in the background, cancelling it
    /// once a feedback message's `stage` is `cancel_on_stage`; the outcome is the event
    /// `id` (see `send_goal` in tests/py/ros_peer.py).
    pub fn send_goal(
        &mut self,
        id: &str,
        action: &str,
        ty: &str,
        goal: Value,
        cancel_on_stage: Option<&str>,
    ) {
        self.cmd(
            json!({"op":"send_goal","id":id,"action":action,"type":ty,"goal":goal,
                        "cancel_on_stage":cancel_on_stage,"timeout_ms":40000}),
        );
    }

    /// Calls a parameter service (`service`: "list", "get" or "set") of `node` as an
    /// rmw_cyclonedds client does; the reply as JSON.
    pub fn param(&mut self, node: &str, service: &str, args: Value) -> Value {
        let mut cmd =
            json!({"op":"param","id":"param","node":node,"service":service,"timeout_ms":30000});
        if let (Some(c), Some(a)) = (cmd.as_object_mut(), args.as_object()) {
            for (k, v) in a {
                c.insert(k.clone(), v.clone());
            }
        }
        self.cmd(cmd)["reply"].clone()
    }
}

impl Drop for RosPeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op":"quit"}));
        std::thread::sleep(Duration::from_millis(50));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
