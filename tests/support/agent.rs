//! The agent as a child process, with a configuration and rule files written by the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct AgentDir {
    pub dir: tempfile::TempDir,
}

impl AgentDir {
    /// A state folder, a `rules.toml` with `rules`, and `agent.toml` for `port` and ROS
    /// domain `domain` (loopback only). `extra` is appended to the configuration.
    pub fn new(port: u16, domain: u16, rules: &str, extra: &str) -> Self {
        Self::with_ros(
            port,
            &format!("domain_id = {domain}\nonly_networks = [\"127.0.0.1\"]"),
            rules,
            extra,
        )
    }

    /// As [`AgentDir::new`], with `ros` as the body of the `[ros]` table.
    pub fn with_ros(port: u16, ros: &str, rules: &str, extra: &str) -> Self {
        Self::with_mqtt(port, ros, rules, "", extra)
    }

    /// As [`AgentDir::with_ros`], with `mqtt` added to the `[mqtt]` table.
    pub fn with_mqtt(port: u16, ros: &str, rules: &str, mqtt: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
        let cfg = format!(
            r#"state_dir = "{state}"
[device]
product_key = "pk1"
device_name = "robot-7"
[mqtt]
host = "127.0.0.1"
port = {port}
keep_alive = "5s"
connect_timeout = "2s"
{mqtt_extra}
[mqtt.reconnect]
initial_delay = "50ms"
max_delay = "300ms"
[ros]
{ros}
[bridge]
mappings = ["rules.toml"]
health_interval = "1s"
{extra}
"#,
            state = dir.path().join("state").display(),
            mqtt_extra = mqtt,
        );
        std::fs::write(dir.path().join("agent.toml"), cfg).unwrap();
        AgentDir { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
}

/// `edge-agent run --config <config> <extra args>`, stderr collected.
pub fn spawn_run(config: &Path, extra: &[&str]) -> Child {
    agent()
        .args(["run", "--config"])
        .arg(config)
        .args(extra)
        // What a technician sees, with the agent's own debug lines.
        .env("RUST_LOG", "warn,rustdds=error,edge_agent=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge-agent run")
}

pub fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

/// Waits for the process to end; returns exit code and stderr.
pub fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stops the agent with SIGTERM and returns its log; fails if it does not exit 0.
pub fn stop(child: Child) -> String {
    signal(&child, "-TERM");
    let (code, log) = finish(child);
    assert_eq!(code, Some(0), "the agent did not stop cleanly:\n{log}");
    log
}

/// A running agent, killed if the test fails before stopping it.
pub struct Agent(Option<Child>, Option<LogWatch>);

impl Agent {
    /// `edge-agent run --config <config>`, its log watched as it comes.
    pub fn start(config: &Path) -> Self {
        let (child, log) = spawn_watched(config, &[]);
        Agent(Some(child), Some(log))
    }

    /// An agent the test spawned itself (other arguments or environment).
    pub fn from_child(child: Child) -> Self {
        Agent(Some(child), None)
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// The agent's log as it comes (agents made by [`Agent::start`]).
    pub fn log(&self) -> &LogWatch {
        self.1.as_ref().expect("an agent started by Agent::start")
    }

    /// SIGTERM; the agent's log, after checking it exited cleanly.
    pub fn stop(mut self) -> String {
        let child = self.0.take().unwrap();
        match self.1.take() {
            Some(log) => stop_watched(child, log),
            None => stop(child),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `spawn_run` with its log watched as it comes.
pub fn spawn_watched(config: &Path, extra: &[&str]) -> (Child, LogWatch) {
    let mut child = spawn_run(config, extra);
    let log = LogWatch::of(&mut child);
    (child, log)
}

/// Waits for a watched process to end; returns exit code and its log.
pub fn finish_watched(mut child: Child, log: LogWatch) -> (Option<i32>, String) {
    let status = child.wait().unwrap();
    (status.code(), log.text())
}

/// [`stop`] for a watched agent.
pub fn stop_watched(child: Child, log: LogWatch) -> String {
    signal(&child, "-TERM");
    let (code, log) = finish_watched(child, log);
    assert_eq!(code, Some(0), "the agent did not stop cleanly:\n{log}");
    log
}

/// A child's stderr read line by line as it comes, so a test can wait for a line.
pub struct LogWatch {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LogWatch {
    /// Takes the child's stderr (spawned with `Stdio::piped()`).
    pub fn of(child: &mut Child) -> Self {
        use std::io::BufRead as _;
        let err = child.stderr.take().expect("stderr piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        LogWatch {
            lines,
            reader: Some(reader),
        }
    }

    /// The first line that satisfies `pred`, waiting up to `timeout` for it.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line {what} within {timeout:?}:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the agent has matched a ROS publisher of `topic`: from then on it
    /// receives what that publisher writes.
    pub fn wait_publisher(&self, topic: &str) {
        let field = format!("topic={topic} ");
        self.wait_for(
            &format!("matching a publisher of {topic}"),
            Duration::from_secs(20),
            |l| l.contains("A publisher of this topic was matched") && l.contains(&field),
        );
    }

    /// Everything the child wrote, once it has exited (its stderr closed).
    pub fn text(mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines.lock().unwrap().join("\n")
    }
}

/// The JSON payloads of `topic` among `topic payload` lines.
pub fn payloads(lines: &[String], topic: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(topic)?.strip_prefix(' '))
        .filter_map(|p| serde_json::from_str(p).ok())
        .collect()
}

/// Waits (up to `timeout`) until the agent answers on a cloud command's request topic:
/// `probe`, a request the agent refuses (no id, not JSON), is answered on the command
/// error topic `errors`.
pub fn wait_subscribed(
    port: u16,
    all: &super::mosquitto::Sub,
    request_topic: &str,
    probe: &str,
    errors: &str,
    timeout: Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let before = payloads(&all.snapshot(), errors).len();
        super::mosquitto::publish(port, request_topic, probe, &["-q", "1"]);
        let t = std::time::Instant::now() + Duration::from_millis(500);
        while std::time::Instant::now() < t {
            if payloads(&all.snapshot(), errors).len() > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never subscribed"
        );
    }
}

/// Asserts what a cloud goal's feedback topic carried for goal `id`: its acceptance,
/// and progress that only goes up.
pub fn assert_goal_feedback(feedback: &[serde_json::Value], id: &str) {
    assert!(
        feedback.contains(&serde_json::json!({"id": id, "status": "accepted"})),
        "{feedback:?}"
    );
    let progress: Vec<f64> = feedback
        .iter()
        .filter_map(|f| f["feedback"]["progress"].as_f64())
        .collect();
    assert!(!progress.is_empty(), "{feedback:?}");
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
}

pub const SETTLE: Duration = Duration::from_millis(300);
