//! Counters of the cloud link, shared with the rest of the agent (health message,
//! `edge-agent status`) without locks on the hot path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::outbox::ClassStats;

#[derive(Debug, Default)]
pub struct LinkStats {
    /// Messages accepted from the agent (QoS 0 and 1).
    pub accepted: AtomicU64,
    /// PUBLISH packets handed to the broker, resends included.
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub received: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub dropped_qos0_offline: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub dropped_incoming: AtomicU64,
    pub refused: AtomicU64,
    pub connected: AtomicBool,
    pub held: AtomicU64,
    classes: Mutex<Vec<ClassStats>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub connected: bool,
    pub accepted: u64,
    pub sent: u64,
    pub acked: u64,
    pub bytes_sent: u64,
    pub received: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub held: u64,
    pub dropped_qos0_offline: u64,
    pub dropped_too_large: u64,
    pub dropped_incoming: u64,
    pub refused: u64,
    pub outbox: Vec<ClassStats>,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl LinkStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_classes(&self, classes: Vec<ClassStats>) {
        self.held
            .store(classes.iter().map(|c| c.held).sum(), Ordering::Relaxed);
        if let Ok(mut c) = self.classes.lock() {
            *c = classes;
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            accepted: get(&self.accepted),
            sent: get(&self.sent),
            acked: get(&self.acked),
            bytes_sent: get(&self.bytes_sent),
            received: get(&self.received),
            reconnects: get(&self.reconnects),
            connect_failures: get(&self.connect_failures),
            held: get(&self.held),
            dropped_qos0_offline: get(&self.dropped_qos0_offline),
            dropped_too_large: get(&self.dropped_too_large),
            dropped_incoming: get(&self.dropped_incoming),
            refused: get(&self.refused),
            outbox: self.classes.lock().map(|c| c.clone()).unwrap_or_default(),
        }
    }
}
