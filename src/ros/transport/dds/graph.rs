//! The ROS 2 graph as every rmw keeps it: each DDS participant publishes, on the topic
//! `ros_discovery_info`, which nodes it holds and the ids (GIDs) of their readers and
//! writers. `ros2 node list`, `ros2 node info` and `ros2 param` read it, in every
//! process on the domain.
//!
//! The message's layout depends on the ROS 2 distribution: Galactic and Humble write a
//! GID as 24 bytes, Iron and later as 16. A sample in the other layout is not merely
//! ignored by the other side: it is misread, and the graph tools of every node on the
//! robot then fail ("empty node name returned by the RMW layer"). So the agent chooses
//! the layout at run time (from `ROS_DISTRO`, else from what the other participants
//! publish, else `ros.distro`) and publishes nothing at all while it cannot tell, or
//! while what it was told disagrees with what the domain speaks.
//!
//! This file holds the pure parts: the layouts, the message's encoding and decoding
//! (written here because its layout is chosen at run time, which the generated-type
//! crates cannot do), and the decision, which takes what is known and says what to do.

use std::collections::{BTreeMap, BTreeSet};

/// How a distribution writes GIDs in `ros_discovery_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GraphFormat {
    /// Foxy, Galactic, Humble: `char[24] data`.
    Gid24,
    /// Iron, Jazzy, Kilted, Rolling: `char[16] data`.
    Gid16,
}

impl GraphFormat {
    pub const fn gid_len(self) -> usize {
        match self {
            GraphFormat::Gid24 => 24,
            GraphFormat::Gid16 => 16,
        }
    }

    /// For the log: which distributions write this layout.
    pub const fn label(self) -> &'static str {
        match self {
            GraphFormat::Gid24 => "Humble (24-byte ids)",
            GraphFormat::Gid16 => "Iron or newer, e.g. Jazzy (16-byte ids)",
        }
    }
}

/// The layout of a distribution, by the name `ROS_DISTRO` and `ros.distro` use; `None`
/// for a name the agent does not know.
pub fn format_of_distro(name: &str) -> Option<GraphFormat> {
    match name.trim().to_ascii_lowercase().as_str() {
        "foxy" | "galactic" | "humble" => Some(GraphFormat::Gid24),
        "iron" | "jazzy" | "kilted" | "lyrical" | "rolling" => Some(GraphFormat::Gid16),
        _ => None,
    }
}

/// The distribution names [`format_of_distro`] knows, for error messages.
pub const KNOWN_DISTROS: &str = "foxy, galactic, humble, iron, jazzy, kilted, lyrical, rolling";

/// One node of a participant, as `ros_discovery_info` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub namespace: String,
    pub name: String,
    /// GUIDs of the node's readers and writers (16 bytes; a 24-byte GID is the GUID
    /// followed by zeros).
    pub readers: Vec<[u8; 16]>,
    pub writers: Vec<[u8; 16]>,
}

/// A participant's announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    pub gid: [u8; 16],
    pub nodes: Vec<NodeEntry>,
}

/// The longest node name or namespace `ros_discovery_info` allows (`string<=256`).
const MAX_NAME: usize = 256;

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn align(&mut self, n: usize) {
        let rel = self.out.len() - 4;
        self.out.resize(self.out.len() + (n - rel % n) % n, 0);
    }

    fn u32(&mut self, v: u32) {
        self.align(4);
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32 + 1);
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(0);
    }

    fn gid(&mut self, guid: &[u8; 16], format: GraphFormat) {
        self.out.extend_from_slice(guid);
        self.out
            .resize(self.out.len() + format.gid_len() - guid.len(), 0);
    }
}

/// The serialized message (little-endian, encapsulation header included).
pub fn encode(format: GraphFormat, info: &ParticipantInfo) -> Vec<u8> {
    let mut w = Writer {
        out: vec![0, 1, 0, 0],
    };
    w.gid(&info.gid, format);
    w.u32(info.nodes.len() as u32);
    for n in &info.nodes {
        w.string(&n.namespace);
        w.string(&n.name);
        for gids in [&n.readers, &n.writers] {
            w.u32(gids.len() as u32);
            for g in gids {
                w.gid(g, format);
            }
        }
    }
    w.out
}

struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    big: bool,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.body.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        self.pos = self.pos.checked_add((4 - self.pos % 4) % 4)?;
        let b: [u8; 4] = self.take(4)?.try_into().ok()?;
        Some(if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        if len == 0 || len > MAX_NAME + 1 {
            return None;
        }
        let bytes = self.take(len)?;
        let (text, nul) = bytes.split_at(len - 1);
        if nul != [0] || text.contains(&0) {
            return None;
        }
        String::from_utf8(text.to_vec()).ok()
    }

    fn gid(&mut self, format: GraphFormat) -> Option<[u8; 16]> {
        let b = self.take(format.gid_len())?;
        b[..16].try_into().ok()
    }

    fn gids(&mut self, format: GraphFormat) -> Option<Vec<[u8; 16]>> {
        let n = self.u32()? as usize;
        // Each costs its length in bytes: a count the buffer cannot hold is a misreading.
        if n > (self.body.len() - self.pos.min(self.body.len())) / format.gid_len() {
            return None;
        }
        (0..n).map(|_| self.gid(format)).collect()
    }
}

/// Reads a sample as `format`: `None` unless it fits exactly (every name a terminated
/// string, every count within the buffer, nothing left over but up to 3 padding bytes).
pub fn decode_as(cdr: &[u8], format: GraphFormat) -> Option<ParticipantInfo> {
    let header = cdr.get(..4)?;
    let big = match header[..2] {
        [0, 0] => true,
        [0, 1] => false,
        _ => return None,
    };
    let mut r = Reader {
        body: &cdr[4..],
        pos: 0,
        big,
    };
    let gid = r.gid(format)?;
    let count = r.u32()? as usize;
    if count > r.body.len() / 16 {
        return None;
    }
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        let namespace = r.string()?;
        let name = r.string()?;
        if name.is_empty() {
            return None;
        }
        let readers = r.gids(format)?;
        let writers = r.gids(format)?;
        nodes.push(NodeEntry {
            namespace,
            name,
            readers,
            writers,
        });
    }
    (r.body.len() - r.pos <= 3).then_some(ParticipantInfo { gid, nodes })
}

/// The layout a peer's sample is written in, when exactly one fits.
pub fn classify(cdr: &[u8]) -> Option<(GraphFormat, ParticipantInfo)> {
    match (
        decode_as(cdr, GraphFormat::Gid16),
        decode_as(cdr, GraphFormat::Gid24),
    ) {
        (Some(i), None) => Some((GraphFormat::Gid16, i)),
        (None, Some(i)) => Some((GraphFormat::Gid24, i)),
        _ => None,
    }
}

/// Where the agent's choice of layout came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// `ROS_DISTRO` (set by a sourced ROS 2 environment and by `ros2 launch`).
    Env(String),
    /// `ros.distro` in the configuration.
    Config(String),
}

impl std::fmt::Display for Told {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Told::Env(d) => write!(f, "ROS_DISTRO={d}"),
            Told::Config(d) => write!(f, "ros.distro = \"{d}\""),
        }
    }
}

/// What to do about the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish the node's entry in this layout; the reason is for the log.
    Speak(GraphFormat, String),
    /// Nothing to go by yet (no `ROS_DISTRO`, no `ros.distro`, no other participant):
    /// publish nothing until a participant shows its layout.
    Wait,
    /// Told the layout, but nothing on the domain has confirmed it yet: a moment's
    /// wait ([`HOLD`]) lets participants already running show theirs first, so a wrong
    /// `ROS_DISTRO` is caught before anything they would misread is sent.
    Hold,
    /// The layouts conflict: publish nothing. The text says why and what to change.
    Silent(String),
}

/// How long a layout the agent was told waits for the domain to confirm it.
pub const HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// What the agent knows about the domain's layout, and the decision that follows.
/// No I/O: the DDS side feeds it and acts on [`GraphPolicy::decide`].
#[derive(Debug, Clone)]
pub struct GraphPolicy {
    told: Option<(Told, Option<GraphFormat>)>,
    domain: u16,
    /// Other participants' layouts, by participant GID.
    peers: BTreeMap<[u8; 16], GraphFormat>,
}

