//! `[ros]`: how the agent joins the ROS 2 graph.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RosConfig {
    /// ROS domain id; `ROS_DOMAIN_ID` from the environment, else 0.
    pub domain_id: Option<u16>,
    /// The node's name (`ros2 launch` may override it with `-r __node:=…`).
    pub node_name: Option<String>,
    /// The node's namespace (`-r __ns:=…` overrides it).
    pub namespace: Option<String>,
    /// Use only these local addresses for DDS, e.g. ["127.0.0.1"] when every ROS node
    /// runs on this computer; all interfaces when empty.
    #[serde(default)]
    pub only_networks: Vec<IpAddr>,
    /// More folders of message definitions (packages, folders of packages, or install
    /// prefixes), searched after `AMENT_PREFIX_PATH` and the bundled ones.
    #[serde(default)]
    pub interfaces: Vec<PathBuf>,
    /// `dds` (built in, no ROS install) or `rcl` (an ordinary rcl node; only in a
    /// binary built with the cargo feature `rcl`, where it is the default).
    pub transport: Option<TransportKind>,
    /// The robot's ROS 2 distribution ("humble", "jazzy"...), for the DDS transport's
    /// graph information when `ROS_DISTRO` is not set; without either the agent learns
    /// it from the other participants on the domain.
    pub distro: Option<String>,
}

/// Which ROS 2 stack carries the agent's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// RustDDS: DDS over UDP in pure Rust, with the agent's own ROS 2 layer.
    Dds,
    /// The robot's rcl and RMW, through rcl's C interface (cargo feature `rcl`).
    Rcl,
}

impl TransportKind {
    /// The default of this build: `rcl` when it was built with that feature.
    pub const fn default_for_build() -> Self {
        if cfg!(feature = "rcl") {
            TransportKind::Rcl
        } else {
            TransportKind::Dds
        }
    }
}

#[derive(Debug, Clone)]
pub struct RosSettings {
    pub domain_id: u16,
    pub node_name: String,
    pub namespace: String,
    pub only_networks: Vec<IpAddr>,
    pub interfaces: Vec<PathBuf>,
    pub transport: TransportKind,
    /// `ros.distro`, checked to be a distribution the agent knows.
    pub distro: Option<String>,
    /// The configuration file the agent was started with (the node's `config_file`
    /// parameter under the rcl transport).
    pub config_file: Option<PathBuf>,
}

fn invalid(key: &str, value: impl std::fmt::Display, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

pub fn valid_node_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

pub fn valid_namespace(ns: &str) -> bool {
    ns == "/"
        || (ns.starts_with('/') && !ns.ends_with('/') && ns[1..].split('/').all(valid_node_name))
}

impl RosConfig {
    pub fn resolve(
        &self,
        base: &std::path::Path,
        config_file: Option<&std::path::Path>,
    ) -> Result<RosSettings, ConfigError> {
        let transport = self
            .transport
            .unwrap_or_else(TransportKind::default_for_build);
        if transport == TransportKind::Rcl && !cfg!(feature = "rcl") {
            return Err(invalid(
                "ros.transport",
                "\"rcl\"",
                "this edge-agent was built without the rcl transport; rebuild it with `--features rcl` in a sourced ROS 2 environment, or use \"dds\"",
            ));
        }
        let domain_id = match self.domain_id {
            Some(d) => d,
            None => match std::env::var("ROS_DOMAIN_ID") {
                Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| {
                    invalid(
                        "ROS_DOMAIN_ID (environment)",
                        format!("{v:?}"),
                        "is not a number",
                    )
                })?,
                _ => 0,
            },
        };
        if domain_id > 232 {
            return Err(invalid(
                "ros.domain_id",
                domain_id,
                "must be between 0 and 232",
            ));
        }
        let node_name = self
            .node_name
            .clone()
            .unwrap_or_else(|| "edge_agent".into());
        if !valid_node_name(&node_name) {
            return Err(invalid(
                "ros.node_name",
                format!("{node_name:?}"),
                "letters, digits and '_', not starting with a digit",
            ));
        }
        let namespace = self.namespace.clone().unwrap_or_else(|| "/".into());
        if !valid_namespace(&namespace) {
            return Err(invalid(
                "ros.namespace",
                format!("{namespace:?}"),
                "must start with '/' and name levels with letters, digits and '_'",
            ));
        }
        if let Some(d) = &self.distro {
            if crate::ros::transport::dds::graph::format_of_distro(d).is_none() {
                return Err(invalid(
                    "ros.distro",
                    format!("{d:?}"),
                    &format!(
                        "is not a ROS 2 distribution this agent knows ({})",
                        crate::ros::transport::dds::graph::KNOWN_DISTROS
                    ),
                ));
            }
        }
        Ok(RosSettings {
            domain_id,
            distro: self.distro.as_ref().map(|d| d.trim().to_ascii_lowercase()),
            node_name,
            namespace,
            only_networks: self.only_networks.clone(),
            interfaces: self.interfaces.iter().map(|p| base.join(p)).collect(),
            transport,
            config_file: config_file.map(Path::to_path_buf),
        })
    }
}
