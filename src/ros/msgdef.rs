//! The model of a ROS 2 interface definition (`.msg`, `.srv`) and its parser.
//!
//! The grammar follows what `rosidl_adapter` accepts: one field or constant per
//! line, `#` comments, primitive and nested types, bounded strings, fixed arrays,
//! bounded and unbounded sequences, default values and constants. A malformed
//! definition is an error naming the file, line and column, because these files
//! are written by robot engineers and the message is all they will see.

use std::fmt;

/// A primitive type of the ROS 2 interface language (strings are separate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Primitive {
    Bool,
    Byte,
    Char,
    Int8,
    Uint8,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Float32,
    Float64,
}

impl Primitive {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "bool" => Self::Bool,
            "byte" => Self::Byte,
            "char" => Self::Char,
            "int8" => Self::Int8,
            "uint8" => Self::Uint8,
            "int16" => Self::Int16,
            "uint16" => Self::Uint16,
            "int32" => Self::Int32,
            "uint32" => Self::Uint32,
            "int64" => Self::Int64,
            "uint64" => Self::Uint64,
            "float32" => Self::Float32,
            "float64" => Self::Float64,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Byte => "byte",
            Self::Char => "char",
            Self::Int8 => "int8",
            Self::Uint8 => "uint8",
            Self::Int16 => "int16",
            Self::Uint16 => "uint16",
            Self::Int32 => "int32",
            Self::Uint32 => "uint32",
            Self::Int64 => "int64",
            Self::Uint64 => "uint64",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
        }
    }

    /// Size on the wire, which is also its CDR alignment.
    pub const fn size(self) -> usize {
        match self {
            Self::Bool | Self::Byte | Self::Char | Self::Int8 | Self::Uint8 => 1,
            Self::Int16 | Self::Uint16 => 2,
            Self::Int32 | Self::Uint32 | Self::Float32 => 4,
            Self::Int64 | Self::Uint64 | Self::Float64 => 8,
        }
    }

    /// Inclusive integer range, for integer-like primitives.
    pub const fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Self::Byte | Self::Char | Self::Uint8 => (0, u8::MAX as i128),
            Self::Int8 => (i8::MIN as i128, i8::MAX as i128),
            Self::Int16 => (i16::MIN as i128, i16::MAX as i128),
            Self::Uint16 => (0, u16::MAX as i128),
            Self::Int32 => (i32::MIN as i128, i32::MAX as i128),
            Self::Uint32 => (0, u32::MAX as i128),
            Self::Int64 => (i64::MIN as i128, i64::MAX as i128),
            Self::Uint64 => (0, u64::MAX as i128),
            Self::Bool | Self::Float32 | Self::Float64 => return None,
        })
    }

    /// `uint8` and `byte` arrays carry binary data and go to JSON as base64.
    pub const fn is_octet(self) -> bool {
        matches!(self, Self::Uint8 | Self::Byte)
    }
}

/// A reference to another message type, `pkg/Type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypeRef {
    pub package: String,
    pub name: String,
}

impl fmt::Display for TypeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.package, self.name)
    }
}

/// The element type of a field, before any array suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseType {
    Primitive(Primitive),
    /// `string`, `wstring`, optionally bounded (`string<=10`).
    String {
        wide: bool,
        bound: Option<u32>,
    },
    Named(TypeRef),
}

/// The array suffix of a field type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayKind {
    Single,
    /// `T[N]`
    Fixed(u32),
    /// `T[<=N]`
    Bounded(u32),
    /// `T[]`
    Unbounded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldType {
    pub base: BaseType,
    pub array: ArrayKind,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.base {
            BaseType::Primitive(p) => f.write_str(p.name())?,
            BaseType::String { wide, bound } => {
                f.write_str(if *wide { "wstring" } else { "string" })?;
                if let Some(n) = bound {
                    write!(f, "<={n}")?;
                }
            }
            BaseType::Named(t) => write!(f, "{t}")?,
        }
        match self.array {
            ArrayKind::Single => Ok(()),
            ArrayKind::Fixed(n) => write!(f, "[{n}]"),
            ArrayKind::Bounded(n) => write!(f, "[<={n}]"),
            ArrayKind::Unbounded => f.write_str("[]"),
        }
    }
}

