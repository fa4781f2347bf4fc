//! `edge-agent msg ...`: show definitions, decode CDR to JSON, encode JSON to CDR.
//! Built for robot engineers checking what the bridge will send, and for scripts.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Subcommand;

use super::{Failure, InterfaceArgs};
use crate::ros::codec::{self, DecodeOptions, EncodeOptions};
use crate::ros::{Registry, RegistryError};

#[derive(Debug, Subcommand)]
pub enum MsgCommand {
    /// Print the fully expanded definition of a message or service type.
    Show {
        /// e.g. sensor_msgs/msg/NavSatFix (or sensor_msgs/NavSatFix, std_srvs/srv/SetBool)
        #[arg(value_name = "TYPE")]
        type_name: String,
        #[command(flatten)]
        interfaces: InterfaceArgs,
    },
    /// List the known message and service types.
    List {
        /// Only types of this package.
        #[arg(long)]
        package: Option<String>,
        #[command(flatten)]
        interfaces: InterfaceArgs,
    },
    /// Read one serialized message (CDR with its 4-byte header) and print it as JSON.
    Decode {
        #[arg(value_name = "TYPE")]
        type_name: String,
        /// Read from this file instead of standard input.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// The input is hexadecimal text (whitespace ignored) rather than raw bytes.
        #[arg(long)]
        hex: bool,
        /// Print uint8/byte arrays as arrays of numbers instead of base64.
        #[arg(long)]
        bytes_as_arrays: bool,
        /// Indent the JSON.
        #[arg(long)]
        pretty: bool,
        #[command(flatten)]
        interfaces: InterfaceArgs,
    },
    /// Read one JSON message and write it as CDR (with its 4-byte header).
    Encode {
        #[arg(value_name = "TYPE")]
        type_name: String,
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Write hexadecimal text instead of raw bytes.
        #[arg(long)]
        hex: bool,
        /// Refuse JSON that leaves out a field, instead of using the default.
        #[arg(long)]
        strict: bool,
        /// Write big-endian CDR.
        #[arg(long)]
        big_endian: bool,
        #[command(flatten)]
        interfaces: InterfaceArgs,
    },
}

pub fn run(cmd: MsgCommand) -> Result<(), Failure> {
    match cmd {
        MsgCommand::Show {
            type_name,
            interfaces,
        } => {
            let reg = registry(&interfaces)?;
            let text = reg.show(&type_name).map_err(type_failure)?;
            write_stdout(text.as_bytes())
        }
        MsgCommand::List {
            package,
            interfaces,
        } => {
            let reg = registry(&interfaces)?;
            let mut text = String::new();
            for name in reg.names() {
                if package
                    .as_deref()
                    .is_none_or(|p| name.split('/').next() == Some(p))
                {
                    text.push_str(&name);
                    text.push('\n');
                }
            }
            write_stdout(text.as_bytes())
        }
        MsgCommand::Decode {
            type_name,
            input,
            hex,
            bytes_as_arrays,
            pretty,
            interfaces,
        } => {
            let reg = registry(&interfaces)?;
            let schema = reg.schema(&type_name).map_err(type_failure)?;
            let mut data = read_input(input.as_ref())?;
            if hex {
                data = from_hex(&data)?;
            }
            let opts = DecodeOptions { bytes_as_arrays };
            let mut out = Vec::with_capacity(data.len() * 2);
            if pretty {
                let value = codec::decode_to_value(&schema, &data, &opts)
                    .map_err(|e| Failure::data(format!("cannot decode {type_name}: {e}")))?;
                out = serde_json::to_vec_pretty(&value)
                    .map_err(|e| Failure::internal(e.to_string()))?;
            } else {
                codec::decode_to_json(&schema, &data, &opts, &mut out)
                    .map_err(|e| Failure::data(format!("cannot decode {type_name}: {e}")))?;
            }
            out.push(b'\n');
            write_stdout(&out)
        }
        MsgCommand::Encode {
            type_name,
            input,
            hex,
            strict,
            big_endian,
            interfaces,
        } => {
            let reg = registry(&interfaces)?;
            let schema = reg.schema(&type_name).map_err(type_failure)?;
            let data = read_input(input.as_ref())?;
            let opts = EncodeOptions { strict, big_endian };
            let cdr = codec::encode_json(&schema, &data, &opts)
                .map_err(|e| Failure::data(format!("cannot encode {type_name}: {e}")))?;
            if hex {
                let mut text = to_hex(&cdr);
                text.push('\n');
                write_stdout(text.as_bytes())
            } else {
                write_stdout(&cdr)
            }
        }
    }
}

fn registry(args: &InterfaceArgs) -> Result<Registry, Failure> {
    Registry::standard(&args.interfaces).map_err(|e| Failure::usage(e.to_string()))
}

/// An unknown or malformed type is the user's to fix: a usage error.
fn type_failure(e: RegistryError) -> Failure {
    Failure::usage(e.to_string())
}

fn read_input(path: Option<&PathBuf>) -> Result<Vec<u8>, Failure> {
    let mut data = Vec::new();
    match path {
        Some(p) => {
            data = std::fs::read(p)
                .map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))?;
        }
        None => {
            std::io::stdin()
                .lock()
                .read_to_end(&mut data)
                .map_err(|e| Failure::internal(format!("cannot read standard input: {e}")))?;
        }
    }
    Ok(data)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::internal(format!(
            "cannot write standard output: {e}"
        ))),
    }
}

fn from_hex(text: &[u8]) -> Result<Vec<u8>, Failure> {
    let digits: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(Failure::data(format!(
            "hex input has an odd number of digits ({})",
            digits.len()
        )));
    }
    digits
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    Failure::data(format!(
                        "hex input: '{}' at digit {} is not hexadecimal",
                        String::from_utf8_lossy(pair),
                        i * 2
                    ))
                })
        })
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
