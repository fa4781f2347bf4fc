//! Camera frames for detection: ROS images to RGB, JPEG for the cloud within a size
//! limit, and 3D positions from an aligned depth image and the camera's intrinsics.

use bytes::Bytes;

use super::yolo::Rgb;
use crate::ros::image::{parse_compressed, parse_image, RawImage};

/// A frame taken for a request: pixels and where they came from.
#[derive(Debug, Clone)]
pub struct Frame {
    pub stamp_sec: i32,
    pub stamp_nanosec: u32,
    pub frame_id: String,
    pub rgb: Rgb,
    /// The camera's own JPEG, when it sent one (passed to the cloud as is).
    pub jpeg: Option<Bytes>,
}

/// A `sensor_msgs/Image` (rgb8, bgr8, rgba8, bgra8, mono8) as a frame.
pub fn from_image(cdr: &Bytes) -> Result<Frame, String> {
    let img = parse_image(cdr).map_err(|e| e.to_string())?;
    let rgb = to_rgb(&img)?;
    Ok(Frame {
        stamp_sec: img.stamp_sec,
        stamp_nanosec: img.stamp_nanosec,
        frame_id: img.frame_id,
        rgb,
        jpeg: None,
    })
}

/// A `sensor_msgs/CompressedImage` (JPEG or PNG) as a frame.
pub fn from_compressed(cdr: &Bytes) -> Result<Frame, String> {
    let c = parse_compressed(cdr).map_err(|e| e.to_string())?;
    let rgb = super::local::decode_image(&c.data)
        .map_err(|e| format!("compressed image ({}): {e}", c.format))?;
    let is_jpeg = c.data.starts_with(&[0xFF, 0xD8]);
    Ok(Frame {
        stamp_sec: c.stamp_sec,
        stamp_nanosec: c.stamp_nanosec,
        frame_id: c.frame_id,
        rgb,
        jpeg: is_jpeg.then_some(c.data),
    })
}

fn to_rgb(img: &RawImage) -> Result<Rgb, String> {
    let (order, bpp): ([usize; 3], usize) = match img.encoding.as_str() {
        "rgb8" | "8UC3" => ([0, 1, 2], 3),
        "bgr8" => ([2, 1, 0], 3),
        "rgba8" | "8UC4" => ([0, 1, 2], 4),
        "bgra8" => ([2, 1, 0], 4),
        "mono8" | "8UC1" => ([0, 0, 0], 1),
        other => {
            return Err(format!(
                "image encoding '{other}' is not supported for detection (use rgb8, bgr8, rgba8, bgra8 or mono8)"
            ))
        }
    };
    let (w, h) = (img.width as usize, img.height as usize);
    if w == 0 || h == 0 {
        return Err(format!("image of {w}x{h} has no pixels"));
    }
    let mut data = Vec::with_capacity(w * h * 3);
    for row in img.rows(bpp).map_err(|e| e.to_string())? {
        if bpp == 3 && order == [0, 1, 2] {
            data.extend_from_slice(row);
            continue;
        }
        for px in row.chunks_exact(bpp) {
            data.extend_from_slice(&[px[order[0]], px[order[1]], px[order[2]]]);
        }
    }
    Ok(Rgb {
        width: w,
        height: h,
        data,
    })
}

/// Halves an image (nearest neighbour).
fn halve(img: &Rgb) -> Rgb {
    let (w, h) = ((img.width / 2).max(1), (img.height / 2).max(1));
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let sy = (y * 2).min(img.height - 1);
        for x in 0..w {
            let sx = (x * 2).min(img.width - 1);
            let i = (sy * img.width + sx) * 3;
            data.extend_from_slice(&img.data[i..i + 3]);
        }
    }
    Rgb {
        width: w,
        height: h,
        data,
    }
}

