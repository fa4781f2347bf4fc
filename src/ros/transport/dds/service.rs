//! ROS 2 services over DDS, as the robot's rmw carries them: requests on the topic
//! `rq/<service>Request`, replies on `rr/<service>Reply`, with the request's id in one
//! of two places.
//!
//! - rmw_fastrtps (ROS 2's default): in the sample's metadata. A request carries, as
//!   its related sample identity, the GUID of the client's reply reader; the reply
//!   carries that GUID with the request's sequence number.
//! - rmw_cyclonedds: in the payload. Each request begins (after the encapsulation
//!   header) with 16 bytes the client chose (its id and a sequence number), and the
//!   reply begins with the same 16 bytes.
//!
//! A server here tells the two apart per request (a Fast DDS request has a related
//! sample identity, a Cyclone one has none), so it answers clients of either rmw. A
//! client must be told which one the server uses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use rustdds::no_key::{DataWriter, DeserializedCacheChange, SimpleDataReader};
use rustdds::rpc::SampleIdentity;
use rustdds::{RTPSEntity as _, SequenceNumber, WriteOptionsBuilder, GUID};
use tokio::sync::mpsc;

use super::raw::{RawAdapter, RawSample, WriterMatches};
use crate::ros::transport::ServiceRmw;

/// The Cyclone request header: the client's id and a sequence number, 16 bytes.
const CYCLONE_HEADER: usize = 16;

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    /// rmw_fastrtps: the reply's related sample identity.
    Metadata(SampleIdentity),
    /// rmw_cyclonedds: the first 16 bytes of the request, echoed.
    Header([u8; CYCLONE_HEADER]),
}

/// A request as a server takes it: the request message (encapsulation header included,
/// request id removed) and where its reply goes.
#[derive(Debug, Clone)]
pub struct Request {
    pub cdr: Bytes,
    pub reply_to: ReplyTo,
    /// The client's reply reader: exactly, when the request names it (rmw_fastrtps),
    /// else any reader of the client's participant (its request writer's GUID).
    pub reader: ReaderOf,
}

/// Who must have been discovered before a reply can reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderOf {
    Exactly(GUID),
    Participant(GUID),
}

impl ReaderOf {
    /// Whether `reader` (a discovered reader's GUID) is the one.
    pub fn is(&self, reader: GUID) -> bool {
        match self {
            ReaderOf::Exactly(g) => reader == *g,
            ReaderOf::Participant(g) => reader.to_bytes()[..12] == g.to_bytes()[..12],
        }
    }
}

/// Splits a request sample into the message and its reply address.
pub fn unwrap_request(dcc: &DeserializedCacheChange<RawSample>) -> Option<Request> {
    let cdr = &dcc.sample.0;
    match dcc.write_options.related_sample_identity() {
        Some(related) => {
            // The client's reply reader, when it named one; the request's writer if not.
            let (writer_guid, reader) = if related.writer_guid == GUID::GUID_UNKNOWN {
                (dcc.writer_guid, ReaderOf::Participant(dcc.writer_guid))
            } else {
                (related.writer_guid, ReaderOf::Exactly(related.writer_guid))
            };
            Some(Request {
                cdr: cdr.clone(),
                reply_to: ReplyTo::Metadata(SampleIdentity {
                    writer_guid,
                    sequence_number: dcc.sequence_number,
                }),
                reader,
            })
        }
        None => {
            let header: [u8; CYCLONE_HEADER] = cdr.get(4..4 + CYCLONE_HEADER)?.try_into().ok()?;
            Some(Request {
                cdr: splice(&cdr[..4], &cdr[4 + CYCLONE_HEADER..]),
                reply_to: ReplyTo::Header(header),
                reader: ReaderOf::Participant(dcc.writer_guid),
            })
        }
    }
}

fn splice(a: &[u8], b: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    Bytes::from(v)
}

/// A message with a Cyclone header put in after the encapsulation header. The header
/// is 16 bytes, so the alignment of what follows is unchanged.
fn with_header(cdr: &Bytes, header: &[u8; CYCLONE_HEADER]) -> Bytes {
    let split = 4.min(cdr.len());
    let mut v = Vec::with_capacity(cdr.len() + CYCLONE_HEADER);
    v.extend_from_slice(&cdr[..split]);
    v.extend_from_slice(header);
    v.extend_from_slice(&cdr[split..]);
    Bytes::from(v)
}

