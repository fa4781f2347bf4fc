//! A/B updates: download, verify, install into the inactive slot, health-check, switch,
//! report, and roll back on failure — safe against a power cut at any instant. The same
//! installer serves the Alibaba Cloud OTA protocol, AWS IoT Jobs, a plain HTTP update
//! server and the technician's command line.

pub mod config;
pub mod delta;
pub mod download;
pub mod hooks;
pub mod installer;
pub mod machine;
pub mod oss;
pub mod package;
pub mod protocols;
pub mod report;
pub mod selfupdate;
pub mod signing;
pub mod store;
pub mod version;

use serde::{Deserialize, Serialize};

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// A point where a power cut is simulated in the power-cut tests: built with the
/// `failpoints` feature and run with `EDGE_AGENT_CRASH_AT=N`, the process aborts at the
/// Nth point it reaches (no destructors, no flushing: as close to a power cut as a
/// process can get); with `EDGE_AGENT_CRASH_AT_POINT=<what>`, at the first point of that
/// name. Without the feature this is nothing.
#[cfg(feature = "failpoints")]
pub fn crash_point(what: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REACHED: AtomicU64 = AtomicU64::new(0);
    static AT: std::sync::OnceLock<(Option<u64>, Option<String>)> = std::sync::OnceLock::new();
    let (at, named) = AT.get_or_init(|| {
        (
            std::env::var("EDGE_AGENT_CRASH_AT")
                .ok()
                .and_then(|v| v.parse().ok()),
            std::env::var("EDGE_AGENT_CRASH_AT_POINT").ok(),
        )
    });
    let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if *at == Some(n) || named.as_deref() == Some(what) {
        eprintln!("crash point {n}: {what}");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash_point(_what: &str) {}
