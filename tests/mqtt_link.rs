//! The cloud link against a real mosquitto: connection profiles, store-and-forward
//! across a broker restart, outbox bounds and policies, packet size limit, MQTT 5.

mod support;

use std::path::Path;
use std::time::Duration;

use edge_agent::config::{AgentConfig, Settings};
use edge_agent::mqtt::link::probe;
use edge_agent::mqtt::outbox::Outbox;
use edge_agent::mqtt::{self, Failure, Message, Props, PublishError, QoS, ShutdownPolicy};
use support::mosquitto::{ready_sub, ready_sub_probing, Mosquitto, Options, Sub};
use tokio_util::sync::CancellationToken;

fn settings(state: &Path, port: u16, mqtt_extra: &str, extra: &str) -> Settings {
    let text = format!(
        r#"state_dir = "{}"
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
{extra}
"#,
        state.display()
    );
    AgentConfig::parse(&text, "test.toml")
        .unwrap()
        .validate()
        .unwrap()
}

struct Running {
    handle: mqtt::LinkHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(s: &Settings) -> Running {
    let outbox = Outbox::open(&s.outbox).unwrap();
    let (link, handle) = mqtt::link(s.link.clone(), outbox, s.outbox.sync_interval);
    let stop = CancellationToken::new();
    let task = tokio::spawn(link.run(stop.clone(), ShutdownPolicy::default()));
    Running { handle, stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    async fn wait_up(&self) {
        let mut st = self.handle.state();
        wait_until("the first connection", Duration::from_secs(10), || {
            *st.borrow_and_update() == mqtt::LinkState::Up
        })
        .await;
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_each_profile_and_reports_bad_credentials() {
    let broker = Mosquitto::start(Options {
        users: vec![("robot".into(), "s3cret-pass".into())],
        tls: true,
        ..Options::default()
    });
    let pki = broker.pki.as_ref().unwrap();
    let state = tempfile::tempdir().unwrap();
    let t = Duration::from_secs(5);

    // Plain with user name and password.
    let s = settings(
        state.path(),
        broker.port,
        "username = \"robot\"\npassword = \"s3cret-pass\"",
        "",
    );
    probe(&s.link, t).await.expect("plain with password");
    // Wrong password: refused, and said so.
    let s = settings(
        state.path(),
        broker.port,
        "username = \"robot\"\npassword = \"wrong-pass\"",
        "",
    );
    let e = probe(&s.link, t).await.unwrap_err();
    assert!(matches!(e, Failure::Auth(_)), "{e:?}");
    assert!(e.to_string().contains("refused the credentials"), "{e}");

    // TLS with server verification against the test CA.
    let tls = |port: u16, extra: &str| {
        format!(
            "profile = \"tls\"\nport = {port}\nhost = \"localhost\"\n[mqtt.tls]\nca_file = \"{}\"\n{extra}",
            pki.ca.display()
        )
    };
    let text = |mqtt: String| {
        format!(
            "state_dir = \"{}\"\n[device]\nproduct_key = \"pk1\"\ndevice_name = \"robot-7\"\n[mqtt]\nkeep_alive = \"5s\"\nconnect_timeout = \"2s\"\n{mqtt}\n",
            state.path().display()
        )
    };
    let s = AgentConfig::parse(&text(tls(broker.tls_port, "")), "t")
        .unwrap()
        .validate()
        .unwrap();
    probe(&s.link, t)
        .await
        .expect("TLS with server verification");
    // TLS with a client certificate (what AWS IoT Core needs).
    let s = AgentConfig::parse(
        &text(tls(
            broker.mtls_port,
            &format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
                pki.client_cert.display(),
                pki.client_key.display()
            ),
        )),
        "t",
    )
    .unwrap()
    .validate()
    .unwrap();
    probe(&s.link, t)
        .await
        .expect("TLS with client certificate");
    // The same listener without a client certificate is refused.
    let s = AgentConfig::parse(&text(tls(broker.mtls_port, "")), "t")
        .unwrap()
        .validate()
        .unwrap();
    assert!(probe(&s.link, t).await.is_err());
    // A CA that did not sign the broker's certificate: a TLS failure naming the cause.
    let wrong = format!(
        "profile = \"tls\"\nport = {}\nhost = \"localhost\"\n[mqtt.tls]\nca_file = \"{}\"\n",
        broker.tls_port,
        pki.other_ca.display()
    );
    let s = AgentConfig::parse(&text(wrong), "t")
        .unwrap()
        .validate()
        .unwrap();
    let e = probe(&s.link, t).await.unwrap_err();
    assert!(matches!(e, Failure::Tls(_)), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // With bad credentials the link keeps retrying with backoff, and counts it.
    let s = settings(
        state.path(),
        broker.port,
        "username = \"robot\"\npassword = \"wrong-pass\"",
        "",
    );
    let r = start(&s);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snap = r.handle.stats().snapshot();
    assert!(!snap.connected);
    // 50ms doubling to a 300ms cap (with jitter): several attempts, not hundreds.
    assert!(
        (3..=40).contains(&snap.connect_failures),
        "{}",
        snap.connect_failures
    );
    r.stop().await;
}

#[test]
fn aliyun_signature_matches_an_independent_hmac() {
    let ts = 1_763_788_813_250u64;
    let ours = edge_agent::mqtt::auth::aliyun_sign(
        "a1B2c3D4e5F",
        "picker-07",
        "picker-07",
        "Zx9ySecretValue",
        ts,
        true,
    );
    let py = support::run_py(
        "aliyun_sign.py",
        &[
            "a1B2c3D4e5F",
            "picker-07",
            "picker-07",
            "Zx9ySecretValue",
            &ts.to_string(),
        ],
    );
    let mut lines = py.lines();
    assert_eq!(Some(ours.client_id.as_str()), lines.next());
    assert_eq!(ours.username.as_deref(), lines.next());
    assert_eq!(ours.password.as_deref(), lines.next());
}

fn numbers(lines: &[String], topic: &str) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(topic)?.trim().parse().ok())
        .collect()
}

/// Every number 1..=n appears, and the first appearances are in order.
fn assert_complete_in_order(got: &[u64], n: u64) {
    let mut seen = std::collections::HashSet::new();
    let mut firsts = Vec::new();
    for &x in got {
        if seen.insert(x) {
            firsts.push(x);
        }
    }
    assert_eq!(firsts.len() as u64, n, "{} distinct of {n}", firsts.len());
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "first deliveries out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_held_while_the_broker_is_down_arrive_in_order() {
    let mut broker = Mosquitto::start(Options {
        persistence: true,
        ..Options::default()
    });
    let sub = ready_sub(
        broker.port,
        "t/#",
        "t/probe",
        &["-q", "1", "-c", "-i", "test-sub"],
    );
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), broker.port, "", "");
    let r = start(&s);
    r.wait_up().await;

