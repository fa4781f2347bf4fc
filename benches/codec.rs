//! Codec throughput: decode CDR -> JSON text (what the bridge does per message) and
//! encode JSON -> CDR, on the inputs `scripts/bench-codec.sh` has rosbags write.
//! Run through that script, which also measures the rosbags baseline in the same run.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edge_agent::ros::codec::{self, DecodeOptions, EncodeOptions};
use edge_agent::ros::Registry;

const CASES: [(&str, &str); 4] = [
    ("navsatfix", "sensor_msgs/msg/NavSatFix"),
    ("jointstate7", "sensor_msgs/msg/JointState"),
    ("image640x480", "sensor_msgs/msg/Image"),
    ("posearray1000", "geometry_msgs/msg/PoseArray"),
];

fn inputs_dir() -> PathBuf {
    std::env::var_os("EDGE_AGENT_BENCH_INPUTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-codec"))
}

fn bench(c: &mut Criterion) {
    let mut reg = Registry::new();
    reg.add_bundled();
    let dir = inputs_dir();
    let mut decode = c.benchmark_group("decode_to_json");
    for (case, ty) in CASES {
        let path = dir.join(format!("{case}.cdr"));
        let cdr = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/bench-codec.sh, which writes the inputs",
                path.display()
            )
        });
        let schema = reg.schema(ty).expect("bundled type");
        decode.throughput(Throughput::Bytes(cdr.len() as u64));
        let mut out = Vec::with_capacity(cdr.len() * 2);
        decode.bench_with_input(BenchmarkId::from_parameter(case), &cdr, |b, cdr| {
            b.iter(|| {
                out.clear();
                codec::decode_to_json(&schema, cdr, &DecodeOptions::default(), &mut out)
                    .expect("decodes");
                out.len()
            })
        });
    }
    decode.finish();

    let mut encode = c.benchmark_group("encode_from_json");
    for (case, ty) in CASES {
        let cdr = std::fs::read(dir.join(format!("{case}.cdr"))).expect("input");
        let schema = reg.schema(ty).expect("bundled type");
        let value =
            codec::decode_to_value(&schema, &cdr, &DecodeOptions::default()).expect("decodes");
        encode.throughput(Throughput::Bytes(cdr.len() as u64));
        let mut out = Vec::with_capacity(cdr.len());
        encode.bench_with_input(BenchmarkId::from_parameter(case), &value, |b, value| {
            b.iter(|| {
                codec::encode_value_into(&schema, value, &EncodeOptions::default(), &mut out)
                    .expect("encodes");
                out.len()
            })
        });
    }
    encode.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
