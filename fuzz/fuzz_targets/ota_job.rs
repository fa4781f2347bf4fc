//! Fuzzes the OTA job documents the cloud sends: an Aliyun push, an AWS IoT job
//! document, an HTTP update server's answer, and a delta job's full-package fallback.
//! The first byte picks which. Must return Ok or Err, never panic.
#![no_main]

use edge_agent::ota::machine::FullPackage;
use edge_agent::ota::protocols;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) else {
        return;
    };
    match pick % 4 {
        0 => drop(protocols::aliyun_job(&v, "default")),
        1 => drop(protocols::aws_job("job-1", &v, "default")),
        2 => drop(protocols::http_job(&v, "default")),
        _ => drop(FullPackage::from_json(&v)),
    }
});
