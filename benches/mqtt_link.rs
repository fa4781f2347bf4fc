//! Cloud link throughput and latency against a local mosquitto, next to a bare rumqttc
//! client doing the same in the same run (the baseline), plus the outbox's disk cost per
//! message. Run with `scripts/bench-mqtt.sh` (or `cargo bench --bench mqtt_link`).
//!
//! Each case publishes ~200-byte messages as fast as the publisher can, a separate
//! subscriber counts them and reads the send time embedded in each payload.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::config::AgentConfig;
use edge_agent::mqtt::outbox::Outbox;
use edge_agent::mqtt::{self, Message, QoS, ShutdownPolicy};
use tokio_util::sync::CancellationToken;

const PAYLOAD: usize = 200;

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker() -> Broker {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n"),
    )
    .expect("write config");
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "mosquitto is not installed: apt-get install mosquitto (or run scripts/test.sh once)",
        );
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Broker {
        child,
        port,
        _dir: dir,
    }
}

fn payload(n: u64, t0: Instant) -> Vec<u8> {
    let mut p = format!("{{\"n\":{n},\"t\":{},\"pad\":\"", t0.elapsed().as_nanos()).into_bytes();
    p.resize(PAYLOAD - 2, b'x');
    p.extend_from_slice(b"\"}");
    p
}

fn sent_at(p: &[u8]) -> Option<u128> {
    let s = std::str::from_utf8(p).ok()?;
    let i = s.find("\"t\":")? + 4;
    s[i..].split(',').next()?.parse().ok()
}

struct Result {
    received: u64,
    secs: f64,
    lat: Vec<u128>,
}

