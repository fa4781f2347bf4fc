//! The call log: which cloud service requests (by rule and id) were carried out, and
//! the reply each got, so that a request that comes again (a QoS 1 redelivery after a
//! reconnect or a restart, the cloud's own retry) gets the stored reply and the service
//! is not called a second time.
//!
//! A request is written down, and fsynced, *before* its service is called, and again
//! with its reply once answered. A request found written down without a reply was in
//! progress when the agent stopped (a power cut, a kill): whether the service ran is
//! unknown, so it is answered as such and not called again.
//!
//! The log is a file of JSON lines in the state folder, kept to the most recent
//! [`KEPT`] requests: appended to, and rewritten (temporary file, fsync, rename) when it
//! holds twice that many lines. A torn last line (a cut mid-write) is skipped. A
//! database would do the same with more weight; one line per call, fsynced, is all the
//! durability this needs (docs/commands.md).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many requests the log remembers.
pub const KEPT: usize = 10_000;

/// What the log knows of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// Written down before its call; no reply was recorded.
    Started,
    /// Answered with this reply body.
    Answered(Value),
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    rule: String,
    id: String,
    at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply: Option<Value>,
}

type Key = (String, String);

pub struct CallLog {
    path: PathBuf,
    file: File,
    known: HashMap<Key, Known>,
    /// Keys, oldest first.
    order: VecDeque<Key>,
    lines: usize,
    kept: usize,
}

impl CallLog {
    /// Opens (or creates) the log at `path`; `kept` requests are remembered.
    pub fn open(path: &Path, kept: usize) -> std::io::Result<Self> {
        let mut log = Self {
            path: path.to_owned(),
            file: OpenOptions::new().create(true).append(true).open(path)?,
            known: HashMap::new(),
            order: VecDeque::new(),
            lines: 0,
            kept: kept.max(1),
        };
        let reader = BufReader::new(File::open(path)?);
        let mut damaged = 0usize;
        for line in reader.split(b'\n') {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Line>(&line) {
                Ok(l) => {
                    log.lines += 1;
                    log.remember(
                        (l.rule, l.id),
                        l.reply.map_or(Known::Started, Known::Answered),
                    );
                }
                Err(_) => damaged += 1,
            }
        }
        if damaged > 0 {
            tracing::warn!(path = %path.display(), lines = damaged,
                "Unreadable lines in the service call log were skipped (a cut while writing).");
            // Rewritten at once, so the next append does not follow a torn line.
            log.rewrite()?;
        }
        Ok(log)
    }

    fn remember(&mut self, key: Key, what: Known) {
        if self.known.insert(key.clone(), what).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.kept {
                if let Some(old) = self.order.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
    }

    /// What is known of request `id` of rule `rule`.
    pub fn get(&self, rule: &str, id: &str) -> Option<&Known> {
        self.known.get(&(rule.to_owned(), id.to_owned()))
    }

    /// Writes down that the request is about to be carried out; on disk when this returns.
    pub fn started(&mut self, rule: &str, id: &str, now_ms: u64) -> std::io::Result<()> {
        self.append(rule, id, now_ms, None)
    }

    /// Writes down the request's reply; on disk when this returns.
    pub fn answered(
        &mut self,
        rule: &str,
        id: &str,
        now_ms: u64,
        reply: Value,
    ) -> std::io::Result<()> {
        self.append(rule, id, now_ms, Some(reply))
    }

    fn append(
        &mut self,
        rule: &str,
        id: &str,
        at_ms: u64,
        reply: Option<Value>,
    ) -> std::io::Result<()> {
        let line = Line {
            rule: rule.to_owned(),
            id: id.to_owned(),
            at_ms,
            reply,
        };
        let mut text = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.file.write_all(&text)?;
        self.file.sync_data()?;
        self.lines += 1;
        self.remember(
            (line.rule, line.id),
            line.reply.map_or(Known::Started, Known::Answered),
        );
        if self.lines > 2 * self.kept {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Writes what is remembered to a new file and puts it in place of the old one.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::new();
            for key in &self.order {
                let reply = match self.known.get(key) {
                    Some(Known::Answered(v)) => Some(v.clone()),
                    _ => None,
                };
                let line = Line {
                    rule: key.0.clone(),
                    id: key.1.clone(),
                    at_ms: 0,
                    reply,
                };
                serde_json::to_writer(&mut buf, &line).map_err(std::io::Error::other)?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = self.order.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_was_written_is_known_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.jsonl");
        {
            let mut log = CallLog::open(&path, 100).unwrap();
            assert_eq!(log.get("r", "1"), None);
            log.started("r", "1", 1).unwrap();
            log.answered("r", "1", 2, json!({"code": 200})).unwrap();
            log.started("r", "2", 3).unwrap();
            log.started("other", "1", 4).unwrap();
        }
        let log = CallLog::open(&path, 100).unwrap();
        assert_eq!(
            log.get("r", "1"),
            Some(&Known::Answered(json!({"code": 200})))
        );
        assert_eq!(log.get("r", "2"), Some(&Known::Started));
        assert_eq!(log.get("other", "1"), Some(&Known::Started));
        assert_eq!(log.get("other", "2"), None);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.jsonl");
        {
            let mut log = CallLog::open(&path, 100).unwrap();
            log.answered("r", "1", 1, json!({"code": 200})).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"rule":"r","id":"2","at_"#).unwrap();
        drop(f);
        {
            let mut log = CallLog::open(&path, 100).unwrap();
            assert_eq!(log.get("r", "2"), None);
            log.started("r", "3", 2).unwrap();
        }
        let log = CallLog::open(&path, 100).unwrap();
        assert!(matches!(log.get("r", "1"), Some(Known::Answered(_))));
        assert_eq!(log.get("r", "3"), Some(&Known::Started));
    }

    #[test]
    fn only_the_most_recent_requests_are_kept_and_the_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.jsonl");
        let mut log = CallLog::open(&path, 10).unwrap();
        for i in 0..55 {
            let id = i.to_string();
            log.started("r", &id, i).unwrap();
            log.answered("r", &id, i, json!({"n": i})).unwrap();
        }
        assert_eq!(log.get("r", "44"), None);
        assert_eq!(log.get("r", "45"), Some(&Known::Answered(json!({"n": 45}))));
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 20, "{lines} lines");
        drop(log);
        let log = CallLog::open(&path, 10).unwrap();
        assert_eq!(log.get("r", "54"), Some(&Known::Answered(json!({"n": 54}))));
        assert_eq!(log.get("r", "44"), None);
    }
}
