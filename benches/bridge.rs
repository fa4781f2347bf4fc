//! Bridge benchmark: Cyclone DDS (a ROS 2 publisher in C, benches/cyclone_pub.c) -> the
//! agent (its release binary, as a process) -> mosquitto -> a subscriber, next to a bare
//! MQTT publisher (rumqttc) -> the same mosquitto, in the same run. Run it with
//! `scripts/bench-bridge.sh`.
//!
//! Reports for ~100-byte messages: delivered msgs/s (the steady rate, between the 10th
//! and the 90th percentile of arrivals) and loss at full speed, at 0.8 of the bare
//! publisher's rate (the target) and at 0.9 of it (headroom), with the bare rate
//! measured before and after the 0.8 phase; loss at 10,000 msgs/s; p50/p99
//! end-to-end latency and the agent's CPU at 1,000 msgs/s; the agent's idle RSS; and for
//! 640x480 rgb8 images at 30 Hz to JPEG, frames delivered, the agent's CPU and its RSS.
//!
//! With `EDGE_AGENT_BENCH_TRANSPORT=rcl` the agent (then an rcl build, `EDGE_AGENT_BIN`)
//! runs with `transport = "rcl"` on rmw_cyclonedds_cpp (or the `RMW_IMPLEMENTATION` given)
//! on the loopback interface; everything else is the same.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edge_agent::ros::codec::{self, EncodeOptions};
use edge_agent::ros::transport::dds::{DdsOptions, DdsTransport};
use edge_agent::ros::transport::{Qos, Transport};
use edge_agent::ros::{Registry, TypeName};

/// The ROS domain of this run: `EDGE_AGENT_BENCH_DOMAIN`, else one drawn at random, so
/// that a run does not meet another program (or another run) on a fixed domain.
fn domain() -> u16 {
    static D: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *D.get_or_init(|| {
        std::env::var("EDGE_AGENT_BENCH_DOMAIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| fastrand::u16(150..=230))
    })
}
/// Messages in each sustained-rate phase: a few seconds each, so that the queueing of
/// the last messages (tens of ms at these rates) does not count against the rate.
const SUSTAINED: usize = 150_000;
const LOOPBACK: &str = r#"<CycloneDDS><Domain><General><Interfaces><NetworkInterface name="lo" multicast="true"/></Interfaces><AllowMulticast>true</AllowMulticast></General></Domain></CycloneDDS>"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / clk_tck()
}

/// One line of /proc/PID/status in MB: `VmRSS`, `RssAnon` or `RssFile`.
fn status_mb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Proportional set size in MB (/proc/PID/smaps_rollup): shared pages counted in
/// proportion to how many processes map them.
fn pss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS")
}

/// Arrivals on one MQTT topic: (arrival ns, send ns from the payload).
#[derive(Default)]
struct Arrivals(Mutex<Vec<(u128, Option<u128>)>>);

