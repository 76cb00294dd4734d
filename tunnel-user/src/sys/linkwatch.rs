//! Links and addresses as they come and go, from rtnetlink: the links of the calling thread's
//! network namespace now ([`current_links`]), and a subscription to what changes after
//! ([`LinkWatcher`], the `RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR` and `RTNLGRP_IPV6_IFADDR`
//! groups), both decoded by [`decode`] into [`LinkEvent`]s.
//!
//! ```text
//!  kernel ──multicast datagram──▶ LinkWatcher::next ──decode──▶ [LinkEvent] ──▶ caller
//!  kernel ──dump (RTM_GETLINK)──▶ current_links    ──decode──▶ [Link]
//! ```
//!
//! [`decode`] does no I/O, so the translation from the kernel's messages is tested on bytes
//! built here. Subscribe first, then ask for the current links: a link that appears in
//! between is then reported twice, never missed, so callers treat events as idempotent.
//! When the kernel drops notifications because the socket's buffer was full,
//! [`LinkWatcher::next`] says so ([`WatchError::Overrun`]) and the caller reconciles with
//! [`current_links`].
//!
//! Only messages of the `AF_UNSPEC` family describe links: the bridge module sends
//! `RTM_NEWLINK`/`RTM_DELLINK` of family `AF_BRIDGE` when a port joins or leaves a bridge,
//! and a port that leaves its bridge is not gone.

use std::io;

use netlink_packet_core::{DecodeError, NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use tokio::io::{Interest, unix::AsyncFd};

use super::netconf::{NetconfError, Netlink};

/// Room for one datagram: the kernel fills at most a page or so per notification datagram.
const RECV_BUFFER: usize = 64 << 10;

/// The socket's receive buffer: notifications queue here while the caller attaches programs.
/// A burst larger than this (hundreds of links at once) is an [`WatchError::Overrun`].
const SOCKET_BUFFER: usize = 1 << 20;

/// A link as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `IFF_UP`: the administrator (or a network manager) brought it up.
    pub up: bool,
    /// `IFF_LOOPBACK`.
    pub loopback: bool,
    /// The driver's kind (`IFLA_INFO_KIND`: "veth", "tun", "bridge"...); None for devices a
    /// hardware driver registered, which have no kind.
    pub kind: Option<String>,
    /// `ARPHRD_*`.
    pub link_type: u16,
}

impl Link {
    /// A TUN or TAP device: the far end of some program in userspace (ours among them),
    /// never an uplink.
    pub fn is_tun(&self) -> bool {
        self.kind.as_deref() == Some("tun")
    }
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link was added or changed (name, flags): this is how it is now.
    Present(Link),
    /// A link was deleted or moved to another namespace.
    Gone { ifindex: u32, name: String },
    /// An address was added to or removed from a link.
    AddressesChanged { ifindex: u32 },
}

/// Why links cannot be watched or listed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("notifications were lost (the socket's buffer was full); the links must be re-read")]
    Overrun,
    #[error("malformed link notification from the kernel")]
    Malformed(#[source] DecodeError),
    #[error(transparent)]
    List(#[from] NetconfError),
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        ifindex: msg.header.index,
        name: String::new(),
        up: msg.header.flags.contains(LinkFlags::Up),
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
        kind: None,
        link_type: u16::from(msg.header.link_layer_type),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(InfoKind::Other(k)) => Some(k.clone()),
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

/// The events in one datagram from an rtnetlink socket, in order. Messages that say nothing
/// about links or addresses (acks, the end of a dump, other families) are skipped.
pub fn decode(datagram: &[u8]) -> Result<Vec<LinkEvent>, DecodeError> {
    let mut events = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let raw = NetlinkBuffer::new_checked(rest)?;
        let len = raw.length() as usize;
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])?;
        if let NetlinkPayload::InnerMessage(m) = msg.payload {
            match m {
                RouteNetlinkMessage::NewLink(l)
                    if l.header.interface_family == AddressFamily::Unspec =>
                {
                    events.push(LinkEvent::Present(link_of(&l)));
                }
                RouteNetlinkMessage::DelLink(l)
                    if l.header.interface_family == AddressFamily::Unspec =>
                {
                    let Link { ifindex, name, .. } = link_of(&l);
                    events.push(LinkEvent::Gone { ifindex, name });
                }
                RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                    events.push(LinkEvent::AddressesChanged {
                        ifindex: a.header.index,
                    });
                }
                _ => {}
            }
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(events)
}

