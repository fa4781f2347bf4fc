//! MQTT 3.1.1 and 5 packets: the ones the agent sends, and the ones a broker sends back.
//!
//! Encoding appends to a caller's buffer, so a batch of packets leaves in one write.
//! Decoding takes one complete packet off the front of the read buffer; a packet that
//! breaks the protocol is an error naming what was wrong, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::message::{Message, Props, QoS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed {packet} packet: {what}")]
    Malformed { packet: &'static str, what: String },
    #[error("the broker sent a packet of {size} bytes, over the limit of {limit} (mqtt.max_packet_size)")]
    TooLarge { size: usize, limit: usize },
}

fn malformed(packet: &'static str, what: impl Into<String>) -> WireError {
    WireError::Malformed {
        packet,
        what: what.into(),
    }
}

/// What CONNECT carries.
pub struct Connect<'a> {
    pub version: Version,
    pub client_id: &'a str,
    pub keep_alive_secs: u16,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub will: Option<&'a Message>,
    /// The largest packet the agent accepts (told to an MQTT 5 broker).
    pub max_packet_size: u32,
    /// Clean Session (3.1.1) / Clean Start (5): false resumes the broker's session, with
    /// the messages it kept for this client while it was away.
    pub clean_start: bool,
    /// How long an MQTT 5 broker keeps the session after a disconnect (0: not at all).
    pub session_expiry_secs: u32,
    /// How many QoS 1 messages an MQTT 5 broker may send before this client acknowledges
    /// them (Receive Maximum).
    pub receive_max: u16,
}

const PUBLISH: u8 = 3;

fn qos_bits(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
    }
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 128 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// Size of an MQTT 5 property block for a message's properties (without its length).
fn props_len(p: Option<&Props>) -> usize {
    p.map_or(0, |p| {
        p.content_type.as_ref().map_or(0, |c| 3 + c.len())
            + p.expiry.map_or(0, |_| 5)
            + p.response_topic.as_ref().map_or(0, |t| 3 + t.len())
            + p.correlation.as_ref().map_or(0, |c| 3 + c.len())
            + p.user
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
    })
}

fn put_props(out: &mut BytesMut, p: Option<&Props>) {
    put_varint(out, props_len(p));
    if let Some(p) = p {
        if let Some(e) = p.expiry {
            out.put_u8(0x02);
            out.put_u32(e);
        }
        if let Some(c) = &p.content_type {
            out.put_u8(0x03);
            put_str(out, c.as_bytes());
        }
        if let Some(t) = &p.response_topic {
            out.put_u8(0x08);
            put_str(out, t.as_bytes());
        }
        if let Some(c) = &p.correlation {
            out.put_u8(0x09);
            put_str(out, c);
        }
        for (k, v) in &p.user {
            out.put_u8(0x26);
            put_str(out, k.as_bytes());
            put_str(out, v.as_bytes());
        }
    }
}

