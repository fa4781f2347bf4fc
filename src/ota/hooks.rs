//! Running a package's programs (its hooks): a file of the verified package, in a given
//! folder, with a timeout, its output kept for the OTA log and so for the upgrade report.
//! Blocking, so that a technician's `ota rollback` and the agent run them alike.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt as _;

use super::package::HealthCheck;

/// At most this much of a hook's output is kept.
const MAX_OUTPUT: u64 = 16 * 1024;
/// And at most this many of its lines go into the OTA log.
const MAX_LINES: usize = 40;

/// What a hook did.
#[derive(Debug)]
pub struct Ran {
    /// `None` when it succeeded; else why not (exit code, signal, timeout, cannot run),
    /// with the last lines of its output.
    pub failure: Option<String>,
    /// Its output (stdout and stderr interleaved), last lines.
    pub output: Vec<String>,
}

/// Runs `hook` in `dir`: its program is `dir/<first word>`. The environment is the
/// agent's plus `env`. The program and everything it started are killed at the timeout.
pub fn run(hook: &HealthCheck, dir: &Path, env: &[(&str, String)]) -> Ran {
    let fail = |why: String| Ran {
        failure: Some(why),
        output: Vec::new(),
    };
    let Some((prog, args)) = hook.command.split_first() else {
        return fail("its command is empty".into());
    };
    let path = dir.join(prog);
    let out = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => return fail(format!("no temporary file for its output: {e}")),
    };
    let err = match out.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(format!("no temporary file for its output: {e}")),
    };
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(
            out.try_clone()
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .stderr(Stdio::from(err));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {prog}: {e}")),
    };
    let timeout = Duration::from_secs(hook.timeout_s.max(1));
    let status = match child.wait_timeout(timeout) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "{prog} did not finish within {}s",
                timeout.as_secs()
            ))
        }
        Err(e) => Err(format!("{prog}: {e}")),
    };
    let output = read_tail(out);
    let tail = || {
        output
            .iter()
            .rev()
            .take(3)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let failure = match status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("{prog} exited with {s}: {}", tail())),
        Err(why) => Some(why),
    };
    Ran { failure, output }
}

/// The last lines of what was written to `f`.
fn read_tail(mut f: std::fs::File) -> Vec<String> {
    use std::io::Seek as _;
    let len = f.seek(std::io::SeekFrom::End(0)).unwrap_or(0);
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(MAX_OUTPUT)));
    let mut bytes = Vec::new();
    let _ = f.take(MAX_OUTPUT).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let skip = lines.len().saturating_sub(MAX_LINES);
    lines.into_iter().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> HealthCheck {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        HealthCheck {
            command: vec![name.into(), "arg 1".into()],
            timeout_s: 1,
        }
    }

    #[test]
    fn output_exit_codes_environment_and_timeouts() {
        let d = tempfile::tempdir().unwrap();
        let ok = script(
            d.path(),
            "ok.sh",
            "echo \"$1 $EDGE_AGENT_OTA_HOOK\"; echo to-stderr >&2",
        );
        let r = run(
            &ok,
            d.path(),
            &[("EDGE_AGENT_OTA_HOOK", "post_switch".into())],
        );
        assert!(r.failure.is_none(), "{r:?}");
        assert_eq!(r.output, ["arg 1 post_switch", "to-stderr"]);

        let bad = script(d.path(), "bad.sh", "echo 'disk too small' >&2; exit 3");
        let r = run(&bad, d.path(), &[]);
        let why = r.failure.unwrap();
        assert!(
            why.contains("exit status: 3") && why.contains("disk too small"),
            "{why}"
        );

        // A hook that hangs, with a child of its own: both are gone at the timeout.
        let hang = script(d.path(), "hang.sh", "sleep 30 & echo $! > child.pid; wait");
        let r = run(&hang, d.path(), &[]);
        assert!(r.failure.unwrap().contains("did not finish within 1s"));
        let child: i32 = std::fs::read_to_string(d.path().join("child.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILL takes effect a moment after it is sent: gone or a zombie, soon.
        let gone = || {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone(), "the hook's child {child} outlived the timeout");

        let missing = HealthCheck {
            command: vec!["nope.sh".into()],
            timeout_s: 1,
        };
        assert!(run(&missing, d.path(), &[])
            .failure
            .unwrap()
            .contains("cannot run nope.sh"));
    }
}
