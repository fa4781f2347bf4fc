//! Bad input gets an error that says what and where; defaults fill what is left out.

mod support;

use edge_agent::ros::codec::{self, DecodeErrorKind, DecodeOptions, EncodeOptions};
use serde_json::{json, Value};
use support::test_registry;

fn encode_err(type_name: &str, value: Value, strict: bool) -> String {
    let reg = test_registry();
    let schema = reg.schema(type_name).unwrap();
    let opts = EncodeOptions {
        strict,
        big_endian: false,
    };
    codec::encode_value(&schema, &value, &opts)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn encode_errors_name_the_json_path() {
    let cases = [
        (
            "geometry_msgs/msg/PoseStamped",
            json!({"pose": {"position": {"q": 1}}}),
            "pose.position.q: unknown field",
        ),
        (
            "sensor_msgs/msg/NavSatFix",
            json!({"header": {"frame_id": 7}}),
            "header.frame_id: expected a string, got a number",
        ),
        (
            "sensor_msgs/msg/NavSatFix",
            json!({"status": {"status": 300}}),
            "status.status: 300 is out of range for int8 (-128..=127)",
        ),
        (
            "sensor_msgs/msg/NavSatFix",
            json!({"position_covariance": [1, 2, 3]}),
            "position_covariance: array needs exactly 9 elements, got 3",
        ),
        (
            "sensor_msgs/msg/NavSatFix",
            json!({"latitude": "north"}),
            "latitude: expected a number for float64 (or \"NaN\", \"Infinity\", \"-Infinity\"), got another string",
        ),
        (
            "sensor_msgs/msg/JointState",
            json!({"position": [1.0, true]}),
            "position[1]: expected a number for float64, got a bool",
        ),
        (
            "codec_test_msgs/msg/Arrays",
            json!({"u8s": vec![0; 17]}),
            "u8s: sequence has 17 elements, more than its bound of 16",
        ),
        (
            "codec_test_msgs/msg/Arrays",
            json!({"short_texts": ["a", "abcd"]}),
            "short_texts[1]: string has 4 characters, more than its bound of 3",
        ),
        (
            "codec_test_msgs/msg/AllPrimitives",
            json!({"i32": 1.5}),
            "i32: expected an integer for int32, got a fractional number",
        ),
        (
            "codec_test_msgs/msg/AllPrimitives",
            json!({"u64": -1}),
            "u64: -1 is out of range for uint64 (0..=18446744073709551615)",
        ),
        (
            "codec_test_msgs/msg/AllPrimitives",
            json!({"f32": 1e39}),
            "f32: 1000000000000000000000000000000000000000 is out of range for float32",
        ),
        (
            "sensor_msgs/msg/Image",
            json!({"data": "not base64!"}),
            "data: not valid base64",
        ),
        (
            "sensor_msgs/msg/Image",
            json!({"data": {"x": 1}}),
            "data: expected a base64 string or an array of numbers, got an object",
        ),
        (
            "codec_test_msgs/msg/Nested",
            json!({"arrays": [{}, {"msgs": [{"flag": 2}]}]}),
            "arrays[1].msgs[0].flag: expected a bool, got a number",
        ),
        (
            "std_msgs/msg/String",
            json!(["data"]),
            "expected an object for std_msgs/msg/String, got an array",
        ),
    ];
    for (ty, value, expected) in cases {
        let err = encode_err(ty, value.clone(), false);
        assert!(
            err.starts_with(expected),
            "{ty} {value}:\n got      {err}\n expected {expected}"
        );
    }
}

#[test]
fn strict_mode_refuses_missing_fields() {
    let err = encode_err("geometry_msgs/msg/Point", json!({"x": 1.0, "y": 2.0}), true);
    assert_eq!(err, "z: missing field (strict mode)");
}

#[test]
fn invalid_json_text_is_reported() {
    let reg = test_registry();
    let schema = reg.schema("std_msgs/String").unwrap();
    let err = codec::encode_json(&schema, b"{\"data\": ", &EncodeOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid JSON: EOF while parsing"),
        "{err}"
    );
}

#[test]
fn missing_fields_take_definition_defaults() {
    let reg = test_registry();
    let pose = reg.schema("geometry_msgs/msg/Pose").unwrap();
    let cdr = codec::encode_value(
        &pose,
        &json!({"position": {"x": 2.5}}),
        &EncodeOptions::default(),
    )
    .unwrap();
    let back = codec::decode_to_value(&pose, &cdr, &DecodeOptions::default()).unwrap();
    assert_eq!(
        back,
        json!({"position": {"x": 2.5, "y": 0.0, "z": 0.0}, "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}})
    );

    let status = reg.schema("edge_agent_msgs/msg/RobotStatus").unwrap();
    let cdr = codec::encode_value(&status, &json!({}), &EncodeOptions::default()).unwrap();
    let back = codec::decode_to_value(&status, &cdr, &DecodeOptions::default()).unwrap();
    assert_eq!(back["mode"], "auto");
    assert_eq!(back["emergency_stop"], false);
    assert_eq!(back["active_faults"], json!([]));
}

#[test]
fn decode_errors_say_where_and_why() {
    let reg = test_registry();
    let string = reg.schema("std_msgs/msg/String").unwrap();
    let d = |schema, bytes: &[u8]| {
        codec::decode_to_value(schema, bytes, &DecodeOptions::default()).unwrap_err()
    };

    let e = d(&string, &[0, 1]);
    assert_eq!(e.kind, DecodeErrorKind::NoHeader(2));

    let e = d(&string, &[0, 0x07, 0, 0, 1, 0, 0, 0, 0]);
    assert!(
        e.to_string().contains("unsupported encapsulation 0x0007"),
        "{e}"
    );

    // A length prefix of 4 GiB with 3 bytes behind it: an error, not an allocation.
    let e = d(
        &string,
        &[0, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, b'a', b'b', 0],
    );
    assert_eq!(
        e.to_string(),
        "data: string length 4294967295 exceeds the 3 bytes left (at byte 8)"
    );

    let joints = reg.schema("sensor_msgs/msg/JointState").unwrap();
    let mut cdr = codec::encode_value(&joints, &json!({}), &EncodeOptions::default()).unwrap();
    // Claim 2^28 names in an otherwise empty message.
    cdr[20..24].copy_from_slice(&(1u32 << 28).to_le_bytes());
    let e = d(&joints, &cdr);
    assert!(
        e.to_string()
            .starts_with("name: sequence length 268435456 needs at least 1073741824 bytes"),
        "{e}"
    );

    let point = reg.schema("geometry_msgs/msg/Point").unwrap();
    let cdr = codec::encode_value(&point, &json!({}), &EncodeOptions::default()).unwrap();
    let e = d(&point, &cdr[..16]);
    assert_eq!(
        e.to_string(),
        "y: needs 8 more bytes but only 4 are left (at byte 12)"
    );

    let mut long = cdr.clone();
    long.extend_from_slice(&[0; 8]);
    let e = d(&point, &long);
    assert!(
        e.to_string()
            .starts_with("8 bytes left over after the message"),
        "{e}"
    );
    // Up to 3 bytes of padding after the message are accepted.
    let mut padded =
        codec::encode_value(&string, &json!({"data": "a"}), &EncodeOptions::default()).unwrap();
    padded.extend_from_slice(&[0, 0]);
    assert_eq!(
        codec::decode_to_value(&string, &padded, &DecodeOptions::default()).unwrap(),
        json!({"data": "a"})
    );

    let flags = reg.schema("codec_test_msgs/msg/AllPrimitives").unwrap();
    let mut cdr = codec::encode_value(&flags, &json!({}), &EncodeOptions::default()).unwrap();
    cdr[4] = 9;
    let e = d(&flags, &cdr);
    assert_eq!(
        e.to_string(),
        "flag: invalid bool value 9 (expected 0 or 1) (at byte 4)"
    );
}

#[test]
fn wstring_is_utf16_code_units_without_terminator() {
    let mut reg = test_registry();
    reg.add_text("wide_msgs/msg/W", "wstring w\nuint8 after\n")
        .unwrap();
    let schema = reg.schema("wide_msgs/W").unwrap();
    let cdr = codec::encode_value(
        &schema,
        &json!({"w": "hé😀", "after": 7}),
        &EncodeOptions::default(),
    )
    .unwrap();
    // 4 code units (😀 is a surrogate pair), 2 bytes each, then the uint8.
    assert_eq!(
        cdr,
        [0, 1, 0, 0, 4, 0, 0, 0, b'h', 0, 0xe9, 0, 0x3d, 0xd8, 0x00, 0xde, 7]
    );
    let back = codec::decode_to_value(&schema, &cdr, &DecodeOptions::default()).unwrap();
    assert_eq!(back, json!({"w": "hé😀", "after": 7}));
}

#[test]
fn byte_arrays_as_numbers_by_option() {
    let reg = test_registry();
    let schema = reg.schema("sensor_msgs/msg/CompressedImage").unwrap();
    let cdr = codec::encode_value(
        &schema,
        &json!({"format": "jpeg", "data": [255, 216, 255]}),
        &EncodeOptions::default(),
    )
    .unwrap();
    let b64 = codec::decode_to_value(&schema, &cdr, &DecodeOptions::default()).unwrap();
    assert_eq!(b64["data"], "/9j/");
    let nums = codec::decode_to_value(
        &schema,
        &cdr,
        &DecodeOptions {
            bytes_as_arrays: true,
        },
    )
    .unwrap();
    assert_eq!(nums["data"], json!([255, 216, 255]));
}

#[test]
fn special_floats_and_wide_integers() {
    let reg = test_registry();
    let schema = reg.schema("codec_test_msgs/msg/AllPrimitives").unwrap();
    let v = json!({"f32": "-Infinity", "f64": "NaN", "u64": u64::MAX, "i64": i64::MIN, "octet": 255, "letter": 65});
    let cdr = codec::encode_value(&schema, &v, &EncodeOptions::default()).unwrap();
    let back = codec::decode_to_value(&schema, &cdr, &DecodeOptions::default()).unwrap();
    for key in ["f32", "f64", "u64", "i64", "octet", "letter"] {
        assert_eq!(back[key], v[key], "{key}");
    }
    let mut text = Vec::new();
    codec::decode_to_json(&schema, &cdr, &DecodeOptions::default(), &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("\"u64\":18446744073709551615"), "{text}");
    assert!(text.contains("\"i64\":-9223372036854775808"), "{text}");
}
