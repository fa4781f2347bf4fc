//! Package hooks end to end: `edge-agent ota pack` with `--pre-install`,
//! `--post-switch`, `--post-rollback`, installed by `edge-agent ota install` into a state
//! folder holding version 1.0.0. The hooks are shell scripts of the package that write
//! what they were told into a file the test reads.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::ota::{agent, install_committed, make_package, ota, status, stderr};

struct Robot {
    dir: tempfile::TempDir,
}

impl Robot {
    /// A state folder with 1.0.0 installed and committed (in slot a).
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let v1 = make_package(
            &dir.path().join("v1"),
            "1.0.0",
            &[("detect.toml", b"# 1.0.0\n".to_vec())],
            None,
            None,
        );
        install_committed(&v1.package, &dir.path().join("state"));
        Robot { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn hook_log(&self) -> PathBuf {
        self.dir.path().join("hooks.log")
    }

    /// Packs 2.0.0 with `scripts` (name, body) under hooks/ and the `ota pack` flags.
    fn pack(&self, scripts: &[(&str, &str)], flags: &[&str]) -> Output {
        let src = self.dir.path().join("v2-src");
        std::fs::create_dir_all(src.join("hooks")).unwrap();
        std::fs::write(src.join("detect.toml"), "# 2.0.0\n").unwrap();
        for (name, body) in scripts {
            let p = src.join("hooks").join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = self.dir.path().join("v2");
        let mut args = vec![
            "pack",
            src.to_str().unwrap(),
            "--version",
            "2.0.0",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        ota(&args)
    }

    fn package(&self) -> PathBuf {
        self.dir.path().join("v2/detector-2.0.0.tar.gz")
    }

    /// [`Robot::pack`], which must succeed, then [`Robot::install`].
    fn pack_and_install(&self, scripts: &[(&str, &str)], flags: &[&str]) -> Output {
        let o = self.pack(scripts, flags);
        assert!(o.status.success(), "{}", stderr(&o));
        self.install()
    }

    /// `ota install` of 2.0.0, the hooks' log file in `HOOK_LOG`.
    fn install(&self) -> Output {
        agent()
            .args(["ota", "install"])
            .arg(self.package())
            .args(["--yes", "--state-dir"])
            .arg(self.state())
            .env("HOOK_LOG", self.hook_log())
            .output()
            .unwrap()
    }

    fn hook_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.hook_log())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn job_log(&self) -> String {
        std::fs::read_to_string(self.state().join("job.log")).unwrap()
    }
}

/// A hook body that writes what it was told, one line, to `$HOOK_LOG`.
const TELL: &str = r#"echo "$EDGE_AGENT_OTA_HOOK module=$EDGE_AGENT_OTA_MODULE new=$EDGE_AGENT_OTA_NEW_VERSION old=$EDGE_AGENT_OTA_OLD_VERSION new_slot=$EDGE_AGENT_OTA_NEW_SLOT old_slot=$EDGE_AGENT_OTA_OLD_SLOT args=$*" >> "$HOOK_LOG""#;

fn slot(state: &Path, s: &str) -> String {
    state.join("slots").join(s).display().to_string()
}

#[test]
fn hooks_run_in_order_told_the_versions_and_slots_and_their_output_reaches_the_ota_log() {
    let r = Robot::new();
    let pre = format!(
        "{TELL}\n# The inactive slot is untouched while this runs.\necho \"slot b files: $(ls \"$(dirname \"$PWD\")/slots/b\" 2>/dev/null | wc -l)\" >> \"$HOOK_LOG\"\necho 'disk space ok'"
    );
    let post = format!("{TELL}\necho 'picker-arm restarted'");
    let o = r.pack_and_install(
        &[("pre.sh", &pre), ("post.sh", &post), ("rollback.sh", TELL)],
        &[
            "--pre-install",
            "hooks/pre.sh --min-free 300M",
            "--post-switch",
            "hooks/post.sh",
            "--post-rollback",
            "hooks/rollback.sh",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let st = r.state();
    assert_eq!(
        r.hook_lines(),
        [
            format!(
                "pre_install module=detector new=2.0.0 old=1.0.0 new_slot= old_slot={} args=--min-free 300M",
                slot(&st, "a")
            ),
            "slot b files: 0".to_string(),
            format!(
                "post_switch module=detector new=2.0.0 old=1.0.0 new_slot={} old_slot={} args=",
                slot(&st, "b"),
                slot(&st, "a")
            ),
        ]
    );
    let log = r.job_log();
    assert!(log.contains("pre_install: disk space ok"), "{log}");
    assert!(log.contains("post_switch: picker-arm restarted"), "{log}");
    assert_eq!(status(&st)["committed"]["version"], "2.0.0");
    // The staged pre_install program is gone.
    assert!(!st.join("hook").exists());
}

#[test]
fn a_failing_pre_install_refuses_the_update_with_its_output_and_touches_no_slot() {
    let r = Robot::new();
    let o = r.pack_and_install(
        &[(
            "pre.sh",
            "echo 'only 12 MB free, 300 MB needed' >&2\nexit 1",
        )],
        &["--pre-install", "hooks/pre.sh"],
    );
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("pre_install hook refused the update")
            && stderr(&o).contains("only 12 MB free, 300 MB needed"),
        "{}",
        stderr(&o)
    );
    let s = status(&r.state());
    assert_eq!(s["committed"]["version"], "1.0.0");
    assert_eq!(s["active"], "a");
    assert!(s["slots"]["b"]["version"].is_null(), "{s}");
}

#[test]
fn a_failing_post_switch_rolls_back_and_the_post_rollback_hook_is_told() {
    let r = Robot::new();
    let post = format!("{TELL}\necho 'picker-arm did not come up' >&2\nexit 2");
    let o = r.pack_and_install(
        &[("post.sh", &post), ("rollback.sh", TELL)],
        &[
            "--post-switch",
            "hooks/post.sh",
            "--post-rollback",
            "hooks/rollback.sh",
        ],
    );
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the post_switch hook failed")
            && stderr(&o).contains("picker-arm did not come up"),
        "{}",
        stderr(&o)
    );
    let st = r.state();
    let lines = r.hook_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("post_switch "), "{lines:?}");
    assert_eq!(
        lines[1],
        format!(
            "post_rollback module=detector new=2.0.0 old=1.0.0 new_slot={} old_slot={} args=",
            slot(&st, "b"),
            slot(&st, "a")
        )
    );
    let s = status(&st);
    assert_eq!(s["active"], "a", "{s}");
    assert_eq!(s["committed"]["version"], "1.0.0");
    assert_eq!(s["journal"]["state"], "rolled-back", "{s}");
    let log = r.job_log();
    assert!(log.contains("post_rollback hook succeeded"), "{log}");
}

#[test]
fn a_hook_past_its_timeout_is_stopped_and_refuses_the_update() {
    let r = Robot::new();
    let o = r.pack_and_install(
        &[("pre.sh", "sleep 30")],
        &["--pre-install", "hooks/pre.sh", "--hook-timeout", "1"],
    );
    assert_eq!(o.status.code(), Some(65));
    assert!(
        stderr(&o).contains("did not finish within 1s"),
        "{}",
        stderr(&o)
    );
    assert_eq!(status(&r.state())["committed"]["version"], "1.0.0");
}

#[test]
fn a_hook_that_is_not_a_file_of_the_package_is_refused() {
    let r = Robot::new();
    let o = r.pack(&[], &["--post-switch", "/bin/systemctl restart picker-arm"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).contains("runs '/bin/systemctl', which is not a file of the package"),
        "{}",
        stderr(&o)
    );
}
