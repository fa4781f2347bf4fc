//! The Debian package as a robot integrator installs it: built by `scripts/build-deb.sh`
//! (scripts/test.sh builds it with the quick `deb-check` profile before the tests),
//! checked by Debian's lintian, installed with dpkg, its configuration and unit checked
//! by the installed agent and systemd-analyze, then removed and purged. Needs root, as
//! dpkg does (CI runs as root).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (scripts/setup-test-env.sh installs it)"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn package() -> PathBuf {
    let dir = support::repo().join("target/debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("edge-agent_") && n.ends_with(".deb"))
                })
                .collect()
        })
        .unwrap_or_default();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().unwrap_or_else(|| {
        panic!(
            "no edge-agent_*.deb in {}: run `scripts/build-deb.sh --profile deb-check` \
             (scripts/test.sh does)",
            dir.display()
        )
    })
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "edge-agent"])
        .stdout
        .starts_with(b"install ok installed")
}

#[test]
fn the_package_passes_lintian_installs_runs_and_purges_cleanly() {
    let deb = package();
    let deb_s = deb.to_str().unwrap();

    // lintian: no errors (warnings are listed in the failure message if any error).
    let l = run("lintian", &["--allow-root", deb_s]);
    let report = text(&l);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{report}");

    // What is inside, before it touches the system.
    let contents = text(&run("dpkg-deb", &["-c", deb_s]));
    for want in [
        "./usr/bin/edge-agent",
        "./usr/lib/systemd/system/edge-agent.service",
        "./usr/lib/sysusers.d/edge-agent.conf",
        "./etc/edge-agent/agent.toml",
        "./etc/edge-agent/environment",
        "./etc/edge-agent/msg_mappings/telemetry.toml",
        "./usr/share/edge-agent/launch/edge_agent.launch.py",
        "./usr/share/edge-agent/interfaces/edge_agent_msgs/msg/DetectionRequest.msg",
        "./usr/share/edge-agent/ros/share/ament_index/resource_index/packages/edge_agent",
        "./usr/share/edge-agent/ros/share/edge_agent/launch/edge_agent.launch.py",
    ] {
        assert!(
            contents.contains(want),
            "{want} is not in the package:\n{contents}"
        );
    }
    // The interface package is buildable from the copy: every file its CMakeLists.txt
    // names is there.
    let cmake =
        std::fs::read_to_string(support::repo().join("interfaces/edge_agent_msgs/CMakeLists.txt"))
            .unwrap();
    let named: Vec<&str> = cmake
        .split('"')
        .filter(|p| p.ends_with(".msg") || p.ends_with(".srv") || p.ends_with(".action"))
        .collect();
    assert!(named.len() >= 5, "{cmake}");
    for f in named {
        let want = format!("./usr/share/edge-agent/interfaces/edge_agent_msgs/{f}");
        assert!(
            contents.contains(&want),
            "{want} is not in the package:\n{contents}"
        );
    }
    let conffiles = text(&run(
        "sh",
        &[
            "-c",
            &format!("dpkg-deb --ctrl-tarfile {deb_s} | tar -xO ./conffiles"),
        ],
    ));
    assert!(
        conffiles.contains("/etc/edge-agent/agent.toml"),
        "{conffiles}"
    );

    let root = run("id", &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&root.stdout).trim(),
        "0",
        "installing the package needs root, as dpkg does: run the tests as root (CI does)"
    );
    assert!(
        !installed(),
        "edge-agent is already installed on this machine; this test would replace it. \
         Purge it first (dpkg -P edge-agent)"
    );

    let i = run("dpkg", &["-i", deb_s]);
    let log = text(&i);
    let purge = || run("dpkg", &["-P", "edge-agent"]);
    let result = std::panic::catch_unwind(|| {
        assert!(i.status.success(), "dpkg -i failed:\n{log}");
        check_installed();
    });
    if result.is_err() {
        let _ = purge();
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // Removal keeps the state (undelivered messages, update slots) and the configuration.
    std::fs::create_dir_all("/var/lib/edge-agent/outbox").unwrap();
    std::fs::write("/var/lib/edge-agent/outbox/held", b"not delivered yet").unwrap();
    let r = run("dpkg", &["-r", "edge-agent"]);
    assert!(r.status.success(), "dpkg -r failed:\n{}", text(&r));
    assert!(!Path::new("/usr/bin/edge-agent").exists());
    assert!(Path::new("/var/lib/edge-agent/outbox/held").exists());
    assert!(Path::new("/etc/edge-agent/agent.toml").exists());
    // Purge takes both.
    let p = purge();
    assert!(p.status.success(), "dpkg -P failed:\n{}", text(&p));
    assert!(!Path::new("/var/lib/edge-agent").exists());
    assert!(!Path::new("/etc/edge-agent").exists());
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/edge-agent.service").exists());
    assert!(!installed());
}

fn check_installed() {
    // The agent runs and reads the configuration the package installed.
    let c = run(
        "/usr/bin/edge-agent",
        &["check-config", "/etc/edge-agent/agent.toml"],
    );
    assert!(c.status.success(), "{}", text(&c));
    assert!(text(&c).contains("valid"), "{}", text(&c));
    // The robot's build: no demo in it, symbols stripped.
    let d = run("/usr/bin/edge-agent", &["demo"]);
    assert_eq!(d.status.code(), Some(64), "{}", text(&d));
    assert!(text(&d).contains("built without the demo"), "{}", text(&d));
    let sections = text(&run("readelf", &["-S", "/usr/bin/edge-agent"]));
    assert!(
        !sections.contains(".debug_info"),
        "the binary carries debug information"
    );
    assert!(!sections.contains(".symtab"), "the binary is not stripped");
    // The service's user, in the video group (a V4L2 camera).
    let user = text(&run("id", &["edge-agent"]));
    assert!(
        user.contains("(edge-agent)") && user.contains("(video)"),
        "{user}"
    );
    // Enabled, not started (nothing is configured yet on a fresh robot).
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/edge-agent.service").exists(),
        "the unit is not enabled"
    );
    // systemd's own check of the installed unit.
    let v = run(
        "systemd-analyze",
        &["verify", "/usr/lib/systemd/system/edge-agent.service"],
    );
    let remarks: Vec<String> = text(&v)
        .lines()
        .filter(|l| l.contains("edge-agent.service"))
        .map(str::to_owned)
        .collect();
    assert!(v.status.success() && remarks.is_empty(), "{}", text(&v));
}
