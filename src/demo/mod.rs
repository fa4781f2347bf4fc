//! `edge-agent demo`: the whole robot-to-cloud loop on one machine, in one process — an
//! embedded MQTT broker, a simulated picking robot on the ROS 2 bus, a simulated cloud,
//! and the real agent between them with the shipped rules and config/demo.toml.

pub mod cloud;
pub mod robot;
pub mod scene;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The detector the demo ships (made by tests/py/make_models.py, kind `demo`).
pub const DEMO_MODEL: &[u8] = include_bytes!("../../assets/demo/detector.onnx");
const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
const MAPPINGS: [(&str, &str); 3] = [
    (
        "telemetry.toml",
        include_str!("../../msg_mappings/telemetry.toml"),
    ),
    (
        "images.toml",
        include_str!("../../msg_mappings/images.toml"),
    ),
    (
        "commands.toml",
        include_str!("../../msg_mappings/commands.toml"),
    ),
];

/// What the demo saw happen, shared by the robot, the cloud and the view.
#[derive(Default)]
pub struct DemoState {
    pub requests: AtomicU64,
    pub answered: AtomicU64,
    pub apples: AtomicU64,
    /// Cloud commands that reached the robot's ROS topics.
    pub commands: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    det_state: String,
    det_last: String,
    by_source: BTreeMap<String, u64>,
    failed: u64,
    breaker_open: bool,
    breaker_opened: u64,
    breaker_closed: u64,
    cloud_answers: BTreeMap<&'static str, u64>,
    topics: BTreeMap<String, u64>,
    ota_pushed: Vec<String>,
    ota_step: String,
    ota_desc: String,
    ota_committed: Vec<String>,
    ota_rolled_back: Vec<(String, String)>,
    events: Vec<String>,
}

impl DemoState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, text: String) {
        let mut i = self.lock();
        i.events.push(text);
    }

    pub fn requested(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fruits(&self) -> u64 {
        self.apples.load(Ordering::Relaxed)
    }

    pub fn detection_result(&self, found: usize) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.apples.fetch_add(found as u64, Ordering::Relaxed);
    }

    pub fn detection_status(&self, v: &Value) {
        let mut i = self.lock();
        i.det_state = v["state"].as_str().unwrap_or_default().to_owned();
    }

    pub fn cloud_answer(&self, a: cloud::Answer) {
        *self.lock().cloud_answers.entry(a.label()).or_default() += 1;
    }

    pub fn ota_pushed(&self, version: &str) {
        self.lock().ota_pushed.push(version.to_owned());
        self.event(format!("cloud pushed update {version}"));
    }

    pub fn ota_progress(&self, step: &str, desc: &str) {
        let mut i = self.lock();
        i.ota_step = step.to_owned();
        i.ota_desc = desc.to_owned();
    }

    pub fn ota_result(&self, body: &Value) {
        let version = self.lock().ota_pushed.last().cloned().unwrap_or_default();
        if body["RESULT"] == 0 {
            self.lock().ota_committed.push(version.clone());
            self.event(format!(
                "update {version} installed, switched and committed"
            ));
        } else {
            let why = body["ERROR_INFO"].as_str().unwrap_or_default().to_owned();
            self.lock()
                .ota_rolled_back
                .push((version.clone(), why.clone()));
            self.event(format!(
                "update {version} failed and was rolled back: {why}"
            ));
        }
    }

    /// Every message the cloud receives, by topic.
    pub fn cloud_received(&self, topic: &str) {
        *self.lock().topics.entry(topic.to_owned()).or_default() += 1;
    }

    /// A detection report the cloud received: the source of the answer, and the breaker.
    pub fn detection_report(&self, v: &Value) {
        let mut i = self.lock();
        match v["source"].as_str() {
            Some(src) => {
                *i.by_source.entry(src.to_owned()).or_default() += 1;
                i.det_last = format!(
                    "{} from {src}: {} apples in {:.0} ms",
                    v["id"].as_str().unwrap_or_default(),
                    v["detections"],
                    v["latency_ms"]["total"].as_f64().unwrap_or(0.0)
                );
            }
            None => {
                i.failed += 1;
                i.det_last = format!(
                    "{} failed: {}",
                    v["id"].as_str().unwrap_or_default(),
                    v["error"].as_str().unwrap_or_default()
                );
            }
        }
        let open = v["breaker"] == "open";
        if open != i.breaker_open {
            i.breaker_open = open;
            let text = if open {
                i.breaker_opened += 1;
                "circuit breaker opened: the local model answers"
            } else {
                i.breaker_closed += 1;
                "circuit breaker closed: the cloud answers again"
            };
            i.events.push(text.to_owned());
        }
    }
}

