//! Camera images for the cloud: `sensor_msgs/Image` (rgb8, bgr8, rgba8, bgra8, mono8,
//! honouring `step`) to JPEG, 16UC1 depth to 16-bit PNG, `CompressedImage` passed
//! through. The messages are read by `ros::image`, so the pixel data is never turned
//! into JSON.

pub use crate::ros::image::ImageError;
use crate::ros::image::RawImage;

/// Packed pixels (borrowed when nothing had to change), width, height, bytes per pixel.
type Packed<'a> = (std::borrow::Cow<'a, [u8]>, u32, u32, usize);

impl RawImage {
    /// Checks that the data holds `height` rows of `step` bytes, each with `width` pixels.
    fn check(&self) -> Result<usize, ImageError> {
        let bpp = self.bpp()?;
        self.rows(bpp).map(|_| bpp)
    }

    /// Tightly packed pixels, scaled (nearest neighbour) to at most `max_width`.
    /// Returns (pixels, width, height, bytes per pixel). Borrows when nothing changes.
    fn packed(&self, max_width: Option<u32>) -> Result<Packed<'_>, ImageError> {
        let bpp = self.check()?;
        let (w, h) = (self.width as usize, self.height as usize);
        let row = w * bpp;
        let target_w = max_width.map_or(w, |m| (m as usize).min(w).max(1));
        if target_w == w && self.step as usize == row {
            return Ok((
                std::borrow::Cow::Borrowed(&self.data[..row * h]),
                self.width,
                self.height,
                bpp,
            ));
        }
        let target_h = ((h * target_w) / w.max(1)).max(1);
        let mut out = Vec::with_capacity(target_w * target_h * bpp);
        for ty in 0..target_h {
            let sy = ty * h / target_h;
            let line = &self.data[sy * self.step as usize..sy * self.step as usize + row];
            if target_w == w {
                out.extend_from_slice(line);
            } else {
                for tx in 0..target_w {
                    let sx = tx * w / target_w;
                    out.extend_from_slice(&line[sx * bpp..sx * bpp + bpp]);
                }
            }
        }
        Ok((
            std::borrow::Cow::Owned(out),
            target_w as u32,
            target_h as u32,
            bpp,
        ))
    }

    pub fn to_jpeg(
        &self,
        quality: u8,
        max_width: Option<u32>,
    ) -> Result<(Vec<u8>, u32, u32), ImageError> {
        let color = match self.encoding.as_str() {
            "rgb8" | "8UC3" => jpeg_encoder::ColorType::Rgb,
            "bgr8" => jpeg_encoder::ColorType::Bgr,
            "rgba8" | "8UC4" => jpeg_encoder::ColorType::Rgba,
            "bgra8" => jpeg_encoder::ColorType::Bgra,
            "mono8" | "8UC1" => jpeg_encoder::ColorType::Luma,
            other => return Err(ImageError::Format("JPEG", other.to_owned())),
        };
        let (px, w, h, _) = self.packed(max_width)?;
        if w > u32::from(u16::MAX) || h > u32::from(u16::MAX) {
            return Err(ImageError::TooLarge(w, h));
        }
        let mut out = Vec::with_capacity(px.len() / 8 + 1024);
        jpeg_encoder::Encoder::new(&mut out, quality)
            .encode(&px, w as u16, h as u16, color)
            .map_err(|e| ImageError::Encoder(e.to_string()))?;
        Ok((out, w, h))
    }

    /// PNG: 8-bit gray, RGB(A), or 16-bit gray for depth (samples as big-endian in PNG).
    pub fn to_png(&self, max_width: Option<u32>) -> Result<(Vec<u8>, u32, u32), ImageError> {
        let (px, w, h, bpp) = self.packed(max_width)?;
        let (color, depth) = match self.encoding.as_str() {
            "mono8" | "8UC1" => (png::ColorType::Grayscale, png::BitDepth::Eight),
            "rgb8" | "8UC3" => (png::ColorType::Rgb, png::BitDepth::Eight),
            "rgba8" | "8UC4" => (png::ColorType::Rgba, png::BitDepth::Eight),
            "mono16" | "16UC1" => (png::ColorType::Grayscale, png::BitDepth::Sixteen),
            other => return Err(ImageError::Format("PNG", other.to_owned())),
        };
        let data: std::borrow::Cow<'_, [u8]> = if bpp == 2 && !self.is_bigendian {
            let mut v = px.into_owned();
            for pair in v.chunks_exact_mut(2) {
                pair.swap(0, 1);
            }
            std::borrow::Cow::Owned(v)
        } else {
            px
        };
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(color);
            enc.set_depth(depth);
            enc.set_compression(png::Compression::Fast);
            let mut writer = enc
                .write_header()
                .map_err(|e| ImageError::Encoder(e.to_string()))?;
            writer
                .write_image_data(&data)
                .map_err(|e| ImageError::Encoder(e.to_string()))?;
        }
        Ok((out, w, h))
    }
}

/// The MIME type for a CompressedImage `format` ("jpeg", "png", "bgr8; jpeg compressed bgr8").
pub fn mime_of_format(format: &str) -> &'static str {
    let f = format.to_ascii_lowercase();
    if f.contains("png") {
        "image/png"
    } else {
        "image/jpeg"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ros::image::parse_image;
    use bytes::Bytes;

    fn image_cdr(w: u32, h: u32, enc: &str, step: u32, data: Vec<u8>) -> Bytes {
        crate::ros::image::image_cdr(false, 7, 9, "cam", (w, h, step), enc, &data)
    }

    #[test]
    fn parses_and_honours_step() {
        // 2x2 rgb8 with 2 bytes of row padding.
        let data = vec![1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0];
        let img = parse_image(&image_cdr(2, 2, "rgb8", 8, data)).unwrap();
        assert_eq!(
            (img.width, img.height, img.step, img.frame_id.as_str()),
            (2, 2, 8, "cam")
        );
        let (px, w, h, bpp) = img.packed(None).unwrap();
        assert_eq!((w, h, bpp), (2, 2, 3));
        assert_eq!(&px[..], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let (jpeg, ..) = img.to_jpeg(80, None).unwrap();
        assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
    }

    #[test]
    fn bad_sizes_and_encodings_are_errors() {
        let img = parse_image(&image_cdr(4, 4, "rgb8", 12, vec![0; 20])).unwrap();
        assert!(matches!(
            img.to_jpeg(80, None),
            Err(ImageError::Size { .. })
        ));
        let img = parse_image(&image_cdr(1, 1, "yuv422", 2, vec![0; 2])).unwrap();
        assert_eq!(
            img.to_jpeg(80, None).unwrap_err(),
            ImageError::Format("JPEG", "yuv422".into())
        );
        assert_eq!(
            img.to_png(None).unwrap_err(),
            ImageError::Encoding("yuv422".into())
        );
        assert!(parse_image(&Bytes::from_static(&[0, 1, 0, 0, 1])).is_err());
    }

    #[test]
    fn depth_to_16_bit_png_and_downscale() {
        let mut data = Vec::new();
        for i in 0..16u16 {
            data.extend_from_slice(&(i * 1000).to_le_bytes());
        }
        let img = parse_image(&image_cdr(4, 4, "16UC1", 8, data)).unwrap();
        let (png, w, h) = img.to_png(Some(2)).unwrap();
        assert_eq!((w, h), (2, 2));
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.bit_depth, png::BitDepth::Sixteen);
        // Nearest neighbour picks pixels 0, 2, 8, 10 (big-endian in PNG).
        let px: Vec<u16> = buf
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(px, vec![0, 2000, 8000, 10000]);
    }
}
