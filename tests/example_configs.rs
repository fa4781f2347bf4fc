//! The example configurations under config/ are what a robot team starts from: each
//! passes `edge-agent check-config` laid out as installed (rule files and credentials
//! beside it), and every key each one uses is documented in docs/configuration.md.

mod support;

use std::path::Path;

use support::mosquitto::Pki;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// `config/<name>.toml` as `<dir>/etc/edge-agent/agent.toml`, with the rule files and
/// the credentials it names beside it.
fn installed(name: &str, dir: &Path) -> std::path::PathBuf {
    let repo = support::repo();
    let etc = dir.join("etc/edge-agent");
    copy_dir(&repo.join("msg_mappings"), &etc.join("msg_mappings"));
    // local.toml points at the repository's own folder, one level up.
    copy_dir(&repo.join("msg_mappings"), &dir.join("etc/msg_mappings"));
    let cfg = etc.join("agent.toml");
    std::fs::copy(repo.join(format!("config/{name}.toml")), &cfg).unwrap();
    std::fs::write(etc.join("device-secret"), "aGVsbG8gZGV2aWNlIHNlY3JldA\n").unwrap();
    let aws = etc.join("aws");
    std::fs::create_dir_all(&aws).unwrap();
    let pki = Pki::create(&aws);
    std::fs::rename(&pki.ca, aws.join("AmazonRootCA1.pem")).unwrap();
    std::fs::rename(&pki.client_cert, aws.join("certificate.pem.crt")).unwrap();
    std::fs::rename(&pki.client_key, aws.join("private.pem.key")).unwrap();
    cfg
}

#[test]
fn every_example_passes_check_config_as_installed() {
    for name in ["robot", "aliyun", "aws", "local"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = installed(name, dir.path());
        let out = support::agent::agent()
            .arg("check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "config/{name}.toml:\n{text}");
        assert!(text.contains("valid"), "{name}: {text}");
    }
    // Without the credentials it names, the AWS example says which file is missing.
    let dir = tempfile::tempdir().unwrap();
    let cfg = installed("aws", dir.path());
    std::fs::remove_file(cfg.parent().unwrap().join("aws/private.pem.key")).unwrap();
    let out = support::agent::agent()
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mqtt.tls.client_key_file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every key of a TOML document, as `table.key` (tables of tables flattened).
fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let full = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                // A secret source or a map of models: the key itself is what is documented.
                toml::Value::Table(_) if !is_section(&full) => out.push(full),
                toml::Value::Table(_) => keys(&full, v, out),
                _ => out.push(full),
            }
        }
    }
}

fn is_section(key: &str) -> bool {
    !matches!(
        key.rsplit('.').next(),
        Some("password" | "device_secret" | "public_key" | "models")
    ) && !key.starts_with("outbox.classes.")
}

#[test]
fn every_key_of_the_examples_is_documented() {
    let doc = std::fs::read_to_string(support::repo().join("docs/configuration.md")).unwrap();
    let mut missing = Vec::new();
    for name in ["robot", "aliyun", "aws", "local"] {
        let text =
            std::fs::read_to_string(support::repo().join(format!("config/{name}.toml"))).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        let mut all = Vec::new();
        keys("", &v, &mut all);
        for k in all {
            let (section, key) = k.rsplit_once('.').unwrap_or(("", k.as_str()));
            let section_doc = if section.is_empty() {
                Some(doc.as_str())
            } else {
                // The section's own part of the page: from its heading to the next one.
                let top = section.split('.').next().unwrap();
                doc.find(&format!("## `[{top}")).map(|i| {
                    let rest = &doc[i + 3..];
                    &doc[i..i + 3 + rest.find("\n## ").unwrap_or(rest.len())]
                })
            };
            let documented = section_doc.is_some_and(|d| d.contains(&format!("`{key}`")));
            if !documented && !k.starts_with("outbox.classes.") {
                missing.push(format!("config/{name}.toml: {k}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys not in docs/configuration.md:\n{}",
        missing.join("\n")
    );
}
