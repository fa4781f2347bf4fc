//! `sensor_msgs/Image` and `sensor_msgs/CompressedImage`, read and written through
//! [`super::cdr`] in either byte order. The pixel data is never copied: it stays a slice
//! of the received buffer. Used by the bridge (images for the cloud) and by detection
//! (camera frames).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use super::cdr::{self, Blob, CdrError, Header, Time};

/// The parts of an image message the agent uses.
#[derive(Debug, Clone)]
pub struct RawImage {
    pub stamp_sec: i32,
    pub stamp_nanosec: u32,
    pub frame_id: String,
    pub height: u32,
    pub width: u32,
    pub encoding: String,
    /// Byte order of multi-byte pixels (16UC1, 32FC1), independent of the CDR's.
    pub is_bigendian: bool,
    pub step: u32,
    pub data: Bytes,
}

/// `sensor_msgs/CompressedImage`.
#[derive(Debug, Clone)]
pub struct RawCompressed {
    pub stamp_sec: i32,
    pub stamp_nanosec: u32,
    pub frame_id: String,
    pub format: String,
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("{0}")]
    Cdr(#[from] CdrError),
    #[error(
        "image encoding '{0}' is not supported (use rgb8, bgr8, rgba8, bgra8, mono8 or 16UC1)"
    )]
    Encoding(String),
    #[error(
        "image of {width}x{height} with step {step} needs {need} bytes of data but has {have}"
    )]
    Size {
        width: u32,
        height: u32,
        step: u32,
        need: u64,
        have: usize,
    },
    #[error("image of {0}x{1} is too large for JPEG (at most 65535x65535)")]
    TooLarge(u32, u32),
    #[error("{0} cannot encode '{1}' images")]
    Format(&'static str, String),
    #[error("encoder failed: {0}")]
    Encoder(String),
}

#[derive(Serialize, Deserialize)]
struct ImageMsg<'a> {
    #[serde(borrow)]
    header: Header<'a>,
    height: u32,
    width: u32,
    #[serde(borrow)]
    encoding: Cow<'a, str>,
    is_bigendian: u8,
    step: u32,
    #[serde(borrow)]
    data: Blob<'a>,
}

#[derive(Serialize, Deserialize)]
struct CompressedMsg<'a> {
    #[serde(borrow)]
    header: Header<'a>,
    #[serde(borrow)]
    format: Cow<'a, str>,
    #[serde(borrow)]
    data: Blob<'a>,
}

pub fn parse_image(cdr: &Bytes) -> Result<RawImage, ImageError> {
    let m: ImageMsg = cdr::read(cdr)?;
    Ok(RawImage {
        stamp_sec: m.header.stamp.sec,
        stamp_nanosec: m.header.stamp.nanosec,
        frame_id: m.header.frame_id.into_owned(),
        height: m.height,
        width: m.width,
        encoding: m.encoding.into_owned(),
        is_bigendian: m.is_bigendian != 0,
        step: m.step,
        data: cdr.slice_ref(m.data.0),
    })
}

pub fn parse_compressed(cdr: &Bytes) -> Result<RawCompressed, ImageError> {
    let m: CompressedMsg = cdr::read(cdr)?;
    Ok(RawCompressed {
        stamp_sec: m.header.stamp.sec,
        stamp_nanosec: m.header.stamp.nanosec,
        frame_id: m.header.frame_id.into_owned(),
        format: m.format.into_owned(),
        data: cdr.slice_ref(m.data.0),
    })
}

/// A `sensor_msgs/Image` in CDR, as a camera driver node publishes it: little-endian
/// unless `big` (the pixels as given, `is_bigendian` false). `size` is (width, height,
/// step).
pub fn image_cdr(
    big: bool,
    stamp_sec: i32,
    stamp_nanosec: u32,
    frame_id: &str,
    size: (u32, u32, u32),
    encoding: &str,
    data: &[u8],
) -> Bytes {
    let (width, height, step) = size;
    let m = ImageMsg {
        header: Header {
            stamp: Time {
                sec: stamp_sec,
                nanosec: stamp_nanosec,
            },
            frame_id: frame_id.into(),
        },
        height,
        width,
        encoding: encoding.into(),
        is_bigendian: 0,
        step,
        data: Blob(data),
    };
    let hint = 48 + frame_id.len() + encoding.len() + data.len();
    Bytes::from(cdr::write(&m, hint, big))
}

/// Bytes per pixel of a supported encoding.
pub fn bytes_per_pixel(encoding: &str) -> Option<usize> {
    Some(match encoding {
        "mono8" | "8UC1" => 1,
        "rgb8" | "bgr8" | "8UC3" => 3,
        "rgba8" | "bgra8" | "8UC4" => 4,
        "mono16" | "16UC1" => 2,
        _ => return None,
    })
}

impl RawImage {
    pub fn bpp(&self) -> Result<usize, ImageError> {
        bytes_per_pixel(&self.encoding).ok_or_else(|| ImageError::Encoding(self.encoding.clone()))
    }