pub fn encode_connect(c: &Connect<'_>, out: &mut BytesMut) {
    let v5 = c.version == Version::V5;
    // Variable header: protocol name, level, flags, keep alive (+ properties: Maximum
    // Packet Size, Receive Maximum, Session Expiry Interval).
    let connect_props = if v5 {
        5 + 3 + if c.session_expiry_secs > 0 { 5 } else { 0 }
    } else {
        0
    };
    let mut len = 2 + 4 + 1 + 1 + 2;
    if v5 {
        len += varint_len(connect_props) + connect_props;
    }
    len += 2 + c.client_id.len();
    if let Some(w) = c.will {
        if v5 {
            let wp = props_len(w.props.as_deref());
            len += varint_len(wp) + wp;
        }
        len += 2 + w.topic.len() + 2 + w.payload.len();
    }
    if let Some(u) = c.username {
        len += 2 + u.len();
    }
    if let Some(p) = c.password {
        len += 2 + p.len();
    }
    out.reserve(5 + len);
    out.put_u8(0x10);
    put_varint(out, len);
    put_str(out, b"MQTT");
    out.put_u8(if v5 { 5 } else { 4 });
    // The outbox owns resending what the agent sends; a kept session is for what the
    // broker holds for the agent (commands sent while it was away).
    let mut flags = if c.clean_start { 0x02 } else { 0 };
    if let Some(w) = c.will {
        flags |= 0x04 | (qos_bits(w.qos) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive_secs);
    if v5 {
        put_varint(out, connect_props);
        out.put_u8(0x27);
        out.put_u32(c.max_packet_size);
        out.put_u8(0x21);
        out.put_u16(c.receive_max);
        if c.session_expiry_secs > 0 {
            out.put_u8(0x11);
            out.put_u32(c.session_expiry_secs);
        }
    }
    put_str(out, c.client_id.as_bytes());
    if let Some(w) = c.will {
        if v5 {
            put_props(out, w.props.as_deref());
        }
        put_str(out, w.topic.as_bytes());
        put_str(out, &w.payload);
    }
    if let Some(u) = c.username {
        put_str(out, u.as_bytes());
    }
    if let Some(p) = c.password {
        put_str(out, p.as_bytes());
    }
}

/// Bytes `encode_publish` writes for this message.
pub fn publish_size(v: Version, m: &Message) -> usize {
    let len = publish_remaining(v, m);
    1 + varint_len(len) + len
}

fn publish_remaining(v: Version, m: &Message) -> usize {
    let mut len = 2 + m.topic.len() + m.payload.len();
    if m.qos != QoS::AtMostOnce {
        len += 2;
    }
    if v == Version::V5 {
        let p = props_len(m.props.as_deref());
        len += varint_len(p) + p;
    }
    len
}

/// A PUBLISH; `pkid` is ignored for QoS 0. MQTT 3.1.1 has no properties, so they are
/// left out there.
pub fn encode_publish(v: Version, m: &Message, pkid: u16, out: &mut BytesMut) {
    let len = publish_remaining(v, m);
    out.reserve(5 + len);
    let mut first = (PUBLISH << 4) | (qos_bits(m.qos) << 1);
    if m.retain {
        first |= 0x01;
    }
    out.put_u8(first);
    put_varint(out, len);
    put_str(out, m.topic.as_bytes());
    if m.qos != QoS::AtMostOnce {
        out.put_u16(pkid);
    }
    if v == Version::V5 {
        put_props(out, m.props.as_deref());
    }
    out.put_slice(&m.payload);
}

fn encode_ack(kind: u8, pkid: u16, out: &mut BytesMut) {
    // In MQTT 5 a remaining length of 2 means reason code 0 and no properties.
    out.put_u8(kind);
    out.put_u8(2);
    out.put_u16(pkid);
}

pub fn encode_puback(pkid: u16, out: &mut BytesMut) {
    encode_ack(0x40, pkid, out);
}

pub fn encode_pubrec(pkid: u16, out: &mut BytesMut) {
    encode_ack(0x50, pkid, out);
}

pub fn encode_pubcomp(pkid: u16, out: &mut BytesMut) {
    encode_ack(0x70, pkid, out);
}

pub fn encode_subscribe(v: Version, pkid: u16, filter: &str, qos: QoS, out: &mut BytesMut) {
    let v5 = v == Version::V5;
    let len = 2 + usize::from(v5) + 2 + filter.len() + 1;
    out.put_u8(0x82);
    put_varint(out, len);
    out.put_u16(pkid);
    if v5 {
        put_varint(out, 0);
    }
    put_str(out, filter.as_bytes());
    out.put_u8(qos_bits(qos));
}

pub fn encode_pingreq(out: &mut BytesMut) {
    out.put_slice(&[0xC0, 0]);
}

pub fn encode_disconnect(out: &mut BytesMut) {
    // Reason "normal disconnection" in both versions: the broker drops the will.
    out.put_slice(&[0xE0, 0]);
}

/// What a broker's CONNACK said.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConnAck {
    pub code: u8,
    /// The broker resumed a session it kept for this client.
    pub session_present: bool,
    /// How many QoS 1 messages may be unacknowledged at once (MQTT 5).
    pub receive_max: Option<u16>,
    /// The keep alive the broker imposes (MQTT 5).
    pub server_keep_alive: Option<u16>,
    /// The largest packet the broker accepts (MQTT 5).
    pub max_packet_size: Option<u32>,
    /// The highest QoS the broker accepts in a PUBLISH (MQTT 5; absent: 2).
    pub max_qos: Option<u8>,
    pub reason: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    ConnAck(ConnAck),
    Publish {
        qos: u8,
        pkid: u16,
        topic: String,
        payload: Bytes,
        props: Option<Props>,
    },
    PubAck {
        pkid: u16,
        code: u8,
    },
    PubRec {
        pkid: u16,
    },
    PubRel {
        pkid: u16,
    },
    PubComp {
        pkid: u16,
    },
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    UnsubAck,
    PingResp,
    Disconnect {
        code: u8,
        reason: Option<String>,
    },
    Auth,
}

