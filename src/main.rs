//! The `edge-agent` binary: parses the command line, runs the command, and turns its
//! outcome into an exit code (0 ok, 64 usage/config, 65 bad data, 70 internal).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use edge_agent::{cli, exit};

fn main() -> ExitCode {
    let (mut args, ros) = cli::rosargs::split(std::env::args_os().collect());
    // `ros2 run`/`ros2 launch` start the executable with only ROS arguments: run.
    if args.len() == 1 && !ros.is_empty() {
        args.push("run".into());
    }
    let parsed = match cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli::run(parsed, ros) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("edge-agent: {}", f.message);
            // An update slot's agent that refuses its configuration is restarted (and so
            // counted, then rolled back) rather than left stopped: see docs/ota.md.
            if f.code == exit::USAGE && edge_agent::ota::selfupdate::from_slot() {
                eprintln!("edge-agent: this is an update slot's agent; exiting so that the installed agent takes over.");
                return ExitCode::from(exit::SOFTWARE);
            }
            ExitCode::from(f.code)
        }
    }
}
