//! The outbox's slow file-system work — fsync, the delivery record's rename, removing
//! delivered segments — on threads of their own. On a slow disk each of these can take
//! milliseconds; done on the link's task they held up every message behind them.
//!
//! The delivery records have a thread of their own, apart from the fsyncs: on a disk
//! busy with other writers one fsync can take seconds, and a record waiting behind it
//! is what a kill -9 makes the agent send twice. Records waiting together are written
//! once, the newest of each file.
//!
//! Jobs of a kind run in the order they were given. What they promise is unchanged: the
//! segment data is written by the caller before anything is handed to the broker (a
//! kill -9 loses nothing); the fsync that makes it survive a power cut follows within
//! the sync interval, as before. Dropping [`Background`] waits for every job given to it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::Notify;

use super::segment::sync_dir;

enum Job {
    /// fsync a segment's data (a duplicate of the writer's descriptor).
    SyncData {
        file: File,
        path: PathBuf,
    },
    Remove(PathBuf),
    SyncDir(PathBuf),
    /// Answers once every earlier job has run.
    Settled(mpsc::Sender<()>),
}

enum Record {
    /// Write `tmp`, then rename it over `path` (no fsync).
    Replace {
        tmp: PathBuf,
        path: PathBuf,
        bytes: Vec<u8>,
    },
    /// Answers once every earlier record has been written.
    Settled(mpsc::Sender<()>),
    /// Every record given before this one has been written (or failed, logged): moves
    /// [`Saved`] up to this mark.
    Mark(u64),
}

/// How far the delivery records on disk go, as a mark given with [`Jobs::mark`], and a
/// wake-up for whoever waits for it to move.
#[derive(Debug, Default)]
pub struct Saved {
    mark: AtomicU64,
    pub moved: Notify,
}

impl Saved {
    pub fn mark(&self) -> u64 {
        self.mark.load(Ordering::Acquire)
    }
}

/// A way to hand jobs to the outbox threads.
#[derive(Clone)]
pub struct Jobs {
    sync: mpsc::Sender<Job>,
    records: mpsc::Sender<Record>,
}

impl Jobs {
    fn send(&self, job: Job) {
        // The thread only ends once every sender is gone, so this cannot fail.
        let _ = self.sync.send(job);
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
        let _ = self.records.send(Record::Replace { tmp, path, bytes });
    }

    /// Once every record given so far is written, [`Saved::mark`] becomes `mark`. A record
    /// that cannot be written moves it too: its error is logged, and holding everything
    /// back for it would stop the link.
    pub fn mark(&self, mark: u64) {
        let _ = self.records.send(Record::Mark(mark));
    }

    pub fn remove(&self, path: &Path) {
        self.send(Job::Remove(path.to_owned()));
    }

    pub fn sync_dir(&self, dir: &Path) {
        self.send(Job::SyncDir(dir.to_owned()));
    }
}

/// The threads themselves; dropping them waits until every job given to them has run.
pub struct Background {
    jobs: Option<Jobs>,
    saved: Arc<Saved>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    pub fn start() -> io::Result<Self> {
        let (sync, sync_rx) = mpsc::channel::<Job>();
        let (records, records_rx) = mpsc::channel::<Record>();
        let saved = Arc::new(Saved::default());
        let saved_in_thread = saved.clone();
        let mut threads = vec![std::thread::Builder::new()
            .name("outbox-sync".into())
            .spawn(move || run(sync_rx))?];
        threads.push(
            std::thread::Builder::new()
                .name("outbox-record".into())
                .spawn(move || write_records(records_rx, &saved_in_thread))?,
        );
        Ok(Self {
            jobs: Some(Jobs { sync, records }),
            saved,
            threads,
        })
    }

    pub fn saved(&self) -> &Arc<Saved> {
        &self.saved
    }

    pub fn jobs(&self) -> Jobs {
        self.jobs.clone().expect("present until drop")
    }

    /// Waits until every job given so far has run.
    pub fn settle(&self) {
        if let Some(j) = &self.jobs {
            let (tx, rx) = mpsc::channel();
            j.send(Job::Settled(tx));
            let _ = rx.recv();
            let (tx, rx) = mpsc::channel();
            let _ = j.records.send(Record::Settled(tx));
            let _ = rx.recv();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
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

/// Writes delivery records; of those waiting together only the newest of each file.
fn write_records(rx: mpsc::Receiver<Record>, saved: &Saved) {
    let mut report = Reporter { failing: false };
    let mut waiting: HashMap<PathBuf, (PathBuf, Vec<u8>)> = HashMap::new();
    while let Ok(first) = rx.recv() {
        for record in std::iter::once(first).chain(rx.try_iter()) {
            match record {
                Record::Replace { tmp, path, bytes } => {
                    waiting.insert(path, (tmp, bytes));
                }
                Record::Settled(tx) => {
                    write_waiting(&mut waiting, &mut report);
                    let _ = tx.send(());
                }
                Record::Mark(mark) => {
                    write_waiting(&mut waiting, &mut report);
                    saved.mark.fetch_max(mark, Ordering::AcqRel);
                    saved.moved.notify_one();
                }
            }
        }
        write_waiting(&mut waiting, &mut report);
    }
}

fn write_waiting(waiting: &mut HashMap<PathBuf, (PathBuf, Vec<u8>)>, report: &mut Reporter) {
    for (path, (tmp, bytes)) in waiting.drain() {
        let r = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
        report.result("save the delivery record", &path, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_record_is_written_while_an_fsync_is_stuck_and_the_newest_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        // Opening a FIFO for reading blocks until a writer comes: a stuck fsync.
        let fifo = dir.path().join("stuck");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo (coreutils) failed");
        let bg = Background::start().unwrap();
        let jobs = bg.jobs();
        jobs.sync_dir(&fifo);
        let record = dir.path().join("delivered");
        for n in 0..100 {
            jobs.replace(
                dir.path().join("delivered.tmp"),
                record.clone(),
                n.to_string().into_bytes(),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&record).ok().as_deref() != Some("99") {
            assert!(
                Instant::now() < deadline,
                "the record waited behind the stuck fsync"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Unstick the sync thread so dropping the threads can finish.
        drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
        bg.settle();
        assert_eq!(std::fs::read_to_string(&record).unwrap(), "99");
        assert!(!dir.path().join("delivered.tmp").exists());
    }
}
