//! Fuzzes the MQTT packet reader with what a broker could send: the first byte picks
//! the protocol version (3.1.1 or 5, every property) and a packet size limit; the rest is
//! a stream of packets, read until it ends or fails. Must never panic, never loop, and
//! never hold more than the input.
#![no_main]

use bytes::BytesMut;
use edge_agent::mqtt::wire::{self, Read, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let version = if pick & 1 == 0 { Version::V311 } else { Version::V5 };
    let limit = [16usize, 256, 4096, 1 << 20][usize::from(pick >> 1) % 4];
    let mut buf = BytesMut::from(stream);
    while let Ok(Some(_)) = wire::read_packet(version, &mut buf, usize::MAX) {}
    // The reader that skips oversized PUBLISHes, as the connection uses it.
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        match wire::read_packet_or_skip(version, &mut buf, limit) {
            Ok(Some(Read::Packet(_))) => {}
            Ok(Some(Read::Oversized(o))) => {
                let skip = o.remaining.min(buf.len());
                bytes::Buf::advance(&mut buf, skip);
            }
            Ok(None) | Err(_) => break,
        }
        assert!(buf.len() < before, "a packet was read without taking bytes");
    }
});
