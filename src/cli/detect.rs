//! `edge-agent detect`: the local detection path on an image file, for technicians
//! checking a model on the robot (`--draw` writes what it found onto the image), and
//! for the benchmark (`--runs`).

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
    #[arg(long, default_value_t = 0.25, allow_negative_numbers = true)]
    pub conf: f32,
    /// IoU threshold of the non-maximum suppression.
    #[arg(long, default_value_t = 0.45, allow_negative_numbers = true)]
    pub iou: f32,
    /// Most detections kept.
    #[arg(long, default_value_t = crate::detect::yolo::DEFAULT_MAX_DET)]
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
    /// Also write the image with its boxes and labels here (.png, else JPEG).
    #[arg(long, value_name = "OUT", conflicts_with = "runs")]
    pub draw: Option<PathBuf>,
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
    let p = PostParams {
        conf: a.conf,
        iou: a.iou,
        max_det: a.max_det,
    };
    if let Some((name, value, why)) = p.out_of_range() {
        return Err(Failure::usage(format!(
            "--{} {value}: {why}",
            name.replace('_', "-")
        )));
    }
    if let Some(why) = crate::onnx::threads_out_of_range(a.threads) {
        return Err(Failure::usage(format!("--threads {}: {why}", a.threads)));
    }
    let rt = runtime(&OnnxConfig {
        library: a.onnxruntime.clone(),
        threads: a.threads,
    })
    .map_err(Failure::usage)?;
    let mut model = LocalModel::load(rt, &a.model).map_err(Failure::data)?;
    let bytes = std::fs::read(&a.image)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", a.image.display())))?;
    if bytes.starts_with(&[0xff, 0xd8]) && crate::detect::local::jpeg_is_truncated(&bytes) {
        tracing::warn!(image = %a.image.display(),
            "The JPEG is cut short (no end marker): its missing rows are grey and nothing is found there.");
    }
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
            let (found, times, decode_ms, total_ms, mut img) = detect_once(&mut model)?;
            if let Some(out) = &a.draw {
                crate::detect::draw::draw(&mut img, &found);
                crate::detect::draw::save(&img, out).map_err(Failure::usage)?;
            }
            let out = serde_json::json!({
                "backend": rt.backend.to_string(),
                "model": a.model.display().to_string(),
                "input_size": [model.input_size.0, model.input_size.1],
                "image_size": [img.width, img.height],
                "detections": found,
                "drawn": a.draw.as_ref().map(|p| p.display().to_string()),
                "times_ms": {"decode": decode_ms, "pre": times.pre_ms, "infer": times.infer_ms,
                             "post": times.post_ms, "total": total_ms},
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Some(n) => {
            let n = n.max(1);
            // As the service loads a model.
            model.warm_up().map_err(Failure::data)?;
            let warm_kb = crate::memory::anonymous_kb();
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
            // What the runs added to the memory the warmed-up model holds: a model
            // must reach its steady size while loading, not at the robot's first
            // local answer.
            let grown_kb = warm_kb
                .zip(crate::memory::anonymous_kb())
                .map(|(w, now)| now as i64 - w as i64);
            println!(
                "{}",
                serde_json::json!({"backend": rt.backend.to_string(), "runs": n, "decode": d,
                    "pre": pre, "infer": inf, "post": post, "total": total,
                    "anon_kb_after_warm_up": warm_kb, "anon_kb_grown": grown_kb})
            );
        }
    }
    Ok(())
}