/// How long a reply waits for the client's reply reader to be discovered: a reply
/// written before it is matched is lost (the writer is volatile), and a client that saw
/// the service first may ask before this side has seen its reader. rmw servers wait
/// the same way.
pub const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until `dp` has discovered the client's reader on `reply_topic` (a DDS topic
/// name), or [`READER_WAIT`] has passed; false in that case.
pub async fn wait_for_reader(
    dp: &rustdds::DomainParticipant,
    reply_topic: &str,
    reader: ReaderOf,
) -> bool {
    let deadline = tokio::time::Instant::now() + READER_WAIT;
    loop {
        let found = dp.discovered_readers().iter().any(|r| {
            r.subscription_topic_data.topic_name() == reply_topic
                && reader.is(r.reader_proxy.remote_reader_guid)
        });
        if found {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Up to this many bytes, a sample goes to a reader unfragmented over any Ethernet
/// path (RustDDS fragments what does not fit a 1,500-byte MTU).
pub const UNFRAGMENTED: usize = 1300;

/// Whether a reply of `len` bytes to an rmw_fastrtps client will be sent in fragments
/// that the client may not read: RustDDS 0.15 writes a DATA_FRAG that carries inline
/// QoS (the related sample identity such a reply needs) with one byte too many before
/// the parameter list. It fragments only for a reader with an address off the
/// loopback interface, and only what does not fit one Ethernet frame.
pub fn reply_may_be_garbled(
    dp: &rustdds::DomainParticipant,
    reply_topic: &str,
    reader: ReaderOf,
    to: &ReplyTo,
    len: usize,
) -> bool {
    if !matches!(to, ReplyTo::Metadata(_)) || len <= UNFRAGMENTED {
        return false;
    }
    dp.discovered_readers().iter().any(|r| {
        r.subscription_topic_data.topic_name() == reply_topic
            && reader.is(r.reader_proxy.remote_reader_guid)
            && r.reader_proxy
                .unicast_locator_list
                .iter()
                .any(|l| l.is_udp() && !std::net::SocketAddr::from(*l).ip().is_loopback())
    })
}

/// Writes a reply (`cdr`: the response message, header included).
pub fn send_reply(
    writer: &DataWriter<RawSample, RawAdapter>,
    to: &ReplyTo,
    cdr: &Bytes,
) -> Result<(), String> {
    let (sample, opts) = match to {
        ReplyTo::Metadata(id) => (
            RawSample(cdr.clone()),
            WriteOptionsBuilder::new()
                .source_timestamp(rustdds::Timestamp::now())
                .related_sample_identity(*id)
                .build(),
        ),
        ReplyTo::Header(h) => (
            RawSample(with_header(cdr, h)),
            WriteOptionsBuilder::new()
                .source_timestamp(rustdds::Timestamp::now())
                .build(),
        ),
    };
    writer
        .write_with_options(sample, opts)
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// How a reply is matched to its request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Seq(i64),
    Header([u8; CYCLONE_HEADER]),
}

/// Replies that came before their call was registered (a Fast DDS request's number is
/// known only once it is written), kept briefly.
const EARLY_KEPT: usize = 64;

#[derive(Default)]
struct Pending {
    waiting: HashMap<Key, mpsc::Sender<Bytes>>,
    early: Vec<(Key, Bytes)>,
}

/// A client of one service.
pub struct Client {
    writer: DataWriter<RawSample, RawAdapter>,
    rmw: ServiceRmw,
    /// This client's id in the Cyclone header (the low half of its writer's GUID, as
    /// rmw_cyclonedds does).
    id: [u8; 8],
    reader_guid: GUID,
    next_seq: AtomicU64,
    pending: Arc<Mutex<Pending>>,
    /// Request readers this client's writer is matched with, and since when.
    matches: WriterMatches,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Starts the client on its request writer and reply reader. Needs a tokio runtime.
    pub fn new(
        writer: DataWriter<RawSample, RawAdapter>,
        reader: SimpleDataReader<RawSample, RawAdapter>,
        rmw: ServiceRmw,
    ) -> Self {
        let writer_guid = writer.guid();
        let reader_guid = reader.guid();
        let mut id = [0u8; 8];
        id.copy_from_slice(&writer_guid.to_bytes()[8..16]);
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let p2 = pending.clone();
        let task = tokio::spawn(async move {
            let stream = reader.as_async_stream();
            futures::pin_mut!(stream);
            while let Some(r) = stream.next().await {
                let Ok(dcc) = r else { continue };
                let reply = match rmw {
                    ServiceRmw::Fastrtps => {
                        let Some(rel) = dcc.write_options.related_sample_identity() else {
                            continue;
                        };
                        if rel.writer_guid != reader_guid && rel.writer_guid != writer_guid {
                            continue; // another client's reply
                        }
                        Some((Key::Seq(i64::from(rel.sequence_number)), dcc.sample.0))
                    }
                    ServiceRmw::Cyclonedds => {
                        let cdr = dcc.sample.0;
                        match cdr.get(4..4 + CYCLONE_HEADER) {
                            Some(h) if h[..8] == id => {
                                let h: [u8; CYCLONE_HEADER] = h.try_into().unwrap_or_default();
                                Some((
                                    Key::Header(h),
                                    splice(&cdr[..4], &cdr[4 + CYCLONE_HEADER..]),
                                ))
                            }
                            _ => None,
                        }
                    }
                };
                let Some((key, body)) = reply else { continue };
                let Ok(mut p) = p2.lock() else { break };
                match p.waiting.get(&key) {
                    Some(tx) => {
                        let _ = tx.try_send(body);
                    }
                    None => {
                        if p.early.len() >= EARLY_KEPT {
                            p.early.remove(0);
                        }
                        p.early.push((key, body));
                    }
                }
            }
        });
        Self {
            writer,
            rmw,
            id,
            reader_guid,
            next_seq: AtomicU64::new(1),
            pending,
            matches: WriterMatches::default(),
            task,
        }
    }

    /// Whether a server's request reader has been matched with this client's request
    /// writer for at least `settle` (the server's side matches a moment later, and a
    /// volatile reader drops what came before).
    pub fn server_matched(&self, settle: Duration) -> bool {
        self.matches.settled(&self.writer, settle) > 0
    }

    fn register(&self, key: Key, tx: &mpsc::Sender<Bytes>) {
        if let Ok(mut p) = self.pending.lock() {
            if let Some(i) = p.early.iter().position(|(k, _)| *k == key) {
                let (_, body) = p.early.remove(i);
                let _ = tx.try_send(body);
            }
            p.waiting.insert(key, tx.clone());
        }
    }

    fn forget(&self, keys: &[Key]) {
        if let Ok(mut p) = self.pending.lock() {
            for k in keys {
                p.waiting.remove(k);
            }
        }
    }

    /// Sends one request (`cdr`: the request message, header included).
    fn send(&self, cdr: &Bytes, tx: &mpsc::Sender<Bytes>) -> Result<Key, String> {
        match self.rmw {
            ServiceRmw::Cyclonedds => {
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                let mut h = [0u8; CYCLONE_HEADER];
                h[..8].copy_from_slice(&self.id);
                h[8..].copy_from_slice(&seq.to_le_bytes());
                let key = Key::Header(h);
                self.register(key.clone(), tx);
                let opts = WriteOptionsBuilder::new()
                    .source_timestamp(rustdds::Timestamp::now())
                    .build();
                self.writer
                    .write_with_options(RawSample(with_header(cdr, &h)), opts)
                    .map_err(|e| format!("{e:?}"))?;
                Ok(key)
            }
            ServiceRmw::Fastrtps => {
                // As rmw_fastrtps: the related identity names our reply reader.
                let opts = WriteOptionsBuilder::new()
                    .source_timestamp(rustdds::Timestamp::now())
                    .related_sample_identity(SampleIdentity {
                        writer_guid: self.reader_guid,
                        sequence_number: SequenceNumber::UNKNOWN,
                    })
                    .build();
                let id = self
                    .writer
                    .write_with_options(RawSample(cdr.clone()), opts)
                    .map_err(|e| format!("{e:?}"))?;
                let key = Key::Seq(i64::from(id.sequence_number));
                self.register(key.clone(), tx);
                Ok(key)
            }
        }
    }

    /// Calls the service: sends the request every `resend` (the server may not have
    /// matched this client yet; only for requests that may be carried out twice) until
    /// a reply comes or `timeout` passes. The reply message, header included.
    pub async fn call(
        &self,
        cdr: &Bytes,
        timeout: Duration,
        resend: Option<Duration>,
    ) -> Result<Option<Bytes>, String> {
        let (tx, mut rx) = mpsc::channel(4);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut keys = Vec::new();
        let result = loop {
            match self.send(cdr, &tx) {
                Ok(k) => keys.push(k),
                Err(e) => break Err(e),
            }
            let until = match resend {
                Some(every) => (tokio::time::Instant::now() + every).min(deadline),
                None => deadline,
            };
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(body)) => break Ok(Some(body)),
                Ok(None) => break Err("the client stopped".into()),
                Err(_) if tokio::time::Instant::now() >= deadline => break Ok(None),
                Err(_) => {}
            }
        };
        self.forget(&keys);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cyclone_header_goes_in_after_the_encapsulation_and_comes_out_whole() {
        let msg = Bytes::from_static(&[0, 1, 0, 0, 1, 0, 0, 0, 7]);
        let h = [9u8; CYCLONE_HEADER];
        let with = with_header(&msg, &h);
        assert_eq!(&with[..4], &[0, 1, 0, 0]);
        assert_eq!(&with[4..20], &h);
        assert_eq!(&with[20..], &msg[4..]);
        assert_eq!(splice(&with[..4], &with[20..]), msg);
    }
}