/// The frame as a JPEG of at most `max_bytes`: the camera's own JPEG when it fits,
/// else encoded at `quality`, halving the size until it fits. Returns the JPEG and its
/// width and height.
pub fn jpeg_within(
    frame: &Frame,
    quality: u8,
    max_bytes: usize,
) -> Result<(Vec<u8>, usize, usize), String> {
    if let Some(j) = &frame.jpeg {
        if j.len() <= max_bytes {
            return Ok((j.to_vec(), frame.rgb.width, frame.rgb.height));
        }
    }
    let mut img = std::borrow::Cow::Borrowed(&frame.rgb);
    loop {
        if img.width > usize::from(u16::MAX) || img.height > usize::from(u16::MAX) {
            img = std::borrow::Cow::Owned(halve(&img));
            continue;
        }
        let mut out = Vec::with_capacity(img.data.len() / 8 + 1024);
        jpeg_encoder::Encoder::new(&mut out, quality)
            .encode(
                &img.data,
                img.width as u16,
                img.height as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .map_err(|e| format!("JPEG encoder: {e}"))?;
        if out.len() <= max_bytes {
            return Ok((out, img.width, img.height));
        }
        if img.width < 64 || img.height < 64 {
            return Err(format!(
                "the frame does not fit in {max_bytes} bytes even at {}x{}",
                img.width, img.height
            ));
        }
        img = std::borrow::Cow::Owned(halve(&img));
    }
}

/// Depth pixels in metres, aligned to the colour image.
#[derive(Debug, Clone)]
pub struct Depth {
    pub width: usize,
    pub height: usize,
    pub metres: Vec<f32>,
}

/// A depth `sensor_msgs/Image`: 16UC1 / mono16 in millimetres or 32FC1 in metres.
pub fn depth_from_image(cdr: &Bytes) -> Result<Depth, String> {
    let img = parse_image(cdr).map_err(|e| e.to_string())?;
    let (bpp, per_metre) = match img.encoding.as_str() {
        "16UC1" | "mono16" => (2, 1000.0f64),
        "32FC1" => (4, 1.0f64),
        other => {
            return Err(format!(
                "depth encoding '{other}' is not supported (use 16UC1 in mm or 32FC1 in m)"
            ))
        }
    };
    let (w, h) = (img.width as usize, img.height as usize);
    if w == 0 || h == 0 {
        return Err(format!("depth image of {w}x{h} has no pixels"));
    }
    let mut metres = Vec::with_capacity(w * h);
    for row in img.rows(bpp).map_err(|e| format!("depth {e}"))? {
        for px in row.chunks_exact(bpp) {
            let v = if bpp == 2 {
                let raw = if img.is_bigendian {
                    u16::from_be_bytes([px[0], px[1]])
                } else {
                    u16::from_le_bytes([px[0], px[1]])
                };
                // Through f64, so whole millimetres give the nearest f32 metres.
                (f64::from(raw) / per_metre) as f32
            } else {
                let b = [px[0], px[1], px[2], px[3]];
                if img.is_bigendian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            };
            metres.push(v);
        }
    }
    Ok(Depth {
        width: w,
        height: h,
        metres,
    })
}

/// Pinhole intrinsics from `CameraInfo.k` (and the image size they are for).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intrinsics {
    pub fx: f64,
    pub fy: f64,
    pub cx: f64,
    pub cy: f64,
    pub width: usize,
    pub height: usize,
}

