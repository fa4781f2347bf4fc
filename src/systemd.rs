//! The systemd service protocol (`Type=notify`): READY=1 once the agent is up,
//! WATCHDOG=1 at half the unit's WatchdogSec, STOPPING=1 on the way out, STATUS= for
//! `systemctl status`. A datagram to `$NOTIFY_SOCKET`; nothing when not under systemd.

use std::time::Duration;

pub struct Notifier {
    #[cfg(target_os = "linux")]
    target: Option<(
        std::os::unix::net::UnixDatagram,
        std::os::unix::net::SocketAddr,
    )>,
}

impl Notifier {
    pub fn from_env() -> Self {
        #[cfg(target_os = "linux")]
        {
            let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = if let Some(name) = path.strip_prefix('@') {
                    std::os::unix::net::SocketAddr::from_abstract_name(name).ok()?
                } else {
                    std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
                };
                let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
                Some((sock, addr))
            });
            Self { target }
        }
        #[cfg(not(target_os = "linux"))]
        Self {}
    }

    pub fn notify(&self, state: &str) {
        #[cfg(target_os = "linux")]
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                tracing::debug!(error = %e, "Cannot notify systemd.");
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = state;
    }

    pub fn enabled(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.target.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }
}

/// Half of the unit's watchdog period, when systemd asked for pings from this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
