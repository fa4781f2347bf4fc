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
        for kind in [
            "yolo-fixed",
            "yolo-e2e",
            "yolo-conv",
            "yolo-conv-fp16",
            "conv",
            "int-input",
        ] {
            support::make_model(kind, &dir.path().join(format!("{kind}.onnx")));
        }
        Models { dir }
    }
    fn path(&self, kind: &str) -> PathBuf {
        self.dir.path().join(format!("{kind}.onnx"))
    }
}

/// Test images of the given sizes (PNG).
fn image(dir: &Path, w: usize, h: usize, seed: u64) -> PathBuf {
    image_as(dir, w, h, seed, "png", "")
}

/// A test image saved by Pillow as `ext` with the save options `opts` (Python keyword
/// arguments, e.g. `quality=90, subsampling=2`); `mode` "L" makes it grey.
fn image_as(dir: &Path, w: usize, h: usize, seed: u64, ext: &str, opts: &str) -> PathBuf {
    let p = dir.join(format!(
        "img_{w}x{h}_{seed}_{}.{ext}",
        opts.replace(|c: char| !c.is_ascii_alphanumeric(), "")
    ));
    let (mode, opts) = match opts.strip_prefix("grey") {
        Some(rest) => ("L", rest.trim_start_matches(',').trim()),
        None => ("RGB", opts),
    };
    let code = format!(
        "import numpy as np; from PIL import Image\n\
         rng = np.random.default_rng({seed}); a = (rng.random((12, 16, 3)) * 255).astype(np.uint8)\n\
         Image.fromarray(a).resize(({w}, {h}), Image.BILINEAR).convert('{mode}').save('{}', {opts})",
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

/// Compares the agent's detections on `img` with Ultralytics' pre-processing (cv2) and
/// the numpy post-processing on the same ONNX Runtime; returns how many were compared.
fn compare_with_reference(model: &Path, img: &Path, score_tol: f64, box_tol: f64) -> usize {
    let name = img.file_name().unwrap().to_string_lossy().into_owned();
    let ours = detections(&detect(model, img, true));
    let reference: Value = serde_json::from_str(&support::run_py(
        "yolo_ref.py",
        &[model.to_str().unwrap(), img.to_str().unwrap()],
    ))
    .unwrap();
    let theirs = reference["detections"].as_array().unwrap();
    assert!(
        !theirs.is_empty(),
        "{name}: the reference found nothing; the test image is too plain"
    );
    assert_eq!(ours.len(), theirs.len(), "{name}: number of detections");
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a["class_id"], b["class_id"], "{name}: {a} vs {b}");
        assert_eq!(a["class_name"], b["class_name"]);
        let ds = (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs();
        assert!(ds <= score_tol, "{name}: score {a} vs {b}");
        for (x, y) in a["box"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["box"].as_array().unwrap())
        {
            let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
            assert!(d <= box_tol, "{name}: box {a} vs {b}");
        }
    }
    ours.len()
}

#[test]
fn boxes_match_ultralytics_preprocessing_on_images_of_every_shape() {
    let m = Models::new();
    let model = m.path("yolo-conv");
    // Landscape, portrait, odd sizes, smaller than the input (scaled up), exactly the
    // input, exactly twice it (OpenCV's area shortcut), and one needing odd padding.
    let sizes = [
        (1280, 960, 1),
        (480, 640, 2),
        (333, 517, 3),
        (200, 150, 4),
        (640, 640, 5),
        (640, 427, 6),
        (1921, 1079, 7),
        (1280, 720, 8),
        (17, 9, 9),
    ];
    let mut compared = 0;
    for (w, h, seed) in sizes {
        let img = image(m.dir.path(), w, h, seed);
        compared += compare_with_reference(&model, &img, 1e-5, 0.01);
    }
    // Grey frames become three equal channels on both sides.
    let img = image_as(m.dir.path(), 700, 500, 10, "png", "grey");
    compared += compare_with_reference(&model, &img, 1e-5, 0.01);
    assert!(compared > 100, "only {compared} detections compared");
}

#[test]
fn half_precision_models_take_and_give_float16() {
    let m = Models::new();
    let mut compared = 0;
    for (w, h, seed) in [(1280, 720, 21), (333, 517, 22)] {
        let img = image(m.dir.path(), w, h, seed);
        compared += compare_with_reference(&m.path("yolo-conv-fp16"), &img, 1e-5, 0.01);
    }
    assert!(compared > 10, "only {compared} detections compared");
}

#[test]
fn jpeg_frames_decode_to_the_pixels_cv2_imread_gives() {
    let m = Models::new();
    let model = m.path("yolo-conv");
    // Chroma subsampled 4:2:0, 4:2:2, none, progressive, grey, and an odd size.
    let cases = [
        (1280, 720, 11, "quality=90, subsampling=2"),
        (1280, 720, 12, "quality=90, subsampling=1"),
        (1280, 720, 13, "quality=95, subsampling=0"),
        (800, 600, 14, "quality=85, subsampling=2, progressive=True"),
        (640, 480, 15, "grey, quality=90"),
        (517, 333, 16, "quality=75"),
    ];
    let mut compared = 0;
    for (w, h, seed, opts) in cases {
        let img = image_as(m.dir.path(), w, h, seed, "jpg", opts);
        compared += compare_with_reference(&model, &img, 1e-5, 0.01);
    }
    assert!(compared > 50, "only {compared} detections compared");
}

/// ONNX Runtime plans a model's memory on its first run and allocates the plan on the
/// second: both must happen while the model loads, or the robot's first local answer
/// (often in its first outage, hours after start) grows the agent by that much again.
#[test]
fn a_loaded_model_already_holds_all_the_memory_its_runs_need() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("yolo-bench.onnx");
    support::make_model("yolo-bench", &model);
    let img = image(dir.path(), 640, 480, 5);
    let mut cmd = support::ota::agent();
    cmd.args(["detect", "--runs", "3", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(&img)
        .env("ORT_DYLIB_PATH", support::onnxruntime_lib());
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let warm = v["anon_kb_after_warm_up"]
        .as_i64()
        .expect("anon_kb_after_warm_up");
    let grown = v["anon_kb_grown"].as_i64().expect("anon_kb_grown");
    // The runtime's plan for this 640x640 model is about 12 MB; the image's decode
    // and the post-processing are far below 4 MB.
    assert!(
        grown < 4096,
        "three runs after the warm-up added {grown} kB to the {warm} kB it held: {v}"
    );
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
    // A frame cut short on the way still decodes (the rest is grey), with a warning.
    let whole = image_as(m.dir.path(), 320, 240, 3, "jpg", "quality=90");
    let bytes = std::fs::read(&whole).unwrap();
    let cut = m.dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let o = detect(&m.path("yolo-conv"), &cut, true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("WARN"), "{}", stderr(&o));
    assert!(stderr(&o).contains("cut short"), "{}", stderr(&o));
    let o = detect(&m.path("yolo-conv"), &whole, true);
    assert!(!stderr(&o).contains("cut short"), "{}", stderr(&o));
    // An ONNX Runtime library that cannot be loaded: the loader's reason.
    let o = support::ota::agent()
        .args(["detect", "--model"])
        .arg(m.path("yolo-conv"))
        .arg("--image")
        .arg(&whole)
        .arg("--onnxruntime")
        .arg(&junk)
        .output()
        .unwrap();
    assert!(stderr(&o).contains("file too short"), "{}", stderr(&o));
    // A model whose input is not float: the error names the file.
    let o = detect(&m.path("int-input"), &whole, true);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("int-input.onnx") && stderr(&o).contains("not float32 or float16"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn out_of_range_options_are_refused_with_their_range() {
    let m = Models::new();
    let img = image(m.dir.path(), 64, 48, 1);
    for (args, want) in [
        (&["--conf", "-1"][..], "--conf -1: must be between 0 and 1"),
        (&["--iou", "5"], "--iou 5: must be between 0 and 1"),
        (
            &["--max-det", "0"],
            "--max-det 0: must be between 1 and 100000",
        ),
        (
            &["--threads", "10000"],
            "--threads 10000: must be between 0",
        ),
    ] {
        let o = support::ota::agent()
            .args(["detect", "--model"])
            .arg(m.path("yolo-conv"))
            .arg("--image")
            .arg(&img)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
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

#[test]
fn detections_are_drawn_on_the_image_for_a_technician() {
    let m = Models::new();
    let img = image(m.dir.path(), 1280, 960, 1);
    let png = m.dir.path().join("drawn.png");
    let jpg = m.dir.path().join("drawn.jpg");
    for out in [&png, &jpg] {
        let mut cmd = support::ota::agent();
        cmd.args(["detect", "--model"])
            .arg(m.path("yolo-fixed"))
            .arg("--image")
            .arg(&img)
            .arg("--draw")
            .arg(out)
            .env("ORT_DYLIB_PATH", support::onnxruntime_lib());
        let o = cmd.output().unwrap();
        let v: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
        assert_eq!(v["drawn"], out.display().to_string(), "{v}");
        assert_eq!(summary(&detections(&o))[0].2, [160.0, 180.0, 240.0, 300.0]);
    }
    // Read back by OpenCV, as any image viewer would: the apple box (class 0) at
    // [160, 180, 240, 300] and the pear box (class 1) at [168, 186, 248, 306] outlined in
    // their colours (RGB 255,56,56 and 56,140,255), inside untouched, the label band
    // (white ink) above the apple box.
    let code = format!(
        "import cv2, json\n\
         src, png, jpg = (cv2.imread(p) for p in ('{}', '{}', '{}'))\n\
         rgb = lambda im, x, y: [int(v) for v in im[y, x][::-1]]\n\
         print(json.dumps({{'shape': [list(png.shape), list(jpg.shape)],\n\
           'apple_left': rgb(png, 160, 240), 'apple_top': rgb(png, 163, 181),\n\
           'pear_right': rgb(png, 248, 250), 'pear_bottom': rgb(png, 210, 306),\n\
           'inside': [rgb(png, 200, 240), rgb(src, 200, 240)],\n\
           'outside': [rgb(png, 100, 400), rgb(src, 100, 400)],\n\
           'band': sorted(set(tuple(int(v) for v in png[y, x][::-1]) for y in range(170, 176) for x in range(160, 240))),\n\
           'jpg_band': rgb(jpg, 162, 171)}}))",
        img.display(),
        png.display(),
        jpg.display()
    );
    let o = std::process::Command::new(support::python())
        .args(["-c", &code])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let (red, blue) = (
        serde_json::json!([255, 56, 56]),
        serde_json::json!([56, 140, 255]),
    );
    assert_eq!(
        v["shape"],
        serde_json::json!([[960, 1280, 3], [960, 1280, 3]])
    );
    assert_eq!(v["apple_left"], red, "{v}");
    assert_eq!(v["apple_top"], red, "{v}");
    assert_eq!(v["pear_right"], blue, "{v}");
    assert_eq!(v["pear_bottom"], blue, "{v}");
    assert_eq!(v["inside"][0], v["inside"][1], "{v}");
    assert_eq!(v["outside"][0], v["outside"][1], "{v}");
    // The band is the box's colour with the label's ink on it (rows above the pear's
    // label, which is drawn later and overlaps the apple's box).
    let band = v["band"].as_array().unwrap();
    assert!(
        band.contains(&red)
            && band.contains(&serde_json::json!([255, 255, 255]))
            && band.len() == 2,
        "{v}"
    );
    // The JPEG is the same picture, within JPEG's loss.
    let j: Vec<i64> = serde_json::from_value(v["jpg_band"].clone()).unwrap();
    assert!(
        j.iter().zip([255, 56, 56]).all(|(a, b)| (a - b).abs() < 48),
        "{v}"
    );
}
