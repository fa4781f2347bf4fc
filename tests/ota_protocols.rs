//! The OTA protocols end to end: the agent runs with `[ota]` configured, a real mosquitto
//! carries the Aliyun and AWS IoT Jobs messages with the test playing the cloud, and a
//! real HTTP server (tests/py/http_server.py) serves packages and `check_update`.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::agent::{payloads, spawn_run, stop, AgentDir};
use support::mosquitto::{publish, ready_sub, Mosquitto, Options};
use support::ota::{
    active_slot_is_complete, install_committed, make_package, openssl, status, HttpServer,
};

const T: Duration = Duration::from_secs(30);

fn pkg_files(tag: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "model/weights.bin",
            format!("{tag} weights").repeat(500).into_bytes(),
        ),
        (
            "config/detector.toml",
            format!("variant = \"{tag}\"\n").into_bytes(),
        ),
    ]
}

/// The agent's OTA folder with version 1.0.0 installed and committed.
fn seed_v1(agent_dir: &Path, www: &Path) -> std::path::PathBuf {
    let ota_dir = agent_dir.join("state/ota");
    let v1 = make_package(www, "1.0.0", &pkg_files("v1"), None, None);
    install_committed(&v1.package, &ota_dir);
    ota_dir
}

/// An agent polling `srv` every second, with 1.0.0 installed: (its DDS domain, its
/// folder, its OTA folder).
fn http_agent(
    mq_port: u16,
    srv: &HttpServer,
    www: &Path,
) -> (support::Domain, AgentDir, std::path::PathBuf) {
    let dom = support::domain();
    let a = AgentDir::new(
        mq_port,
        dom.id,
        "",
        &format!(
            "[ota]\nprotocol = \"http\"\nallow_http = true\nconfirm_after = \"1s\"\nhttp_server = \"{}\"\nhttp_interval = \"1s\"\n",
            srv.url("")
        ),
    );
    let ota_dir = seed_v1(a.path(), www);
    (dom, a, ota_dir)
}

fn steps(lines: &[String], topic: &str) -> Vec<i64> {
    payloads(lines, topic)
        .iter()
        .filter_map(|p| p["params"]["step"].as_str()?.parse().ok())
        .collect()
}