/// Options of `edge-agent demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The broker's port; 0 picks a free one.
    pub port: u16,
    pub duration: Option<Duration>,
    /// A quicker schedule: a request every second, updates after 12 and 30 s.
    pub fast: bool,
    pub model: Option<PathBuf>,
    pub domain: u16,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts rumqttd on 127.0.0.1:`port` in threads of its own.
fn start_broker(port: u16) -> anyhow::Result<()> {
    let mut v4 = std::collections::HashMap::new();
    v4.insert(
        "demo".to_owned(),
        rumqttd::ServerSettings {
            name: "demo".into(),
            listen: ([127, 0, 0, 1], port).into(),
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 4 << 20,
                max_inflight_count: 500,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 500,
            max_segment_size: 16 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "The demo broker stopped.");
            }
        })?;
    // Wait until it accepts connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the embedded broker did not start on port {port}")
}

fn write_files(dir: &Path, port: u16, opts: &DemoOptions) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("mappings"))?;
    std::fs::create_dir_all(dir.join("models"))?;
    for (name, text) in MAPPINGS {
        std::fs::write(dir.join("mappings").join(name), text)?;
    }
    let model = match &opts.model {
        Some(m) => std::fs::read(m).with_context(|| format!("cannot read {}", m.display()))?,
        None => DEMO_MODEL.to_vec(),
    };
    std::fs::write(dir.join("models/detector.onnx"), model)?;
    let (confirm, probe) = if opts.fast {
        ("3s", "6s")
    } else {
        ("10s", "15s")
    };
    let cfg = DEMO_CONFIG
        .replace("@STATE@", &dir.join("state").display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@DOMAIN@", &opts.domain.to_string())
        .replace("@MAPPINGS@", "mappings")
        .replace("@CONFIRM@", confirm)
        .replace("@PROBE@", probe);
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

/// The file the demo's log goes to.
pub fn log_file(dir: &Path) -> PathBuf {
    dir.join("edge-agent-demo.log")
}

/// What the summary checks: every stage of the loop happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub seconds: u64,
    pub rules: BTreeMap<String, u64>,
    pub rules_silent: Vec<String>,
    pub detections_requested: u64,
    pub detections_answered: u64,
    pub answers_by_source: BTreeMap<String, u64>,
    pub breaker_opened: u64,
    pub breaker_closed: u64,
    pub ota_committed: Vec<String>,
    pub ota_rolled_back: Vec<String>,
    pub cloud_messages: u64,
    pub commands_delivered: u64,
    pub all_stages: bool,
}

