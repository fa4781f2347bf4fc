//! Samples as bytes: RustDDS hands a reader the serialized payload and its encoding, and
//! takes a writer's payload as bytes, through adapters. These adapters copy the bytes
//! and nothing else, so a message of any type moves without code for its type, and an
//! image costs one copy.

use bytes::Bytes;
use rustdds::no_key::{Decode, DefaultDecoder, DeserializerAdapter, SerializerAdapter};
use rustdds::RepresentationIdentifier;

/// One serialized message, encapsulation header included (`00 01 00 00` little-endian,
/// `00 00 00 00` big-endian), as the codec reads and writes it.
#[derive(Debug, Clone)]
pub struct RawSample(pub Bytes);

/// A payload RustDDS could not hand over (never produced: any bytes are a sample).
#[derive(Debug, thiserror::Error)]
#[error("raw sample: {0}")]
pub struct RawError(String);

/// The adapter for readers and writers of [`RawSample`].
pub struct RawAdapter;

/// Plain CDR (XCDR1), as every ROS 2 middleware writes it.
const ENCODINGS: [RepresentationIdentifier; 2] = [
    RepresentationIdentifier::CDR_LE,
    RepresentationIdentifier::CDR_BE,
];

impl DeserializerAdapter<RawSample> for RawAdapter {
    type Error = RawError;
    type Decoded = RawSample;

    fn supported_encodings() -> &'static [RepresentationIdentifier] {
        &ENCODINGS
    }

    fn transform_decoded(decoded: RawSample) -> RawSample {
        decoded
    }
}

#[derive(Clone)]
pub struct RawDecoder;

impl<'de> Decode<'de, RawSample> for RawDecoder {
    type Error = RawError;

    fn decode_bytes(
        self,
        input_bytes: &'de [u8],
        encoding: RepresentationIdentifier,
    ) -> Result<RawSample, RawError> {
        let mut out = Vec::with_capacity(input_bytes.len() + 4);
        out.extend_from_slice(&encoding.to_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(input_bytes);
        Ok(RawSample(Bytes::from(out)))
    }
}

impl DefaultDecoder<RawSample> for RawAdapter {
    type Decoder = RawDecoder;
    const DECODER: RawDecoder = RawDecoder;
}

impl SerializerAdapter<RawSample> for RawAdapter {
    type Error = RawError;

    fn output_encoding() -> RepresentationIdentifier {
        RepresentationIdentifier::CDR_LE
    }

    fn to_bytes(value: &RawSample) -> Result<Bytes, RawError> {
        Ok(body_padded(&value.0))
    }
}

/// The body of a little-endian sample (the header goes: RustDDS writes its own), with
/// zero bytes appended so the whole sample (header + body) is a multiple of 4: Cyclone
/// DDS 0.10 (inside ROS 2 Humble and Jazzy) drops fragmented samples whose size is not,
/// and the padding is harmless to every reader.
pub fn body_padded(cdr: &Bytes) -> Bytes {
    let body = cdr.slice(4.min(cdr.len())..);
    let pad = (4 - body.len() % 4) % 4;
    if pad == 0 {
        return body;
    }
    let mut v = Vec::with_capacity(body.len() + pad);
    v.extend_from_slice(&body);
    v.resize(body.len() + pad, 0);
    Bytes::from(v)
}

/// Whether a sample is big-endian (its encapsulation header says so).
pub fn is_big_endian(cdr: &[u8]) -> bool {
    cdr.len() >= 2 && cdr[..2] == [0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_makes_the_sample_a_multiple_of_4() {
        for len in 0..12usize {
            let cdr = Bytes::from([vec![0, 1, 0, 0], vec![7u8; len]].concat());
            let body = RawAdapter::to_bytes(&RawSample(cdr.clone())).unwrap();
            assert_eq!((4 + body.len()) % 4, 0);
            assert_eq!(&body[..len], &cdr[4..]);
            assert!(body[len..].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn a_payload_comes_back_with_its_header() {
        let s = RawDecoder
            .decode_bytes(&[1, 2, 3], RepresentationIdentifier::CDR_BE)
            .unwrap();
        assert_eq!(&s.0[..], &[0, 0, 0, 0, 1, 2, 3]);
        assert!(is_big_endian(&s.0));
        let s = RawDecoder
            .decode_bytes(&[9], RepresentationIdentifier::CDR_LE)
            .unwrap();
        assert_eq!(&s.0[..], &[0, 1, 0, 0, 9]);
        assert!(!is_big_endian(&s.0));
    }
}

/// Readers of other participants a writer is matched with, and since when, taken from
/// the writer's own status events. Discovery knows a reader a moment before the writer
/// does, and what is written in between is not sent to that reader; a volatile reader
/// also drops what came before its own side matched, so callers count a reader only
/// once it has been matched for a while.
#[derive(Debug, Default)]
pub struct WriterMatches {
    matched: std::sync::Mutex<std::collections::HashMap<rustdds::GUID, std::time::Instant>>,
    /// A reader matched since the last [`WriterMatches::take_new`].
    new_reader: std::sync::atomic::AtomicBool,
}

impl WriterMatches {
    /// Takes `writer`'s status events in; how many readers have been matched for at
    /// least `settle`.
    pub fn settled(
        &self,
        writer: &rustdds::no_key::DataWriter<RawSample, RawAdapter>,
        settle: std::time::Duration,
    ) -> usize {
        use rustdds::{RTPSEntity as _, StatusEvented as _};
        let Ok(mut matched) = self.matched.lock() else {
            return 0;
        };
        let own = writer.guid().prefix;
        while let Some(st) = writer.try_recv_status() {
            if let rustdds::DataWriterStatus::PublicationMatched {
                current, reader, ..
            } = st
            {
                if reader.prefix == own {
                    continue;
                }
                if current.count_change() > 0 {
                    matched
                        .entry(reader)
                        .or_insert_with(std::time::Instant::now);
                    self.new_reader
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                } else if current.count_change() < 0 {
                    matched.remove(&reader);
                }
            }
        }
        matched.values().filter(|at| at.elapsed() >= settle).count()
    }

    /// Whether a reader was matched since the last call.
    pub fn take_new(&self) -> bool {
        self.new_reader
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}
