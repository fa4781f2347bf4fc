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

/// Appends `s` as a quoted, escaped JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[b as usize] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
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
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Finite floats as the shortest text that reads back to the same value;
/// NaN and infinities as the strings "NaN", "Infinity", "-Infinity".
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        write_non_finite(out, v.is_nan(), v > 0.0);
    }
}

pub fn write_f32(out: &mut Vec<u8>, v: f32) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
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
        assert_eq!(s(|o| write_f64(o, 1e300)), "1e300");
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
