//! The arguments `ros2 launch` (and `ros2 run`) append after `--ros-args`: node name
//! and namespace remaps, parameters and parameter files. The agent applies the node
//! name, the namespace and the `config_file` parameter; everything else is ignored with
//! a DEBUG line, never an error.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RosArgs {
    pub node_name: Option<String>,
    pub namespace: Option<String>,
    /// `-p name:=value`
    pub params: Vec<(String, String)>,
    pub params_files: Vec<PathBuf>,
    /// What was not used, for the DEBUG line.
    pub ignored: Vec<String>,
}

/// Splits the command line into the agent's own arguments and the ROS arguments.
pub fn split(args: Vec<OsString>) -> (Vec<OsString>, RosArgs) {
    let mut own = Vec::new();
    let mut ros = RosArgs::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a != "--ros-args" {
            own.push(a);
            continue;
        }
        while let Some(r) = it.next() {
            let r = r.to_string_lossy().into_owned();
            match r.as_str() {
                "--" => break,
                "--ros-args" => {}
                "-r" | "--remap" => {
                    if let Some(v) = it.next() {
                        remap(&v.to_string_lossy(), &mut ros);
                    }
                }
                "-p" | "--param" => {
                    if let Some(v) = it.next() {
                        let v = v.to_string_lossy().into_owned();
                        match v.split_once(":=") {
                            Some((k, val)) => ros.params.push((k.to_owned(), val.to_owned())),
                            None => ros.ignored.push(format!("-p {v}")),
                        }
                    }
                }
                "--params-file" => {
                    if let Some(v) = it.next() {
                        ros.params_files.push(PathBuf::from(v));
                    }
                }
                // Options with a value that the agent does not use.
                "--log-level" | "-e" | "--enclave" | "--log-config-file" => {
                    let v = it
                        .next()
                        .map(|v| v.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    ros.ignored.push(format!("{r} {v}"));
                }
                other => ros.ignored.push(other.to_owned()),
            }
        }
    }
    (own, ros)
}

fn remap(rule: &str, ros: &mut RosArgs) {
    let Some((from, to)) = rule.split_once(":=") else {
        ros.ignored.push(format!("-r {rule}"));
        return;
    };
    // `name:__node:=x` applies to the node called `name`; there is only one here.
    let key = from.rsplit(':').next().unwrap_or(from);
    match key {
        "__node" | "__name" => ros.node_name = Some(to.to_owned()),
        "__ns" => ros.namespace = Some(to.to_owned()),
        _ => ros.ignored.push(format!("-r {rule}")),
    }
}

impl RosArgs {
    /// The value of parameter `name`: `-p` wins over parameter files.
    pub fn param(&self, name: &str) -> Result<Option<String>, String> {
        if let Some((_, v)) = self.params.iter().rev().find(|(k, _)| k == name) {
            return Ok(Some(unquote(v)));
        }
        for f in self.params_files.iter().rev() {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read --params-file {}: {e}", f.display()))?;
            let docs = yaml_rust2::YamlLoader::load_from_str(&text)
                .map_err(|e| format!("--params-file {} is not YAML: {e}", f.display()))?;
            // { <node or /**>: { ros__parameters: { name: value } } }
            for doc in &docs {
                let Some(nodes) = doc.as_hash() else { continue };
                for node in nodes.values() {
                    let v = &node["ros__parameters"][name];
                    let text = match v {
                        yaml_rust2::Yaml::String(s) | yaml_rust2::Yaml::Real(s) => s.clone(),
                        yaml_rust2::Yaml::Integer(i) => i.to_string(),
                        yaml_rust2::Yaml::Boolean(b) => b.to_string(),
                        yaml_rust2::Yaml::BadValue | yaml_rust2::Yaml::Null => continue,
                        other => {
                            let mut out = String::new();
                            let _ = yaml_rust2::YamlEmitter::new(&mut out).dump(other);
                            out.trim_start_matches("---").trim().to_owned()
                        }
                    };
                    return Ok(Some(text));
                }
            }
        }
        Ok(None)
    }

    pub fn is_empty(&self) -> bool {
        *self == RosArgs::default()
    }
}

fn unquote(v: &str) -> String {
    let t = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = t.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    t.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn splits_what_ros2_launch_appends() {
        let (own, ros) = split(os(&[
            "edge-agent",
            "run",
            "--ros-args",
            "-r",
            "__node:=cloud_link",
            "-r",
            "__ns:=/picker07",
            "-p",
            "config_file:=/etc/edge-agent/agent.toml",
            "--params-file",
            "/tmp/p.yaml",
            "-r",
            "/chatter:=/talk",
            "--log-level",
            "debug",
            "--enclave",
            "/e",
        ]));
        assert_eq!(own, os(&["edge-agent", "run"]));
        assert_eq!(ros.node_name.as_deref(), Some("cloud_link"));
        assert_eq!(ros.namespace.as_deref(), Some("/picker07"));
        assert_eq!(
            ros.param("config_file").unwrap().as_deref(),
            Some("/etc/edge-agent/agent.toml")
        );
        assert_eq!(
            ros.ignored,
            vec!["-r /chatter:=/talk", "--log-level debug", "--enclave /e"]
        );
        let (own, ros) = split(os(&[
            "a",
            "--ros-args",
            "-r",
            "edge_agent:__node:=x",
            "--",
            "--config",
            "f",
        ]));
        assert_eq!(ros.node_name.as_deref(), Some("x"));
        assert_eq!(own, os(&["a", "--config", "f"]));
    }

    #[test]
    fn params_files_as_ros2_launch_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(
            &f,
            "/**:\n  ros__parameters:\n    config_file: /etc/agent.toml\n    use_sim_time: false\n",
        )
        .unwrap();
        let ros = RosArgs {
            params_files: vec![f],
            ..RosArgs::default()
        };
        assert_eq!(
            ros.param("config_file").unwrap().as_deref(),
            Some("/etc/agent.toml")
        );
        assert_eq!(ros.param("use_sim_time").unwrap().as_deref(), Some("false"));
        assert_eq!(ros.param("nothing").unwrap(), None);
    }
}
