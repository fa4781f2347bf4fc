//! The node's parameter services (`ros2 param list|get|set|describe`), as every rclcpp
//! node has them: `list_parameters`, `get_parameters`, `get_parameter_types`,
//! `describe_parameters`, `set_parameters` and `set_parameters_atomically` under the
//! node's name. They answer clients of rmw_fastrtps and rmw_cyclonedds alike (see
//! [`super::service`]).
//!
//! The agent's parameters are read-only: `config_file` (the configuration it runs) and
//! `use_sim_time` (false; every ROS 2 node has it). Setting one is refused with the
//! reason, since the configuration is read once at start. Requests and replies go
//! through the dynamic codec with the `rcl_interfaces` definitions bundled into the
//! binary, so no code exists per service type.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{json, Value};

use super::{ServeFn, Transport, TransportError};
use crate::ros::codec::{self, DecodeOptions, EncodeOptions};
use crate::ros::registry::TypeName;
use crate::ros::Registry;

/// The six services, by their name under the node.
pub const SERVICES: [(&str, &str); 6] = [
    ("list_parameters", "ListParameters"),
    ("get_parameters", "GetParameters"),
    ("get_parameter_types", "GetParameterTypes"),
    ("describe_parameters", "DescribeParameters"),
    ("set_parameters", "SetParameters"),
    ("set_parameters_atomically", "SetParametersAtomically"),
];

// rcl_interfaces/msg/ParameterType
const NOT_SET: u8 = 0;
const BOOL: u8 = 1;
const STRING: u8 = 4;

/// The bundled definitions (rcl_interfaces, std_srvs...), parsed once.
pub fn bundled() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = Registry::new();
        r.add_bundled();
        r
    })
}

/// Serves the six parameter services of the node `fq_name` on `transport`, with
/// `config_file` as the `config_file` parameter.
pub fn serve(
    transport: &dyn Transport,
    fq_name: &str,
    config_file: Option<&std::path::Path>,
) -> Result<(), TransportError> {
    let p = std::sync::Arc::new(Parameters {
        config_file: config_file
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    });
    for (short, ty) in SERVICES {
        let p = p.clone();
        let handler: ServeFn = std::sync::Arc::new(move |cdr: Bytes| {
            let reply = p.answer(short, &cdr);
            Box::pin(async move { reply })
        });
        let ty = TypeName {
            package: "rcl_interfaces".into(),
            kind: "srv",
            name: (*ty).into(),
        };
        transport.serve(&format!("{fq_name}/{short}"), &ty, handler)?;
    }
    Ok(())
}

/// The node's parameters and their values.
#[derive(Debug, Clone)]
pub struct Parameters {
    pub config_file: String,
}

impl Parameters {
    fn names(&self) -> [&'static str; 2] {
        ["config_file", "use_sim_time"]
    }

    fn value(&self, name: &str) -> Value {
        match name {
            "config_file" => json!({"type": STRING, "string_value": self.config_file}),
            "use_sim_time" => json!({"type": BOOL, "bool_value": false}),
            _ => json!({"type": NOT_SET}),
        }
    }

    fn kind(&self, name: &str) -> u8 {
        match name {
            "config_file" => STRING,
            "use_sim_time" => BOOL,
            _ => NOT_SET,
        }
    }