/// A cursor over one packet's body; running past its end is a malformed packet.
struct Rd {
    b: Bytes,
    packet: &'static str,
}

impl Rd {
    fn need(&self, n: usize, what: &str) -> Result<(), WireError> {
        if self.b.remaining() < n {
            return Err(malformed(self.packet, format!("ends inside {what}")));
        }
        Ok(())
    }
    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        self.need(1, what)?;
        Ok(self.b.get_u8())
    }
    fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        self.need(2, what)?;
        Ok(self.b.get_u16())
    }
    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        self.need(4, what)?;
        Ok(self.b.get_u32())
    }
    fn varint(&mut self, what: &str) -> Result<usize, WireError> {
        let mut n = 0usize;
        for i in 0..4 {
            let b = self.u8(what)?;
            n |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(malformed(
            self.packet,
            format!("{what} is longer than 4 bytes"),
        ))
    }
    fn binary(&mut self, what: &str) -> Result<Bytes, WireError> {
        let n = usize::from(self.u16(what)?);
        self.need(n, what)?;
        Ok(self.b.split_to(n))
    }
    fn string(&mut self, what: &str) -> Result<String, WireError> {
        let raw = self.binary(what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| malformed(self.packet, format!("{what} is not UTF-8")))
    }
    /// An MQTT 5 property block, as (id, value) pairs.
    fn props(&mut self) -> Result<Vec<(u8, Prop)>, WireError> {
        let len = self.varint("the property length")?;
        self.need(len, "the properties")?;
        let mut p = Rd {
            b: self.b.split_to(len),
            packet: self.packet,
        };
        let mut out = Vec::new();
        while p.b.has_remaining() {
            let id = p.u8("a property id")?;
            let v = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                    Prop::Int(u32::from(p.u8("a property")?))
                }
                0x13 | 0x21 | 0x22 | 0x23 => Prop::Int(u32::from(p.u16("a property")?)),
                0x02 | 0x11 | 0x18 | 0x27 => Prop::Int(p.u32("a property")?),
                0x0B => Prop::Int(p.varint("a property")? as u32),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                    Prop::Str(p.string("a property")?)
                }
                0x09 => Prop::Bin(p.binary("a property")?),
                0x16 => {
                    p.binary("a property")?;
                    Prop::Other
                }
                0x26 => Prop::Pair(p.string("a user property")?, p.string("a user property")?),
                other => {
                    return Err(malformed(
                        self.packet,
                        format!("unknown property id 0x{other:02X}"),
                    ))
                }
            };
            out.push((id, v));
        }
        Ok(out)
    }
}

enum Prop {
    Int(u32),
    Str(String),
    Bin(Bytes),
    Pair(String, String),
    Other,
}

fn reason_of(props: &[(u8, Prop)]) -> Option<String> {
    props.iter().find_map(|(id, v)| match (id, v) {
        (0x1F, Prop::Str(s)) => Some(s.clone()),
        _ => None,
    })
}

