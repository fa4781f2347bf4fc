//! Power cuts: the installer runs in a child process that stops dead (abort, no
//! destructors, no flushing) at one of its crash points — each chunk of the download,
//! each extracted file, each step of every journal write and of the switch. At least
//! 200 points are chosen deterministically from a seed. After each cut, recovery must
//! leave `current` on a complete slot whose components all match their hashes, and the
//! journal must agree with it.
//!
//! Needs the binary built with `--features failpoints` (scripts/test.sh does).

mod support;

use std::path::Path;
use std::process::Command;

use support::ota::{
    active_slot_is_complete, install_committed, make_package, ota, status, stderr, HttpServer,
};

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn noise(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Complete packages and kept URLs in the store's downloads/.
fn leftover_packages(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("downloads"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".pkg") || n.ends_with(".source"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_cut_between_the_commit_and_the_clean_up_leaves_no_package_behind() {
    if !cfg!(feature = "failpoints") {
        panic!("this test needs crash points: run it with `cargo nextest run --features failpoints` (scripts/test.sh does)");
    }
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = make_package(
        www.path(),
        "1.0.0",
        &[("m/w.bin", noise(7, 5000))],
        None,
        None,
    );
    let o = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["ota", "install"])
        .arg(&p.package)
        .args(["--yes", "--state-dir"])
        .arg(state.path())
        .env(
            "EDGE_AGENT_CRASH_AT_POINT",
            "confirm: committed, package not removed",
        )
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "the crash point was not reached: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("confirm: committed, package not removed"),
        "{}",
        stderr(&o)
    );
    assert!(
        !leftover_packages(state.path()).is_empty(),
        "the cut came after the clean-up"
    );
    let o = ota(&["recover", "--state-dir", state.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(leftover_packages(state.path()), Vec::<String>::new());
    assert_eq!(status(state.path())["journal"]["state"], "committed");
}

#[test]
fn a_power_cut_at_any_point_leaves_a_complete_slot() {
    if !cfg!(feature = "failpoints") {
        panic!("this test needs crash points: run it with `cargo nextest run --features failpoints` (scripts/test.sh does)");
    }
    let www = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let template = work.path().join("template");
    let v1_files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("m/{i}.bin"), noise(i + 1, 1000)))
        .collect();
    let v1 = make_package(
        www.path(),
        "1.0.0",
        &v1_files
            .iter()
            .map(|(p, d)| (p.as_str(), d.clone()))
            .collect::<Vec<_>>(),
        None,
        None,
    );
    install_committed(&v1.package, &template);
    // v2: 2 MB over HTTP (many download chunks) in 200 files (many extraction steps).
    let v2_files: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("m/{i:03}.bin"), noise(1000 + i, 10_000)))
        .collect();
    let v2 = make_package(
        www.path(),
        "2.0.0",
        &v2_files
            .iter()
            .map(|(p, d)| (p.as_str(), d.clone()))
            .collect::<Vec<_>>(),
        None,
        None,
    );
    let srv = HttpServer::start(www.path());
    let url = srv.url(v2.package.file_name().unwrap().to_str().unwrap());

    let run_install = |state: &Path, crash_at: Option<u64>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
        cmd.args([
            "ota",
            "install",
            &url,
            "--sha256",
            &v2.sha256,
            "--version",
            "2.0.0",
            "--yes",
            "--state-dir",
        ])
        .arg(state);
        if let Some(k) = crash_at {
            cmd.env("EDGE_AGENT_CRASH_AT", k.to_string());
        }
        cmd.output().unwrap()
    };

    // How many crash points a whole install passes (the first k that does not crash).
    let mut k = 64;
    let total = loop {
        let state = work.path().join(format!("count{k}"));
        copy_dir(&template, &state);
        let o = run_install(&state, Some(k));
        let _ = std::fs::remove_dir_all(&state);
        if o.status.success() {
            // Refine downwards: the last crashing k.
            let (mut lo, mut hi) = (k / 2, k);
            while lo + 1 < hi {
                let mid = (lo + hi) / 2;
                let state = work.path().join(format!("count{mid}"));
                copy_dir(&template, &state);
                let o = run_install(&state, Some(mid));
                let _ = std::fs::remove_dir_all(&state);
                if o.status.success() {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            break lo;
        }
        k *= 2;
        assert!(k < 100_000, "the install never completes");
    };
    assert!(
        total >= 200,
        "only {total} crash points in an install; the test wants 200"
    );

    // 200 distinct points from a seed (an LCG walk over 1..=total).
    let seed: u64 = std::env::var("EDGE_AGENT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122);
    let mut picks = std::collections::BTreeSet::new();
    let mut x = seed;
    while picks.len() < 200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        picks.insert(1 + (x >> 33) % total);
    }
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for k in picks {
        let state = work.path().join(format!("cut{k}"));
        copy_dir(&template, &state);
        let o = run_install(&state, Some(k));
        assert!(
            !o.status.success(),
            "crash point {k} of {total} was not reached"
        );
        let cut_at = stderr(&o)
            .lines()
            .find(|l| l.starts_with("crash point"))
            .unwrap_or("")
            .to_owned();
        // Right after the cut, before any recovery: current is a complete slot.
        let before =
            active_slot_is_complete(&state).unwrap_or_else(|e| panic!("after {cut_at}: {e}"));
        assert!(before == "1.0.0" || before == "2.0.0", "{cut_at}: {before}");
        // The agent's start: recovery finishes or undoes the update.
        let o = ota(&["recover", "--state-dir", state.to_str().unwrap()]);
        assert!(o.status.success(), "recover after {cut_at}: {}", stderr(&o));
        let version = active_slot_is_complete(&state)
            .unwrap_or_else(|e| panic!("after recovering from {cut_at}: {e}"));
        let s = status(&state);
        let phase = s["journal"]["state"].as_str().unwrap().to_owned();
        match phase.as_str() {
            "committed" => {
                assert_eq!(s["committed"]["version"], version.as_str(), "{cut_at}: {s}");
                assert_eq!(s["committed"]["slot"], s["active"], "{cut_at}: {s}");
            }
            "switched-pending-confirm" => {
                assert_eq!(s["journal"]["slot"], s["active"], "{cut_at}: {s}");
                assert_eq!(version, "2.0.0");
            }
            other => {
                assert!(
                    ["failed", "rolled-back"].contains(&other),
                    "{cut_at}: left busy: {s}"
                );
                assert_eq!(s["committed"]["slot"], s["active"], "{cut_at}: {s}");
            }
        }
        if phase != "switched-pending-confirm" {
            let left = leftover_packages(&state);
            assert!(
                left.is_empty(),
                "{cut_at}: {phase} but downloads/ holds {left:?}"
            );
        }
        *outcomes.entry(phase).or_default() += 1;
        let _ = std::fs::remove_dir_all(&state);
    }
    eprintln!("{total} crash points; 200 cuts recovered to: {outcomes:?}");
}
