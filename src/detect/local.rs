//! The local detector: a YOLO ONNX export run with the process's ONNX runtime, with the
//! Ultralytics pre- and post-processing of `yolo.rs`. Built once per model and reused.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use half::slice::HalfFloatSliceExt;
use ort::session::Session;
use ort::value::TensorElementType;
use ort::value::TensorRef;

use super::yolo::{self, Detection, Letterbox, OutputLayout, PostParams, Rgb};
use crate::onnx::Runtime;

/// A loaded model and what its metadata says about it.
pub struct LocalModel {
    session: Session,
    pub path: PathBuf,
    pub names: Vec<String>,
    /// Model input (height, width).
    pub input_size: (usize, usize),
    pub layout: OutputLayout,
    input_name: String,
    /// Metadata `version` (Ultralytics writes its own version there), if any.
    pub version: Option<String>,
    buf: Vec<f32>,
    /// A half-precision model's input, converted from `buf`; empty for float32 models.
    buf16: Vec<half::f16>,
    /// The local leg's latest times (hand-over to answer), in ms, newest last.
    recent_ms: VecDeque<f64>,
}

/// How many of the local leg's latest times the estimate looks at.
const RECENT_RUNS: usize = 20;

/// Runs at load: the runtime's memory plan is made on the first and allocated on the
/// second (see [`LocalModel::warm_up`]).
const WARM_UP_RUNS: usize = 2;

/// Time spent in each stage of one detection.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimes {
    pub pre_ms: f64,
    pub infer_ms: f64,
    pub post_ms: f64,
}

