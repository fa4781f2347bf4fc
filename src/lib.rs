//! edge-agent: the one process on a picking robot's industrial PC that talks to the
//! cloud. It bridges ROS 2 topics and MQTT, serves object detection with a local
//! fallback, and installs A/B updates.
// `unsafe` is denied except, each with its SAFETY note, where the system's C interfaces
// are the only way: loading ONNX Runtime at run time (src/onnx.rs), mapping OTA files
// (src/ota/delta.rs), returning
// the allocator's free pages (src/memory.rs), blocking signals in the DDS threads
// (src/ros/transport/dds/threads.rs), loading ROS 2 type supports by name
// (src/ros/transport/typesupport.rs) and rcl itself (src/ros/transport/rcl, feature `rcl`).
#![deny(unsafe_code)]

/// This build's version: the crate's, or `EDGE_AGENT_VERSION` when the build sets it (a
/// release pipeline's build number; the self-update tests build a second, newer copy).
pub const VERSION: &str = match option_env!("EDGE_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

pub mod agent;
pub mod bridge;
pub mod cli;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod detect;
pub mod exit;
pub mod health;
pub mod logging;
pub mod loglimit;
pub mod memory;
pub mod mqtt;
pub mod onnx;
pub mod ota;
pub mod ros;
pub mod systemd;
