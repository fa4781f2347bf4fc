//! The agent's log: tracing to stderr, which systemd sends to the journal
//! (`journalctl -fu edge-agent`). Under systemd the journal adds timestamps, so lines
//! start with the level. Any configured secret that would appear in a line is replaced
//! by `***` before it is written.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing_subscriber::filter::{FilterExt as _, FilterFn, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer;

/// Replaces secrets in text.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    secrets: Arc<Vec<String>>,
}

impl Scrubber {
    pub fn new(secrets: &[String]) -> Self {
        // Very short values would mangle ordinary text; they are not real secrets.
        let secrets = secrets.iter().filter(|s| s.len() >= 4).cloned().collect();
        Self {
            secrets: Arc::new(secrets),
        }
    }

    pub fn scrub<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        for s in self.secrets.iter() {
            if out.contains(s.as_str()) {
                out = std::borrow::Cow::Owned(out.replace(s.as_str(), "***"));
            }
        }
        out
    }
}

struct ScrubbingWriter {
    scrubber: Scrubber,
    buf: Vec<u8>,
}

impl Write for ScrubbingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ScrubbingWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let clean = self.scrubber.scrub(&text);
        let _ = std::io::stderr().lock().write_all(clean.as_bytes());
    }
}

#[derive(Clone)]
struct MakeScrubbing(Scrubber);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeScrubbing {
    type Writer = ScrubbingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter {
            scrubber: self.0.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

/// For [`init`] without an extra layer.
pub type NoLayer = tracing_subscriber::layer::Identity;

/// Set once the agent lets go of its ROS node at shutdown.
static DDS_TEARDOWN: AtomicBool = AtomicBool::new(false);

/// From now on the DDS stack's own lines are dropped. Its threads report every entity
/// they can no longer remove while the node is taken down (one ERROR per reader and
/// writer), which would end each clean stop with a screen of errors.
pub fn quiet_dds_teardown() {
    DDS_TEARDOWN.store(true, Ordering::Relaxed);
}

fn dds_line_wanted(target: &str) -> bool {
    !(DDS_TEARDOWN.load(Ordering::Relaxed) && target.starts_with("rustdds"))
}

/// Installs the global subscriber. `level` is the configured level; `RUST_LOG`
/// overrides it. `extra` receives every event too (the device log).
pub fn init<L>(level: &str, scrubber: Scrubber, extra: Option<L>)
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    // RUST_LOG as `target=level` pairs (e.g. `edge_agent=debug,warn`); no regular
    // expressions, which keeps the binary (and its memory) smaller.
    // The DDS stack warns about every datagram it cannot route (e.g. no multicast on a
    // loopback-only host): not something a technician can act on, so errors only.
    // r2r (the rcl transport) returns its failures, which the agent logs itself; its own
    // lines add only noise, such as an ERROR when a publisher leaves the graph.
    let default: Targets = format!("warn,rustdds=error,r2r=off,edge_agent={level}")
        .parse()
        .unwrap_or_default();
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or(default);
    // The hint keeps the level the targets allow as the global maximum, so disabled
    // records are still rejected at their call sites (without it, every record of the
    // DDS stack would be built and then filtered).
    let teardown = FilterFn::new(|m| dds_line_wanted(m.target()))
        .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE);
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !under_systemd && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(MakeScrubbing(scrubber))
        .with_ansi(ansi)
        .with_target(false);
    let fmt = if under_systemd {
        fmt.without_time().boxed()
    } else {
        fmt.boxed()
    };
    // Each layer has its own filter, so events no layer wants are never built: the
    // DDS stack's per-packet debug records stop at the `log` crate's level check.
    let shipped = Targets::new().with_target("edge_agent", tracing::Level::INFO);
    let registry = tracing_subscriber::registry()
        .with(extra.map(|l| l.with_filter(shipped)))
        .with(fmt.with_filter(filter.and(teardown)));
    let _ = registry.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dds_lines_stop_at_teardown_and_ours_do_not() {
        assert!(dds_line_wanted("rustdds::rtps::dp_event_loop"));
        quiet_dds_teardown();
        assert!(!dds_line_wanted("rustdds::rtps::dp_event_loop"));
        assert!(dds_line_wanted("edge_agent::agent"));
    }

    #[test]
    fn scrubs_secrets() {
        let s = Scrubber::new(&["hunter22".into(), "ab".into()]);
        assert_eq!(s.scrub("password hunter22 in ab"), "password *** in ab");
    }
}
