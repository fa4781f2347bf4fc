//! Fuzzes the CDR decoder: the first input byte picks a message type, the rest is the
//! serialized message. The decoder must return Ok or Err, never panic, and what it
//! accepts must be valid JSON that encodes again.
#![no_main]

use std::sync::OnceLock;

use edge_agent::ros::codec::{self, DecodeOptions, EncodeOptions};
use edge_agent::ros::{MsgSchema, Registry};
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 10] = [
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/JointState",
    "sensor_msgs/msg/NavSatFix",
    "sensor_msgs/msg/PointCloud2",
    "geometry_msgs/msg/PoseArray",
    "vision_msgs/msg/Detection2DArray",
    "nav_msgs/msg/Odometry",
    "diagnostic_msgs/msg/DiagnosticArray",
    "std_msgs/msg/String",
    "edge_agent_msgs/msg/RobotStatus",
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
    let Some((&pick, cdr)) = data.split_first() else {
        return;
    };
    let schema = &schemas()[pick as usize % TYPES.len()];
    let mut out = Vec::new();
    if codec::decode_to_json(schema, cdr, &DecodeOptions::default(), &mut out).is_ok() {
        let v: serde_json::Value = serde_json::from_slice(&out).expect("decoder wrote valid JSON");
        codec::encode_value(schema, &v, &EncodeOptions::default()).expect("decoded value encodes");
    }
});