    /// The pixel bytes of each row, once the data is known to hold `height` rows of
    /// `step` bytes with `width` pixels of `bpp` bytes each.
    pub fn rows(&self, bpp: usize) -> Result<impl Iterator<Item = &[u8]> + '_, ImageError> {
        let row = self.width as u64 * bpp as u64;
        let need = if self.height == 0 {
            0
        } else {
            self.step as u64 * (self.height as u64 - 1) + row
        };
        if (self.step as u64) < row || (self.data.len() as u64) < need {
            return Err(ImageError::Size {
                width: self.width,
                height: self.height,
                step: self.step,
                need,
                have: self.data.len(),
            });
        }
        let (step, row) = (self.step as usize, row as usize);
        Ok((0..self.height as usize).map(move |y| &self.data[y * step..y * step + row]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ros::codec::{self, DecodeOptions, EncodeOptions};
    use crate::ros::Registry;
    use base64::Engine as _;

    fn schema(t: &str) -> std::sync::Arc<crate::ros::MsgSchema> {
        let mut r = Registry::new();
        r.add_bundled();
        r.schema(t).unwrap()
    }

    #[test]
    fn written_images_are_what_the_codec_writes() {
        let s = schema("sensor_msgs/msg/Image");
        // Frame ids of every length modulo 4, so each alignment path is taken.
        for frame_id in ["", "c", "ca", "cam", "cam0", "v4l2_camera"] {
            let data = [9u8, 8, 7, 6, 5, 4, 3];
            let v = serde_json::json!({"header": {"stamp": {"sec": -3, "nanosec": 11}, "frame_id": frame_id},
                "height": 1, "width": 2, "encoding": "rgb8", "step": 7,
                "data": base64::engine::general_purpose::STANDARD.encode(data)});
            let want = codec::encode_value(&s, &v, &EncodeOptions::default()).unwrap();
            let got = image_cdr(false, -3, 11, frame_id, (2, 1, 7), "rgb8", &data);
            assert_eq!(&got[..], &want[..], "frame_id {frame_id:?}");
        }
    }

    #[test]
    fn big_endian_images_read_as_the_codec_reads_them() {
        let s = schema("sensor_msgs/msg/Image");
        let data: Vec<u8> = (0..24).collect();
        for frame_id in ["", "c", "cam", "camera_link"] {
            let be = image_cdr(true, 1_700_000_000, 5, frame_id, (4, 2, 12), "rgb8", &data);
            assert_eq!(&be[..2], &[0, 0], "a big-endian encapsulation");
            let img = parse_image(&be).unwrap();
            let v = codec::decode_to_value(&s, &be, &DecodeOptions::default()).unwrap();
            assert_eq!(v["header"]["frame_id"], frame_id);
            assert_eq!(
                i64::from(img.stamp_sec),
                v["header"]["stamp"]["sec"].as_i64().unwrap()
            );
            assert_eq!(
                (img.width, img.height, img.step),
                (4, 2, 12),
                "the fields a little-endian reader would take as 67108864 and so on"
            );
            assert_eq!(v["width"], 4);
            assert_eq!(&img.data[..], &data[..]);
            let rows: Vec<&[u8]> = img.rows(3).unwrap().collect();
            assert_eq!(rows, vec![&data[..12], &data[12..]]);
        }
    }

    #[test]
    fn compressed_images_in_both_orders() {
        let s = schema("sensor_msgs/msg/CompressedImage");
        let jpeg = [0xFFu8, 0xD8, 1, 2, 3];
        let v = serde_json::json!({"header": {"stamp": {"sec": 3, "nanosec": 4}, "frame_id": "cam"},
            "format": "jpeg", "data": base64::engine::general_purpose::STANDARD.encode(jpeg)});
        let le = Bytes::from(codec::encode_value(&s, &v, &EncodeOptions::default()).unwrap());
        let be = Bytes::from(cdr::write(
            &CompressedMsg {
                header: Header {
                    stamp: Time { sec: 3, nanosec: 4 },
                    frame_id: "cam".into(),
                },
                format: "jpeg".into(),
                data: Blob(&jpeg),
            },
            32,
            true,
        ));
        for b in [le, be] {
            let c = parse_compressed(&b).unwrap();
            assert_eq!(
                (
                    c.stamp_sec,
                    c.stamp_nanosec,
                    c.frame_id.as_str(),
                    c.format.as_str()
                ),
                (3, 4, "cam", "jpeg")
            );
            assert_eq!(&c.data[..], &jpeg);
        }
    }

    #[test]
    fn cut_short_and_foreign_buffers_are_errors() {
        let full = image_cdr(false, 0, 0, "cam", (2, 1, 6), "rgb8", &[0; 6]);
        for n in [0, 3, 4, 10, full.len() - 1] {
            assert_eq!(
                parse_image(&full.slice(..n)).unwrap_err(),
                ImageError::Cdr(CdrError::Truncated),
                "cut at {n}"
            );
        }
        let mut pl = full.to_vec();
        pl[1] = 3; // PL_CDR_LE
        assert!(matches!(
            parse_image(&Bytes::from(pl)).unwrap_err(),
            ImageError::Cdr(CdrError::Encapsulation(0, 3))
        ));
    }
}
