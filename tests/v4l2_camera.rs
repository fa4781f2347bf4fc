//! Frames from a real V4L2 driver: the kernel's vivid test camera. These tests need a
//! /dev/videoN and run inside the VM that `scripts/test-v4l2.sh` boots (a Debian kernel
//! with vivid loaded, this machine's file system mounted read-only).
#![cfg(feature = "v4l2")]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::agent::{Agent, AgentDir};
use support::mosquitto::{Mosquitto, Options};
use support::ros_peer::RosPeer;

use edge_agent::detect::frame;
use edge_agent::detect::v4l2::{camera_task, V4l2Settings};
use edge_agent::ros::transport::Sample;
use tokio::sync::mpsc;

fn device() -> String {
    let d = std::env::var("EDGE_AGENT_V4L2_DEVICE").unwrap_or_else(|_| "/dev/video0".into());
    assert!(
        std::path::Path::new(&d).exists(),
        "{d} does not exist: run these tests with scripts/test-v4l2.sh, which boots a VM with the vivid test camera"
    );
    d
}

fn settings(device: String) -> V4l2Settings {
    V4l2Settings {
        device,
        width: 640,
        height: 480,
        fps: 30,
        frame_id: "cam".into(),
    }
}

struct Camera {
    on: mpsc::Sender<bool>,
    done: mpsc::Receiver<Result<(), String>>,
    frames: mpsc::Receiver<Sample>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Hangs up and waits until the camera thread has let the device go, so the next test
/// starts with the device as a fresh process finds it.
impl Drop for Camera {
    fn drop(&mut self) {
        let (hung_up, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.on, hung_up));
        if let Some(t) = self.thread.take() {
            t.join().expect("the camera thread ends without panicking");
        }
    }
}

fn start(s: V4l2Settings) -> Camera {
    let (on, rx) = mpsc::channel(4);
    let (done_tx, done) = mpsc::channel(4);
    let (frames_tx, frames) = mpsc::channel(2);
    let thread = camera_task(s, rx, done_tx, frames_tx).expect("camera thread");
    Camera {
        on,
        done,
        frames,
        thread: Some(thread),
    }
}

impl Camera {
    fn switch(&mut self, on: bool) -> Option<Result<(), String>> {
        self.on.blocking_send(on).expect("camera task alive");
        on.then(|| self.done.blocking_recv().expect("an answer to on"))
    }

    fn frame(&mut self, within: Duration) -> Option<Sample> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            match self.frames.try_recv() {
                Ok(s) => return Some(s),
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("frames channel: {e}"),
            }
        }
        None
    }
}

#[test]
fn frames_are_rgb_images_of_the_asked_size_with_the_test_pattern() {
    let mut cam = start(settings(device()));
    cam.switch(true).expect("answer").expect("the camera opens");
    let mut last = None;
    for _ in 0..3 {
        last = Some(
            cam.frame(Duration::from_secs(20))
                .expect("a frame within 20 s"),
        );
    }
    let sample = last.expect("frames");
    assert!(
        sample.source_time_ns.is_some(),
        "frames carry their capture time"
    );
    let f = frame::from_image(&sample.cdr).expect("the frame is a valid sensor_msgs/Image");
    assert_eq!((f.rgb.width, f.rgb.height), (640, 480));
    assert_eq!(f.frame_id, "cam");
    // vivid's default pattern: eight vertical 75% colour bars, white to black.
    let bars: [[i32; 3]; 8] = [
        [191, 191, 191],
        [191, 191, 0],
        [0, 191, 191],
        [0, 191, 0],
        [191, 0, 191],
        [191, 0, 0],
        [0, 0, 191],
        [0, 0, 0],
    ];
    let y = 300;
    for (i, want) in bars.iter().enumerate() {
        let x = (2 * i + 1) * 640 / 16;
        let p = &f.rgb.data[(y * 640 + x) * 3..][..3];
        for c in 0..3 {
            assert!(
                (i32::from(p[c]) - want[c]).abs() <= 24,
                "bar {i} at x={x}: got {p:?}, want about {want:?}"
            );
        }
    }
}