/// Takes one complete packet off the front of `buf`; `Ok(None)` while it is incomplete.
/// A PUBLISH larger than the limit, taken off the buffer without keeping its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    pub size: usize,
    pub topic: String,
    pub qos: u8,
    pub pkid: u16,
    /// Bytes of it still to come after what was taken off the buffer: to be skipped.
    pub remaining: usize,
}

/// What [`read_packet_or_skip`] found.
#[derive(Debug, PartialEq)]
pub enum Read {
    Packet(Packet),
    Oversized(Oversized),
}

/// As [`read_packet`], except that a PUBLISH over `limit` is not an error: once its topic
/// and packet id are in `buf`, it is taken off (what is there of it) and described, so
/// the connection can skip the rest and carry on.
pub fn read_packet_or_skip(
    v: Version,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Option<Read>, WireError> {
    match read_packet(v, buf, limit) {
        Ok(p) => Ok(p.map(Read::Packet)),
        Err(WireError::TooLarge { size, limit }) if buf[0] >> 4 == PUBLISH => {
            let header = 1 + buf[1..]
                .iter()
                .take(4)
                .position(|b| b & 0x80 == 0)
                .map_or(4, |p| p + 1);
            let qos = (buf[0] >> 1) & 3;
            let Some(tl) = buf.get(header..header + 2) else {
                return Ok(None);
            };
            let tl = usize::from(u16::from_be_bytes([tl[0], tl[1]]));
            let need = header + 2 + tl + if qos > 0 { 2 } else { 0 };
            if need > size {
                return Err(malformed("PUBLISH", "the topic runs past the packet"));
            }
            if buf.len() < need {
                return Ok(None);
            }
            let topic = String::from_utf8_lossy(&buf[header + 2..header + 2 + tl]).into_owned();
            let pkid = if qos > 0 {
                u16::from_be_bytes([buf[header + 2 + tl], buf[header + 3 + tl]])
            } else {
                0
            };
            let take = buf.len().min(size);
            buf.advance(take);
            let _ = limit;
            Ok(Some(Read::Oversized(Oversized {
                size,
                topic,
                qos,
                pkid,
                remaining: size - take,
            })))
        }
        Err(e) => Err(e),
    }
}

pub fn read_packet(
    v: Version,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Option<Packet>, WireError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut header = 1;
    loop {
        if header > 4 {
            return Err(malformed(
                "incoming",
                "remaining length is longer than 4 bytes",
            ));
        }
        let Some(&b) = buf.get(header) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * (header - 1));
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    let total = header + len;
    if total > limit {
        return Err(WireError::TooLarge { size: total, limit });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header);
    decode(v, first, frame).map(Some)
}

fn decode(v: Version, first: u8, body: Bytes) -> Result<Packet, WireError> {
    let v5 = v == Version::V5;
    let kind = first >> 4;
    let name = match kind {
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        9 => "SUBACK",
        11 => "UNSUBACK",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        other => {
            return Err(malformed(
                "incoming",
                format!("packet type {other} is not one a broker sends"),
            ))
        }
    };
    let mut r = Rd {
        b: body,
        packet: name,
    };
    Ok(match kind {
        2 => {
            let flags = r.u8("the acknowledge flags")?;
            let code = r.u8("the return code")?;
            let mut ack = ConnAck {
                code,
                session_present: flags & 1 != 0,
                ..Default::default()
            };
            if v5 && r.b.has_remaining() {
                let props = r.props()?;
                for (id, val) in &props {
                    match (id, val) {
                        (0x21, Prop::Int(n)) => ack.receive_max = Some(*n as u16),
                        (0x13, Prop::Int(n)) => ack.server_keep_alive = Some(*n as u16),
                        (0x27, Prop::Int(n)) => ack.max_packet_size = Some(*n),
                        (0x24, Prop::Int(n)) => ack.max_qos = Some(*n as u8),
                        _ => {}
                    }
                }
                ack.reason = reason_of(&props);
            }
            Packet::ConnAck(ack)
        }
        3 => {
            let qos = (first >> 1) & 0x03;
            if qos == 3 {
                return Err(malformed(name, "QoS 3"));
            }
            let topic = r.string("the topic")?;
            let pkid = if qos > 0 { r.u16("the packet id")? } else { 0 };
            let props = if v5 {
                let mut p = Props::default();
                for (id, val) in r.props()? {
                    match (id, val) {
                        (0x02, Prop::Int(n)) => p.expiry = Some(n),
                        (0x03, Prop::Str(s)) => p.content_type = Some(s),
                        (0x08, Prop::Str(s)) => p.response_topic = Some(s),
                        (0x09, Prop::Bin(b)) => p.correlation = Some(b),
                        (0x26, Prop::Pair(k, v)) => p.user.push((k, v)),
                        _ => {}
                    }
                }
                Some(p)
            } else {
                None
            };
            Packet::Publish {
                qos,
                pkid,
                topic,
                payload: r.b,
                props,
            }
        }
        4..=7 => {
            let pkid = r.u16("the packet id")?;
            let code = if r.b.has_remaining() {
                r.u8("the reason code")?
            } else {
                0
            };
            match kind {
                4 => Packet::PubAck { pkid, code },
                5 => Packet::PubRec { pkid },
                6 => Packet::PubRel { pkid },
                _ => Packet::PubComp { pkid },
            }
        }
        9 => {
            let pkid = r.u16("the packet id")?;
            if v5 {
                r.props()?;
            }
            if !r.b.has_remaining() {
                return Err(malformed(name, "no return code"));
            }
            Packet::SubAck {
                pkid,
                codes: r.b.to_vec(),
            }
        }
        11 => Packet::UnsubAck,
        13 => Packet::PingResp,
        14 => {
            let code = if r.b.has_remaining() {
                r.u8("the reason code")?
            } else {
                0
            };
            let reason = if v5 && r.b.has_remaining() {
                reason_of(&r.props()?)
            } else {
                None
            };
            Packet::Disconnect { code, reason }
        }
        _ => Packet::Auth,
    })
}

/// Text for a CONNACK or DISCONNECT code, as a technician would look it up.
pub fn code_text(v: Version, code: u8) -> &'static str {
    match (v, code) {
        (Version::V311, 1) => "unacceptable protocol version",
        (Version::V311, 2) => "client identifier rejected",
        (Version::V311, 3) => "server unavailable",
        (Version::V311, 4) => "bad user name or password",
        (Version::V311, 5) => "not authorized",
        (Version::V5, 0x80) => "unspecified error",
        (Version::V5, 0x81) => "malformed packet",
        (Version::V5, 0x82) => "protocol error",
        (Version::V5, 0x83) => "implementation specific error",
        (Version::V5, 0x84) => "unsupported protocol version",
        (Version::V5, 0x85) => "client identifier not valid",
        (Version::V5, 0x86) => "bad user name or password",
        (Version::V5, 0x87) => "not authorized",
        (Version::V5, 0x88) => "server unavailable",
        (Version::V5, 0x89) => "server busy",
        (Version::V5, 0x8A) => "banned",
        (Version::V5, 0x8B) => "server shutting down",
        (Version::V5, 0x8C) => "bad authentication method",
        (Version::V5, 0x8D) => "keep alive timeout",
        (Version::V5, 0x8E) => "session taken over",
        (Version::V5, 0x90) => "topic name invalid",
        (Version::V5, 0x93) => "receive maximum exceeded",
        (Version::V5, 0x95) => "packet too large",
        (Version::V5, 0x97) => "quota exceeded",
        (Version::V5, 0x9C) => "use another server",
        (Version::V5, 0x9D) => "server moved",
        (Version::V5, 0x9F) => "connection rate exceeded",
        _ => "unknown code",
    }
}

