//! The durable outbox: every QoS 1 message is written here before it is handed to the
//! MQTT client, and removed only when the broker acknowledges it. After a lost link or an
//! agent restart, what is held is sent again in order. Each class (telemetry, status,
//! reports, log, and any configured) has its own folder, bounds and policy.
//!
//! Crash safety: records are checksummed and appended with one write each, so a
//! `kill -9` at any moment leaves at most a torn last record, which recovery cuts off.
//! Data is fsynced every `sync_interval` (or per message for `fsync_each` classes).

mod background;
pub use self::background::Saved;
mod class;
mod segment;

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

pub use class::{ClassCounters, ClassStats};
pub use segment::{Stored, MESSAGE_OVERHEAD};

use self::background::Background;
use self::class::ClassLog;
use super::config::OutboxSettings;
use super::message::Message;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("outbox {dir} is in use by another edge-agent process")]
    Locked { dir: String },
    #[error("outbox class '{class}' is full ({max_bytes} bytes) and refuses new messages")]
    Full { class: String, max_bytes: u64 },
    #[error("message of {size} bytes is larger than outbox class '{class}' ({max} bytes)")]
    TooLarge { class: String, size: u64, max: u64 },
    #[error("unknown outbox class '{0}'")]
    UnknownClass(String),
}

/// Classes are served in this order: reports before status before the rest.
fn priority(name: &str) -> u8 {
    match name {
        "reports" => 0,
        "status" => 1,
        "telemetry" => 3,
        "log" => 4,
        _ => 2,
    }
}

pub struct Outbox {
    dir: PathBuf,
    classes: Vec<ClassLog>,
    by_name: HashMap<String, usize>,
    background: Option<Background>,
    /// Messages marked done in this run, and how many of them a save was asked for.
    done: u64,
    save_asked: u64,
    _lock: File,
}

impl Drop for Outbox {
    /// Everything given to the outbox thread is done before the lock is released.
    fn drop(&mut self) {
        self.classes.clear();
        self.background = None;
    }
}

