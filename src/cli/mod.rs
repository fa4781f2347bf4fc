//! The command line: what each command takes, and the error type that carries an exit
//! code to `main`.

pub mod agent;
#[cfg(feature = "demo")]
pub mod demo;
pub mod detect;
pub mod mqtt;
pub mod msg;
pub mod ota;
pub mod rosargs;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::exit;

#[derive(Debug, Parser)]
#[command(
    name = "edge-agent",
    version = crate::VERSION,
    about = "Cloud link of the picking robot: ROS 2 <-> MQTT bridge, object detection, A/B updates"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (what systemd and `ros2 launch` start).
    Run(agent::RunArgs),
    /// Validate a configuration file without connecting anywhere, and summarize it.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print an example configuration with every section documented.
    PrintDefaultConfig,
    /// What the running agent reports: link, outbox, rules (from its status file).
    Status {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Inspect ROS 2 message types and convert messages between CDR and JSON.
    #[command(subcommand)]
    Msg(msg::MsgCommand),
    /// Test the cloud link.
    #[command(subcommand)]
    Mqtt(mqtt::MqttCommand),
    /// See or deliver what the outbox holds.
    #[command(subcommand)]
    Outbox(mqtt::OutboxCommand),
    /// A/B updates: status, install, rollback, confirm; pack and sign packages.
    #[command(subcommand)]
    Ota(ota::OtaCommand),
    /// Run the local detector on an image file and print the detections as JSON.
    Detect(detect::DetectArgs),
    /// The whole loop on this machine: an embedded broker, a simulated robot and cloud,
    /// and the agent between them.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Not in this build (the robot's build leaves the demo out).
    #[cfg(not(feature = "demo"))]
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
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

pub fn run(cli: Cli, ros: rosargs::RosArgs) -> Result<(), Failure> {
    match cli.command {
        Command::Run(args) => agent::run(args, ros),
        Command::Status { config, state_dir } => agent::status(config, state_dir),
        Command::CheckConfig { file } => agent::check_config(file),
        Command::PrintDefaultConfig => agent::print_default_config(),
        Command::Msg(cmd) => msg::run(cmd),
        Command::Mqtt(cmd) => mqtt::run_mqtt(cmd),
        Command::Outbox(cmd) => mqtt::run_outbox(cmd),
        Command::Ota(cmd) => ota::run(cmd),
        Command::Detect(args) => detect::run(args),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args),
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => Err(Failure::usage(
            "this edge-agent was built without the demo (the robot's build leaves it out); \
             `cargo run -- demo` in a clone of the repository runs it",
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
