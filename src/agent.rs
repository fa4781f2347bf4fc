//! The running agent: opens the outbox, starts the cloud link, joins the ROS 2 graph,
//! starts the bridge rules, the device log and the health reports, tells systemd, and
//! stops everything in order. `main` parses and validates; this wires and runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bridge;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::health::Health;
use crate::mqtt::config::Protocol;
use crate::mqtt::devlog::{self, LogRecord};
use crate::mqtt::outbox::Outbox;
use crate::mqtt::{self, LinkHandle, LinkState, ShutdownPolicy};
use crate::ros::transport::Transport;
use crate::systemd::{self, Notifier};

/// How long the agent waits for the broker before telling systemd it is ready anyway
/// (a robot without coverage must still bridge into the outbox).
pub const READY_WAIT: Duration = Duration::from_secs(30);

/// How often the agent checks that its ROS 2 transport still runs.
const TRANSPORT_CHECK: Duration = Duration::from_secs(1);

/// What the caller can watch while the agent runs.
pub struct Running {
    pub link: LinkHandle,
    /// The active OTA slot's folder, when updates are enabled.
    pub ota_current: Option<tokio::sync::watch::Receiver<Option<std::path::PathBuf>>>,
    pub transport: Option<Arc<dyn Transport>>,
    pub rules: Vec<Arc<bridge::stats::RuleStats>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    link_task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    link_shutdown: CancellationToken,
    notifier: Arc<Notifier>,
    /// Set when a part the agent cannot run without has stopped (see [`Running::failed`]).
    failure: tokio::sync::watch::Receiver<Option<String>>,
    /// Set by the OTA service when another agent build must run (see
    /// [`Running::restart_requested`]).
    restart: Option<tokio::sync::watch::Receiver<Option<std::path::PathBuf>>>,
}

/// Starts every task.
pub async fn start(
    settings: &Settings,
    devlog_rx: Option<mpsc::Receiver<LogRecord>>,
) -> anyhow::Result<Running> {
    let notifier = Arc::new(Notifier::from_env());
    std::fs::create_dir_all(&settings.file.state_dir).with_context(|| {
        format!(
            "cannot create the state folder {}",
            settings.file.state_dir.display()
        )
    })?;
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
    let link_task = tokio::spawn(link.run(link_shutdown.clone(), ShutdownPolicy::default()));
    let mut tasks = Vec::new();

    let mut transport: Option<Arc<dyn Transport>> = None;
    let mut rule_stats = Vec::new();
    let needs_ros = !settings.rules.outbound.is_empty()
        || !settings.rules.inbound.is_empty()
        || !settings.rules.services.is_empty()
        || settings.detect.is_some();
    if needs_ros {
        let t =
            crate::ros::transport::start(&settings.ros).context("cannot join the ROS 2 graph")?;
        let b = bridge::start(
            &settings.rules,
            t.clone(),
            handle.clone(),
            settings.link.protocol == Protocol::V5,
            &settings.file.state_dir,
            shutdown.clone(),
        )
        .await
        .context("cannot start the bridge")?;
        rule_stats = b.stats;
        tasks.extend(b.tasks);
        transport = Some(t);
    }

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

    let mut ota_current = None;
    let mut restart = None;
    // True while a detection request is served: an OTA switch waits for it.
    let (busy_tx, busy_rx) = tokio::sync::watch::channel(false);
    if settings.ota.protocol != crate::ota::config::OtaProtocol::None {
        let (handles, task) = crate::ota::protocols::start(
            settings.ota.clone(),
            handle.clone(),
            None,
            settings.detect.as_ref().map(|_| busy_rx.clone()),
            shutdown.clone(),
        )
        .await
        .context("cannot start the OTA service")?;
        ota_current = Some(handles.current);
        restart = Some(handles.restart);
        tasks.push(task);
    }

    let mut detect_stats = None;
    if let (Some(d), Some(t)) = (&settings.detect, &transport) {
        let (task, stats) = crate::detect::service::start(
            d.clone(),
            settings.ota.onnx.clone(),
            t.clone(),
            settings.registry.clone(),
            handle.clone(),
            ota_current.clone(),
            busy_tx,
            shutdown.clone(),
        )
        .await
        .context("cannot start the detection service")?;
        tasks.push(task);
        detect_stats = Some(stats);
    }

    // The ROS 2 side can stop underneath the agent (see `Transport::stopped`); running on
    // deaf to the robot helps no one, so the agent stops and its service manager starts
    // it again. What the outbox holds is kept.
    let (failure_tx, failure) = tokio::sync::watch::channel(None);
    if let Some(t) = transport.clone() {
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRANSPORT_CHECK);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => if let Some(why) = t.stopped() {
                        tracing::error!(reason = %why,
                            "The ROS 2 side of the agent stopped; restarting the agent. A stop and continue of the process (a debugger, strace, Ctrl-Z) causes this.");
                        let _ = failure_tx.send(Some(why));
                        break;
                    },
                }
            }
        }));
    }

    let health = Health {
        link: handle.clone(),
        rules: rule_stats.clone(),
        interval: settings.health_interval,
        topic: settings.health_topic.clone(),
        status_file: settings.file.state_dir.join("status.json"),
        node: transport.as_ref().map(|t| t.node_name()),
        started_ms: now_ms(),
        detect: detect_stats,
    };
    tasks.push(tokio::spawn(health.run(shutdown.clone())));
    tasks.push(tokio::spawn(crate::memory::release_periodically(
        Duration::from_secs(60),
        shutdown.clone(),
    )));

    // systemd: READY once the broker is reached (or after READY_WAIT without it), then
    // watchdog pings for as long as the runtime runs.
    let n = notifier.clone();
    let mut state = handle.state();
    let stop = shutdown.clone();
    let stop_ready = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let wait = tokio::time::timeout(READY_WAIT, async {
            loop {
                if *state.borrow_and_update() == LinkState::Up {
                    return;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
        let up = tokio::select! {
            r = wait => r.is_ok(),
            // Stopping before the broker was reached: nothing to announce.
            _ = stop_ready.cancelled() => return,
        };
        if up {
            n.notify("READY=1\nSTATUS=Bridging; MQTT link up");
        } else {
            tracing::warn!(waited_s = READY_WAIT.as_secs(), "The broker is not reachable yet; running anyway and holding messages in the outbox.");
            n.notify("READY=1\nSTATUS=Bridging; MQTT link down, holding messages");
        }
    }));
    if let Some(period) = systemd::watchdog_interval() {
        let n = notifier.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => n.notify("WATCHDOG=1"),
                }
            }
        }));
    }
    Ok(Running {
        link: handle,
        ota_current,
        transport,
        rules: rule_stats,
        tasks,
        link_task,
        shutdown,
        link_shutdown,
        notifier,
        failure,
        restart,
    })
}

