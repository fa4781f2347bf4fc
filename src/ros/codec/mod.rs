//! The dynamic CDR <-> JSON codec: converts any message type known to the
//! [`Registry`](super::registry::Registry) without code generated for it.
//!
//! Wire format: the 4-byte encapsulation header (`00 01 00 00` little-endian,
//! `00 00 00 00` big-endian), then plain CDR (XCDR1) aligned relative to the end of the
//! header, as every ROS 2 middleware writes it.
//!
//! JSON form: field names as in the definition; `uint8`/`byte` arrays and sequences as
//! base64 strings (or arrays of numbers, by option); `char` and `byte` scalars as
//! numbers; 64-bit integers as JSON numbers; NaN and infinities as the strings "NaN",
//! "Infinity", "-Infinity"; `wstring` as ordinary strings; nested messages as objects.
//! An empty message (ROS 2 gives it one placeholder byte on the wire) is `{}`.

mod decode;
mod encode;
mod error;
pub mod json_out;

pub use decode::{decode_to_json, decode_to_value, split_header, DecodeOptions};
pub use encode::{encode_json, encode_value, encode_value_into, EncodeOptions};
pub use error::{render_path, DecodeError, DecodeErrorKind, EncodeError, EncodeErrorKind, Segment};

/// Byte order chosen once per buffer, so the inner loops carry no branch on it.
pub(crate) trait ByteOrder {
    const BIG: bool;

    #[inline]
    fn u16(b: [u8; 2]) -> u16 {
        if Self::BIG {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    #[inline]
    fn u32(b: [u8; 4]) -> u32 {
        if Self::BIG {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    #[inline]
    fn u64(b: [u8; 8]) -> u64 {
        if Self::BIG {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        }
    }

    #[inline]
    fn put_u16(v: u16) -> [u8; 2] {
        if Self::BIG {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    #[inline]
    fn put_u32(v: u32) -> [u8; 4] {
        if Self::BIG {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    #[inline]
    fn put_u64(v: u64) -> [u8; 8] {
        if Self::BIG {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
}

pub(crate) struct LittleEndian;
pub(crate) struct BigEndian;

impl ByteOrder for LittleEndian {
    const BIG: bool = false;
}

impl ByteOrder for BigEndian {
    const BIG: bool = true;
}
