//! A real mosquitto broker started by the test on free ports (plain, TLS, TLS with
//! client certificates), with a test PKI made by rcgen, and mosquitto_sub as an
//! independent subscriber.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/test.sh, or apt-get install mosquitto mosquitto-clients");
}

/// CA, server and client certificates, and a second CA the server does not use.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    pub fn create(dir: &Path) -> Self {
        let root = ca("edge-agent test CA");
        let other = ca("some other CA");
        let server_key = KeyPair::generate().unwrap();
        let mut sp =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        sp.distinguished_name.push(DnType::CommonName, "localhost");
        let server = sp.signed_by(&server_key, &root).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name.push(DnType::CommonName, "picker-01");
        let client = cp.signed_by(&client_key, &root).unwrap();
        let w = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: w("ca.pem", root.pem()),
            server_cert: w("server.pem", server.pem()),
            server_key: w("server.key", server_key.serialize_pem()),
            client_cert: w("client.pem", client.pem()),
            client_key: w("client.key", client_key.serialize_pem()),
            other_ca: w("other-ca.pem", other.pem()),
        }
    }
}

#[derive(Default, Clone)]
pub struct Options {
    /// Users for the plain listener; anonymous when empty.
    pub users: Vec<(String, String)>,
    pub tls: bool,
    /// Keep sessions and retained messages across restarts.
    pub persistence: bool,
    /// An ACL file's text for the plain listener (mosquitto's `acl_file` format).
    pub acl: Option<String>,
    /// Keep mosquitto's own queue and in-flight limits rather than none.
    pub default_limits: bool,
    /// `max_packet_size` (0: mosquitto's default). MQTT 5 clients get it in CONNACK.
    pub max_packet_size: u32,
    /// `max_qos` of the plain listener. MQTT 5 clients get it in CONNACK; a client
    /// publishing above it is disconnected.
    pub max_qos: Option<u8>,
}

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    pub tls_port: u16,
    pub mtls_port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    pub pki: Option<Pki>,
}

impl Mosquitto {
    pub fn start(opts: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls_port = free_port();
        let mtls_port = free_port();
        let mut conf = String::from(
            "per_listener_settings true\nlog_dest stderr\nlog_type error\nlog_type warning\n",
        );
        if opts.max_packet_size > 0 {
            conf.push_str(&format!("max_packet_size {}\n", opts.max_packet_size));
        }
        if !opts.default_limits {
            conf.push_str("max_queued_messages 0\nmax_inflight_messages 0\n");
        }
        // As root, mosquitto drops to the "mosquitto" user, which cannot write the
        // test's private folder.
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if uid.is_ok_and(|u| u == "0") {
            conf.push_str("user root\n");
        }
        if opts.persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            ));
        }
        conf.push_str(&format!("listener {port} 127.0.0.1\n"));
        if let Some(q) = opts.max_qos {
            conf.push_str(&format!("max_qos {q}\n"));
        }
        if opts.users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let pw = dir.path().join("passwd");
            for (i, (u, p)) in opts.users.iter().enumerate() {
                let mut cmd = Command::new(tool("mosquitto_passwd"));
                cmd.arg("-b");
                if i == 0 {
                    cmd.arg("-c");
                }
                let st = cmd.arg(&pw).arg(u).arg(p).status().unwrap();
                assert!(st.success(), "mosquitto_passwd failed");
            }
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                pw.display()
            ));
        }
        if let Some(acl) = &opts.acl {
            let path = dir.path().join("acl");
            std::fs::write(&path, acl).unwrap();
            conf.push_str(&format!("acl_file {}\n", path.display()));
        }
        let pki = opts.tls.then(|| Pki::create(dir.path()));
        if let Some(p) = &pki {
            for (lport, require) in [(tls_port, false), (mtls_port, true)] {
                conf.push_str(&format!(
                    "listener {lport} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require}\n",
                    p.ca.display(),
                    p.server_cert.display(),
                    p.server_key.display()
                ));
            }
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            tls_port,
            mtls_port,
            dir,
            conf: conf_path,
            pki,
        };
        m.run();
        m
    }

    fn run(&mut self) {
        let child = Command::new(tool("mosquitto"))
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start listening on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait, so a persistent broker saves its state.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.run();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// mosquitto_sub in the background, collecting `topic payload` lines.
pub struct Sub {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Sub {
    /// `args` are extra mosquitto_sub arguments (client id, QoS, `-c`...).
    pub fn start(port: u16, topic: &str, args: &[&str]) -> Self {
        let mut child = Command::new(tool("mosquitto_sub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                topic,
                "-v",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => l2.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        Sub { child, lines }
    }

    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the lines so far.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.snapshot();
            if pred(&lines) {
                return lines;
            }
            if Instant::now() > deadline {
                let tail: Vec<_> = lines.iter().rev().take(5).rev().collect();
                panic!(
                    "timed out waiting for {what}; {} lines received, last: {tail:?}",
                    lines.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes one message with mosquitto_pub.
pub fn publish(port: u16, topic: &str, payload: &str, args: &[&str]) {
    let st = Command::new(tool("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-m",
            payload,
        ])
        .args(args)
        .status()
        .expect("run mosquitto_pub");
    assert!(st.success(), "mosquitto_pub failed");
}

/// A subscriber whose subscription is known to be active: publishes probes (QoS 1)
/// until one comes back.
pub fn ready_sub(port: u16, topic_filter: &str, probe_topic: &str, args: &[&str]) -> Sub {
    ready_sub_probing(port, topic_filter, probe_topic, args, "1")
}

/// As [`ready_sub`], with probes at `probe_qos` (a broker may refuse QoS 1).
pub fn ready_sub_probing(
    port: u16,
    topic_filter: &str,
    probe_topic: &str,
    args: &[&str],
    probe_qos: &str,
) -> Sub {
    let sub = Sub::start(port, topic_filter, args);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        publish(port, probe_topic, "probe", &["-q", probe_qos]);
        std::thread::sleep(Duration::from_millis(100));
        if sub.snapshot().iter().any(|l| l.starts_with(probe_topic)) {
            return sub;
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto_sub never received the probe on {probe_topic}"
        );
    }
}