/// One detection in source-image pixels, with its class name.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Found {
    pub class_id: usize,
    pub class_name: String,
    pub score: f32,
    /// x1, y1, x2, y2 in source pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl LocalModel {
    pub fn load(rt: &Runtime, path: &Path) -> Result<Self, String> {
        let meta = onnx_metadata(path)?;
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let names = match get("names") {
            Some(n) => yolo::parse_names(n).map_err(|e| format!("{}: {e}", path.display()))?,
            None => Vec::new(),
        };
        let session = rt.session(path)?;
        let input = session
            .inputs()
            .first()
            .ok_or_else(|| format!("{} has no input", path.display()))?;
        let input_name = input.name().to_owned();
        let half_input = match input.dtype().tensor_type() {
            Some(TensorElementType::Float32) => false,
            Some(TensorElementType::Float16) => true,
            other => {
                return Err(format!(
                    "{}: input '{input_name}' is {}, not float32 or float16 (export the model with Ultralytics' defaults)",
                    path.display(),
                    other.map_or_else(|| "not a tensor".to_owned(), |t| format!("a tensor of {t:?}"))
                ))
            }
        };
        let in_shape: Vec<i64> = input
            .dtype()
            .tensor_shape()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let input_size = get("imgsz")
            .and_then(yolo::parse_imgsz)
            .or(match in_shape.as_slice() {
                [_, 3, h, w] if *h > 0 && *w > 0 => Some((*h as usize, *w as usize)),
                _ => None,
            })
            .unwrap_or((640, 640));
        let out_shape: Vec<i64> = session
            .outputs()
            .first()
            .and_then(|o| {
                o.dtype()
                    .tensor_shape()
                    .map(|s| s.iter().copied().collect())
            })
            .ok_or_else(|| format!("{} has no tensor output", path.display()))?;
        let end2end = get("end2end").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let layout = OutputLayout::detect(&out_shape, names.len(), end2end)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let names = if names.is_empty() {
            match layout {
                OutputLayout::Raw { classes, .. } => (0..classes).map(|i| i.to_string()).collect(),
                OutputLayout::EndToEnd { .. } => Vec::new(),
            }
        } else {
            names
        };
        Ok(LocalModel {
            session,
            path: path.to_owned(),
            names,
            input_size,
            layout,
            input_name,
            version: get("version").map(str::to_owned),
            buf: vec![0.0; 3 * input_size.0 * input_size.1],
            buf16: if half_input {
                vec![half::f16::ZERO; 3 * input_size.0 * input_size.1]
            } else {
                Vec::new()
            },
            recent_ms: VecDeque::new(),
        })
    }

    /// Two detections on a grey image the size of the input, so the first request does
    /// not pay the runtime's first-run costs and the model holds, from load on, all the
    /// memory it will hold: ONNX Runtime plans its memory on the first run and allocates
    /// that plan on the second (for a YOLOv8n-sized model, 14 MB and another 12 MB;
    /// later runs add nothing). Without the second run here, the robot's first local
    /// answer, often hours later in the first outage, grew the agent by that much.
    /// Both times are observed; the first (the slower) is returned, as the first estimate.
    pub fn warm_up(&mut self) -> Result<f64, String> {
        let (h, w) = self.input_size;
        let grey = Rgb {
            width: w,
            height: h,
            data: vec![114; 3 * w * h],
        };
        let mut first = None;
        for _ in 0..WARM_UP_RUNS {
            let t0 = Instant::now();
            self.detect(&grey, &PostParams::default())?;
            let took = ms(t0.elapsed());
            self.observe(took);
            first.get_or_insert(took);
        }
        Ok(first.unwrap_or_default())
    }

    /// Records how long the local leg took, from hand-over to answer.
    pub fn observe(&mut self, ms: f64) {
        if self.recent_ms.len() == RECENT_RUNS {
            self.recent_ms.pop_front();
        }
        self.recent_ms.push_back(ms);
    }

    /// What the local leg is expected to need, in ms: the slowest of its latest runs and
    /// a quarter more, for the load the robot is under; `None` before any run.
    pub fn expected_ms(&self) -> Option<u64> {
        let slowest = self.recent_ms.iter().copied().reduce(f64::max)?;
        Some((slowest * 1.25).ceil() as u64)
    }

    /// Detects in `img`; boxes in the image's pixels, best first.
    pub fn detect(
        &mut self,
        img: &Rgb,
        p: &PostParams,
    ) -> Result<(Vec<Found>, StageTimes), String> {
        let t0 = Instant::now();
        let (h, w) = self.input_size;
        let lb = Letterbox::new(img.width, img.height, w, h);
        yolo::preprocess(img, &lb, &mut self.buf);
        let model = self.path.display();
        let shape = [1usize, 3, h, w];
        let input = if self.buf16.is_empty() {
            TensorRef::from_array_view((shape, self.buf.as_slice())).map(|t| t.into_dyn())
        } else {
            // Rounded to nearest, ties to even: what `tensor.half()` does in Ultralytics.
            self.buf16.convert_from_f32_slice(&self.buf);
            TensorRef::from_array_view((shape, self.buf16.as_slice())).map(|t| t.into_dyn())
        }
        .map_err(|e| format!("{model}: {e}"))?;
        let t1 = Instant::now();
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])
            .map_err(|e| format!("{model}: inference failed: {e}"))?;
        let t2 = Instant::now();
        let widened: Vec<f32>;
        let data: &[f32] = match outputs[0].try_extract_tensor::<f32>() {
            Ok((_, data)) => data,
            Err(_) => {
                let (_, data) = outputs[0].try_extract_tensor::<half::f16>().map_err(|e| {
                    format!("{model}: the output is neither float32 nor float16: {e}")
                })?;
                widened = data.to_f32_vec();
                &widened
            }
        };
        let dets: Vec<Detection> = yolo::postprocess(data, self.layout, p);
        let found = dets
            .into_iter()
            .map(|d| Found {
                class_id: d.class_id,
                class_name: self
                    .names
                    .get(d.class_id)
                    .cloned()
                    .unwrap_or_else(|| d.class_id.to_string()),
                score: d.score,
                bbox: lb.unmap(d.bbox),
            })
            .collect();
        let t3 = Instant::now();
        Ok((
            found,
            StageTimes {
                pre_ms: ms(t1 - t0),
                infer_ms: ms(t2 - t1),
                post_ms: ms(t3 - t2),
            },
        ))
    }
}

