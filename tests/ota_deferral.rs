//! The switch waits while the robot is busy (a detection in progress), reports why, and
//! goes ahead when the robot is idle again or the configured deadline has passed.
//! The installer runs in-process; packages come from a real HTTP server.

mod support;

use std::time::Duration;

use edge_agent::config::DeviceConfig;
use edge_agent::ota::config::OtaConfig;
use edge_agent::ota::installer::{Installer, OtaEvent};
use edge_agent::ota::machine::{Hash, Job, Origin};
use support::ota::{make_package, HttpServer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn installer(dir: &std::path::Path, busy_deadline: &str) -> Installer {
    let cfg: OtaConfig = toml::from_str(&format!(
        "dir = \"{}\"\nallow_http = true\nbusy_deadline = \"{busy_deadline}\"\n",
        dir.display()
    ))
    .unwrap();
    let device = DeviceConfig {
        product_key: "pk1".into(),
        device_name: "robot-7".into(),
    };
    let mut inst = Installer::open(cfg.resolve(dir, &device).unwrap()).unwrap();
    inst.acquire().unwrap();
    inst
}

fn job(version: &str, url: String, sha256: &str) -> Job {
    Job {
        origin: Origin::Http,
        module: "detector".into(),
        version: version.into(),
        url,
        size: None,
        hash: Some(Hash::Sha256(sha256.into())),
        signature: None,
        force: false,
        oss: None,
        full: None,
    }
}

async fn next_event(rx: &mut mpsc::Receiver<OtaEvent>, what: &str) -> OtaEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} event"))
        .expect("events closed")
}

/// Events until one matches `pred`.
async fn wait_event(
    rx: &mut mpsc::Receiver<OtaEvent>,
    what: &str,
    pred: impl Fn(&OtaEvent) -> bool,
) -> OtaEvent {
    loop {
        let e = next_event(rx, what).await;
        if pred(&e) {
            return e;
        }
    }
}

fn active(dir: &std::path::Path) -> String {
    std::fs::read_link(dir.join("current"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_waits_for_an_idle_robot_or_the_deadline() {
    let www = tempfile::tempdir().unwrap();
    let srv = HttpServer::start(www.path());
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("ota");
    let files = |tag: &str| vec![("model/w.bin", tag.repeat(100).into_bytes())];
    let packs: Vec<_> = ["1.0.0", "2.0.0", "3.0.0"]
        .iter()
        .map(|v| make_package(www.path(), v, &files(v), None, None))
        .collect();
    let url = |i: usize| srv.url(packs[i].package.file_name().unwrap().to_str().unwrap());
    let cancel = CancellationToken::new();

    // 1.0.0 with nobody busy.
    let mut inst = installer(&dir, "30s");
    inst.install(job("1.0.0", url(0), &packs[0].sha256), true, &cancel)
        .await
        .unwrap();
    // Its lock goes with it.
    drop(inst);
    let v1_link = active(&dir);

    // 2.0.0 while a detection runs: deferred with its reason, switched when idle.
    let (busy_tx, busy_rx) = watch::channel(true);
    let (tx, mut rx) = mpsc::channel(256);
    let mut inst = installer(&dir, "30s").with_busy(busy_rx).with_events(tx);
    let j2 = job("2.0.0", url(1), &packs[1].sha256);
    let run = tokio::spawn(async move {
        let r = inst.install(j2, true, &CancellationToken::new()).await;
        (inst, r)
    });
    match wait_event(&mut rx, "deferred", |e| {
        matches!(e, OtaEvent::Deferred { .. })
    })
    .await
    {
        OtaEvent::Deferred { reason, job } => {
            assert_eq!(job.version, "2.0.0");
            assert!(reason.contains("busy"), "{reason}");
        }
        _ => unreachable!(),
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(active(&dir), v1_link, "switched while the robot was busy");
    assert!(!run.is_finished());
    busy_tx.send(false).unwrap();
    wait_event(&mut rx, "switched", |e| {
        matches!(e, OtaEvent::Switched { .. })
    })
    .await;
    let (_, r) = run.await.unwrap();
    r.unwrap();
    assert_ne!(active(&dir), v1_link);

    // 3.0.0 while the robot stays busy: the switch goes ahead after the deadline.
    let v2_link = active(&dir);
    let (_busy_tx, busy_rx) = watch::channel(true);
    let (tx, mut rx) = mpsc::channel(256);
    let mut inst = installer(&dir, "1s").with_busy(busy_rx).with_events(tx);
    let started = std::time::Instant::now();
    let j3 = job("3.0.0", url(2), &packs[2].sha256);
    let run = tokio::spawn(async move { inst.install(j3, true, &CancellationToken::new()).await });
    wait_event(&mut rx, "deferred", |e| {
        matches!(e, OtaEvent::Deferred { .. })
    })
    .await;
    assert_eq!(active(&dir), v2_link);
    wait_event(&mut rx, "switched", |e| {
        matches!(e, OtaEvent::Switched { .. })
    })
    .await;
    run.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_ne!(active(&dir), v2_link);
}