impl GraphPolicy {
    /// `env` is `ROS_DISTRO` (empty counts as unset), `config` is `ros.distro`.
    pub fn new(env: Option<&str>, config: Option<&str>, domain: u16) -> Self {
        let told = match (env.map(str::trim).filter(|e| !e.is_empty()), config) {
            (Some(e), _) => Some((Told::Env(e.to_owned()), format_of_distro(e))),
            (None, Some(c)) => Some((Told::Config(c.to_owned()), format_of_distro(c))),
            (None, None) => None,
        };
        Self {
            told,
            domain,
            peers: BTreeMap::new(),
        }
    }

    /// A peer's sample was read in `format`.
    pub fn peer(&mut self, gid: [u8; 16], format: GraphFormat) {
        self.peers.insert(gid, format);
    }

    /// Forgets peers that are no longer on the domain.
    pub fn retain_peers(&mut self, present: impl Fn(&[u8; 16]) -> bool) {
        self.peers.retain(|g, _| present(g));
    }

    fn peer_formats(&self) -> BTreeSet<GraphFormat> {
        self.peers.values().copied().collect()
    }

    /// `elapsed`: time since the node started.
    pub fn decide(&self, elapsed: std::time::Duration) -> Decision {
        let seen = self.peer_formats();
        let domain = self.domain;
        let describe = |fs: &BTreeSet<GraphFormat>| {
            fs.iter()
                .map(|f| f.label())
                .collect::<Vec<_>>()
                .join(" and ")
        };
        match &self.told {
            Some((told, None)) => Decision::Silent(format!(
                "{told} is not a ROS 2 distribution this agent knows ({KNOWN_DISTROS}); \
                 set ROS_DISTRO or ros.distro to the robot's distribution"
            )),
            Some((_, Some(_))) if seen.is_empty() && elapsed < HOLD => Decision::Hold,
            Some((told, Some(f))) => {
                if seen.iter().all(|s| s == f) {
                    Decision::Speak(*f, format!("from {told}"))
                } else {
                    Decision::Silent(format!(
                        "{told} means {} graph information, but the other participants on \
                         domain {domain} publish {}; set ROS_DISTRO (or ros.distro) to the \
                         robot's distribution",
                        f.label(),
                        describe(&seen)
                    ))
                }
            }
            None => match seen.len() {
                0 => Decision::Wait,
                1 => {
                    let f = *seen.iter().next().unwrap_or(&GraphFormat::Gid16);
                    Decision::Speak(f, "as the other participants publish it".into())
                }
                _ => Decision::Silent(format!(
                    "the participants on domain {domain} publish {} graph information; \
                     set ROS_DISTRO (or ros.distro) to the robot's distribution",
                    describe(&seen)
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info() -> ParticipantInfo {
        ParticipantInfo {
            gid: [1; 16],
            nodes: vec![
                NodeEntry {
                    namespace: "/".into(),
                    name: "edge_agent".into(),
                    readers: vec![[2; 16], [3; 16]],
                    writers: vec![[4; 16]],
                },
                NodeEntry {
                    namespace: "/robot/arm".into(),
                    name: "x".into(),
                    readers: vec![],
                    writers: vec![[5; 16]; 3],
                },
            ],
        }
    }

    #[test]
    fn each_layout_reads_back_as_itself_and_only_as_itself() {
        for f in [GraphFormat::Gid16, GraphFormat::Gid24] {
            let bytes = encode(f, &info());
            assert_eq!(classify(&bytes), Some((f, info())), "{f:?}");
        }
        let empty = ParticipantInfo {
            gid: [9; 16],
            nodes: vec![],
        };
        for f in [GraphFormat::Gid16, GraphFormat::Gid24] {
            assert_eq!(classify(&encode(f, &empty)), Some((f, empty.clone())));
        }
    }

    #[test]
    fn the_humble_layout_has_zeros_after_each_guid() {
        let b = encode(GraphFormat::Gid24, &info());
        assert_eq!(&b[4..20], &[1; 16]);
        assert_eq!(&b[20..28], &[0; 8]);
        assert_eq!(&b[28..32], &2u32.to_le_bytes());
        assert_eq!(
            encode(GraphFormat::Gid16, &info())[20..24],
            2u32.to_le_bytes()
        );
    }

    #[test]
    fn distribution_names() {
        assert_eq!(format_of_distro("humble"), Some(GraphFormat::Gid24));
        assert_eq!(format_of_distro(" Jazzy\n"), Some(GraphFormat::Gid16));
        assert_eq!(format_of_distro("kilted"), Some(GraphFormat::Gid16));
        assert_eq!(format_of_distro("rolling"), Some(GraphFormat::Gid16));
        assert_eq!(format_of_distro("ardent"), None);
    }

    const LATER: std::time::Duration = HOLD;

    #[test]
    fn a_layout_told_waits_a_moment_for_the_domain_unless_it_confirms() {
        let mut p = GraphPolicy::new(Some("jazzy"), None, 0);
        let early = std::time::Duration::from_millis(100);
        assert_eq!(p.decide(early), Decision::Hold);
        assert!(matches!(
            p.decide(HOLD),
            Decision::Speak(GraphFormat::Gid16, _)
        ));
        p.peer([1; 16], GraphFormat::Gid16);
        assert!(matches!(
            p.decide(early),
            Decision::Speak(GraphFormat::Gid16, _)
        ));
        // Nothing told: nothing to hold for.
        let p = GraphPolicy::new(None, None, 0);
        assert_eq!(p.decide(early), Decision::Wait);
    }

    #[test]
    fn the_environment_decides_unless_the_domain_disagrees() {
        let mut p = GraphPolicy::new(Some("humble"), Some("jazzy"), 7);
        assert!(matches!(
            p.decide(LATER),
            Decision::Speak(GraphFormat::Gid24, _)
        ));
        p.peer([1; 16], GraphFormat::Gid24);
        assert!(matches!(
            p.decide(LATER),
            Decision::Speak(GraphFormat::Gid24, _)
        ));
        p.peer([2; 16], GraphFormat::Gid16);
        match p.decide(LATER) {
            Decision::Silent(why) => {
                assert!(why.contains("ROS_DISTRO=humble"), "{why}");
                assert!(why.contains("domain 7"), "{why}");
                assert!(why.contains("Iron or newer"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // The disagreeing participant leaves: speak again.
        p.retain_peers(|g| *g == [1; 16]);
        assert!(matches!(
            p.decide(LATER),
            Decision::Speak(GraphFormat::Gid24, _)
        ));
    }

    #[test]
    fn without_a_distribution_the_domain_decides_and_a_mixed_one_silences() {
        let mut p = GraphPolicy::new(Some(""), None, 0);
        assert_eq!(p.decide(LATER), Decision::Wait);
        p.peer([1; 16], GraphFormat::Gid16);
        assert!(matches!(
            p.decide(LATER),
            Decision::Speak(GraphFormat::Gid16, _)
        ));
        p.peer([2; 16], GraphFormat::Gid24);
        assert!(matches!(p.decide(LATER), Decision::Silent(_)));
        // The configuration counts when the environment says nothing.
        let p = GraphPolicy::new(None, Some("humble"), 0);
        assert!(matches!(
            p.decide(LATER),
            Decision::Speak(GraphFormat::Gid24, _)
        ));
        let p = GraphPolicy::new(Some("ardent"), None, 0);
        match p.decide(LATER) {
            Decision::Silent(why) => assert!(why.contains("ROS_DISTRO=ardent"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    fn arb_node() -> impl Strategy<Value = NodeEntry> {
        (
            "[a-z/_]{0,20}",
            "[a-z_][a-z0-9_]{0,20}",
            proptest::collection::vec(any::<[u8; 16]>(), 0..4),
            proptest::collection::vec(any::<[u8; 16]>(), 0..4),
        )
            .prop_map(|(namespace, name, readers, writers)| NodeEntry {
                namespace,
                name,
                readers,
                writers,
            })
    }

    proptest! {
        #[test]
        fn any_announcement_round_trips_in_both_layouts(
            gid in any::<[u8; 16]>(),
            nodes in proptest::collection::vec(arb_node(), 0..4),
        ) {
            let info = ParticipantInfo { gid, nodes };
            for f in [GraphFormat::Gid16, GraphFormat::Gid24] {
                prop_assert_eq!(decode_as(&encode(f, &info), f), Some(info.clone()));
            }
        }

        #[test]
        fn any_bytes_are_read_or_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = classify(&bytes);
            let mut with_header = vec![0, 1, 0, 0];
            with_header.extend_from_slice(&bytes);
            let _ = classify(&with_header);
        }
    }
}
