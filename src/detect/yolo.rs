//! Ultralytics YOLO pre- and post-processing, exactly as Ultralytics does it for its
//! ONNX exports: letterbox (scale to fit, bilinear with half-pixel centres, gray 114
//! padding split as `round(d/2 ∓ 0.1)`), RGB, /255, NCHW; then for `[1, 4+nc, N]`
//! outputs the best class per anchor over the confidence threshold, xywh -> xyxy,
//! class-wise NMS (boxes offset by class × 7680), at most `max_det`; `[1, N, 6]`
//! end-to-end outputs are only filtered. Boxes are mapped back to the source image and
//! clipped. No I/O and no runtime here: plain functions over slices.

/// An RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// How a source image sits in the model's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub src_w: usize,
    pub src_h: usize,
    pub dst_w: usize,
    pub dst_h: usize,
    /// Scale from source to model pixels.
    pub ratio: f64,
    pub new_w: usize,
    pub new_h: usize,
    pub left: usize,
    pub top: usize,
}

/// Python's `round` (half to even), for the places Ultralytics uses it.
fn py_round(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

impl Letterbox {
    pub fn new(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Self {
        let ratio = (dst_h as f64 / src_h as f64).min(dst_w as f64 / src_w as f64);
        let new_w = py_round(src_w as f64 * ratio) as usize;
        let new_h = py_round(src_h as f64 * ratio) as usize;
        let dw = (dst_w - new_w.min(dst_w)) as f64 / 2.0;
        let dh = (dst_h - new_h.min(dst_h)) as f64 / 2.0;
        Letterbox {
            src_w,
            src_h,
            dst_w,
            dst_h,
            ratio,
            new_w,
            new_h,
            left: py_round(dw - 0.1) as usize,
            top: py_round(dh - 0.1) as usize,
        }
    }

    /// A box in model pixels back in source pixels, clipped to the image
    /// (Ultralytics' `scale_boxes`).
    pub fn unmap(&self, b: [f32; 4]) -> [f32; 4] {
        let gain = self.ratio;
        let pad_x = py_round((self.dst_w as f64 - self.src_w as f64 * gain) / 2.0 - 0.1);
        let pad_y = py_round((self.dst_h as f64 - self.src_h as f64 * gain) / 2.0 - 0.1);
        let (w, h) = (self.src_w as f64, self.src_h as f64);
        let x = |v: f32| ((v as f64 - pad_x) / gain).clamp(0.0, w) as f32;
        let y = |v: f32| ((v as f64 - pad_y) / gain).clamp(0.0, h) as f32;
        [x(b[0]), y(b[1]), x(b[2]), y(b[3])]
    }
}

/// OpenCV's fixed-point bilinear resize of 8-bit images (`cv::resize`, `INTER_LINEAR`,
/// which Ultralytics' letterbox calls), written from its documented algorithm so the
/// model sees the very bytes it sees in the training notebook:
/// - source coordinate `f = float((d + 0.5) * scale - 0.5)` with `scale = 1 / (dst/src)`
///   in double, taps `floor(f)` and the next, weights `1 - frac` and `frac` scaled by
///   2048 (11 bits) and rounded half to even into 16 bits;
/// - horizontally, a tap left of the first or right of the last column is clamped with
///   its weight (the edge pixel weighs 2048); vertically only the rows are clamped and
///   the weights are kept, as OpenCV does;
/// - the horizontal pass sums in 32 bits; the vertical one rounds as OpenCV's 8-bit
///   path does: `((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2`.
///
/// An exact halving is the 2x2 average OpenCV's area shortcut takes for it; the formula
/// above gives the same bytes.
const COEF_SCALE: f32 = 2048.0;

/// One destination coordinate: two source indices and their fixed-point weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: i32,
    w1: i32,
}

fn taps(dst: usize, src: usize, clamp_weights: bool) -> Vec<Tap> {
    let scale = 1.0 / (dst as f64 / src as f64);
    let last = src as i64 - 1;
    (0..dst)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            f -= s as f32;
            if clamp_weights {
                if s < 0 {
                    s = 0;
                    f = 0.0;
                }
                if s >= last {
                    s = last;
                    f = 0.0;
                }
            }
            Tap {
                i0: s.clamp(0, last) as usize,
                i1: (s + 1).clamp(0, last) as usize,
                w0: ((1.0 - f) * COEF_SCALE).round_ties_even() as i32,
                w1: (f * COEF_SCALE).round_ties_even() as i32,
            }
        })
        .collect()
}

