//! edge-agent: the one process on a picking robot's industrial PC that talks to the
//! cloud. It bridges ROS 2 topics and MQTT, serves object detection with a local
//! fallback, and installs A/B updates.
// The one exception is loading ONNX Runtime at run time (src/detect/runtime.rs).
#![deny(unsafe_code)]

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
pub mod ota;
pub mod ros;
pub mod systemd;