/// A subscriber on its own connection; returns once `n` messages arrived (or 60 s).
async fn subscriber(
    port: u16,
    topic: String,
    qos: rumqttc::QoS,
    n: u64,
    t0: Instant,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result {
    let mut o = rumqttc::MqttOptions::new(
        format!("bench-sub-{}", fastrand::u32(..)),
        "127.0.0.1",
        port,
    );
    o.set_max_packet_size(1 << 20, 1 << 20)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
    client.subscribe(&topic, qos).await.expect("subscribe");
    let mut ready = Some(ready);
    let mut received = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut lat = Vec::with_capacity(n as usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                received += 1;
                if let Some(t) = sent_at(&p.payload) {
                    lat.push(t0.elapsed().as_nanos().saturating_sub(t));
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let secs = first.map_or(0.0, |f| (last - f).as_secs_f64());
    Result {
        received,
        secs,
        lat,
    }
}

fn pct(v: &mut [u128], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1e6
}

async fn bare(port: u16, qos: rumqttc::QoS, n: u64, paced: bool) -> Result {
    let t0 = Instant::now();
    let topic = format!("bench/bare/{}", fastrand::u32(..));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sub = tokio::spawn(subscriber(port, topic.clone(), qos, n, t0, ready_tx));
    let _ = ready_rx.await;
    let mut o = rumqttc::MqttOptions::new(
        format!("bench-bare-{}", fastrand::u32(..)),
        "127.0.0.1",
        port,
    );
    o.set_inflight(100).set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let driver = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = s2.cancelled() => break,
                r = el.poll() => if r.is_err() { break },
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..n {
        if paced {
            tick.tick().await;
        }
        client
            .publish(&topic, qos, false, payload(i, t0))
            .await
            .expect("publish");
    }
    let r = sub.await.expect("subscriber");
    stop.cancel();
    let _ = driver.await;
    r
}

async fn ours(port: u16, qos: QoS, n: u64, paced: bool) -> Result {
    let state = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "state_dir = \"{}\"\n[device]\nproduct_key = \"pk\"\ndevice_name = \"bench\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nkeep_alive = \"30s\"\n",
        state.path().display()
    );
    let s = AgentConfig::parse(&text, "bench")
        .expect("config")
        .validate()
        .expect("valid");
    let outbox = Outbox::open(&s.outbox).expect("outbox");
    let (link, handle) = mqtt::link(s.link.clone(), outbox, s.outbox.sync_interval);
    let stop = CancellationToken::new();
    let task = tokio::spawn(link.run(stop.clone(), ShutdownPolicy::default()));
    let mut st = handle.state();
    while *st.borrow_and_update() != mqtt::LinkState::Up {
        let _ = st.changed().await;
    }
    let t0 = Instant::now();
    let topic = format!("bench/ours/{}", fastrand::u32(..));
    let rq = if qos == QoS::AtLeastOnce {
        rumqttc::QoS::AtLeastOnce
    } else {
        rumqttc::QoS::AtMostOnce
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sub = tokio::spawn(subscriber(port, topic.clone(), rq, n, t0, ready_tx));
    let _ = ready_rx.await;
    let topic: Arc<str> = Arc::from(topic.as_str());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..n {
        if paced {
            tick.tick().await;
        }
        let m = Message::new(topic.clone(), payload(i, t0), qos);
        handle
            .publish_nowait(m, "telemetry")
            .await
            .expect("publish");
    }
    let r = sub.await.expect("subscriber");
    stop.cancel();
    let _ = task.await;
    r
}

/// Bytes the outbox writes per message beyond the payload.
fn outbox_overhead(n: u64) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "state_dir = \"{}\"\n[device]\nproduct_key = \"pk\"\ndevice_name = \"bench\"\n[mqtt]\nhost = \"127.0.0.1\"\n",
        dir.path().display()
    );
    let s = AgentConfig::parse(&text, "bench")
        .expect("config")
        .validate()
        .expect("valid");
    let mut ob = Outbox::open(&s.outbox).expect("outbox");
    let c = ob.class_index("telemetry").expect("class");
    let t0 = Instant::now();
    for i in 0..n {
        let m = Message::new(
            "/sys/pk/bench/thing/event/property/post",
            payload(i, t0),
            QoS::AtLeastOnce,
        );
        ob.append(c, &m, 0).expect("append");
    }
    ob.sync(0).expect("sync");
    let disk: u64 = ob.stats().iter().map(|c| c.disk_bytes).sum();
    (disk as f64 - (n as usize * PAYLOAD) as f64) / n as f64
}

fn row(name: &str, n: u64, r: &mut Result) -> f64 {
    let rate = if r.secs > 0.0 {
        r.received as f64 / r.secs
    } else {
        f64::NAN
    };
    let p50 = pct(&mut r.lat, 0.5);
    let p99 = pct(&mut r.lat, 0.99);
    println!(
        "{name:<34}{:>9}/{n:<9}{rate:>12.0}{p50:>12.2}{p99:>12.2}",
        r.received
    );
    rate
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported here.
    let _ = std::env::args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let b = broker();
    let n0: u64 = std::env::var("BENCH_QOS0_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let n1: u64 = std::env::var("BENCH_QOS1_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    println!(
        "cloud link benchmark: {PAYLOAD}-byte messages, local mosquitto on port {}",
        b.port
    );
    println!(
        "{:<34}{:>19}{:>12}{:>12}{:>12}",
        "case", "received", "msgs/s", "p50 ms", "p99 ms"
    );
    let results = rt.block_on(async {
        println!("-- throughput: publish as fast as the publisher can");
        let mut b0 = bare(b.port, rumqttc::QoS::AtMostOnce, n0, false).await;
        let rb0 = row("bare rumqttc QoS 0", n0, &mut b0);
        let mut o0 = ours(b.port, QoS::AtMostOnce, n0, false).await;
        let ro0 = row("edge-agent link QoS 0", n0, &mut o0);
        let mut b1 = bare(b.port, rumqttc::QoS::AtLeastOnce, n1, false).await;
        let rb1 = row("bare rumqttc QoS 1", n1, &mut b1);
        let mut o1 = ours(b.port, QoS::AtLeastOnce, n1, false).await;
        let ro1 = row("edge-agent link QoS 1 (outbox)", n1, &mut o1);
        println!("-- latency: 1,000 messages/s for 3 s");
        for (name, q) in [("QoS 0", QoS::AtMostOnce), ("QoS 1", QoS::AtLeastOnce)] {
            let rq = if q == QoS::AtLeastOnce {
                rumqttc::QoS::AtLeastOnce
            } else {
                rumqttc::QoS::AtMostOnce
            };
            let mut base = bare(b.port, rq, 3000, true).await;
            row(&format!("bare rumqttc {name}"), 3000, &mut base);
            let mut o = ours(b.port, q, 3000, true).await;
            row(&format!("edge-agent link {name}"), 3000, &mut o);
        }
        (rb0, ro0, rb1, ro1, o0.received, o1.received)
    });
    let (rb0, ro0, rb1, ro1, got0, got1) = results;
    let overhead = outbox_overhead(10_000);
    println!();
    println!("QoS 0 through the link: {:.0}% of the bare client's rate (target >= 90%); {got0}/{n0} delivered (QoS 0 may drop)", 100.0 * ro0 / rb0);
    println!("QoS 1 through the durable outbox: {:.0}% of the bare QoS 1 rate (target >= 50%); {got1}/{n1} delivered", 100.0 * ro1 / rb1);
    println!("outbox disk overhead: {overhead:.1} bytes per message (target <= 64)");
}