/// A literal value from a definition: a default value or a constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Array(Vec<Literal>),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x:?}"),
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldDef {
    pub name: String,
    pub ty: FieldType,
    pub default: Option<Literal>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConstantDef {
    pub name: String,
    pub ty: FieldType,
    pub value: Literal,
}

/// One message: a `.msg` file, or one half of a `.srv` file.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageDef {
    pub package: String,
    pub name: String,
    pub fields: Vec<FieldDef>,
    pub constants: Vec<ConstantDef>,
}

impl MessageDef {
    /// `pkg/msg/Type` (or `pkg/srv/Type_Request`).
    pub fn full_name(&self) -> String {
        let ns = if is_action_part(&self.name) {
            "action"
        } else if self.name.ends_with("_Request") || self.name.ends_with("_Response") {
            "srv"
        } else {
            "msg"
        };
        format!("{}/{}/{}", self.package, ns, self.name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDef {
    pub request: MessageDef,
    pub response: MessageDef,
}

/// A malformed definition: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct DefinitionError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses the text of a `.msg` file for `package/name`. `file` names the source in errors.
pub fn parse_message(
    text: &str,
    package: &str,
    name: &str,
    file: &str,
) -> Result<MessageDef, DefinitionError> {
    let mut parser = Parser::new(package, file);
    let mut msg = MessageDef {
        package: package.to_owned(),
        name: name.to_owned(),
        fields: Vec::new(),
        constants: Vec::new(),
    };
    for (idx, raw) in text.lines().enumerate() {
        parser.line = idx + 1;
        if let Some(line) = parser.significant(raw) {
            if line.text == "---" {
                return Err(parser.error(
                    line.col,
                    "'---' separates the parts of a .srv file; a .msg file cannot have it",
                ));
            }
            parser.member(&line, &mut msg)?;
        }
    }
    Ok(msg)
}

/// Parses the text of a `.srv` file for `package/name`.
pub fn parse_service(
    text: &str,
    package: &str,
    name: &str,
    file: &str,
) -> Result<ServiceDef, DefinitionError> {
    let mut parser = Parser::new(package, file);
    let mut request = MessageDef {
        package: package.to_owned(),
        name: format!("{name}_Request"),
        fields: Vec::new(),
        constants: Vec::new(),
    };
    let mut response = MessageDef {
        package: package.to_owned(),
        name: format!("{name}_Response"),
        fields: Vec::new(),
        constants: Vec::new(),
    };
    let mut in_response = false;
    for (idx, raw) in text.lines().enumerate() {
        parser.line = idx + 1;
        if let Some(line) = parser.significant(raw) {
            if line.text == "---" {
                if in_response {
                    return Err(
                        parser.error(line.col, "a .srv file has exactly one '---' separator")
                    );
                }
                in_response = true;
                continue;
            }
            let target = if in_response {
                &mut response
            } else {
                &mut request
            };
            parser.member(&line, target)?;
        }
    }
    if !in_response {
        parser.line = text.lines().count().max(1);
        return Err(parser.error(
            1,
            "a .srv file needs a '---' line between request and response",
        ));
    }
    Ok(ServiceDef { request, response })
}

/// The types ROS 2 makes of each action `X`: `X_Goal`, `X_SendGoal_Request`…
pub const ACTION_PARTS: [&str; 8] = [
    "Goal",
    "Result",
    "Feedback",
    "FeedbackMessage",
    "SendGoal_Request",
    "SendGoal_Response",
    "GetResult_Request",
    "GetResult_Response",
];

/// Splits `X_SendGoal_Request` into `X` and `SendGoal_Request`, if it is an action part.
pub fn split_action_part(name: &str) -> Option<(&str, &str)> {
    let (base, part) = name.split_once('_')?;
    (is_type_name(base) && ACTION_PARTS.contains(&part)).then_some((base, part))
}

/// Whether `name` is one of the types ROS 2 makes of an action.
pub fn is_action_part(name: &str) -> bool {
    split_action_part(name).is_some()
}

/// The three parts of a `.action` file.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionDef {
    pub goal: MessageDef,
    pub result: MessageDef,
    pub feedback: MessageDef,
}

/// Parses a `.action` file: goal, `---`, result, `---`, feedback. The parts are named
/// `<name>_Goal`, `<name>_Result` and `<name>_Feedback`, as ROS 2 names them.
pub fn parse_action(
    text: &str,
    package: &str,
    name: &str,
    file: &str,
) -> Result<ActionDef, DefinitionError> {
    let mut parser = Parser::new(package, file);
    let part = |suffix: &str| MessageDef {
        package: package.to_owned(),
        name: format!("{name}_{suffix}"),
        fields: Vec::new(),
        constants: Vec::new(),
    };
    let mut parts = [part("Goal"), part("Result"), part("Feedback")];
    let mut at = 0;
    for (idx, raw) in text.lines().enumerate() {
        parser.line = idx + 1;
        if let Some(line) = parser.significant(raw) {
            if line.text == "---" {
                if at == 2 {
                    return Err(
                        parser.error(line.col, "a .action file has exactly two '---' separators")
                    );
                }
                at += 1;
                continue;
            }
            parser.member(&line, &mut parts[at])?;
        }
    }
    if at != 2 {
        parser.line = text.lines().count().max(1);
        return Err(parser.error(
            1,
            "a .action file needs two '---' lines: goal, result, feedback",
        ));
    }
    let [goal, result, feedback] = parts;
    Ok(ActionDef {
        goal,
        result,
        feedback,
    })
}

struct Parser<'a> {
    package: &'a str,
    file: &'a str,
    line: usize,
}

/// A line with its comment removed; `col` is the 1-based column where `text` starts.
struct Line<'t> {
    text: &'t str,
    col: usize,
}

