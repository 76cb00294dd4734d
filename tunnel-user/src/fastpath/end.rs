//! What differs between the two ends of the tunnel, as the packet path sees them: the
//! [`End`] trait, and [`PeerState`], the calls the path makes on a peer's protocol state
//! machine (`tunnel_proto::Client` at the client, `tunnel_proto::Server` per session at the
//! gateway).

use std::{
    net::{IpAddr, SocketAddr},
    ops::ControlFlow,
    sync::Mutex,
    time::Instant,
};

use tunnel_proto::{EspInput, SessionError, Transmit};

use super::{device::Device, tls_in::TlsIn, tun_io::TunIo};

/// One end of the tunnel: a device with peers, as in WireGuard. The client is the case of
/// one peer (its session with the gateway, which every packet from the TUN device goes to
/// and every ESP datagram comes from); the gateway's peers are its established sessions.
///
/// The send path (`outbound`) and the receive paths (`inbound`, `tls_in`) are written once,
/// generic over this trait; an implementation says how a peer is found, whether a packet it
/// sent may be forwarded, whom to wake, and where its ESP goes.
pub(crate) trait End: Sync + Sized {
    /// A peer, as the packet threads hold it between lookups (cheap to clone).
    type Peer: Clone + Send;
    /// The peer's protocol state machine.
    type Proto: PeerState;
    /// What each direction keeps between packets for its lookups and checks (the last
    /// lookup's answer, a copy of the access policy, the list of ready connections).
    type Scratch: Default + Send;

    /// The state machine of `peer`, behind the lock the packet threads and its owner share.
    fn proto<'a>(&'a self, peer: &'a Self::Peer) -> &'a Mutex<Self::Proto>;

    /// Whether `a` and `b` are the same peer.
    fn same_peer(a: &Self::Peer, b: &Self::Peer) -> bool;

    /// The peer a packet read from the TUN device goes to, by its destination.
    fn peer_by_destination(&self, dst: IpAddr, scratch: &mut Self::Scratch) -> Option<Self::Peer>;

    /// The peer ESP datagrams carrying `spi` come from.
    fn peer_by_spi(&self, spi: u32, scratch: &mut Self::Scratch) -> Option<Self::Peer>;

    /// Where `peer`'s ESP datagrams go; None while they cannot go anywhere (no address
    /// learned yet).
    fn esp_to(&self, peer: &Self::Peer) -> Option<EspTo>;

    /// An ESP datagram from `from` was authenticated as `peer`'s; `newest`: it was newer
    /// than any before (not a replay of an older one), so `from` is where the peer is now.
    fn heard_over_esp(&self, peer: &Self::Peer, from: SocketAddr, newest: bool, now: Instant);

    /// Bytes came from `peer` over TLS.
    fn heard_over_tls(&self, peer: &Self::Peer, now: Instant);

    /// Whether a packet `peer` sent, opened, may be written into the TUN device: its
    /// source is the peer's and its destination one the peer may reach. Counts and logs a
    /// refusal.
    fn admit(&self, peer: &Self::Peer, packet: &[u8], scratch: &mut Self::Scratch) -> bool;

    /// Wakes the task that owns `peer`: its state machine has events, frames to send or
    /// timer work.
    fn wake(&self, peer: &Self::Peer);

    /// Sends the TLS frames `peer`'s state machine queued, from the calling thread.
    fn send_tls(&self, peer: &Self::Peer);

    /// Whether the TUN device stops being read while TLS has half its backlog limit queued
    /// (the client: the sending applications are throttled instead of their packets
    /// dropped), rather than dropping at the limit (the gateway, a router for many).
    const PUSH_BACK_ON_TLS: bool;

    /// Whether a thread writing the packets of TLS records into the TUN device claims it
    /// first and forwards what is answered within the writes, as the ESP side does. The
    /// gateway does: a corp host's answer then goes out without a wake-up. The client does
    /// not: under a TLS upload its TLS reader would take on the TUN device's reads (the
    /// local stack answers every ACK with data within the write), and the two directions
    /// that now run on two cores would share one.
    const CLAIM_FOR_TLS_WRITES: bool;

    /// `count` packets were dropped: no peer for them.
    fn dropped(&self, count: usize);

    /// Traffic counters: packets and bytes sent to, or received from, the peers.
    fn count(&self, direction: Direction, packets: u64, bytes: u64);

    /// Reads the TLS side `device`'s dispatcher handed the calling thread until it has no
    /// more: the client's one connection, the gateway's established sessions' connections
    /// that are ready. Each connection goes through [`TlsIn::read_connection`].
    fn drain_tls<T: TunIo>(
        &self,
        device: &Device<Self, T>,
        tls_in: &mut TlsIn<Self>,
    ) -> ControlFlow<()>;
}

/// Which way traffic went, for [`End::count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the TUN device to a peer.
    Out,
    /// From a peer into the TUN device.
    In,
}

