//! JSON -> CDR. Produces the bytes a ROS 2 node writes for the same values:
//! alignment relative to the end of the encapsulation header, zero padding, string
//! terminators, sequence lengths. Missing fields take the definition's default (or
//! zero) unless strict mode is asked for.

use std::marker::PhantomData;

use base64::Engine as _;
use serde_json::{Map, Value};

use super::error::{EncodeError, EncodeErrorKind, Segment};
use super::{BigEndian, ByteOrder, LittleEndian};
use crate::ros::msgdef::{ArrayKind, Primitive};
use crate::ros::schema::{Elem, MsgSchema, TypeSchema};

#[derive(Debug, Clone, Copy, Default)]
pub struct EncodeOptions {
    /// Every field must be present; defaults are not filled in.
    pub strict: bool,
    /// Write big-endian CDR (ROS 2 nodes write little-endian on every common CPU).
    pub big_endian: bool,
}

type Result<T, E = EncodeError> = std::result::Result<T, E>;

/// Encodes a JSON value as a serialized message, encapsulation header included.
pub fn encode_value(schema: &MsgSchema, value: &Value, opts: &EncodeOptions) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    encode_value_into(schema, value, opts, &mut out)?;
    Ok(out)
}

/// Like [`encode_value`], appending to `out` (cleared first).
pub fn encode_value_into(
    schema: &MsgSchema,
    value: &Value,
    opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    if opts.big_endian {
        out.extend_from_slice(&[0, 0, 0, 0]);
        Encoder::<BigEndian>::new(out, opts.strict).message(schema, Some(value))
    } else {
        out.extend_from_slice(&[0, 1, 0, 0]);
        Encoder::<LittleEndian>::new(out, opts.strict).message(schema, Some(value))
    }
}

/// Parses JSON text and encodes it.
pub fn encode_json(schema: &MsgSchema, json: &[u8], opts: &EncodeOptions) -> Result<Vec<u8>> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| EncodeError::new(EncodeErrorKind::Json(e.to_string())))?;
    encode_value(schema, &value, opts)
}

struct Encoder<'o, O> {
    out: &'o mut Vec<u8>,
    strict: bool,
    _order: PhantomData<O>,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn type_error(expected: impl Into<String>, got: &Value) -> EncodeError {
    EncodeError::new(EncodeErrorKind::Type {
        expected: expected.into(),
        got: kind_of(got),
    })
}

impl<'o, O: ByteOrder> Encoder<'o, O> {
    fn new(out: &'o mut Vec<u8>, strict: bool) -> Self {
        Self {
            out,
            strict,
            _order: PhantomData,
        }
    }

    #[inline]
    fn align(&mut self, n: usize) {
        // Offsets count from the end of the 4-byte header.
        let rel = self.out.len() - 4;
        let pad = (n - rel % n) % n;
        self.out.resize(self.out.len() + pad, 0);
    }

    fn put_u32(&mut self, v: u32) {
        self.align(4);
        self.out.extend_from_slice(&O::put_u32(v));
    }

    fn length(&mut self, len: usize) -> Result<()> {
        let n = u32::try_from(len).map_err(|_| EncodeError::new(EncodeErrorKind::TooLarge(len)))?;
        self.put_u32(n);
        Ok(())
    }

    fn message(&mut self, schema: &MsgSchema, value: Option<&Value>) -> Result<()> {
        let map: Option<&Map<String, Value>> = match value {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => return Err(type_error(format!("an object for {}", schema.name), other)),
        };
        if let Some(m) = map {
            if let Some(k) = m.keys().find(|k| schema.field(k).is_none()) {
                return Err(EncodeError::new(EncodeErrorKind::UnknownField)
                    .within(Segment::Field(k.clone())));
            }
        }
        if schema.fields.is_empty() {
            self.out.push(0);
            return Ok(());
        }
        for field in &schema.fields {
            let given = map.and_then(|m| m.get(&field.name));
            let v = match given {
                Some(v) => Some(v),
                None if self.strict && map.is_some() => {
                    return Err(EncodeError::new(EncodeErrorKind::MissingField)
                        .within(Segment::Field(field.name.clone())));
                }
                None => field.default.as_ref(),
            };
            self.value(&field.ty, v)
                .map_err(|e| e.within(Segment::Field(field.name.clone())))?;
        }
        Ok(())
    }

