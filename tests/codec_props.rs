//! Property tests: for generated definitions and values, decode(encode(x)) == x in both
//! byte orders; and no buffer, however hostile, makes the decoder panic.

mod support;

use std::sync::Arc;

use base64::Engine as _;
use edge_agent::ros::codec::{self, DecodeOptions, EncodeOptions};
use edge_agent::ros::msgdef::{ArrayKind, Primitive};
use edge_agent::ros::schema::{float_to_json, Elem, MsgSchema, TypeSchema};
use edge_agent::ros::Registry;
use proptest::prelude::*;
use serde_json::{Map, Value};
use support::{json_matches, test_registry};

const PRIMITIVES: [Primitive; 13] = [
    Primitive::Bool,
    Primitive::Byte,
    Primitive::Char,
    Primitive::Int8,
    Primitive::Uint8,
    Primitive::Int16,
    Primitive::Uint16,
    Primitive::Int32,
    Primitive::Uint32,
    Primitive::Int64,
    Primitive::Uint64,
    Primitive::Float32,
    Primitive::Float64,
];

/// A generated message definition, before it is named and registered.
#[derive(Debug, Clone)]
enum GenBase {
    Prim(Primitive),
    Str { wide: bool, bound: Option<u32> },
    Msg(GenMsg),
}

#[derive(Debug, Clone)]
struct GenField {
    base: GenBase,
    array: ArrayKind,
}

#[derive(Debug, Clone)]
struct GenMsg {
    fields: Vec<GenField>,
}

fn array_kind() -> impl Strategy<Value = ArrayKind> {
    prop_oneof![
        4 => Just(ArrayKind::Single),
        1 => (1u32..5).prop_map(ArrayKind::Fixed),
        1 => (0u32..5).prop_map(ArrayKind::Bounded),
        1 => Just(ArrayKind::Unbounded),
    ]
}

fn leaf_base() -> impl Strategy<Value = GenBase> {
    prop_oneof![
        4 => prop::sample::select(PRIMITIVES.to_vec()).prop_map(GenBase::Prim),
        1 => (any::<bool>(), prop::option::of(0u32..6))
            .prop_map(|(wide, bound)| GenBase::Str { wide, bound }),
    ]
}

fn gen_msg() -> impl Strategy<Value = GenMsg> {
    let leaf = prop::collection::vec((leaf_base(), array_kind()), 0..6).prop_map(|fs| GenMsg {
        fields: fs
            .into_iter()
            .map(|(base, array)| GenField { base, array })
            .collect(),
    });
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop::collection::vec(
            (
                prop_oneof![3 => leaf_base(), 1 => inner.prop_map(GenBase::Msg)],
                array_kind(),
            ),
            0..6,
        )
        .prop_map(|fs| GenMsg {
            fields: fs
                .into_iter()
                .map(|(base, array)| GenField { base, array })
                .collect(),
        })
    })
}

/// Writes the generated types as .msg text into a registry; returns the top type's name.
fn register(reg: &mut Registry, msg: &GenMsg, counter: &mut usize) -> String {
    let name = format!("prop_msgs/msg/M{counter}");
    *counter += 1;
    let mut text = String::new();
    for (i, f) in msg.fields.iter().enumerate() {
        let base = match &f.base {
            GenBase::Prim(p) => p.name().to_owned(),
            GenBase::Str { wide, bound } => {
                let mut s = if *wide { "wstring" } else { "string" }.to_owned();
                if let Some(b) = bound {
                    s.push_str(&format!("<={b}"));
                }
                s
            }
            GenBase::Msg(m) => register(reg, m, counter).replace("/msg/", "/"),
        };
        let suffix = match f.array {
            ArrayKind::Single => String::new(),
            ArrayKind::Fixed(n) => format!("[{n}]"),
            ArrayKind::Bounded(n) => format!("[<={n}]"),
            ArrayKind::Unbounded => "[]".to_owned(),
        };
        text.push_str(&format!("{base}{suffix} f{i}\n"));
    }
    reg.add_text(&name, &text)
        .expect("generated definition is valid");
    name
}

fn int_value(p: Primitive) -> BoxedStrategy<Value> {
    match p {
        Primitive::Int64 => any::<i64>().prop_map(Value::from).boxed(),
        Primitive::Uint64 => any::<u64>().prop_map(Value::from).boxed(),
        _ => {
            let (lo, hi) = p.int_range().expect("integer type");
            ((lo as i64)..=(hi as i64)).prop_map(Value::from).boxed()
        }
    }
}

fn elem_value(elem: &Elem) -> BoxedStrategy<Value> {
    match elem {
        Elem::Prim(Primitive::Bool) => any::<bool>().prop_map(Value::Bool).boxed(),
        Elem::Prim(Primitive::Float32) => any::<f32>()
            .prop_map(|x| float_to_json(f64::from(x)))
            .boxed(),
        Elem::Prim(Primitive::Float64) => any::<f64>().prop_map(float_to_json).boxed(),
        Elem::Prim(p) => int_value(*p),
        Elem::Str { wide, bound } => {
            let max = bound.map_or(12, |b| b as usize);
            let chars = prop::collection::vec(any::<char>(), 0..=max);
            let wide = *wide;
            chars
                .prop_map(move |cs| {
                    let s: String = cs.into_iter().collect();
                    // A bounded wstring counts UTF-16 units: keep to one unit per char.
                    if wide {
                        Value::String(s.chars().filter(|c| c.len_utf16() == 1).collect())
                    } else {
                        Value::String(s)
                    }
                })
                .boxed()
        }
        Elem::Msg(m) => msg_value(m.clone()),
    }
}

