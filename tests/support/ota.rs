//! OTA test helpers: the HTTP update server (tests/py/http_server.py), packages made with
//! the library's own `pack`, and the `edge-agent ota` command line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use edge_agent::ota::package::{self, HealthCheck};

pub struct HttpServer {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl HttpServer {
    pub fn start(dir: &Path) -> Self {
        Self::start_with_env(dir, &[])
    }

    /// With environment variables for the server (`OSS_CHECK`: see http_server.py).
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(super::python())
            .arg(super::repo().join("tests/py/http_server.py"))
            .arg(dir)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/py/http_server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .expect("the HTTP server's port");
        HttpServer {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// GET on the server; the body as JSON.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
    }

    pub fn control(&self, what: &str) -> serde_json::Value {
        self.get(&format!("/_control/{what}"))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A package of `files` (path, contents) as version `version`, written into `out`.
pub fn make_package(
    out: &Path,
    version: &str,
    files: &[(&str, Vec<u8>)],
    health: Option<&str>,
    key: Option<&[u8; 32]>,
) -> package::Packed {
    make_package_with_hooks(out, version, files, health, key, package::Hooks::default())
}

/// As `make_package`, with `hooks` in its manifest (their programs among `files`).
pub fn make_package_with_hooks(
    out: &Path,
    version: &str,
    files: &[(&str, Vec<u8>)],
    health: Option<&str>,
    key: Option<&[u8; 32]>,
    hooks: package::Hooks,
) -> package::Packed {
    let src = tempfile::tempdir().unwrap();
    for (p, data) in files {
        let path = src.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        if p.ends_with(".sh") || p.starts_with("bin/") {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let hc = health.map(|h| HealthCheck {
        command: h.split_whitespace().map(str::to_owned).collect(),
        timeout_s: 10,
    });
    let key = key.map(|seed| edge_agent::ota::signing::SigningKey::Ed25519(*seed));
    let opts = package::PackOptions {
        name: "detector".into(),
        version: version.to_owned(),
        health_check: hc,
        hooks,
        key: key.as_ref(),
        ..Default::default()
    };
    package::pack(src.path(), &opts, out).unwrap()
}

pub fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
}

/// `edge-agent ota <args>`
pub fn ota(args: &[&str]) -> Output {
    agent()
        .arg("ota")
        .args(args)
        .output()
        .expect("run edge-agent ota")
}

/// `edge-agent ota install PACKAGE --yes --state-dir STATE`, which must succeed: the
/// version a test starts from, installed and committed.
pub fn install_committed(package: &Path, state: &Path) {
    let o = ota(&[
        "install",
        package.to_str().unwrap(),
        "--yes",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn status(state: &Path) -> serde_json::Value {
    let o = ota(&["status", "--state-dir", state.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every component of the active slot matches its manifest hash.
pub fn active_slot_is_complete(state: &Path) -> Result<String, String> {
    let current = state.join("current");
    let manifest: package::Manifest = serde_json::from_slice(
        &std::fs::read(current.join("manifest.json"))
            .map_err(|e| format!("no manifest in the active slot: {e}"))?,
    )
    .map_err(|e| e.to_string())?;
    package::check_components(&current, &manifest).map_err(|e| e.to_string())?;
    Ok(manifest.version)
}

/// Runs Debian's openssl, which must succeed; fails with what to install when it is
/// missing.
pub fn openssl(args: &[&str]) -> Output {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed for this test (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
