//! Fuzzes the image decoding of detection (JPEG and PNG camera frames and files). Must
//! return Ok or Err, never panic; a decoded image has the pixels its size says.
#![no_main]

use edge_agent::detect::local::decode_image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_image(data) {
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
});
