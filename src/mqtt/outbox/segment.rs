//! The on-disk form of the outbox: append-only segment files of checksummed records.
//!
//! ```text
//! segment  = header record*
//! header   = "EAOB" 0x01 0x00 0x00 0x00
//! record   = len:u32le crc32(body):u32le body
//! body     = 0x01 topic_id:u32le topic          (a topic used by later records)
//!          | 0x02 seq:u64le ts_ms:u64le topic_id:u32le flags:u8 [props] [corr] payload
//! flags    = qos (bits 0-1) | retain (bit 2) | has props (bit 3) | has corr (bit 4)
//! props    = len:u16le content_type n:u16le (klen:u16le key vlen:u16le value)*
//! corr     = len:u16le correlation_data       (MQTT 5 Correlation Data of a reply)
//! ```
//!
//! Bit 4 came with replies to cloud service calls; segments without it read as before.
//!
//! A message record costs 30 bytes beside its payload; topics are written once per
//! segment. A torn or corrupt record (kill -9 mid-write, a bad disk block) is found by
//! its length or checksum, and the segment is cut there.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::mqtt::message::{Message, Props, QoS};

pub const HEADER: &[u8; 8] = b"EAOB\x01\0\0\0";
const KIND_TOPIC: u8 = 1;
const KIND_MESSAGE: u8 = 2;
/// Fixed part of a message record: len, crc, kind, seq, ts, topic id, flags.
pub const MESSAGE_OVERHEAD: u64 = 4 + 4 + 1 + 8 + 8 + 4 + 1;
/// Bodies larger than this are taken as corruption (MQTT's limit is 256 MiB).
const MAX_BODY: u32 = 268_435_455 + 64 * 1024;

/// A message as stored, with its place in the class's sequence.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub ts_ms: u64,
    pub msg: Message,
    /// Bytes it occupies in the segment.
    pub disk_size: u64,
}

pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

pub fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

