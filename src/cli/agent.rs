//! `edge-agent run`, `check-config` and `print-default-config`.

use std::path::PathBuf;
use std::time::Duration;

use super::Failure;
use crate::config::{self, Settings};
use crate::logging::{self, Scrubber};
use crate::mqtt::devlog;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE", env = "EDGE_AGENT_CONFIG")]
    pub config: PathBuf,
}

pub fn load(path: &std::path::Path) -> Result<Settings, Failure> {
    config::load(path).map_err(|e| Failure::usage(e.to_string()))
}

pub fn run(args: RunArgs) -> Result<(), Failure> {
    let settings = load(&args.config)?;
    let scrubber = Scrubber::new(&settings.link.secrets);
    let (layer, devlog_rx) = devlog::channel(settings.device_log.info, scrubber.clone());
    logging::init(&settings.file.log.level, scrubber, Some(layer));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %args.config.display(),
            device = %settings.file.device.device_name, "edge-agent starting.");
        let running = crate::agent::start(&settings, Some(devlog_rx))
            .map_err(|e| Failure::internal(format!("{e:#}")))?;
        crate::agent::termination().await;
        tracing::info!("Stopping on request.");
        running.stop(Duration::from_secs(10)).await;
        tracing::info!("edge-agent stopped.");
        Ok(())
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
    print!("{out}");
    Ok(())
}

pub fn print_default_config() -> Result<(), Failure> {
    print!("{}", config::DEFAULT_CONFIG);
    Ok(())
}