/// Runs the demo until Ctrl-C or `duration`; returns the summary.
pub async fn run(opts: DemoOptions, dir: &Path, live: bool) -> anyhow::Result<Summary> {
    let port = if opts.port == 0 {
        free_port()?
    } else {
        opts.port
    };
    start_broker(port)?;
    let config = write_files(dir, port, &opts)?;
    let settings = crate::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = Arc::new(DemoState::default());
    let shutdown = CancellationToken::new();

    println!("edge-agent demo");
    println!(
        "  broker   127.0.0.1:{port}    watch it: mosquitto_sub -h 127.0.0.1 -p {port} -t '#' -v"
    );
    println!("  log      {}", log_file(dir).display());
    println!("  config   {}", config.display());
    println!(
        "  ROS      domain {} (the simulated robot and the agent)",
        opts.domain
    );
    let request_every = Duration::from_secs(if opts.fast { 2 } else { 4 });
    let ota_at = if opts.fast {
        [Duration::from_secs(12), Duration::from_secs(30)]
    } else {
        [Duration::from_secs(60), Duration::from_secs(120)]
    };
    println!(
        "  schedule a detection request every {} s; the cloud answers {}, then again; updates 2.0.0 at {} s (installs) and 3.0.0 at {} s (fails its health check)",
        request_every.as_secs(),
        cloud::SCHEDULE.iter().map(|a| a.label()).collect::<Vec<_>>().join(", "),
        ota_at[0].as_secs(),
        ota_at[1].as_secs()
    );
    println!();

    let mut termination = crate::agent::Termination::install();
    let running = crate::agent::start(&settings, None).await?;
    // The robot is a second ROS 2 participant on the same domain.
    let robot_t: Arc<dyn crate::ros::transport::Transport> = Arc::new(
        crate::ros::transport::dds::DdsTransport::start(&crate::ros::transport::dds::DdsOptions {
            domain_id: opts.domain,
            node_name: "picker_robot".into(),
            namespace: "/".into(),
            only_networks: vec![std::net::IpAddr::from([127, 0, 0, 1])],
            distro: settings.ros.distro.clone(),
            config_file: None,
        })?,
    );
    let robot = tokio::spawn(robot::run(
        robot_t.clone(),
        settings.registry.clone(),
        request_every,
        state.clone(),
        shutdown.clone(),
    ));
    let plan = cloud::CloudPlan {
        port,
        product_key: settings.file.device.product_key.clone(),
        device_name: settings.file.device.device_name.clone(),
        ota_at,
        work: dir.to_path_buf(),
        model: dir.join("models/detector.onnx"),
    };
    let cloud_task = tokio::spawn(cloud::run(plan, state.clone(), shutdown.clone()));
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut drawn = 0usize;
    let mut shown_events = 0usize;
    let end = opts.duration.map(|d| started + d);
    loop {
        tokio::select! {
            _ = termination.wait() => break,
            _ = async { match end { Some(e) => tokio::time::sleep_until(e).await, None => std::future::pending().await } } => break,
            _ = tick.tick() => {
                let lines = view(&state, &running, started.elapsed());
                let events: Vec<String> = state.lock().events[shown_events..].to_vec();
                shown_events += events.len();
                let mut out = std::io::stdout().lock();
                if live {
                    // Up over the last view, then events (they stay), then the view again.
                    if drawn > 0 {
                        let _ = write!(out, "\x1b[{drawn}A\x1b[J");
                    }
                    for e in &events {
                        let _ = writeln!(out, "  * {:>4}s  {e}", started.elapsed().as_secs());
                    }
                    for l in &lines {
                        let _ = writeln!(out, "{l}");
                    }
                    drawn = lines.len();
                } else {
                    for e in &events {
                        let _ = writeln!(out, "  * {:>4}s  {e}", started.elapsed().as_secs());
                    }
                }
                let _ = out.flush();
            }
        }
    }
    tracing::info!(seconds = started.elapsed().as_secs(), "Demo stopping.");
    let summary = summarize(&state, &running, started.elapsed());
    shutdown.cancel();
    let _ = robot.await;
    let _ = cloud_task.await;
    drop(robot_t);
    running.stop(Duration::from_secs(6)).await;
    Ok(summary)
}

fn bar(pct: u64) -> String {
    let n = (pct.min(100) / 5) as usize;
    format!("[{}{}] {pct:>3}%", "#".repeat(n), "-".repeat(20 - n))
}