fn encode_props(p: &Props, out: &mut Vec<u8>) {
    let ct = p.content_type.as_deref().unwrap_or("");
    out.extend_from_slice(&(ct.len() as u16).to_le_bytes());
    out.extend_from_slice(ct.as_bytes());
    out.extend_from_slice(&(p.user.len() as u16).to_le_bytes());
    for (k, v) in &p.user {
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
}

fn frame(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Appends records to the newest segment of a class. Records are gathered in memory and
/// written with one system call by [`SegmentWriter::flush`], which the link calls before
/// it hands anything to the broker.
pub struct SegmentWriter {
    pub path: PathBuf,
    file: File,
    /// Length including what is not flushed yet.
    pub len: u64,
    unflushed: Vec<u8>,
    topics: HashMap<String, u32>,
    scratch: Vec<u8>,
    body: Vec<u8>,
}

impl SegmentWriter {
    pub fn create(dir: &Path, first_seq: u64) -> io::Result<Self> {
        let path = dir.join(segment_name(first_seq));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.write_all(HEADER)?;
        Ok(Self {
            path,
            file,
            len: HEADER.len() as u64,
            unflushed: Vec::with_capacity(64 * 1024),
            topics: HashMap::new(),
            scratch: Vec::with_capacity(512),
            body: Vec::with_capacity(512),
        })
    }

    /// Writes one message (and its topic, first time) in a single write; returns the
    /// bytes it added to the file and the size of the message record alone.
    pub fn append(&mut self, seq: u64, ts_ms: u64, msg: &Message) -> io::Result<(u64, u64)> {
        self.scratch.clear();
        let next_id = self.topics.len() as u32;
        let topic_id = match self.topics.get(&*msg.topic) {
            Some(id) => *id,
            None => {
                self.body.clear();
                self.body.push(KIND_TOPIC);
                self.body.extend_from_slice(&next_id.to_le_bytes());
                self.body.extend_from_slice(msg.topic.as_bytes());
                frame(&self.body, &mut self.scratch);
                next_id
            }
        };
        self.body.clear();
        self.body.push(KIND_MESSAGE);
        self.body.extend_from_slice(&seq.to_le_bytes());
        self.body.extend_from_slice(&ts_ms.to_le_bytes());
        self.body.extend_from_slice(&topic_id.to_le_bytes());
        let mut flags = msg.qos as u8 | if msg.retain { 4 } else { 0 };
        let corr = msg
            .props
            .as_ref()
            .and_then(|p| p.correlation.as_ref())
            .filter(|c| c.len() <= usize::from(u16::MAX));
        if msg.props.is_some() {
            flags |= 8;
        }
        if corr.is_some() {
            flags |= 16;
        }
        self.body.push(flags);
        if let Some(p) = &msg.props {
            encode_props(p, &mut self.body);
        }
        if let Some(c) = corr {
            self.body.extend_from_slice(&(c.len() as u16).to_le_bytes());
            self.body.extend_from_slice(c);
        }
        self.body.extend_from_slice(&msg.payload);
        frame(&self.body, &mut self.scratch);
        self.unflushed.extend_from_slice(&self.scratch);
        if topic_id == next_id {
            self.topics.insert(msg.topic.to_string(), topic_id);
        }
        let added = self.scratch.len() as u64;
        self.len += added;
        Ok((added, 8 + self.body.len() as u64))
    }

    /// Writes what was appended since the last flush.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.unflushed.is_empty() {
            self.file.write_all(&self.unflushed)?;
            self.unflushed.clear();
            if self.unflushed.capacity() > 1 << 20 {
                self.unflushed.shrink_to(64 * 1024);
            }
        }
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_data()
    }

    /// A second descriptor of the file, for an fsync elsewhere.
    pub fn duplicate(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// One record read back.
pub enum Record {
    Topic,
    Message(Stored),
}

/// Why reading stopped before the end of a file.
#[derive(Debug)]
pub struct Damage {
    pub offset: u64,
    pub reason: String,
}

/// Reads a segment sequentially.
pub struct SegmentReader {
    file: BufReader<File>,
    pub offset: u64,
    pub len: u64,
    topics: HashMap<u32, std::sync::Arc<str>>,
    body: Vec<u8>,
}

impl SegmentReader {
    /// Opens a segment and checks its header.
    pub fn open(path: &Path) -> io::Result<Result<Self, Damage>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut header = [0u8; 8];
        if len < 8 || file.read_exact(&mut header).is_err() || &header != HEADER {
            return Ok(Err(Damage {
                offset: 0,
                reason: "missing or unknown segment header".into(),
            }));
        }
        Ok(Ok(Self {
            file: BufReader::with_capacity(64 * 1024, file),
            offset: 8,
            len,
            topics: HashMap::new(),
            body: Vec::new(),
        }))
    }

    /// The next record; `Ok(None)` at a clean end; `Err` describes damage at `offset`.
    pub fn next(&mut self) -> Result<Option<Record>, Damage> {
        if self.offset == self.len {
            return Ok(None);
        }
        let start = self.offset;
        let damage = |reason: String| Damage {
            offset: start,
            reason,
        };
        let left = self.len - self.offset;
        if left < 8 {
            return Err(damage(format!("{left} bytes of a torn record header")));
        }
        let mut head = [0u8; 8];
        self.file
            .read_exact(&mut head)
            .map_err(|e| damage(format!("read failed: {e}")))?;
        let body_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if body_len == 0 || body_len > MAX_BODY || u64::from(body_len) > left - 8 {
            return Err(damage(format!(
                "record length {body_len} does not fit the {} bytes left (torn write)",
                left - 8
            )));
        }
        self.body.resize(body_len as usize, 0);
        self.file
            .read_exact(&mut self.body)
            .map_err(|e| damage(format!("read failed: {e}")))?;
        if crc32fast::hash(&self.body) != crc {
            return Err(damage("checksum mismatch".into()));
        }
        self.offset += 8 + u64::from(body_len);
        let disk_size = 8 + u64::from(body_len);
        let b = &self.body;
        match b[0] {
            KIND_TOPIC if b.len() >= 5 => {
                let id = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                let topic = std::str::from_utf8(&b[5..])
                    .map_err(|_| damage("topic is not UTF-8".into()))?;
                self.topics.insert(id, std::sync::Arc::from(topic));
                Ok(Some(Record::Topic))
            }
            KIND_MESSAGE if b.len() >= 22 => {
                let seq = u64::from_le_bytes(b[1..9].try_into().unwrap_or_default());
                let ts_ms = u64::from_le_bytes(b[9..17].try_into().unwrap_or_default());
                let topic_id = u32::from_le_bytes(b[17..21].try_into().unwrap_or_default());
                let flags = b[21];
                let topic =
                    self.topics.get(&topic_id).cloned().ok_or_else(|| {
                        damage(format!("message refers to unknown topic {topic_id}"))
                    })?;
                let mut rest = &b[22..];
                let mut props = if flags & 8 != 0 {
                    Some(Box::new(
                        decode_props(&mut rest)
                            .ok_or_else(|| damage("bad message properties".into()))?,
                    ))
                } else {
                    None
                };
                if flags & 16 != 0 {
                    let c = take(&mut rest, 2)
                        .and_then(|l| {
                            take(&mut rest, usize::from(u16::from_le_bytes([l[0], l[1]])))
                        })
                        .ok_or_else(|| damage("bad correlation data".into()))?;
                    props.get_or_insert_with(Box::default).correlation =
                        Some(Bytes::copy_from_slice(c));
                }
                let qos = match flags & 3 {
                    0 => QoS::AtMostOnce,
                    _ => QoS::AtLeastOnce,
                };
                Ok(Some(Record::Message(Stored {
                    seq,
                    ts_ms,
                    disk_size,
                    msg: Message {
                        topic,
                        payload: Bytes::copy_from_slice(rest),
                        qos,
                        retain: flags & 4 != 0,
                        props,
                    },
                })))
            }
            kind => Err(damage(format!("unknown record kind {kind}"))),
        }
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_str(rest: &mut &[u8]) -> Option<String> {
    let l = take(rest, 2)?;
    let n = u16::from_le_bytes([l[0], l[1]]) as usize;
    String::from_utf8(take(rest, n)?.to_vec()).ok()
}

fn decode_props(rest: &mut &[u8]) -> Option<Props> {
    let ct = take_str(rest)?;
    let n = take(rest, 2)?;
    let n = u16::from_le_bytes([n[0], n[1]]);
    let mut user = Vec::with_capacity(n as usize);
    for _ in 0..n {
        user.push((take_str(rest)?, take_str(rest)?));
    }
    Some(Props {
        content_type: (!ct.is_empty()).then_some(ct),
        user,
        ..Props::default()
    })
}

/// Cuts a damaged segment at `offset`, keeping every good record before it.
pub fn truncate(path: &Path, offset: u64) -> io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(offset)?;
    f.sync_all()
}

/// fsync a directory so file creations, renames and deletions survive a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &[u8]) -> Message {
        Message {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            props: None,
        }
    }

    #[test]
    fn write_read_and_overhead() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), 7).unwrap();
        let (first, first_msg) = w.append(7, 1000, &msg("/a/b", b"hello")).unwrap();
        let (second, _) = w.append(8, 1001, &msg("/a/b", b"world")).unwrap();
        assert_eq!(first_msg, second);
        let mut with_props = msg("/c", b"x");
        with_props.retain = true;
        with_props.props = Some(Box::new(Props {
            content_type: Some("image/jpeg".into()),
            user: vec![("k".into(), "v".into())],
            ..Props::default()
        }));
        w.append(9, 1002, &with_props).unwrap();
        // A reply to an MQTT 5 request keeps its correlation data.
        let mut reply = msg("/r", b"{}");
        reply.props = Some(Box::new(Props {
            correlation: Some(Bytes::from_static(b"\x00\x01id")),
            ..Props::default()
        }));
        w.append(10, 1003, &reply).unwrap();
        w.flush().unwrap();
        // The topic is written once; a message costs 30 bytes beside its payload.
        assert_eq!(second, MESSAGE_OVERHEAD + 5);
        assert!(first > second);

        let mut r = SegmentReader::open(&w.path).unwrap().unwrap();
        let mut got = Vec::new();
        while let Some(rec) = r.next().unwrap() {
            if let Record::Message(s) = rec {
                got.push(s);
            }
        }
        assert_eq!(got.len(), 4);
        let p = got[3].msg.props.as_ref().unwrap();
        assert_eq!(p.correlation.as_deref(), Some(&b"\x00\x01id"[..]));
        assert_eq!(&got[3].msg.payload[..], b"{}");
        assert_eq!(got[2].msg.props.as_ref().unwrap().correlation, None);
        assert_eq!(
            (got[0].seq, &*got[0].msg.topic, &got[0].msg.payload[..]),
            (7, "/a/b", &b"hello"[..])
        );
        assert_eq!(got[1].disk_size, second);
        assert!(got[2].msg.retain);
        assert_eq!(
            got[2].msg.props.as_ref().unwrap().content_type.as_deref(),
            Some("image/jpeg")
        );
    }

    #[test]
    fn torn_and_corrupt_records_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), 1).unwrap();
        w.append(1, 1, &msg("/t", b"one")).unwrap();
        let good_len = w.len;
        w.append(2, 2, &msg("/t", b"two")).unwrap();
        w.flush().unwrap();
        let path = w.path.clone();
        drop(w);
        // Torn: the last record is cut in half.
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let mut r = SegmentReader::open(&path).unwrap().unwrap();
        assert!(matches!(r.next(), Ok(Some(Record::Topic))));
        assert!(matches!(r.next(), Ok(Some(Record::Message(_)))));
        let d = r.next().err().unwrap();
        assert_eq!(d.offset, good_len);
        // Corrupt: a flipped payload byte.
        let mut bad = full.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let mut r = SegmentReader::open(&path).unwrap().unwrap();
        r.next().unwrap();
        r.next().unwrap();
        assert_eq!(r.next().err().unwrap().reason, "checksum mismatch");
    }
}