/// The horizontal pass of one source row into three planes of `new_w` sums.
fn horizontal(row: &[u8], xs: &[Tap], out: &mut [i32]) {
    let n = xs.len();
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (x, t) in xs.iter().enumerate() {
        let (p0, p1) = (&row[t.i0 * 3..t.i0 * 3 + 3], &row[t.i1 * 3..t.i1 * 3 + 3]);
        r[x] = i32::from(p0[0]) * t.w0 + i32::from(p1[0]) * t.w1;
        g[x] = i32::from(p0[1]) * t.w0 + i32::from(p1[1]) * t.w1;
        b[x] = i32::from(p0[2]) * t.w0 + i32::from(p1[2]) * t.w1;
    }
}

/// `v / 255` as float for every byte value: a table look-up instead of a division per
/// value (the same floats: each entry is that division).
fn unit_table() -> [f32; 256] {
    std::array::from_fn(|v| v as f32 / 255.0)
}

/// The vertical pass of one channel into the model's input, as float /255.
fn vertical(top: &[i32], bottom: &[i32], w0: i32, w1: i32, unit: &[f32; 256], out: &mut [f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(top).zip(bottom) {
        let v = (((w0 * (a >> 4)) >> 16) + ((w1 * (b >> 4)) >> 16) + 2) >> 2;
        // 0..=255 by construction: weights sum to at most 2048 + 1 per pass.
        *o = unit[usize::from(v as u8)];
    }
}

/// Letterboxes `img` into `out` (NCHW float, `3 * dst_h * dst_w`, values /255): the
/// resize, the padding and the conversion to planes of floats in one pass over the
/// output (each output value written once).
pub fn preprocess(img: &Rgb, lb: &Letterbox, out: &mut [f32]) {
    let plane = lb.dst_w * lb.dst_h;
    assert_eq!(out.len(), 3 * plane, "input tensor size");
    const PAD: f32 = 114.0 / 255.0;
    let (n, m, stride) = (lb.new_w, lb.new_h, lb.dst_w);
    // The image's place in each plane: row y's pixels are `y * stride + left ..+ n`.
    let at = |y: usize| (lb.top + y) * stride + lb.left;
    for p in out.chunks_exact_mut(plane) {
        // Rows are contiguous: the padding between the image's rows is one run each
        // (the right edge of one row and the left edge of the next), and the first and
        // last runs take the rows above and below.
        p[..at(0)].fill(PAD);
        for y in 0..m {
            let next = if y + 1 < m { at(y + 1) } else { plane };
            p[at(y) + n..next].fill(PAD);
        }
    }
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let src = &img.data;
    let sw = img.width;
    let unit = unit_table();
    if n == img.width && m == img.height {
        for y in 0..m {
            let row = &src[y * sw * 3..(y + 1) * sw * 3];
            let o = at(y);
            let (r, g, b) = (&mut r[o..o + n], &mut g[o..o + n], &mut b[o..o + n]);
            for (((px, r), g), b) in row.chunks_exact(3).zip(r).zip(g).zip(b) {
                *r = unit[usize::from(px[0])];
                *g = unit[usize::from(px[1])];
                *b = unit[usize::from(px[2])];
            }
        }
        return;
    }
    let xs = taps(n, img.width, true);
    let ys = taps(m, img.height, false);
    // The horizontal sums of the two source rows the current destination row needs.
    let mut rows: [(usize, Vec<i32>); 2] =
        [(usize::MAX, vec![0; n * 3]), (usize::MAX, vec![0; n * 3])];
    for (y, t) in ys.iter().enumerate() {
        for sy in [t.i0, t.i1] {
            if rows[0].0 != sy && rows[1].0 != sy {
                // Replace the row the current one does not need.
                let slot = usize::from(rows[0].0 == t.i0 || rows[0].0 == t.i1);
                horizontal(&src[sy * sw * 3..(sy + 1) * sw * 3], &xs, &mut rows[slot].1);
                rows[slot].0 = sy;
            }
        }
        let pick = |i: usize| {
            if rows[0].0 == i {
                &rows[0].1
            } else {
                &rows[1].1
            }
        };
        let (top, bottom) = (pick(t.i0), pick(t.i1));
        let o = at(y);
        for (c, p) in [&mut *r, &mut *g, &mut *b].into_iter().enumerate() {
            vertical(
                &top[c * n..(c + 1) * n],
                &bottom[c * n..(c + 1) * n],
                t.w0,
                t.w1,
                &unit,
                &mut p[o..o + n],
            );
        }
    }
}

/// One detection, in model pixels until `Letterbox::unmap`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub class_id: usize,
    pub score: f32,
    /// x1, y1, x2, y2
    pub bbox: [f32; 4],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostParams {
    pub conf: f32,
    pub iou: f32,
    pub max_det: usize,
}

/// The most detections kept by default: Ultralytics' `max_det`, for the service and the
/// command alike.
pub const DEFAULT_MAX_DET: usize = 300;

impl Default for PostParams {
    fn default() -> Self {
        PostParams {
            conf: 0.25,
            iou: 0.45,
            max_det: DEFAULT_MAX_DET,
        }
    }
}

impl PostParams {
    /// The first value out of range, as `(name, value, what it must be)`.
    pub fn out_of_range(&self) -> Option<(&'static str, String, &'static str)> {
        if !(0.0..=1.0).contains(&self.conf) {
            return Some(("conf", self.conf.to_string(), "must be between 0 and 1"));
        }
        if !(0.0..=1.0).contains(&self.iou) {
            return Some(("iou", self.iou.to_string(), "must be between 0 and 1"));
        }
        if !(1..=100_000).contains(&self.max_det) {
            return Some((
                "max_det",
                self.max_det.to_string(),
                "must be between 1 and 100000",
            ));
        }
        None
    }
}

/// The layout of the model's first output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLayout {
    /// `[1, 4 + nc, N]`: cx, cy, w, h, then one score per class.
    Raw { classes: usize, anchors: usize },
    /// `[1, N, 6]`: x1, y1, x2, y2, score, class (already suppressed).
    EndToEnd { rows: usize },
}

