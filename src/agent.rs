//! The running agent: opens the outbox, starts the cloud link and the device log, and
//! stops them in order on shutdown. `main` parses and validates; this wires and runs.

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::mqtt::devlog::{self, LogRecord};
use crate::mqtt::outbox::Outbox;
use crate::mqtt::{self, LinkHandle, ShutdownPolicy};

/// What the caller can watch while the agent runs.
pub struct Running {
    pub link: LinkHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: CancellationToken,
    link_shutdown: CancellationToken,
}

/// Starts every task. The returned value stops them with [`Running::stop`].
pub fn start(
    settings: &Settings,
    devlog_rx: Option<mpsc::Receiver<LogRecord>>,
) -> anyhow::Result<Running> {
    let outbox = Outbox::open(&settings.outbox).with_context(|| {
        format!(
            "cannot open the outbox in {}",
            settings.outbox.dir.display()
        )
    })?;
    let (link, handle) = mqtt::link(settings.link.clone(), outbox, settings.outbox.sync_interval);
    let shutdown = CancellationToken::new();
    // The link stops last, so whatever the other tasks flush on the way out is kept.
    let link_shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(
        link.run(link_shutdown.clone(), ShutdownPolicy::default()),
    ));
    if let Some(rx) = devlog_rx {
        if settings.device_log.enabled {
            tasks.push(tokio::spawn(devlog::run_shipper(
                rx,
                handle.clone(),
                settings.device_log.clone(),
                shutdown.clone(),
            )));
        }
    }
    Ok(Running {
        link: handle,
        tasks,
        shutdown,
        link_shutdown,
    })
}

impl Running {
    /// Stops the tasks in order, waiting at most `grace` in all.
    pub async fn stop(self, grace: Duration) {
        self.shutdown.cancel();
        // Give producers a moment to hand over what they hold.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.link_shutdown.cancel();
        let all = futures_join(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "Shutdown took too long; stopping anyway."
            );
        }
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
