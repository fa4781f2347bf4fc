//! `edge-agent demo`: the whole loop on this machine, nothing else needed.

use std::path::PathBuf;
use std::time::Duration;

use super::Failure;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds and print the summary; exit 0 only when every
    /// stage happened.
    #[arg(long, value_name = "S")]
    pub duration: Option<u64>,
    /// The embedded broker's port (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// A quicker schedule (a request every 2 s, updates after 12 and 30 s).
    #[arg(long)]
    pub fast: bool,
    /// The detector to use instead of the shipped demo model.
    #[arg(long, value_name = "M.onnx")]
    pub model: Option<PathBuf>,
    /// Where the demo keeps its files and log (default: a new folder under /tmp).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The ROS 2 domain of the simulated robot and the agent.
    #[arg(long, default_value_t = 42)]
    pub domain: u16,
}

pub fn run(a: DemoArgs) -> Result<(), Failure> {
    // Kept after the demo, so the log can be read afterwards.
    let dir = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("edge-agent-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", dir.display())))?;
    let log = std::fs::File::create(crate::demo::log_file(&dir))
        .map_err(|e| Failure::internal(format!("cannot create the demo log: {e}")))?;
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            "warn,rustdds=error,edge_agent=info"
                .parse()
                .unwrap_or_default()
        });
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        use tracing_subscriber::Layer as _;
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::sync::Mutex::new(log))
            .with_ansi(false)
            .with_target(false)
            .with_filter(filter);
        let _ = tracing_subscriber::registry().with(fmt).try_init();
    }
    let opts = crate::demo::DemoOptions {
        port: a.port,
        duration: a.duration.map(Duration::from_secs),
        fast: a.fast,
        model: a.model.clone(),
        domain: a.domain,
    };
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the runtime: {e}")))?;
    let summary = rt
        .block_on(crate::demo::run(opts, &dir, live))
        .map_err(|e| Failure::internal(format!("{e:#}")))?;
    crate::demo::print_summary(&summary);
    if a.duration.is_some() && !summary.all_stages {
        return Err(Failure::internal(
            "the demo ended before every stage happened; see the summary and the log",
        ));
    }
    Ok(())
}
