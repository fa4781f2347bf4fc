//! The outbox's slow file-system work — fsync, the delivery record's rename, removing
//! delivered segments — on a thread of its own. On a slow disk each of these can take
//! milliseconds; done on the link's task they held up every message behind them.
//!
//! Jobs run in the order they were given. What they promise is unchanged: the segment
//! data is written by the caller before anything is handed to the broker (a kill -9
//! loses nothing); the fsync that makes it survive a power cut follows within the sync
//! interval, as before. Dropping [`Background`] waits for every job given to it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::segment::sync_dir;

enum Job {
    /// fsync a segment's data (a duplicate of the writer's descriptor).
    SyncData {
        file: File,
        path: PathBuf,
    },
    /// Write `tmp`, then rename it over `path` (no fsync).
    Replace {
        tmp: PathBuf,
        path: PathBuf,
        bytes: Vec<u8>,
    },
    Remove(PathBuf),
    SyncDir(PathBuf),
    /// Answers once every earlier job has run.
    Settled(mpsc::Sender<()>),
}

/// A way to hand jobs to the outbox thread.
#[derive(Clone)]
pub struct Jobs(mpsc::Sender<Job>);

impl Jobs {
    fn send(&self, job: Job) {
        // The thread only ends once every sender is gone, so this cannot fail.
        let _ = self.0.send(job);
    }

    /// fsyncs the data of the file `file` was duplicated from.
    pub fn sync_data(&self, file: File, path: &Path) {
        self.send(Job::SyncData {
            file,
            path: path.to_owned(),
        });
    }

    /// Replaces `path` with `bytes`, through `tmp`.
    pub fn replace(&self, tmp: PathBuf, path: PathBuf, bytes: Vec<u8>) {
        self.send(Job::Replace { tmp, path, bytes });
    }

    pub fn remove(&self, path: &Path) {
        self.send(Job::Remove(path.to_owned()));
    }

    pub fn sync_dir(&self, dir: &Path) {
        self.send(Job::SyncDir(dir.to_owned()));
    }
}

/// The thread itself; dropping it waits until every job given to it has run.
pub struct Background {
    jobs: Option<Jobs>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("outbox-sync".into())
            .spawn(move || run(rx))?;
        Ok(Self {
            jobs: Some(Jobs(tx)),
            thread: Some(thread),
        })
    }

    pub fn jobs(&self) -> Jobs {
        self.jobs.clone().expect("present until drop")
    }

    /// Waits until every job given so far has run.
    pub fn settle(&self) {
        let (tx, rx) = mpsc::channel();
        if let Some(j) = &self.jobs {
            j.send(Job::Settled(tx));
            let _ = rx.recv();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Logs the first failure of a run of failures, and when the disk works again.
struct Reporter {
    failing: bool,
}

impl Reporter {
    fn result(&mut self, what: &str, path: &Path, r: io::Result<()>) {
        match r {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(path = %path.display(), "The outbox can write to its disk again.");
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::error!(path = %path.display(), error = %e, what,
                        "The outbox cannot write to its disk; messages may be sent twice after a restart. Further failures are not logged until it works again.");
                }
            }
        }
    }
}

fn run(rx: mpsc::Receiver<Job>) {
    let mut report = Reporter { failing: false };
    while let Ok(job) = rx.recv() {
        match job {
            Job::SyncData { file, path } => {
                report.result("fsync a segment", &path, file.sync_data());
            }
            Job::Replace { tmp, path, bytes } => {
                let r = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
                report.result("save the delivery record", &path, r);
            }
            Job::Remove(path) => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    report.result("remove a delivered segment", &path, Err(e));
                }
                _ => {}
            },
            Job::SyncDir(dir) => report.result("fsync the folder", &dir, sync_dir(&dir)),
            Job::Settled(tx) => {
                let _ = tx.send(());
            }
        }
    }
}
