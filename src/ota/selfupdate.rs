//! The agent updating itself (docs/ota.md, Self-update). A package may carry a build of
//! the agent at `bin/edge-agent`; the installed binary (`/usr/bin/edge-agent`, started by
//! systemd or `ros2 launch`) is then only the launcher: at `edge-agent run` it counts the
//! start of an unconfirmed slot and hands over (exec, same PID) to the active slot's
//! agent, and runs itself when no slot has one, when the slot's agent cannot be started,
//! or when that agent has used up its starts (the installed agent then rolls back). The
//! running agent restarts itself the same way whenever the active slot comes to hold
//! another build than the one running: after a switch, and after a rollback.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::config::OtaSettings;
use super::installer::{Installer, OtaError};
use super::store::LockError;

/// Where a package carries the agent.
pub const AGENT_PATH: &str = "bin/edge-agent";
/// The component kind `ota pack` gives it.
pub const AGENT_KIND: &str = "edge-agent";
/// Set by the launcher for the agent it starts: the installed binary's path.
pub const LAUNCHER_ENV: &str = "EDGE_AGENT_LAUNCHER";
/// Set by the launcher when it counted this start of an unconfirmed slot already.
pub const COUNTED_ENV: &str = "EDGE_AGENT_START_COUNTED";

/// A slot's agent this process could not start (exec failed), and why: the installed
/// agent then runs, rolls back an unconfirmed slot, and never restarts into that binary.
static EXEC_FAILED: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();

/// The agent binary this process failed to start, and the error.
pub fn exec_failure() -> Option<&'static (PathBuf, String)> {
    EXEC_FAILED.get()
}

/// The agent binary in the active slot, when it has one.
pub fn slot_agent(ota_dir: &Path) -> Option<PathBuf> {
    let p = ota_dir.join("current").join(AGENT_PATH);
    let real = std::fs::canonicalize(p).ok()?;
    real.is_file().then_some(real)
}

/// The running binary.
pub fn running() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// The installed binary: the launcher that started this process, or this process.
pub fn launcher() -> Option<PathBuf> {
    match std::env::var_os(LAUNCHER_ENV) {
        Some(p) if !p.is_empty() => std::fs::canonicalize(p).ok(),
        _ => running(),
    }
}

/// The binary that should be running now, when it is not the running one: the active
/// slot's agent, or (no slot has one) the installed binary.
pub fn restart_into(ota_dir: &Path) -> Option<PathBuf> {
    let wanted = slot_agent(ota_dir).or_else(launcher)?;
    if exec_failure().is_some_and(|(p, _)| p == &wanted) {
        return None;
    }
    (Some(&wanted) != running().as_ref()).then_some(wanted)
}

/// Whether this process is an update slot's agent started by the installed launcher.
pub fn from_slot() -> bool {
    std::env::var_os(LAUNCHER_ENV).is_some() && launcher() != running()
}

/// Whether this start was counted by the launcher (and must not be counted again).
pub fn start_counted() -> bool {
    std::env::var_os(COUNTED_ENV).is_some_and(|v| v == "1")
}

/// At `edge-agent run`, before anything else: hands over to the active slot's agent when
/// it has one, counting the start of an unconfirmed slot first. Returns (having logged
/// why) when this binary should run itself.
pub fn launch(settings: &OtaSettings, args: &[OsString]) {
    let Some(agent) = slot_agent(&settings.dir) else {
        return;
    };
    if Some(&agent) == running().as_ref() {
        return;
    }
    let counted = match count_start(settings) {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::warn!(agent = %agent.display(), "The new slot's agent did not settle; running the installed agent, which rolls back.");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the update journal; starting the active slot's agent without counting this start.");
            false
        }
    };
    tracing::info!(agent = %agent.display(), "Starting the agent of the active update slot.");
    let e = exec(&agent, args, counted);
    tracing::warn!("Running the installed edge-agent instead of the active slot's.");
    let _ = EXEC_FAILED.set((agent, e.to_string()));
}

/// Counts this start when the active slot waits for confirmation. `Some(counted)`: hand
/// over; `None`: the slot used up its starts, run the installed agent (its OTA service
/// rolls back and reports).
fn count_start(settings: &OtaSettings) -> Result<Option<bool>, OtaError> {
    let mut inst = Installer::open(settings.clone())?;
    match inst.acquire() {
        Ok(()) => {}
        // A technician's `ota` command: the agent counts its own start later.
        Err(OtaError::Lock(LockError::Busy { .. })) => return Ok(Some(false)),
        Err(e) => return Err(e),
    }
    let r = inst.count_launch();
    inst.release();
    r
}

/// Replaces this process with `agent` (same PID, arguments and environment, plus
/// [`LAUNCHER_ENV`] and [`COUNTED_ENV`]); returns only when it cannot be started, with
/// the error.
pub fn exec(agent: &Path, args: &[OsString], counted: bool) -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(agent);
    if let Some(a0) = args.first() {
        cmd.arg0(a0);
    }
    cmd.args(args.iter().skip(1));
    if let Some(l) = launcher() {
        cmd.env(LAUNCHER_ENV, l);
    }
    cmd.env(COUNTED_ENV, if counted { "1" } else { "0" });
    let e = cmd.exec();
    tracing::error!(agent = %agent.display(), error = %e, "Cannot start this edge-agent build.");
    e
}

/// What `<agent> --version` says, to check a slot's agent runs on this machine before
/// the switch.
pub fn check_version_output(output: &[String]) -> Result<String, String> {
    output
        .iter()
        .find_map(|l| l.strip_prefix("edge-agent ").map(|v| v.trim().to_owned()))
        .ok_or_else(|| {
            format!(
                "`{AGENT_PATH} --version` did not print \"edge-agent <version>\" (it printed {:?})",
                output.join(" / ")
            )
        })
}
