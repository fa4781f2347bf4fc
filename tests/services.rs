//! ROS 2 services called from the cloud, against a real mosquitto (MQTT 3.1.1 and 5)
//! and a Cyclone DDS 0.10 service server of a type no package ships
//! (tests/fixtures/interfaces/orchard_test_srvs/srv/GoToRow.srv), as rmw_cyclonedds
//! serves it: the request's JSON calls the service and the response comes back as the
//! reply, on the rule's reply topic, on an MQTT 5 Response Topic with the request's
//! Correlation Data, or in Aliyun's thing/service and RRPC forms; a bad request, a
//! missing server and a slow one are answered with a code and the reason; and a request
//! that comes again (the cloud's retry, after a reconnect, after a restart, after a
//! kill in the middle of its call) is never carried out twice.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::agent::{assert_goal_feedback, payloads, Agent, AgentDir};
use support::mosquitto::{publish, ready_sub, Mosquitto, Options, Sub};
use support::ros_peer::RosPeer;

const T: Duration = Duration::from_secs(60);
const REQ: &str = "/pk1/robot-7/user/service/goto_row";
const REPLY: &str = "/pk1/robot-7/user/service/goto_row_reply";
const ERRORS: &str = "/pk1/robot-7/user/cmd/error";
const SRV: &str = "orchard_test_srvs/srv/GoToRow";

/// The robot's service: answers "at <row>" and counts its calls.
fn serve(peer: &mut RosPeer, service: &str, delay_ms: u64) {
    peer.cmd(json!({
        "op": "service_server", "id": service, "service": service, "type": SRV,
        "response": {"success": true, "message": "at {row}"}, "delay_ms": delay_ms,
    }));
}

fn rule(name: &str, service: &str, extra: &str) -> String {
    format!(
        r#"
[[mqtt_to_service]]
name = "{name}"
mqtt_topic = "/${{productKey}}/${{deviceName}}/user/service/{name}"
ros_service = "{service}"
ros_type = "{SRV}"
rmw = "cyclonedds"
{extra}
"#
    )
}

fn agent_dir(port: u16, domain: u16, rules: &str, mqtt: &str) -> AgentDir {
    let fixtures = support::repo().join("tests/fixtures/interfaces");
    AgentDir::with_mqtt(
        port,
        &format!(
            "domain_id = {domain}\nonly_networks = [\"127.0.0.1\"]\ninterfaces = [\"{}\"]",
            fixtures.display()
        ),
        rules,
        mqtt,
        "",
    )
}

/// Every message on the broker, as `topic payload` lines (MQTT 5 with `v5`:
/// `topic correlation payload`).
fn watch(port: u16, v5: bool) -> Sub {
    let args: &[&str] = if v5 {
        &["-q", "1", "-V", "mqttv5", "-F", "%t %D %p"]
    } else {
        &["-q", "1"]
    };
    ready_sub(port, "#", "/probe/watch", args)
}

