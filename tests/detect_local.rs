//! The local detector through `edge-agent detect`, on small ONNX models built by
//! tests/py/make_models.py: known outputs checked exactly (decoding, NMS, mapping back
//! from the letterbox), and an image-dependent model compared with the numpy reference
//! of the Ultralytics pre/post-processing (tests/py/yolo_ref.py) run by onnxruntime.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

struct Models {
    dir: tempfile::TempDir,
}

impl Models {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for kind in ["yolo-fixed", "yolo-e2e", "yolo-conv", "conv"] {
            support::make_model(kind, &dir.path().join(format!("{kind}.onnx")));
        }
        Models { dir }
    }
    fn path(&self, kind: &str) -> PathBuf {
        self.dir.path().join(format!("{kind}.onnx"))
    }
}

/// Test images (PNG: lossless, so both sides see the same pixels) of the given sizes.
fn image(dir: &Path, w: usize, h: usize, seed: u64) -> PathBuf {
    let p = dir.join(format!("img_{w}x{h}_{seed}.png"));
    let code = format!(
        "import numpy as np; from PIL import Image\n\
         rng = np.random.default_rng({seed}); a = (rng.random((12, 16, 3)) * 255).astype(np.uint8)\n\
         Image.fromarray(a).resize(({w}, {h}), Image.BILINEAR).save('{}')",
        p.display()
    );
    let o = std::process::Command::new(support::python())
        .args(["-c", &code])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    p
}

fn detect(model: &Path, image: &Path, ort: bool) -> Output {
    let mut cmd = support::ota::agent();
    cmd.args(["detect", "--model"])
        .arg(model)
        .arg("--image")
        .arg(image);
    if ort {
        cmd.env("ORT_DYLIB_PATH", support::onnxruntime_lib());
    } else {
        cmd.env_remove("ORT_DYLIB_PATH")
            .env_remove("LD_LIBRARY_PATH");
    }
    cmd.output().unwrap()
}

fn detections(o: &Output) -> Vec<Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["detections"].as_array().unwrap().clone()
}