/// The largest image decoded, in pixels (an 8K frame has 33 million). A header that
/// claims more is refused before anything is allocated for it.
pub const MAX_PIXELS: usize = 64 << 20;

/// Deflate expands at most 1032-fold: a PNG whose pixels cannot come from its size is
/// refused before its buffer is allocated (a few bytes could otherwise claim gigabytes).
const DEFLATE_MAX_RATIO: usize = 1032;

fn check_size(w: usize, h: usize) -> Result<(), String> {
    if w == 0 || h == 0 || w.saturating_mul(h) > MAX_PIXELS {
        return Err(format!(
            "{w}x{h} pixels (at most {} million are decoded)",
            MAX_PIXELS >> 20
        ));
    }
    Ok(())
}

/// Decodes a JPEG or PNG file's bytes to RGB.
pub fn decode_image(bytes: &[u8]) -> Result<Rgb, String> {
    if bytes.starts_with(&[0xff, 0xd8]) {
        return decode_jpeg(bytes);
    }
    if bytes.starts_with(b"\x89PNG") {
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut r = dec.read_info().map_err(|e| format!("bad PNG: {e}"))?;
        let (w, h) = (r.info().width as usize, r.info().height as usize);
        check_size(w, h).map_err(|e| format!("bad PNG: {e}"))?;
        let size = r.output_buffer_size().ok_or("bad PNG: too large")?;
        if size / DEFLATE_MAX_RATIO > bytes.len() {
            return Err(format!(
                "bad PNG: {w}x{h} pixels cannot be in {} bytes",
                bytes.len()
            ));
        }
        let mut buf = vec![0; size];
        let info = r
            .next_frame(&mut buf)
            .map_err(|e| format!("bad PNG: {e}"))?;
        let (w, h) = (info.width as usize, info.height as usize);
        buf.truncate(info.buffer_size());
        let data = match info.color_type {
            png::ColorType::Rgb => buf,
            png::ColorType::Rgba => buf
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
            png::ColorType::Grayscale => buf.iter().flat_map(|&v| [v, v, v]).collect(),
            png::ColorType::GrayscaleAlpha => buf
                .chunks_exact(2)
                .flat_map(|p| [p[0], p[0], p[0]])
                .collect(),
            png::ColorType::Indexed => return Err("bad PNG: palette not expanded".into()),
        };
        return Ok(Rgb {
            width: w,
            height: h,
            data,
        });
    }
    Err("not a JPEG or PNG image".into())
}

/// JPEG through libjpeg-turbo's decoder (integer IDCT, fancy upsampling: cv2.imread's
/// defaults). libjpeg reports a fatal error by unwinding out of the call, which ends
/// here as an error naming libjpeg's reason.
fn decode_jpeg(bytes: &[u8]) -> Result<Rgb, String> {
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        // (A truncated frame is decoded, its missing rows grey: so its claimed size is
        // bounded only by the pixel limit.)
        check_size(d.width(), d.height())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut d = d.rgb()?;
        let (width, height) = (d.width(), d.height());
        let data = d.read_scanlines::<u8>()?;
        d.finish()?;
        Ok::<_, std::io::Error>(Rgb {
            width,
            height,
            data,
        })
    }));
    match decoded {
        Ok(Ok(rgb)) if rgb.data.len() == rgb.width * rgb.height * 3 => Ok(rgb),
        Ok(Ok(_)) => Err("bad JPEG: fewer rows than its size".into()),
        Ok(Err(e)) => Err(format!("bad JPEG: {e}")),
        Err(payload) => {
            let reason = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("libjpeg failed");
            Err(format!(
                "bad JPEG: {}",
                reason.trim_start_matches("libjpeg fatal error: ")
            ))
        }
    }
}

