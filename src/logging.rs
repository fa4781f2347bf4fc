//! The agent's log: tracing to stderr, which systemd sends to the journal
//! (`journalctl -fu edge-agent`). When stderr is the journal (systemd says so in
//! `JOURNAL_STREAM`), each line starts with its priority in the sd-daemon form (`<3>`
//! error, `<4>` warning, `<6>` info, `<7>` debug), so `journalctl -p warning` shows
//! exactly the WARN and ERROR lines, and carries no timestamp of its own (the journal
//! has one). On a terminal or in a file, lines keep their timestamps. Any configured
//! secret that would appear in a line is replaced by `***` before it is written.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing_subscriber::filter::{FilterExt as _, FilterFn, Targets};
use tracing_subscriber::fmt::{format, FmtContext, FormatEvent, FormatFields};
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

/// A progress bar on the terminal (`edge-agent ota install`): log lines are written
/// above it instead of through it.
static PROGRESS_BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Log lines go above `bar` until it is taken away (`None`).
pub fn set_progress_bar(bar: Option<indicatif::ProgressBar>) {
    if let Ok(mut b) = PROGRESS_BAR.lock() {
        *b = bar;
    }
}

impl Drop for ScrubbingWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let clean = self.scrubber.scrub(&text);
        let write = || {
            let _ = std::io::stderr().lock().write_all(clean.as_bytes());
        };
        let bar = PROGRESS_BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
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

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `journald` when stderr is the journal, `text` otherwise.
    #[default]
    Auto,
    /// The sd-daemon priority prefix, no timestamp.
    Journald,
    /// A timestamp, the level, the message and its fields.
    Text,
}

impl LogFormat {
    /// What `Auto` means here: whether `JOURNAL_STREAM` ("device:inode") names the
    /// stream stderr is, as systemd documents for telling the journal from a
    /// redirection.
    pub fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto => match std::env::var("JOURNAL_STREAM") {
                Ok(v) if stderr_is(&v) => LogFormat::Journald,
                _ => LogFormat::Text,
            },
            other => other,
        }
    }
}

fn stderr_is(journal_stream: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some((dev, ino)) = journal_stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.trim().parse::<u64>(), ino.trim().parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The sd-daemon prefix of a level (sd-daemon(3)).
fn priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// A line format with the journal's priority prefix in front.
struct Prioritized<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritized<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
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
    init_as(LogFormat::Auto, level, scrubber, extra)
}

/// [`init`], with the line format chosen.
pub fn init_as<L>(format: LogFormat, level: &str, scrubber: Scrubber, extra: Option<L>)
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    // RUST_LOG as `target=level` pairs (e.g. `edge_agent=debug,warn`); no regular
    // expressions, which keeps the binary (and its memory) smaller.
    // The DDS stack warns about every datagram it cannot route (e.g. no multicast on a
    // loopback-only host): not something a technician can act on, so errors only.
    let default: Targets = format!("warn,rustdds=error,edge_agent={level}")
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
    let journald = format.resolve() == LogFormat::Journald;
    let ansi = !journald && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(MakeScrubbing(scrubber))
        .with_ansi(ansi)
        .with_target(false);
    let fmt = if journald {
        let lines = format::format().with_target(false).without_time();
        fmt.event_format(Prioritized(lines)).boxed()
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
    fn priorities_are_sd_daemon_levels() {
        assert_eq!(priority(&tracing::Level::ERROR), 3);
        assert_eq!(priority(&tracing::Level::WARN), 4);
        assert_eq!(priority(&tracing::Level::INFO), 6);
        assert_eq!(priority(&tracing::Level::DEBUG), 7);
        assert_eq!(priority(&tracing::Level::TRACE), 7);
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(!stderr_is("garbage"));
        assert!(!stderr_is("1:2"));
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata("/proc/self/fd/2").unwrap();
        assert!(stderr_is(&format!("{}:{}", m.dev(), m.ino())));
    }

    #[test]
    fn scrubs_secrets() {
        let s = Scrubber::new(&["hunter22".into(), "ab".into()]);
        assert_eq!(s.scrub("password hunter22 in ab"), "password *** in ab");
    }
}
