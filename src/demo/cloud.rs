//! The simulated cloud: an MQTT client on the demo broker that counts what the robot
//! sends, runs the detection service (the demo model on the JPEG it receives) and
//! answers in time, late, never or with an error on a fixed schedule, and pushes two
//! updates the Aliyun way — one that installs, one whose health check fails — served
//! from a small HTTP server of its own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use super::DemoState;
use crate::detect::local::LocalModel;
use crate::detect::yolo::PostParams;

/// How the cloud detector answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    InTime,
    Late,
    Never,
    Error,
}

impl Answer {
    pub fn label(self) -> &'static str {
        match self {
            Answer::InTime => "in time",
            Answer::Late => "late",
            Answer::Never => "never",
            Answer::Error => "error",
        }
    }
}

/// The answers, in turn, one per request: three good ones, then the cloud degrades
/// (late, never, an error: three failures in a row open the agent's breaker), then it
/// recovers.
pub const SCHEDULE: [Answer; 10] = [
    Answer::InTime,
    Answer::InTime,
    Answer::InTime,
    Answer::Late,
    Answer::Never,
    Answer::Error,
    Answer::InTime,
    Answer::InTime,
    Answer::InTime,
    Answer::InTime,
];

pub struct CloudPlan {
    pub port: u16,
    pub product_key: String,
    pub device_name: String,
    /// When the two updates are pushed, from the start.
    pub ota_at: [Duration; 2],
    pub work: PathBuf,
    pub model: PathBuf,
}

/// A tiny HTTP/1.1 server for the update packages (GET only, whole files).
async fn serve_files(dir: PathBuf, listener: tokio::net::TcpListener, stop: CancellationToken) {
    loop {
        let (mut sock, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
        };
        let dir = dir.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while got < buf.len() {
                match sock.read(&mut buf[got..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
                if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..got]).to_string();
            let path = head
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_owned();
            let file = (!path.contains("..")).then(|| dir.join(&path));
            match file.and_then(|f| std::fs::read(f).ok()) {
                Some(body) => {
                    let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\nConnection: close\r\n\r\n", body.len());
                    let _ = sock.write_all(h.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                }
                None => {
                    let _ = sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                }
            }
            let _ = sock.shutdown().await;
        });
    }
}

/// Builds the two update packages: 2.0.0 (the same detector, healthy) and 3.0.0 (its
/// health check exits with an error). Returns (version, file name, sha256).
fn make_packages(
    plan: &CloudPlan,
    www: &Path,
) -> anyhow::Result<Vec<(String, String, String, u64)>> {
    let mut out = Vec::new();
    for (version, healthy) in [("2.0.0", true), ("3.0.0", false)] {
        let src = plan.work.join(format!("pkg-{version}"));
        std::fs::create_dir_all(src.join("models"))?;
        std::fs::copy(&plan.model, src.join("models/detector.onnx"))?;
        std::fs::write(
            src.join("detector.toml"),
            format!("version = \"{version}\"\n"),
        )?;
        let hc = crate::ota::package::HealthCheck {
            command: if healthy {
                vec![
                    "sh".into(),
                    "-c".into(),
                    "test -f models/detector.onnx".into(),
                ]
            } else {
                vec![
                    "sh".into(),
                    "-c".into(),
                    "echo 'camera calibration missing' >&2; exit 3".into(),
                ]
            },
            timeout_s: 10,
        };
        let opts = crate::ota::package::PackOptions {
            name: "detector".into(),
            version: version.to_owned(),
            health_check: Some(hc),
            ..Default::default()
        };
        let p = crate::ota::package::pack(&src, &opts, www)?;
        let size = std::fs::metadata(&p.package)?.len();
        let name = p
            .package
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((version.to_owned(), name, p.sha256, size));
    }
    Ok(out)
}

