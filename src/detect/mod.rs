//! Object detection: the ONNX runtime the local detector and the OTA model check share.

pub mod runtime;
