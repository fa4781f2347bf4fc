//! Detections drawn on their image, for a technician checking a camera and a model
//! (`edge-agent detect --draw out.jpg`): a box per detection in its class's colour, and
//! a label with the class and score above it, in the 8x8 font of `font8x8` (no font
//! file needed on the robot).

use std::path::Path;

use super::local::Found;
use super::yolo::Rgb;

/// Box colours, one per class id (repeating): saturated and far apart, so neighbouring
/// classes differ.
pub const PALETTE: [[u8; 3]; 10] = [
    [255, 56, 56],
    [56, 140, 255],
    [72, 220, 72],
    [255, 178, 29],
    [207, 56, 255],
    [0, 212, 187],
    [255, 112, 31],
    [146, 204, 23],
    [255, 55, 199],
    [52, 69, 147],
];

/// The colour of class `id`.
pub fn colour(id: usize) -> [u8; 3] {
    PALETTE[id % PALETTE.len()]
}

/// Line width and font scale for an image: 2 px and 1x up to 600 px, growing with it.
pub fn sizes(img: &Rgb) -> (usize, usize) {
    let short = img.width.min(img.height);
    ((short / 300).max(2), (short / 600).max(1))
}

fn fill(img: &mut Rgb, x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]) {
    let (x1, y1) = (x1.min(img.width), y1.min(img.height));
    for y in y0..y1 {
        let row = y * img.width * 3;
        for x in x0..x1 {
            img.data[row + x * 3..row + x * 3 + 3].copy_from_slice(&c);
        }
    }
}

/// A box's corners in whole pixels inside the image.
fn corners(img: &Rgb, b: [f32; 4]) -> Option<[usize; 4]> {
    if img.width == 0 || img.height == 0 || b.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let cx = |v: f32| (v.round().max(0.0) as usize).min(img.width - 1);
    let cy = |v: f32| (v.round().max(0.0) as usize).min(img.height - 1);
    Some([cx(b[0]), cy(b[1]), cx(b[2]), cy(b[3])])
}

/// Writes `text` with its top-left corner at (x, y), `scale` pixels per font pixel.
fn text(img: &mut Rgb, x: usize, y: usize, s: &str, scale: usize, c: [u8; 3]) {
    for (i, ch) in s.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY
            .get(ch as usize)
            .copied()
            .unwrap_or(font8x8::legacy::BASIC_LEGACY[usize::from(b'?')]);
        let gx = x + i * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let (px, py) = (gx + col * scale, y + row * scale);
                    fill(img, px, py, px + scale, py + scale, c);
                }
            }
        }
    }
}

/// The label of a detection: class and score.
pub fn label(d: &Found) -> String {
    format!("{} {:.2}", d.class_name, d.score)
}

/// Draws each detection: its box, and its label on a band of the box's colour above
/// the box (inside it, at the top, when there is no room above).
pub fn draw(img: &mut Rgb, found: &[Found]) {
    let (line, scale) = sizes(img);
    for d in found {
        let Some([x1, y1, x2, y2]) = corners(img, d.bbox) else {
            continue;
        };
        let c = colour(d.class_id);
        fill(img, x1, y1, x2 + 1, y1 + line, c);
        fill(img, x1, y2.saturating_sub(line - 1), x2 + 1, y2 + 1, c);
        fill(img, x1, y1, x1 + line, y2 + 1, c);
        fill(img, x2.saturating_sub(line - 1), y1, x2 + 1, y2 + 1, c);
        let l = label(d);
        let (w, h) = (
            l.chars().count() * 8 * scale + 2 * scale,
            8 * scale + 2 * scale,
        );
        let top = if y1 >= h { y1 - h } else { y1 };
        fill(img, x1, top, x1 + w, top + h, c);
        // Black on light colours, white on dark ones.
        let luma = (299 * u32::from(c[0]) + 587 * u32::from(c[1]) + 114 * u32::from(c[2])) / 1000;
        let ink = if luma > 140 {
            [0, 0, 0]
        } else {
            [255, 255, 255]
        };
        text(img, x1 + scale, top + scale, &l, scale, ink);
    }
}

/// Saves an image: PNG when the path ends in `.png`, else JPEG (quality 90).
pub fn save(img: &Rgb, path: &Path) -> Result<(), String> {
    let png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let bytes = if png {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| format!("PNG: {e}"))?;
        w.write_image_data(&img.data)
            .map_err(|e| format!("PNG: {e}"))?;
        w.finish().map_err(|e| format!("PNG: {e}"))?;
        out
    } else {
        let (w, h) = (
            u16::try_from(img.width).map_err(|_| "too wide for JPEG (65535 px at most)")?,
            u16::try_from(img.height).map_err(|_| "too tall for JPEG (65535 px at most)")?,
        );
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&img.data, w, h, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| format!("JPEG: {e}"))?;
        out
    };
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: usize, h: usize) -> Rgb {
        Rgb {
            width: w,
            height: h,
            data: vec![128; w * h * 3],
        }
    }

    fn px(img: &Rgb, x: usize, y: usize) -> [u8; 3] {
        let i = (y * img.width + x) * 3;
        [img.data[i], img.data[i + 1], img.data[i + 2]]
    }

    fn found(id: usize, b: [f32; 4]) -> Found {
        Found {
            class_id: id,
            class_name: "apple".into(),
            score: 0.5,
            bbox: b,
        }
    }

    #[test]
    fn the_box_outline_is_in_the_class_colour_and_its_inside_is_untouched() {
        let mut img = grey(200, 100);
        draw(&mut img, &[found(1, [50.0, 40.0, 150.0, 90.0])]);
        let c = colour(1);
        for (x, y) in [
            (50, 60),
            (51, 60),
            (150, 60),
            (149, 60),
            (100, 40),
            (100, 90),
        ] {
            assert_eq!(px(&img, x, y), c, "({x}, {y})");
        }
        assert_eq!(px(&img, 100, 65), [128; 3]);
        assert_eq!(px(&img, 40, 65), [128; 3]);
        // The label sits above the box: its band has the colour and some ink.
        let band: Vec<[u8; 3]> = (50..150)
            .flat_map(|x| (30..40).map(move |y| (x, y)))
            .map(|(x, y)| px(&img, x, y))
            .collect();
        assert!(band.contains(&c) && band.contains(&[255, 255, 255]));
    }

    #[test]
    fn boxes_beyond_the_image_or_not_finite_are_clipped_or_skipped() {
        let mut img = grey(64, 48);
        draw(
            &mut img,
            &[
                found(0, [-20.0, -5.0, 500.0, 400.0]),
                found(2, [f32::NAN, 0.0, 10.0, 10.0]),
            ],
        );
        assert_eq!(px(&img, 63, 30), colour(0));
        assert_eq!(px(&img, 30, 47), colour(0));
        assert!(!img.data.chunks(3).any(|p| p == colour(2)));
    }

    #[test]
    fn a_png_comes_back_with_the_same_pixels() {
        let mut img = grey(33, 17);
        draw(&mut img, &[found(3, [2.0, 3.0, 30.0, 15.0])]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.png");
        save(&img, &p).unwrap();
        let back = super::super::local::decode_image(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!((back.width, back.height), (33, 17));
        assert_eq!(back.data, img.data);
        let j = dir.path().join("out.jpg");
        save(&img, &j).unwrap();
        assert!(std::fs::read(&j).unwrap().starts_with(&[0xff, 0xd8]));
    }
}
