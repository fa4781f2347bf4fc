//! `edge-agent run`, `check-config` and `print-default-config`.

use std::path::PathBuf;
use std::time::Duration;

use super::rosargs::RosArgs;
use super::Failure;
use crate::config::{self, Settings};
use crate::logging::{self, Scrubber};
use crate::mqtt::devlog;
use crate::ota::selfupdate;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file (TOML). Under `ros2 launch`, the ROS parameter
    /// `config_file` gives it instead.
    #[arg(long, short = 'c', value_name = "FILE", env = "EDGE_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// How log lines are written: `journald` (priority prefix, no timestamp) when
    /// stderr is the journal, `text` otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub log_format: logging::LogFormat,
}

pub fn load(path: &std::path::Path) -> Result<Settings, Failure> {
    config::load(path).map_err(|e| Failure::usage(e.to_string()))
}

pub fn run(args: RunArgs, ros: RosArgs) -> Result<(), Failure> {
    let from_ros = ros.param("config_file").map_err(Failure::usage)?;
    let config = match (args.config, from_ros) {
        (Some(c), _) => c,
        (None, Some(c)) => PathBuf::from(c),
        (None, None) => {
            return Err(Failure::usage(
                "no configuration: give --config FILE, EDGE_AGENT_CONFIG, or the ROS parameter config_file",
            ))
        }
    };
    let mut file = config::AgentConfig::load(&config).map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(n) = &ros.node_name {
        file.ros.node_name = Some(n.clone());
    }
    if let Some(ns) = &ros.namespace {
        file.ros.namespace = Some(ns.clone());
    }
    let settings = file.validate().map_err(|e| Failure::usage(e.to_string()))?;
    let args = RunArgs {
        config: Some(config),
        log_format: args.log_format,
    };
    let scrubber = Scrubber::new(&settings.link.secrets);
    let (layer, devlog_rx) = devlog::channel(settings.device_log.info, scrubber.clone());
    logging::init_as(
        args.log_format,
        &settings.file.log.level,
        scrubber,
        Some(layer),
    );
    // The installed binary hands over to the active update slot's agent, when it has one.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if settings.ota.protocol != crate::ota::config::OtaProtocol::None {
        selfupdate::launch(&settings.ota, &argv);
    }
    // One worker: the agent's tasks hand messages to each other many times per message,
    // and on one thread that costs a queue push instead of waking another thread.
    // Heavy work (inference, fsync) goes to the blocking pool.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let mut termination = crate::agent::Termination::install();
        tracing::info!(version = crate::VERSION, config = %args.config.as_deref().unwrap_or(std::path::Path::new("-")).display(),
            device = %settings.file.device.device_name, "edge-agent starting.");
        if !ros.ignored.is_empty() {
            tracing::debug!(ignored = ?ros.ignored, "ROS arguments not used by the agent.");
        }
        let running = crate::agent::start(&settings, Some(devlog_rx))
            .await
            .map_err(|e| Failure::internal(format!("{e:#}")))?;
        let mut restart = None;
        let failed = tokio::select! {
            _ = termination.wait() => None,
            why = running.failed() => Some(why),
            to = running.restart_requested() => {
                restart = Some(to);
                None
            }
        };
        if failed.is_none() && restart.is_none() {
            tracing::info!("Stopping on request.");
        }
        running.stop(Duration::from_secs(10)).await;
        match failed {
            None if restart.is_some() => {
                // Through the installed launcher, which counts the start of an
                // unconfirmed slot; exec returns only on failure.
                match selfupdate::launcher() {
                    Some(l) => {
                        tracing::info!(launcher = %l.display(), "Restarting through the installed edge-agent.");
                        let _ = selfupdate::exec(&l, &argv, false);
                    }
                    None => tracing::error!("Cannot find the installed edge-agent to restart."),
                }
                Err(Failure::internal(
                    "stopped to start another agent build, which could not be started",
                ))
            }
            None => {
                tracing::info!("edge-agent stopped.");
                Ok(())
            }
            Some(why) => {
                tracing::warn!("edge-agent stopped to be started again.");
                Err(Failure::internal(format!(
                    "stopped because the ROS 2 transport stopped: {why}"
                )))
            }
        }
    })
}