/// Whether a refusal code means the credentials (or their rights) are wrong.
pub fn is_auth_code(v: Version, code: u8) -> bool {
    match v {
        Version::V311 => matches!(code, 4 | 5),
        Version::V5 => matches!(code, 0x86 | 0x87 | 0x8C),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: Version, bytes: &[u8]) -> Result<Option<Packet>, WireError> {
        let mut b = BytesMut::from(bytes);
        read_packet(v, &mut b, 1 << 20)
    }

    #[test]
    fn a_publish_reads_back_as_written_in_both_versions() {
        let mut m = Message::new("a/b", &b"{\"x\":1}"[..], QoS::AtLeastOnce);
        m.props = Some(Box::new(Props {
            content_type: Some("image/jpeg".into()),
            user: vec![("k".into(), "v".into())],
            expiry: Some(3600),
            response_topic: Some("re/ply".into()),
            correlation: Some(Bytes::from_static(b"\x00\x01id")),
        }));
        for v in [Version::V311, Version::V5] {
            let mut out = BytesMut::new();
            encode_publish(v, &m, 7, &mut out);
            assert_eq!(out.len(), publish_size(v, &m));
            // Two packets back to back, the second one split across reads.
            let mut two = out.clone();
            two.extend_from_slice(&out);
            let mut buf = BytesMut::from(&two[..out.len() + 3]);
            let p = read_packet(v, &mut buf, 1 << 20).unwrap().unwrap();
            let Packet::Publish {
                qos,
                pkid,
                topic,
                payload,
                props,
            } = p
            else {
                panic!("{p:?}")
            };
            assert_eq!((qos, pkid, topic.as_str()), (1, 7, "a/b"));
            assert_eq!(&payload[..], b"{\"x\":1}");
            if v == Version::V5 {
                let props = props.unwrap();
                assert_eq!(props.content_type.as_deref(), Some("image/jpeg"));
                assert_eq!(props.user, vec![("k".to_owned(), "v".to_owned())]);
            } else {
                assert!(props.is_none());
            }
            assert_eq!(read_packet(v, &mut buf, 1 << 20).unwrap(), None);
            buf.extend_from_slice(&two[out.len() + 3..]);
            assert!(matches!(
                read_packet(v, &mut buf, 1 << 20).unwrap(),
                Some(Packet::Publish { pkid: 7, .. })
            ));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn large_payloads_get_a_multi_byte_length() {
        let m = Message::new("t", vec![7u8; 300_000], QoS::AtMostOnce);
        let mut out = BytesMut::new();
        encode_publish(Version::V311, &m, 0, &mut out);
        assert_eq!(out.len(), publish_size(Version::V311, &m));
        match one(Version::V311, &out).unwrap().unwrap() {
            Packet::Publish { payload, qos, .. } => {
                assert_eq!(payload.len(), 300_000);
                assert_eq!(qos, 0);
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn connack_codes_and_mqtt5_limits_are_read() {
        let p = one(Version::V311, &[0x20, 2, 0, 5]).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::ConnAck(ConnAck {
                code: 5,
                ..Default::default()
            })
        );
        assert!(is_auth_code(Version::V311, 5));
        // MQTT 5: receive maximum 20, server keep alive 30, a reason string, maximum
        // packet size 2000, maximum QoS 0.
        let body = [
            0x20, 21, 0, 0, 18, 0x21, 0, 20, 0x13, 0, 30, 0x1F, 0, 2, b'o', b'k', 0x27, 0, 0, 0x07,
            0xD0, 0x24, 0,
        ];
        let p = one(Version::V5, &body).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::ConnAck(ConnAck {
                code: 0,
                session_present: false,
                receive_max: Some(20),
                server_keep_alive: Some(30),
                max_packet_size: Some(2000),
                max_qos: Some(0),
                reason: Some("ok".into()),
            })
        );
    }

    #[test]
    fn broken_packets_are_errors_that_say_what_is_wrong() {
        let cases: [(&[u8], &str); 5] = [
            (&[0x00, 0], "packet type 0"),
            (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], "longer than 4 bytes"),
            (&[0x30, 3, 0, 9, b'a'], "ends inside the topic"),
            (&[0x30, 4, 0, 2, 0xC3, 0x28], "not UTF-8"),
            (&[0x36, 3, 0, 1, b'a'], "QoS 3"),
        ];
        for (bytes, want) in cases {
            let e = one(Version::V311, bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{bytes:?}: {e}");
        }
        let e = one(Version::V5, &[0x30, 5, 0, 1, b'a', 1, 0x7E])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown property id 0x7E"), "{e}");
        let mut big = BytesMut::from(&[0x30, 0x80, 0x80, 0x01][..]);
        assert_eq!(
            read_packet(Version::V311, &mut big, 1000),
            Err(WireError::TooLarge {
                size: 16_388,
                limit: 1000
            })
        );
    }

    #[test]
    fn connect_carries_will_and_credentials() {
        let will = Message::new("s", &b"off"[..], QoS::AtLeastOnce).retained();
        let mut out = BytesMut::new();
        encode_connect(
            &Connect {
                version: Version::V311,
                client_id: "c",
                keep_alive_secs: 30,
                username: Some("u"),
                password: Some("p"),
                will: Some(&will),
                max_packet_size: 1 << 20,
                clean_start: true,
                session_expiry_secs: 0,
                receive_max: 32,
            },
            &mut out,
        );
        let want: &[u8] = &[
            0x10, 27, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 30, 0, 1, b'c', 0, 1, b's', 0, 3,
            b'o', b'f', b'f', 0, 1, b'u', 0, 1, b'p',
        ];
        assert_eq!(&out[..], want);
    }

    #[test]
    fn a_kept_session_is_asked_for_and_reported() {
        // MQTT 3.1.1: the Clean Session bit is off.
        let mut out = BytesMut::new();
        let c = |version, clean_start| Connect {
            version,
            client_id: "c",
            keep_alive_secs: 30,
            username: None,
            password: None,
            will: None,
            max_packet_size: 1 << 20,
            clean_start,
            session_expiry_secs: 86_400,
            receive_max: 32,
        };
        encode_connect(&c(Version::V311, false), &mut out);
        assert_eq!(out[9], 0x00, "flags: {out:?}");
        // MQTT 5: Clean Start off, Session Expiry Interval and Receive Maximum given.
        let mut out = BytesMut::new();
        encode_connect(&c(Version::V5, false), &mut out);
        assert_eq!(out[9], 0x00);
        let props = &out[12..];
        assert_eq!(props[0], 13, "property length: {props:?}");
        assert_eq!(&props[1..6], &[0x27, 0, 0x10, 0, 0]);
        assert_eq!(&props[6..9], &[0x21, 0, 32]);
        assert_eq!(&props[9..14], &[0x11, 0, 1, 0x51, 0x80]);
        // CONNACK with Session Present.
        let p = one(Version::V311, &[0x20, 2, 1, 0]).unwrap().unwrap();
        assert!(matches!(
            p,
            Packet::ConnAck(ConnAck {
                session_present: true,
                ..
            })
        ));
    }

    #[test]
    fn an_oversized_publish_is_described_and_skipped_not_fatal() {
        // QoS 1, topic "t/x", packet id 7, 5000 bytes of payload; limit 1000.
        let mut pkt = BytesMut::new();
        let m = Message::new("t/x", vec![9u8; 5000], QoS::AtLeastOnce);
        encode_publish(Version::V311, &m, 7, &mut pkt);
        let total = pkt.len();
        let mut buf = BytesMut::from(&pkt[..100]);
        let r = read_packet_or_skip(Version::V311, &mut buf, 1000)
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            Read::Oversized(Oversized {
                size: total,
                topic: "t/x".into(),
                qos: 1,
                pkid: 7,
                remaining: total - 100,
            })
        );
        assert!(buf.is_empty());
        // Too little of it yet to know the topic: wait.
        let mut buf = BytesMut::from(&pkt[..5]);
        assert_eq!(
            read_packet_or_skip(Version::V311, &mut buf, 1000).unwrap(),
            None
        );
        // Anything but a PUBLISH over the limit is still an error.
        let mut big = BytesMut::from(&[0x90, 0x80, 0x80, 0x01][..]);
        assert!(read_packet_or_skip(Version::V311, &mut big, 1000).is_err());
    }
}