impl OutputLayout {
    /// From the output shape, the number of class names, and the `end2end` metadata.
    pub fn detect(shape: &[i64], classes: usize, end2end: bool) -> Result<Self, String> {
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        match dims.as_slice() {
            [1, a, b] if !end2end && classes > 0 && *a == 4 + classes => Ok(OutputLayout::Raw {
                classes,
                anchors: *b,
            }),
            [1, n, 6] if end2end || classes == 0 || *n != 4 + classes => {
                Ok(OutputLayout::EndToEnd { rows: *n })
            }
            [1, a, b] if classes == 0 && *a > 4 && *a < *b => Ok(OutputLayout::Raw {
                classes: a - 4,
                anchors: *b,
            }),
            _ => Err(format!(
                "output shape {shape:?} is neither [1, 4+{classes}, N] (YOLO detection) nor [1, N, 6] (end-to-end)"
            )),
        }
    }
}

/// Decodes the model output into detections (model pixels), best first.
pub fn postprocess(out: &[f32], layout: OutputLayout, p: &PostParams) -> Vec<Detection> {
    match layout {
        OutputLayout::EndToEnd { rows } => out
            .chunks_exact(6)
            .take(rows)
            .filter(|r| r[4] > p.conf)
            .take(p.max_det)
            .map(|r| Detection {
                class_id: r[5].max(0.0) as usize,
                score: r[4],
                bbox: [r[0], r[1], r[2], r[3]],
            })
            .collect(),
        OutputLayout::Raw { classes, anchors } => {
            let n = anchors;
            let mut cands = Vec::new();
            for a in 0..n {
                // Best class (first on ties, as argmax).
                let mut best = 0;
                let mut score = out[4 * n + a];
                for c in 1..classes {
                    let s = out[(4 + c) * n + a];
                    if s > score {
                        score = s;
                        best = c;
                    }
                }
                if score > p.conf {
                    let (cx, cy, w, h) = (out[a], out[n + a], out[2 * n + a], out[3 * n + a]);
                    cands.push(Detection {
                        class_id: best,
                        score,
                        bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                    });
                }
            }
            if cands.len() > 30_000 {
                cands.sort_by(|a, b| b.score.total_cmp(&a.score));
                cands.truncate(30_000);
            }
            nms(cands, p.iou, p.max_det)
        }
    }
}