pub fn check_config(file: PathBuf) -> Result<(), Failure> {
    let s = load(&file)?;
    let mut out = String::new();
    out.push_str(&format!("{}: valid\n", file.display()));
    out.push_str(&format!(
        "  device     {} / {}\n",
        s.file.device.product_key, s.file.device.device_name
    ));
    out.push_str(&format!(
        "  broker     {}:{} ({:?}, MQTT {}, {})\n",
        s.link.host,
        s.link.port,
        s.file.mqtt.profile,
        match s.link.protocol {
            crate::mqtt::config::Protocol::V311 => "3.1.1",
            crate::mqtt::config::Protocol::V5 => "5",
        },
        if s.link.tls.is_some() {
            "TLS"
        } else {
            "no TLS"
        }
    ));
    out.push_str(&format!("  status     {}\n", s.link.status_topic));
    out.push_str(&format!("  outbox     {}\n", s.outbox.dir.display()));
    for (name, c) in &s.outbox.classes {
        out.push_str(&format!(
            "    {name:<10} {} bytes, {:?}, {:?}\n",
            c.max_bytes.0, c.max_age, c.policy
        ));
    }
    out.push_str(&format!(
        "  device log {}\n",
        if s.device_log.enabled {
            s.device_log.topic.as_str()
        } else {
            "off"
        }
    ));
    out.push_str(&format!(
        "  ros        node {}{}{}, domain {}, {} transport\n",
        s.ros.namespace.trim_end_matches('/'),
        "/",
        s.ros.node_name,
        s.ros.domain_id,
        match s.ros.transport {
            crate::ros::config::TransportKind::Dds => "dds",
            crate::ros::config::TransportKind::Rcl => "rcl",
        }
    ));
    out.push_str(&format!(
        "  ota        {}, {}{}\n",
        format!("{:?}", s.ota.protocol).to_lowercase(),
        s.ota.dir.display(),
        if s.ota.keys.is_empty() {
            String::new()
        } else {
            format!(
                ", signed packages only ({})",
                s.ota
                    .keys
                    .keys
                    .iter()
                    .map(|k| k.algorithm())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    out.push_str(&format!(
        "  onnx       {}\n",
        s.ota
            .onnx
            .library
            .as_ref()
            .map(|l| l.display().to_string())
            .unwrap_or_else(|| "ORT_DYLIB_PATH or libonnxruntime.so, else built-in".into())
    ));
    match &s.detect {
        None => out.push_str("  detect     off\n"),
        Some(d) => {
            out.push_str(&format!(
                "  detect     {:?}, {} -> {}, image {}, deadline {} ms\n",
                d.policy,
                d.request_topic,
                d.result_topic,
                d.image_topic,
                d.timing.default_deadline_ms
            ));
            for (scene, m) in &d.models {
                out.push_str(&format!(
                    "    model {:<10} {}\n",
                    if scene.is_empty() { "(default)" } else { scene },
                    m.display()
                ));
            }
        }
    }
    for r in &s.rules.outbound {
        out.push_str(&format!(
            "  rule {:<14} {} ({}) -> {}{}\n",
            r.name,
            r.ros_topic,
            r.type_name,
            r.mqtt_topic,
            r.min_interval
                .map(|i| format!(" at most {:.1} Hz", 1.0 / i.as_secs_f64()))
                .unwrap_or_default()
        ));
    }
    for r in &s.rules.inbound {
        out.push_str(&format!(
            "  rule {:<14} {} -> {} ({})\n",
            r.name, r.mqtt_filter, r.ros_topic, r.type_name
        ));
    }
    for r in &s.rules.services {
        match &r.target {
            crate::bridge::rules::Target::Call(c) => out.push_str(&format!(
                "  rule {:<14} {} -> service {} ({}, {:?}, timeout {:.1} s)\n",
                r.name,
                r.mqtt_filter,
                c.ros_service,
                c.type_name,
                c.rmw,
                c.timeout.as_secs_f64()
            )),
            crate::bridge::rules::Target::Goal(g) => out.push_str(&format!(
                "  rule {:<14} {} -> action {} ({}, {:?})\n",
                r.name, r.mqtt_filter, g.ros_action, g.type_name, g.rmw
            )),
            crate::bridge::rules::Target::Set(p) => {
                for prop in &p.properties {
                    out.push_str(&format!(
                        "  rule {:<14} {} [{}] -> {} ({})\n",
                        r.name, r.mqtt_filter, prop.identifier, prop.ros_topic, prop.type_name
                    ));
                }
            }
        }
    }
    print!("{out}");
    Ok(())
}

/// `edge-agent status`: the running agent's last status report.
pub fn status(config: Option<PathBuf>, state_dir: Option<PathBuf>) -> Result<(), Failure> {
    let dir = match (state_dir, config) {
        (Some(d), _) => d,
        (None, Some(c)) => {
            config::AgentConfig::load(&c)
                .map_err(|e| Failure::usage(e.to_string()))?
                .state_dir
        }
        (None, None) => PathBuf::from("/var/lib/edge-agent"),
    };
    let file = dir.join("status.json");
    let text = std::fs::read_to_string(&file).map_err(|e| Failure {
        code: crate::exit::UNAVAILABLE,
        message: format!(
            "no status in {}: {e} (is the agent running with this state_dir?)",
            file.display()
        ),
    })?;
    let mut v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Failure::data(format!("{}: {e}", file.display())))?;
    let age_s = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or(0, |d| d.as_secs());
    // Written every status_interval_s (older agents: at every health report).
    let interval = v["status_interval_s"]
        .as_u64()
        .or_else(|| v["health_interval_s"].as_u64())
        .unwrap_or(60);
    let running = v["state"] == "running" && age_s <= interval * 3 + 5;
    v["age_s"] = serde_json::Value::from(age_s);
    v["running"] = serde_json::Value::from(running);
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    if running {
        Ok(())
    } else {
        Err(Failure {
            code: crate::exit::UNAVAILABLE,
            message: format!(
                "the agent is not running (last report {age_s}s ago, state {})",
                v["state"]
            ),
        })
    }
}

pub fn print_default_config() -> Result<(), Failure> {
    print!("{}", config::default_config_text());
    Ok(())
}
