//! Object detection: the ONNX runtime (shared with the OTA model check), the Ultralytics
//! YOLO pre/post-processing, and the local detector.

pub mod cloud;
pub mod config;
pub mod draw;
pub mod entry;
pub mod frame;
pub mod local;
pub mod machine;
pub mod service;
pub mod v4l2;
pub mod yolo;
