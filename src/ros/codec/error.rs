//! Codec errors. Each names the JSON path of the offending value (`pose.position.x`,
//! `points[3]`) so a user can find it in a message of hundreds of fields.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Field(String),
    Index(usize),
}

/// Renders `a.b[3].c`.
pub fn render_path(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Field(f) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(f);
            }
            Segment::Index(i) => {
                s.push('[');
                s.push_str(&i.to_string());
                s.push(']');
            }
        }
    }
    s
}

/// A CDR buffer that does not hold a valid message of the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Outermost first.
    pub path: Vec<Segment>,
    /// Byte offset in the whole buffer, header included.
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("{0} bytes is too short for the 4-byte CDR encapsulation header")]
    NoHeader(usize),
    #[error("unsupported encapsulation 0x{0:04x}: expected plain CDR (0x0000 big-endian or 0x0001 little-endian)")]
    Encapsulation(u16),
    #[error("needs {need} more bytes but only {left} are left")]
    Truncated { need: usize, left: usize },
    #[error("sequence length {len} needs at least {need} bytes but only {left} are left")]
    SequenceTooLong { len: usize, need: u64, left: usize },
    #[error("string length {len} exceeds the {left} bytes left")]
    StringTooLong { len: usize, left: usize },
    #[error("invalid bool value {0} (expected 0 or 1)")]
    Bool(u8),
    #[error("{0} bytes left over after the message: the data is not of this type")]
    Trailing(usize),
    #[error("internal error: {0}")]
    Internal(String),
}

impl DecodeError {
    pub(crate) fn at(offset: usize, kind: DecodeErrorKind) -> Self {
        Self {
            path: Vec::new(),
            offset,
            kind,
        }
    }

    /// Adds an outer path segment while the error travels up.
    pub(crate) fn within(mut self, seg: Segment) -> Self {
        self.path.insert(0, seg);
        self
    }

    pub fn path_string(&self) -> String {
        render_path(&self.path)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path_string())?;
        }
        write!(f, "{} (at byte {})", self.kind, self.offset)
    }
}

impl std::error::Error for DecodeError {}

/// A JSON value that cannot be encoded as the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    pub path: Vec<Segment>,
    pub kind: EncodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeErrorKind {
    #[error("unknown field")]
    UnknownField,
    #[error("missing field (strict mode)")]
    MissingField,
    #[error("expected {expected}, got {got}")]
    Type { expected: String, got: &'static str },
    #[error("{value} is out of range for {ty} ({range})")]
    OutOfRange {
        value: String,
        ty: &'static str,
        range: String,
    },
    #[error("array needs exactly {expected} elements, got {len}")]
    FixedLength { expected: u32, len: usize },
    #[error("sequence has {len} elements, more than its bound of {bound}")]
    SequenceBound { len: usize, bound: u32 },
    #[error("string has {len} characters, more than its bound of {bound}")]
    StringBound { len: usize, bound: u32 },
    #[error("sequence of {0} elements is too long for CDR")]
    TooLarge(usize),
    #[error("not valid base64: {0}")]
    Base64(String),
    #[error("invalid JSON: {0}")]
    Json(String),
}

impl EncodeError {
    pub(crate) fn new(kind: EncodeErrorKind) -> Self {
        Self {
            path: Vec::new(),
            kind,
        }
    }

    pub(crate) fn within(mut self, seg: Segment) -> Self {
        self.path.insert(0, seg);
        self
    }

    pub fn path_string(&self) -> String {
        render_path(&self.path)
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path_string())?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for EncodeError {}
