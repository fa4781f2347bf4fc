//! The JSON writer used by the decoder: appends straight into a byte buffer, with
//! no intermediate values, so decoding costs one pass over the message.

use base64::Engine as _;

/// `true` for bytes that must be escaped inside a JSON string.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

static HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` (which should be UTF-8) as a quoted, escaped JSON string. Invalid
/// UTF-8 is replaced with U+FFFD. One pass for plain ASCII, the common case.
pub fn write_str_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let mark = out.len();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut ascii = true;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x80 {
            ascii = false;
        } else if NEEDS_ESCAPE[b as usize] {
            out.extend_from_slice(&bytes[start..i]);
            write_escape(out, b);
            start = i + 1;
        }
    }
    if !ascii && std::str::from_utf8(bytes).is_err() {
        // Rare: start over with the repaired text, which is valid UTF-8.
        out.truncate(mark);
        let fixed = String::from_utf8_lossy(bytes).into_owned();
        write_str_bytes(out, fixed.as_bytes());
        return;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `s` as a quoted, escaped JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    write_str_bytes(out, s.as_bytes());
}

#[inline]
fn write_escape(out: &mut Vec<u8>, b: u8) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(b >> 4) as usize],
            HEX[(b & 0xf) as usize],
        ]),
    }
}

/// Finite floats as the shortest text that reads back to the same value;
/// NaN and infinities as the strings "NaN", "Infinity", "-Infinity".
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    // Whole numbers (zeros of a covariance, counts) skip the shortest-digits search;
    // the text is the same the general path prints.
    // `as` saturates, so the round trip is exact only for whole numbers in range.
    let i = v as i64;
    if v.to_bits() == 0 {
        out.extend_from_slice(b"0.0");
    } else if i as f64 == v && i != 0 && i.unsigned_abs() < 1_000_000_000_000_000 {
        write_int(out, i);
        out.extend_from_slice(b".0");
    } else if v.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else {
        write_non_finite(out, v.is_nan(), v > 0.0);
    }
}

pub fn write_f32(out: &mut Vec<u8>, v: f32) {
    let i = v as i32;
    if v.to_bits() == 0 {
        out.extend_from_slice(b"0.0");
    } else if i as f32 == v && i != 0 && i.unsigned_abs() < 1_000_000 {
        write_int(out, i);
        out.extend_from_slice(b".0");
    } else if v.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else {
        write_non_finite(out, v.is_nan(), v > 0.0);
    }
}

fn write_non_finite(out: &mut Vec<u8>, nan: bool, positive: bool) {
    out.extend_from_slice(if nan {
        b"\"NaN\""
    } else if positive {
        b"\"Infinity\""
    } else {
        b"\"-Infinity\""
    });
}

pub fn write_int<I: itoa::Integer>(out: &mut Vec<u8>, v: I) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends `data` as a quoted standard base64 string, encoded in place.
pub fn write_base64(out: &mut Vec<u8>, data: &[u8]) {
    let encoded_len = data.len().div_ceil(3) * 4;
    out.push(b'"');
    let start = out.len();
    out.resize(start + encoded_len, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(data, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// A JSON object key with its quotes and colon (`"name":`), rendered once per schema.
#[derive(Debug, Clone)]
pub struct JsonKey(Box<[u8]>);

impl JsonKey {
    pub fn new(name: &str) -> Self {
        let mut text = Vec::with_capacity(name.len() + 3);
        write_str(&mut text, name);
        text.push(b':');
        Self(text.into_boxed_slice())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    #[inline]
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        for text in [
            "plain",
            "quo\"te",
            "back\\slash",
            "ctl\u{1}\n\t\r\u{8}\u{c}",
            "ünï😀",
            "",
        ] {
            let ours = s(|o| write_str(o, text));
            assert_eq!(ours, serde_json::to_string(text).unwrap());
        }
    }

    #[test]
    fn floats() {
        assert_eq!(s(|o| write_f64(o, 0.1)), "0.1");
        assert_eq!(s(|o| write_f32(o, 0.1)), "0.1");
        assert_eq!(s(|o| write_f64(o, f64::NAN)), "\"NaN\"");
        assert_eq!(s(|o| write_f32(o, f32::NEG_INFINITY)), "\"-Infinity\"");
        assert_eq!(s(|o| write_f64(o, 1e300)), "1e+300");
        assert_eq!(s(|o| write_f64(o, 1.0)), "1.0");
        assert_eq!(s(|o| write_f64(o, -0.0)), "-0.0");
    }

    #[test]
    fn whole_number_fast_path_prints_what_the_general_path_prints() {
        let mut values: Vec<f64> = (-2000..2000).map(f64::from).collect();
        for e in 0..15 {
            let p = 10f64.powi(e);
            values.extend([
                p,
                -p,
                p + 1.0,
                p * 7.0,
                p * 9.0 + 3.0,
                999_999_999_999_999.0,
            ]);
        }
        for v in values {
            let fast = s(|o| write_f64(o, v));
            let general = zmij::Buffer::new().format_finite(v).to_owned();
            assert_eq!(fast, general, "{v}");
            let v32 = v as f32;
            if v32.abs() < 1e6 {
                let fast = s(|o| write_f32(o, v32));
                let general = zmij::Buffer::new().format_finite(v32).to_owned();
                assert_eq!(fast, general, "{v32}");
            }
        }
    }

    #[test]
    fn keys_of_every_length() {
        for n in 1..60 {
            let name: String = std::iter::repeat_n('k', n).collect();
            let key = JsonKey::new(&name);
            let mut out = b"{".to_vec();
            key.write_to(&mut out);
            assert_eq!(out, format!("{{\"{name}\":").into_bytes());
        }
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(s(|o| write_str_bytes(o, b"a\xffb\"")), "\"a\u{fffd}b\\\"\"");
    }

    #[test]
    fn base64() {
        for n in 0..10 {
            let data: Vec<u8> = (0..n).collect();
            let ours = s(|o| write_base64(o, &data));
            let expected = format!(
                "\"{}\"",
                base64::engine::general_purpose::STANDARD.encode(&data)
            );
            assert_eq!(ours, expected);
        }
    }
}
