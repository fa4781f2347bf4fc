//! Handing freed memory back to the system. The C allocator keeps what the agent freed
//! (start-up's parsing, a burst of messages, an update's buffers) in its arenas, so the
//! resident size stays at the high-water mark; trimming once start-up has settled and
//! then once a minute brings it back to what is in use.

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

/// Trims after start-up, then every `period`, until `stop`.
pub async fn release_periodically(period: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + AFTER_START, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => release_free(),
        }
    }
}
