//! Raw CDR through a serde-based DDS stack. ros2-client hands the application values
//! through serde, not bytes, so for a type known only at run time:
//!
//! - [`RawCdrSeed`] is a `DeserializeSeed` that walks the message definition, asks the
//!   DDS deserializer for each primitive, string and sequence in order, and writes them
//!   back as little-endian CDR: the same bytes the publisher sent (byte order aside).
//!   Strings and byte sequences are taken whole, so invalid UTF-8 survives and an image
//!   costs one copy.
//! - [`RawBody`] is a `Serialize` that replays already-encoded CDR through the DDS
//!   serializer. Alignment in CDR is relative to the start of the body, so writing the
//!   bytes as `u8` (and as `u64` where 8-aligned) reproduces them exactly.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};

use crate::ros::msgdef::{ArrayKind, Primitive};
use crate::ros::schema::{Elem, MsgSchema, TypeSchema};

/// A serialized message, encapsulation header included (always little-endian here).
#[derive(Debug, Clone)]
pub struct RawCdr(pub Bytes);

/// Rebuilds the CDR of one message of `schema`.
#[derive(Clone)]
pub struct RawCdrSeed {
    pub schema: Arc<MsgSchema>,
}

impl<'de> DeserializeSeed<'de> for RawCdrSeed {
    type Value = RawCdr;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawCdr, D::Error> {
        let mut out = Vec::with_capacity(self.schema.min_size * 2 + 16);
        out.extend_from_slice(&[0, 1, 0, 0]);
        MsgSeed {
            schema: &self.schema,
            out: &mut out,
        }
        .deserialize(d)?;
        Ok(RawCdr(Bytes::from(out)))
    }
}

/// Output buffer helpers: alignment counts from the end of the 4-byte header.
fn align(out: &mut Vec<u8>, n: usize) {
    let rel = out.len() - 4;
    let pad = (n - rel % n) % n;
    out.resize(out.len() + pad, 0);
}

struct MsgSeed<'a> {
    schema: &'a MsgSchema,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for MsgSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.schema.fields.is_empty() {
            // The placeholder byte of an empty message.
            return PrimSeed {
                p: Primitive::Uint8,
                out: self.out,
            }
            .deserialize(d);
        }
        let n = self.schema.fields.len();
        d.deserialize_tuple(n, self)
    }
}

impl<'de> Visitor<'de> for MsgSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {} message", self.schema.name)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for (i, field) in self.schema.fields.iter().enumerate() {
            seq.next_element_seed(TypeSeed {
                ty: &field.ty,
                out: &mut *self.out,
            })?
            .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        Ok(())
    }
}

struct TypeSeed<'a> {
    ty: &'a TypeSchema,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for TypeSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let octets = matches!(self.ty.elem, Elem::Prim(p) if p.is_octet());
        match self.ty.array {
            ArrayKind::Single => ElemSeed {
                elem: &self.ty.elem,
                out: self.out,
            }
            .deserialize(d),
            ArrayKind::Fixed(n) => d.deserialize_tuple(
                n as usize,
                ArrayVisitor {
                    elem: &self.ty.elem,
                    count: Some(n as usize),
                    out: self.out,
                },
            ),
            ArrayKind::Bounded(_) | ArrayKind::Unbounded if octets => {
                d.deserialize_bytes(BytesVisitor {
                    out: self.out,
                    what: "a byte sequence",
                })
            }
            ArrayKind::Bounded(_) | ArrayKind::Unbounded => d.deserialize_seq(ArrayVisitor {
                elem: &self.ty.elem,
                count: None,
                out: self.out,
            }),
        }
    }
}