impl Running {
    /// Resolves with the reason when a part the agent cannot run without has stopped;
    /// the caller then stops the agent and exits with an error, so systemd (or
    /// `ros2 launch`) starts it again.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Resolves with the agent binary to run when the active update slot came to hold
    /// another build than this one; the caller stops the agent and starts it again
    /// through the installed launcher.
    pub async fn restart_requested(&self) -> std::path::PathBuf {
        let Some(mut rx) = self.restart.clone() else {
            return std::future::pending().await;
        };
        loop {
            if let Some(to) = rx.borrow_and_update().clone() {
                return to;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Stops the tasks in order: producers first (they hand what they hold to the
    /// outbox), then the link (clean offline status and DISCONNECT), then the ROS node.
    pub async fn stop(self, grace: Duration) {
        self.notifier.notify("STOPPING=1\nSTATUS=Stopping");
        self.shutdown.cancel();
        let producers = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace / 2, producers).await.is_err() {
            tracing::warn!("Some tasks did not stop in time.");
        }
        self.link_shutdown.cancel();
        if tokio::time::timeout(grace / 2, self.link_task)
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "The cloud link did not close in time."
            );
        }
        crate::logging::quiet_dds_teardown();
        drop(self.transport);
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made: a stop asked for while the
/// agent is still starting is kept and acted on once it runs, instead of killing the
/// process with the signal's default action.
pub struct Termination {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Termination {
    /// Installs the handlers; needs a running Tokio runtime.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(t), Ok(i)) => Some((t, i)),
                _ => {
                    tracing::warn!("Cannot catch SIGTERM and SIGINT; they will end the agent without a clean stop.");
                    None
                }
            };
            Termination { signals }
        }
        #[cfg(not(unix))]
        Termination {}
    }

    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn wait(&mut self) {
        #[cfg(unix)]
        match &mut self.signals {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
