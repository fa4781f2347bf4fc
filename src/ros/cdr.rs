//! CDR for the fixed ROS types the agent itself reads and writes (images, the camera's
//! frames): serde structs over `cdr-encoding`, the encoding crate the DDS transport
//! already uses, with the 4-byte encapsulation header handled here. Messages of any
//! other type go through the dynamic codec (`super::codec`); both honour the byte order
//! the header names.
//!
//! `ros_discovery_info` keeps its own strict reader in `transport::dds::graph`: its GID
//! size depends on the ROS distribution, and it tells the distributions apart by
//! refusing a buffer that does not fit one of them exactly.

use byteorder::{BigEndian, LittleEndian};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Why a CDR buffer could not be read as the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdrError {
    #[error("the message is cut short")]
    Truncated,
    #[error("unknown CDR encapsulation {0:02x} {1:02x} (expected plain CDR, 00 00 or 00 01)")]
    Encapsulation(u8, u8),
    #[error("malformed CDR: {0}")]
    Malformed(String),
}

impl From<cdr_encoding::Error> for CdrError {
    fn from(e: cdr_encoding::Error) -> Self {
        match e {
            cdr_encoding::Error::Eof => CdrError::Truncated,
            other => CdrError::Malformed(other.to_string()),
        }
    }
}

/// Reads a message (encapsulation header included) in the byte order its header names.
/// A [`Blob`] points into `cdr`.
pub fn read<'de, T: Deserialize<'de>>(cdr: &'de [u8]) -> Result<T, CdrError> {
    let (big, body) = body(cdr)?;
    let (v, _) = if big {
        cdr_encoding::from_bytes::<T, BigEndian>(body)?
    } else {
        cdr_encoding::from_bytes::<T, LittleEndian>(body)?
    };
    Ok(v)
}

/// Splits the encapsulation header off: (big-endian, body).
pub fn body(cdr: &[u8]) -> Result<(bool, &[u8]), CdrError> {
    let Some((head, body)) = cdr.split_first_chunk::<4>() else {
        return Err(CdrError::Truncated);
    };
    match (head[0], head[1]) {
        (0, 0) => Ok((true, body)),
        (0, 1) => Ok((false, body)),
        (a, b) => Err(CdrError::Encapsulation(a, b)),
    }
}

/// Writes a message as every ROS 2 middleware on a little-endian machine does:
/// header `00 01 00 00`, then the body.
pub fn write_le<T: Serialize>(v: &T, size_hint: usize) -> Vec<u8> {
    write(v, size_hint, false)
}

/// Writes a message in the given byte order (big-endian for tests and for robots that
/// send it).
pub fn write<T: Serialize>(v: &T, size_hint: usize, big: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + size_hint);
    out.extend_from_slice(if big { &[0, 0, 0, 0] } else { &[0, 1, 0, 0] });
    // Serialising the agent's own structs into memory cannot fail: every field has a
    // CDR form and a Vec accepts every write.
    let r = if big {
        cdr_encoding::to_writer::<T, BigEndian, _>(&mut out, v)
    } else {
        cdr_encoding::to_writer::<T, LittleEndian, _>(&mut out, v)
    };
    debug_assert!(r.is_ok(), "CDR serialisation of a fixed type failed: {r:?}");
    out
}

/// `uint8[]` as CDR lays it out (a count, then the bytes), borrowed from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob<'a>(pub &'a [u8]);

impl Serialize for Blob<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Blob<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Blob<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a uint8 sequence")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

/// `builtin_interfaces/Time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

/// `std_msgs/Header`. (The encoding crate hands strings over as copies, so text is a
/// `Cow`: borrowed when writing, owned when read.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header<'a> {
    pub stamp: Time,
    #[serde(borrow)]
    pub frame_id: Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample<'a> {
        #[serde(borrow)]
        header: Header<'a>,
        flag: u8,
        count: u32,
        #[serde(borrow)]
        data: Blob<'a>,
    }

    #[test]
    fn both_byte_orders_read_back_and_the_header_names_the_order() {
        let s = Sample {
            header: Header {
                stamp: Time {
                    sec: -2,
                    nanosec: 7,
                },
                frame_id: "cam".into(),
            },
            flag: 1,
            count: 0x0102_0304,
            data: Blob(&[9, 8, 7]),
        };
        for big in [false, true] {
            let b = write(&s, 64, big);
            assert_eq!(&b[..2], if big { &[0u8, 0] } else { &[0u8, 1] });
            assert_eq!(read::<Sample>(&b).unwrap(), s, "big={big}");
        }
        // Same layout, other order: the count is where the header says it is.
        let le = write_le(&s, 64);
        assert!(le.windows(4).any(|w| w == [4, 3, 2, 1]));
    }

    #[test]
    fn short_and_unknown_buffers_are_errors() {
        assert_eq!(read::<Time>(&[0, 1]).unwrap_err(), CdrError::Truncated);
        assert_eq!(
            read::<Time>(&[0, 1, 0, 0, 1, 0]).unwrap_err(),
            CdrError::Truncated
        );
        assert_eq!(
            read::<Time>(&[0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            CdrError::Encapsulation(0, 3)
        );
        // A count larger than the buffer.
        let mut b = write_le(&Blob(&[1, 2]), 8);
        b[4] = 200;
        assert_eq!(read::<Blob>(&b).unwrap_err(), CdrError::Truncated);
    }
}