/// Fixed arrays (`count` known) and sequences (count written after the elements are read).
struct ArrayVisitor<'a> {
    elem: &'a Elem,
    count: Option<usize>,
    out: &'a mut Vec<u8>,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array or sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let len_at = if self.count.is_none() {
            align(self.out, 4);
            let at = self.out.len();
            self.out.extend_from_slice(&[0; 4]);
            Some(at)
        } else {
            None
        };
        let mut n: u32 = 0;
        loop {
            if self.count.is_some_and(|c| n as usize == c) {
                break;
            }
            let got = seq.next_element_seed(ElemSeed {
                elem: self.elem,
                out: &mut *self.out,
            })?;
            if got.is_none() {
                if let Some(c) = self.count {
                    return Err(de::Error::invalid_length(
                        n as usize,
                        &format!("{c} elements").as_str(),
                    ));
                }
                break;
            }
            n += 1;
        }
        if let Some(at) = len_at {
            self.out[at..at + 4].copy_from_slice(&n.to_le_bytes());
        }
        Ok(())
    }
}

/// A length-prefixed run of bytes (a string with its NUL, or a `uint8[]`), copied whole.
struct BytesVisitor<'a> {
    out: &'a mut Vec<u8>,
    what: &'static str,
}

impl<'de> Visitor<'de> for BytesVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        align(self.out, 4);
        let n = u32::try_from(v.len()).map_err(|_| E::custom("sequence too long"))?;
        self.out.extend_from_slice(&n.to_le_bytes());
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<(), E> {
        self.visit_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<(), E> {
        self.visit_bytes(&v)
    }
}

struct ElemSeed<'a> {
    elem: &'a Elem,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for ElemSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.elem {
            Elem::Prim(p) => PrimSeed {
                p: *p,
                out: self.out,
            }
            .deserialize(d),
            // A CDR string is its length (NUL included) and its bytes: taken as they are.
            Elem::Str { wide: false, .. } => d.deserialize_bytes(BytesVisitor {
                out: self.out,
                what: "a string",
            }),
            Elem::Str { wide: true, .. } => d.deserialize_seq(ArrayVisitor {
                elem: &Elem::Prim(Primitive::Uint16),
                count: None,
                out: self.out,
            }),
            Elem::Msg(m) => MsgSeed {
                schema: m,
                out: self.out,
            }
            .deserialize(d),
        }
    }
}

struct PrimSeed<'a> {
    p: Primitive,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for PrimSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.p {
            Primitive::Bool => d.deserialize_bool(self),
            Primitive::Byte | Primitive::Char | Primitive::Uint8 => d.deserialize_u8(self),
            Primitive::Int8 => d.deserialize_i8(self),
            Primitive::Int16 => d.deserialize_i16(self),
            Primitive::Uint16 => d.deserialize_u16(self),
            Primitive::Int32 => d.deserialize_i32(self),
            Primitive::Uint32 => d.deserialize_u32(self),
            Primitive::Int64 => d.deserialize_i64(self),
            Primitive::Uint64 => d.deserialize_u64(self),
            Primitive::Float32 => d.deserialize_f32(self),
            Primitive::Float64 => d.deserialize_f64(self),
        }
    }
}

macro_rules! visit_num {
    ($name:ident, $t:ty) => {
        fn $name<E: de::Error>(self, v: $t) -> Result<(), E> {
            align(self.out, std::mem::size_of::<$t>());
            self.out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
    };
}

impl<'de> Visitor<'de> for PrimSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {}", self.p.name())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.out.push(u8::from(v));
        Ok(())
    }

    visit_num!(visit_i8, i8);
    visit_num!(visit_u8, u8);
    visit_num!(visit_i16, i16);
    visit_num!(visit_u16, u16);
    visit_num!(visit_i32, i32);
    visit_num!(visit_u32, u32);
    visit_num!(visit_i64, i64);
    visit_num!(visit_u64, u64);
    visit_num!(visit_f32, f32);
    visit_num!(visit_f64, f64);
}

/// Already-encoded CDR (the body, after the 4-byte header) replayed through a serde
/// serializer that writes little-endian CDR.
#[derive(Debug)]
pub struct RawBody {
    pub body: Bytes,
    /// Zero bytes appended so the whole sample (header + body) is a multiple of 4:
    /// Cyclone DDS 0.10 (inside ROS 2 Humble and Jazzy) drops fragmented samples whose
    /// size is not, and the padding is harmless to every reader.
    pub pad: usize,
}

