//! Shared helpers for the integration tests: where the repository and the test
//! virtualenv are, and a schema-aware comparison of decoded JSON.
#![allow(dead_code)]

pub mod agent;
pub mod mosquitto;
pub mod ota;
pub mod ros_peer;

use std::path::PathBuf;
use std::process::Command;

use edge_agent::ros::msgdef::{ArrayKind, Primitive};
use edge_agent::ros::schema::{Elem, MsgSchema, TypeSchema};
use edge_agent::ros::Registry;
use serde_json::Value;

/// A ROS 2 domain id this test has to itself: tests run in parallel processes, and
/// other programs on the machine may use a domain too. An exclusive `flock` on a file
/// per domain (in the system's temporary folder) reserves it across test processes
/// until the guard is dropped; the search starts at a random domain so two test runs
/// rarely try the same ones first.
pub struct Domain {
    pub id: u16,
    _lock: std::fs::File,
}

/// Domain ids the tests draw from (the DDS port mapping allows 0 to 232).
const DOMAINS: std::ops::RangeInclusive<u16> = 20..=230;

pub fn domain() -> Domain {
    let n = DOMAINS.end() - DOMAINS.start() + 1;
    let start = fastrand::u16(0..n);
    for i in 0..n {
        let id = DOMAINS.start() + (start + i) % n;
        let path = std::env::temp_dir().join(format!("edge-agent-test-domain-{id}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if f.try_lock().is_ok() {
            return Domain { id, _lock: f };
        }
    }
    panic!("every test ROS domain in {DOMAINS:?} is in use");
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of the project's test virtualenv (rosbags, cyclonedds, onnxruntime...).
/// Fails the test with what to run when it is missing: these peers are not optional.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGE_AGENT_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo().join(".venv/bin/python");
    assert!(
        p.exists(),
        "the test virtualenv is missing ({}): run `scripts/test.sh` once, or \
         `scripts/setup-test-env.sh`, which installs rosbags, cyclonedds, onnxruntime and \
         the Debian packages the tests need",
        p.display()
    );
    p
}

/// Runs a script under tests/py with the test virtualenv and returns its stdout.
pub fn run_py(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/py").join(script))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("script output is UTF-8")
}

/// The bundled definitions plus the test-only ones under tests/fixtures/interfaces.
pub fn test_registry() -> Registry {
    let mut reg = Registry::new();
    reg.add_bundled();
    reg.add_dir(&repo().join("tests/fixtures/interfaces"))
        .expect("test interfaces");
    reg
}

/// Compares two JSON values of `schema`: float32 fields as float32 (JSON text of a
/// float32 has no single form), float64 bit for bit, everything else exactly.
pub fn json_matches(schema: &MsgSchema, ours: &Value, theirs: &Value) -> Result<(), String> {
    msg_matches(schema, ours, theirs, "")
}

fn msg_matches(schema: &MsgSchema, a: &Value, b: &Value, path: &str) -> Result<(), String> {
    let (Value::Object(ma), Value::Object(mb)) = (a, b) else {
        return Err(format!("{path}: not objects: {a} vs {b}"));
    };
    if ma.len() != mb.len() {
        return Err(format!("{path}: field counts differ: {a} vs {b}"));
    }
    for f in &schema.fields {
        let p = if path.is_empty() {
            f.name.clone()
        } else {
            format!("{path}.{}", f.name)
        };
        let (Some(x), Some(y)) = (ma.get(&f.name), mb.get(&f.name)) else {
            return Err(format!("{p}: missing"));
        };
        type_matches(&f.ty, x, y, &p)?;
    }
    Ok(())
}

fn type_matches(ty: &TypeSchema, a: &Value, b: &Value, path: &str) -> Result<(), String> {
    if ty.array == ArrayKind::Single {
        return elem_matches(&ty.elem, a, b, path);
    }
    match (a, b) {
        (Value::Array(xa), Value::Array(xb)) => {
            if xa.len() != xb.len() {
                return Err(format!("{path}: lengths {} vs {}", xa.len(), xb.len()));
            }
            for (i, (x, y)) in xa.iter().zip(xb).enumerate() {
                elem_matches(&ty.elem, x, y, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ if a == b => Ok(()),
        _ => Err(format!("{path}: {a} vs {b}")),
    }
}

fn elem_matches(elem: &Elem, a: &Value, b: &Value, path: &str) -> Result<(), String> {
    match elem {
        Elem::Msg(m) => msg_matches(m, a, b, path),
        Elem::Prim(Primitive::Float32) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if (x as f32).to_bits() == (y as f32).to_bits() => Ok(()),
            (None, None) if a == b => Ok(()),
            _ => Err(format!("{path}: float32 {a} vs {b}")),
        },
        Elem::Prim(Primitive::Float64) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if x.to_bits() == y.to_bits() => Ok(()),
            (None, None) if a == b => Ok(()),
            _ => Err(format!("{path}: float64 {a} vs {b}")),
        },
        _ if a == b => Ok(()),
        _ => Err(format!("{path}: {a} vs {b}")),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// ONNX Runtime's library from the test virtualenv's `onnxruntime` wheel.
pub fn onnxruntime_lib() -> PathBuf {
    let capi = repo().join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
    let found = std::fs::read_dir(&capi).ok().and_then(|d| {
        d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "ONNX Runtime's library is missing under {}: run `scripts/setup-test-env.sh` \
             (it installs the onnxruntime wheel into .venv)",
            capi.display()
        )
    })
}

/// An ONNX model from tests/py/make_models.py (`conv` or `nan`) written to `out`.
pub fn make_model(kind: &str, out: &std::path::Path) {
    run_py("make_models.py", &[kind, out.to_str().unwrap()]);
}