/// Waits until the agent answers on the rule's request topic.
fn wait_subscribed(port: u16, all: &Sub, request_topic: &str) {
    support::agent::wait_subscribed(port, all, request_topic, r#"{"probe": true}"#, ERRORS, T);
}

/// The replies on `topic` once there are `n`.
fn replies(all: &Sub, topic: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + T;
    loop {
        let got = payloads(&all.snapshot(), topic);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} replies on {topic}: {got:?}",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rule_status(a: &AgentDir, name: &str) -> Value {
    let text = std::fs::read_to_string(a.path().join("state/status.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until the status file shows `pred` for rule `name`.
fn wait_status(a: &AgentDir, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let s = rule_status(a, name);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "status of {name}: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cloud_request_calls_the_service_and_its_response_is_the_reply() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let mut peer = RosPeer::start(dom.id);
    serve(&mut peer, "/arm/goto_row", 0);
    let a = agent_dir(
        mq.port,
        dom.id,
        &rule("goto_row", "/arm/goto_row", "strict = true"),
        "",
    );
    let all = watch(mq.port, false);
    let agent = Agent::start(&a.config());
    wait_subscribed(mq.port, &all, REQ);

    let request =
        json!({"id": "r-1", "row": "A7", "speed": 0.5, "offset": {"x": 1.5, "y": 0.0, "z": 0.0}});
    publish(mq.port, REQ, &request.to_string(), &["-q", "1"]);
    let got = replies(&all, REPLY, 1);
    assert_eq!(
        got[0],
        json!({"id": "r-1", "code": 200, "message": "success",
               "data": {"success": true, "message": "at A7", "calls": 1, "trace": []}}),
    );
    // The server saw the request as sent (the id is not part of it).
    let calls = peer.wait_received("/arm/goto_row", 1, T);
    assert_eq!(
        calls[0]["value"],
        json!({"row": "A7", "speed": 0.5, "offset": {"x": 1.5, "y": 0.0, "z": 0.0}})
    );

    // A request that does not fit the type is answered, not called.
    publish(
        mq.port,
        REQ,
        r#"{"id": "r-2", "row": 5, "speed": 1.0, "offset": {}}"#,
        &["-q", "1"],
    );
    let got = replies(&all, REPLY, 2);
    assert_eq!(got[1]["id"], "r-2");
    assert_eq!(got[1]["code"], 400);
    assert!(
        got[1]["message"].as_str().unwrap().contains("row"),
        "{}",
        got[1]
    );

    // The cloud's retry of r-1: the stored reply again, the service not called again.
    publish(mq.port, REQ, &request.to_string(), &["-q", "1"]);
    let got = replies(&all, REPLY, 3);
    assert_eq!(got[2], got[0]);
    let s = wait_status(&a, "goto_row", |s| s["duplicates"].as_u64() >= Some(1));
    assert_eq!(peer.received("/arm/goto_row").len(), 1);
    assert_eq!(s["direction"], "mqtt_to_service");
    assert_eq!(s["sent"], 1, "{s}");
    assert_eq!(s["duplicates"], 1, "{s}");
    assert!(s["replies"].as_u64().unwrap() >= 4, "{s}");
    // r-2 and the probes without an id.
    assert!(s["refused_invalid"].as_u64().unwrap() >= 2, "{s}");
    agent.stop();
}

#[test]
fn mqtt5_replies_go_to_the_response_topic_with_the_correlation_data() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let mut peer = RosPeer::start(dom.id);
    serve(&mut peer, "/arm/goto_row", 0);
    let a = agent_dir(
        mq.port,
        dom.id,
        &rule("goto_row", "/arm/goto_row", ""),
        "protocol = \"5\"",
    );
    let all = watch(mq.port, true);
    let agent = Agent::start(&a.config());
    wait_subscribed(mq.port, &all, REQ);
    // No id in the request: the correlation data is its id.
    let v5 = |corr: &str| {
        publish(
            mq.port,
            REQ,
            r#"{"row": "B2"}"#,
            &[
                "-q",
                "1",
                "-V",
                "mqttv5",
                "-D",
                "publish",
                "response-topic",
                "cloud/replies/op-9",
                "-D",
                "publish",
                "correlation-data",
                corr,
            ],
        )
    };
    v5("corr-1");
    // `topic correlation payload`
    let line = |n: usize| {
        let deadline = Instant::now() + T;
        loop {
            let lines: Vec<String> = all
                .snapshot()
                .into_iter()
                .filter(|l| l.starts_with("cloud/replies/op-9 "))
                .collect();
            if lines.len() >= n {
                return lines[n - 1].clone();
            }
            assert!(Instant::now() < deadline, "no reply {n}: {lines:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first = line(1);
    let rest = first
        .strip_prefix("cloud/replies/op-9 corr-1 ")
        .unwrap_or_else(|| panic!("the reply does not carry the correlation data: {first}"));
    let body: Value = serde_json::from_str(rest).unwrap();
    assert_eq!(body["id"], "corr-1");
    assert_eq!(body["code"], 200);
    assert_eq!(body["data"]["message"], "at B2");
    // The same correlation data again: the stored reply, one call.
    v5("corr-1");
    let second = line(2);
    assert_eq!(second, first);
    assert_eq!(peer.received("/arm/goto_row").len(), 1);
    agent.stop();
}

#[test]
fn aliyun_thing_service_and_rrpc_requests_get_their_replies() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let mut peer = RosPeer::start(dom.id);
    serve(&mut peer, "/arm/goto_row", 0);
    let rules = format!(
        r#"
[[mqtt_to_service]]
name = "thing_goto"
mqtt_topic = "/sys/${{productKey}}/${{deviceName}}/thing/service/goto_row"
ros_service = "/arm/goto_row"
ros_type = "{SRV}"
rmw = "cyclonedds"
envelope = "alink"

[[mqtt_to_service]]
name = "rrpc_goto"
mqtt_topic = "/sys/${{productKey}}/${{deviceName}}/rrpc/request/+"
ros_service = "/arm/goto_row"
ros_type = "{SRV}"
rmw = "cyclonedds"
id_from_topic = true
reply_topic = "/sys/${{productKey}}/${{deviceName}}/rrpc/response/${{id}}"
"#
    );
    let a = agent_dir(mq.port, dom.id, &rules, "");
    let all = watch(mq.port, false);
    let agent = Agent::start(&a.config());
    let thing = "/sys/pk1/robot-7/thing/service/goto_row";
    wait_subscribed(mq.port, &all, thing);
    let call = json!({"id": "123", "version": "1.0", "params": {"row": "C3", "speed": 0.2},
                      "method": "thing.service.goto_row"});
    publish(mq.port, thing, &call.to_string(), &["-q", "1"]);
    let got = replies(&all, "/sys/pk1/robot-7/thing/service/goto_row_reply", 1);
    assert_eq!(got[0]["id"], "123");
    assert_eq!(
        got[0]["code"],
        200,
        "{}; the server received {:?}",
        got[0],
        peer.received("/arm/goto_row")
    );
    assert_eq!(got[0]["data"]["message"], "at C3");

    publish(
        mq.port,
        "/sys/pk1/robot-7/rrpc/request/1520848234",
        r#"{"row": "D4"}"#,
        &["-q", "1"],
    );
    let got = replies(&all, "/sys/pk1/robot-7/rrpc/response/1520848234", 1);
    assert_eq!(got[0]["id"], "1520848234");
    assert_eq!(got[0]["data"]["message"], "at D4");
    assert_eq!(peer.received("/arm/goto_row").len(), 2);
    agent.stop();
}

#[test]
fn a_missing_server_is_answered_at_once_and_a_slow_one_within_the_timeout() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let mut peer = RosPeer::start(dom.id);
    serve(&mut peer, "/arm/slow", 3000);
    let rules = format!(
        "{}{}",
        rule("missing", "/arm/missing", "wait_for_server = \"1s\""),
        rule("slow", "/arm/slow", "timeout = \"1s\"")
    );
    let a = agent_dir(mq.port, dom.id, &rules, "");
    let all = watch(mq.port, false);
    let agent = Agent::start(&a.config());
    let missing = "/pk1/robot-7/user/service/missing";
    let slow = "/pk1/robot-7/user/service/slow";
    wait_subscribed(mq.port, &all, missing);
    wait_subscribed(mq.port, &all, slow);

    let sent = Instant::now();
    publish(
        mq.port,
        missing,
        r#"{"id": "m-1", "row": "E5"}"#,
        &["-q", "1"],
    );
    let got = replies(&all, &format!("{missing}_reply"), 1);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(got[0]["code"], 404, "{}", got[0]);
    assert!(got[0]["message"]
        .as_str()
        .unwrap()
        .contains("no server of /arm/missing"));

    publish(mq.port, slow, r#"{"id": "s-1", "row": "F6"}"#, &["-q", "1"]);
    let got = replies(&all, &format!("{slow}_reply"), 1);
    assert_eq!(got[0]["code"], 504, "{}", got[0]);
    assert!(
        got[0]["message"].as_str().unwrap().contains("1.0 s"),
        "{}",
        got[0]
    );
    // The slow service was called, once.
    assert_eq!(peer.wait_received("/arm/slow", 1, T).len(), 1);
    let log = agent.stop();
    assert!(log.contains("was not carried out"), "{log}");
}

/// The cloud sends a request again after a reconnect and after a restart, and the
/// agent is killed in the middle of another call: each service is called once.
#[test]
fn a_request_that_comes_again_is_never_carried_out_twice() {
    let mut mq = Mosquitto::start(Options {
        persistence: true,
        ..Options::default()
    });
    let dom = support::domain();
    let mut peer = RosPeer::start(dom.id);
    serve(&mut peer, "/arm/goto_row", 0);
    serve(&mut peer, "/arm/slow", 4000);
    let rules = format!(
        "{}{}",
        rule("goto_row", "/arm/goto_row", ""),
        rule("slow", "/arm/slow", "timeout = \"10s\"")
    );
    let a = agent_dir(mq.port, dom.id, &rules, "");
    let all = watch(mq.port, false);
    let mut agent = Agent::start(&a.config());
    wait_subscribed(mq.port, &all, REQ);
    wait_subscribed(mq.port, &all, "/pk1/robot-7/user/service/slow");
    let request = r#"{"id": "once-1", "row": "G7"}"#;
    publish(mq.port, REQ, request, &["-q", "1"]);
    let first = replies(&all, REPLY, 1)[0].clone();
    assert_eq!(first["code"], 200, "{first}");

    // Across a reconnect: the broker restarts, the cloud sends the request again.
    mq.restart();
    let all = watch(mq.port, false);
    publish(mq.port, REQ, request, &["-q", "1"]);
    assert_eq!(replies(&all, REPLY, 1)[0], first);

    // Across a restart: sent again while the agent is away, taken when it is back.
    agent.stop();
    publish(mq.port, REQ, request, &["-q", "1"]);
    agent = Agent::start(&a.config());
    assert_eq!(replies(&all, REPLY, 2)[1], first);
    assert_eq!(peer.received("/arm/goto_row").len(), 1);

    // Killed while the service is working on a request: the broker sends the request
    // to the next run, which does not call again and says the outcome is unknown.
    let slow = "/pk1/robot-7/user/service/slow";
    publish(
        mq.port,
        slow,
        r#"{"id": "cut-1", "row": "H8"}"#,
        &["-q", "1"],
    );
    peer.wait_received("/arm/slow", 1, T);
    let pid = agent.pid();
    // SAFETY: kill(2) on the agent's pid, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    drop(agent);
    let agent = Agent::start(&a.config());
    let got = replies(&all, &format!("{slow}_reply"), 1);
    assert_eq!(got[0]["id"], "cut-1");
    assert_eq!(got[0]["code"], 409, "{}", got[0]);
    assert_eq!(peer.received("/arm/slow").len(), 1);
    agent.stop();
}

/// Aliyun `thing/service/property/set`: each property goes out on its own ROS topic,
/// the reply goes to `…/set_reply`; a request with an unknown or ill-typed property
/// publishes nothing, and a repeated one publishes nothing again.
#[test]
fn an_aliyun_property_set_publishes_each_property_on_its_topic() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let mut peer = RosPeer::start(dom.id);
    let reliable = json!({"reliability": "reliable", "depth": 100});
    peer.subscriber(
        "speed",
        "/robot/max_speed",
        "std_msgs/msg/Float64",
        reliable.clone(),
    );
    peer.subscriber("mode", "/robot/mode", "std_msgs/msg/String", reliable);
    let rules = r#"
[[property_set]]
name = "props"
[property_set.properties.maxSpeed]
ros_topic = "/robot/max_speed"
ros_type = "std_msgs/msg/Float64"
field = "data"
qos = { reliability = "reliable", depth = 100 }
[property_set.properties.mode]
ros_topic = "/robot/mode"
ros_type = "std_msgs/msg/String"
field = "data"
qos = { reliability = "reliable", depth = 100 }
"#;
    let a = agent_dir(mq.port, dom.id, rules, "");
    let all = watch(mq.port, false);
    let agent = Agent::start(&a.config());
    let set = "/sys/pk1/robot-7/thing/service/property/set";
    let reply = "/sys/pk1/robot-7/thing/service/property/set_reply";
    wait_subscribed(mq.port, &all, set);
    let request = |id: &str, params: Value| {
        json!({"id": id, "version": "1.0", "params": params, "method": "thing.service.property.set"})
            .to_string()
    };
    let p1 = request("p-1", json!({"maxSpeed": 0.8, "mode": "pick"}));
    publish(mq.port, set, &p1, &["-q", "1"]);
    let got = replies(&all, reply, 1);
    assert_eq!(
        got[0],
        json!({"id": "p-1", "code": 200, "data": {}, "message": "success"})
    );
    let speeds = |n| -> Vec<f64> {
        peer.wait_received("speed", n, T)
            .iter()
            .map(|m| m["value"]["data"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(speeds(1), [0.8]);
    assert_eq!(peer.wait_received("mode", 1, T)[0]["value"]["data"], "pick");

    let p2 = request("p-2", json!({"maxSpeed": 0.5, "colour": "red"}));
    publish(mq.port, set, &p2, &["-q", "1"]);
    let got = replies(&all, reply, 2);
    assert_eq!(got[1]["code"], 400, "{}", got[1]);
    assert!(got[1]["message"]
        .as_str()
        .unwrap()
        .contains("params.colour"));
    let p3 = request("p-3", json!({"maxSpeed": "fast"}));
    publish(mq.port, set, &p3, &["-q", "1"]);
    let got = replies(&all, reply, 3);
    assert_eq!(got[2]["code"], 400, "{}", got[2]);
    assert!(got[2]["message"].as_str().unwrap().contains("maxSpeed"));
    // The cloud's retry of p-1: its stored reply, nothing published again.
    publish(mq.port, set, &p1, &["-q", "1"]);
    assert_eq!(replies(&all, reply, 4)[3], got[0]);
    // A last good one: when it has arrived, whatever came before it has too.
    let p4 = request("p-4", json!({"maxSpeed": 0.3}));
    publish(mq.port, set, &p4, &["-q", "1"]);
    assert_eq!(replies(&all, reply, 5)[4]["code"], 200);
    assert_eq!(speeds(2), [0.8, 0.3]);
    assert_eq!(peer.received("mode").len(), 1);
    agent.stop();
}

const PICK: &str = "/pk1/robot-7/user/action/pick";

fn action_rule(extra: &str) -> String {
    format!(
        r#"
[[mqtt_to_action]]
name = "pick"
mqtt_topic = "/${{productKey}}/${{deviceName}}/user/action/pick"
ros_action = "/arm/pick_apple"
ros_type = "orchard_test_srvs/action/PickApple"
rmw = "cyclonedds"
feedback_max_rate_hz = 100
{extra}
"#
    )
}

fn action_server(peer: &mut RosPeer, steps: u32, step_ms: u64) {
    peer.cmd(json!({
        "op": "action_server", "id": "pick", "action": "/arm/pick_apple",
        "type": "orchard_test_srvs/action/PickApple", "steps": steps, "step_ms": step_ms,
        "result": {"picked": true, "log": ["reached", "gripped"]},
    }));
}

/// A goal from the cloud: accepted, its feedback forwarded, its result the reply; the
/// cloud's retry gets the stored reply and the goal is not sent again.
#[test]
fn a_cloud_goal_runs_the_action_with_feedback_and_its_result_is_the_reply() {
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let mut peer = RosPeer::start(dom.id);
    action_server(&mut peer, 3, 100);
    let a = agent_dir(mq.port, dom.id, &action_rule(""), "");
    let all = watch(mq.port, false);
    let agent = Agent::start(&a.config());
    wait_subscribed(mq.port, &all, PICK);
    let goal = json!({"id": "g-1", "target": {"x": 1.0, "y": 2.0, "z": 3.0}, "grip_force": 0.5});
    publish(mq.port, PICK, &goal.to_string(), &["-q", "1"]);
    let got = replies(&all, &format!("{PICK}_reply"), 1);
    assert_eq!(
        got[0],
        json!({"id": "g-1", "code": 200, "message": "succeeded",
               "data": {"status": "succeeded", "result": {"picked": true, "log": ["reached", "gripped"]}}}),
    );
    let seen = peer.wait_received("pick", 1, T);
    assert_eq!(
        seen[0]["value"]["goal"],
        json!({"target": {"x": 1.0, "y": 2.0, "z": 3.0}, "grip_force": 0.5})
    );
    // The acceptance and the feedback (which may come before the server's answer to
    // the goal reaches the agent).
    assert_goal_feedback(
        &payloads(&all.snapshot(), &format!("{PICK}_feedback")),
        "g-1",
    );

    // The cloud's retry: the stored result, no second goal.
    publish(mq.port, PICK, &goal.to_string(), &["-q", "1"]);
    assert_eq!(replies(&all, &format!("{PICK}_reply"), 2)[1], got[0]);
    assert_eq!(peer.received("pick").len(), 1);
    agent.stop();
}

/// A goal cancelled from the cloud ends as canceled; a goal in progress when the link
/// drops goes on, and its result arrives once the link is back.
#[test]
fn a_goal_can_be_cancelled_and_one_running_through_a_link_drop_still_reports() {
    let mut mq = Mosquitto::start(Options {
        persistence: true,
        ..Options::default()
    });
    let dom = support::domain();
    let mut peer = RosPeer::start(dom.id);
    action_server(&mut peer, 20, 100);
    let a = agent_dir(mq.port, dom.id, &action_rule(""), "");
    let all = watch(mq.port, false);
    let agent = Agent::start(&a.config());
    wait_subscribed(mq.port, &all, PICK);
    publish(
        mq.port,
        PICK,
        r#"{"id": "g-2", "grip_force": 0.2}"#,
        &["-q", "1"],
    );
    peer.wait_received("pick", 1, T);
    // Its status on request while it runs.
    let status = format!("{PICK}/status");
    publish(mq.port, &status, r#"{"id": "g-2"}"#, &["-q", "1"]);
    let st = replies(&all, &format!("{status}_reply"), 1);
    assert_eq!(st[0]["data"]["status"], "executing", "{}", st[0]);
    let cancel = format!("{PICK}/cancel");
    publish(mq.port, &cancel, r#"{"id": "g-2"}"#, &["-q", "1"]);
    let answer = replies(&all, &format!("{cancel}_reply"), 1);
    assert_eq!(answer[0]["id"], "g-2");
    assert_eq!(answer[0]["message"], "canceling", "{}", answer[0]);
    let got = replies(&all, &format!("{PICK}_reply"), 1);
    assert_eq!(got[0]["data"]["status"], "canceled", "{}", got[0]);
    // Once ended, its status is its reply; a goal never sent is not known.
    publish(mq.port, &status, r#"{"id": "g-2"}"#, &["-q", "1"]);
    assert_eq!(replies(&all, &format!("{status}_reply"), 2)[1], got[0]);
    publish(mq.port, &status, r#"{"id": "nope"}"#, &["-q", "1"]);
    assert_eq!(replies(&all, &format!("{status}_reply"), 3)[2]["code"], 404);

    // 2 s of work; the broker goes away meanwhile and comes back.
    publish(
        mq.port,
        PICK,
        r#"{"id": "g-3", "grip_force": 0.3}"#,
        &["-q", "1"],
    );
    peer.wait_received("pick", 2, T);
    mq.restart();
    let all = watch(mq.port, false);
    let got = replies(&all, &format!("{PICK}_reply"), 1);
    assert_eq!(got[0]["id"], "g-3");
    assert_eq!(got[0]["data"]["status"], "succeeded", "{}", got[0]);
    agent.stop();
}

/// The agent is killed while a goal runs: the next run gets the goal request again from
/// the broker, does not send the goal a second time, and replies with its result.
#[test]
fn a_goal_running_when_the_agent_is_killed_is_not_sent_twice_and_still_reports() {
    let mq = Mosquitto::start(Options {
        persistence: true,
        ..Options::default()
    });
    let dom = support::domain();
    let mut peer = RosPeer::start(dom.id);
    action_server(&mut peer, 20, 100);
    let a = agent_dir(mq.port, dom.id, &action_rule(""), "");
    let all = watch(mq.port, false);
    let agent = Agent::start(&a.config());
    wait_subscribed(mq.port, &all, PICK);
    publish(
        mq.port,
        PICK,
        r#"{"id": "g-4", "grip_force": 0.4}"#,
        &["-q", "1"],
    );
    peer.wait_received("pick", 1, T);
    // SAFETY: kill(2) on the agent's pid, which has not been waited for.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) }, 0);
    drop(agent);
    let agent = Agent::start(&a.config());
    let got = replies(&all, &format!("{PICK}_reply"), 1);
    assert_eq!(got[0]["id"], "g-4");
    assert_eq!(got[0]["data"]["status"], "succeeded", "{}", got[0]);
    assert_eq!(peer.received("pick").len(), 1);
    agent.stop();
}

/// Both request-id conventions on the cloud path: the agent calls, from cloud
/// requests, the parameter service of another node that tells the conventions apart
/// (the agent's own ROS layer, as a second node in this test), once as rmw_fastrtps
/// does (the id in the sample's metadata) and once as rmw_cyclonedds does (in the
/// payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_calls_use_the_request_id_convention_of_the_rule_rmw() {
    use edge_agent::ros::transport::dds::{DdsOptions, DdsTransport};
    let mq = Mosquitto::start(Options::default());
    let dom = support::domain();
    let _other = DdsTransport::start(&DdsOptions {
        domain_id: dom.id,
        node_name: "other".into(),
        namespace: "/robot".into(),
        only_networks: vec!["127.0.0.1".parse().unwrap()],
        distro: Some("jazzy".into()),
        config_file: Some("/etc/other/config.toml".into()),
    })
    .unwrap();
    let rule = |rmw: &str| {
        format!(
            r#"
[[mqtt_to_service]]
name = "params_{rmw}"
mqtt_topic = "/${{productKey}}/${{deviceName}}/user/service/params_{rmw}"
ros_service = "/robot/other/get_parameters"
ros_type = "rcl_interfaces/srv/GetParameters"
rmw = "{rmw}"
"#
        )
    };
    let rules = format!("{}{}", rule("fastrtps"), rule("cyclonedds"));
    let a = agent_dir(mq.port, dom.id, &rules, "");
    let all = watch(mq.port, false);
    let agent = Agent::start(&a.config());
    for rmw in ["fastrtps", "cyclonedds"] {
        let topic = format!("/pk1/robot-7/user/service/params_{rmw}");
        wait_subscribed(mq.port, &all, &topic);
        publish(
            mq.port,
            &topic,
            r#"{"id": "p-1", "names": ["config_file"]}"#,
            &["-q", "1"],
        );
        let got = replies(&all, &format!("{topic}_reply"), 1);
        assert_eq!(got[0]["code"], 200, "{rmw}: {}", got[0]);
        assert_eq!(
            got[0]["data"]["values"][0]["string_value"], "/etc/other/config.toml",
            "{rmw}: {}",
            got[0]
        );
    }
    agent.stop();
}