impl Outbox {
    /// Opens the outbox folder, takes its lock, and recovers every class.
    pub fn open(settings: &OutboxSettings) -> Result<Self, OutboxError> {
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| OutboxError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let lock_path = dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| OutboxError::Io {
                path: lock_path.display().to_string(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OutboxError::Locked {
                    dir: dir.display().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(OutboxError::Io {
                    path: lock_path.display().to_string(),
                    source,
                })
            }
        }
        let mut names: Vec<&String> = settings.classes.keys().collect();
        names.sort_by_key(|n| (priority(n), n.to_string()));
        let background = Background::start().map_err(|source| OutboxError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut classes = Vec::new();
        let mut by_name = HashMap::new();
        for name in names {
            let log = ClassLog::open(
                &dir,
                name,
                settings.classes[name].clone(),
                background.jobs(),
            )?;
            by_name.insert(name.clone(), classes.len());
            classes.push(log);
        }
        Ok(Self {
            dir,
            classes,
            by_name,
            background: Some(background),
            done: 0,
            save_asked: 0,
            _lock: lock,
        })
    }

    /// Waits until the outbox thread has done everything given to it so far.
    pub fn settle(&self) {
        if let Some(b) = &self.background {
            b.settle();
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn class_index(&self, name: &str) -> Result<usize, OutboxError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| OutboxError::UnknownClass(name.to_owned()))
    }

    pub fn class_name(&self, class: usize) -> &str {
        &self.classes[class].name
    }

    pub fn append(&mut self, class: usize, msg: &Message, now_ms: u64) -> Result<u64, OutboxError> {
        self.classes[class].append(msg, now_ms)
    }

    /// The next message to send: classes by priority, each in its own order.
    pub fn next_to_send(&mut self, now_ms: u64) -> Result<Option<(usize, Stored)>, OutboxError> {
        for (i, c) in self.classes.iter_mut().enumerate() {
            if c.has_pending() {
                if let Some(s) = c.next_to_send(now_ms)? {
                    return Ok(Some((i, s)));
                }
            }
        }
        Ok(None)
    }

    pub fn has_pending(&self) -> bool {
        self.classes.iter().any(ClassLog::has_pending)
    }

    /// Hands every appended record to the kernel (one write per class).
    pub fn flush_writes(&mut self) -> Result<(), OutboxError> {
        for c in &mut self.classes {
            c.flush_writes()?;
        }
        Ok(())
    }

    /// Saves the delivery records without fsync (see [`ClassLog::save_delivered`]).
    pub fn save_delivered(&mut self) -> Result<(), OutboxError> {
        for c in &mut self.classes {
            c.save_delivered()?;
        }
        self.mark_saved();
        Ok(())
    }

    fn mark_saved(&mut self) {
        if let Some(b) = &self.background {
            b.jobs().mark(self.done);
            self.save_asked = self.done;
        }
    }

    /// Marks a message acknowledged by the broker (or dropped as one it can never take).
    pub fn mark_done(&mut self, class: usize, seq: u64, size: u64) {
        self.classes[class].mark_done(seq, size);
        self.done += 1;
    }

    /// Messages marked done in this run that the delivery records on disk do not show
    /// yet: what a kill -9 now would make the agent send twice.
    pub fn unsaved(&self) -> u64 {
        let saved = self
            .background
            .as_ref()
            .map_or(self.done, |b| b.saved().mark());
        self.done.saturating_sub(saved)
    }

    /// Whether every message marked done has been given to a save of the records.
    pub fn save_asked(&self) -> bool {
        self.save_asked == self.done
    }

    /// Where the link waits for the delivery records to catch up.
    pub fn saved(&self) -> Option<Arc<Saved>> {
        self.background.as_ref().map(|b| b.saved().clone())
    }

    /// After a reconnect, start again from the oldest unacknowledged message.
    pub fn rewind(&mut self) {
        for c in &mut self.classes {
            c.rewind();
        }
    }

    pub fn sync(&mut self, now_ms: u64) -> Result<(), OutboxError> {
        for c in &mut self.classes {
            c.expire(now_ms)?;
            c.sync()?;
        }
        self.mark_saved();
        Ok(())
    }

    pub fn stats(&self) -> Vec<ClassStats> {
        self.classes.iter().map(ClassLog::stats).collect()
    }

    /// Messages held (accepted, not yet acknowledged), over all classes.
    pub fn held(&self) -> u64 {
        self.classes.iter().map(ClassLog::held).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::config::values::{ByteSize, Dur};
    use crate::mqtt::config::{default_classes, ClassConfig, FullPolicy};
    use crate::mqtt::message::QoS;

    fn settings(dir: &std::path::Path, extra: &[(&str, u64, FullPolicy)]) -> OutboxSettings {
        let mut classes = default_classes();
        for (name, max, policy) in extra {
            classes.insert(
                name.to_string(),
                ClassConfig {
                    max_bytes: ByteSize(*max),
                    max_age: Dur::secs(3600),
                    policy: *policy,
                    fsync_each: false,
                },
            );
        }
        OutboxSettings {
            dir: dir.to_owned(),
            sync_interval: Duration::from_millis(100),
            classes,
        }
    }

    fn m(topic: &str, n: usize, size: usize) -> Message {
        let mut payload = format!("{n:08}").into_bytes();
        payload.resize(size.max(8), b'.');
        Message::new(topic, payload, QoS::AtLeastOnce)
    }

    fn n_of(s: &Stored) -> usize {
        std::str::from_utf8(&s.msg.payload[..8])
            .unwrap()
            .parse()
            .unwrap()
    }

    fn drain(ob: &mut Outbox, ack: bool) -> Vec<(usize, usize)> {
        let mut got = Vec::new();
        while let Some((c, s)) = ob.next_to_send(1000).unwrap() {
            got.push((c, n_of(&s)));
            if ack {
                ob.mark_done(c, s.seq, s.disk_size);
            }
        }
        got
    }

    #[test]
    fn held_messages_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), &[]);
        {
            let mut ob = Outbox::open(&s).unwrap();
            let t = ob.class_index("telemetry").unwrap();
            for i in 0..100 {
                ob.append(t, &m("/t", i, 50), 1000).unwrap();
            }
            // The first 30 are acknowledged.
            for _ in 0..30 {
                let (c, st) = ob.next_to_send(1000).unwrap().unwrap();
                ob.mark_done(c, st.seq, st.disk_size);
            }
            ob.sync(1000).unwrap();
        }
        let mut ob = Outbox::open(&s).unwrap();
        assert_eq!(ob.held(), 70);
        let got: Vec<usize> = drain(&mut ob, true).into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, (30..100).collect::<Vec<_>>());
        ob.sync(1000).unwrap();
        drop(ob);
        let ob = Outbox::open(&s).unwrap();
        assert_eq!(ob.held(), 0);
    }

    #[test]
    fn a_second_process_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), &[]);
        let _first = Outbox::open(&s).unwrap();
        let err = Outbox::open(&s).err().unwrap();
        assert!(matches!(err, OutboxError::Locked { .. }), "{err}");
    }

    #[test]
    fn rewind_resends_unacknowledged_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&settings(dir.path(), &[])).unwrap();
        let t = ob.class_index("telemetry").unwrap();
        for i in 0..10 {
            ob.append(t, &m("/t", i, 10), 1000).unwrap();
        }
        let first: Vec<_> = drain(&mut ob, false);
        assert_eq!(first.len(), 10);
        ob.rewind();
        // Acknowledge only the even ones, then reconnect: the odd ones come again.
        for _ in 0..10 {
            let (c, s) = ob.next_to_send(1000).unwrap().unwrap();
            if n_of(&s).is_multiple_of(2) {
                ob.mark_done(c, s.seq, s.disk_size);
            }
        }
        ob.rewind();
        let again: Vec<usize> = drain(&mut ob, true).into_iter().map(|(_, n)| n).collect();
        assert_eq!(again, vec![1, 3, 5, 7, 9]);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&settings(
            dir.path(),
            &[("small", 64 * 1024, FullPolicy::DropOldest)],
        ))
        .unwrap();
        let c = ob.class_index("small").unwrap();
        for i in 0..2000 {
            ob.append(c, &m("/t", i, 200), 1000).unwrap();
        }
        let st = &ob.stats()[c];
        assert!(st.held_bytes <= 64 * 1024, "{st:?}");
        assert!(st.counters.dropped_full > 0);
        assert_eq!(st.counters.dropped_full + st.held, 2000);
        let got: Vec<usize> = drain(&mut ob, true).into_iter().map(|(_, n)| n).collect();
        // The newest survive, in order, without gaps.
        assert_eq!(*got.last().unwrap(), 1999);
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn refuse_returns_an_error_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&settings(
            dir.path(),
            &[("must", 64 * 1024, FullPolicy::Refuse)],
        ))
        .unwrap();
        let c = ob.class_index("must").unwrap();
        let mut accepted = 0;
        let mut refused = 0;
        for i in 0..1000 {
            match ob.append(c, &m("/r", i, 200), 1000) {
                Ok(_) => accepted += 1,
                Err(OutboxError::Full { .. }) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 0 && accepted > 0);
        assert_eq!(ob.stats()[c].counters.refused, refused);
        let got = drain(&mut ob, true);
        assert_eq!(got.len(), accepted);
        // Once acknowledged, there is room again.
        ob.append(c, &m("/r", 5000, 200), 1000).unwrap();
    }

    #[test]
    fn keep_latest_keeps_one_per_topic() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&settings(dir.path(), &[])).unwrap();
        let c = ob.class_index("status").unwrap();
        for i in 0..50 {
            ob.append(c, &m(&format!("/s/{}", i % 3), i, 20), 1000)
                .unwrap();
        }
        let got: Vec<usize> = drain(&mut ob, true).into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, vec![47, 48, 49]);
        assert_eq!(ob.stats()[c].counters.superseded, 47);
    }

    #[test]
    fn expired_messages_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&settings(dir.path(), &[])).unwrap();
        let c = ob.class_index("telemetry").unwrap();
        ob.append(c, &m("/t", 1, 10), 1000).unwrap();
        let week = 8 * 86_400_000;
        ob.append(c, &m("/t", 2, 10), 1000 + week).unwrap();
        let mut got = Vec::new();
        while let Some((_, s)) = ob.next_to_send(1000 + week).unwrap() {
            got.push(n_of(&s));
        }
        assert_eq!(got, vec![2]);
        assert_eq!(ob.stats()[c].counters.dropped_expired, 1);
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), &[]);
        {
            let mut ob = Outbox::open(&s).unwrap();
            let c = ob.class_index("telemetry").unwrap();
            for i in 0..20 {
                ob.append(c, &m("/t", i, 30), 1000).unwrap();
            }
            ob.sync(1000).unwrap();
        }
        // Cut the newest segment in the middle of its last record.
        let class_dir = dir.path().join("telemetry");
        let mut segs: Vec<_> = std::fs::read_dir(&class_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "seg") && std::fs::metadata(p).unwrap().len() > 8
            })
            .collect();
        segs.sort();
        let last = segs.last().unwrap();
        let len = std::fs::metadata(last).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(last)
            .unwrap()
            .set_len(len - 5)
            .unwrap();

        let mut ob = Outbox::open(&s).unwrap();
        let got: Vec<usize> = drain(&mut ob, true).into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, (0..19).collect::<Vec<_>>());
        // New messages continue after the cut.
        let c = ob.class_index("telemetry").unwrap();
        ob.append(c, &m("/t", 100, 30), 1000).unwrap();
        assert_eq!(drain(&mut ob, true), vec![(c, 100)]);
    }

    #[test]
    fn reads_back_from_disk_when_the_cache_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let mut classes = BTreeMap::new();
        classes.insert(
            "telemetry".to_owned(),
            ClassConfig {
                max_bytes: ByteSize(512 * 1024 * 1024),
                max_age: Dur::secs(3600),
                policy: FullPolicy::DropOldest,
                fsync_each: false,
            },
        );
        let s = OutboxSettings {
            dir: dir.path().to_owned(),
            sync_interval: Duration::from_millis(100),
            classes,
        };
        let mut ob = Outbox::open(&s).unwrap();
        let c = ob.class_index("telemetry").unwrap();
        for i in 0..10_000 {
            ob.append(c, &m(&format!("/t/{}", i % 7), i, 100), 1000)
                .unwrap();
        }
        let got: Vec<usize> = drain(&mut ob, true).into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    }

    /// A sender far behind the writer reads a segment that the writer has since grown
    /// and closed: it must read that segment to its real end, not stop where the file
    /// ended when it was opened.
    #[test]
    fn a_lagging_sender_reads_a_segment_the_writer_closed_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(
            dir.path(),
            &[("bulk", 16 * 1024 * 1024, FullPolicy::DropOldest)],
        );
        let mut ob = Outbox::open(&s).unwrap();
        let c = ob.class_index("bulk").unwrap();
        let mut n = 0;
        let mut got = Vec::new();
        for _ in 0..5_000 {
            ob.append(c, &m("/t", n, 100), 1000).unwrap();
            n += 1;
        }
        // Two in, one out: the sender falls further behind and the writer rotates
        // segments under it.
        for _ in 0..6_000 {
            for _ in 0..2 {
                ob.append(c, &m("/t", n, 100), 1000).unwrap();
                n += 1;
            }
            ob.flush_writes().unwrap();
            let (cls, st) = ob.next_to_send(1000).unwrap().expect("a held message");
            got.push(n_of(&st));
            ob.mark_done(cls, st.seq, st.disk_size);
        }
        got.extend(drain(&mut ob, true).into_iter().map(|(_, x)| x));
        assert_eq!(got.len(), n, "every accepted message is handed out once");
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        assert_eq!(ob.held(), 0);
    }
}
