//! One class of the outbox (telemetry, status, reports, log...): its segment files, the
//! record of what the broker has acknowledged, its bounds, and a cursor over what is
//! still to be sent.
//!
//! Messages of a class are numbered in the order they were accepted. "Done" means
//! acknowledged by the broker, or dropped by the class's policy; the set of done numbers
//! is a low-water mark plus the few done above it, saved to `delivered` atomically. A
//! segment file is deleted once every message in it is done.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::background::Jobs;
use super::segment::{
    parse_segment_name, truncate, Damage, Record, SegmentReader, SegmentWriter, Stored,
    MESSAGE_OVERHEAD,
};
use super::OutboxError;
use crate::mqtt::config::{ClassConfig, FullPolicy};
use crate::mqtt::message::Message;

/// Recently accepted messages kept in memory so a link that keeps up never reads them back.
const CACHE_MAX_ENTRIES: usize = 4096;
const CACHE_MAX_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
struct SegInfo {
    first_seq: u64,
    /// Last message number in the segment; `first_seq - 1` while empty.
    last_seq: u64,
    path: PathBuf,
    file_len: u64,
    live: u64,
    live_bytes: u64,
    newest_ts: u64,
}

/// Counters of what this class dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClassCounters {
    pub dropped_full: u64,
    pub dropped_expired: u64,
    pub superseded: u64,
    pub dropped_corrupt: u64,
    pub refused: u64,
}

