//! Object detection: the ONNX runtime (shared with the OTA model check), the Ultralytics
//! YOLO pre/post-processing, and the local detector.

pub mod local;
pub mod runtime;
pub mod yolo;
