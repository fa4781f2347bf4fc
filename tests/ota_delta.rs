//! Delta packages end to end: `edge-agent ota pack --delta-from` against a full package,
//! installed by `edge-agent ota install` into a state folder running the base version;
//! the patches against Debian's `bsdiff` and `bspatch`; and an agent offered a delta
//! plus its full package by a real HTTP update server, on a robot that is not the
//! delta's base.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use edge_agent::ota::package;
use serde_json::json;
use support::agent::{payloads, spawn_run, stop, AgentDir};
use support::mosquitto::{ready_sub, Mosquitto, Options};
use support::ota::{active_slot_is_complete, install_committed, ota, status, stderr, HttpServer};

/// Bytes that compress badly, like a model's weights.
fn weights(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A release's folder: a 1 MiB model, a configuration, a script, and `extra` files.
fn release(root: &Path, name: &str, model: &[u8], conf: &str, extra: &[(&str, &str)]) -> PathBuf {
    let src = root.join(name);
    std::fs::create_dir_all(src.join("model")).unwrap();
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("model/weights.bin"), model).unwrap();
    std::fs::write(src.join("detect.toml"), conf).unwrap();
    std::fs::write(src.join("bin/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        src.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for (p, body) in extra {
        std::fs::write(src.join(p), body).unwrap();
    }
    src
}

/// `edge-agent ota pack SRC --version V --out OUT [flags]`, which must succeed: the
/// package and what the command printed.
fn pack(src: &Path, version: &str, out: &Path, flags: &[&str]) -> (PathBuf, String) {
    let mut args = vec![
        "pack",
        src.to_str().unwrap(),
        "--version",
        version,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    let o = ota(&args);
    assert!(o.status.success(), "ota pack: {}", stderr(&o));
    (
        out.join(format!("detector-{version}.tar.gz")),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn install(pkg: &Path, state: &Path) -> Output {
    ota(&[
        "install",
        pkg.to_str().unwrap(),
        "--yes",
        "--state-dir",
        state.to_str().unwrap(),
    ])
}

/// Runs one of Debian's bsdiff tools, which must succeed.
fn bsdiff_tool(tool: &str, args: &[&Path]) {
    let o = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed for this test (apt-get install bsdiff): {e}"));
    assert!(
        o.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn manifest_of(pkg: &Path) -> package::Manifest {
    serde_json::from_slice(&package::read_member(pkg, package::MANIFEST, 1 << 20).unwrap()).unwrap()
}

/// A copy of the package `pkg` at `out` with the member `member` replaced by `data`.
fn replace_member(pkg: &Path, member: &str, data: &[u8], out: &Path) {
    let f = std::fs::File::open(pkg).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(out).unwrap(),
        flate2::Compression::default(),
    );
    let mut b = tar::Builder::new(gz);
    let mut replaced = false;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let mut h = e.header().clone();
        if path == Path::new(member) {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, &path, data).unwrap();
            replaced = true;
        } else {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            b.append_data(&mut h, &path, &body[..]).unwrap();
        }
    }
    assert!(replaced, "{member} is not in {}", pkg.display());
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn a_delta_package_rebuilds_every_file_from_the_active_slot() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = root.join("state");
    let m1 = weights(1, 1 << 20);
    let mut m2 = m1.clone();
    // One layer's weights change.
    m2[300_000..302_000].copy_from_slice(&weights(2, 2000));
    // A configuration of a few KiB with one value changed; a file too small to gain
    // from a patch travels whole.
    let conf = |c: &str| {
        let rest: String = (0..200)
            .map(|i| format!("class_{i}.min_score = 0.5\n"))
            .collect();
        format!("conf = {c}\n{rest}")
    };
    let v1 = release(
        root,
        "v1",
        &m1,
        &conf("0.25"),
        &[("old.txt", "gone in 2.0.0\n"), ("tiny.txt", "y\n")],
    );
    let v2 = release(
        root,
        "v2",
        &m2,
        &conf("0.30"),
        &[("new.txt", "new in 2.0.0\n"), ("tiny.txt", "x\n")],
    );
    let (full1, _) = pack(&v1, "1.0.0", &root.join("out1"), &[]);
    let (full2, _) = pack(&v2, "2.0.0", &root.join("full2"), &[]);
    let (delta, said) = pack(
        &v2,
        "2.0.0",
        &root.join("delta2"),
        &["--delta-from", full1.to_str().unwrap()],
    );
    assert!(
        said.contains("delta from 1.0.0: 2 patched, 1 unchanged, 2 whole"),
        "{said}"
    );
    let m = manifest_of(&delta);
    assert_eq!(m.base.as_ref().unwrap().version, "1.0.0");
    let model = m
        .components
        .iter()
        .find(|c| c.path == "model/weights.bin")
        .unwrap();
    let d = model.delta.as_ref().unwrap();
    assert_eq!(d.base_sha256, support::hex(&sha256(&m1)));
    assert_eq!(d.patch.as_deref(), Some(".delta/model/weights.bin.bsdiff"));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&delta) * 20 < size(&full2),
        "the delta is {} bytes, the full package {}",
        size(&delta),
        size(&full2)
    );

    install_committed(&full1, &state);
    let o = install(&delta, &state);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(active_slot_is_complete(&state).unwrap(), "2.0.0");
    let cur = state.join("current");
    assert_eq!(std::fs::read(cur.join("model/weights.bin")).unwrap(), m2);
    assert_eq!(
        std::fs::read_to_string(cur.join("detect.toml")).unwrap(),
        conf("0.30")
    );
    assert_eq!(
        std::fs::read_to_string(cur.join("tiny.txt")).unwrap(),
        "x\n"
    );
    assert_eq!(
        std::fs::read_to_string(cur.join("new.txt")).unwrap(),
        "new in 2.0.0\n"
    );
    assert!(!cur.join("old.txt").exists());
    assert!(!cur.join(".delta").exists(), "the patches stay in the slot");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(cur.join("bin/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let log = std::fs::read_to_string(state.join("job.log")).unwrap();
    assert!(
        log.contains("rebuilt from version 1.0.0: 2 patched, 1 unchanged"),
        "{log}"
    );
    assert_eq!(status(&state)["committed"]["version"], "2.0.0");

    // A delta of a delta's base that is itself a delta is refused when packing.
    let o = ota(&[
        "pack",
        v2.to_str().unwrap(),
        "--version",
        "3.0.0",
        "--out",
        root.join("out3").to_str().unwrap(),
        "--delta-from",
        delta.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("itself a delta package"),
        "{}",
        stderr(&o)
    );
}

fn sha256(b: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).to_vec()
}

#[test]
fn patches_interoperate_with_debian_bsdiff_and_bspatch() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let m1 = weights(3, 1 << 20);
    let mut m2 = m1.clone();
    m2[10_000..10_500].fill(0);
    m2.extend_from_slice(&weights(4, 3000));
    let v1 = release(root, "v1", &m1, "conf = 0.25\n", &[]);
    let v2 = release(root, "v2", &m2, "conf = 0.25\n", &[]);
    let (full1, _) = pack(&v1, "1.0.0", &root.join("out1"), &[]);
    let (delta, _) = pack(
        &v2,
        "2.0.0",
        &root.join("delta2"),
        &["--delta-from", full1.to_str().unwrap()],
    );
    let member = ".delta/model/weights.bin.bsdiff";

    // Ours applies with bspatch.
    let ours = root.join("ours.bsdiff");
    std::fs::write(
        &ours,
        package::read_member(&delta, member, 64 << 20).unwrap(),
    )
    .unwrap();
    let rebuilt = root.join("rebuilt.bin");
    bsdiff_tool("bspatch", &[&v1.join("model/weights.bin"), &rebuilt, &ours]);
    assert!(
        std::fs::read(&rebuilt).unwrap() == m2,
        "bspatch made another file"
    );

    // bsdiff's applies in an install.
    let theirs = root.join("theirs.bsdiff");
    bsdiff_tool(
        "bsdiff",
        &[
            &v1.join("model/weights.bin"),
            &v2.join("model/weights.bin"),
            &theirs,
        ],
    );
    let with_theirs = root.join("detector-2.0.0.tar.gz");
    replace_member(
        &delta,
        member,
        &std::fs::read(&theirs).unwrap(),
        &with_theirs,
    );
    let state = root.join("state");
    install_committed(&full1, &state);
    let o = install(&with_theirs, &state);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(active_slot_is_complete(&state).unwrap(), "2.0.0");
    assert!(std::fs::read(state.join("current/model/weights.bin")).unwrap() == m2);

    // A patch that makes another file is caught by the hash, and the slot is not kept.
    let state2 = root.join("state2");
    install_committed(&full1, &state2);
    let mut other = m2.clone();
    other[0] ^= 1;
    std::fs::write(root.join("other.bin"), &other).unwrap();
    let wrong = root.join("wrong.bsdiff");
    bsdiff_tool(
        "bsdiff",
        &[
            &v1.join("model/weights.bin"),
            &root.join("other.bin"),
            &wrong,
        ],
    );
    let bad = root.join("bad/detector-2.0.0.tar.gz");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    replace_member(&delta, member, &std::fs::read(&wrong).unwrap(), &bad);
    let o = install(&bad, &state2);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sha256 is"), "{}", stderr(&o));
    assert_eq!(active_slot_is_complete(&state2).unwrap(), "1.0.0");
    let inactive = state2.join("slots/b");
    assert!(
        std::fs::read_dir(&inactive).map_or(true, |mut d| d.next().is_none()),
        "a half-built slot was left"
    );
}

/// Three versions: 1.0.0 and 1.1.0 as full packages, 2.0.0 as a delta against 1.1.0.
struct Lineage {
    full1: PathBuf,
    full11: PathBuf,
    delta: PathBuf,
    v2: PathBuf,
    m2: Vec<u8>,
}

impl Lineage {
    fn new(root: &Path) -> Self {
        let m1 = weights(5, 256 << 10);
        let mut m11 = m1.clone();
        m11[100] ^= 0xff;
        let mut m2 = m11.clone();
        m2[200] ^= 0xff;
        let (full1, _) = pack(
            &release(root, "v1", &m1, "a\n", &[]),
            "1.0.0",
            &root.join("o1"),
            &[],
        );
        let (full11, _) = pack(
            &release(root, "v11", &m11, "a\n", &[]),
            "1.1.0",
            &root.join("o11"),
            &[],
        );
        let v2 = release(root, "v2", &m2, "b\n", &[]);
        let (delta, _) = pack(
            &v2,
            "2.0.0",
            &root.join("d2"),
            &["--delta-from", full11.to_str().unwrap()],
        );
        Lineage {
            full1,
            full11,
            delta,
            v2,
            m2,
        }
    }
}

#[test]
fn a_delta_for_another_base_is_refused_before_the_inactive_slot_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let Lineage {
        full1,
        full11,
        delta,
        ..
    } = Lineage::new(root);

    // The robot runs 1.0.0; the delta updates 1.1.0. 0.9.0 sits in the other slot.
    let state = root.join("state");
    let (full09, _) = pack(
        &release(root, "v09", b"0.9.0 weights", "old\n", &[]),
        "0.9.0",
        &root.join("o09"),
        &[],
    );
    install_committed(&full09, &state);
    install_committed(&full1, &state);
    let other_slot = state.join("slots/a");
    let before = std::fs::read_to_string(other_slot.join("detect.toml")).unwrap();
    let o = install(&delta, &state);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("does not fit this robot")
            && err.contains("it updates detector 1.1.0; the robot has detector 1.0.0"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(other_slot.join("detect.toml")).unwrap(),
        before,
        "the inactive slot was touched"
    );
    assert_eq!(active_slot_is_complete(&state).unwrap(), "1.0.0");
    assert_eq!(status(&state)["journal"]["state"], "failed");

    // The robot runs 1.1.0 by its manifest, but its model file changed on disk: the
    // rebuild refuses it and leaves no half-built slot.
    install_committed(&full11, &state);
    let active_model = state.join("current/model/weights.bin");
    let mut changed = std::fs::read(&active_model).unwrap();
    changed[5] ^= 1;
    std::fs::write(&active_model, &changed).unwrap();
    let o = install(&delta, &state);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("model/weights.bin has sha256") && err.contains("not the base's"),
        "{err}"
    );
    let active = std::fs::read_link(state.join("current")).unwrap();
    let inactive = if active.ends_with("a") { "b" } else { "a" };
    assert!(
        std::fs::read_dir(state.join("slots").join(inactive))
            .map_or(true, |mut d| d.next().is_none()),
        "a half-built slot was left"
    );
}