/// Class-wise greedy NMS: highest score first (stable), a box is dropped when its IoU
/// with a kept box of the same class exceeds `iou`.
pub fn nms(mut dets: Vec<Detection>, iou: f32, max_det: usize) -> Vec<Detection> {
    // Stable: equal scores keep their anchor order.
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let mut keep: Vec<Detection> = Vec::new();
    'next: for d in dets {
        for k in keep.iter().filter(|k| k.class_id == d.class_id) {
            let (a, b) = (&k.bbox, &d.bbox);
            let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = w * h;
            if inter / (area(a) + area(b) - inter) > iou {
                continue 'next;
            }
        }
        keep.push(d);
        if keep.len() == max_det {
            break;
        }
    }
    keep
}

/// Ultralytics' `names` metadata: a Python dict literal such as `{0: 'apple', 1: "pear"}`.
pub fn parse_names(text: &str) -> Result<Vec<String>, String> {
    let t = text.trim();
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| format!("names {t:?} is not a dict literal"))?;
    let mut names: Vec<(usize, String)> = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == ':' {
                break;
            }
            key.push(c);
            chars.next();
        }
        chars.next(); // ':'
        let id: usize = key
            .trim()
            .parse()
            .map_err(|_| format!("names: key {:?} is not a class number", key.trim()))?;
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let quote = chars
            .next()
            .filter(|c| *c == '\'' || *c == '"')
            .ok_or_else(|| format!("names: class {id} has no quoted name"))?;
        let mut name = String::new();
        loop {
            match chars.next() {
                None => return Err(format!("names: class {id}'s name is not closed")),
                Some('\\') => {
                    if let Some(c) = chars.next() {
                        name.push(c);
                    }
                }
                Some(c) if c == quote => break,
                Some(c) => name.push(c),
            }
        }
        names.push((id, name));
    }
    names.sort_by_key(|(id, _)| *id);
    for (i, (id, _)) in names.iter().enumerate() {
        if *id != i {
            return Err(format!("names: class numbers are not 0..{}", names.len()));
        }
    }
    Ok(names.into_iter().map(|(_, n)| n).collect())
}