impl<'a> Parser<'a> {
    fn new(package: &'a str, file: &'a str) -> Self {
        Self {
            package,
            file,
            line: 0,
        }
    }

    fn error(&self, column: usize, message: impl Into<String>) -> DefinitionError {
        DefinitionError {
            file: self.file.to_owned(),
            line: self.line,
            column,
            message: message.into(),
        }
    }

    /// Strips the comment (a `#` outside quotes) and surrounding blanks.
    fn significant<'t>(&self, raw: &'t str) -> Option<Line<'t>> {
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut end = raw.len();
        for (i, c) in raw.char_indices() {
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '#' => {
                        end = i;
                        break;
                    }
                    '"' | '\'' => quote = Some(c),
                    _ => {}
                },
            }
        }
        let code = &raw[..end];
        let trimmed = code.trim_start();
        let col = code.len() - trimmed.len() + 1;
        let text = trimmed.trim_end();
        (!text.is_empty()).then_some(Line { text, col })
    }

    /// One field or constant line.
    fn member(&self, line: &Line<'_>, msg: &mut MessageDef) -> Result<(), DefinitionError> {
        let text = line.text;
        let type_end = text.find(char::is_whitespace).unwrap_or(text.len());
        let type_token = &text[..type_end];
        let ty = self.field_type(type_token, line.col)?;
        let rest_raw = &text[type_end..];
        let rest = rest_raw.trim_start();
        let name_col = line.col + type_end + (rest_raw.len() - rest.len());
        if rest.is_empty() {
            return Err(self.error(
                line.col + type_end,
                format!("expected a field name after the type '{type_token}'"),
            ));
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        let after_raw = &rest[name_end..];
        let after = after_raw.trim_start();
        let after_col = name_col + name_end + (after_raw.len() - after.len());

        if let Some(value_raw) = after.strip_prefix('=') {
            // A constant.
            let value_text = value_raw.trim();
            let value_col = after_col + 1 + (value_raw.len() - value_raw.trim_start().len());
            if !is_constant_name(name) {
                return Err(self.error(
                    name_col,
                    format!("constant name '{name}' must be upper case: letters, digits and single underscores, starting with a letter"),
                ));
            }
            if ty.array != ArrayKind::Single || matches!(ty.base, BaseType::Named(_)) {
                return Err(self.error(
                    line.col,
                    format!("constant '{name}' must have a primitive or string type, not '{type_token}'"),
                ));
            }
            if value_text.is_empty() {
                return Err(self.error(value_col, format!("constant '{name}' has no value")));
            }
            let value = self.scalar_literal(&ty.base, value_text, value_col)?;
            if msg.constants.iter().any(|c| c.name == name) {
                return Err(self.error(name_col, format!("constant '{name}' is defined twice")));
            }
            msg.constants.push(ConstantDef {
                name: name.to_owned(),
                ty,
                value,
            });
            return Ok(());
        }

        if !is_field_name(name) {
            return Err(self.error(
                name_col,
                format!("field name '{name}' must be lower case: letters, digits and single underscores, starting with a letter and not ending with '_'"),
            ));
        }
        if msg.fields.iter().any(|f| f.name == name) {
            return Err(self.error(name_col, format!("field '{name}' is defined twice")));
        }
        let default = if after.is_empty() {
            None
        } else {
            Some(self.default_literal(&ty, after, after_col)?)
        };
        msg.fields.push(FieldDef {
            name: name.to_owned(),
            ty,
            default,
        });
        Ok(())
    }

    fn field_type(&self, token: &str, col: usize) -> Result<FieldType, DefinitionError> {
        let (base_token, array) = match token.strip_suffix(']') {
            Some(head) => {
                let open = head.rfind('[').ok_or_else(|| {
                    self.error(col, format!("type '{token}' has ']' without '['"))
                })?;
                let inner = &head[open + 1..];
                let inner_col = col + open + 1;
                let array = if inner.is_empty() {
                    ArrayKind::Unbounded
                } else if let Some(n) = inner.strip_prefix("<=") {
                    ArrayKind::Bounded(self.size(n, inner_col + 2, "sequence bound")?)
                } else {
                    let n = self.size(inner, inner_col, "array size")?;
                    if n == 0 {
                        return Err(
                            self.error(inner_col, "a fixed array needs at least one element")
                        );
                    }
                    ArrayKind::Fixed(n)
                };
                (&head[..open], array)
            }
            None => (token, ArrayKind::Single),
        };
        let base = self.base_type(base_token, col)?;
        Ok(FieldType { base, array })
    }

    fn size(&self, text: &str, col: usize, what: &str) -> Result<u32, DefinitionError> {
        text.parse::<u32>().map_err(|_| {
            self.error(
                col,
                format!("{what} '{text}' is not a non-negative integer"),
            )
        })
    }

    fn base_type(&self, token: &str, col: usize) -> Result<BaseType, DefinitionError> {
        for (prefix, wide) in [("string", false), ("wstring", true)] {
            if let Some(rest) = token.strip_prefix(prefix) {
                if rest.is_empty() {
                    return Ok(BaseType::String { wide, bound: None });
                }
                if let Some(n) = rest.strip_prefix("<=") {
                    let bound = self.size(n, col + prefix.len() + 2, "string bound")?;
                    return Ok(BaseType::String {
                        wide,
                        bound: Some(bound),
                    });
                }
            }
        }
        if token.is_empty() {
            return Err(self.error(col, "missing type"));
        }
        if let Some(p) = Primitive::from_name(token) {
            return Ok(BaseType::Primitive(p));
        }
        // ROS 1 spellings still found in robot repositories.
        match token {
            "time" => return Ok(named("builtin_interfaces", "Time")),
            "duration" => return Ok(named("builtin_interfaces", "Duration")),
            "Header" => return Ok(named("std_msgs", "Header")),
            _ => {}
        }
        let parts: Vec<&str> = token.split('/').collect();
        let (package, name) = match parts.as_slice() {
            [name] => (self.package, *name),
            [package, name] => (*package, *name),
            [package, "msg", name] => (*package, *name),
            _ => {
                return Err(self.error(
                    col,
                    format!("unknown type '{token}': expected a primitive, 'pkg/Type' or 'Type'"),
                ))
            }
        };
        if !is_package_name(package) {
            return Err(self.error(
                col,
                format!("'{package}' in type '{token}' is not a valid package name"),
            ));
        }
        if !is_type_name(name) {
            return Err(self.error(
                col,
                format!("unknown type '{token}': not a primitive, and '{name}' is not a valid message name (CamelCase)"),
            ));
        }
        Ok(named(package, name))
    }

    fn default_literal(
        &self,
        ty: &FieldType,
        text: &str,
        col: usize,
    ) -> Result<Literal, DefinitionError> {
        if let BaseType::Named(t) = &ty.base {
            return Err(self.error(
                col,
                format!("a field of message type '{t}' cannot have a default value"),
            ));
        }
        if ty.array == ArrayKind::Single {
            return self.scalar_literal(&ty.base, text, col);
        }
        let inner = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(|| {
                self.error(
                    col,
                    format!("default of array field must be written [a, b, ...], got '{text}'"),
                )
            })?;
        let items = split_items(inner).map_err(|m| self.error(col, m))?;
        let mut values = Vec::with_capacity(items.len());
        for (offset, item) in items {
            values.push(self.scalar_literal(&ty.base, item, col + 1 + offset)?);
        }
        let n = values.len();
        match ty.array {
            ArrayKind::Fixed(len) if n != len as usize => Err(self.error(
                col,
                format!("default has {n} elements but the array has exactly {len}"),
            )),
            ArrayKind::Bounded(len) if n > len as usize => Err(self.error(
                col,
                format!("default has {n} elements but the sequence holds at most {len}"),
            )),
            _ => Ok(Literal::Array(values)),
        }
    }

    fn scalar_literal(
        &self,
        base: &BaseType,
        text: &str,
        col: usize,
    ) -> Result<Literal, DefinitionError> {
        match base {
            BaseType::String { bound, .. } => {
                let s = unquote(text).map_err(|m| self.error(col, m))?;
                if let Some(b) = bound {
                    if s.chars().count() > *b as usize {
                        return Err(self
                            .error(col, format!("string value is longer than its bound of {b}")));
                    }
                }
                Ok(Literal::Str(s))
            }
            BaseType::Primitive(Primitive::Bool) => match text {
                "true" | "True" | "1" => Ok(Literal::Bool(true)),
                "false" | "False" | "0" => Ok(Literal::Bool(false)),
                _ => Err(self.error(col, format!("'{text}' is not a bool (true or false)"))),
            },
            BaseType::Primitive(p @ (Primitive::Float32 | Primitive::Float64)) => {
                let v: f64 = text.parse().map_err(|_| {
                    self.error(col, format!("'{text}' is not a number for {}", p.name()))
                })?;
                Ok(Literal::Float(v))
            }
            BaseType::Primitive(p) => {
                let v = parse_int(text)
                    .or_else(|| {
                        // `char` may be written as a one-character quoted literal.
                        (*p == Primitive::Char)
                            .then(|| unquote(text).ok())
                            .flatten()
                            .filter(|s| s.len() == 1)
                            .map(|s| i128::from(s.as_bytes()[0]))
                    })
                    .ok_or_else(|| {
                        self.error(col, format!("'{text}' is not an integer for {}", p.name()))
                    })?;
                let (lo, hi) = p.int_range().unwrap_or((0, 0));
                if v < lo || v > hi {
                    return Err(self.error(
                        col,
                        format!("{v} is out of range for {} ({lo}..={hi})", p.name()),
                    ));
                }
                Ok(Literal::Int(v))
            }
            BaseType::Named(t) => Err(self.error(
                col,
                format!("a value of message type '{t}' cannot be written in a definition"),
            )),
        }
    }
}