impl Arrivals {
    fn take(&self) -> Vec<(u128, Option<u128>)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn sent_ns(p: &[u8]) -> Option<u128> {
    let s = std::str::from_utf8(p).ok()?;
    let s = match s.find("\"data\":\"") {
        Some(i) => &s[i + 8..],
        None => s,
    };
    s.split(' ').next()?.parse().ok()
}

async fn subscriber(port: u16, agent: Arc<Arrivals>, bare: Arc<Arrivals>, images: Arc<Arrivals>) {
    let mut o = rumqttc::MqttOptions::new("bench-sub", "127.0.0.1", port);
    o.set_max_packet_size(16 << 20, 16 << 20)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    client
        .subscribe("bench/#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        match el.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                let now = now_ns();
                let target = match p.topic.as_str() {
                    "bench/agent" => &agent,
                    "bench/bare" => &bare,
                    _ => &images,
                };
                target.0.lock().unwrap().push((now, sent_ns(&p.payload)));
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[derive(Debug)]
struct Phase {
    sent: usize,
    delivered: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_pct: f64,
    /// CPU per message sent, µs: the agent, the DDS publisher, the broker, this process
    /// (the subscriber; in the bare phases also the bare publisher).
    us: [f64; 4],
}

/// The processes whose CPU is counted, and the DDS publisher's program.
struct Procs {
    agent: u32,
    broker: u32,
    publisher: PathBuf,
}

impl Procs {
    /// CPU seconds so far: agent, broker, this process.
    fn snap(&self) -> [f64; 3] {
        [
            cpu_secs(self.agent),
            cpu_secs(self.broker),
            cpu_secs(std::process::id()),
        ]
    }
}

/// CPU per message, µs, between two snapshots, with the publisher's seconds (NaN when
/// it ran in this process).
fn per_message(a: [f64; 3], b: [f64; 3], publisher: f64, n: usize) -> [f64; 4] {
    let us = |s: f64| 1e6 * s / n as f64;
    [
        us(b[0] - a[0]),
        us(publisher),
        us(b[1] - a[1]),
        us(b[2] - a[2]),
    ]
}

fn summarize(sent: usize, arr: Vec<(u128, Option<u128>)>, cpu: f64, secs: f64) -> Phase {
    let mut lat: Vec<f64> = arr
        .iter()
        .filter_map(|(r, s)| s.map(|s| (*r as f64 - s as f64) / 1e6))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    // The steady rate: arrivals between the 10th and the 90th percentile, so neither the
    // start nor the queueing of the last messages counts. Arrivals are in order.
    let (first, last) = (arr.len() / 10, arr.len() * 9 / 10);
    let rate = match (arr.get(first), arr.get(last)) {
        (Some(a), Some(b)) if last > first && b.0 > a.0 => {
            (last - first) as f64 / ((b.0 - a.0) as f64 / 1e9)
        }
        _ => f64::NAN,
    };
    let q = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Phase {
        sent,
        delivered: arr.len(),
        rate,
        p50: q(0.5),
        p99: q(0.99),
        cpu_pct: 100.0 * cpu / secs,
        us: [f64::NAN; 4],
    }
}

async fn wait_for(a: &Arrivals, n: usize, quiet: Duration) {
    let mut last = 0;
    let mut since = Instant::now();
    loop {
        let c = a.len();
        if c >= n {
            return;
        }
        if c != last {
            last = c;
            since = Instant::now();
        } else if since.elapsed() > quiet {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes through the agent with the Cyclone publisher process.
async fn via_agent(procs: &Procs, arrivals: &Arrivals, n: usize, rate: u32) -> Phase {
    arrivals.take();
    let before = procs.snap();
    let out = tokio::process::Command::new(&procs.publisher)
        .args([
            "--domain",
            &domain().to_string(),
            "--topic",
            "/bench/small",
            "--count",
            &n.to_string(),
        ])
        .args(["--rate", &rate.to_string(), "--size", "100"])
        .env("CYCLONEDDS_URI", LOOPBACK)
        .stdout(Stdio::piped())
        .output()
        .await
        .expect("run the Cyclone DDS publisher (benches/cyclone_pub.c)");
    if !out.status.success() {
        panic!("the Cyclone DDS publisher failed ({})", out.status);
    }
    let printed = String::from_utf8_lossy(&out.stdout);
    let mut figures = printed
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    let pub_secs = figures.next().unwrap_or(f64::NAN);
    let pub_cpu = figures.next().unwrap_or(f64::NAN);
    wait_for(arrivals, n, Duration::from_secs(3)).await;
    let after = procs.snap();
    let mut ph = summarize(n, arrivals.take(), after[0] - before[0], pub_secs);
    ph.us = per_message(before, after, pub_cpu, n);
    println!("  (Cyclone publisher: {n} written in {pub_secs:.2} s, {:.0} msgs/s; agent delivered {:.0} msgs/s)", n as f64 / pub_secs, ph.rate);
    ph
}

/// The baseline: a bare rumqttc publisher, QoS 1, paced the same way.
async fn via_bare(procs: &Procs, port: u16, arrivals: &Arrivals, n: usize, rate: u32) -> Phase {
    arrivals.take();
    let before = procs.snap();
    let mut o = rumqttc::MqttOptions::new("bench-bare", "127.0.0.1", port);
    o.set_inflight(1000).set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
    let driver = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let pad: String = std::iter::repeat_n('x', 70).collect();
    let start = Instant::now();
    for i in 0..n {
        if rate > 0 {
            let target = start + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(target.into()).await;
        }
        let payload = format!("{} {i} {pad}", now_ns());
        client
            .publish("bench/bare", rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    let secs = start.elapsed().as_secs_f64();
    wait_for(arrivals, n, Duration::from_secs(3)).await;
    driver.abort();
    let mut ph = summarize(n, arrivals.take(), 0.0, secs);
    ph.us = per_message(before, procs.snap(), f64::NAN, n);
    ph
}

/// Builds the Cyclone DDS publisher (benches/cyclone_pub.c) into target/bench-bridge.
fn build_publisher() -> PathBuf {
    let dir = repo().join("target/bench-bridge");
    std::fs::create_dir_all(&dir).expect("create target/bench-bridge");
    let bin = dir.join("cyclone_pub");
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(repo().join("benches/cyclone_pub.c"))
        .arg("-lddsc")
        .output()
        .expect("gcc is not installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "cannot build benches/cyclone_pub.c; it needs gcc and Cyclone DDS 0.10's headers \
         (cyclonedds-dev, installed by scripts/test.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The transport under test: `dds` (default) or `rcl`.
fn transport() -> String {
    std::env::var("EDGE_AGENT_BENCH_TRANSPORT").unwrap_or_else(|_| "dds".into())
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    std::fs::write(
        dir.join("rules.toml"),
        r#"
[[ros_to_mqtt]]
name = "small"
ros_topic = "/bench/small"
ros_type = "std_msgs/msg/String"
qos = { reliability = "reliable", depth = 1000 }
mqtt_topic = "bench/agent"
mqtt_qos = 1

[[ros_to_mqtt]]
name = "camera"
ros_topic = "/bench/image"
ros_type = "sensor_msgs/msg/Image"
qos = { reliability = "reliable", depth = 5 }
mqtt_topic = "bench/image"
mqtt_qos = 0
image = { format = "jpeg", quality = 80 }
"#,
    )
    .expect("rules");
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}/state\"\n[device]\nproduct_key = \"bench\"\ndevice_name = \"robot\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nwindow = 1000\n[device_log]\nenabled = false\n[ros]\ndomain_id = {}\n{}\n[bridge]\nmappings = [\"rules.toml\"]\nhealth_interval = \"1h\"\n[log]\nlevel = \"warn\"\n",
            dir.display(),
            domain(),
            if transport() == "rcl" {
                "transport = \"rcl\""
            } else {
                "only_networks = [\"127.0.0.1\"]"
            }
        ),
    )
    .expect("config");
    cfg
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let conf = dir.path().join("m.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n")).expect("conf");
    let mosq = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is not installed (scripts/test.sh installs it)");
    let broker = Kill(
        Command::new(mosq)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let cfg = write_config(dir.path(), port);
    // The release binary (as shipped) when the script built it, else the bench build.
    let bin = std::env::var("EDGE_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_edge-agent").to_owned());
    println!("agent binary: {bin}");
    println!("transport: {}", transport());
    let agent = Kill(
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&cfg)
            // The rcl transport takes its domain and interfaces from the RMW's environment.
            .env("ROS_DOMAIN_ID", domain().to_string())
            .env("CYCLONEDDS_URI", LOOPBACK)
            .env(
                "RMW_IMPLEMENTATION",
                std::env::var("RMW_IMPLEMENTATION").unwrap_or_else(|_| "rmw_cyclonedds_cpp".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let pid = agent.0.id();
    let procs = Procs {
        agent: pid,
        broker: broker.0.id(),
        publisher: build_publisher(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle_rss = rss_mb(pid);
        let (idle_anon, idle_file) = (status_mb(pid, "RssAnon"), status_mb(pid, "RssFile"));
        let idle_pss = pss_mb(pid);
        let agent_arr = Arc::new(Arrivals::default());
        let bare_arr = Arc::new(Arrivals::default());
        let img_arr = Arc::new(Arrivals::default());
        tokio::spawn(subscriber(port, agent_arr.clone(), bare_arr.clone(), img_arr.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;

        let _ = via_agent(&procs, &agent_arr, 2000, 5000).await; // warm-up
        let _ = via_bare(&procs, port, &bare_arr, 2000, 5000).await;
        let full_bare = via_bare(&procs, port, &bare_arr, SUSTAINED, 0).await;
        let full_agent = via_agent(&procs, &agent_arr, 50_000, 0).await;
        // The target itself: the publisher paced at 0.8 of the bare rate just measured.
        let paced_rate = (0.8 * full_bare.rate) as u32;
        let paced = via_agent(&procs, &agent_arr, SUSTAINED, paced_rate).await;
        // The baseline again, to see how far the machine's load moved meanwhile.
        let bare_again = via_bare(&procs, port, &bare_arr, SUSTAINED, 0).await;
        // Headroom: the publisher paced at 0.9 of the first bare rate.
        let head_rate = (0.9 * full_bare.rate) as u32;
        let headroom = via_agent(&procs, &agent_arr, SUSTAINED, head_rate).await;
        let at10k = via_agent(&procs, &agent_arr, 30_000, 10_000).await;
        let k1_bare = via_bare(&procs, port, &bare_arr, 5000, 1000).await;
        let k1_agent = via_agent(&procs, &agent_arr, 5000, 1000).await;

        // Images at 30 Hz for 5 s, published over ROS 2 from this process.
        let mut reg = Registry::new();
        reg.add_bundled();
        let schema = reg.schema("sensor_msgs/msg/Image").expect("schema");
        let t = DdsTransport::start(&DdsOptions {
            domain_id: domain(),
            node_name: "bench_camera".into(),
            namespace: "/".into(),
            only_networks: vec!["127.0.0.1".parse().expect("ip")],
            distro: None,
            config_file: None,
        })
        .expect("transport");
        let mut q = Qos::ros_default();
        q.depth = 5;
        let p = t.publisher("/bench/image", &TypeName::parse("sensor_msgs/msg/Image").expect("t"), schema.clone(), q).expect("publisher");
        let (w, h) = (640usize, 480usize);
        let px: Vec<u8> = (0..w * h * 3).map(|i| ((i % 1920) as u32 * 7 / 3 + (i / 1920) as u32) as u8).collect();
        use base64::Engine as _;
        let v = serde_json::json!({"header":{"frame_id":"cam"},"height":h,"width":w,"encoding":"rgb8","step":w*3,
            "data": base64::engine::general_purpose::STANDARD.encode(&px)});
        let cdr = Bytes::from(codec::encode_value(&schema, &v, &EncodeOptions::default()).expect("encode"));
        for _ in 0..100 {
            if p.subscription_count() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        img_arr.take();
        let cpu0 = cpu_secs(pid);
        let start = Instant::now();
        for i in 0..150u32 {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / 30.0)).into()).await;
            p.publish(&cdr).expect("publish image");
        }
        let secs = start.elapsed().as_secs_f64();
        wait_for(&img_arr, 150, Duration::from_secs(2)).await;
        let img_cpu = 100.0 * (cpu_secs(pid) - cpu0) / secs;
        let frames = img_arr.take().len();
        let rss_after = rss_mb(pid);

        println!("bridge benchmark: ~100-byte std_msgs/String via Cyclone DDS -> edge-agent -> mosquitto (QoS 1), baseline a bare rumqttc publisher");
        println!("{:<30}{:>8}{:>10}{:>10}{:>9}{:>9}{:>11}", "case", "sent", "delivered", "msgs/s", "p50 ms", "p99 ms", "agent CPU");
        let paced_name = format!("agent, {paced_rate} msgs/s");
        let head_name = format!("agent, {head_rate} msgs/s");
        for (name, ph) in [("bare publisher, full speed", &full_bare), ("agent, full speed", &full_agent), (paced_name.as_str(), &paced), ("bare publisher again", &bare_again), (head_name.as_str(), &headroom), ("agent, 10,000 msgs/s", &at10k), ("bare publisher, 1,000 msgs/s", &k1_bare), ("agent, 1,000 msgs/s", &k1_agent)] {
            println!("{name:<30}{:>8}{:>10}{:>10.0}{:>9.2}{:>9.2}{:>10.1}%", ph.sent, ph.delivered, ph.rate, ph.p50, ph.p99, ph.cpu_pct);
        }
        println!();
        println!("CPU per message, µs: the agent, the DDS publisher (Cyclone's threads included), mosquitto, the bench process (the subscriber; in bare rows also the bare publisher)");
        println!("{:<30}{:>8}{:>11}{:>11}{:>8}{:>8}", "case", "agent", "publisher", "mosquitto", "bench", "total");
        for (name, ph) in [("bare publisher, full speed", &full_bare), (paced_name.as_str(), &paced), ("bare publisher again", &bare_again), (head_name.as_str(), &headroom), ("agent, 10,000 msgs/s", &at10k)] {
            let [a, p, m, b] = ph.us;
            let total = a + m + b + if p.is_nan() { 0.0 } else { p };
            println!("{name:<30}{a:>8.1}{p:>11.1}{m:>11.1}{b:>8.1}{total:>8.1}");
        }
        println!();
        println!("full speed: {:.2} of the bare publisher's rate; {} lost (the Cyclone publisher wrote faster than the agent bridges)", full_agent.rate / full_bare.rate, full_agent.sent - full_agent.delivered);
        println!("at 0.8 of the bare rate ({paced_rate} msgs/s offered): {:.2} of the bare rate delivered, {} lost (target >= 0.8, none lost)", paced.rate / full_bare.rate, paced.sent - paced.delivered);
        println!("the bare publisher again after that: {:.0} msgs/s ({:+.0}%); the paced delivery was {:.2} of it", bare_again.rate, 100.0 * (bare_again.rate / full_bare.rate - 1.0), paced.rate / bare_again.rate);
        println!("headroom, at 0.9 of the bare rate ({head_rate} msgs/s offered): {:.2} of the bare rate delivered, {} lost", headroom.rate / full_bare.rate, headroom.sent - headroom.delivered);
        println!("at 10,000 msgs/s: {} lost (target 0)", at10k.sent - at10k.delivered);
        println!("at 1,000 msgs/s: p99 {:.2} ms vs {:.2} ms bare: {:+.2} ms added (target <= 0.5); agent CPU {:.1}% of a core (C++ reference 13-18%)", k1_agent.p99, k1_bare.p99, k1_agent.p99 - k1_bare.p99, k1_agent.cpu_pct);
        println!("idle RSS {idle_rss:.1} MB (target <= 16.8 MB, the C++ mqtt_client's), of it {idle_anon:.1} MB anonymous (target <= 8 MB) and {idle_file:.1} MB file-backed; PSS {idle_pss:.1} MB; after the run {rss_after:.1} MB");
        println!("images 640x480 rgb8 at 30 Hz to JPEG: {frames}/150 delivered, agent CPU {img_cpu:.1}% of a core (target < 100%); agent RSS {rss_after:.1} MB with the camera topic bridged");
    });
    drop(agent);
}