    fn value(&mut self, ty: &TypeSchema, v: Option<&Value>) -> Result<()> {
        let bound = match ty.array {
            ArrayKind::Single => return self.element(&ty.elem, v),
            ArrayKind::Fixed(n) => {
                return self.fixed_array(ty, n, v);
            }
            ArrayKind::Bounded(b) => Some(b),
            ArrayKind::Unbounded => None,
        };
        let Some(v) = v else {
            return self.length(0);
        };
        if let (Elem::Prim(p), Value::String(s)) = (&ty.elem, v) {
            if p.is_octet() {
                let bytes = decode_base64(s)?;
                check_bound(bytes.len(), bound)?;
                self.length(bytes.len())?;
                self.out.extend_from_slice(&bytes);
                return Ok(());
            }
        }
        let items = self.array_items(ty, v)?;
        check_bound(items.len(), bound)?;
        self.length(items.len())?;
        self.items(&ty.elem, items)
    }

    fn fixed_array(&mut self, ty: &TypeSchema, n: u32, v: Option<&Value>) -> Result<()> {
        let Some(v) = v else {
            for _ in 0..n {
                self.element(&ty.elem, None)?;
            }
            return Ok(());
        };
        if let (Elem::Prim(p), Value::String(s)) = (&ty.elem, v) {
            if p.is_octet() {
                let bytes = decode_base64(s)?;
                if bytes.len() != n as usize {
                    return Err(EncodeError::new(EncodeErrorKind::FixedLength {
                        expected: n,
                        len: bytes.len(),
                    }));
                }
                self.out.extend_from_slice(&bytes);
                return Ok(());
            }
        }
        let items = self.array_items(ty, v)?;
        if items.len() != n as usize {
            return Err(EncodeError::new(EncodeErrorKind::FixedLength {
                expected: n,
                len: items.len(),
            }));
        }
        self.items(&ty.elem, items)
    }

