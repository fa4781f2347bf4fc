//! The installer against a real HTTP server (tests/py/http_server.py) through the
//! technician's command line: the happy path, every fault of the download, verification
//! failures, downgrades, health checks, rollbacks, and hostile packages.

mod support;

use std::time::{Duration, Instant};

use support::ota::{
    active_slot_is_complete, install_committed, make_package, ota, status, stderr, HttpServer,
};

/// `n` files of `size` bytes: a tag, then noise that does not compress (so package
/// sizes are what the download tests need).
fn files(tag: &str, n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut data = format!("{tag}:{i}:").into_bytes();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1) ^ tag.len() as u64;
            while data.len() < size {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.push(x as u8);
            }
            data.truncate(size);
            (format!("models/part{i:03}.bin"), data)
        })
        .collect()
}

fn refs(v: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    v.iter().map(|(p, d)| (p.as_str(), d.clone())).collect()
}

fn install(
    state: &std::path::Path,
    url: &str,
    sha: &str,
    version: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "install",
        url,
        "--sha256",
        sha,
        "--version",
        version,
        "--yes",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ota(&args)
}

#[test]
fn happy_path_then_a_second_version_keeps_the_first_slot() {
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let srv = HttpServer::start(www.path());
    let name = |p: &edge_agent::ota::package::Packed| {
        p.package.file_name().unwrap().to_str().unwrap().to_owned()
    };
    // The health check runs a script of the package, in the new slot.
    let mut f1 = files("one", 3, 1000);
    f1.push((
        "check.sh".into(),
        b"#!/bin/sh\ntest -f models/part000.bin\n".to_vec(),
    ));
    let v1 = make_package(www.path(), "1.0.0", &refs(&f1), Some("./check.sh"), None);
    let o = install(state.path(), &srv.url(&name(&v1)), &v1.sha256, "1.0.0", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = status(state.path());
    assert_eq!(s["journal"]["state"], "committed");
    assert_eq!(s["active"], "a");
    assert_eq!(active_slot_is_complete(state.path()).unwrap(), "1.0.0");

    let mut f2 = files("two", 3, 1000);
    f2.push(("check.sh".into(), b"#!/bin/sh\nexit 0\n".to_vec()));
    let v2 = make_package(www.path(), "1.1.0", &refs(&f2), Some("./check.sh"), None);
    let o = install(state.path(), &srv.url(&name(&v2)), &v2.sha256, "1.1.0", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = status(state.path());
    assert_eq!(s["active"], "b");
    assert_eq!(s["committed"]["version"], "1.1.0");
    assert_eq!(s["floor"], "1.1.0");
    // The old slot is intact.
    assert_eq!(s["slots"]["a"]["version"], "1.0.0");
    assert_eq!(
        std::fs::read(state.path().join("slots/a/models/part000.bin")).unwrap(),
        files("one", 1, 1000)[0].1
    );

    // A downgrade is refused (exit 65, as documented), unless forced.
    let o = install(state.path(), &srv.url(&name(&v1)), &v1.sha256, "1.0.0", &[]);
    assert_eq!(o.status.code(), Some(65));
    assert!(
        stderr(&o).contains("version 1.0.0 is not newer than the installed 1.1.0"),
        "{}",
        stderr(&o)
    );
    let o = install(
        state.path(),
        &srv.url(&name(&v1)),
        &v1.sha256,
        "1.0.0",
        &["--force"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(status(state.path())["active"], "a");
}

#[test]
fn a_cut_connection_resumes_without_downloading_again() {
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = make_package(
        www.path(),
        "2.0.0",
        &refs(&files("big", 8, 200_000)),
        None,
        None,
    );
    let srv = HttpServer::start(www.path());
    let size = std::fs::metadata(&p.package).unwrap().len();
    srv.control("cut?after=300000");
    let o = install(
        state.path(),
        &srv.url(p.package.file_name().unwrap().to_str().unwrap()),
        &p.sha256,
        "2.0.0",
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let stats = srv.control("stats");
    let sent = stats["bytes_sent"].as_u64().unwrap();
    let reqs = stats["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1][2], 206, "the second request resumed: {reqs:?}");
    // At most one chunk (16 KiB here) was sent twice.
    assert!(
        sent <= size + 16 * 1024,
        "{sent} bytes sent for a {size}-byte package"
    );
    assert_eq!(active_slot_is_complete(state.path()).unwrap(), "2.0.0");
}

#[test]
fn killed_during_download_resumes_after_restart_and_a_changed_file_restarts_cleanly() {
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = make_package(
        www.path(),
        "3.0.0",
        &refs(&files("slow", 4, 250_000)),
        None,
        None,
    );
    let file = p.package.file_name().unwrap().to_str().unwrap().to_owned();
    let srv = HttpServer::start(www.path());
    let size = std::fs::metadata(&p.package).unwrap().len();
    srv.control("rate?bps=300000");
    let url = srv.url(&file);
    let mut child = support::ota::agent()
        .args([
            "ota",
            "install",
            &url,
            "--sha256",
            &p.sha256,
            "--version",
            "3.0.0",
            "--yes",
            "--state-dir",
        ])
        .arg(state.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let part = state.path().join("downloads/detector-3.0.0.part");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 200_000 {
        assert!(Instant::now() < deadline, "the download did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let have = std::fs::metadata(&part).unwrap().len();
    assert!(have < size);
    assert_eq!(status(state.path())["journal"]["state"], "downloading");

    srv.control("rate?bps=0");
    srv.control("reset");
    let o = install(state.path(), &url, &p.sha256, "3.0.0", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sent = srv.control("stats")["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= size - have + 16 * 1024,
        "{sent} bytes sent after resuming at {have} of {size}"
    );
    assert_eq!(active_slot_is_complete(state.path()).unwrap(), "3.0.0");

    // Now: a partial download of one file, and the server gets a new one under the same
    // name; the job (as the cloud re-issues it) has the new hash.
    let q = make_package(
        www.path(),
        "3.1.0",
        &refs(&files("old", 4, 250_000)),
        None,
        None,
    );
    let qfile = q.package.file_name().unwrap().to_str().unwrap().to_owned();
    srv.control("rate?bps=300000");
    let qurl = srv.url(&qfile);
    let mut child = support::ota::agent()
        .args([
            "ota",
            "install",
            &qurl,
            "--sha256",
            &q.sha256,
            "--version",
            "3.1.0",
            "--yes",
            "--state-dir",
        ])
        .arg(state.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let part = state.path().join("downloads/detector-3.1.0.part");
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 200_000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a different Last-Modified second
    let newer = make_package(
        www.path(),
        "3.1.0",
        &refs(&files("new", 4, 250_000)),
        None,
        None,
    );
    assert_ne!(newer.sha256, q.sha256);
    srv.control("rate?bps=0");
    srv.control("reset");
    let o = install(state.path(), &qurl, &newer.sha256, "3.1.0", &[]);
    assert!(
        o.status.success(),
        "{}\n{}",
        stderr(&o),
        srv.control("stats")
    );
    let reqs = srv.control("stats")["requests"].clone();
    assert_eq!(
        reqs[0][2], 200,
        "the changed file was fetched whole: {reqs}"
    );
    assert_eq!(
        std::fs::read(state.path().join("current/models/part000.bin")).unwrap()[..6],
        *b"new:0:"
    );
}

#[test]
fn download_and_verification_failures_are_reported_and_change_nothing() {
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = make_package(www.path(), "1.0.0", &refs(&files("ok", 2, 100)), None, None);
    let srv = HttpServer::start(www.path());
    let url = srv.url(p.package.file_name().unwrap().to_str().unwrap());
    assert!(install(state.path(), &url, &p.sha256, "1.0.0", &[])
        .status
        .success());

    // 404: no retries, a download failure.
    let o = install(
        state.path(),
        &srv.url("nope.tar.gz"),
        &p.sha256,
        "1.5.0",
        &[],
    );
    assert_eq!(o.status.code(), Some(65));
    assert!(
        stderr(&o).contains("the server answered 404"),
        "{}",
        stderr(&o)
    );
    let s = status(state.path());
    assert_eq!(s["journal"]["state"], "failed");
    assert_eq!(s["journal"]["step"], "download");
    assert_eq!(
        srv.control("stats")["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r[0] == "/nope.tar.gz")
            .count(),
        1
    );

    // Hash mismatch: a verification failure.
    let q = make_package(www.path(), "1.6.0", &refs(&files("q", 2, 100)), None, None);
    let o = install(
        state.path(),
        &srv.url(q.package.file_name().unwrap().to_str().unwrap()),
        &"0".repeat(64),
        "1.6.0",
        &[],
    );
    assert_eq!(o.status.code(), Some(65));
    assert!(stderr(&o).contains("package sha256 is"), "{}", stderr(&o));
    assert_eq!(status(state.path())["journal"]["step"], "verify");
    // The robot is where it was.
    assert_eq!(active_slot_is_complete(state.path()).unwrap(), "1.0.0");
    assert_eq!(status(state.path())["active"], "a");
}

#[test]
fn a_failing_health_check_keeps_the_old_slot_and_a_crash_loop_rolls_back() {
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut good = files("g", 1, 10);
    good.push(("check.sh".into(), b"#!/bin/sh\nexit 0\n".to_vec()));
    let v1 = make_package(www.path(), "1.0.0", &refs(&good), Some("./check.sh"), None);
    let mut bad = files("b", 1, 10);
    bad.push((
        "check.sh".into(),
        b"#!/bin/sh\necho model mismatch >&2\nexit 3\n".to_vec(),
    ));
    let v2 = make_package(www.path(), "2.0.0", &refs(&bad), Some("./check.sh"), None);
    let sd = state.path().to_str().unwrap();
    install_committed(&v1.package, state.path());
    let o = ota(&[
        "install",
        v2.package.to_str().unwrap(),
        "--yes",
        "--state-dir",
        sd,
    ]);
    assert_eq!(o.status.code(), Some(65));
    assert!(stderr(&o).contains("health check failed"), "{}", stderr(&o));
    assert!(stderr(&o).contains("model mismatch"), "{}", stderr(&o));
    let s = status(state.path());
    assert_eq!(s["journal"]["state"], "rolled-back");
    assert_eq!(s["active"], "a");
    assert_eq!(active_slot_is_complete(state.path()).unwrap(), "1.0.0");

    // A good 2.1.0, left unconfirmed; then the agent "crashes" at every start.
    let mut ok2 = files("ok2", 1, 10);
    ok2.push(("check.sh".into(), b"#!/bin/sh\nexit 0\n".to_vec()));
    let v3 = make_package(www.path(), "2.1.0", &refs(&ok2), Some("./check.sh"), None);
    let o = ota(&[
        "install",
        v3.package.to_str().unwrap(),
        "--yes",
        "--no-confirm",
        "--state-dir",
        sd,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        status(state.path())["journal"]["state"],
        "switched-pending-confirm"
    );
    assert_eq!(status(state.path())["active"], "b");
    // Each start counts; the fourth (max_starts 3) rolls back.
    for _ in 0..3 {
        assert!(ota(&["recover", "--state-dir", sd]).status.success());
        assert_eq!(status(state.path())["active"], "b");
    }
    assert!(ota(&["recover", "--state-dir", sd]).status.success());
    let s = status(state.path());
    assert_eq!(s["journal"]["state"], "rolled-back");
    assert!(
        s["journal"]["reason"]
            .as_str()
            .unwrap()
            .contains("started 4 times"),
        "{s}"
    );
    assert_eq!(s["active"], "a");
    assert_eq!(active_slot_is_complete(state.path()).unwrap(), "1.0.0");

    // A technician's rollback and confirm.
    let o = ota(&[
        "install",
        v3.package.to_str().unwrap(),
        "--yes",
        "--no-confirm",
        "--force",
        "--state-dir",
        sd,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ota(&["rollback", "--state-dir", sd]).status.success());
    assert_eq!(status(state.path())["active"], "a");
    let o = ota(&["confirm", "--state-dir", sd]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("nothing to confirm"), "{}", stderr(&o));
}

#[test]
fn signatures_are_required_when_a_key_is_configured() {
    let www = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed = [42u8; 32];
    let public = base64_pub(&seed);
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[device]\nproduct_key = \"pk\"\ndevice_name = \"d\"\n[mqtt]\nhost = \"127.0.0.1\"\n[ota]\npublic_key = \"{public}\"\nallow_http = true\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let signed = make_package(
        www.path(),
        "1.0.0",
        &refs(&files("s", 1, 10)),
        None,
        Some(&seed),
    );
    let unsigned = make_package(www.path(), "1.1.0", &refs(&files("u", 1, 10)), None, None);
    let wrong = make_package(
        www.path(),
        "1.2.0",
        &refs(&files("w", 1, 10)),
        None,
        Some(&[1u8; 32]),
    );
    // Signed with the right key (the .sig file beside the package): installed.
    let o = ota(&[
        "install",
        signed.package.to_str().unwrap(),
        "--yes",
        "-c",
        c,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ota(&[
        "install",
        unsigned.package.to_str().unwrap(),
        "--yes",
        "-c",
        c,
    ]);
    assert_eq!(o.status.code(), Some(65));
    assert!(
        stderr(&o).contains("a signature is required"),
        "{}",
        stderr(&o)
    );
    let o = ota(&["install", wrong.package.to_str().unwrap(), "--yes", "-c", c]);
    assert_eq!(o.status.code(), Some(65));
    assert!(
        stderr(&o).contains("does not match the package and any of the 1 trusted key(s) (ed25519)"),
        "{}",
        stderr(&o)
    );
    // Over HTTP, the signature fetched as <url>.sig.
    let srv = HttpServer::start(www.path());
    let ok = make_package(
        www.path(),
        "1.3.0",
        &refs(&files("h", 1, 10)),
        None,
        Some(&seed),
    );
    let url = srv.url(ok.package.file_name().unwrap().to_str().unwrap());
    let o = ota(&[
        "install",
        &url,
        "--sha256",
        &ok.sha256,
        "--version",
        "1.3.0",
        "--yes",
        "-c",
        c,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn base64_pub(seed: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(edge_agent::ota::package::public_key(seed))
}

#[test]
fn hostile_packages_are_refused_with_a_reason_and_touch_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    support::run_py("hostile_packages.py", &[dir.path().to_str().unwrap()]);
    let state = tempfile::tempdir().unwrap();
    // What the link chain reaches for: outside the OTA folder, beside it.
    std::fs::write(state.path().join("secret.txt"), b"not for packages").unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[device]\nproduct_key = \"pk\"\ndevice_name = \"d\"\n[mqtt]\nhost = \"127.0.0.1\"\n[ota]\nmax_extracted_bytes = \"8MiB\"\nmax_files = 100\n",
            state.path().display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let cases = [
        ("traversal", "'..' in the path"),
        ("absolute", "absolute path"),
        ("symlink_escape", "leaves the slot"),
        ("hardlink_escape", "leaves the slot"),
        ("symlink_chain", "leads out of the slot"),
        (
            "symlink_late",
            "'early': link to 'd/x/../../secret.txt' leaves the slot",
        ),
        ("hardlink_via_link", "not a file this package wrote"),
        ("hardlink_outside", "not a file this package wrote"),
        ("setuid", "setuid or setgid file"),
        (
            "duplicate_manifest",
            "'manifest.json': the package holds this path twice",
        ),
        ("device_node", "device or fifo"),
        // 64 MiB of zeros in a 64 KiB package: stopped by the package's own size (50
        // times it), well before the configured 8 MiB.
        (
            "gzip_bomb",
            "50 times the package's size, ota.max_expansion",
        ),
        ("missing_file", "listed in the manifest but missing"),
        ("truncated", "damaged"),
    ];
    for (name, reason) in cases {
        let pkg = dir.path().join(format!("{name}.tar.gz"));
        let o = ota(&["install", pkg.to_str().unwrap(), "--yes", "-c", c]);
        assert_eq!(o.status.code(), Some(65), "{name}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(reason),
            "{name}: expected '{reason}' in: {}",
            stderr(&o)
        );
        let ota_dir = state.path().join("ota");
        for slot in ["a", "b"] {
            let n = std::fs::read_dir(ota_dir.join("slots").join(slot))
                .unwrap()
                .count();
            assert_eq!(n, 0, "{name}: slot {slot} was left with {n} entries");
        }
        assert!(
            std::fs::symlink_metadata(ota_dir.join("current")).is_err(),
            "{name}: current was set"
        );
        assert!(!std::path::Path::new("/tmp/edge-agent-absolute.txt").exists());
    }
}

/// `edge-agent ota install <pkg>` with ONNX Runtime from `lib` (None: no library at all,
/// so the built-in tract engine runs the check).
fn install_with_runtime(
    state: &std::path::Path,
    pkg: &std::path::Path,
    lib: Option<&std::path::Path>,
) -> std::process::Output {
    let mut cmd = support::ota::agent();
    cmd.args(["ota", "install"])
        .arg(pkg)
        .args(["--yes", "--state-dir"])
        .arg(state)
        .env_remove("LD_LIBRARY_PATH")
        .env("RUST_LOG", "edge_agent=info");
    match lib {
        Some(l) => cmd.env("ORT_DYLIB_PATH", l),
        None => cmd.env_remove("ORT_DYLIB_PATH"),
    };
    cmd.output().unwrap()
}

#[test]
fn models_are_loaded_and_run_before_the_switch_with_either_engine() {
    let lib = support::onnxruntime_lib();
    let models = tempfile::tempdir().unwrap();
    let conv = models.path().join("conv.onnx");
    let nan = models.path().join("nan.onnx");
    support::make_model("conv", &conv);
    support::make_model("nan", &nan);
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    for (engine, lib) in [("ONNX Runtime", Some(lib.as_path())), ("tract", None)] {
        let www = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let v1 = make_package(
            www.path(),
            "1.0.0",
            &[("models/detector.onnx", read(&conv))],
            None,
            None,
        );
        let o = install_with_runtime(state.path(), &v1.package, lib);
        assert!(o.status.success(), "{engine}: {}", stderr(&o));
        assert!(stderr(&o).contains(engine), "{engine}: {}", stderr(&o));
        if lib.is_none() {
            assert!(
                stderr(&o).contains("Install ONNX Runtime"),
                "the fallback says how to get the fast engine: {}",
                stderr(&o)
            );
        }
        // A model that is not ONNX, and one that gives NaN: each refused before the switch.
        for (version, model, why) in [
            ("2.0.0", b"not a model".to_vec(), "cannot load"),
            ("2.1.0", read(&nan), "not finite"),
        ] {
            let bad = make_package(
                www.path(),
                version,
                &[("models/detector.onnx", model)],
                None,
                None,
            );
            let o = install_with_runtime(state.path(), &bad.package, lib);
            assert_eq!(
                o.status.code(),
                Some(65),
                "{engine} {version}: {}",
                stderr(&o)
            );
            let err = stderr(&o);
            assert!(err.contains("health check failed"), "{engine}: {err}");
            assert!(err.contains("models/detector.onnx"), "{engine}: {err}");
            assert!(err.contains(why), "{engine} {version}: {err}");
            assert_eq!(status(state.path())["active"], "a");
            assert_eq!(active_slot_is_complete(state.path()).unwrap(), "1.0.0");
        }
    }
    // A library path that is not ONNX Runtime is an error, not a silent fallback.
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let v1 = make_package(
        www.path(),
        "1.0.0",
        &[("models/detector.onnx", read(&conv))],
        None,
        None,
    );
    let o = install_with_runtime(state.path(), &v1.package, Some(&conv));
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot load ONNX Runtime from"),
        "{}",
        stderr(&o)
    );
}
