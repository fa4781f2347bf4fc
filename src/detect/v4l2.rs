//! Frames straight from a V4L2 camera (`/dev/videoN`), for robots without a camera
//! driver node. The camera streams while a request is served and stops when nothing is
//! left to serve, like a camera switched through a SetBool service; its frames enter
//! the detection service as `sensor_msgs/Image` rgb8, exactly as a driver node's would.
//!
//! The pixel conversions are plain functions, built and tested in every build; the
//! device access (nokhwa) is behind the cargo feature `v4l2`.

use super::yolo::Rgb;

/// What the camera is asked for; the driver picks its closest mode.
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Settings {
    /// `/dev/videoN`.
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `header.frame_id` of the frames.
    pub frame_id: String,
}

/// The N of `/dev/videoN`.
pub fn device_index(device: &str) -> Result<u32, String> {
    device
        .strip_prefix("/dev/video")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{device:?} is not a V4L2 capture device path such as /dev/video0"))
}

/// How the camera's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelLayout {
    /// YUV 4:2:2, Y0 U Y1 V per two pixels (BT.601, limited range).
    Yuyv,
    /// Y plane, then interleaved U V at half resolution both ways.
    Nv12,
    Mjpeg,
    Rgb,
    Bgr,
    Gray,
}

/// Packed RGB of a camera frame.
pub fn to_rgb(layout: PixelLayout, width: usize, height: usize, buf: &[u8]) -> Result<Rgb, String> {
    let pixels = width * height;
    let need = match layout {
        PixelLayout::Yuyv => pixels * 2,
        PixelLayout::Nv12 => pixels + pixels / 2,
        PixelLayout::Rgb | PixelLayout::Bgr => pixels * 3,
        PixelLayout::Gray => pixels,
        PixelLayout::Mjpeg => 0,
    };
    if buf.len() < need {
        return Err(format!(
            "{layout:?} frame of {width}x{height} needs {need} bytes, the camera gave {}",
            buf.len()
        ));
    }
    let data = match layout {
        PixelLayout::Mjpeg => {
            let rgb = super::local::decode_image(buf).map_err(|e| format!("MJPEG frame: {e}"))?;
            if (rgb.width, rgb.height) != (width, height) {
                return Err(format!(
                    "MJPEG frame is {}x{}, the camera announced {width}x{height}",
                    rgb.width, rgb.height
                ));
            }
            return Ok(rgb);
        }
        PixelLayout::Rgb => buf[..need].to_vec(),
        PixelLayout::Bgr => buf[..need]
            .chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect(),
        PixelLayout::Gray => buf[..need].iter().flat_map(|&g| [g, g, g]).collect(),
        PixelLayout::Yuyv => {
            if !width.is_multiple_of(2) {
                return Err(format!("YUYV frame width {width} is odd"));
            }
            let mut out = Vec::with_capacity(pixels * 3);
            for q in buf[..need].chunks_exact(4) {
                let (u, v) = (q[1], q[3]);
                out.extend_from_slice(&yuv_to_rgb(q[0], u, v));
                out.extend_from_slice(&yuv_to_rgb(q[2], u, v));
            }
            out
        }
        PixelLayout::Nv12 => {
            if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
                return Err(format!("NV12 frame {width}x{height} has an odd side"));
            }
            let (luma, chroma) = buf[..need].split_at(pixels);
            let mut out = Vec::with_capacity(pixels * 3);
            for y in 0..height {
                for x in 0..width {
                    let c = (y / 2) * width + (x / 2) * 2;
                    out.extend_from_slice(&yuv_to_rgb(
                        luma[y * width + x],
                        chroma[c],
                        chroma[c + 1],
                    ));
                }
            }
            out
        }
    };
    Ok(Rgb {
        width,
        height,
        data,
    })
}

/// BT.601 limited-range YCbCr to RGB, in fixed point (8 fractional bits).
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (i32::from(y) - 16) * 298;
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

#[cfg(feature = "v4l2")]
pub use device::camera_task;

#[cfg(feature = "v4l2")]
mod device {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{
        CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
    };
    use nokhwa::Camera;
    use tokio::sync::mpsc;

    use super::{device_index, to_rgb, PixelLayout, V4l2Settings};
    use crate::ros::transport::Sample;

    fn layout(f: FrameFormat) -> PixelLayout {
        match f {
            FrameFormat::MJPEG => PixelLayout::Mjpeg,
            FrameFormat::YUYV => PixelLayout::Yuyv,
            FrameFormat::NV12 => PixelLayout::Nv12,
            FrameFormat::GRAY => PixelLayout::Gray,
            FrameFormat::RAWRGB => PixelLayout::Rgb,
            FrameFormat::RAWBGR => PixelLayout::Bgr,
        }
    }

