//! `edge-agent detect`: the local detection path on an image file, for technicians
//! checking a model on the robot (and for the benchmark, with `--runs`).

use std::path::PathBuf;
use std::time::Instant;

use crate::detect::local::{decode_image, LocalModel};
use crate::detect::yolo::PostParams;
use crate::onnx::{runtime, OnnxConfig};

use super::Failure;

#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    /// A YOLO detection export (.onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// A JPEG or PNG image.
    #[arg(long)]
    pub image: PathBuf,
    /// Confidence threshold.
    #[arg(long, default_value_t = 0.25)]
    pub conf: f32,
    /// IoU threshold of the non-maximum suppression.
    #[arg(long, default_value_t = 0.45)]
    pub iou: f32,
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Threads per inference (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// ONNX Runtime library (else ORT_DYLIB_PATH, libonnxruntime.so, or the built-in engine).
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,
    /// Run this many times and print the median time of each stage instead.
    #[arg(long)]
    pub runs: Option<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: DetectArgs) -> Result<(), Failure> {
    crate::logging::init::<crate::logging::NoLayer>(
        "warn",
        crate::logging::Scrubber::new(&[]),
        None,
    );
    let rt = runtime(&OnnxConfig {
        library: a.onnxruntime.clone(),
        threads: a.threads,
    })
    .map_err(Failure::usage)?;
    let mut model = LocalModel::load(rt, &a.model).map_err(Failure::data)?;
    let bytes = std::fs::read(&a.image)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", a.image.display())))?;
    let p = PostParams {
        conf: a.conf,
        iou: a.iou,
        max_det: a.max_det,
    };
    let detect_once = |model: &mut LocalModel| {
        let t0 = Instant::now();
        let img = decode_image(&bytes)
            .map_err(|e| Failure::data(format!("{}: {e}", a.image.display())))?;
        let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (found, times) = model.detect(&img, &p).map_err(Failure::data)?;
        Ok::<_, Failure>((
            found,
            times,
            decode_ms,
            t0.elapsed().as_secs_f64() * 1e3,
            img,
        ))
    };
    match a.runs {
        None => {
            let (found, times, decode_ms, total_ms, img) = detect_once(&mut model)?;
            let out = serde_json::json!({
                "backend": rt.backend.to_string(),
                "model": a.model.display().to_string(),
                "input_size": [model.input_size.0, model.input_size.1],
                "image_size": [img.width, img.height],
                "detections": found,
                "times_ms": {"decode": decode_ms, "pre": times.pre_ms, "infer": times.infer_ms,
                             "post": times.post_ms, "total": total_ms},
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Some(n) => {
            let n = n.max(1);
            // One warm-up run (the first inference allocates).
            detect_once(&mut model)?;
            let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..n {
                let (_, times, decode_ms, total_ms, _) = detect_once(&mut model)?;
                for (v, x) in t.iter_mut().zip([
                    decode_ms,
                    times.pre_ms,
                    times.infer_ms,
                    times.post_ms,
                    total_ms,
                ]) {
                    v.push(x);
                }
            }
            let [d, pre, inf, post, total] = t.map(median);
            println!(
                "{}",
                serde_json::json!({"backend": rt.backend.to_string(), "runs": n, "decode": d,
                    "pre": pre, "infer": inf, "post": post, "total": total})
            );
        }
    }
    Ok(())
}
