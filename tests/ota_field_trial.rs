//! What a field trial of the installer found, each against a real HTTP server
//! (tests/py/http_server.py) and the command line as a child process: a link that drops
//! every few megabytes, URLs without a hash, presigned URLs whose query string is a
//! secret, a public key for `--state-dir`, Ctrl-C during a download, the upgrade log of
//! a rollback that spans restarts, and progress through every step.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_agent::config::DeviceConfig;
use edge_agent::ota::config::OtaConfig;
use edge_agent::ota::installer::{Installer, OtaEvent, Recovery};
use edge_agent::ota::machine::{Hash, Job, Origin};
use support::ota::{make_package, ota, status, stderr, HttpServer};
use tokio_util::sync::CancellationToken;

/// `size` bytes that do not compress.
fn noise(seed: u64, size: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15 ^ seed;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn url_of(srv: &HttpServer, p: &edge_agent::ota::package::Packed) -> String {
    srv.url(p.package.file_name().unwrap().to_str().unwrap())
}

fn config(dir: &Path, ota: &str) -> std::path::PathBuf {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[device]\nproduct_key = \"pk\"\ndevice_name = \"d\"\n[mqtt]\nhost = \"127.0.0.1\"\n[ota]\nallow_http = true\n{ota}\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    cfg
}

/// A link that drops every 256 KiB of a 3 MB package, with a retry budget of 2: each
/// attempt that brings data gives the budget back, so the download goes on to the end
/// (without that it stopped after the third cut). Ten cuts, one install.
#[test]
fn a_link_that_keeps_dropping_still_delivers_the_package() {
    let www = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = make_package(
        www.path(),
        "1.0.0",
        &[("m/w.bin", noise(1, 3_000_000))],
        None,
        None,
    );
    let srv = HttpServer::start(www.path());
    srv.control("cut_every?bytes=262144");
    let cfg = config(dir.path(), "download_retries = 2");
    let o = ota(&[
        "install",
        &url_of(&srv, &p),
        "--sha256",
        &p.sha256,
        "--version",
        "1.0.0",
        "--yes",
        "-c",
        cfg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let requests = srv.control("stats")["requests"].as_array().unwrap().len();
    assert!(requests >= 11, "{requests} requests for 12 pieces");

    // A link that gives (almost) nothing uses the budget up, and says where it stopped.
    srv.control("cut_every?bytes=1000");
    let q = make_package(
        www.path(),
        "1.1.0",
        &[("m/w.bin", noise(2, 3_000_000))],
        None,
        None,
    );
    let o = ota(&[
        "install",
        &url_of(&srv, &q),
        "--sha256",
        &q.sha256,
        "--version",
        "1.1.0",
        "--yes",
        "-c",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("gave up after 3 attempts"), "{err}");
    assert!(
        err.contains("the connection ended at") || err.contains("the connection dropped at"),
        "{err}"
    );
    assert!(!err.contains("error decoding response body"), "{err}");
}

/// A URL install without `--sha256` takes the hash `ota pack` wrote beside the package;
/// without one it is refused before anything is downloaded.
#[test]
fn a_url_without_a_hash_takes_the_one_beside_it_or_is_refused_before_downloading() {
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = make_package(
        www.path(),
        "1.0.0",
        &[("m/w.bin", noise(3, 10_000))],
        None,
        None,
    );
    let srv = HttpServer::start(www.path());
    let s = state.path().to_str().unwrap();
    let o = ota(&[
        "install",
        &url_of(&srv, &p),
        "--version",
        "1.0.0",
        "--yes",
        "--state-dir",
        s,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let asked: Vec<String> = srv.control("stats")["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect();
    assert!(
        asked.iter().any(|r| r.ends_with(".tar.gz.sha256")),
        "{asked:?}"
    );

    // No hash beside it: refused, and the package never fetched.
    let q = make_package(
        www.path(),
        "1.1.0",
        &[("m/w.bin", noise(4, 10_000))],
        None,
        None,
    );
    std::fs::remove_file(q.package.with_extension("gz.sha256")).unwrap();
    srv.control("reset");
    let o = ota(&[
        "install",
        &url_of(&srv, &q),
        "--version",
        "1.1.0",
        "--yes",
        "--state-dir",
        s,
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("give --sha256"), "{}", stderr(&o));
    let asked = srv.control("stats")["requests"].clone();
    assert!(
        !asked
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r[0].as_str().unwrap().ends_with(".tar.gz")),
        "the package was downloaded: {asked}"
    );
}

/// `--state-dir` installs take `--public-key`; without one, a `.sig` beside the package
/// is named as not checked rather than ignored without a word.
#[test]
fn state_dir_installs_take_a_public_key() {
    use base64::Engine as _;
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let seed = [9u8; 32];
    let key = base64::engine::general_purpose::STANDARD
        .encode(edge_agent::ota::package::public_key(&seed));
    let keyfile = www.path().join("signing.pub");
    std::fs::write(&keyfile, format!("{key}\n")).unwrap();
    let s = state.path().to_str().unwrap();
    let signed = make_package(
        www.path(),
        "1.0.0",
        &[("m/w.bin", noise(5, 1000))],
        None,
        Some(&seed),
    );
    let o = ota(&[
        "install",
        signed.package.to_str().unwrap(),
        "--yes",
        "--state-dir",
        s,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(".sig is not checked: no public key"),
        "{}",
        stderr(&o)
    );
    let unsigned = make_package(
        www.path(),
        "1.1.0",
        &[("m/w.bin", noise(6, 1000))],
        None,
        None,
    );
    let o = ota(&[
        "install",
        unsigned.package.to_str().unwrap(),
        "--yes",
        "--state-dir",
        s,
        "--public-key",
        keyfile.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a signature is required"),
        "{}",
        stderr(&o)
    );
    let signed2 = make_package(
        www.path(),
        "1.2.0",
        &[("m/w.bin", noise(7, 1000))],
        None,
        Some(&seed),
    );
    let o = ota(&[
        "install",
        signed2.package.to_str().unwrap(),
        "--yes",
        "--state-dir",
        s,
        "--public-key",
        &key,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ota(&[
        "install",
        signed2.package.to_str().unwrap(),
        "--yes",
        "--state-dir",
        s,
        "--public-key",
        "c2hvcnQ=",
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("--public-key"), "{}", stderr(&o));
}

/// A presigned URL's query string (an OSS/S3 signature, a token) is a secret: it is in
/// no error, log line, journal or status.
#[test]
fn presigned_url_credentials_stay_out_of_errors_journal_and_status() {
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = make_package(
        www.path(),
        "1.0.0",
        &[("m/w.bin", noise(8, 10_000))],
        None,
        None,
    );
    let srv = HttpServer::start(www.path());
    let secret = "Signature=Zm9vYmFyc2VjcmV0&OSSAccessKeyId=LTAI5tSECRET";
    let s = state.path().to_str().unwrap();
    let good = format!("{}?Expires=1999999999&{secret}", url_of(&srv, &p));
    let o = ota(&[
        "install",
        &good,
        "--sha256",
        &p.sha256,
        "--version",
        "1.0.0",
        "--yes",
        "--state-dir",
        s,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let missing = format!("{}?{secret}", srv.url("gone.tar.gz"));
    let o = ota(&[
        "install",
        &missing,
        "--sha256",
        &p.sha256,
        "--version",
        "1.1.0",
        "--yes",
        "--state-dir",
        s,
    ]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("the server answered 404"), "{err}");
    assert!(err.contains("gone.tar.gz?…"), "{err}");
    let mut seen = vec![
        ("stderr".to_owned(), err),
        (
            "stdout".into(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ),
    ];
    seen.push(("status".into(), status(state.path()).to_string()));
    for f in ["journal.json", "job.log"] {
        seen.push((
            f.into(),
            std::fs::read_to_string(state.path().join(f)).unwrap(),
        ));
    }
    for e in std::fs::read_dir(state.path().join("downloads"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read(e.path()).unwrap();
        if !e.file_name().to_string_lossy().ends_with(".source") {
            seen.push((
                e.path().display().to_string(),
                String::from_utf8_lossy(&text).into_owned(),
            ));
        }
    }
    for (what, text) in seen {
        assert!(
            !text.contains("Zm9vYmFyc2VjcmV0") && !text.contains("LTAI5tSECRET"),
            "the secret is in {what}:\n{text}"
        );
    }
}

/// Ctrl-C during a download stops it with exit 75 and says the same command resumes
/// it; and the same command does (an HTTP Range request for the rest).
#[test]
fn ctrl_c_keeps_the_download_and_the_same_command_resumes_it() {
    let www = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = make_package(
        www.path(),
        "1.0.0",
        &[("m/w.bin", noise(9, 400_000))],
        None,
        None,
    );
    let srv = HttpServer::start(www.path());
    srv.control("rate?bps=100000");
    let args = |state: &str| {
        vec![
            "ota".to_owned(),
            "install".into(),
            url_of(&srv, &p),
            "--sha256".into(),
            p.sha256.clone(),
            "--version".into(),
            "1.0.0".into(),
            "--yes".into(),
            "--state-dir".into(),
            state.to_owned(),
        ]
    };
    let s = state.path().to_str().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(args(s))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let part = state.path().join("downloads/detector-1.0.0.part");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 100_000 {
        assert!(Instant::now() < deadline, "the download did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    support::agent::signal(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("resumes it"), "{err}");
    srv.control("rate?bps=0");
    srv.control("reset");
    let o = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(args(s))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ranges: Vec<String> = srv.control("stats")["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r[1].as_str().map(str::to_owned))
        .collect();
    assert!(
        !ranges.is_empty() && ranges[0] != "bytes=0-",
        "not resumed: {ranges:?}"
    );
}

fn installer(dir: &Path, events: tokio::sync::mpsc::Sender<OtaEvent>) -> Installer {
    let cfg: OtaConfig = toml::from_str(&format!(
        "dir = \"{}\"\nallow_http = true\nmax_starts = 2\n",
        dir.display()
    ))
    .unwrap();
    let device = DeviceConfig {
        product_key: "pk".into(),
        device_name: "d".into(),
    };
    let mut inst = Installer::open(cfg.resolve(dir, &device).unwrap())
        .unwrap()
        .with_events(events);
    inst.acquire().unwrap();
    inst
}

/// Progress goes on through verifying and installing (bytes of the package), and a
/// rollback after the new slot kept the agent from starting, noticed by a later
/// process, still reports the whole upgrade log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_through_every_step_and_a_crash_loop_report_with_its_log() {
    let www = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v1 = make_package(
        www.path(),
        "1.0.0",
        &[("m/w.bin", noise(10, 1000))],
        None,
        None,
    );
    let v2 = make_package(
        www.path(),
        "2.0.0",
        &[("m/w.bin", noise(11, 3_000_000))],
        None,
        None,
    );
    let job = |p: &edge_agent::ota::package::Packed, v: &str| Job {
        origin: Origin::Cli,
        module: "detector".into(),
        version: v.into(),
        url: p.package.display().to_string(),
        size: None,
        hash: Some(Hash::Sha256(p.sha256.clone())),
        signature: None,
        force: false,
        oss: None,
        full: None,
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(4096);
    let mut inst = installer(dir.path(), tx);
    inst.install(job(&v1, "1.0.0"), true, &CancellationToken::new())
        .await
        .unwrap();
    drop(inst);
    // 2.0.0, switched and left unconfirmed.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let mut inst = installer(dir.path(), tx);
    inst.install(job(&v2, "2.0.0"), false, &CancellationToken::new())
        .await
        .unwrap();
    drop(inst);
    let mut steps: Vec<(String, u64)> = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let OtaEvent::Progress { desc, bytes, .. } = e {
            steps.push((desc, bytes));
        }
    }
    for stage in ["verifying", "installing"] {
        let b: Vec<u64> = steps
            .iter()
            .filter(|(d, _)| d == stage)
            .map(|(_, b)| *b)
            .collect();
        assert!(b.len() >= 10, "{stage}: {b:?}");
        assert!(
            b.windows(2).all(|w| w[0] < w[1]),
            "{stage} went back: {b:?}"
        );
    }
    // Three starts of the agent without a confirmation (max_starts 2): the third
    // rolls back, in a process that never saw the job.
    let mut rolled = None;
    for _ in 0..3 {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let mut inst = installer(dir.path(), tx);
        if let Recovery::RolledBack(_) = inst.recover().unwrap() {
            while let Ok(e) = rx.try_recv() {
                if let OtaEvent::RolledBack { log, .. } = e {
                    rolled = Some(log);
                }
            }
        }
    }
    let log = rolled.expect("no rollback after three starts").join("\n");
    assert!(log.contains("update detector 2.0.0 from"), "{log}");
    assert!(log.contains("switched to slot"), "{log}");
    assert!(
        log.contains("rolled back: the agent started 3 times"),
        "{log}"
    );
}