fn view(state: &DemoState, running: &crate::agent::Running, up: Duration) -> Vec<String> {
    let snap = running.link.stats().snapshot();
    let i = state.lock();
    let mut lines = vec![format!(
        "── {:02}:{:02}  link {}  sent {}  held in outbox {}  cloud got {} messages",
        up.as_secs() / 60,
        up.as_secs() % 60,
        if snap.connected { "up" } else { "DOWN" },
        snap.acked,
        snap.held,
        i.topics.values().sum::<u64>()
    )];
    let mut up_rules = String::from("   to cloud ");
    let mut down_rules = String::from("   to robot ");
    for r in &running.rules {
        let line = if r.direction == "ros_to_mqtt" {
            &mut up_rules
        } else {
            &mut down_rules
        };
        line.push_str(&format!("{} {}  ", r.name, r.sent.load(Ordering::Relaxed)));
    }
    lines.push(up_rules);
    lines.push(down_rules);
    lines.push(format!(
        "   detect   state {:<18} requests {}  answered {}  cloud {}  local {}  failed {}  breaker {}",
        if i.det_state.is_empty() { "idle" } else { &i.det_state },
        state.requests.load(Ordering::Relaxed),
        state.answered.load(Ordering::Relaxed),
        i.by_source.get("cloud").copied().unwrap_or(0),
        i.by_source.get("local").copied().unwrap_or(0),
        i.failed,
        if i.breaker_open { "OPEN" } else { "closed" }
    ));
    lines.push(format!("            last: {}", i.det_last));
    let step: i64 = i.ota_step.parse().unwrap_or(0);
    let ota = if i.ota_pushed.is_empty() {
        "waiting for the cloud to push an update".to_owned()
    } else if (0..100).contains(&step)
        && i.ota_committed.len() + i.ota_rolled_back.len() < i.ota_pushed.len()
    {
        format!(
            "{} {} {}",
            i.ota_pushed.last().cloned().unwrap_or_default(),
            bar(step as u64),
            i.ota_desc
        )
    } else {
        format!(
            "committed {:?}  rolled back {:?}",
            i.ota_committed,
            i.ota_rolled_back.iter().map(|(v, _)| v).collect::<Vec<_>>()
        )
    };
    lines.push(format!("   ota      {ota}"));
    lines
}

fn summarize(state: &DemoState, running: &crate::agent::Running, up: Duration) -> Summary {
    let i = state.lock();
    let outbound: Vec<&Arc<crate::bridge::stats::RuleStats>> = running
        .rules
        .iter()
        .filter(|r| r.direction == "ros_to_mqtt")
        .collect();
    let rules: BTreeMap<String, u64> = outbound
        .iter()
        .map(|r| (r.name.clone(), r.sent.load(Ordering::Relaxed)))
        .collect();
    let silent: Vec<String> = outbound
        .iter()
        .filter(|r| r.sent.load(Ordering::Relaxed) == 0)
        .map(|r| r.name.clone())
        .collect();
    let answered = state.answered.load(Ordering::Relaxed);
    let all = !outbound.is_empty()
        && state.commands.load(Ordering::Relaxed) > 0
        && silent.is_empty()
        && i.by_source.get("cloud").copied().unwrap_or(0) > 0
        && i.by_source.get("local").copied().unwrap_or(0) > 0
        && i.breaker_opened > 0
        && i.breaker_closed > 0
        && !i.ota_committed.is_empty()
        && !i.ota_rolled_back.is_empty();
    Summary {
        seconds: up.as_secs(),
        rules,
        rules_silent: silent,
        detections_requested: state.requests.load(Ordering::Relaxed),
        detections_answered: answered,
        answers_by_source: i.by_source.clone(),
        breaker_opened: i.breaker_opened,
        breaker_closed: i.breaker_closed,
        ota_committed: i.ota_committed.clone(),
        ota_rolled_back: i.ota_rolled_back.iter().map(|(v, _)| v.clone()).collect(),
        cloud_messages: i.topics.values().sum(),
        commands_delivered: state.commands.load(Ordering::Relaxed),
        all_stages: all,
    }
}

/// The summary as the demo prints it at the end.
pub fn print_summary(s: &Summary) {
    println!();
    println!("summary after {} s:", s.seconds);
    println!(
        "  telemetry   {}",
        s.rules
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !s.rules_silent.is_empty() {
        println!(
            "              no messages yet: {}",
            s.rules_silent.join(", ")
        );
    }
    println!(
        "  detection   {} requested, {} answered: {}",
        s.detections_requested,
        s.detections_answered,
        s.answers_by_source
            .iter()
            .map(|(k, v)| format!("{v} by the {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  commands    {} cloud commands delivered onto the robot's topics",
        s.commands_delivered
    );
    println!(
        "  breaker     opened {} time(s), closed {} time(s)",
        s.breaker_opened, s.breaker_closed
    );
    println!(
        "  updates     committed {:?}, rolled back {:?}",
        s.ota_committed, s.ota_rolled_back
    );
    println!(
        "  {}",
        if s.all_stages {
            "every stage happened: telemetry, commands, cloud and local detections, breaker open and closed, an update committed and one rolled back"
        } else {
            "not every stage happened yet (run longer, or see the log)"
        }
    );
    println!("summary-json {}", json!(s));
}