fn type_value(ty: &TypeSchema) -> BoxedStrategy<Value> {
    let len = match ty.array {
        ArrayKind::Single => return elem_value(&ty.elem),
        ArrayKind::Fixed(n) => (n as usize)..=(n as usize),
        ArrayKind::Bounded(n) => 0..=(n as usize),
        ArrayKind::Unbounded => 0..=6,
    };
    if let Elem::Prim(p) = ty.elem {
        if p.is_octet() {
            return prop::collection::vec(any::<u8>(), len)
                .prop_map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b)))
                .boxed();
        }
    }
    prop::collection::vec(elem_value(&ty.elem), len)
        .prop_map(Value::Array)
        .boxed()
}

fn msg_value(schema: Arc<MsgSchema>) -> BoxedStrategy<Value> {
    let fields: Vec<BoxedStrategy<(String, Value)>> = schema
        .fields
        .iter()
        .map(|f| {
            let name = f.name.clone();
            type_value(&f.ty)
                .prop_map(move |v| (name.clone(), v))
                .boxed()
        })
        .collect();
    fields
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
        .boxed()
}

fn schema_and_value() -> impl Strategy<Value = (Arc<MsgSchema>, Value)> {
    gen_msg().prop_flat_map(|m| {
        let mut reg = Registry::new();
        let mut counter = 0;
        let name = register(&mut reg, &m, &mut counter);
        let schema = reg.schema(&name).expect("generated type resolves");
        (Just(schema.clone()), msg_value(schema))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode((schema, value) in schema_and_value(), big_endian in any::<bool>()) {
        let opts = EncodeOptions { strict: true, big_endian };
        let cdr = codec::encode_value(&schema, &value, &opts).expect("generated value encodes");
        let back = codec::decode_to_value(&schema, &cdr, &DecodeOptions::default())
            .unwrap_or_else(|e| panic!("decode failed: {e}\nschema {}", schema.expanded_definition()));
        if let Err(e) = json_matches(&schema, &back, &value) {
            panic!("{e}\ndefinition:\n{}", schema.expanded_definition());
        }
        // Re-encoding the decoded value gives the same bytes.
        let again = codec::encode_value(&schema, &back, &opts).expect("decoded value encodes");
        prop_assert_eq!(again, cdr);
    }

    #[test]
    fn truncated_or_corrupted_buffers_are_errors_not_panics(
        (schema, value) in schema_and_value(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let cdr = codec::encode_value(&schema, &value, &EncodeOptions::default()).unwrap();
        // Truncation past the last 3 bytes (which may be padding) must be an error.
        let keep = cut.index(cdr.len());
        let result = codec::decode_to_value(&schema, &cdr[..keep], &DecodeOptions::default());
        if keep + 3 < cdr.len() || keep < 4 {
            prop_assert!(result.is_err(), "truncated to {} of {} bytes decoded", keep, cdr.len());
        }
        let mut bad = cdr.clone();
        for (at, byte) in flips {
            let i = at.index(bad.len());
            bad[i] = byte;
        }
        let mut out = Vec::new();
        if codec::decode_to_json(&schema, &bad, &DecodeOptions::default(), &mut out).is_ok() {
            prop_assert!(serde_json::from_slice::<Value>(&out).is_ok(), "decoder wrote invalid JSON");
        }
    }

    #[test]
    fn random_bytes_never_panic(type_index in 0usize..12, body in prop::collection::vec(any::<u8>(), 0..512), big in any::<bool>()) {
        let reg = test_registry();
        let names = [
            "codec_test_msgs/msg/Nested", "codec_test_msgs/msg/Arrays", "codec_test_msgs/msg/AllPrimitives",
            "sensor_msgs/msg/Image", "sensor_msgs/msg/JointState", "sensor_msgs/msg/NavSatFix",
            "geometry_msgs/msg/PoseArray", "vision_msgs/msg/Detection2DArray", "nav_msgs/msg/Odometry",
            "diagnostic_msgs/msg/DiagnosticArray", "std_msgs/msg/String", "edge_agent_msgs/msg/RobotStatus",
        ];
        let schema = reg.schema(names[type_index]).unwrap();
        let mut cdr = vec![0, u8::from(!big), 0, 0];
        cdr.extend_from_slice(&body);
        let mut out = Vec::new();
        if codec::decode_to_json(&schema, &cdr, &DecodeOptions::default(), &mut out).is_ok() {
            prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            // Whatever decodes re-encodes.
            let v: Value = serde_json::from_slice(&out).unwrap();
            prop_assert!(codec::encode_value(&schema, &v, &EncodeOptions::default()).is_ok());
        }
    }
}
