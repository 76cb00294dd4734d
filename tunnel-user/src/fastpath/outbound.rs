//! The send path: packets read from the TUN device, to their peer over ESP (staged into
//! UDP GSO trains, sealed a read at a time, sent in batches) or over TLS.
//!
//! 1. A read gives one packet, or one GSO packet of one flow; its destination names the
//!    peer ([`End::peer_by_destination`]), looked up and locked once per read.
//! 2. Each wire-size packet is staged under the peer's lock into the current train (or
//!    queued as a TLS frame); a complete train is sealed at once, the rest of the read's at
//!    its end, still under the lock.
//! 3. With the lock released, the trains go out: the first read of a drain at once, later
//!    ones when [`SEND_BATCH`] datagrams or the most trains are held, or the drain ends
//!    ([`DrainReads`]). Trains hold one peer's datagrams: a read for another sends them first.
//! 4. TLS frames go out every [`SEND_BATCH`] packets and when the drain ends, from this
//!    thread ([`End::send_tls`]).
//!
//! Whoever holds [`Outbound`] reads and sends before the next read, so packets leave in
//! the order the device gave them: the thread the dispatcher handed the TUN device to, or a
//! receiving thread right after its TUN writes ([`forward_answers`]).

use std::{
    io,
    ops::ControlFlow,
    time::{Duration, Instant},
};

use tracing::debug;
use tunnel_packet::ip::ip_endpoints;
use tunnel_proto::Transmit;

use super::{
    device::Device,
    dispatch::after_failed_read,
    drain::{DrainRead, DrainReads},
    end::{Direction, End, EspTo, PeerState},
    trains::{SEND_BATCH, Trains},
    tun_io::{TunIo, TunSource},
};

/// TUN reads a receiving thread makes after its writes, at most (it has its own source to
/// go back to).
const FORWARD_AFTER_WRITES: usize = 8;

/// How long the TUN side waits for the TLS connection to drain its backlog before it looks
/// again ([`End::PUSH_BACK_ON_TLS`]): a few hundred kilobytes at multi-gigabit rates.
const TLS_DRAIN_WAIT: Duration = Duration::from_micros(200);

/// The TUN-to-peer direction's buffers (see the module docs).
pub(crate) struct Outbound<E: End> {
    source: TunSource,
    trains: Trains,
    reads: DrainReads,
    /// The peer the trains hold datagrams of, and where they go.
    esp_held: Option<(E::Peer, EspTo)>,
    /// The peer whose TLS frames are queued and not sent yet, and how many packets they
    /// hold: a flood of small packets goes out a batch of records per `writev`, not one each.
    tls_pending: Option<(E::Peer, usize)>,
    /// The peer the last packets went to over TLS, where the TLS backlog may hold the
    /// device back ([`End::PUSH_BACK_ON_TLS`]); only then is the backlog looked at (it takes
    /// the state machine's lock, a cold one after an idle spell).
    over_tls: Option<E::Peer>,
    scratch: E::Scratch,
}

impl<E: End> Outbound<E> {
    pub(crate) fn new() -> Self {
        Outbound {
            source: TunSource::new(),
            trains: Trains::new(),
            reads: DrainReads::default(),
            esp_held: None,
            tls_pending: None,
            over_tls: None,
            scratch: E::Scratch::default(),
        }
    }

    /// Sends what the reads so far left held, ESP and TLS; the drain ends.
    fn send_pending<T: TunIo>(&mut self, end: &E, device: &Device<E, T>) {
        self.send_esp(device);
        self.send_tls(end);
        self.reads.ended();
    }

    /// Sends the datagrams the trains hold.
    fn send_esp<T: TunIo>(&mut self, device: &Device<E, T>) {
        let Some((_, to)) = self.esp_held.take() else {
            self.trains.clear();
            return;
        };
        if let Err(e) = self.trains.send_or_forget(device.esp(), to.addr()) {
            debug!(error = %e, "sending ESP");
        }
    }

    /// Sends the TLS frames queued by the reads so far.
    fn send_tls(&mut self, end: &E) {
        if let Some((peer, _)) = self.tls_pending.take() {
            end.send_tls(&peer);
        }
    }

    /// Notes that `peer` queued TLS frames for `packets` packets; the frames of another
    /// peer queued before go out now, and these once [`SEND_BATCH`] packets are queued.
    fn queued_tls(&mut self, end: &E, peer: &E::Peer, packets: usize) {
        match &mut self.tls_pending {
            Some((p, n)) if E::same_peer(p, peer) => *n += packets,
            _ => {
                self.send_tls(end);
                self.tls_pending = Some((peer.clone(), packets));
            }
        }
        if self
            .tls_pending
            .as_ref()
            .is_some_and(|(_, n)| *n >= SEND_BATCH)
        {
            self.send_tls(end);
        }
    }

    /// Whether the TUN device is to wait for TLS to drain (half the backlog limit queued
    /// for the peer the last packets went to over TLS).
    fn held_back_by_tls(&self, end: &E) -> bool {
        E::PUSH_BACK_ON_TLS
            && self.over_tls.as_ref().is_some_and(|peer| {
                end.proto(peer).lock().map(|c| c.tls_backlog()).unwrap_or(0)
                    >= tunnel_proto::MAX_TLS_BACKLOG / 2
            })
    }