/// Where a peer's ESP datagrams go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EspTo {
    /// Where the ESP socket is connected (the client's socket, connected to its gateway).
    Connected,
    /// This address (the gateway's socket serves every client).
    Addr(SocketAddr),
}

impl EspTo {
    /// The address a send names.
    pub(crate) fn addr(self) -> Option<SocketAddr> {
        match self {
            EspTo::Connected => None,
            EspTo::Addr(a) => Some(a),
        }
    }
}

/// The calls the packet path makes on a peer's protocol state machine, with the lock
/// held. See `tunnel_proto` for what each does.
pub(crate) trait PeerState: Send {
    /// Stages a packet for the peer: an ESP datagram written (unsealed for the CBC suites)
    /// into `out`, or a TLS frame queued.
    fn stage_packet(
        &mut self,
        packet: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Result<Transmit, SessionError>;

    /// Seals staged datagrams in place (`size` bytes each, the last possibly shorter).
    fn seal_train(&mut self, train: &mut [u8], size: usize) -> Result<(), SessionError>;

    /// Opens ESP datagrams in place (`size` bytes each, the last possibly shorter), telling
    /// `f` what each was; true when one of them was the newest authenticated so far.
    fn open_esp_train(
        &mut self,
        train: &mut [u8],
        size: usize,
        now: Instant,
        f: impl FnMut(Result<EspInput<'_>, SessionError>),
    ) -> bool;

    /// The answer to a probe the last datagrams held, written into `out`: its length.
    fn probe_answer(&mut self, out: &mut [u8]) -> Option<usize>;

    /// Runs plaintext that came over TLS; each data packet goes to `packets` as it is parsed.
    fn handle_tls_bytes_with(
        &mut self,
        data: &[u8],
        now: Instant,
        packets: &mut dyn FnMut(&[u8]),
    ) -> Result<(), SessionError>;

    /// The owner has events to act on.
    fn has_events(&self) -> bool;

    /// The owner has timer work now (keys past their byte lifetime).
    fn timers_due(&self) -> bool;

    /// Bytes of TLS frames queued and not sent.
    fn tls_backlog(&self) -> usize;

    /// The session is over.
    fn is_closed(&self) -> bool;
}

/// The calls `Client` and `Server` answer with methods of the same name and meaning
/// (inherent methods, which a path through `Self` finds before the trait's).
macro_rules! same_in_both {
    () => {
        fn stage_packet(
            &mut self,
            packet: &[u8],
            now: Instant,
            out: &mut [u8],
        ) -> Result<Transmit, SessionError> {
            Self::stage_packet(self, packet, now, out)
        }

        fn seal_train(&mut self, train: &mut [u8], size: usize) -> Result<(), SessionError> {
            Self::seal_train(self, train, size)
        }

        fn handle_tls_bytes_with(
            &mut self,
            data: &[u8],
            now: Instant,
            packets: &mut dyn FnMut(&[u8]),
        ) -> Result<(), SessionError> {
            Self::handle_tls_bytes_with(self, data, now, packets)
        }

        fn has_events(&self) -> bool {
            Self::has_events(self)
        }

        fn tls_backlog(&self) -> usize {
            self.pending_tls().len()
        }

        fn is_closed(&self) -> bool {
            Self::is_closed(self)
        }
    };
}

impl PeerState for tunnel_proto::Client {
    same_in_both!();

    /// The client learns nothing from which datagram was newest (its gateway does not
    /// move): true when any was authenticated.
    fn open_esp_train(
        &mut self,
        train: &mut [u8],
        size: usize,
        now: Instant,
        mut f: impl FnMut(Result<EspInput<'_>, SessionError>),
    ) -> bool {
        let mut heard = false;
        self.handle_esp_train(train, size, now, |input| {
            heard |= input.is_ok();
            f(input)
        });
        heard
    }

    /// The client answers no probe on the packet path: a gateway's probe counts as heard,
    /// and the client's own probes (at least once per the gateway's fallback time) answer it.
    fn probe_answer(&mut self, _out: &mut [u8]) -> Option<usize> {
        None
    }

    /// The client's task runs its timers on its own schedule.
    fn timers_due(&self) -> bool {
        false
    }
}

impl PeerState for tunnel_proto::Server {
    same_in_both!();

    /// True when one of the datagrams was the newest authenticated so far.
    fn open_esp_train(
        &mut self,
        train: &mut [u8],
        size: usize,
        now: Instant,
        f: impl FnMut(Result<EspInput<'_>, SessionError>),
    ) -> bool {
        self.handle_esp_train(train, size, now, f)
    }

    fn probe_answer(&mut self, out: &mut [u8]) -> Option<usize> {
        self.poll_esp_transmit(out).ok().flatten()
    }

    fn timers_due(&self) -> bool {
        Self::timers_due(self)
    }
}