/// The links of the calling thread's network namespace, by one `RTM_GETLINK` dump.
pub fn current_links() -> Result<Vec<Link>, WatchError> {
    let links = Netlink::open().and_then(|mut nl| nl.links())?;
    Ok(links
        .iter()
        .filter(|l| l.header.interface_family == AddressFamily::Unspec)
        .map(link_of)
        .collect())
}

/// A subscription to link and address changes in the calling thread's network namespace,
/// read on the tokio runtime.
pub struct LinkWatcher {
    socket: AsyncFd<Socket>,
    buf: Vec<u8>,
}

impl LinkWatcher {
    /// Subscribes. Called from within a tokio runtime.
    pub fn open() -> Result<LinkWatcher, WatchError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(WatchError::Socket)?;
        socket.bind_auto().map_err(WatchError::Socket)?;
        for group in [
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV6_IFADDR,
        ] {
            socket.add_membership(group).map_err(WatchError::Socket)?;
        }
        // A smaller buffer than asked only makes an overrun likelier, which is handled.
        let _ = socket.set_rx_buf_sz(SOCKET_BUFFER);
        socket.set_non_blocking(true).map_err(WatchError::Socket)?;
        // SAFETY: the socket owns its descriptor and keeps it open, unchanged, until it is
        // dropped with the `AsyncFd` that owns it.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| WatchError::Socket(e.into()))?;
        Ok(LinkWatcher {
            socket,
            buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// The events of the next datagram (possibly none: a datagram may hold only messages
    /// of other kinds).
    pub async fn next(&mut self) -> Result<Vec<LinkEvent>, WatchError> {
        loop {
            let mut ready = self.socket.readable().await.map_err(WatchError::Socket)?;
            self.buf.clear();
            let buf = &mut self.buf;
            match ready.try_io(|s| s.get_ref().recv(buf, 0)) {
                Ok(Ok(_)) => return decode(&self.buf).map_err(WatchError::Malformed),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(WatchError::Overrun);
                }
                Ok(Err(e)) => return Err(WatchError::Socket(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkHeader;
    use netlink_packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{LinkLayerType, LinkMessage},
    };

    use super::*;

    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(m));
            msg.finalize();
            let mut bytes = vec![0u8; msg.buffer_len()];
            msg.serialize(&mut bytes);
            out.extend_from_slice(&bytes);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    fn link_msg(
        family: AddressFamily,
        index: u32,
        name: &str,
        flags: LinkFlags,
        kind: Option<InfoKind>,
    ) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.interface_family = family;
        m.header.index = index;
        m.header.flags = flags;
        m.header.link_layer_type = if flags.contains(LinkFlags::Loopback) {
            LinkLayerType::Loopback
        } else {
            LinkLayerType::Ether
        };
        m.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(k) = kind {
            m.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)]));
        }
        m
    }

    #[test]
    fn a_new_link_a_changed_one_and_a_deleted_one() {
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewLink(link_msg(
                AddressFamily::Unspec,
                7,
                "usb0",
                LinkFlags::Broadcast,
                None,
            )),
            RouteNetlinkMessage::NewLink(link_msg(
                AddressFamily::Unspec,
                8,
                "v1",
                LinkFlags::Up | LinkFlags::Broadcast,
                Some(InfoKind::Veth),
            )),
            RouteNetlinkMessage::DelLink(link_msg(
                AddressFamily::Unspec,
                9,
                "old0",
                LinkFlags::empty(),
                None,
            )),
        ]);
        let events = decode(&bytes).unwrap();
        assert_eq!(
            events,
            vec![
                LinkEvent::Present(Link {
                    ifindex: 7,
                    name: "usb0".into(),
                    up: false,
                    loopback: false,
                    kind: None,
                    link_type: 1,
                }),
                LinkEvent::Present(Link {
                    ifindex: 8,
                    name: "v1".into(),
                    up: true,
                    loopback: false,
                    kind: Some("veth".into()),
                    link_type: 1,
                }),
                LinkEvent::Gone {
                    ifindex: 9,
                    name: "old0".into()
                },
            ]
        );
    }

    #[test]
    fn loopback_and_tun_devices_are_recognised() {
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewLink(link_msg(
                AddressFamily::Unspec,
                1,
                "lo",
                LinkFlags::Up | LinkFlags::Loopback,
                None,
            )),
            RouteNetlinkMessage::NewLink(link_msg(
                AddressFamily::Unspec,
                5,
                "tun0",
                LinkFlags::Up,
                Some(InfoKind::Tun),
            )),
            RouteNetlinkMessage::NewLink(link_msg(
                AddressFamily::Unspec,
                6,
                "wg0",
                LinkFlags::Up,
                Some(InfoKind::Other("wireguard".into())),
            )),
        ]);
        let links: Vec<Link> = decode(&bytes)
            .unwrap()
            .into_iter()
            .map(|e| match e {
                LinkEvent::Present(l) => l,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(links[0].loopback && !links[0].is_tun());
        assert_eq!(links[0].link_type, 772, "ARPHRD_LOOPBACK");
        assert!(!links[1].loopback && links[1].is_tun());
        assert_eq!(links[2].kind.as_deref(), Some("wireguard"));
        assert!(!links[2].is_tun());
    }

    /// The bridge module's port notifications are not the link coming or going.
    #[test]
    fn bridge_port_messages_are_not_links() {
        let bytes = datagram(vec![
            RouteNetlinkMessage::DelLink(link_msg(
                AddressFamily::Bridge,
                4,
                "eth1",
                LinkFlags::Up,
                None,
            )),
            RouteNetlinkMessage::NewLink(link_msg(
                AddressFamily::Bridge,
                4,
                "eth1",
                LinkFlags::Up,
                None,
            )),
        ]);
        assert_eq!(decode(&bytes).unwrap(), vec![]);
    }

    #[test]
    fn address_changes_name_their_link() {
        let mut a = AddressMessage::default();
        a.header.family = AddressFamily::Inet;
        a.header.index = 12;
        a.header.prefix_len = 24;
        a.attributes
            .push(AddressAttribute::Local("10.1.2.3".parse().unwrap()));
        let mut b = a.clone();
        b.header.index = 13;
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewAddress(a),
            RouteNetlinkMessage::DelAddress(b),
        ]);
        assert_eq!(
            decode(&bytes).unwrap(),
            vec![
                LinkEvent::AddressesChanged { ifindex: 12 },
                LinkEvent::AddressesChanged { ifindex: 13 },
            ]
        );
    }

    #[test]
    fn a_truncated_datagram_is_an_error_not_a_short_list() {
        let bytes = datagram(vec![RouteNetlinkMessage::NewLink(link_msg(
            AddressFamily::Unspec,
            7,
            "usb0",
            LinkFlags::Up,
            None,
        ))]);
        assert!(decode(&bytes[..bytes.len() - 8]).is_err());
        assert!(decode(&bytes[..10]).is_err());
    }

    /// The dump of a real namespace: loopback is there, as the decoder describes it.
    #[test]
    fn current_links_lists_loopback() {
        let links = current_links().expect("a dump of this namespace's links");
        let lo = links
            .iter()
            .find(|l| l.name == "lo")
            .expect("loopback in the dump");
        assert!(lo.loopback && lo.ifindex == 1, "{lo:?}");
    }
}