    fn description(name: &str) -> &'static str {
        match name {
            "config_file" => "The configuration file the agent runs (read once, at start).",
            "use_sim_time" => "Always false: the agent runs on the system clock.",
            _ => "",
        }
    }

    fn refusal(&self, name: &str) -> String {
        match name {
            "config_file" => format!(
                "edge-agent reads its configuration once, at start: change {} and restart the agent",
                if self.config_file.is_empty() { "its configuration" } else { &self.config_file }
            ),
            "use_sim_time" => {
                "edge-agent runs on the system clock: use_sim_time cannot be set".into()
            }
            other => format!("edge-agent has no parameter '{other}'"),
        }
    }

    /// Answers one request of `service` (its short name); the reply message.
    pub fn answer(&self, service: &str, request: &[u8]) -> Result<Bytes, String> {
        let (_, ty) = SERVICES
            .iter()
            .find(|(s, _)| *s == service)
            .ok_or_else(|| format!("no parameter service {service}"))?;
        let reg = bundled();
        let req_schema = reg
            .schema(&format!("rcl_interfaces/srv/{ty}_Request"))
            .map_err(|e| e.to_string())?;
        let resp_schema = reg
            .schema(&format!("rcl_interfaces/srv/{ty}_Response"))
            .map_err(|e| e.to_string())?;
        let req = codec::decode_to_value(&req_schema, request, &DecodeOptions::default())
            .map_err(|e| format!("a {service} request: {e}"))?;
        let names = |key: &str| -> Vec<String> {
            req[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let reply = match service {
            "list_parameters" => {
                let prefixes = names("prefixes");
                let listed: Vec<&str> = self
                    .names()
                    .into_iter()
                    .filter(|n| {
                        prefixes.is_empty()
                            || prefixes
                                .iter()
                                .any(|p| *n == p.as_str() || n.starts_with(&format!("{p}.")))
                    })
                    .collect();
                json!({"result": {"names": listed, "prefixes": []}})
            }
            "get_parameters" => {
                json!({"values": names("names").iter().map(|n| self.value(n)).collect::<Vec<_>>()})
            }
            "get_parameter_types" => {
                json!({"types": names("names").iter().map(|n| self.kind(n)).collect::<Vec<_>>()})
            }
            "describe_parameters" => json!({"descriptors": names("names").iter().map(|n| json!({
                "name": n,
                "type": self.kind(n),
                "description": Self::description(n),
                "read_only": true,
            })).collect::<Vec<_>>()}),
            "set_parameters" | "set_parameters_atomically" => {
                let asked: Vec<String> = req["parameters"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p["name"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                tracing::warn!(parameters = %asked.join(","), "A parameter was to be set; edge-agent's parameters are read-only.");
                let results: Vec<Value> = asked
                    .iter()
                    .map(|n| json!({"successful": false, "reason": self.refusal(n)}))
                    .collect();
                if service == "set_parameters" {
                    json!({ "results": results })
                } else {
                    let first = results.into_iter().next().unwrap_or_else(
                        || json!({"successful": false, "reason": "no parameters given"}),
                    );
                    json!({ "result": first })
                }
            }
            _ => return Err(format!("no parameter service {service}")),
        };
        codec::encode_value(&resp_schema, &reply, &EncodeOptions::default())
            .map(Bytes::from)
            .map_err(|e| format!("the {service} reply: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(p: &Parameters, service: &str, ty: &str, req: Value) -> Value {
        let reg = bundled();
        let rq = reg
            .schema(&format!("rcl_interfaces/srv/{ty}_Request"))
            .unwrap();
        let rs = reg
            .schema(&format!("rcl_interfaces/srv/{ty}_Response"))
            .unwrap();
        let cdr = codec::encode_value(&rq, &req, &EncodeOptions::default()).unwrap();
        let out = p.answer(service, &cdr).unwrap();
        codec::decode_to_value(&rs, &out, &DecodeOptions::default()).unwrap()
    }

    #[test]
    fn the_configuration_file_is_listed_read_and_never_set() {
        let p = Parameters {
            config_file: "/etc/edge-agent/agent.toml".into(),
        };
        let l = call(&p, "list_parameters", "ListParameters", json!({}));
        assert_eq!(l["result"]["names"], json!(["config_file", "use_sim_time"]));
        let g = call(
            &p,
            "get_parameters",
            "GetParameters",
            json!({"names": ["config_file", "nope"]}),
        );
        assert_eq!(g["values"][0]["type"], 4);
        assert_eq!(g["values"][0]["string_value"], "/etc/edge-agent/agent.toml");
        assert_eq!(g["values"][1]["type"], 0);
        let s = call(
            &p,
            "set_parameters",
            "SetParameters",
            json!({"parameters": [{"name": "use_sim_time", "value": {"type": 1, "bool_value": true}}]}),
        );
        assert_eq!(s["results"][0]["successful"], false);
        assert!(s["results"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("system clock"));
        let t = call(
            &p,
            "get_parameter_types",
            "GetParameterTypes",
            json!({"names": ["use_sim_time"]}),
        );
        assert_eq!(t["types"], "AQ==", "uint8[] comes back as base64: [1]");
        let d = call(
            &p,
            "describe_parameters",
            "DescribeParameters",
            json!({"names": ["config_file"]}),
        );
        assert_eq!(d["descriptors"][0]["read_only"], true);
    }
}