impl RawBody {
    /// From a full serialized message (header included, little-endian).
    pub fn from_cdr(cdr: &Bytes) -> Self {
        let body = cdr.slice(4.min(cdr.len())..);
        let pad = (4 - (4 + body.len()) % 4) % 4;
        Self { body, pad }
    }
}

impl Serialize for RawBody {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = &self.body[..];
        let mut t = s.serialize_tuple(b.len() + self.pad)?;
        // The body starts 8-aligned: u64 words (same bytes, little-endian), then the tail.
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            t.serialize_element(&u64::from_le_bytes(a))?;
        }
        for x in words.remainder() {
            t.serialize_element(x)?;
        }
        for _ in 0..self.pad {
            t.serialize_element(&0u8)?;
        }
        t.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ros::codec::{self, EncodeOptions};
    use crate::ros::Registry;
    use serde_json::json;

    fn reg() -> Registry {
        let mut r = Registry::new();
        r.add_bundled();
        r
    }

    /// Round trip through cdr-encoding's serializer and deserializer (what RustDDS uses).
    fn through_cdr_encoding(schema: &Arc<MsgSchema>, cdr: &Bytes) -> Bytes {
        let raw = RawBody::from_cdr(cdr);
        let mut body = Vec::new();
        cdr_encoding::to_writer::<_, byteorder::LittleEndian, _>(&mut body, &raw).unwrap();
        let seed = RawCdrSeed {
            schema: schema.clone(),
        };
        let mut de = cdr_encoding::CdrDeserializer::<byteorder::LittleEndian>::new(&body);
        seed.deserialize(&mut de).unwrap().0
    }

    #[test]
    fn serde_round_trip_is_byte_exact() {
        let r = reg();
        let cases = [
            (
                "sensor_msgs/msg/NavSatFix",
                json!({"header":{"frame_id":"gps"},"latitude":1.5,"position_covariance":[1,2,3,4,5,6,7,8,9]}),
            ),
            (
                "sensor_msgs/msg/JointState",
                json!({"name":["a","bc"],"position":[1.0,2.0],"velocity":[],"effort":[3.0]}),
            ),
            (
                "sensor_msgs/msg/Image",
                json!({"height":2,"width":3,"encoding":"rgb8","step":9,"data":"AAECAwQFBgcICQoLDA0ODxAR"}),
            ),
            ("std_msgs/msg/Empty", json!({})),
            (
                "diagnostic_msgs/msg/DiagnosticArray",
                json!({"status":[{"level":1,"name":"x","values":[{"key":"k","value":"v"}]}]}),
            ),
            (
                "edge_agent_msgs/msg/RobotStatus",
                json!({"active_faults":["E1","E22"],"emergency_stop":true}),
            ),
        ];
        for (ty, v) in cases {
            let schema = r.schema(ty).unwrap();
            let cdr =
                Bytes::from(codec::encode_value(&schema, &v, &EncodeOptions::default()).unwrap());
            let back = through_cdr_encoding(&schema, &cdr);
            // The rebuilt message equals the original; padding added on the way is not
            // part of it.
            assert_eq!(&back[..], &cdr[..], "{ty}");
        }
    }

    #[test]
    fn padding_makes_the_sample_a_multiple_of_4() {
        for len in 0..12usize {
            let cdr = Bytes::from([vec![0, 1, 0, 0], vec![7u8; len]].concat());
            let raw = RawBody::from_cdr(&cdr);
            assert_eq!((4 + len + raw.pad) % 4, 0);
            let mut body = Vec::new();
            cdr_encoding::to_writer::<_, byteorder::LittleEndian, _>(&mut body, &raw).unwrap();
            assert_eq!(&body[..len], &cdr[4..]);
            assert!(body[len..].iter().all(|b| *b == 0));
        }
    }
}