fn named(package: &str, name: &str) -> BaseType {
    BaseType::Named(TypeRef {
        package: package.to_owned(),
        name: name.to_owned(),
    })
}

fn parse_int(text: &str) -> Option<i128> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let v = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i128::from_str_radix(hex, 16).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i128>().ok()?
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}

/// A string literal: quoted with `"` or `'` (backslash escapes the quote and itself),
/// or the bare text.
fn unquote(text: &str) -> Result<String, String> {
    let Some(first) = text.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        return Ok(text.to_owned());
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text[1..].chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => return Err(format!("unterminated string {text}")),
            }
        } else if c == first {
            if chars.as_str().trim().is_empty() {
                return Ok(out);
            }
            return Err(format!("unexpected text after the closing quote in {text}"));
        } else {
            out.push(c);
        }
    }
    Err(format!("unterminated string {text}"))
}

/// Splits `a, "b,c", d` at top-level commas, with each item's byte offset.
fn split_items(inner: &str) -> Result<Vec<(usize, &str)>, String> {
    let mut items = Vec::new();
    if inner.trim().is_empty() {
        return Ok(items);
    }
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut start = 0;
    fn push<'s>(items: &mut Vec<(usize, &'s str)>, inner: &'s str, from: usize, to: usize) {
        let piece = &inner[from..to];
        let trimmed = piece.trim_start();
        items.push((from + piece.len() - trimmed.len(), trimmed.trim_end()));
    }
    for (i, c) in inner.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                ',' => {
                    push(&mut items, inner, start, i);
                    start = i + 1;
                }
                _ => {}
            },
        }
    }
    if quote.is_some() {
        return Err("unterminated string in array default".to_owned());
    }
    push(&mut items, inner, start, inner.len());
    if items.iter().any(|(_, s)| s.is_empty()) {
        return Err("empty element in array default".to_owned());
    }
    Ok(items)
}