/// What a class holds now.
#[derive(Debug, Clone, Serialize)]
pub struct ClassStats {
    pub class: String,
    pub held: u64,
    pub held_bytes: u64,
    pub disk_bytes: u64,
    pub max_bytes: u64,
    pub policy: FullPolicy,
    #[serde(flatten)]
    pub counters: ClassCounters,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Delivered {
    low_water: u64,
    sparse: Vec<u64>,
}

pub struct ClassLog {
    pub name: String,
    cfg: ClassConfig,
    dir: PathBuf,
    segment_size: u64,
    segments: VecDeque<SegInfo>,
    /// Always present once `open` returns.
    writer: Option<SegmentWriter>,
    next_seq: u64,
    low_water: u64,
    sparse: BTreeSet<u64>,
    latest: HashMap<Arc<str>, (u64, u64)>,
    cursor: u64,
    reader: Option<(u64, SegmentReader)>,
    cache: VecDeque<Stored>,
    cache_bytes: usize,
    live_count: u64,
    live_bytes: u64,
    state_dirty: bool,
    dir_dirty: bool,
    writer_dirty: bool,
    /// fsync, renames and removals happen on the outbox thread.
    jobs: Jobs,
    pub counters: ClassCounters,
    /// Drops are logged: the first, then one line a minute.
    log: crate::loglimit::LogLimiter,
    /// When this class first dropped messages for lack of room, in this run.
    dropping_since_ms: Option<u64>,
}

fn io_err(path: &Path, e: io::Error) -> OutboxError {
    OutboxError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

impl ClassLog {
    /// Opens (or creates) the class folder and recovers it: torn or corrupt tails are
    /// cut with a WARN naming what was dropped; everything before them is kept.
    pub fn open(dir: &Path, name: &str, cfg: ClassConfig, jobs: Jobs) -> Result<Self, OutboxError> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let delivered_path = dir.join("delivered");
        let delivered = match std::fs::read(&delivered_path) {
            Ok(bytes) => serde_json::from_slice::<Delivered>(&bytes).unwrap_or_else(|e| {
                tracing::warn!(class = name, file = %delivered_path.display(), error = %e,
                    "Outbox delivery record is unreadable; every held message will be sent again.");
                Delivered::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Delivered::default(),
            Err(e) => return Err(io_err(&delivered_path, e)),
        };
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| io_err(&dir, e))?
            .flatten()
            .filter_map(|e| parse_segment_name(&e.path()).map(|s| (s, e.path())))
            .collect();
        files.sort();

        let segment_size = (cfg.max_bytes.0 / 16).clamp(64 * 1024, 8 * 1024 * 1024);
        let first_file_seq = files.first().map(|f| f.0).unwrap_or(0);
        let mut log = ClassLog {
            name: name.to_owned(),
            cfg,
            dir: dir.clone(),
            segment_size,
            segments: VecDeque::new(),
            writer: None,
            next_seq: 0,
            // Numbers below the oldest segment are gone, whatever the record says.
            low_water: delivered.low_water.max(first_file_seq),
            sparse: delivered.sparse.into_iter().collect(),
            latest: HashMap::new(),
            cursor: 0,
            reader: None,
            cache: VecDeque::new(),
            cache_bytes: 0,
            live_count: 0,
            live_bytes: 0,
            state_dirty: false,
            dir_dirty: false,
            writer_dirty: false,
            jobs,
            counters: ClassCounters::default(),
            log: crate::loglimit::LogLimiter::default(),
            dropping_since_ms: None,
        };
        let mut next_seq = log.low_water;
        let mut expected: Option<u64> = None;
        for (first_seq, path) in files {
            let info = log.recover_segment(first_seq, &path)?;
            let Some(info) = info else { continue };
            next_seq = next_seq.max(info.first_seq);
            if info.last_seq.wrapping_add(1) == info.first_seq {
                // No message in it.
                let _ = std::fs::remove_file(&info.path);
                log.dir_dirty = true;
                continue;
            }
            // Numbers lost between segments (a cut tail) will never arrive: mark them done.
            if let Some(exp) = expected {
                for s in exp..info.first_seq {
                    log.sparse.insert(s);
                }
            }
            expected = Some(info.last_seq + 1);
            next_seq = next_seq.max(info.last_seq + 1);
            log.segments.push_back(info);
        }
        log.next_seq = next_seq;
        log.advance_low_water();
        // Segments holding only done messages are not needed.
        while let Some(front) = log.segments.front() {
            if front.live == 0 {
                let _ = std::fs::remove_file(&front.path);
                log.segments.pop_front();
                log.dir_dirty = true;
            } else {
                break;
            }
        }
        log.rotate()?;
        log.cursor = log.low_water;
        Ok(log)
    }

    fn recover_segment(
        &mut self,
        first_seq: u64,
        path: &Path,
    ) -> Result<Option<SegInfo>, OutboxError> {
        let mut reader = match SegmentReader::open(path).map_err(|e| io_err(path, e))? {
            Ok(r) => r,
            Err(d) => {
                tracing::warn!(class = %self.name, file = %path.display(), reason = %d.reason,
                    "Outbox segment is unreadable and was removed.");
                let _ = std::fs::remove_file(path);
                return Ok(None);
            }
        };
        let mut info = SegInfo {
            first_seq,
            last_seq: first_seq.wrapping_sub(1),
            path: path.to_owned(),
            file_len: reader.len,
            live: 0,
            live_bytes: 0,
            newest_ts: 0,
        };
        let mut kept = 0u64;
        let damage: Option<Damage> = loop {
            match reader.next() {
                Ok(None) => break None,
                Ok(Some(Record::Topic)) => {}
                Ok(Some(Record::Message(s))) => {
                    kept += 1;
                    info.last_seq = s.seq;
                    info.newest_ts = info.newest_ts.max(s.ts_ms);
                    if !self.is_done(s.seq) {
                        info.live += 1;
                        info.live_bytes += s.disk_size;
                        self.live_count += 1;
                        self.live_bytes += s.disk_size;
                        if self.cfg.policy == FullPolicy::KeepLatest {
                            if let Some((old, size)) = self
                                .latest
                                .insert(s.msg.topic.clone(), (s.seq, s.disk_size))
                            {
                                self.supersede_recovered(&mut info, old, size);
                            }
                        }
                    }
                }
                Err(d) => break Some(d),
            }
        };
        if let Some(d) = damage {
            let dropped = info.file_len - d.offset;
            tracing::warn!(class = %self.name, file = %path.display(), offset = d.offset,
                dropped_bytes = dropped, kept_messages = kept, reason = %d.reason,
                "Outbox segment was cut at a torn or corrupt record; the messages before it are kept.");
            truncate(path, d.offset).map_err(|e| io_err(path, e))?;
            info.file_len = d.offset;
            self.counters.dropped_corrupt += 1;
        }
        Ok(Some(info))
    }

    /// During recovery: an older live message of a keep-latest topic is dropped.
    fn supersede_recovered(&mut self, current: &mut SegInfo, seq: u64, size: u64) {
        self.sparse.insert(seq);
        self.counters.superseded += 1;
        self.live_count -= 1;
        self.live_bytes -= size;
        if seq >= current.first_seq {
            current.live -= 1;
            current.live_bytes -= size;
        } else if let Some(seg) = self.segment_of_mut(seq) {
            seg.live -= 1;
            seg.live_bytes -= size;
        }
        self.state_dirty = true;
    }

    pub fn is_done(&self, seq: u64) -> bool {
        seq < self.low_water || self.sparse.contains(&seq)
    }

    fn advance_low_water(&mut self) {
        let before = self.low_water;
        while self.sparse.remove(&self.low_water) {
            self.low_water += 1;
        }
        // Entries below the mark are implied by it.
        if let Some(&first) = self.sparse.first() {
            if first < self.low_water {
                self.sparse = self.sparse.split_off(&self.low_water);
            }
        }
        if self.low_water != before {
            self.state_dirty = true;
        }
    }

    fn segment_index(&self, seq: u64) -> Option<usize> {
        let idx = self.segments.partition_point(|s| s.first_seq <= seq);
        (idx > 0).then(|| idx - 1)
    }

    fn segment_of_mut(&mut self, seq: u64) -> Option<&mut SegInfo> {
        let i = self.segment_index(seq)?;
        self.segments.get_mut(i)
    }

    /// Marks a message done (acknowledged, or dropped); `size` is its disk size.
    pub fn mark_done(&mut self, seq: u64, size: u64) {
        if seq >= self.next_seq || self.is_done(seq) {
            return;
        }
        self.sparse.insert(seq);
        if let Some(seg) = self.segment_of_mut(seq) {
            seg.live = seg.live.saturating_sub(1);
            seg.live_bytes = seg.live_bytes.saturating_sub(size);
        }
        self.live_count = self.live_count.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(size);
        self.state_dirty = true;
        self.advance_low_water();
    }

    fn writer(&mut self) -> &mut SegmentWriter {
        self.writer
            .as_mut()
            .expect("the class log always has a writer after open")
    }

    /// Hands appended records to the kernel (one write). Survives kill -9 from here on.
    pub fn flush_writes(&mut self) -> Result<(), OutboxError> {
        if let Some(w) = self.writer.as_mut() {
            w.flush().map_err(|e| io_err(&w.path, e))?;
        }
        Ok(())
    }

    /// Makes what was appended survive a power cut: at once (`fsync_each`), or by the
    /// outbox thread.
    fn sync_writer(&mut self, now: bool) -> Result<(), OutboxError> {
        if self.writer_dirty {
            if let Some(w) = self.writer.as_mut() {
                if now {
                    w.sync().map_err(|e| io_err(&w.path, e))?;
                } else {
                    w.flush().map_err(|e| io_err(&w.path, e))?;
                    let file = w.duplicate().map_err(|e| io_err(&w.path, e))?;
                    self.jobs.sync_data(file, &w.path);
                }
            }
            self.writer_dirty = false;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), OutboxError> {
        self.sync_writer(false)?;
        let w =
            SegmentWriter::create(&self.dir, self.next_seq).map_err(|e| io_err(&self.dir, e))?;
        let (path, len) = (w.path.clone(), w.len);
        self.writer = Some(w);
        self.segments.push_back(SegInfo {
            first_seq: self.next_seq,
            last_seq: self.next_seq.wrapping_sub(1),
            path,
            file_len: len,
            live: 0,
            live_bytes: 0,
            newest_ts: 0,
        });
        self.dir_dirty = true;
        Ok(())
    }

    /// Says that messages were dropped: a full class at WARN (data the robot collected
    /// is lost), an expired one at INFO (what `max_age` asks for); each kind once a
    /// minute at most, with how many were left out of the log meanwhile.
    fn log_drop(&mut self, seg: &SegInfo, expired: bool) {
        use crate::loglimit::{more, Verdict};
        let kind = if expired { "expired" } else { "full" };
        let since = if expired {
            0
        } else {
            *self
                .dropping_since_ms
                .get_or_insert_with(crate::clock::now_ms)
        };
        let Verdict::Log { left_out } = self.log.note(kind, "") else {
            return;
        };
        let newest = crate::clock::rfc3339_ms(seg.newest_ts);
        if expired {
            tracing::info!(class = %self.name, messages = seg.live, newest = %newest,
                "Outbox class {} dropped {} messages older than its max_age{}.", self.name, seg.live, more(left_out));
        } else {
            tracing::warn!(class = %self.name, messages = seg.live, newest = %newest,
                max_bytes = self.cfg.max_bytes.0, dropping_since = %crate::clock::rfc3339_ms(since),
                "Outbox class {} is full: dropped its {} oldest messages (up to {}) to make room{}. Raise its max_bytes or bring the link back.",
                self.name, seg.live, newest, more(left_out));
        }
    }

    /// Drops the oldest segment with everything in it. Returns false if nothing could go.
    fn drop_oldest_segment(&mut self, expired: bool) -> Result<bool, OutboxError> {
        if self.segments.len() <= 1 {
            if self.segments.back().is_some_and(|s| s.live > 0) {
                self.rotate()?;
            } else {
                return Ok(false);
            }
        }
        let Some(seg) = self.segments.pop_front() else {
            return Ok(false);
        };
        if expired {
            self.counters.dropped_expired += seg.live;
        } else {
            self.counters.dropped_full += seg.live;
        }
        if seg.live > 0 {
            self.log_drop(&seg, expired);
        }
        self.live_count -= seg.live.min(self.live_count);
        self.live_bytes -= seg.live_bytes.min(self.live_bytes);
        self.low_water = self.low_water.max(seg.last_seq.wrapping_add(1));
        self.advance_low_water();
        self.state_dirty = true;
        self.jobs.remove(&seg.path);
        self.dir_dirty = true;
        if self
            .reader
            .as_ref()
            .is_some_and(|(first, _)| *first == seg.first_seq)
        {
            self.reader = None;
        }
        self.cursor = self.cursor.max(self.low_water);
        while self.cache.front().is_some_and(|s| s.seq < self.low_water) {
            self.pop_cache();
        }
        Ok(true)
    }

    fn pop_cache(&mut self) -> Option<Stored> {
        let s = self.cache.pop_front()?;
        self.cache_bytes -= s.msg.payload.len();
        Some(s)
    }

    /// Drops whole segments whose newest message is older than the class's max age.
    pub fn expire(&mut self, now_ms: u64) -> Result<(), OutboxError> {
        let max_age = self.cfg.max_age.0.as_millis() as u64;
        while self.segments.len() > 1 {
            let front = &self.segments[0];
            if front.newest_ts.saturating_add(max_age) >= now_ms {
                break;
            }
            self.drop_oldest_segment(true)?;
        }
        Ok(())
    }

    /// Stores a message. With policy `refuse`, a full class returns `Full`.
    pub fn append(&mut self, msg: &Message, now_ms: u64) -> Result<u64, OutboxError> {
        let est = MESSAGE_OVERHEAD + msg.payload.len() as u64 + msg.topic.len() as u64;
        if est > self.cfg.max_bytes.0 {
            return Err(OutboxError::TooLarge {
                class: self.name.clone(),
                size: est,
                max: self.cfg.max_bytes.0,
            });
        }
        self.expire(now_ms)?;
        if self.cfg.policy == FullPolicy::KeepLatest {
            if let Some(&(old, size)) = self.latest.get(&msg.topic) {
                // Only a message not yet handed to the broker can be replaced.
                if old >= self.cursor && !self.is_done(old) {
                    self.mark_done(old, size);
                    self.counters.superseded += 1;
                    self.cache.retain(|s| s.seq != old);
                    self.cache_bytes = self.cache.iter().map(|s| s.msg.payload.len()).sum();
                }
            }
        }
        while self.live_bytes + est > self.cfg.max_bytes.0 {
            if self.cfg.policy == FullPolicy::Refuse {
                self.counters.refused += 1;
                return Err(OutboxError::Full {
                    class: self.name.clone(),
                    max_bytes: self.cfg.max_bytes.0,
                });
            }
            if !self.drop_oldest_segment(false)? {
                break;
            }
        }
        if self.writer().len >= self.segment_size {
            self.rotate()?;
        }
        let seq = self.next_seq;
        let w = self.writer();
        let (added, msg_size) = w.append(seq, now_ms, msg).map_err(|e| io_err(&w.path, e))?;
        self.next_seq += 1;
        if let Some(seg) = self.segments.back_mut() {
            seg.last_seq = seq;
            seg.file_len += added;
            seg.live += 1;
            seg.live_bytes += msg_size;
            seg.newest_ts = now_ms;
        }
        self.live_count += 1;
        self.live_bytes += msg_size;
        self.writer_dirty = true;
        if self.cfg.fsync_each {
            self.sync_writer(true)?;
        }
        if self.cfg.policy == FullPolicy::KeepLatest {
            self.latest.insert(msg.topic.clone(), (seq, msg_size));
        }
        self.cache_bytes += msg.payload.len();
        self.cache.push_back(Stored {
            seq,
            ts_ms: now_ms,
            msg: msg.clone(),
            disk_size: msg_size,
        });
        while self.cache.len() > CACHE_MAX_ENTRIES || self.cache_bytes > CACHE_MAX_BYTES {
            self.pop_cache();
        }
        Ok(seq)
    }

    /// Whether there is something not yet handed out.
    pub fn has_pending(&self) -> bool {
        self.cursor < self.next_seq
    }

    /// The next message to hand to the broker, in order; skips done and expired ones.
    pub fn next_to_send(&mut self, now_ms: u64) -> Result<Option<Stored>, OutboxError> {
        let max_age = self.cfg.max_age.0.as_millis() as u64;
        loop {
            if self.cursor >= self.next_seq {
                return Ok(None);
            }
            if self.is_done(self.cursor) {
                self.cursor += 1;
                continue;
            }
            while self.cache.front().is_some_and(|s| s.seq < self.cursor) {
                self.pop_cache();
            }
            let candidate = if self.cache.front().is_some_and(|s| s.seq == self.cursor) {
                self.pop_cache()
            } else {
                self.read_from_disk()?
            };
            let Some(s) = candidate else {
                continue;
            };
            self.cursor = s.seq + 1;
            if self.is_done(s.seq) {
                continue;
            }
            if s.ts_ms.saturating_add(max_age) < now_ms {
                self.mark_done(s.seq, s.disk_size);
                self.counters.dropped_expired += 1;
                continue;
            }
            return Ok(Some(s));
        }
    }

    /// Reads the record at the cursor from its segment; `None` after moving the cursor
    /// past numbers that are not on disk.
    fn read_from_disk(&mut self) -> Result<Option<Stored>, OutboxError> {
        let Some(idx) = self.segment_index(self.cursor) else {
            // Below the oldest segment: those are gone.
            self.cursor = self.segments.front().map_or(self.next_seq, |s| s.first_seq);
            return Ok(None);
        };
        let seg_first = self.segments[idx].first_seq;
        let seg_last = self.segments[idx].last_seq;
        if self.cursor > seg_last {
            // Past this segment's end: continue in the next one.
            self.cursor = self
                .segments
                .get(idx + 1)
                .map_or(self.next_seq, |s| s.first_seq);
            return Ok(None);
        }
        let writer_segment = idx + 1 == self.segments.len();
        if writer_segment {
            self.flush_writes()?;
        }
        if self.reader.as_ref().is_none_or(|(f, _)| *f != seg_first) {
            let path = self.segments[idx].path.clone();
            match SegmentReader::open(&path).map_err(|e| io_err(&path, e))? {
                Ok(r) => self.reader = Some((seg_first, r)),
                Err(d) => return self.skip_damaged(idx, d),
            }
        }
        // What the file holds now: the writer may have appended to this segment since
        // the reader opened it, and may since have closed it.
        let file_len = self.segments[idx].file_len;
        loop {
            let Some((_, reader)) = self.reader.as_mut() else {
                return Ok(None);
            };
            if reader.offset == reader.len {
                reader.len = reader.len.max(file_len);
            }
            match reader.next() {
                Ok(Some(Record::Topic)) => {}
                Ok(Some(Record::Message(s))) => {
                    if s.seq < self.cursor {
                        continue;
                    }
                    return Ok(Some(s));
                }
                Ok(None) => {
                    // Should not happen below last_seq; resynchronise from the next segment.
                    // What is skipped stays held and goes out after the next reconnect.
                    tracing::warn!(class = %self.name, file = %self.segments[idx].path.display(),
                        from_seq = self.cursor, to_seq = seg_last,
                        "Outbox segment ended before its last message; those messages wait for the next reconnect.");
                    self.reader = None;
                    self.cursor = self
                        .segments
                        .get(idx + 1)
                        .map_or(self.next_seq, |s| s.first_seq);
                    return Ok(None);
                }
                Err(d) => return self.skip_damaged(idx, d),
            }
        }
    }

    /// A segment damaged after recovery (disk error): its unread messages are lost.
    fn skip_damaged(&mut self, idx: usize, d: Damage) -> Result<Option<Stored>, OutboxError> {
        let seg = self.segments[idx].clone();
        tracing::warn!(class = %self.name, file = %seg.path.display(), offset = d.offset, reason = %d.reason,
            "Outbox segment became unreadable; its remaining messages are lost.");
        self.counters.dropped_corrupt += 1;
        for s in self.cursor..=seg.last_seq {
            self.sparse.insert(s);
        }
        self.live_count -= seg.live.min(self.live_count);
        self.live_bytes -= seg.live_bytes.min(self.live_bytes);
        self.segments[idx].live = 0;
        self.segments[idx].live_bytes = 0;
        self.advance_low_water();
        self.state_dirty = true;
        self.reader = None;
        self.cursor = seg.last_seq.wrapping_add(1);
        Ok(None)
    }

    /// After a reconnect: everything not acknowledged is sent again, in order.
    pub fn rewind(&mut self) {
        self.cursor = self.low_water;
        self.reader = None;
    }

    /// Saves the delivery record if it changed (no fsync: cheap, for frequent use).
    pub fn save_delivered(&mut self) -> Result<(), OutboxError> {
        if self.state_dirty {
            let state = Delivered {
                low_water: self.low_water,
                sparse: self.sparse.iter().copied().collect(),
            };
            let bytes = serde_json::to_vec(&state).unwrap_or_default();
            // Not fsynced: after a power cut an older record only means some messages
            // are sent twice, never that one is lost.
            self.jobs.replace(
                self.dir.join("delivered.tmp"),
                self.dir.join("delivered"),
                bytes,
            );
            self.state_dirty = false;
        }
        Ok(())
    }

    /// fsync written data, delete finished segments, save the delivery record.
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        self.sync_writer(false)?;
        while self.segments.len() > 1 && self.segments[0].live == 0 {
            if let Some(seg) = self.segments.pop_front() {
                self.jobs.remove(&seg.path);
                if self
                    .reader
                    .as_ref()
                    .is_some_and(|(f, _)| *f == seg.first_seq)
                {
                    self.reader = None;
                }
                self.dir_dirty = true;
            }
        }
        self.save_delivered()?;
        if self.dir_dirty {
            self.jobs.sync_dir(&self.dir);
            self.dir_dirty = false;
        }
        Ok(())
    }

    pub fn stats(&self) -> ClassStats {
        ClassStats {
            class: self.name.clone(),
            held: self.live_count,
            held_bytes: self.live_bytes,
            disk_bytes: self.segments.iter().map(|s| s.file_len).sum(),
            max_bytes: self.cfg.max_bytes.0,
            policy: self.cfg.policy,
            counters: self.counters,
        }
    }

    pub fn held(&self) -> u64 {
        self.live_count
    }
}