pub async fn run(
    plan: CloudPlan,
    state: Arc<DemoState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let www = plan.work.join("www");
    std::fs::create_dir_all(&www)?;
    let packages = make_packages(&plan, &www)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_port = listener.local_addr()?.port();
    tokio::spawn(serve_files(www.clone(), listener, shutdown.clone()));

    // The cloud's detector: the demo model (it has a big GPU, the robot a small one).
    let onnx = crate::onnx::OnnxConfig::default();
    let model_path = plan.model.clone();
    let model = tokio::task::spawn_blocking(move || {
        let rt = crate::onnx::runtime(&onnx)?;
        LocalModel::load(rt, &model_path)
    })
    .await?
    .map_err(|e| anyhow::anyhow!(e))?;
    let model = Arc::new(Mutex::new(model));

    let mut opts = rumqttc::MqttOptions::new("demo-cloud", "127.0.0.1", plan.port);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 256);
    client.subscribe("#", rumqttc::QoS::AtLeastOnce).await?;
    let (pk, dn) = (&plan.product_key, &plan.device_name);
    let det_req = format!("/{pk}/{dn}/user/detect/request");
    let det_resp = format!("/{pk}/{dn}/user/detect/response");
    let upgrade = format!("/ota/device/upgrade/{pk}/{dn}");
    let progress = format!("/ota/device/progress/{pk}/{dn}");
    let result = format!("/{pk}/{dn}/user/ota/result");
    let report = format!("/{pk}/{dn}/user/detect/result");
    let start = tokio::time::Instant::now();
    let mut pushed = 0usize;
    let mut nth_request = 0usize;
    let mut next_cmd = 3u64;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {
                // Every 5 s an operator command goes down: drive slowly, switch the mode,
                // aim the arm.
                let secs = start.elapsed().as_secs();
                if secs >= next_cmd {
                    next_cmd = secs + 5;
                    let cmds = [
                        ("drive", json!({"linear": {"x": 0.3}, "angular": {"z": 0.0}})),
                        ("mode", json!({"data": if secs % 10 < 5 { "auto" } else { "manual" }})),
                        ("arm_target", json!({"header": {"frame_id": "arm_base"},
                            "pose": {"position": {"x": 0.6, "y": 0.1, "z": 1.25}, "orientation": {"w": 1.0}}})),
                    ];
                    for (name, body) in cmds {
                        client.publish(format!("/{pk}/{dn}/user/cmd/{name}"), rumqttc::QoS::AtLeastOnce, false, body.to_string()).await?;
                    }
                }
                if pushed < 2 && start.elapsed() >= plan.ota_at[pushed] {
                    let (version, name, sha, size) = &packages[pushed];
                    let push = json!({"code": "1000", "id": 7000 + pushed, "message": "success",
                        "data": {"size": size, "version": version, "module": "detector",
                                 "url": format!("http://127.0.0.1:{http_port}/{name}"),
                                 "sign": sha, "signMethod": "SHA256", "extData": {}}});
                    client.publish(&upgrade, rumqttc::QoS::AtLeastOnce, false, push.to_string()).await?;
                    state.ota_pushed(version);
                    pushed += 1;
                }
                continue;
            }
            ev = events.poll() => ev,
        };
        let p = match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => p,
            Ok(_) => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        state.cloud_received(&p.topic);
        let body: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
        if p.topic == det_req {
            let answer = SCHEDULE[nth_request % SCHEDULE.len()];
            nth_request += 1;
            state.cloud_answer(answer);
            let id = body["id"].as_str().unwrap_or_default().to_owned();
            let deadline = body["deadline_ms"].as_u64().unwrap_or(1500);
            let jpeg = base64::engine::general_purpose::STANDARD
                .decode(body["image"]["data"].as_str().unwrap_or_default())
                .unwrap_or_default();
            let m = model.clone();
            let client = client.clone();
            let topic = det_resp.clone();
            tokio::spawn(async move {
                let reply = match answer {
                    Answer::Never => return,
                    Answer::Error => json!({"id": id, "error": "detector overloaded"}),
                    Answer::InTime | Answer::Late => {
                        let dets = tokio::task::spawn_blocking(move || {
                            let img = crate::detect::local::decode_image(&jpeg)?;
                            let mut m = m.lock().map_err(|_| "lock".to_owned())?;
                            m.detect(&img, &PostParams::default()).map(|(f, _)| f)
                        })
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                        json!({"id": id, "model_version": "orchard-cloud-7", "detections": dets.iter().map(|d|
                            json!({"class": d.class_name, "score": d.score, "box": d.bbox})).collect::<Vec<_>>()})
                    }
                };
                if answer == Answer::Late {
                    tokio::time::sleep(Duration::from_millis(deadline + 1000)).await;
                }
                let _ = client
                    .publish(&topic, rumqttc::QoS::AtLeastOnce, false, reply.to_string())
                    .await;
            });
        } else if p.topic == progress {
            let step = body["params"]["step"].as_str().unwrap_or("").to_owned();
            let desc = body["params"]["desc"].as_str().unwrap_or("").to_owned();
            state.ota_progress(&step, &desc);
        } else if p.topic == result {
            state.ota_result(&body);
        } else if p.topic == report {
            state.detection_report(&body);
        }
    }
}
