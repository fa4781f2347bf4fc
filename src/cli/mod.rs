//! The command line: what each command takes, and the error type that carries an exit
//! code to `main`.

pub mod msg;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::exit;

#[derive(Debug, Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "Cloud link of the picking robot: ROS 2 <-> MQTT bridge, object detection, A/B updates",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect ROS 2 message types and convert messages between CDR and JSON.
    #[command(subcommand)]
    Msg(msg::MsgCommand),
}

/// Where message definitions are looked up, beside `AMENT_PREFIX_PATH` and the bundled ones.
#[derive(Debug, Clone, clap::Args)]
pub struct InterfaceArgs {
    /// A folder of message definitions: a package (with msg/ or srv/), a folder of
    /// packages, or an install prefix (with share/). Repeatable.
    #[arg(long = "interfaces", value_name = "DIR", global = true)]
    pub interfaces: Vec<PathBuf>,
}

/// A command failure: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    pub fn data(message: impl Into<String>) -> Self {
        Self {
            code: exit::DATA,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: exit::SOFTWARE,
            message: message.into(),
        }
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Msg(cmd) => msg::run(cmd),
    }
}
