//! The codec against rosbags, an independent CDR implementation with the standard
//! ROS 2 definitions: for every bundled type (and the codec test types), random messages
//! serialized by rosbags decode to rosbags' values, and those values encode to exactly
//! rosbags' bytes. Big-endian buffers are decoded and produced too.

mod support;

use std::collections::BTreeSet;

use edge_agent::ros::codec::{self, DecodeOptions, EncodeOptions};
use serde_json::Value;
use support::{hex, json_matches, run_py, test_registry, unhex};

#[test]
fn codec_matches_rosbags_for_every_bundled_type() {
    let reg = test_registry();
    let seed = std::env::var("EDGE_AGENT_TEST_SEED").unwrap_or_else(|_| "20261122".into());
    let output = run_py(
        "rosbags_oracle.py",
        &[
            "--seed",
            &seed,
            "--count",
            "25",
            "interfaces",
            "tests/fixtures/interfaces",
        ],
    );
    let mut failures = Vec::new();
    let mut tested = BTreeSet::new();
    let mut count = 0;
    for line in output.lines() {
        let case: Value = serde_json::from_str(line).expect("oracle line is JSON");
        let name = case["type"].as_str().expect("type");
        let expected = &case["value"];
        let le = unhex(case["le"].as_str().expect("le"));
        let be = unhex(case["be"].as_str().expect("be"));
        let schema = reg.schema(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        tested.insert(name.to_owned());
        count += 1;

        for (order, bytes) in [("little-endian", &le), ("big-endian", &be)] {
            match codec::decode_to_value(&schema, bytes, &DecodeOptions::default()) {
                Ok(ours) => {
                    if let Err(e) = json_matches(&schema, &ours, expected) {
                        failures.push(format!("{name} decode {order}: {e}"));
                    }
                }
                Err(e) => failures.push(format!("{name} decode {order}: {e}")),
            }
        }
        for (big_endian, bytes) in [(false, &le), (true, &be)] {
            let opts = EncodeOptions {
                strict: true,
                big_endian,
            };
            match codec::encode_value(&schema, expected, &opts) {
                Ok(ours) if &ours == bytes => {}
                Ok(ours) => failures.push(format!(
                    "{name} encode (big_endian={big_endian}): bytes differ\n ours   {}\n rosbags {}",
                    hex(&ours),
                    hex(bytes)
                )),
                Err(e) => failures.push(format!("{name} encode (big_endian={big_endian}): {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} messages differ from rosbags; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // No bundled message type may be left out of the comparison.
    let bundled: BTreeSet<String> = reg
        .names()
        .into_iter()
        .filter(|n| n.contains("/msg/"))
        .collect();
    let missing: Vec<_> = bundled.difference(&tested).collect();
    assert!(missing.is_empty(), "not compared with rosbags: {missing:?}");
    assert!(count > 2000, "only {count} messages compared");
}