/// Whether a JPEG stream ends without its end-of-image marker: a frame cut short on
/// the way, whose missing rows the decoder fills with grey.
pub fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    !bytes[..end].ends_with(&[0xff, 0xd9])
}

/// The model's `metadata_props` (ModelProto field 14: key 1, value 2), read straight
/// from the protobuf so every backend sees the same class names.
pub fn onnx_metadata(path: &Path) -> Result<Vec<(String, String)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bad = || format!("{} is not an ONNX model", path.display());
    let mut out = Vec::new();
    let mut r = ProtoReader { b: &bytes, i: 0 };
    while !r.done() {
        let (field, wire) = r.key().ok_or_else(bad)?;
        if field == 14 && wire == 2 {
            let entry = r.bytes().ok_or_else(bad)?;
            let mut e = ProtoReader { b: entry, i: 0 };
            let (mut k, mut v) = (String::new(), String::new());
            while !e.done() {
                let (f, w) = e.key().ok_or_else(bad)?;
                match (f, w) {
                    (1, 2) => k = String::from_utf8_lossy(e.bytes().ok_or_else(bad)?).into(),
                    (2, 2) => v = String::from_utf8_lossy(e.bytes().ok_or_else(bad)?).into(),
                    _ => e.skip(w).ok_or_else(bad)?,
                }
            }
            out.push((k, v));
        } else {
            r.skip(wire).ok_or_else(bad)?;
        }
    }
    Ok(out)
}

struct ProtoReader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> ProtoReader<'a> {
    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i)?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn key(&mut self) -> Option<(u64, u8)> {
        let k = self.varint()?;
        Some((k >> 3, (k & 7) as u8))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        let end = self.i.checked_add(n)?;
        let s = self.b.get(self.i..end)?;
        self.i = end;
        Some(s)
    }
    fn skip(&mut self, wire: u8) -> Option<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => {
                self.i = self.i.checked_add(8).filter(|&e| e <= self.b.len())?;
                Some(())
            }
            2 => self.bytes().map(|_| ()),
            5 => {
                self.i = self.i.checked_add(4).filter(|&e| e <= self.b.len())?;
                Some(())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `image` fuzz target: 84 bytes of PNG claiming 5 x 754,974,723
    /// pixels made the decoder allocate 3.7 GB before reading any data. (The fuzz build
    /// skips CRC checks; the header's CRC is made right here, as an attacker would.)
    #[test]
    fn a_png_claiming_more_pixels_than_it_can_hold_is_refused_at_its_header() {
        let with_size = |w: u32, h: u32| {
            let mut b = include_bytes!("../../tests/fixtures/fuzz/png-5x754974723.png").to_vec();
            b[16..20].copy_from_slice(&w.to_be_bytes());
            b[20..24].copy_from_slice(&h.to_be_bytes());
            let crc = crc32fast::hash(&b[12..29]).to_be_bytes();
            b[29..33].copy_from_slice(&crc);
            b
        };
        let e = decode_image(&with_size(5, 754_974_723)).unwrap_err();
        assert!(e.contains("5x754974723 pixels (at most 64 million"), "{e}");
        // Within the pixel limit, but more than 84 bytes of deflate can make.
        let e = decode_image(&with_size(4096, 4096)).unwrap_err();
        assert!(e.contains("4096x4096 pixels cannot be in 84 bytes"), "{e}");
    }

    #[test]
    fn a_jpeg_header_claiming_a_huge_frame_is_refused_before_decoding() {
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 80)
            .encode(&[128u8; 16 * 16 * 3], 16, 16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        assert!(decode_image(&jpeg).is_ok());
        // SOF0: FF C0, length (2), precision (1), height (2), width (2).
        let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xfd, 0xe8, 0xfd, 0xe8]);
        let e = decode_image(&jpeg).unwrap_err();
        assert_eq!(
            e,
            "bad JPEG: 65000x65000 pixels (at most 64 million are decoded)"
        );
    }
}
