//! The DDS stack's own threads: started with every signal blocked, and watched.
//!
//! RustDDS runs two threads per participant (its event loop and discovery). Each ends
//! for good when its `epoll_wait` returns EINTR, and nothing else in the process hears
//! of it: the node stays in the process, but no sample moves any more. Two things cause
//! EINTR there:
//! - a signal with a handler (the agent has handlers for SIGTERM, SIGINT and, once it
//!   has run a child process, SIGCHLD) delivered to one of those threads. Blocking every
//!   signal in them prevents this: the kernel then delivers to another thread.
//! - the process being stopped and continued (SIGSTOP or Ctrl-Z, then SIGCONT; a
//!   debugger or `strace` attaching). Linux interrupts `epoll_wait` then whatever the
//!   signal mask, so this cannot be prevented; [`DdsThreads::ended`] reports it, and the
//!   agent restarts.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Thread names begin with this (`RustDDS Participant N event loop`, `RustDDS discovery
/// thread`); the kernel keeps the first 15 bytes.
const PREFIX: &str = "RustDDS";

/// Serializes participant creation within the process, so the threads that appear
/// during one are that participant's.
static CREATING: Mutex<()> = Mutex::new(());

/// The threads one participant started.
#[derive(Debug)]
pub struct DdsThreads {
    /// (thread id, name as the kernel shows it)
    threads: Vec<(i32, String)>,
}

impl DdsThreads {
    /// Runs `create` (which starts the DDS threads) with every signal blocked in the
    /// calling thread, so the threads it starts inherit that mask, and records them.
    pub fn start<T, E>(create: impl FnOnce() -> Result<T, E>) -> Result<(T, Self), E> {
        let _one = CREATING.lock().unwrap_or_else(|p| p.into_inner());
        let before = dds_threads();
        let created = {
            let _mask = BlockedSignals::new();
            create()?
        };
        // A new thread sets its own name as it begins: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut new: Vec<(i32, String)>;
        loop {
            new = dds_threads()
                .into_iter()
                .filter(|t| !before.contains(t))
                .collect();
            if new.len() >= 2 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::debug!(threads = ?new, "DDS threads started.");
        Ok((created, Self { threads: new }))
    }

    /// The name of a thread of this participant that has ended, if one has.
    pub fn ended(&self) -> Option<&str> {
        self.threads
            .iter()
            .find(|(tid, name)| thread_name(*tid).as_deref() != Some(name.as_str()))
            .map(|(_, name)| name.as_str())
    }
}

fn thread_name(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The DDS threads of the process now.
fn dds_threads() -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|tid| Some((tid, thread_name(tid)?)))
        .filter(|(_, name)| name.starts_with(PREFIX))
        .collect()
}

/// Every signal blocked in the calling thread until dropped.
struct BlockedSignals {
    old: libc::sigset_t,
}

impl BlockedSignals {
    #[allow(unsafe_code)]
    fn new() -> Self {
        // SAFETY: sigfillset and pthread_sigmask only write the sets passed to them,
        // which live on this stack frame; the mask is the calling thread's own.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            Self { old }
        }
    }
}

impl Drop for BlockedSignals {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`, on the same thread (the guard is
        // not Send: it holds a sigset_t and lives on one stack frame).
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn blocked(sig: i32) -> bool {
        // SAFETY: reads the calling thread's mask into a local set.
        unsafe {
            let mut cur: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
            libc::sigismember(&cur, sig) == 1
        }
    }

    #[test]
    fn threads_started_inside_inherit_the_blocked_mask_and_the_caller_gets_its_own_back() {
        assert!(!blocked(libc::SIGTERM));
        let (inner, _) = DdsThreads::start(|| {
            let t = std::thread::spawn(|| (blocked(libc::SIGTERM), blocked(libc::SIGCHLD)));
            Ok::<_, ()>(t.join().unwrap())
        })
        .unwrap();
        assert_eq!(inner, (true, true));
        assert!(!blocked(libc::SIGTERM));
    }

    #[test]
    fn a_thread_that_ends_is_reported_by_name() {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let ((), threads) = DdsThreads::start(|| {
            std::thread::Builder::new()
                .name("RustDDS test".into())
                .spawn(move || {
                    let _ = stop_rx.recv();
                })
                .unwrap();
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(threads.threads.len(), 1, "{threads:?}");
        assert_eq!(threads.ended(), None);
        drop(stop_tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads.ended().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(threads.ended(), Some("RustDDS test"));
    }
}
