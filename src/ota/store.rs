//! The slot store on disk: `slots/a`, `slots/b`, the `current` link to the active one,
//! the journal, and the lock. Every change that matters after a power cut is made
//! atomically: write a temporary file, fsync it, rename it over the old one, fsync the
//! folder. The `current` link is replaced the same way (a new link, renamed over the old
//! one).
//!
//! Two processes may look at one store: the running agent and a technician's `ota`
//! command. Only the holder of [`StateLock`] (an exclusive `flock` on `lock`) changes
//! slots, `current` or the journal, and it reads the journal from disk after taking the
//! lock: a journal held in memory from before may be out of date.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::machine::Phase;
use super::{crash_point, Slot};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct StoreError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError {
        path: path.display().to_string(),
        source,
    }
}

/// Why the store's lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it (the running agent during a job, or an `ota` command).
    #[error("an update is under way ({})", match .pid { Some(p) => format!("pid {p}"), None => "another process".to_owned() })]
    Busy { pid: Option<u32> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The exclusive right to change the store, held until dropped (or the process ends:
/// the kernel releases a `flock` with its last descriptor, so a killed holder never
/// leaves a stale lock).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock of the store at `root` without waiting; the holder's pid is
    /// written into the lock file so the next one can say who has it.
    pub fn try_acquire(root: &Path) -> Result<StateLock, LockError> {
        let path = root.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| err(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                return Err(LockError::Busy { pid });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(&path, e).into()),
        }
        file.set_len(0).map_err(|e| err(&path, e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| err(&path, e))?;
        Ok(StateLock { _file: file })
    }
}

/// What is installed and committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub slot: Slot,
    pub version: String,
    pub name: String,
}

/// The journal: the state machine and what is known to be good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub phase: Phase,
    pub committed: Option<Committed>,
    /// The lowest version that may be installed without `--force` (anti-rollback).
    pub floor: Option<String>,
    /// Bumped on every write; shows in `ota status`.
    pub generation: u64,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            phase: Phase::Idle,
            committed: None,
            floor: None,
            generation: 0,
        }
    }
}

pub struct Store {
    pub root: PathBuf,
}

/// temp file, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| err(&tmp, e))?;
    crash_point("journal: written, not synced");
    f.sync_all().map_err(|e| err(&tmp, e))?;
    drop(f);
    crash_point("journal: synced, not renamed");
    std::fs::rename(&tmp, path).map_err(|e| err(path, e))?;
    crash_point("journal: renamed, folder not synced");
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))
}

impl Store {
    /// Opens (creating folders as needed).
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for d in [
            root.join("slots/a"),
            root.join("slots/b"),
            root.join("downloads"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
        }
        // Absolute, so health checks and links work whatever the working folder.
        let root = std::fs::canonicalize(root).map_err(|e| err(root, e))?;
        Ok(Self { root })
    }

    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join("slots").join(slot.name())
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// The slot `current` points at, if any.
    pub fn active(&self) -> Option<Slot> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        match target.file_name()?.to_str()? {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// Points `current` at `slot`, atomically.
    pub fn switch_to(&self, slot: Slot) -> Result<(), StoreError> {
        let link = self.current_link();
        let tmp = self.root.join("current.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("slots/{}", slot.name()), &tmp)
            .map_err(|e| err(&tmp, e))?;
        crash_point("switch: new link made, not renamed");
        std::fs::rename(&tmp, &link).map_err(|e| err(&link, e))?;
        crash_point("switch: renamed, folder not synced");
        sync_dir(&self.root)
    }

    /// Empties a slot (never the active one: the caller checks).
    pub fn clear_slot(&self, slot: Slot) -> Result<(), StoreError> {
        let d = self.slot_dir(slot);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| err(&d, e))?;
        }
        std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
        sync_dir(&self.root.join("slots"))
    }

    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal.json")
    }

    /// Reads the journal; a missing one is a fresh store. A damaged one (which atomic
    /// writes make impossible short of a disk fault) is an error the caller reports.
    pub fn load_journal(&self) -> Result<Journal, StoreError> {
        let path = self.journal_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| err(&path, std::io::Error::other(e)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(e) => Err(err(&path, e)),
        }
    }

    pub fn save_journal(&self, j: &mut Journal) -> Result<(), StoreError> {
        j.generation += 1;
        let bytes = serde_json::to_vec_pretty(j)
            .map_err(|e| err(&self.journal_path(), std::io::Error::other(e)))?;
        write_atomic(&self.journal_path(), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_and_journal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.active(), None);
        s.switch_to(Slot::B).unwrap();
        assert_eq!(s.active(), Some(Slot::B));
        s.switch_to(Slot::A).unwrap();
        assert_eq!(s.active(), Some(Slot::A));
        let mut j = s.load_journal().unwrap();
        assert_eq!(j, Journal::default());
        j.floor = Some("1.0".into());
        s.save_journal(&mut j).unwrap();
        let back = s.load_journal().unwrap();
        assert_eq!(back.floor.as_deref(), Some("1.0"));
        assert_eq!(back.generation, 1);
    }

    #[test]
    fn one_holder_at_a_time_and_the_second_learns_who() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::try_acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open, as another
        // process makes, is refused even within this process.
        match StateLock::try_acquire(dir.path()) {
            Err(LockError::Busy { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Busy, got {other:?}"),
        }
        let busy = StateLock::try_acquire(dir.path()).unwrap_err().to_string();
        assert_eq!(
            busy,
            format!("an update is under way (pid {})", std::process::id())
        );
        drop(first);
        let _again = StateLock::try_acquire(dir.path()).unwrap();
    }
}