/// How many of this process's memory mappings are of `path` (a streaming V4L2 device
/// maps its capture buffers).
fn mappings_of(path: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter(|l| l.ends_with(path))
        .count()
}

#[test]
fn off_stops_the_camera_and_on_starts_it_again() {
    let dev = device();
    let mut cam = start(settings(dev.clone()));
    cam.switch(true).expect("answer").expect("the camera opens");
    cam.frame(Duration::from_secs(20)).expect("a frame");
    assert!(
        mappings_of(&dev) > 0,
        "the camera's buffers are mapped while on"
    );
    cam.switch(false);
    // What was queued before the switch may still come; then nothing.
    std::thread::sleep(Duration::from_millis(500));
    while cam.frames.try_recv().is_ok() {}
    assert!(
        cam.frame(Duration::from_secs(1)).is_none(),
        "no frames while the camera is off"
    );
    // Stopped means stopped: the capture buffers are given back to the driver.
    assert_eq!(mappings_of(&dev), 0, "{dev} buffers still mapped after off");
    cam.switch(true)
        .expect("answer")
        .expect("the camera opens again");
    cam.frame(Duration::from_secs(20))
        .expect("frames again after on");
}

#[test]
fn a_missing_device_is_a_clear_error_on_each_on() {
    let mut cam = start(settings("/dev/video63".into()));
    for _ in 0..2 {
        let e = cam.switch(true).expect("answer").unwrap_err();
        assert!(e.contains("/dev/video63"), "{e}");
        assert!(e.contains("cannot open the camera"), "{e}");
    }
}

/// The agent's detection service with `[detect.v4l2]`: a robot (a Cyclone DDS peer) asks
/// twice, the agent opens the camera for the first request, stops it, starts it again
/// for the second, and each answer is a Detection2DArray of a camera frame.
#[test]
fn requests_are_answered_from_camera_frames() {
    let dev = device();
    let domain = 131;
    let broker = Mosquitto::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("fruit.onnx");
    support::make_model("yolo-fixed", &model);
    let detect = format!(
        r#"[onnx]
library = "{lib}"
[detect]
enabled = true
policy = "local-only"
model = "{model}"
deadline = "20s"
frame_timeout = "15s"
local_timeout = "15s"
[detect.v4l2]
device = "{dev}"
width = 640
height = 480
frame_id = "v4l2_camera"
"#,
        lib = support::onnxruntime_lib().display(),
        model = model.display()
    );
    let a = AgentDir::new(broker.port, domain, "", &detect);
    let agent = Agent::start(&a.config());
    let mut peer = RosPeer::start(domain);
    peer.detection_endpoints();
    peer.wait_matched("req");
    peer.wait_received("status", 1, Duration::from_secs(60));
    for (n, id) in ["cam1", "cam2"].into_iter().enumerate() {
        peer.write("req", json!({"request_id": id, "deadline_ms": 0}));
        let dets = peer.wait_received("det", n + 1, Duration::from_secs(60));
        let d = &dets[n]["value"];
        assert_eq!(d["header"]["frame_id"], "v4l2_camera", "{d}");
        assert!(
            d["header"]["stamp"]["sec"].as_i64().unwrap() > 1_600_000_000,
            "stamped with the capture time: {d}"
        );
        let boxes = d["detections"].as_array().unwrap();
        assert!(!boxes.is_empty(), "the fixed model finds its boxes: {d}");
        for b in boxes {
            let c = &b["bbox"]["center"]["position"];
            let (x, y) = (c["x"].as_f64().unwrap(), c["y"].as_f64().unwrap());
            assert!(
                (0.0..=640.0).contains(&x) && (0.0..=480.0).contains(&y),
                "boxes in the 640x480 frame's pixels: {d}"
            );
        }
    }
    let log = agent.stop();
    assert!(!log.contains("could not be opened"), "{log}");
    assert!(!log.contains("stopped giving frames"), "{log}");
}