    broker.stop();
    wait_until("the link to notice", Duration::from_secs(10), || {
        !r.handle.stats().snapshot().connected
    })
    .await;
    for n in 1..=10_000u64 {
        r.handle
            .publish(
                Message::new("t/data", n.to_string(), QoS::AtLeastOnce),
                "telemetry",
            )
            .await
            .unwrap();
    }
    wait_until("all held", Duration::from_secs(5), || {
        r.handle.stats().snapshot().held >= 10_000
    })
    .await;
    broker.start_again();
    tokio::task::spawn_blocking(move || {
        let lines = sub.wait_for("10,000 messages", Duration::from_secs(60), |l| {
            let n = numbers(l, "t/data ");
            n.iter().collect::<std::collections::HashSet<_>>().len() >= 10_000
        });
        assert_complete_in_order(&numbers(&lines, "t/data "), 10_000);
    })
    .await
    .unwrap();
    r.handle.drained().await.unwrap();
    let snap = r.handle.stats().snapshot();
    assert_eq!(snap.held, 0);
    assert!(snap.reconnects >= 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_bounds_and_policies_hold_and_are_counted() {
    let state = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(Options::default());
    let port = broker.port;
    broker.stop();
    let classes = r#"
[outbox.classes.small]
max_bytes = "64KiB"
max_age = "1h"
policy = "drop-oldest"
[outbox.classes.latest]
max_bytes = "64KiB"
max_age = "1h"
policy = "keep-latest"
[outbox.classes.must]
max_bytes = "64KiB"
max_age = "1h"
policy = "refuse"
"#;
    let s = settings(state.path(), port, "", classes);
    let r = start(&s);
    let payload = "x".repeat(200);
    for n in 0..1000u32 {
        r.handle
            .publish(
                Message::new("b/small", format!("{n:05}{payload}"), QoS::AtLeastOnce),
                "small",
            )
            .await
            .unwrap();
        r.handle
            .publish(
                Message::new(
                    format!("b/latest/{}", n % 3),
                    format!("{n:05}"),
                    QoS::AtLeastOnce,
                ),
                "latest",
            )
            .await
            .unwrap();
    }
    let mut accepted = 0;
    let mut refused = 0;
    for n in 0..1000u32 {
        match r
            .handle
            .publish(
                Message::new("b/must", format!("{n:05}{payload}"), QoS::AtLeastOnce),
                "must",
            )
            .await
        {
            Ok(()) => accepted += 1,
            Err(PublishError::Outbox(e)) => {
                assert!(e.to_string().contains("class 'must' is full"), "{e}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
    // The link takes what was queued into the outbox; wait until all 3000 are counted
    // (the counters are a snapshot taken at each sync, so one may show a moment when
    // the held messages were all in but not yet every refusal).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let snap = loop {
        let snap = r.handle.stats().snapshot();
        let c = |n: &str| snap.outbox.iter().find(|c| c.class == n).unwrap().clone();
        let small = c("small");
        let latest = c("latest");
        let must = c("must");
        if small.counters.dropped_full + small.held == 1000
            && latest.held + latest.counters.superseded == 1000
            && must.held == accepted
            && must.counters.refused == refused
            || std::time::Instant::now() > deadline
        {
            break snap;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let class = |n: &str| snap.outbox.iter().find(|c| c.class == n).unwrap().clone();
    assert!(class("small").held_bytes <= 64 * 1024);
    assert_eq!(
        class("small").counters.dropped_full + class("small").held,
        1000
    );
    assert_eq!(class("latest").held, 3);
    assert_eq!(class("latest").counters.superseded, 997);
    assert_eq!(class("must").counters.refused, refused);
    assert_eq!(class("must").held, accepted);

    // Once the broker is back, exactly what was kept arrives.
    broker.start_again();
    let sub = Sub::start(port, "b/#", &["-q", "1"]);
    // The link may have delivered before the subscriber came: wait for drain, then compare counts.
    r.handle.drained().await.unwrap();
    drop(sub);
    let snap = r.handle.stats().snapshot();
    assert_eq!(snap.held, 0);
    assert!(snap.acked >= accepted + 3);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_packet_limit_is_refused_with_a_counter() {
    let broker = Mosquitto::start(Options::default());
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), broker.port, "max_packet_size = \"4KiB\"", "");
    let r = start(&s);
    let big = Message::new("t/big", vec![b'x'; 5000], QoS::AtLeastOnce);
    let e = r.handle.publish(big, "telemetry").await.unwrap_err();
    assert!(
        matches!(e, PublishError::TooLarge { limit: 4096, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("mqtt.max_packet_size = 4096"), "{e}");
    assert_eq!(r.handle.stats().snapshot().dropped_too_large, 1);
    r.handle
        .publish(
            Message::new("t/small", vec![b'x'; 3000], QoS::AtLeastOnce),
            "telemetry",
        )
        .await
        .unwrap();
    r.handle.drained().await.unwrap();
    r.stop().await;
}

/// An MQTT 5 broker may take a message and refuse to deliver it (here its ACL, with
/// PUBACK "not authorized"). Sending it again would be refused again, so the link
/// counts it as done and goes on: the connection stays up and what follows arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_a_message_the_broker_refuses_does_not_block_the_rest() {
    let broker = Mosquitto::start(Options {
        acl: Some("topic readwrite ok/#\n".into()),
        // Without queue limits, mosquitto 2.0.11 drops a client right after refusing
        // it a QoS 1 PUBLISH ("Bad socket read/write").
        default_limits: true,
        ..Options::default()
    });
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), broker.port, "protocol = \"5\"", "");
    let sub = ready_sub(broker.port, "ok/#", "ok/probe", &["-q", "1"]);
    let r = start(&s);
    r.wait_up().await;
    for n in 1..=20u64 {
        let topic = if n % 2 == 0 { "ok/data" } else { "denied/data" };
        r.handle
            .publish(
                Message::new(topic, n.to_string(), QoS::AtLeastOnce),
                "telemetry",
            )
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), r.handle.drained())
        .await
        .expect("the outbox drains although half of it is refused")
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let lines = sub.wait_for("the allowed messages", Duration::from_secs(10), |l| {
            numbers(l, "ok/data ").len() >= 10
        });
        assert_eq!(
            numbers(&lines, "ok/data "),
            (1..=10).map(|n| n * 2).collect::<Vec<_>>()
        );
    })
    .await
    .unwrap();
    let snap = r.handle.stats().snapshot();
    assert_eq!(
        snap.reconnects, 0,
        "the refusals broke the connection: {snap:?}"
    );
    r.stop().await;
}

/// An MQTT 5 broker announces a packet limit below the agent's own. A message over it
/// would make the broker close the connection, and the outbox would send it again
/// after every reconnect; the link drops it instead, and what follows arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_a_message_over_the_brokers_packet_limit_does_not_block_the_rest() {
    let broker = Mosquitto::start(Options {
        max_packet_size: 2000,
        ..Options::default()
    });
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), broker.port, "protocol = \"5\"", "");
    let sub = ready_sub(broker.port, "big/#", "big/probe", &["-q", "1"]);
    let r = start(&s);
    r.wait_up().await;
    for body in ["x".repeat(5000), "small-1".into(), "small-2".into()] {
        r.handle
            .publish(
                Message::new("big/data", body, QoS::AtLeastOnce),
                "telemetry",
            )
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), r.handle.drained())
        .await
        .expect("the outbox drains although one message is too large for the broker")
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let lines = sub.wait_for("the small messages", Duration::from_secs(10), |l| {
            l.iter().filter(|x| x.starts_with("big/data ")).count() >= 2
        });
        let got: Vec<&String> = lines
            .iter()
            .filter(|x| x.starts_with("big/data "))
            .collect();
        assert_eq!(got, ["big/data small-1", "big/data small-2"]);
    })
    .await
    .unwrap();
    let snap = r.handle.stats().snapshot();
    assert_eq!(
        snap.reconnects, 0,
        "the large message broke the connection: {snap:?}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_a_broker_that_allows_only_qos0_gets_qos0_and_the_link_stays_up() {
    let broker = Mosquitto::start(Options {
        max_qos: Some(0),
        ..Options::default()
    });
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), broker.port, "protocol = \"5\"", "");
    // The usual readiness probe is QoS 1, which this broker refuses.
    let sub = ready_sub_probing(broker.port, "q/#", "q/probe", &[], "0");
    let r = start(&s);
    r.wait_up().await;
    for i in 0..5 {
        r.handle
            .publish(
                Message::new("q/data", format!("m{i}"), QoS::AtLeastOnce),
                "telemetry",
            )
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), r.handle.drained())
        .await
        .expect("the outbox drains on a broker that allows only QoS 0")
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let lines = sub.wait_for("five messages", Duration::from_secs(10), |l| {
            l.iter().filter(|x| x.starts_with("q/data ")).count() >= 5
        });
        let got: Vec<&String> = lines.iter().filter(|x| x.starts_with("q/data ")).collect();
        assert_eq!(
            got,
            [
                "q/data m0",
                "q/data m1",
                "q/data m2",
                "q/data m3",
                "q/data m4"
            ]
        );
    })
    .await
    .unwrap();
    let snap = r.handle.stats().snapshot();
    assert_eq!(
        snap.reconnects, 0,
        "QoS 1 broke the connection to a QoS 0 broker: {snap:?}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_carries_content_type_and_commands_come_back() {
    let broker = Mosquitto::start(Options::default());
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), broker.port, "protocol = \"5\"", "");
    let sub = ready_sub(
        broker.port,
        "img/#",
        "img/probe",
        &["-V", "5", "-F", "%t %C %p", "-q", "1"],
    );
    let r = start(&s);
    let mut cmds = r
        .handle
        .subscribe("/pk1/robot-7/user/cmd/#", QoS::AtLeastOnce, 16)
        .await
        .unwrap();
    let mut m = Message::new("img/cam", "jpegbytes", QoS::AtLeastOnce);
    m.props = Some(Box::new(Props {
        content_type: Some("image/jpeg".into()),
        user: vec![],
        ..Props::default()
    }));
    r.handle.publish(m, "telemetry").await.unwrap();
    tokio::task::spawn_blocking(move || {
        sub.wait_for(
            "the image with its content type",
            Duration::from_secs(10),
            |l| l.iter().any(|x| x == "img/cam image/jpeg jpegbytes"),
        );
    })
    .await
    .unwrap();
    let port = broker.port;
    // A cloud command arrives on the subscription (retry until the SUBSCRIBE is active).
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            support::mosquitto::publish(
                port,
                "/pk1/robot-7/user/cmd/arm",
                "{\"stop\":true}",
                &["-q", "1"],
            );
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), cmds.recv()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("command received");
    assert_eq!(got.topic, "/pk1/robot-7/user/cmd/arm");
    assert_eq!(&got.payload[..], b"{\"stop\":true}");
    r.stop().await;
}