fn summary(d: &[Value]) -> Vec<(String, f64, Vec<f64>)> {
    d.iter()
        .map(|d| {
            (
                d["class_name"].as_str().unwrap().to_owned(),
                (d["score"].as_f64().unwrap() * 100.0).round() / 100.0,
                d["box"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn known_outputs_are_decoded_suppressed_and_mapped_back_exactly() {
    let m = Models::new();
    let img = image(m.dir.path(), 1280, 960, 1);
    // yolo-fixed: 640x640 input, so the 1280x960 image is halved and padded 80 rows
    // at the top. Expected from the constant output (see make_models.py FIXED):
    // row 1 overlaps row 0 of the same class and is suppressed, row 2 (same place,
    // other class) stays, row 4 is under 0.25, rows 6 and 7 are clipped to the image.
    let want = vec![
        ("apple".to_owned(), 0.9, vec![160.0, 180.0, 240.0, 300.0]),
        ("pear".to_owned(), 0.7, vec![168.0, 186.0, 248.0, 306.0]),
        ("apple".to_owned(), 0.6, vec![1220.0, 460.0, 1280.0, 540.0]),
        ("apple".to_owned(), 0.5, vec![0.0, 0.0, 40.0, 0.0]),
        ("apple".to_owned(), 0.3, vec![700.0, 390.0, 900.0, 490.0]),
        ("leaf".to_owned(), 0.26, vec![630.0, 30.0, 650.0, 50.0]),
    ];
    // yolo-e2e: [1,N,6] rows taken as they are, over the threshold, mapped back
    // (320 input: a quarter, 40 rows of padding).
    let want_e2e = vec![
        ("pear".to_owned(), 0.9, vec![40.0, 0.0, 200.0, 160.0]),
        ("apple".to_owned(), 0.5, vec![400.0, 240.0, 1200.0, 640.0]),
    ];
    for ort in [true, false] {
        let o = detect(&m.path("yolo-fixed"), &img, ort);
        let backend = serde_json::from_slice::<Value>(&o.stdout).unwrap()["backend"].clone();
        assert!(
            backend
                .as_str()
                .unwrap()
                .contains(if ort { "ONNX Runtime" } else { "tract" }),
            "{backend}"
        );
        assert_eq!(summary(&detections(&o)), want, "{backend}");
        let o = detect(&m.path("yolo-e2e"), &img, ort);
        assert_eq!(summary(&detections(&o)), want_e2e, "{backend}");
    }
}

#[test]
fn boxes_match_the_python_reference_on_images_of_every_shape() {
    let m = Models::new();
    let model = m.path("yolo-conv");
    // Landscape, portrait, odd sizes, smaller than the input (scaled up), exactly the
    // input, and one needing odd padding.
    let sizes = [
        (1280, 960, 1),
        (480, 640, 2),
        (333, 517, 3),
        (200, 150, 4),
        (640, 640, 5),
        (640, 427, 6),
        (1921, 1079, 7),
    ];
    let mut compared = 0;
    for (w, h, seed) in sizes {
        let img = image(m.dir.path(), w, h, seed);
        let ours = detections(&detect(&model, &img, true));
        let reference: Value = serde_json::from_str(&support::run_py(
            "yolo_ref.py",
            &[model.to_str().unwrap(), img.to_str().unwrap()],
        ))
        .unwrap();
        let theirs = reference["detections"].as_array().unwrap();
        assert!(
            !theirs.is_empty(),
            "{w}x{h}: the reference found nothing; the test image is too plain"
        );
        assert_eq!(ours.len(), theirs.len(), "{w}x{h}: number of detections");
        for (a, b) in ours.iter().zip(theirs) {
            assert_eq!(a["class_id"], b["class_id"], "{w}x{h}: {a} vs {b}");
            assert_eq!(a["class_name"], b["class_name"]);
            let ds = (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs();
            assert!(ds <= 1e-4, "{w}x{h}: score {a} vs {b}");
            for (x, y) in a["box"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["box"].as_array().unwrap())
            {
                let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
                assert!(d <= 1.0, "{w}x{h}: box {a} vs {b}");
            }
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} detections compared");
}

#[test]
fn bad_models_and_images_are_refused_with_the_reason() {
    let m = Models::new();
    let img = image(m.dir.path(), 64, 48, 1);
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // Not a detection model: its output is an image.
    let o = detect(&m.path("conv"), &img, true);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(stderr(&o).contains("output shape"), "{}", stderr(&o));
    // Not a model at all.
    let junk = m.dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x0a\xff\xff\xff\xff\xff").unwrap();
    let o = detect(&junk, &img, true);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not an ONNX model"),
        "{}",
        stderr(&o)
    );
    // Not an image; a truncated JPEG.
    let not_img = m.dir.path().join("x.jpg");
    std::fs::write(&not_img, b"hello").unwrap();
    let o = detect(&m.path("yolo-fixed"), &not_img, true);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a JPEG or PNG"), "{}", stderr(&o));
    std::fs::write(&not_img, [0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J']).unwrap();
    let o = detect(&m.path("yolo-fixed"), &not_img, true);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad JPEG"), "{}", stderr(&o));
}

#[cfg(feature = "demo")]
#[test]
fn the_shipped_demo_detector_finds_each_apple_of_the_demo_scene_once() {
    use edge_agent::demo::scene;
    let dir = tempfile::tempdir().unwrap();
    let model = support::repo().join("assets/demo/detector.onnx");
    for tree in [1u64, 2, 3, 17] {
        let png = dir.path().join(format!("tree{tree}.png"));
        let mut enc = png::Encoder::new(
            std::fs::File::create(&png).unwrap(),
            scene::WIDTH as u32,
            scene::HEIGHT as u32,
        );
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&scene::render(tree, 5)).unwrap();
        drop(w);
        for ort in [true, false] {
            let d = detections(&detect(&model, &png, ort));
            let mut centres: Vec<(usize, usize)> = d
                .iter()
                .map(|x| {
                    assert_eq!(x["class_name"], "apple");
                    let b: Vec<f64> = x["box"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect();
                    (
                        ((b[0] + b[2]) / 2.0 / 32.0) as usize,
                        ((b[1] + b[3]) / 2.0 / 32.0) as usize,
                    )
                })
                .collect();
            centres.sort_unstable();
            let mut want = scene::apples(tree);
            want.sort_unstable();
            assert_eq!(centres, want, "tree {tree}, onnxruntime {ort}");
        }
    }
}
