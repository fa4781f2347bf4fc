//! A message type resolved for the codec: every nested type looked up, field keys
//! pre-rendered for JSON, defaults converted, sizes known. Built once per type by the
//! [`Registry`](super::registry::Registry) and shared (`Arc`) by every codec call.

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

use super::codec::json_out::JsonKey;
use super::msgdef::{ArrayKind, ConstantDef, FieldType, Literal, Primitive};

/// The deepest nesting of message types accepted; real interfaces stay far below it.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug)]
pub struct MsgSchema {
    /// `pkg/msg/Type` or `pkg/srv/Type_Request`.
    pub name: String,
    pub fields: Vec<FieldSchema>,
    pub constants: Vec<ConstantDef>,
    /// The fewest bytes one value occupies on the wire, padding aside (at least 1).
    pub min_size: usize,
    /// 1 for a message of primitives, one more per level of nested message.
    pub depth: usize,
}

#[derive(Debug)]
pub struct FieldSchema {
    pub name: String,
    /// `"name":`, ready to copy into JSON output.
    pub(crate) json_key: JsonKey,
    pub ty: TypeSchema,
    /// The type as written in the definition, for display.
    pub declared: FieldType,
    /// The definition's default value in the codec's JSON form.
    pub default: Option<Value>,
}

#[derive(Debug)]
pub struct TypeSchema {
    pub elem: Elem,
    pub array: ArrayKind,
}

#[derive(Debug)]
pub enum Elem {
    Prim(Primitive),
    Str { wide: bool, bound: Option<u32> },
    Msg(Arc<MsgSchema>),
}

impl Elem {
    /// Fewest wire bytes of one element.
    pub fn min_size(&self) -> usize {
        match self {
            Elem::Prim(p) => p.size(),
            // A string is at least its 4-byte length.
            Elem::Str { .. } => 4,
            Elem::Msg(m) => m.min_size,
        }
    }
}

impl TypeSchema {
    pub fn min_size(&self) -> usize {
        match self.array {
            ArrayKind::Single => self.elem.min_size(),
            ArrayKind::Fixed(n) => self.elem.min_size().saturating_mul(n as usize),
            ArrayKind::Bounded(_) | ArrayKind::Unbounded => 4,
        }
    }
}

impl MsgSchema {
    pub(crate) fn new(name: String, fields: Vec<FieldSchema>, constants: Vec<ConstantDef>) -> Self {
        // ROS 2 gives a message without fields one uint8 so it has a size.
        let min_size = fields
            .iter()
            .map(|f| f.ty.min_size())
            .fold(0usize, usize::saturating_add)
            .max(1);
        let depth = 1 + fields
            .iter()
            .map(|f| match &f.ty.elem {
                Elem::Msg(m) => m.depth,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        Self {
            name,
            fields,
            constants,
            min_size,
            depth,
        }
    }

    /// The fully expanded definition, nested types indented by a tab, in the
    /// style of `ros2 interface show`.
    pub fn expanded_definition(&self) -> String {
        let mut out = String::new();
        self.write_expanded(&mut out, 0);
        out
    }

    fn write_expanded(&self, out: &mut String, indent: usize) {
        let pad = "\t".repeat(indent);
        for c in &self.constants {
            let _ = writeln!(out, "{pad}{} {}={}", c.ty, c.name, c.value);
        }
        for f in &self.fields {
            let _ = write!(out, "{pad}{} {}", f.declared, f.name);
            if let Some(d) = &f.default {
                let _ = write!(out, " {d}");
            }
            out.push('\n');
            if let Elem::Msg(m) = &f.ty.elem {
                m.write_expanded(out, indent + 1);
            }
        }
    }

    pub fn field(&self, name: &str) -> Option<&FieldSchema> {
        self.fields.iter().find(|f| f.name == name)
    }
}

impl FieldSchema {
    pub(crate) fn new(
        name: String,
        ty: TypeSchema,
        declared: FieldType,
        default: Option<&Literal>,
    ) -> Self {
        Self {
            json_key: JsonKey::new(&name),
            name,
            ty,
            declared,
            default: default.map(literal_to_json),
        }
    }
}

/// A definition literal in the codec's JSON form (non-finite floats as strings).
pub fn literal_to_json(lit: &Literal) -> Value {
    match lit {
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Int(i) => {
            if let Ok(v) = i64::try_from(*i) {
                Value::from(v)
            } else if let Ok(v) = u64::try_from(*i) {
                Value::from(v)
            } else {
                // The parser range-checks every integer, so this is unreachable in practice.
                Value::String(i.to_string())
            }
        }
        Literal::Float(f) => float_to_json(*f),
        Literal::Str(s) => Value::String(s.clone()),
        Literal::Array(items) => Value::Array(items.iter().map(literal_to_json).collect()),
    }
}

pub fn float_to_json(f: f64) -> Value {
    if f.is_nan() {
        Value::String("NaN".into())
    } else if f == f64::INFINITY {
        Value::String("Infinity".into())
    } else if f == f64::NEG_INFINITY {
        Value::String("-Infinity".into())
    } else {
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}