pub fn is_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        && !name.contains("__")
        && !name.ends_with('_')
}

fn is_constant_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_uppercase()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
        && !name.contains("__")
        && !name.ends_with('_')
}

pub fn is_package_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

pub fn is_type_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b[0].is_ascii_uppercase() && b.iter().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MessageDef, DefinitionError> {
        parse_message(text, "demo_msgs", "Thing", "demo_msgs/msg/Thing.msg")
    }

    #[test]
    fn parses_every_kind_of_member() {
        let msg = parse(
            "# a comment\n\
             \n\
             bool flag true  # trailing comment\n\
             byte b\n\
             char c 65\n\
             int8 i8 -3\n\
             uint64 big 18446744073709551615\n\
             float32 ratio 0.5\n\
             string name \"hello # not a comment\"\n\
             wstring<=8 label\n\
             string<=4[<=2] tags\n\
             int32[3] fixed [1, 2, 3]\n\
             float64[] values\n\
             geometry_msgs/Point p\n\
             Other local\n\
             int32 MAX_SPEED=10\n\
             string GREETING = it's\n",
        )
        .unwrap();
        let names: Vec<_> = msg.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "flag", "b", "c", "i8", "big", "ratio", "name", "label", "tags", "fixed", "values",
                "p", "local"
            ]
        );
        assert_eq!(msg.fields[0].default, Some(Literal::Bool(true)));
        assert_eq!(msg.fields[4].default, Some(Literal::Int(u64::MAX as i128)));
        assert_eq!(
            msg.fields[6].default,
            Some(Literal::Str("hello # not a comment".into()))
        );
        assert_eq!(
            msg.fields[8].ty,
            FieldType {
                base: BaseType::String {
                    wide: false,
                    bound: Some(4)
                },
                array: ArrayKind::Bounded(2)
            }
        );
        assert_eq!(msg.fields[9].ty.array, ArrayKind::Fixed(3));
        assert_eq!(msg.fields[10].ty.array, ArrayKind::Unbounded);
        assert_eq!(
            msg.fields[12].ty.base,
            BaseType::Named(TypeRef {
                package: "demo_msgs".into(),
                name: "Other".into()
            })
        );
        assert_eq!(msg.constants.len(), 2);
        assert_eq!(msg.constants[0].value, Literal::Int(10));
        assert_eq!(msg.constants[1].value, Literal::Str("it's".into()));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = parse("int32 a\nfloat64 b\nstrng c\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.column, 1);
        assert!(
            err.to_string().starts_with("demo_msgs/msg/Thing.msg:3:1: "),
            "{err}"
        );

        let err = parse("  uint8 x 300\n").unwrap_err();
        assert_eq!((err.line, err.column), (1, 11));
        assert!(
            err.message.contains("300 is out of range for uint8"),
            "{err}"
        );

        let err = parse("int32 Bad\n").unwrap_err();
        assert_eq!((err.line, err.column), (1, 7));
        assert!(err.message.contains("field name 'Bad'"));

        let err = parse("int32[0] x\n").unwrap_err();
        assert!(err.message.contains("at least one element"), "{err}");

        let err = parse("int32[3] x [1, 2]\n").unwrap_err();
        assert!(err.message.contains("exactly 3"), "{err}");

        let err = parse("int32 x\nint32 x\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("defined twice"));

        let err = parse("int32\n").unwrap_err();
        assert!(err.message.contains("expected a field name"));

        let err = parse("geometry_msgs/Point p 3\n").unwrap_err();
        assert!(err.message.contains("cannot have a default"));

        let err = parse("int32[] X=1\n").unwrap_err();
        assert!(err.message.contains("primitive or string type"));

        let err = parse("string<=3 s \"long\"\n").unwrap_err();
        assert!(err.message.contains("longer than its bound"));
    }

    #[test]
    fn parses_services() {
        let srv = parse_service(
            "bool data # set\n---\nbool success\nstring message\n",
            "std_srvs",
            "SetBool",
            "SetBool.srv",
        )
        .unwrap();
        assert_eq!(srv.request.name, "SetBool_Request");
        assert_eq!(srv.response.fields.len(), 2);
        assert_eq!(srv.request.full_name(), "std_srvs/srv/SetBool_Request");

        let empty = parse_service("---\n", "std_srvs", "Empty", "Empty.srv").unwrap();
        assert!(empty.request.fields.is_empty() && empty.response.fields.is_empty());

        let err = parse_service("bool a\n", "p", "S", "S.srv").unwrap_err();
        assert!(err.message.contains("'---'"));
        let err = parse_service("---\n---\n", "p", "S", "S.srv").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn type_display_round_trips() {
        for t in [
            "int32",
            "string<=5",
            "wstring",
            "float64[9]",
            "a_msgs/B[<=3]",
            "string<=2[]",
        ] {
            let parsed = Parser::new("x", "f").field_type(t, 1).unwrap();
            assert_eq!(parsed.to_string(), t);
        }
    }
}
