//! CDR -> JSON. Walks the schema and the buffer together and writes JSON text as it
//! goes. Every length read from the buffer is checked against the bytes left before
//! anything is allocated for it, so a hostile buffer costs at most its own size.

use std::marker::PhantomData;

use serde_json::Value;

use super::error::{DecodeError, DecodeErrorKind, Segment};
use super::json_out::{write_base64, write_f32, write_f64, write_int, write_str, write_str_bytes};
use super::{BigEndian, ByteOrder, LittleEndian};
use crate::ros::msgdef::{ArrayKind, Primitive};
use crate::ros::schema::{Elem, MsgSchema, TypeSchema};

/// How the decoder renders values that JSON has no single form for.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeOptions {
    /// Write `uint8`/`byte` arrays as arrays of numbers instead of base64 strings.
    pub bytes_as_arrays: bool,
}

/// Padding a sender may leave after the last field (to the next multiple of 4).
const MAX_TRAILING: usize = 3;

/// Decodes one serialized message (encapsulation header included) and appends its JSON
/// text to `out`. On error `out` may hold a partial document.
pub fn decode_to_json(
    schema: &MsgSchema,
    cdr: &[u8],
    opts: &DecodeOptions,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let (big, body) = split_header(cdr)?;
    if big {
        Decoder::<BigEndian>::run(schema, body, opts, out)
    } else {
        Decoder::<LittleEndian>::run(schema, body, opts, out)
    }
}

/// Decodes one serialized message into a JSON value.
pub fn decode_to_value(
    schema: &MsgSchema,
    cdr: &[u8],
    opts: &DecodeOptions,
) -> Result<Value, DecodeError> {
    let mut out = Vec::with_capacity(cdr.len() * 2 + 16);
    decode_to_json(schema, cdr, opts, &mut out)?;
    serde_json::from_slice(&out).map_err(|e| DecodeError {
        path: Vec::new(),
        offset: 0,
        kind: DecodeErrorKind::Internal(e.to_string()),
    })
}

/// Reads the 4-byte encapsulation header: returns (big endian, body).
pub fn split_header(cdr: &[u8]) -> Result<(bool, &[u8]), DecodeError> {
    if cdr.len() < 4 {
        return Err(DecodeError::at(0, DecodeErrorKind::NoHeader(cdr.len())));
    }
    let id = u16::from_be_bytes([cdr[0], cdr[1]]);
    let big = match id {
        0x0000 => true,
        0x0001 => false,
        other => {
            return Err(DecodeError::at(0, DecodeErrorKind::Encapsulation(other)));
        }
    };
    Ok((big, &cdr[4..]))
}

struct Decoder<'a, 'o, O> {
    buf: &'a [u8],
    pos: usize,
    out: &'o mut Vec<u8>,
    bytes_as_arrays: bool,
    _order: PhantomData<O>,
}

type Result<T, E = DecodeError> = std::result::Result<T, E>;

impl<'a, 'o, O: ByteOrder> Decoder<'a, 'o, O> {
    fn run(
        schema: &MsgSchema,
        body: &'a [u8],
        opts: &DecodeOptions,
        out: &'o mut Vec<u8>,
    ) -> Result<()> {
        let mut d = Decoder::<O> {
            buf: body,
            pos: 0,
            out,
            bytes_as_arrays: opts.bytes_as_arrays,
            _order: PhantomData,
        };
        d.message(schema)?;
        let left = d.buf.len().saturating_sub(d.pos);
        if left > MAX_TRAILING {
            return Err(d.error(DecodeErrorKind::Trailing(left)));
        }
        Ok(())
    }

    fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::at(self.pos + 4, kind)
    }

    #[inline]
    fn align(&mut self, n: usize) {
        self.pos = (self.pos + (n - 1)) & !(n - 1);
    }

    #[inline]
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(self.error(DecodeErrorKind::Truncated {
                need: n,
                left: self.left(),
            })),
        }
    }

    #[inline]
    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.align(N);
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    fn u32(&mut self) -> Result<u32> {
        Ok(O::u32(self.take_array::<4>()?))
    }

    fn message(&mut self, schema: &MsgSchema) -> Result<()> {
        if schema.fields.is_empty() {
            // The placeholder byte ROS 2 gives an empty message.
            self.take(1)?;
            self.out.extend_from_slice(b"{}");
            return Ok(());
        }
        self.out.push(b'{');
        for (i, field) in schema.fields.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            field.json_key.write_to(self.out);
            self.value(&field.ty)
                .map_err(|e| e.within(Segment::Field(field.name.clone())))?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn value(&mut self, ty: &TypeSchema) -> Result<()> {
        let count = match ty.array {
            ArrayKind::Single => return self.element(&ty.elem),
            ArrayKind::Fixed(n) => n as usize,
            ArrayKind::Bounded(_) | ArrayKind::Unbounded => {
                let n = self.u32()? as usize;
                let need = (n as u64).saturating_mul(ty.elem.min_size() as u64);
                if need > self.left() as u64 {
                    return Err(self.error(DecodeErrorKind::SequenceTooLong {
                        len: n,
                        need,
                        left: self.left(),
                    }));
                }
                n
            }
        };
        match &ty.elem {
            Elem::Prim(p) => self.primitive_array(*p, count),
            elem => {
                self.out.push(b'[');
                for i in 0..count {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.element(elem)
                        .map_err(|e| e.within(Segment::Index(i)))?;
                }
                self.out.push(b']');
                Ok(())
            }
        }
    }

    fn element(&mut self, elem: &Elem) -> Result<()> {
        match elem {
            Elem::Prim(p) => self.primitive(*p),
            Elem::Str { wide: false, .. } => self.string(),
            Elem::Str { wide: true, .. } => self.wstring(),
            Elem::Msg(m) => self.message(m),
        }
    }

    fn primitive(&mut self, p: Primitive) -> Result<()> {
        match p {
            Primitive::Bool => {
                let b = self.take(1)?[0];
                match b {
                    0 => self.out.extend_from_slice(b"false"),
                    1 => self.out.extend_from_slice(b"true"),
                    other => {
                        self.pos -= 1;
                        return Err(self.error(DecodeErrorKind::Bool(other)));
                    }
                }
            }
            Primitive::Byte | Primitive::Char | Primitive::Uint8 => {
                let b = self.take(1)?[0];
                write_int(self.out, b);
            }
            Primitive::Int8 => {
                let b = self.take(1)?[0];
                write_int(self.out, b as i8);
            }
            Primitive::Int16 => {
                let v = O::u16(self.take_array()?) as i16;
                write_int(self.out, v);
            }
            Primitive::Uint16 => {
                let v = O::u16(self.take_array()?);
                write_int(self.out, v);
            }
            Primitive::Int32 => {
                let v = O::u32(self.take_array()?) as i32;
                write_int(self.out, v);
            }
            Primitive::Uint32 => {
                let v = O::u32(self.take_array()?);
                write_int(self.out, v);
            }
            Primitive::Int64 => {
                let v = O::u64(self.take_array()?) as i64;
                write_int(self.out, v);
            }
            Primitive::Uint64 => {
                let v = O::u64(self.take_array()?);
                write_int(self.out, v);
            }
            Primitive::Float32 => {
                let v = f32::from_bits(O::u32(self.take_array()?));
                write_f32(self.out, v);
            }
            Primitive::Float64 => {
                let v = f64::from_bits(O::u64(self.take_array()?));
                write_f64(self.out, v);
            }
        }
        Ok(())
    }

    /// `count` primitives stored back to back: one bounds check, then a tight loop.
    fn primitive_array(&mut self, p: Primitive, count: usize) -> Result<()> {
        let size = p.size();
        // Writers align the first element only; an empty sequence gets no padding.
        if count > 0 {
            self.align(size);
        }
        let start = self.pos;
        let data = self.take(count.saturating_mul(size))?;
        if p.is_octet() && !self.bytes_as_arrays {
            write_base64(self.out, data);
            return Ok(());
        }
        let out = &mut *self.out;
        out.reserve(count * (size * 3 + 1) + 2);
        out.push(b'[');
        macro_rules! each {
            ($n:literal, |$a:ident| $body:expr) => {
                for (i, chunk) in data.chunks_exact($n).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let mut $a = [0u8; $n];
                    $a.copy_from_slice(chunk);
                    $body;
                }
            };
        }
        match p {
            Primitive::Bool => {
                for (i, &b) in data.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match b {
                        0 => out.extend_from_slice(b"false"),
                        1 => out.extend_from_slice(b"true"),
                        other => {
                            self.pos = start + i;
                            return Err(self
                                .error(DecodeErrorKind::Bool(other))
                                .within(Segment::Index(i)));
                        }
                    }
                }
            }
            Primitive::Byte | Primitive::Char | Primitive::Uint8 => {
                each!(1, |a| write_int(out, a[0]))
            }
            Primitive::Int8 => each!(1, |a| write_int(out, a[0] as i8)),
            Primitive::Int16 => each!(2, |a| write_int(out, O::u16(a) as i16)),
            Primitive::Uint16 => each!(2, |a| write_int(out, O::u16(a))),
            Primitive::Int32 => each!(4, |a| write_int(out, O::u32(a) as i32)),
            Primitive::Uint32 => each!(4, |a| write_int(out, O::u32(a))),
            Primitive::Int64 => each!(8, |a| write_int(out, O::u64(a) as i64)),
            Primitive::Uint64 => each!(8, |a| write_int(out, O::u64(a))),
            Primitive::Float32 => each!(4, |a| write_f32(out, f32::from_bits(O::u32(a)))),
            Primitive::Float64 => each!(8, |a| write_f64(out, f64::from_bits(O::u64(a)))),
        }
        out.push(b']');
        Ok(())
    }

    fn string(&mut self) -> Result<()> {
        let len = self.u32()? as usize;
        let left = self.left();
        if len > left {
            return Err(self.error(DecodeErrorKind::StringTooLong { len, left }));
        }
        let raw = self.take(len)?;
        // The length counts the terminating NUL; tolerate senders that omit it.
        let text = match raw.split_last() {
            Some((0, head)) => head,
            _ => raw,
        };
        write_str_bytes(self.out, text);
        Ok(())
    }

    /// A wide string: its length in UTF-16 code units, then the units, no terminator.
    fn wstring(&mut self) -> Result<()> {
        let len = self.u32()? as usize;
        let left = self.left();
        if len.saturating_mul(2) > left {
            return Err(self.error(DecodeErrorKind::StringTooLong { len: len * 2, left }));
        }
        let raw = self.take(len * 2)?;
        let units = raw.chunks_exact(2).map(|c| O::u16([c[0], c[1]]));
        let s: String = char::decode_utf16(units)
            .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect();
        write_str(self.out, &s);
        Ok(())
    }
}
