//! Fuzzes a cloud command's way onto ROS 2: JSON text (as an MQTT payload) encoded as
//! CDR for a message type, leniently (defaults filled in) and strictly. The first byte
//! picks the type. Must return Ok or Err, never panic; what is encoded decodes again.
#![no_main]

use std::sync::OnceLock;

use edge_agent::ros::codec::{self, DecodeOptions, EncodeOptions};
use edge_agent::ros::{MsgSchema, Registry};
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 8] = [
    "geometry_msgs/msg/Twist",
    "std_msgs/msg/String",
    "sensor_msgs/msg/JointState",
    "sensor_msgs/msg/Image",
    "std_srvs/srv/SetBool_Request",
    "edge_agent_msgs/msg/DetectionRequest",
    "edge_agent_msgs/action/DetectObjects_Goal",
    "std_msgs/msg/Int32MultiArray",
];

fn schemas() -> &'static Vec<std::sync::Arc<MsgSchema>> {
    static S: OnceLock<Vec<std::sync::Arc<MsgSchema>>> = OnceLock::new();
    S.get_or_init(|| {
        let mut reg = Registry::new();
        reg.add_bundled();
        TYPES.iter().map(|t| reg.schema(t).expect("bundled type")).collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let schema = &schemas()[usize::from(pick) % TYPES.len()];
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(text) else {
        return;
    };
    for strict in [false, true] {
        let opts = EncodeOptions {
            strict,
            big_endian: pick & 0x80 != 0,
        };
        if let Ok(cdr) = codec::encode_value(schema, &value, &opts) {
            codec::decode_to_value(schema, &cdr, &DecodeOptions::default())
                .expect("what the encoder wrote decodes");
        }
    }
});
