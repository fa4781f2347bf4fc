//! Handing memory the agent no longer uses back to the system.
//!
//! - The C allocator keeps what the agent freed (start-up's parsing, a burst of messages,
//!   an update's buffers) in its arenas, so the resident size stays at the high-water
//!   mark; trimming brings it back to what is in use.
//! - The binary carries the detection engines, the update installer and every codec, and
//!   start-up runs code from all over it. The kernel maps the neighbours of each code page
//!   it faults in, so after start-up some 13 MB of code stay mapped that an idle agent
//!   never runs again. Dropping the mappings of the read-only segments leaves the pages
//!   in the page cache, clean; what is still used is mapped again on its next run.
//!
//! Both run once start-up has settled and then once a minute.

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

/// Unmaps the pages of the executable's read-only segments (code, constants, unwind
/// tables) from this process. They are file-backed and never written, so the next use
/// of any of them maps the same bytes back from the page cache. Segments that are
/// writable at load time (data, and the relocated tables made read-only afterwards) are
/// left alone: their pages hold this process's own changes.
#[allow(unsafe_code)]
pub fn release_code_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        // SAFETY: the callback only reads the program headers the loader hands it, for
        // the duration of the call, and stops after the first object (the executable).
        unsafe {
            libc::dl_iterate_phdr(
                Some(read_only_segments),
                (&mut ranges as *mut Vec<(usize, usize)>).cast(),
            );
        }
        for (start, end) in ranges {
            // Whole pages inside the segment only: a page shared with a writable
            // neighbour must keep its contents.
            let first = start.div_ceil(page) * page;
            let last = end / page * page;
            if last > first {
                // SAFETY: the range lies inside a mapped, never-written, file-backed
                // segment of the executable; MADV_DONTNEED on a private file mapping
                // drops the mapping, and the next access maps the file's page again.
                unsafe {
                    libc::madvise(
                        first as *mut libc::c_void,
                        last - first,
                        libc::MADV_DONTNEED,
                    );
                }
            }
        }
    }
}

/// `dl_iterate_phdr` callback: collects the executable's loaded segments that are not
/// writable, as absolute address ranges, then stops the iteration.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
unsafe extern "C" fn read_only_segments(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid info for this call; data is the Vec passed in.
    let (info, ranges) = unsafe { (&*info, &mut *data.cast::<Vec<(usize, usize)>>()) };
    if info.dlpi_phdr.is_null() {
        return 1;
    }
    // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    for h in headers {
        if h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0 {
            let start = info.dlpi_addr as usize + h.p_vaddr as usize;
            ranges.push((start, start + h.p_memsz as usize));
        }
    }
    1
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
                release_code_pages();
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn rss_file_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssFile in /proc/self/status")
    }

    #[test]
    fn code_pages_are_unmapped_and_the_code_still_runs() {
        // Run a good part of the binary's code first, so its pages are mapped.
        let registry = {
            let mut r = crate::ros::registry::Registry::new();
            r.add_bundled();
            r
        };
        let before = rss_file_kb();
        release_code_pages();
        let after = rss_file_kb();
        assert!(
            after < before,
            "file-backed resident memory should drop: {before} kB before, {after} kB after"
        );
        // The same code runs again from the pages mapped back.
        let schema = registry
            .schema("sensor_msgs/msg/NavSatFix")
            .expect("bundled NavSatFix");
        assert!(format!("{schema:?}").contains("latitude"));
        release_free();
    }
}