#[test]
fn an_http_offer_falls_back_to_its_full_package_when_the_robot_is_not_the_base() {
    let mq = Mosquitto::start(Options::default());
    let www = tempfile::tempdir().unwrap();
    let root = www.path();
    let srv = HttpServer::start(root);
    let dom = support::domain();
    let a = AgentDir::new(
        mq.port,
        dom.id,
        "",
        &format!(
            "[ota]\nprotocol = \"http\"\nallow_http = true\nconfirm_after = \"1s\"\nhttp_server = \"{}\"\nhttp_interval = \"1s\"\n",
            srv.url("")
        ),
    );
    let ota_dir = a.path().join("state/ota");
    let Lineage {
        full1,
        delta,
        v2,
        m2,
        ..
    } = Lineage::new(root);
    let (full2, _) = pack(&v2, "2.0.0", &root.join("f2"), &[]);
    install_committed(&full1, &ota_dir);
    let sha =
        |p: &Path| std::fs::read_to_string(p.with_extension("gz.sha256")).unwrap()[..64].to_owned();
    let rel = |p: &Path| p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
    std::fs::write(
        root.join("check_update.json"),
        json!({"update_available": true, "latest_version": "2.0.0",
               "url": srv.url(&rel(&delta)), "sha256": sha(&delta),
               "full": {"url": srv.url(&rel(&full2)), "sha256": sha(&full2)}})
        .to_string(),
    )
    .unwrap();
    let rep = ready_sub(
        mq.port,
        "/pk1/robot-7/user/ota/#",
        "/pk1/robot-7/user/ota/probe",
        &["-q", "1"],
    );
    let agent = spawn_run(&a.config(), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while payloads(&rep.snapshot(), "/pk1/robot-7/user/ota/result").is_empty() {
        if std::time::Instant::now() > deadline {
            panic!("no result report; the agent's log:\n{}", stop(agent));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stop(agent);
    let result = &payloads(&rep.snapshot(), "/pk1/robot-7/user/ota/result")[0];
    assert_eq!(result["RESULT"], 0, "{result}\n{log}");
    assert_eq!(active_slot_is_complete(&ota_dir).unwrap(), "2.0.0");
    assert!(std::fs::read(ota_dir.join("current/model/weights.bin")).unwrap() == m2);
    let fetched: Vec<String> = srv.control("stats")["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r[0].as_str().map(str::to_owned))
        .collect();
    let got = |p: &Path| fetched.iter().any(|f| f.ends_with(&rel(p)));
    assert!(got(&delta) && got(&full2), "{fetched:?}");
    assert!(
        log.contains(
            "The delta package does not fit this robot; fetching the full package instead."
        ),
        "{log}"
    );
    let job_log = std::fs::read_to_string(ota_dir.join("job.log")).unwrap_or_default();
    let st = status(&ota_dir);
    assert_eq!(st["committed"]["version"], "2.0.0", "{st}\n{job_log}");
}
