//! The systemd contract: the unit is valid, and the agent speaks the notify protocol:
//! READY=1 only once the broker is reached, WATCHDOG=1 at half of WatchdogSec,
//! STOPPING=1 on SIGTERM.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::agent::{finish, signal, AgentDir};
use support::mosquitto::{Mosquitto, Options};

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("systemd-analyze is not installed: apt-get install systemd (scripts/test.sh does)");
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(support::repo().join("systemd/edge-agent.service")).unwrap();
    // The same unit, pointing at the binary under test.
    let unit = unit.replace("/usr/bin/edge-agent", env!("CARGO_BIN_EXE_edge-agent"));
    let path = dir.path().join("edge-agent.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    let own: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("edge-agent.service"))
        .collect();
    assert!(
        own.is_empty(),
        "systemd-analyze has remarks on the unit:\n{text}"
    );
}

fn recv_all(sock: &UnixDatagram, until: Instant) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    out
}

#[test]
fn ready_after_the_links_watchdog_pings_stopping_on_sigterm() {
    let mut broker = Mosquitto::start(Options::default());
    let port = broker.port;
    broker.stop();
    let rules = "[[ros_to_mqtt]]\nname = \"c\"\nros_topic = \"/chatter\"\nros_type = \"std_msgs/msg/String\"\nmqtt_topic = \"/t\"\n";
    let dom = support::domain();
    let a = AgentDir::new(port, dom.id, rules, "");
    let sock_path = a.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let child = support::agent::agent()
        .args(["run", "--config"])
        .arg(a.config())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The broker is down: no READY yet, but watchdog pings.
    let early = recv_all(&sock, Instant::now() + Duration::from_secs(3));
    assert!(
        !early.iter().any(|(_, m)| m.contains("READY=1")),
        "READY before the broker was reachable: {early:?}"
    );
    let pings = early.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(
        (4..=8).contains(&pings),
        "{pings} watchdog pings in 3 s at WATCHDOG_USEC=1s: {early:?}"
    );

    broker.start_again();
    let later = recv_all(&sock, Instant::now() + Duration::from_secs(5));
    let ready = later
        .iter()
        .find(|(_, m)| m.contains("READY=1"))
        .expect("READY=1 once the broker is up");
    assert!(
        ready.1.contains("STATUS=Bridging; MQTT link up"),
        "{}",
        ready.1
    );
    // "MQTT link up": sent because the broker was reached, not because READY_WAIT ran out.

    signal(&child, "-TERM");
    let last = recv_all(&sock, Instant::now() + Duration::from_secs(2));
    let (code, log) = finish(child);
    assert_eq!(code, Some(0), "{log}");
    assert!(
        last.iter().any(|(_, m)| m.starts_with("STOPPING=1")),
        "{last:?}"
    );
}

/// The agent with stderr going to `log`, `JOURNAL_STREAM` naming that file when
/// `journal`, and `ROS_DISTRO` set to a name it does not know (one ERROR).
fn run_logging_to(a: &AgentDir, log: &std::path::Path, journal: bool) -> std::process::Child {
    use std::os::unix::fs::MetadataExt as _;
    let f = std::fs::File::create(log).unwrap();
    let m = f.metadata().unwrap();
    let mut cmd = support::agent::agent();
    cmd.args(["run", "--config"])
        .arg(a.config())
        .env("RUST_LOG", "info,rustdds=error")
        .env("ROS_DISTRO", "ardent")
        .stdout(std::process::Stdio::null())
        .stderr(f);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    } else {
        cmd.env_remove("JOURNAL_STREAM");
    }
    cmd.spawn().unwrap()
}

fn wait_for_line(log: &std::path::Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(Instant::now() < deadline, "no '{what}' in:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// When stderr is the journal, every line carries its sd-daemon priority and no
/// timestamp of its own, so `journalctl -p warning` shows exactly the WARN and ERROR
/// lines; elsewhere lines keep their timestamps. A clean stop adds no ERROR.
#[test]
fn journal_lines_carry_their_priority_and_no_timestamp() {
    let mut broker = Mosquitto::start(Options::default());
    let port = broker.port;
    // No broker: the link warns.
    broker.stop();
    let dom = support::domain();
    let rules = "[[ros_to_mqtt]]\nname = \"c\"\nros_topic = \"/chatter\"\nros_type = \"std_msgs/msg/String\"\nmqtt_topic = \"/t\"\n";
    let a = AgentDir::new(port, dom.id, rules, "");
    let stamp = |l: &str| {
        l.len() > 20
            && l.as_bytes()[4] == b'-'
            && l.as_bytes()[10] == b'T'
            && l[..4].chars().all(|c| c.is_ascii_digit())
    };
    for journal in [true, false] {
        let log = a.path().join(format!("journal-{journal}.log"));
        let child = run_logging_to(&a, &log, journal);
        wait_for_line(&log, "leaves the ROS 2 graph alone");
        wait_for_line(&log, "WARN");
        signal(&child, "-TERM");
        let (code, _) = finish(child);
        assert_eq!(code, Some(0));
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 3, "{text}");
        if journal {
            for l in &lines {
                let (prio, rest) = l.split_at(3.min(l.len()));
                let want = match prio {
                    "<3>" => "ERROR",
                    "<4>" => "WARN",
                    "<6>" => "INFO",
                    "<7>" => "DEBUG",
                    _ => panic!("a line without its priority: {l:?}\n{text}"),
                };
                assert!(rest.trim_start().starts_with(want), "{l:?}");
                assert!(!stamp(rest.trim_start()), "a timestamp in {l:?}");
            }
            // The only ERROR is the one the graph called for; stopping added none.
            let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("<3>")).collect();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains("ROS_DISTRO=ardent"), "{errors:?}");
            assert!(lines.iter().any(|l| l.starts_with("<4>")), "{text}");
            assert!(
                lines.iter().any(|l| l.contains("edge-agent stopped.")),
                "{text}"
            );
        } else {
            assert!(lines.iter().all(|l| stamp(l)), "{text}");
            assert!(!text.contains("<6>"), "{text}");
        }
    }
}

/// A stop asked for while the agent is still starting (systemd stopping a unit that
/// has just been started, a technician's Ctrl-C) is a clean stop, not a kill by the
/// signal: exit 0, "edge-agent stopped." in the log.
#[test]
fn sigterm_while_starting_is_a_clean_stop() {
    let mut broker = Mosquitto::start(Options::default());
    let port = broker.port;
    broker.stop();
    let dom = support::domain();
    let rules = "[[ros_to_mqtt]]\nname = \"c\"\nros_topic = \"/chatter\"\nros_type = \"std_msgs/msg/String\"\nmqtt_topic = \"/t\"\n";
    let a = AgentDir::new(port, dom.id, rules, "");
    for sig in ["-TERM", "-INT"] {
        let log = a.path().join(format!("start{sig}.log"));
        let child = run_logging_to(&a, &log, false);
        // The first line is written once the handlers are in place; the ROS node,
        // the bridge and the link are still being started.
        // Watched closely and signalled directly: starting takes a few tens of ms.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("edge-agent starting.")
        {
            assert!(Instant::now() < deadline, "the agent did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        let signo = if sig == "-TERM" {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        // SAFETY: kill(2) on the child's pid, which has not been waited for yet.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signo) }, 0);
        let (code, _) = finish(child);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(code, Some(0), "{sig} while starting:\n{text}");
        assert!(text.contains("edge-agent stopped."), "{text}");
    }
}
