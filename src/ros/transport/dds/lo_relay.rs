//! Discovery on a loopback interface without multicast.
//!
//! When DDS is limited to `lo` and `lo` has its MULTICAST flag off (Linux's default),
//! the DDS stack sends its participant announcement (SPDP) only by unicast, to the
//! well-known discovery ports of the first participant slots on 127.0.0.1. Cyclone DDS
//! (what rmw_cyclonedds uses) listens for announcements on the multicast group only,
//! and its unicast ports are not the well-known ones, so a running Cyclone node heard of
//! the agent only when it repeated its own announcement, seconds later.
//!
//! The relay takes one of those participant slots (a high one, so real participants
//! keep the low ones they pick first): every announcement sent to it is passed on to
//! the SPDP multicast group through `lo`, where Cyclone (configured for loopback, it
//! forces multicast on) hears it at once and answers directly. Only RTPS datagrams are
//! passed on, each once; nothing comes back to the slot from the group.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};

/// The SPDP multicast group of the DDS specification.
const SPDP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);
/// How many participant slots the DDS stack announces itself to on 127.0.0.1.
const SLOTS: u16 = 12;

/// DDSI-RTPS port numbers (PB 7400, DG 250, PG 2, d0 0, d1 10).
pub fn spdp_multicast_port(domain: u16) -> u16 {
    7400 + 250 * domain
}

pub fn spdp_unicast_port(domain: u16, participant: u16) -> u16 {
    7400 + 250 * domain + 10 + 2 * participant
}

/// Whether a datagram is an RTPS message (the header starts "RTPS").
pub fn is_rtps(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && &datagram[..4] == b"RTPS"
}

/// The relay's sockets: the participant slot it listens on and the sender to the group.
pub struct Relay {
    slot: std::net::UdpSocket,
    sender: std::net::UdpSocket,
    group: SocketAddrV4,
    /// Which participant slot it took.
    pub participant: u16,
}

impl Relay {
    /// Takes the highest free participant slot of `domain` on 127.0.0.1.
    pub fn bind(domain: u16) -> io::Result<Self> {
        let mut last = io::Error::new(io::ErrorKind::AddrInUse, "every slot is taken");
        for participant in (1..SLOTS).rev() {
            let addr =
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, spdp_unicast_port(domain, participant));
            match std::net::UdpSocket::bind(addr) {
                Ok(slot) => {
                    let sender = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                    sender.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
                    sender.set_multicast_loop_v4(true)?;
                    sender.set_multicast_ttl_v4(0)?;
                    sender.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
                    return Ok(Relay {
                        slot,
                        sender: sender.into(),
                        group: SocketAddrV4::new(SPDP_GROUP, spdp_multicast_port(domain)),
                        participant,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Passes announcements on until the task is aborted.
    pub async fn run(self) {
        let group = self.group;
        let (Ok(slot), Ok(sender)) = (
            self.slot
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UdpSocket::from_std(self.slot)),
            self.sender
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UdpSocket::from_std(self.sender)),
        ) else {
            tracing::debug!("The loopback discovery relay could not start.");
            return;
        };
        let mut buf = vec![0u8; 65_536];
        let mut failed = false;
        loop {
            let Ok((n, _)) = slot.recv_from(&mut buf).await else {
                continue;
            };
            if !is_rtps(&buf[..n]) {
                continue;
            }
            if let Err(e) = sender.send_to(&buf[..n], group).await {
                if !failed {
                    tracing::warn!(error = %e, "Cannot pass the agent's DDS announcement on to the loopback multicast group; Cyclone DDS nodes find the agent only when they repeat their own.");
                    failed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_numbers_of_the_specification() {
        // Domain 0: 7400 multicast, participant 0 at 7410, participant 1 at 7412.
        assert_eq!(spdp_multicast_port(0), 7400);
        assert_eq!(spdp_unicast_port(0, 0), 7410);
        assert_eq!(spdp_unicast_port(0, 1), 7412);
        assert_eq!(spdp_multicast_port(42), 17900);
        assert_eq!(spdp_unicast_port(232, 11), 65432);
    }

    #[test]
    fn only_rtps_is_passed_on() {
        let mut m = b"RTPS\x02\x01\x01\x12".to_vec();
        m.extend([0u8; 12]);
        assert!(is_rtps(&m));
        assert!(!is_rtps(b"RTPS"));
        assert!(!is_rtps(&[0u8; 40]));
    }

    #[tokio::test]
    async fn an_announcement_sent_to_the_slot_reaches_the_group_on_loopback() {
        let domain = 201;
        let relay = Relay::bind(domain).expect("a free participant slot");
        let slot_port = spdp_unicast_port(domain, relay.participant);
        // A member of the group on lo, as Cyclone DDS configured for loopback is.
        let member = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        member.set_reuse_address(true).unwrap();
        member
            .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, spdp_multicast_port(domain)).into())
            .unwrap();
        member
            .join_multicast_v4_n(
                &SPDP_GROUP,
                &socket2::InterfaceIndexOrAddress::Index(lo_index()),
            )
            .unwrap();
        member
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let task = tokio::spawn(relay.run());
        let mut msg = b"RTPS\x02\x01\x01\x12".to_vec();
        msg.extend(b"participant!");
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .send_to(b"not rtps", ("127.0.0.1", slot_port))
            .unwrap();
        probe.send_to(&msg, ("127.0.0.1", slot_port)).unwrap();
        let member: std::net::UdpSocket = member.into();
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 256];
            let (n, _) = member
                .recv_from(&mut buf)
                .expect("the announcement on the group");
            buf[..n].to_vec()
        })
        .await
        .unwrap();
        task.abort();
        assert_eq!(got, msg);
    }

    fn lo_index() -> u32 {
        std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1)
    }
}
