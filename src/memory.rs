//! Handing memory the agent no longer uses back to the system: the C allocator keeps
//! what the agent freed (start-up's parsing, a burst of messages, an update's buffers)
//! in its arenas, so the resident size stays at the high-water mark; trimming brings it
//! back to what is in use. It runs once start-up has settled and then once a minute.
//!
//! The executable's code pages are left alone: they are file-backed and reclaimable
//! under memory pressure, so unmapping them would only lower the RSS figure and cost
//! page faults. The benchmark reports anonymous memory and PSS beside RSS for that
//! reason.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// When the first trim runs: discovery and the first connection are done by then.
const AFTER_START: Duration = Duration::from_secs(3);

/// Returns the allocator's free pages to the system.
#[allow(unsafe_code)]
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// This process's anonymous resident memory (heap, arenas, stacks) in kB, from
/// /proc/self/status; `None` where there is no such file.
pub fn anonymous_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Trims after start-up, then every `period`, until `stop`.
pub async fn release_periodically(period: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + AFTER_START, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                release_free();
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn rss_anon_kb() -> u64 {
        anonymous_kb().expect("RssAnon in /proc/self/status")
    }

    #[test]
    fn freed_memory_goes_back_to_the_system() {
        // Many small blocks (below the allocator's mmap threshold), touched, then freed:
        // they stay in the arena until trimmed.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 16 * 1024]).collect();
        let held = rss_anon_kb();
        drop(blocks);
        release_free();
        let after = rss_anon_kb();
        assert!(
            after + 32 * 1024 < held,
            "anonymous memory should drop by most of 64 MB: {held} kB held, {after} kB after"
        );
    }
}
