//! `edge-agent mqtt ...` and `edge-agent outbox ...`: tools for a technician on the robot
//! to test the cloud link and see or deliver what the outbox holds.

use std::io::Read as _;
use std::path::PathBuf;

use clap::Subcommand;

use super::agent::load;
use super::Failure;
use crate::config::values::{format_duration, Dur};
use crate::exit;
use crate::logging::{self, Scrubber};
use crate::mqtt::outbox::{Outbox, OutboxError};
use crate::mqtt::{self, Message, QoS, ShutdownPolicy};

#[derive(Debug, Subcommand)]
pub enum MqttCommand {
    /// Connect once with the configured profile and report the result. Uses the client
    /// id `<id>-check` and no last will. On Alibaba Cloud a second connection with the
    /// same device certificate takes the running agent offline for a moment.
    Check {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Give up after this long.
        #[arg(long, default_value = "15s", value_parser = Dur::parse)]
        timeout: Dur,
    },
    /// Publish a message through the outbox, the way the agent does, and wait until the
    /// broker has it. Needs the agent stopped (the outbox is locked while it runs).
    Pub {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[arg(long, short = 't')]
        topic: String,
        /// The message; standard input when absent. `${n}` is replaced by the message number.
        message: Option<String>,
        /// Outbox class (QoS 1 only).
        #[arg(long, default_value = "telemetry")]
        class: String,
        #[arg(long, default_value = "1", value_parser = ["0", "1"])]
        qos: String,
        #[arg(long)]
        retain: bool,
        /// Publish this many messages, numbered from 1.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Leave the messages in the outbox for the agent, without connecting.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the broker's acknowledgements.
        #[arg(long, default_value = "60s", value_parser = Dur::parse)]
        timeout: Dur,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// What the outbox holds, per class, as JSON.
    Status {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Connect and deliver everything the outbox holds, then exit.
    Flush {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[arg(long, default_value = "10m", value_parser = Dur::parse)]
        timeout: Dur,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the runtime: {e}")))
}

fn open_outbox(settings: &crate::config::Settings) -> Result<Outbox, Failure> {
    Outbox::open(&settings.outbox).map_err(|e| match e {
        OutboxError::Locked { .. } => Failure {
            code: exit::TEMPFAIL,
            message: format!("{e}; stop the agent first, or use `edge-agent status` while it runs"),
        },
        other => Failure {
            code: exit::CANTCREAT,
            message: other.to_string(),
        },
    })
}

pub fn run_mqtt(cmd: MqttCommand) -> Result<(), Failure> {
    match cmd {
        MqttCommand::Check { config, timeout } => {
            let s = load(&config)?;
            logging::init::<logging::NoLayer>("warn", Scrubber::new(&s.link.secrets), None);
            let broker = format!("{}:{}", s.link.host, s.link.port);
            let result = runtime()?.block_on(mqtt::link::probe(&s.link, timeout.0));
            match result {
                Ok(took) => {
                    println!(
                        "connected to {broker} as {}-check in {} ({})",
                        s.link.auth.client_id(),
                        format_duration(took),
                        if s.link.tls.is_some() {
                            "TLS"
                        } else {
                            "no TLS"
                        }
                    );
                    Ok(())
                }
                Err(f) => Err(Failure {
                    code: exit::UNAVAILABLE,
                    message: format!("cannot connect to {broker}: {f}"),
                }),
            }
        }
        MqttCommand::Pub {
            config,
            topic,
            message,
            class,
            qos,
            retain,
            count,
            no_wait,
            timeout,
        } => {
            let s = load(&config)?;
            logging::init::<logging::NoLayer>("warn", Scrubber::new(&s.link.secrets), None);
            let body = match message {
                Some(m) => m,
                None => {
                    let mut b = String::new();
                    std::io::stdin()
                        .read_to_string(&mut b)
                        .map_err(|e| Failure::data(format!("cannot read standard input: {e}")))?;
                    b
                }
            };
            let qos = if qos == "0" {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let make = |n: u64| {
                let mut m = Message::new(topic.as_str(), body.replace("${n}", &n.to_string()), qos);
                m.retain = retain;
                m
            };
            let mut outbox = open_outbox(&s)?;
            if no_wait {
                if qos == QoS::AtMostOnce {
                    return Err(Failure::usage(
                        "--no-wait keeps messages in the outbox, which only holds QoS 1",
                    ));
                }
                let c = outbox
                    .class_index(&class)
                    .map_err(|e| Failure::usage(e.to_string()))?;
                for n in 1..=count {
                    outbox
                        .append(c, &make(n), crate::clock::now_ms())
                        .map_err(|e| Failure::data(e.to_string()))?;
                }
                outbox
                    .sync(crate::clock::now_ms())
                    .map_err(|e| Failure::internal(e.to_string()))?;
                println!("{count} messages held in the outbox for the agent");
                return Ok(());
            }
            runtime()?.block_on(async {
                let (link, handle) = mqtt::link(s.link.clone(), outbox, s.outbox.sync_interval);
                let stop = tokio_util::sync::CancellationToken::new();
                let task = tokio::spawn(link.run(stop.clone(), ShutdownPolicy::default()));
                let work = async {
                    for n in 1..=count {
                        handle
                            .publish(make(n), &class)
                            .await
                            .map_err(|e| Failure::data(e.to_string()))?;
                    }
                    handle.drained().await.map_err(|e| Failure::internal(e.to_string()))
                };
                let r = tokio::time::timeout(timeout.0, work).await;
                stop.cancel();
                let _ = task.await;
                match r {
                    Ok(Ok(())) => {
                        println!("{count} messages delivered to {}:{}", s.link.host, s.link.port);
                        Ok(())
                    }
                    Ok(Err(f)) => Err(f),
                    Err(_) => Err(Failure {
                        code: exit::UNAVAILABLE,
                        message: format!(
                            "not all messages were acknowledged within {}; the rest stay in the outbox",
                            format_duration(timeout.0)
                        ),
                    }),
                }
            })
        }
    }
}

pub fn run_outbox(cmd: OutboxCommand) -> Result<(), Failure> {
    match cmd {
        OutboxCommand::Status { config } => {
            let s = load(&config)?;
            logging::init::<logging::NoLayer>("warn", Scrubber::new(&s.link.secrets), None);
            let outbox = open_outbox(&s)?;
            let v = serde_json::json!({
                "dir": outbox.dir().display().to_string(),
                "held": outbox.held(),
                "classes": outbox.stats(),
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(())
        }
        OutboxCommand::Flush { config, timeout } => {
            let s = load(&config)?;
            logging::init::<logging::NoLayer>("info", Scrubber::new(&s.link.secrets), None);
            let outbox = open_outbox(&s)?;
            let held = outbox.held();
            runtime()?.block_on(async {
                let (link, handle) = mqtt::link(s.link.clone(), outbox, s.outbox.sync_interval);
                let stop = tokio_util::sync::CancellationToken::new();
                let task = tokio::spawn(link.run(stop.clone(), ShutdownPolicy::default()));
                let r = tokio::time::timeout(timeout.0, handle.drained()).await;
                stop.cancel();
                let _ = task.await;
                match r {
                    Ok(_) => {
                        println!("{held} held messages delivered");
                        Ok(())
                    }
                    Err(_) => Err(Failure {
                        code: exit::UNAVAILABLE,
                        message: format!(
                            "the outbox was not emptied within {}; {} messages still held",
                            format_duration(timeout.0),
                            handle.stats().snapshot().held
                        ),
                    }),
                }
            })
        }
    }
}