    fn array_items<'v>(&self, ty: &TypeSchema, v: &'v Value) -> Result<&'v [Value]> {
        match v {
            Value::Array(items) => Ok(items),
            other => {
                let expected = match ty.elem {
                    Elem::Prim(p) if p.is_octet() => "a base64 string or an array of numbers",
                    _ => "an array",
                };
                Err(type_error(expected, other))
            }
        }
    }

    fn items(&mut self, elem: &Elem, items: &[Value]) -> Result<()> {
        for (i, item) in items.iter().enumerate() {
            self.element(elem, Some(item))
                .map_err(|e| e.within(Segment::Index(i)))?;
        }
        Ok(())
    }

    fn element(&mut self, elem: &Elem, v: Option<&Value>) -> Result<()> {
        match elem {
            Elem::Prim(p) => self.primitive(*p, v),
            Elem::Str { wide, bound } => {
                let s = match v {
                    None => "",
                    Some(Value::String(s)) => s.as_str(),
                    Some(other) => return Err(type_error("a string", other)),
                };
                if *wide {
                    self.wstring(s, *bound)
                } else {
                    self.string(s, *bound)
                }
            }
            Elem::Msg(m) => self.message(m, v),
        }
    }

    fn string(&mut self, s: &str, bound: Option<u32>) -> Result<()> {
        if let Some(b) = bound {
            let len = s.chars().count();
            if len > b as usize {
                return Err(EncodeError::new(EncodeErrorKind::StringBound {
                    len,
                    bound: b,
                }));
            }
        }
        self.length(s.len() + 1)?;
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(0);
        Ok(())
    }

    fn wstring(&mut self, s: &str, bound: Option<u32>) -> Result<()> {
        let units: Vec<u16> = s.encode_utf16().collect();
        if let Some(b) = bound {
            if units.len() > b as usize {
                return Err(EncodeError::new(EncodeErrorKind::StringBound {
                    len: units.len(),
                    bound: b,
                }));
            }
        }
        self.length(units.len())?;
        for u in units {
            self.out.extend_from_slice(&O::put_u16(u));
        }
        Ok(())
    }

    fn primitive(&mut self, p: Primitive, v: Option<&Value>) -> Result<()> {
        self.align(p.size());
        match p {
            Primitive::Bool => {
                let b = match v {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => return Err(type_error("a bool", other)),
                };
                self.out.push(u8::from(b));
            }
            Primitive::Float32 => {
                let x = float_of(v, p)?;
                if x.is_finite() && x.abs() > f64::from(f32::MAX) {
                    return Err(EncodeError::new(EncodeErrorKind::OutOfRange {
                        value: x.to_string(),
                        ty: "float32",
                        range: format!("±{:e}", f32::MAX),
                    }));
                }
                self.out
                    .extend_from_slice(&O::put_u32((x as f32).to_bits()));
            }
            Primitive::Float64 => {
                let x = float_of(v, p)?;
                self.out.extend_from_slice(&O::put_u64(x.to_bits()));
            }
            _ => {
                let i = int_of(v, p)?;
                // Two's complement truncation is exact after the range check.
                match p.size() {
                    1 => self.out.push(i as u8),
                    2 => self.out.extend_from_slice(&O::put_u16(i as u16)),
                    4 => self.out.extend_from_slice(&O::put_u32(i as u32)),
                    _ => self.out.extend_from_slice(&O::put_u64(i as u64)),
                }
            }
        }
        Ok(())
    }
}

fn check_bound(len: usize, bound: Option<u32>) -> Result<()> {
    match bound {
        Some(b) if len > b as usize => Err(EncodeError::new(EncodeErrorKind::SequenceBound {
            len,
            bound: b,
        })),
        _ => Ok(()),
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| EncodeError::new(EncodeErrorKind::Base64(e.to_string())))
}

fn int_of(v: Option<&Value>, p: Primitive) -> Result<i128> {
    let (lo, hi) = p.int_range().unwrap_or((0, 0));
    let i: i128 = match v {
        None => 0,
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                i128::from(i)
            } else if let Some(u) = n.as_u64() {
                i128::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                // Whole numbers written with a fraction (`5.0`) are accepted.
                if f.fract() != 0.0 || !f.is_finite() || f.abs() > 1.8e19 {
                    return Err(EncodeError::new(EncodeErrorKind::Type {
                        expected: format!("an integer for {}", p.name()),
                        got: "a fractional number",
                    }));
                }
                f as i128
            }
        }
        // A one-character string is accepted for `char`.
        Some(Value::String(s)) if p == Primitive::Char && s.len() == 1 => {
            i128::from(s.as_bytes()[0])
        }
        Some(other) => return Err(type_error(format!("an integer for {}", p.name()), other)),
    };
    if i < lo || i > hi {
        return Err(EncodeError::new(EncodeErrorKind::OutOfRange {
            value: i.to_string(),
            ty: p.name(),
            range: format!("{lo}..={hi}"),
        }));
    }
    Ok(i)
}

fn float_of(v: Option<&Value>, p: Primitive) -> Result<f64> {
    match v {
        None => Ok(0.0),
        Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(0.0)),
        Some(Value::String(s)) => match s.as_str() {
            "NaN" | "nan" => Ok(f64::NAN),
            "Infinity" | "inf" | "+Infinity" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            _ => Err(EncodeError::new(EncodeErrorKind::Type {
                expected: format!(
                    "a number for {} (or \"NaN\", \"Infinity\", \"-Infinity\")",
                    p.name()
                ),
                got: "another string",
            })),
        },
        Some(other) => Err(type_error(format!("a number for {}", p.name()), other)),
    }
}