    /// Reads one packet (or GSO packet) from the TUN device, forwards it, and says where the
    /// read leaves the drain ([`DrainReads`]); the read's error (`WouldBlock` with nothing
    /// queued) otherwise.
    fn forward<T: TunIo>(&mut self, end: &E, device: &Device<E, T>) -> io::Result<DrainRead> {
        self.source.recv(device.tun())?;
        let now = Instant::now();
        let peer = ip_endpoints(self.source.packet())
            .and_then(|(_, dst)| end.peer_by_destination(dst, &mut self.scratch));
        let Some(peer) = peer else {
            let dropped = self.source.split(|_| {});
            end.dropped(dropped);
            return Ok(self.reads.read(dropped, now));
        };
        let esp_to = device.esp().and_then(|_| end.esp_to(&peer));
        // The trains hold one peer's datagrams, for one address: others' go first.
        if self
            .esp_held
            .as_ref()
            .is_some_and(|(p, to)| !E::same_peer(p, &peer) || esp_to != Some(*to))
        {
            self.send_esp(device);
        }
        let Outbound { source, trains, .. } = self;
        // A state machine that panicked takes no more packets; its owner finds out.
        let Ok(mut proto) = end.proto(&peer).lock() else {
            source.split(|_| {});
            return Ok(self.reads.read(0, now));
        };
        let (mut to_tls, mut bytes) = (0, 0u64);
        // Every segment has the GSO packet's addresses, which were looked up.
        let packets = source.split(|packet| {
            bytes += packet.len() as u64;
            match proto.stage_packet(packet, now, trains.slot()) {
                Ok(Transmit::Esp(len)) => {
                    if trains.commit(len) {
                        seal_current(&mut *proto, trains);
                        trains.next();
                    }
                }
                Ok(Transmit::Tls) => to_tls += 1,
                Err(e) => debug!(error = %e, "packet to the peer dropped"),
            }
        });
        seal_current(&mut *proto, trains);
        let timers_due = proto.timers_due();
        drop(proto);
        if timers_due {
            end.wake(&peer);
        }
        let read = self.reads.read(packets, now);
        // Sent with the lock released: the receiving side opens this peer's packets
        // meanwhile.
        match esp_to {
            Some(to) if !self.trains.is_empty() => {
                // Held trains are this peer's, for this address (others' were sent above).
                if self.esp_held.is_none() {
                    self.esp_held = Some((peer.clone(), to));
                }
                if read.first || self.trains.full() {
                    self.send_esp(device);
                }
            }
            _ => self.trains.clear(),
        }
        // TLS frames wait for the drain's end even from its first read: a TCP stream's ACKs
        // come in drains of a few packets, and a `writev` for the first of them would add a
        // system call per drain to every stream over TLS.
        if to_tls > 0 {
            self.queued_tls(end, &peer, to_tls);
        }
        if E::PUSH_BACK_ON_TLS && packets > 0 {
            self.over_tls = (to_tls > 0).then_some(peer);
        }
        end.count(Direction::Out, packets as u64, bytes);
        Ok(read)
    }
}

/// Seals the current train's staged datagrams (or forgets them when the keys changed since
/// they were staged).
fn seal_current(proto: &mut impl PeerState, trains: &mut Trains) {
    if let Err(e) = trains.seal_current(|pending, size| proto.seal_train(pending, size)) {
        debug!(error = %e, "ESP train dropped");
    }
}

/// Packets from the TUN device until it has no more, or (after an idle spell) until a lone
/// packet was sent ([`DrainReads`]).
pub(crate) fn drain_tun<E: End, T: TunIo>(end: &E, device: &Device<E, T>) -> ControlFlow<()> {
    let Ok(mut out) = device.outbound.lock() else {
        return ControlFlow::Break(());
    };
    while !device.stop.is_set() {
        // Over TLS, a host can push back instead of dropping: while the TLS connection has
        // half the backlog limit queued, the TUN device is not read, its queue fills and the
        // kernel throttles the sending sockets (TCP small queues), which costs the inner TCP
        // no losses.
        if out.held_back_by_tls(end) {
            out.send_pending(end, device);
            if let Some(peer) = &out.over_tls {
                end.wake(peer);
            }
            std::thread::sleep(TLS_DRAIN_WAIT);
            continue;
        }
        match out.forward(end, device) {
            Ok(read) if read.last => break,
            Ok(_) => {}
            Err(e) => {
                after_failed_read(&e, "reading the TUN device");
                break;
            }
        }
    }
    out.send_pending(end, device);
    ControlFlow::Continue(())
}

/// Forwards what the other side answered within the calling thread's TUN writes, which it
/// made holding the TUN device (claimed): at most [`FORWARD_AFTER_WRITES`] reads, unless
/// the TLS backlog holds the device back (the TUN side waits then).
pub(crate) fn forward_answers<E: End, T: TunIo>(end: &E, device: &Device<E, T>) {
    let Ok(mut out) = device.outbound.lock() else {
        return;
    };
    if out.held_back_by_tls(end) {
        return;
    }
    for _ in 0..FORWARD_AFTER_WRITES {
        match out.forward(end, device) {
            Ok(read) if !read.last => {}
            _ => break,
        }
    }
    out.send_pending(end, device);
}