impl Intrinsics {
    /// From the JSON form of a `sensor_msgs/CameraInfo`.
    pub fn from_camera_info(v: &serde_json::Value) -> Result<Self, String> {
        let k: Vec<f64> = v["k"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default();
        if k.len() != 9 || k[0] <= 0.0 || k[4] <= 0.0 {
            return Err("CameraInfo.k has no focal lengths (fx, fy must be > 0)".into());
        }
        Ok(Intrinsics {
            fx: k[0],
            fy: k[4],
            cx: k[2],
            cy: k[5],
            width: v["width"].as_u64().unwrap_or(0) as usize,
            height: v["height"].as_u64().unwrap_or(0) as usize,
        })
    }
}

/// The 3D point (camera optical frame, metres) of a box: the median of the valid depths
/// in the central half of the box (each side shrunk by a quarter), back-projected at
/// the box centre; and the box's width and height in metres at that depth. None when
/// the central part has no valid depth.
pub fn position(
    depth: &Depth,
    k: &Intrinsics,
    bbox: [f32; 4],
    image_w: usize,
    image_h: usize,
) -> Option<([f64; 3], [f64; 2])> {
    // Depth may have another resolution than the colour image it is aligned to.
    let sx = depth.width as f64 / image_w.max(1) as f64;
    let sy = depth.height as f64 / image_h.max(1) as f64;
    let [x1, y1, x2, y2] = bbox.map(f64::from);
    let (bw, bh) = (x2 - x1, y2 - y1);
    let to_px = |v: f64, s: f64, max: usize| ((v * s).floor().max(0.0) as usize).min(max);
    let dx1 = to_px(x1 + bw / 4.0, sx, depth.width.saturating_sub(1));
    let dx2 = to_px(x2 - bw / 4.0, sx, depth.width.saturating_sub(1));
    let dy1 = to_px(y1 + bh / 4.0, sy, depth.height.saturating_sub(1));
    let dy2 = to_px(y2 - bh / 4.0, sy, depth.height.saturating_sub(1));
    let mut vals: Vec<f32> = Vec::new();
    for y in dy1..=dy2 {
        for x in dx1..=dx2 {
            let d = depth.metres[y * depth.width + x];
            if d.is_finite() && d > 0.0 {
                vals.push(d);
            }
        }
    }
    if vals.is_empty() {
        return None;
    }
    vals.sort_by(f32::total_cmp);
    let z = f64::from(vals[vals.len() / 2]);
    // Intrinsics are for the CameraInfo's size; boxes are in colour-image pixels.
    let kx = if k.width > 0 {
        k.width as f64 / image_w as f64
    } else {
        1.0
    };
    let ky = if k.height > 0 {
        k.height as f64 / image_h as f64
    } else {
        1.0
    };
    let u = (x1 + x2) / 2.0 * kx;
    let v = (y1 + y2) / 2.0 * ky;
    let p = [(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z];
    Some((p, [bw * kx * z / k.fx, bh * ky * z / k.fy]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_cdr(w: u32, h: u32, enc: &str, step: u32, data: &[u8]) -> Bytes {
        crate::ros::image::image_cdr(false, 5, 7, "cam", (w, h, step), enc, data)
    }

    #[test]
    fn bgr_with_padding_rows_becomes_rgb() {
        // 2x2 bgr8 with step 8 (2 bytes of row padding).
        let data = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0];
        let f = from_image(&image_cdr(2, 2, "bgr8", 8, &data)).unwrap();
        assert_eq!(f.rgb.data, [3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10]);
        assert_eq!(
            (f.stamp_sec, f.stamp_nanosec, f.frame_id.as_str()),
            (5, 7, "cam")
        );
        let f = from_image(&image_cdr(2, 1, "mono8", 2, &[9, 200])).unwrap();
        assert_eq!(f.rgb.data, [9, 9, 9, 200, 200, 200]);
        let e = from_image(&image_cdr(2, 1, "yuv422", 4, &[0; 4])).unwrap_err();
        assert!(e.contains("'yuv422' is not supported"), "{e}");
        let e = from_image(&image_cdr(4, 4, "rgb8", 12, &[0; 20])).unwrap_err();
        assert!(e.contains("needs 48 bytes of data but has 20"), "{e}");
    }

    #[test]
    fn a_big_endian_frame_gives_the_same_pixels() {
        let data: Vec<u8> = (0..48).collect();
        let le = from_image(&image_cdr(4, 3, "bgr8", 16, &data)).unwrap();
        let be = crate::ros::image::image_cdr(true, 5, 7, "cam", (4, 3, 16), "bgr8", &data);
        let be = from_image(&be).unwrap();
        assert_eq!((be.rgb.width, be.rgb.height), (4, 3));
        assert_eq!(be.rgb.data, le.rgb.data);
        assert_eq!((be.stamp_sec, be.stamp_nanosec), (5, 7));
    }

    #[test]
    fn jpeg_is_shrunk_until_it_fits() {
        let (w, h) = (640, 480);
        let mut data = Vec::with_capacity(w * h * 3);
        let mut s = 1u32;
        for _ in 0..w * h * 3 {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.push((s >> 24) as u8);
        }
        let f = Frame {
            stamp_sec: 0,
            stamp_nanosec: 0,
            frame_id: String::new(),
            rgb: Rgb {
                width: w,
                height: h,
                data,
            },
            jpeg: None,
        };
        let (full, fw, _) = jpeg_within(&f, 80, usize::MAX).unwrap();
        assert_eq!(fw, 640);
        let (small, sw, sh) = jpeg_within(&f, 80, full.len() / 3).unwrap();
        assert!(small.len() <= full.len() / 3);
        assert_eq!((sw, sh), (320, 240));
        assert!(jpeg_within(&f, 80, 100)
            .unwrap_err()
            .contains("does not fit"));
    }

    #[test]
    fn position_is_the_median_depth_back_projected_at_the_box_centre() {
        // 100x100 depth at 2 m, with holes (0) and an outlier in the box's centre part.
        let mut metres = vec![2.0f32; 100 * 100];
        metres[50 * 100 + 50] = 0.0;
        metres[45 * 100 + 45] = 9.0;
        metres[44 * 100 + 44] = f32::NAN;
        let d = Depth {
            width: 100,
            height: 100,
            metres,
        };
        let k = Intrinsics {
            fx: 100.0,
            fy: 100.0,
            cx: 50.0,
            cy: 50.0,
            width: 100,
            height: 100,
        };
        let (p, size) = position(&d, &k, [40.0, 40.0, 80.0, 60.0], 100, 100).unwrap();
        assert!((p[2] - 2.0).abs() < 1e-9);
        assert!((p[0] - (60.0 - 50.0) * 2.0 / 100.0).abs() < 1e-9);
        assert!((p[1] - 0.0).abs() < 1e-9);
        assert!((size[0] - 0.8).abs() < 1e-9 && (size[1] - 0.4).abs() < 1e-9);
        // A colour image twice the depth's size maps onto it.
        let (p2, _) = position(&d, &k, [80.0, 80.0, 160.0, 120.0], 200, 200).unwrap();
        assert!((p2[0] - p[0]).abs() < 1e-9 && (p2[2] - 2.0).abs() < 1e-9);
        // No valid depth: no position.
        let holes = Depth {
            width: 10,
            height: 10,
            metres: vec![0.0; 100],
        };
        assert!(position(&holes, &k, [0.0, 0.0, 5.0, 5.0], 10, 10).is_none());
    }

    #[test]
    fn depth_in_millimetres_and_metres() {
        let mm = image_cdr(2, 1, "16UC1", 4, &[0xE8, 0x03, 0xD0, 0x07]);
        assert_eq!(depth_from_image(&mm).unwrap().metres, [1.0, 2.0]);
        let m = image_cdr(1, 1, "32FC1", 4, &1.5f32.to_le_bytes());
        assert_eq!(depth_from_image(&m).unwrap().metres, [1.5]);
        assert!(depth_from_image(&image_cdr(1, 1, "rgb8", 3, &[0; 3]))
            .unwrap_err()
            .contains("'rgb8'"));
    }
}