    fn open(s: &V4l2Settings) -> Result<Camera, String> {
        let index = device_index(&s.device)?;
        let wanted =
            CameraFormat::new(Resolution::new(s.width, s.height), FrameFormat::YUYV, s.fps);
        let mut cam = Camera::new(
            CameraIndex::Index(index),
            RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(wanted)),
        )
        .map_err(|e| format!("{}: cannot open the camera: {e}", s.device))?;
        cam.open_stream()
            .map_err(|e| format!("{}: cannot start streaming: {e}", s.device))?;
        Ok(cam)
    }

    /// One frame as `sensor_msgs/Image` rgb8 CDR.
    fn grab(cam: &mut Camera, s: &V4l2Settings) -> Result<Sample, String> {
        let buf = cam
            .frame()
            .map_err(|e| format!("{}: no frame: {e}", s.device))?;
        let res = buf.resolution();
        let rgb = to_rgb(
            layout(buf.source_frame_format()),
            res.width() as usize,
            res.height() as usize,
            buf.buffer(),
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let cdr = crate::ros::image::image_cdr(
            false,
            i32::try_from(now.as_secs()).unwrap_or(i32::MAX),
            now.subsec_nanos(),
            &s.frame_id,
            (rgb.width as u32, rgb.height as u32, rgb.width as u32 * 3),
            "rgb8",
            &rgb.data,
        );
        Ok(Sample {
            cdr,
            source_time_ns: i64::try_from(now.as_nanos()).ok(),
            lost_before: 0,
        })
    }

    /// Owns the camera on a thread of its own (capture blocks): `true` on `rx` opens it
    /// if need be and streams frames into `frames`, `false` stops the stream. The
    /// outcome of each "on" goes to `done`, as for a camera switched through its SetBool
    /// service. The thread ends when `rx` or `frames` is closed.
    pub fn camera_task(
        settings: V4l2Settings,
        mut rx: mpsc::Receiver<bool>,
        done: mpsc::Sender<Result<(), String>>,
        frames: mpsc::Sender<Sample>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("v4l2-camera".into())
            .spawn(move || {
                // The device stays open between requests and streams only while on:
                // at off the stream stops and its buffers go back to the driver; the
                // next on starts streaming on the same handle, without enumerating the
                // camera's modes again.
                let mut cam: Option<Camera> = None;
                let streaming = |cam: &Option<Camera>| cam.as_ref().is_some_and(Camera::is_stream_open);
                let mut failing = false;
                loop {
                    // Streaming: look for a switch between frames; stopped: wait for one.
                    let cmd = if streaming(&cam) {
                        match rx.try_recv() {
                            Ok(on) => Some(on),
                            Err(mpsc::error::TryRecvError::Empty) => None,
                            Err(mpsc::error::TryRecvError::Disconnected) => break,
                        }
                    } else {
                        match rx.blocking_recv() {
                            Some(on) => Some(on),
                            None => break,
                        }
                    };
                    match cmd {
                        Some(true) => {
                            let r = match cam.as_mut() {
                                Some(c) if c.is_stream_open() => Ok(()),
                                Some(c) => c
                                    .open_stream()
                                    .map_err(|e| format!("{}: cannot start streaming: {e}", settings.device)),
                                None => open(&settings).map(|c| cam = Some(c)),
                            };
                            if let Err(e) = &r {
                                if !failing {
                                    tracing::warn!(device = %settings.device, error = %e, "The camera could not be opened.");
                                }
                                failing = true;
                                cam = None;
                            } else if std::mem::take(&mut failing) {
                                tracing::info!(device = %settings.device, "The camera opens again.");
                            }
                            if done.blocking_send(r).is_err() {
                                break;
                            }
                        }
                        Some(false) => {
                            if let Some(c) = cam.as_mut() {
                                let _ = c.stop_stream();
                            }
                        }
                        None => {}
                    }
                    if let Some(c) = cam.as_mut().filter(|c| c.is_stream_open()) {
                        match grab(c, &settings) {
                            // A full queue means the service has a fresh frame already.
                            Ok(sample) => {
                                if let Err(mpsc::error::TrySendError::Closed(_)) =
                                    frames.try_send(sample)
                                {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(device = %settings.device, error = %e, "The camera stopped giving frames; it is closed until the next request.");
                                cam = None;
                            }
                        }
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_paths() {
        assert_eq!(device_index("/dev/video0"), Ok(0));
        assert_eq!(device_index("/dev/video12"), Ok(12));
        assert!(device_index("/dev/sda")
            .unwrap_err()
            .contains("/dev/video0"));
        assert!(device_index("/dev/video").is_err());
    }

    #[test]
    fn yuyv_colour_bars_convert_to_rgb() {
        // BT.601 limited range: white, black, red, green, blue as the camera sends them.
        let yuv = [
            (235, 128, 128, [255, 255, 255]),
            (16, 128, 128, [0, 0, 0]),
            (81, 90, 240, [255, 0, 0]),
            (145, 54, 34, [0, 255, 0]),
            (41, 240, 110, [0, 0, 255]),
        ];
        for (y, u, v, rgb) in yuv {
            let frame = [y, u, y, v];
            let out = to_rgb(PixelLayout::Yuyv, 2, 1, &frame).unwrap();
            for px in out.data.chunks(3) {
                for (got, want) in px.iter().zip(rgb) {
                    assert!(
                        (i32::from(*got) - want).abs() <= 2,
                        "YUV ({y},{u},{v}) -> {px:?}, want {rgb:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn layouts_and_short_frames() {
        let bgr = to_rgb(PixelLayout::Bgr, 1, 1, &[1, 2, 3]).unwrap();
        assert_eq!(bgr.data, [3, 2, 1]);
        let gray = to_rgb(PixelLayout::Gray, 2, 1, &[7, 9]).unwrap();
        assert_eq!(gray.data, [7, 7, 7, 9, 9, 9]);
        // NV12 2x2: one chroma pair for all four pixels.
        let nv12 = to_rgb(PixelLayout::Nv12, 2, 2, &[235, 235, 16, 16, 128, 128]).unwrap();
        assert_eq!(&nv12.data[..3], &[255, 255, 255]);
        assert_eq!(&nv12.data[9..], &[0, 0, 0]);
        let e = to_rgb(PixelLayout::Yuyv, 640, 480, &[0; 100]).unwrap_err();
        assert!(e.contains("needs 614400 bytes"), "{e}");
        assert!(to_rgb(PixelLayout::Mjpeg, 2, 2, b"not a jpeg").is_err());
    }
}