/// `imgsz` metadata: `[640, 640]` (height, width) or `640`.
pub fn parse_imgsz(text: &str) -> Option<(usize, usize)> {
    let nums: Vec<usize> = text
        .trim_matches(|c: char| c == '[' || c == ']' || c == '(' || c == ')' || c.is_whitespace())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    match nums.as_slice() {
        [s] => Some((*s, *s)),
        [h, w] => Some((*h, *w)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_matches_ultralytics_rounding() {
        let lb = Letterbox::new(1280, 960, 640, 640);
        assert_eq!((lb.new_w, lb.new_h, lb.left, lb.top), (640, 480, 0, 80));
        // An odd padding: 1 more at the bottom/right, as round(d/2 + 0.1).
        let lb = Letterbox::new(500, 375, 640, 640);
        assert_eq!((lb.new_w, lb.new_h), (640, 480));
        let lb = Letterbox::new(641, 321, 640, 640);
        assert_eq!((lb.new_w, lb.new_h, lb.top), (640, 320, 160));
        let lb = Letterbox::new(640, 427, 640, 640);
        assert_eq!((lb.new_h, lb.top), (427, 106)); // 213 rows of padding: 106 + 107
        assert_eq!(
            lb.unmap([0.0, 106.0, 640.0, 533.0]),
            [0.0, 0.0, 640.0, 427.0]
        );
        assert_eq!(lb.unmap([-5.0, 0.0, 700.0, 10.0]), [0.0, 0.0, 640.0, 0.0]);
    }

    #[test]
    fn preprocess_pads_and_scales() {
        let img = Rgb {
            width: 2,
            height: 1,
            data: vec![255, 0, 0, 0, 0, 255],
        };
        let lb = Letterbox::new(2, 1, 4, 4);
        let mut out = vec![0.0; 48];
        preprocess(&img, &lb, &mut out);
        let pad = 114.0 / 255.0;
        // 4x2 image in rows 1..3: bilinear between red and blue.
        assert_eq!(out[0], pad);
        assert_eq!(out[4], 1.0); // red plane, row 1, x 0
        assert_eq!(out[4 + 3], 0.0); // red plane, row 1, x 3 (blue)
        assert_eq!(out[4 + 1], 191.0 / 255.0); // 255 * 0.75 = 191.25
        assert_eq!(out[32 + 4 + 3], 1.0); // blue plane
        assert_eq!(out[12], pad);
    }

    /// Every output value from the formula directly, without the row cache or the
    /// padding runs: what `preprocess` must give, bit for bit.
    fn naive(img: &Rgb, lb: &Letterbox) -> Vec<f32> {
        let plane = lb.dst_w * lb.dst_h;
        let mut out = vec![114.0 / 255.0; 3 * plane];
        let xs = taps(lb.new_w, img.width, true);
        let ys = taps(lb.new_h, img.height, false);
        let px = |x: usize, y: usize, c: usize| i32::from(img.data[(y * img.width + x) * 3 + c]);
        for (y, ty) in ys.iter().enumerate() {
            for (x, tx) in xs.iter().enumerate() {
                for c in 0..3 {
                    let h = |sy| px(tx.i0, sy, c) * tx.w0 + px(tx.i1, sy, c) * tx.w1;
                    let v = if lb.new_w == img.width && lb.new_h == img.height {
                        px(x, y, c)
                    } else {
                        (((ty.w0 * (h(ty.i0) >> 4)) >> 16) + ((ty.w1 * (h(ty.i1) >> 4)) >> 16) + 2)
                            >> 2
                    };
                    out[c * plane + (y + lb.top) * lb.dst_w + x + lb.left] = v as f32 / 255.0;
                }
            }
        }
        out
    }

    #[test]
    fn preprocess_gives_the_formula_bit_for_bit_with_any_padding() {
        let mut seed = 7u32;
        for (w, h, dw, dh) in [
            (1280, 720, 640, 640),
            (17, 9, 64, 64),
            (333, 517, 96, 64),
            (64, 64, 64, 64),
            (30, 64, 64, 64),
            (100, 3, 32, 48),
            (1, 1, 8, 8),
        ] {
            let data = (0..w * h * 3)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            let img = Rgb {
                width: w,
                height: h,
                data,
            };
            let lb = Letterbox::new(w, h, dw, dh);
            let mut out = vec![f32::NAN; 3 * dw * dh];
            preprocess(&img, &lb, &mut out);
            let want = naive(&img, &lb);
            let first_bad = out
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(first_bad, None, "{w}x{h} into {dw}x{dh}");
        }
    }

    #[test]
    fn nms_is_class_wise_and_keeps_the_best() {
        let d = |c, s, x| Detection {
            class_id: c,
            score: s,
            bbox: [x, 0.0, x + 10.0, 10.0],
        };
        let kept = nms(
            vec![
                d(0, 0.5, 1.0),
                d(0, 0.9, 0.0),
                d(1, 0.6, 0.0),
                d(0, 0.4, 50.0),
            ],
            0.45,
            300,
        );
        assert_eq!(kept, vec![d(0, 0.9, 0.0), d(1, 0.6, 0.0), d(0, 0.4, 50.0)]);
        assert_eq!(nms(vec![d(0, 0.5, 0.0), d(1, 0.4, 0.0)], 0.45, 1).len(), 1);
    }

    #[test]
    fn layouts_and_metadata() {
        assert_eq!(
            OutputLayout::detect(&[1, 84, 8400], 80, false),
            Ok(OutputLayout::Raw {
                classes: 80,
                anchors: 8400
            })
        );
        assert_eq!(
            OutputLayout::detect(&[1, 300, 6], 80, false),
            Ok(OutputLayout::EndToEnd { rows: 300 })
        );
        // Two classes: [1, 6, N] is a raw output unless the metadata says end-to-end.
        assert_eq!(
            OutputLayout::detect(&[1, 6, 8400], 2, false),
            Ok(OutputLayout::Raw {
                classes: 2,
                anchors: 8400
            })
        );
        assert!(OutputLayout::detect(&[1, 10, 10, 3], 80, false).is_err());
        assert_eq!(
            parse_names("{0: 'apple', 1: \"pear\", 2: 'it\\'s'}").unwrap(),
            vec!["apple", "pear", "it's"]
        );
        assert!(parse_names("{0: 'a', 2: 'b'}").is_err());
        assert!(parse_names("['a']").is_err());
        assert_eq!(parse_imgsz("[480, 640]"), Some((480, 640)));
        assert_eq!(parse_imgsz("320"), Some((320, 320)));
    }
}