#[test]
fn aliyun_push_reports_progress_result_and_the_new_version() {
    let mq = Mosquitto::start(Options::default());
    let www = tempfile::tempdir().unwrap();
    let srv = HttpServer::start(www.path());
    let dom = support::domain();
    let a = AgentDir::new(
        mq.port,
        dom.id,
        "",
        "[ota]\nprotocol = \"aliyun\"\nallow_http = true\nconfirm_after = \"1s\"\n",
    );
    let ota_dir = seed_v1(a.path(), www.path());
    let sub = ready_sub(mq.port, "/ota/device/#", "/ota/device/probe", &["-q", "1"]);
    let sys = ready_sub(
        mq.port,
        "/sys/pk1/robot-7/thing/ota/#",
        "/sys/pk1/robot-7/thing/ota/probe",
        &["-q", "1"],
    );
    let rep = ready_sub(
        mq.port,
        "/pk1/robot-7/user/ota/#",
        "/pk1/robot-7/user/ota/probe",
        &["-q", "1"],
    );
    let agent = spawn_run(&a.config(), &[]);

    // After connect: the module's version, then a request for the latest package.
    let inform = "/ota/device/inform/pk1/robot-7";
    sub.wait_for("the version report", T, |l| !payloads(l, inform).is_empty());
    let v = &payloads(&sub.snapshot(), inform)[0];
    assert_eq!(
        v["params"],
        json!({"version": "1.0.0", "module": "detector"})
    );
    let get = "/sys/pk1/robot-7/thing/ota/firmware/get";
    sys.wait_for("firmware/get", T, |l| !payloads(l, get).is_empty());
    let g = &payloads(&sys.snapshot(), get)[0];
    assert_eq!(g["method"], "thing.ota.firmware.get");
    assert_eq!(g["params"]["module"], "detector");
    // The cloud has nothing newer: an empty get_reply changes nothing.
    publish(
        mq.port,
        "/sys/pk1/robot-7/thing/ota/firmware/get_reply",
        &json!({"code": "200", "data": {}, "id": g["id"], "message": "success"}).to_string(),
        &["-q", "1"],
    );

    // The push for 2.0.0, from a presigned URL: its signature must appear nowhere.
    let v2 = make_package(www.path(), "2.0.0", &pkg_files("v2"), None, None);
    let url = format!(
        "{}?Expires=1999999999&OSSAccessKeyId=LTAI5tKEY&Signature=c2VjcmV0c2ln",
        srv.url(v2.package.file_name().unwrap().to_str().unwrap())
    );
    let size = std::fs::metadata(&v2.package).unwrap().len();
    let push = json!({"code": "1000", "data": {"size": size, "version": "2.0.0", "url": url,
        "sign": v2.sha256, "signMethod": "SHA256", "md5": "", "module": "detector", "extData": {}},
        "id": 1700, "message": "success"});
    publish(
        mq.port,
        "/ota/device/upgrade/pk1/robot-7",
        &push.to_string(),
        &["-q", "1"],
    );

    let progress = "/ota/device/progress/pk1/robot-7";
    let lines = sub.wait_for("progress 100 and the new version", T, |l| {
        steps(l, progress).contains(&100)
            && payloads(l, inform)
                .iter()
                .any(|p| p["params"]["version"] == "2.0.0")
    });
    let s = steps(&lines, progress);
    assert!(
        s.windows(2).all(|w| w[0] <= w[1]),
        "progress out of order: {s:?}"
    );
    assert!(s.len() >= 3 && s[0] >= 1, "{s:?}");
    for p in payloads(&lines, progress) {
        assert_eq!(p["params"]["module"], "detector");
        assert!(p["params"]["desc"].as_str().unwrap().chars().count() <= 128);
    }
    // The version is reported only after the progress reached 100 (the platform's success).
    let pos = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l)).unwrap();
    assert!(
        pos(&|l| l.starts_with(progress) && l.contains("\"100\""))
            < pos(&|l| l.starts_with(inform) && l.contains("2.0.0"))
    );
    // The robot's result report and the upgrade log.
    let lines = rep.wait_for("result and log", T, |l| {
        !payloads(l, "/pk1/robot-7/user/ota/result").is_empty()
            && !payloads(l, "/pk1/robot-7/user/ota/log").is_empty()
    });
    let r = &payloads(&lines, "/pk1/robot-7/user/ota/result")[0];
    assert_eq!(r["PROGRESS"], 100);
    assert_eq!(r["RESULT"], 0);
    assert_eq!(r["UPGRADE_FAILED_COMPONENT_ARRAY"], json!([]));
    let log = &payloads(&lines, "/pk1/robot-7/user/ota/log")[0];
    assert!(log["FILE_NAME"].as_str().unwrap().starts_with("ota-"));
    assert!(
        log["LOG_CONTENT"]
            .as_str()
            .unwrap()
            .contains("committed 2.0.0"),
        "{log}"
    );
    // The slots: 2.0.0 active and committed, 1.0.0 intact in the other.
    let st = status(&ota_dir);
    assert_eq!(st["journal"]["state"], "committed", "{st}");
    assert_eq!(st["committed"]["version"], "2.0.0");
    assert_eq!(active_slot_is_complete(&ota_dir).unwrap(), "2.0.0");
    let other = if st["active"] == "a" { "b" } else { "a" };
    assert_eq!(st["slots"][other]["version"], "1.0.0");
    let old = ota_dir.join("slots").join(other);
    assert_eq!(
        std::fs::read(old.join("config/detector.toml")).unwrap(),
        b"variant = \"v1\"\n"
    );

    // Failures, each with its step: a wrong hash (-3), a missing file (-2), and a
    // downgrade (-1, nothing fetched).
    let v3 = make_package(www.path(), "3.0.0", &pkg_files("v3"), None, None);
    let url3 = srv.url(v3.package.file_name().unwrap().to_str().unwrap());
    let bad_hash = json!({"code": "1000", "data": {"version": "3.0.0", "url": url3,
        "sign": "0".repeat(64), "signMethod": "SHA256", "module": "detector"}, "id": 1701});
    let missing = json!({"code": "1000", "data": {"version": "3.0.1", "url": srv.url("gone.tar.gz"),
        "sign": v3.sha256, "signMethod": "SHA256", "module": "detector"}, "id": 1702});
    let downgrade = json!({"code": "1000", "data": {"version": "1.5.0", "url": url3,
        "sign": v3.sha256, "signMethod": "SHA256", "module": "detector"}, "id": 1703});
    let mut seen = 1;
    for (push, step) in [(bad_hash, -3), (missing, -2), (downgrade, -1)] {
        publish(
            mq.port,
            "/ota/device/upgrade/pk1/robot-7",
            &push.to_string(),
            &["-q", "1"],
        );
        seen += 1;
        let lines = rep.wait_for("a failure result", T, |l| {
            payloads(l, "/pk1/robot-7/user/ota/result").len() >= seen
        });
        let r = payloads(&lines, "/pk1/robot-7/user/ota/result")[seen - 1].clone();
        assert_eq!(r["RESULT"], 1, "{r}");
        assert_eq!(r["ERROR_TYPE"], -step, "{r}");
        assert!(!r["ERROR_INFO"].as_str().unwrap().is_empty());
        let failed = &r["UPGRADE_FAILED_COMPONENT_ARRAY"][0];
        assert_eq!(failed["COMPONENT_NAME"], "detector");
        assert_eq!(failed["CURRENT_VERSION"], "2.0.0");
        sub.wait_for("the failure's progress step", T, |l| {
            steps(l, progress).contains(&step)
        });
    }
    let reqs = srv.control("stats")["requests"].clone();
    assert_eq!(
        reqs.as_array()
            .unwrap()
            .iter()
            .filter(|r| r[0] == "/gone.tar.gz")
            .count(),
        1,
        "a 404 is not retried: {reqs}"
    );
    assert_eq!(active_slot_is_complete(&ota_dir).unwrap(), "2.0.0");
    let log = stop(agent);
    assert!(log.contains("Update committed"), "{log}");
    assert!(log.contains("Update refused"), "{log}");
    // The presigned URL's credentials: in no report, log line or file of the store.
    let mut everything = format!(
        "{log}\n{}\n{}\n{}",
        sub.snapshot().join("\n"),
        sys.snapshot().join("\n"),
        rep.snapshot().join("\n")
    );
    for f in ["journal.json", "job.log"] {
        everything.push_str(&std::fs::read_to_string(ota_dir.join(f)).unwrap_or_default());
    }
    // (The cloud's own push, which the test's subscriber saw too, holds it of course.)
    let leaks: Vec<&str> = everything
        .lines()
        .filter(|l| !l.starts_with("/ota/device/upgrade/"))
        .filter(|l| l.contains("c2VjcmV0c2ln") || l.contains("LTAI5tKEY"))
        .collect();
    assert!(
        leaks.is_empty(),
        "a presigned URL's credentials were written out:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn aws_jobs_start_next_reports_in_progress_and_succeeded_with_versions() {
    let mq = Mosquitto::start(Options::default());
    let www = tempfile::tempdir().unwrap();
    let srv = HttpServer::start(www.path());
    let dom = support::domain();
    let a = AgentDir::new(
        mq.port,
        dom.id,
        "",
        "[ota]\nprotocol = \"aws\"\nallow_http = true\nconfirm_after = \"1s\"\npublic_key = { file = \"signing.pub\" }\n",
    );
    // Packages are signed as AWS IoT code signing does: ECDSA P-256 over SHA-256, the
    // DER signature in base64 in the job document's `sig-sha256-ecdsa`.
    let key = a.path().join("signing.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        a.path().join("signing.pub").to_str().unwrap(),
    ]);
    let ota_dir = seed_v1(a.path(), www.path());
    let base = "$aws/things/robot-7/jobs";
    let sub = ready_sub(
        mq.port,
        &format!("{base}/#"),
        &format!("{base}/probe"),
        &["-q", "1"],
    );
    let agent = spawn_run(&a.config(), &[]);

    // On connect the agent asks for the next job; the cloud answers with none.
    let start_next = format!("{base}/start-next");
    sub.wait_for("start-next", T, |l| !payloads(l, &start_next).is_empty());
    let token = payloads(&sub.snapshot(), &start_next)[0]["clientToken"].clone();
    publish(
        mq.port,
        &format!("{base}/start-next/accepted"),
        &json!({"clientToken": token}).to_string(),
        &["-q", "1"],
    );

    // A job is queued: notify-next, the agent claims it with start-next, the cloud
    // answers with the execution (IN_PROGRESS, version 2).
    let v2 = make_package(www.path(), "41811020", &pkg_files("aws"), None, None);
    let url = srv.url(v2.package.file_name().unwrap().to_str().unwrap());
    let size = std::fs::metadata(&v2.package).unwrap().len();
    let sig = www.path().join("v2.sig");
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
        v2.package.to_str().unwrap(),
    ]);
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&sig).unwrap());
    let doc = json!({"firmware": {"version": "41811020", "size": size, "url": url, "sha256": v2.sha256, "sig-sha256-ecdsa": sig}});
    publish(
        mq.port,
        &format!("{base}/notify-next"),
        &json!({"timestamp": 1, "execution": {"jobId": "job-1", "status": "QUEUED", "versionNumber": 1, "jobDocument": doc}}).to_string(),
        &["-q", "1"],
    );
    sub.wait_for("the claim", T, |l| payloads(l, &start_next).len() >= 2);
    publish(
        mq.port,
        &format!("{base}/start-next/accepted"),
        &json!({"execution": {"jobId": "job-1", "status": "IN_PROGRESS", "versionNumber": 2, "jobDocument": doc}}).to_string(),
        &["-q", "1"],
    );
    let update = format!("{base}/job-1/update");
    let lines = sub.wait_for("SUCCEEDED", T, |l| {
        payloads(l, &update)
            .iter()
            .any(|p| p["status"] == "SUCCEEDED")
    });
    let ups = payloads(&lines, &update);
    let (last, progress) = ups.split_last().unwrap();
    assert!(!progress.is_empty());
    let mut pct = Vec::new();
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["status"], "IN_PROGRESS", "{p}");
        // Each update expects the version the previous one produced.
        assert_eq!(p["expectedVersion"], 2 + i as i64, "{p}");
        pct.push(
            p["statusDetails"]["progress"]
                .as_str()
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert!(pct.windows(2).all(|w| w[0] <= w[1]), "{pct:?}");
    let with_bytes = progress
        .iter()
        .find(|p| p["statusDetails"].get("bytes").is_some())
        .expect("a progress update with bytes");
    assert_eq!(with_bytes["statusDetails"]["total"], size.to_string());
    assert_eq!(last["expectedVersion"], 2 + progress.len() as i64);
    assert_eq!(last["statusDetails"]["version"], "41811020");
    assert_eq!(active_slot_is_complete(&ota_dir).unwrap(), "41811020");
    assert_eq!(status(&ota_dir)["journal"]["state"], "committed");

    // Jobs that fail: the reason goes back in the FAILED update, and nothing changes.
    let fail = |job: &str, doc: Value| -> String {
        publish(
            mq.port,
            &format!("{base}/start-next/accepted"),
            &json!({"execution": {"jobId": job, "status": "IN_PROGRESS", "versionNumber": 1, "jobDocument": doc}}).to_string(),
            &["-q", "1"],
        );
        let update = format!("{base}/{job}/update");
        let lines = sub.wait_for("FAILED", T, |l| {
            payloads(l, &update).iter().any(|p| p["status"] == "FAILED")
        });
        let failed = payloads(&lines, &update)
            .into_iter()
            .find(|p| p["status"] == "FAILED")
            .unwrap();
        assert_eq!(active_slot_is_complete(&ota_dir).unwrap(), "41811020");
        failed["statusDetails"]["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // A package that is missing.
    let doc = json!({"firmware": {"version": "41811021", "url": srv.url("gone.tar.gz"), "sha256": v2.sha256}});
    let reason = fail("job-2", doc);
    assert!(reason.contains("404"), "{reason}");
    // A package whose signature is another package's is refused before it is installed.
    let v3 = make_package(www.path(), "41811022", &pkg_files("v3"), None, None);
    let url3 = srv.url(v3.package.file_name().unwrap().to_str().unwrap());
    let doc = json!({"firmware": {"version": "41811022", "url": url3, "sha256": v3.sha256, "sig-sha256-ecdsa": sig}});
    let reason = fail("job-3", doc);
    assert!(reason.contains("does not match the package"), "{reason}");
    stop(agent);
}

#[test]
fn http_poll_finds_installs_and_reports_an_update() {
    let mq = Mosquitto::start(Options::default());
    let www = tempfile::tempdir().unwrap();
    let srv = HttpServer::start(www.path());
    let (_dom, a, ota_dir) = http_agent(mq.port, &srv, www.path());
    let rep = ready_sub(
        mq.port,
        "/pk1/robot-7/user/ota/#",
        "/pk1/robot-7/user/ota/probe",
        &["-q", "1"],
    );
    let agent = spawn_run(&a.config(), &[]);

    // No update information yet (404): the agent keeps polling.
    let polled = |v: &str| {
        srv.control("stats")["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r[0] == format!("/api/check_update?version={v}").as_str())
            .count()
    };
    let deadline = std::time::Instant::now() + T;
    while polled("1.0.0") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent does not poll"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v2 = make_package(www.path(), "2.0.0", &pkg_files("http"), None, None);
    std::fs::write(
        www.path().join("check_update.json"),
        json!({"update_available": true, "latest_version": "2.0.0",
               "url": srv.url(v2.package.file_name().unwrap().to_str().unwrap()), "sha256": v2.sha256})
        .to_string(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + T;
    while payloads(&rep.snapshot(), "/pk1/robot-7/user/ota/result").is_empty() {
        if std::time::Instant::now() > deadline {
            panic!("no result report; the agent's log:\n{}", stop(agent));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = rep.snapshot();
    assert_eq!(
        payloads(&lines, "/pk1/robot-7/user/ota/result")[0]["RESULT"],
        0
    );
    assert_eq!(active_slot_is_complete(&ota_dir).unwrap(), "2.0.0");
    // From now on it asks with the new version, and the same offer is not installed again.
    while polled("2.0.0") < 2 {
        assert!(
            std::time::Instant::now() < deadline + T,
            "no poll with the new version"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stop(agent);
    assert_eq!(
        payloads(&rep.snapshot(), "/pk1/robot-7/user/ota/result").len(),
        1,
        "{log}"
    );
    // The server's 404s were polled several times but logged once.
    assert_eq!(
        log.matches("Cannot ask the update server").count(),
        1,
        "{log}"
    );
    assert!(log.contains("The update server answers again"), "{log}");
    let st: Value = status(&ota_dir);
    assert_eq!(st["committed"]["version"], "2.0.0", "{st}");
}

#[test]
fn http_check_update_with_oss_sts_credentials_downloads_with_signed_requests() {
    // The update server answers with temporary STS credentials and an OSS object, as the
    // reference update code does; the test server plays the bucket and checks every
    // request's signature with Alibaba Cloud's own oss2 SDK.
    const SECRET: &str = "sts-secret-9f8e7d";
    const TOKEN: &str = "CAIS-sts-token-4c3b2a";
    let mq = Mosquitto::start(Options::default());
    let www = tempfile::tempdir().unwrap();
    let check = format!("orchard-ota STS.NUd7 {SECRET} {TOKEN}");
    let srv = HttpServer::start_with_env(www.path(), &[("OSS_CHECK", &check)]);
    let (_dom, a, ota_dir) = http_agent(mq.port, &srv, www.path());
    // 256 KiB that do not compress, sent at 64 KiB/s: the agent is stopped mid-way.
    let mut x: u32 = 0x9e37_79b9;
    let noise: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let v2 = make_package(
        www.path(),
        "2.0.0",
        &[("model/weights.bin", noise)],
        None,
        None,
    );
    let object = format!("pkgs/{}", v2.package.file_name().unwrap().to_str().unwrap());
    std::fs::create_dir_all(www.path().join("pkgs")).unwrap();
    std::fs::copy(&v2.package, www.path().join(&object)).unwrap();
    srv.control("rate?bps=65536");
    std::fs::write(
        www.path().join("check_update.json"),
        json!({"update_available": true, "latest_version": "2.0.0", "sha256": v2.sha256,
               "oss": {"endpoint": srv.url("").trim_end_matches('/'), "bucket": "orchard-ota", "object": object,
                       "Credentials": {"AccessKeyId": "STS.NUd7", "AccessKeySecret": SECRET, "SecurityToken": TOKEN}}})
        .to_string(),
    )
    .unwrap();
    let rep = ready_sub(
        mq.port,
        "/pk1/robot-7/user/ota/#",
        "/pk1/robot-7/user/ota/probe",
        &["-q", "1"],
    );
    // A power cut (kill -9) once part of the package has come.
    let mut agent = spawn_run(&a.config(), &[]);
    let deadline = std::time::Instant::now() + T;
    while srv.control("stats")["bytes_sent"].as_u64().unwrap() < 64 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the download did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
    let journal = std::fs::read_to_string(ota_dir.join("journal.json")).unwrap();
    assert!(journal.contains("orchard-ota"), "{journal}");
    srv.control("rate?bps=0");

    // Started again: fresh credentials from the server, and the rest of the package.
    let agent = spawn_run(&a.config(), &[]);
    let deadline = std::time::Instant::now() + T;
    while payloads(&rep.snapshot(), "/pk1/robot-7/user/ota/result").is_empty() {
        if std::time::Instant::now() > deadline {
            panic!("no result report; the agent's log:\n{}", stop(agent));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stop(agent);
    let results = payloads(&rep.snapshot(), "/pk1/robot-7/user/ota/result");
    assert_eq!(results[0]["RESULT"], 0, "{results:?}\n{log}");
    assert_eq!(active_slot_is_complete(&ota_dir).unwrap(), "2.0.0");
    assert!(
        log.contains("goes on with the update server's next answer"),
        "{log}"
    );
    let reqs: Vec<Value> = srv.control("stats")["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r[0].as_str().unwrap().starts_with("/orchard-ota/"))
        .cloned()
        .collect();
    assert!(
        reqs.iter().all(|r| r[2] != 403),
        "a request oss2 did not sign alike: {reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r[2] == 206),
        "the download was not taken up where it stopped: {reqs:?}"
    );
    // The credentials reach no log line, report or state file.
    let mut said = log.clone();
    said.push_str(&rep.snapshot().join("\n"));
    for f in ["journal.json", "job.log"] {
        said.push_str(&std::fs::read_to_string(ota_dir.join(f)).unwrap_or_default());
    }
    assert!(!said.contains(SECRET) && !said.contains(TOKEN), "{said}");
}
