//! The gateway's packet threads: TUN to the clients (ESP or TLS), ESP to TUN, and the TLS
//! connections of established sessions to TUN.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    ops::ControlFlow,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::Instant,
};

use tracing::{debug, warn};
use tunnel_proto::{EspInput, Server, Transmit, peek_spi};

use super::{
    access::{AccessCache, Refused},
    table::{LastLookup, Session},
    tls_readers::{READY_BATCH, TlsReader},
};
use crate::{
    fastpath::packet_io::ip_endpoints,
    fastpath::pump::{
        self, Claim, DrainRead, DrainReads, RECV_BATCH, SEND_BATCH, Source, Trains, TunSink,
        TunSource, after_failed_read,
    },
    sys::tun::Tun,
    sys::udp_gso::RecvBatch,
};

use super::runtime::*;

pub(super) fn start_data_plane(ctx: &Arc<Ctx>) -> Result<Vec<JoinHandle<()>>, GatewayError> {
    // Only a non-blocking device may be read by the ESP side after its writes: a blocking
    // read there would stall ESP until the next packet from corp.
    let nonblocking = match ctx.tun.set_nonblocking() {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "the gateway's TUN device stays blocking");
            false
        }
    };
    (0..ctx.dispatch.sources())
        .map(|i| {
            let c = ctx.clone();
            std::thread::Builder::new()
                .name(format!("gw-packets-{i}"))
                .spawn(move || {
                    pump::serve(&c.dispatch, &c.stop, |source| match source {
                        Source::Tun => drain_tun(&c),
                        Source::Esp => drain_esp(&c, nonblocking),
                        Source::Tls => drain_tls(&c),
                    })
                })
                .map_err(io_err("starting a packet thread"))
        })
        .collect()
}

/// Packets from the corp side, until the TUN device has no more: to the session that owns
/// the destination, over ESP (staged into UDP GSO trains, sealed a read at a time, sent in
/// batches) or TLS. A GSO packet is one flow, so the session is looked up and locked once
/// per read. The ESP side forwards too, right after its own TUN writes ([`TunSide`]). See
/// `docs/fastpath.md`.
fn drain_tun(ctx: &Ctx) -> ControlFlow<()> {
    let Ok(mut side) = ctx.tun_side.lock() else {
        return ControlFlow::Break(());
    };
    while !ctx.stop.is_set() {
        match side.forward(ctx) {
            Ok(read) if read.last => break,
            Ok(_) => {}
            Err(e) => {
                after_failed_read(&e, "reading the TUN device");
                break;
            }
        }
    }
    side.send_pending(ctx);
    ControlFlow::Continue(())
}

/// ESP datagrams from clients, until the socket has no more ([`EspSide`]).
fn drain_esp(ctx: &Ctx, forward_after_writes: bool) -> ControlFlow<()> {
    let Ok(mut side) = ctx.esp_side.lock() else {
        return ControlFlow::Break(());
    };
    while !ctx.stop.is_set() {
        match side.receive(ctx, forward_after_writes) {
            // A batch with room to spare emptied the socket: given back without another
            // receive to find it empty (re-arming reports what arrived since).
            Ok(()) if !side.batch.was_full() => break,
            Ok(()) => {}
            Err(e) => {
                after_failed_read(&e, "receiving ESP");
                break;
            }
        }
    }
    ControlFlow::Continue(())
}

/// Established sessions' TLS connections with something to read, each until it has no
/// more (`tls_readers`).
fn drain_tls(ctx: &Ctx) -> ControlFlow<()> {
    let Ok(mut scratch) = ctx.tls_scratch.lock() else {
        return ControlFlow::Break(());
    };
    let TlsScratch {
        buf,
        sink,
        ready,
        access,
    } = &mut *scratch;
    while !ctx.stop.is_set() {
        let reported = ctx.tls_readers.ready(ready);
        for (token, reader) in ready.iter() {
            read_tls_connection(ctx, *token, reader, buf, sink, access);
        }
        if reported < READY_BATCH {
            break;
        }
    }
    // No connection is kept alive by the list until the next drain.
    ready.clear();
    ControlFlow::Continue(())
}

/// The buffers of the thread that reads the TLS connections.
pub(super) struct TlsScratch {
    buf: Vec<u8>,
    sink: TunSink,
    ready: Vec<(u64, Arc<TlsReader>)>,
    access: AccessCache,
}

impl TlsScratch {
    pub(super) fn new(tun: &Tun) -> TlsScratch {
        TlsScratch {
            buf: vec![0u8; 65_536],
            sink: TunSink::new(tun),
            ready: Vec::with_capacity(READY_BATCH),
            access: AccessCache::default(),
        }
    }
}

/// Reads one established session's TLS connection until it has no more, as its task did
/// before ([`take_client_bytes`]); wakes the task when the state machine has something
/// for it. A closed or failed connection is taken out of the set and marked `closed` for
/// the task, which ends it.
pub(super) fn read_tls_connection(
    ctx: &Ctx,
    token: u64,
    reader: &TlsReader,
    buf: &mut [u8],
    sink: &mut TunSink,
    access: &mut AccessCache,
) {
    let session = &reader.session;
    loop {
        match reader.link.try_recv(buf) {
            Ok(0) => debug!(session = session.id, "the client closed the TLS connection"),
            Ok(n) => {
                let mut claim = None;
                let attention = session
                    .proto
                    .lock()
                    .map(|mut p| {
                        let bytes = &buf[..n];
                        take_client_bytes(
                            ctx,
                            &mut p,
                            Some(session),
                            sink,
                            access,
                            &mut claim,
                            bytes,
                        )
                    })
                    .unwrap_or(true);
                flush_client_packets(ctx, sink, claim);
                if attention {
                    session.wake.notify_one();
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => debug!(session = session.id, error = %e, "reading the TLS connection"),
        }
        ctx.tls_readers.remove(token);
        reader.closed.store(true, Ordering::Release);
        session.wake.notify_one();
        return;
    }
}

/// Runs bytes a client sent over TLS through its state machine `p`: the packets in them
/// go to `sink` (written by [`flush_client_packets`] once `p` is free again), the TUN
/// device claimed into `claim` before one that may be answered at once, as on the ESP
/// side. Whether the connection's task has work now: events, frames to send, or the
/// session closed.
pub(super) fn take_client_bytes<'c>(
    ctx: &'c Ctx,
    p: &mut Server,
    owner: Option<&Session>,
    sink: &mut TunSink,
    access: &mut AccessCache,
    claim: &mut Option<Claim<'c>>,
    data: &[u8],
) -> bool {
    let result = p.handle_tls_bytes_with(data, Instant::now(), &mut |packet| {
        if forwardable(ctx, owner, packet, access) {
            if claim.is_none() {
                *claim = ctx
                    .dispatch
                    .claim_tun_for(std::iter::once(packet), &ctx.stop);
            }
            sink.push(&ctx.tun, packet);
        }
    });
    if let Err(e) = result {
        // The state machine queued what it has to say, and a Closed event.
        debug!(error = %e, "protocol error");
    }
    p.has_events() || !p.pending_tls().is_empty() || p.is_closed()
}

/// Writes what [`take_client_bytes`] left in `sink` into the TUN device, then forwards
/// what the corp side answered within the writes when the device was claimed for them.
pub(super) fn flush_client_packets(ctx: &Ctx, sink: &mut TunSink, claim: Option<Claim<'_>>) {
    sink.flush(&ctx.tun);
    if let Some(_claim) = claim {
        forward_answers(ctx);
    }
}

/// The TUN-to-ESP direction's buffers. Whoever holds them reads the TUN device and sends
/// what it read before the next read, so packets leave in the order the device gave them:
/// the thread the TUN device was handed to, or the ESP side right after its TUN writes. A
/// packet written into the TUN device is routed, and a corp host's answer to it (an ICMP
/// echo reply, a TCP ACK) made, within the write; the ESP side finds it queued and sends it at once, which saves
/// the round trip a wake-up of another thread (on an idle vCPU, often on the other core)
/// would cost.
pub(super) struct TunSide {
    source: TunSource,
    trains: Trains,
    /// The session the trains hold datagrams of, and where they go: within a drain of the
    /// device, what the reads after the first give is held and sent in batches
    /// ([`DrainReads`]), one session's at a time.
    esp_held: Option<(Arc<Session>, SocketAddr)>,
    reads: DrainReads,
    session: LastLookup<IpAddr>,
    /// The session whose TLS frames are queued and not sent yet, and how many packets they
    /// hold: a flood of small packets goes out a batch of records per `writev`, not one.
    tls_pending: Option<(Arc<Session>, usize)>,
}

/// TUN reads the ESP side makes after its writes, at most (it has ESP to receive).
const FORWARD_AFTER_WRITES: usize = 8;

impl TunSide {
    pub(super) fn new() -> TunSide {
        TunSide {
            source: TunSource::new(),
            trains: Trains::new(),
            esp_held: None,
            reads: DrainReads::default(),
            session: LastLookup::default(),
            tls_pending: None,
        }
    }

    /// Sends what the reads so far left held, ESP and TLS; the drain ends.
    fn send_pending(&mut self, ctx: &Ctx) {
        self.send_esp(ctx);
        self.send_tls();
        self.reads.ended();
    }

    /// Sends the datagrams the trains hold.
    fn send_esp(&mut self, ctx: &Ctx) {
        let Some((session, peer)) = self.esp_held.take() else {
            self.trains.clear();
            return;
        };
        if let Err(e) = self.trains.send_or_forget(ctx.udp.as_ref(), Some(peer)) {
            debug!(session = session.id, error = %e, "sending ESP");
        }
    }

    /// Sends the TLS frames queued by the reads so far.
    fn send_tls(&mut self) {
        if let Some((session, _)) = self.tls_pending.take() {
            session.send_tls_now();
        }
    }

    /// Notes that `session` queued TLS frames for `packets` packets; the frames of another
    /// session queued before go out now, and these once [`SEND_BATCH`] packets are queued.
    fn queued_tls(&mut self, session: &Arc<Session>, packets: usize) {
        match &mut self.tls_pending {
            Some((s, n)) if Arc::ptr_eq(s, session) => *n += packets,
            _ => {
                self.send_tls();
                self.tls_pending = Some((session.clone(), packets));
            }
        }
        if self
            .tls_pending
            .as_ref()
            .is_some_and(|(_, n)| *n >= SEND_BATCH)
        {
            self.send_tls();
        }
    }

    /// Reads one packet (or GSO packet) from the TUN device and forwards it, and says where
    /// the read leaves the drain ([`DrainReads`]); the read's error (`WouldBlock` with
    /// nothing queued) otherwise.
    fn forward(&mut self, ctx: &Ctx) -> io::Result<DrainRead> {
        self.source.recv(&ctx.tun)?;
        let now = Instant::now();
        let session = ip_endpoints(self.source.packet())
            .and_then(|(_, dst)| ctx.table.by_addr_since(dst, &mut self.session));
        let Some(session) = session else {
            let dropped = self.source.split(|_| {});
            ctx.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            return Ok(self.reads.read(dropped, now));
        };
        let peer = session.esp_peer.lock().ok().and_then(|p| *p);
        // The trains hold one session's datagrams, for one address: others' go first.
        if self
            .esp_held
            .as_ref()
            .is_some_and(|(s, to)| !Arc::ptr_eq(s, &session) || peer != Some(*to))
        {
            self.send_esp(ctx);
        }
        let TunSide { source, trains, .. } = self;
        let Ok(mut proto) = session.proto.lock() else {
            return Ok(self.reads.read(0, now));
        };
        let mut to_tls = 0;
        let packets = source.split(|packet| {
            // Every segment has the GSO packet's addresses; a plain packet was looked up.
            match proto.stage_packet(packet, now, trains.slot()) {
                Ok(Transmit::Esp(len)) => {
                    if trains.commit(len) {
                        seal_current(&mut proto, trains, session.id);
                        trains.next();
                    }
                }
                Ok(Transmit::Tls) => to_tls += 1,
                Err(e) => debug!(session = session.id, error = %e, "packet to client dropped"),
            }
        });
        seal_current(&mut proto, trains, session.id);
        let timers_due = proto.timers_due();
        drop(proto);
        wake_if_timers_due(&session, timers_due);
        let read = self.reads.read(packets, now);
        // Sent with the lock released: the ESP side opens this session's packets meanwhile.
        let full = trains.full();
        match peer {
            Some(peer) if !trains.is_empty() => {
                // Held trains are this session's, for this peer (others' were sent above).
                if self.esp_held.is_none() {
                    self.esp_held = Some((session.clone(), peer));
                }
                if read.first || full {
                    self.send_esp(ctx);
                }
            }
            _ => self.trains.clear(),
        }
        if to_tls > 0 {
            self.queued_tls(&session, to_tls);
        }
        Ok(read)
    }
}

/// Seals the current train's staged datagrams (or forgets them when the keys changed since
/// they were staged).
fn seal_current(proto: &mut Server, trains: &mut Trains, session: u64) {
    if let Err(e) = trains.seal_current(|pending, size| proto.seal_train(pending, size)) {
        debug!(session, error = %e, "ESP train dropped");
    }
}

/// The ESP-to-TUN direction's buffers: ESP datagrams from clients, many per system call
/// (`recvmmsg`, and UDP GRO where the kernel joins them). Each run of datagrams with one SPI
/// is opened as one train under its session's lock; then, with no lock held, the packets
/// whose source the session owns are written into the TUN device, joined where possible.
pub(super) struct EspSide {
    batch: RecvBatch,
    reply: Vec<u8>,
    sink: TunSink,
    /// The runs of this receive: the session and where its datagrams came from.
    runs: Vec<(Arc<Session>, SocketAddr)>,
    /// Opened packets: (run, message, offset, length) in `batch`.
    opened: Vec<(usize, usize, usize, usize)>,
    session: LastLookup<u32>,
    access: AccessCache,
}

impl EspSide {
    pub(super) fn new(tun: &Tun) -> EspSide {
        EspSide {
            batch: RecvBatch::new(RECV_BATCH, tunnel_packet::MAX_PACKET),
            reply: vec![0u8; 512],
            sink: TunSink::new(tun),
            runs: Vec::with_capacity(RECV_BATCH),
            opened: Vec::with_capacity(RECV_BATCH * 64),
            session: LastLookup::default(),
            access: AccessCache::default(),
        }
    }

    /// Receives one batch and writes what it opened into the TUN device; then, with
    /// `forward_after_writes`, sends what the corp side answered at once. The receive's
    /// error (`WouldBlock` with nothing queued) otherwise.
    fn receive(&mut self, ctx: &Ctx, forward_after_writes: bool) -> io::Result<()> {
        let Some(udp) = &ctx.udp else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let EspSide {
            batch,
            reply,
            sink,
            runs,
            opened,
            session: last,
            access,
        } = self;
        batch.recv(udp)?;
        let now = Instant::now();
        runs.clear();
        opened.clear();
        for (i, (r, message)) in batch.messages().enumerate() {
            let base = message.as_ptr() as usize;
            let from = r.from;
            let mut rest = &mut message[..];
            while !rest.is_empty() {
                // The datagrams from here on that carry the same SPI.
                let spi = peek_spi(rest);
                let mut end = 0;
                while end < rest.len() && peek_spi(&rest[end..]) == spi {
                    end = (end + r.size).min(rest.len());
                }
                let (run, tail) = rest.split_at_mut(end);
                rest = tail;
                let count = run.len().div_ceil(r.size);
                let Some(session) = spi.and_then(|spi| ctx.table.by_spi_since(spi, last)) else {
                    ctx.dropped.fetch_add(count as u64, Ordering::Relaxed);
                    debug!(%from, spi = ?spi.map(|s| format!("{s:#010x}")), count, "ESP datagrams for no session");
                    continue;
                };
                let Ok(mut proto) = session.proto.lock() else {
                    continue;
                };
                let index = runs.len();
                let newest = proto.handle_esp_train(run, r.size, now, |input| match input {
                    Ok(EspInput::Packet(p)) => {
                        opened.push((index, i, p.as_ptr() as usize - base, p.len()));
                    }
                    Ok(_) => {}
                    Err(e) => debug!(session = session.id, error = %e, "ESP datagram dropped"),
                });
                // A probe in the train: its answer.
                let answer = proto.poll_esp_transmit(reply);
                let timers_due = proto.timers_due();
                drop(proto);
                wake_if_timers_due(&session, timers_due);
                if let Ok(Some(n)) = answer {
                    let _ = udp.send_to(&reply[..n], from);
                }
                if newest {
                    // Authenticated and not a replay of an older datagram: this is where
                    // the client's ESP comes from now.
                    if let Ok(mut p) = session.esp_peer.lock()
                        && *p != Some(from)
                    {
                        *p = Some(from);
                    }
                }
                runs.push((session, from));
            }
        }
        // What the writes make the corp side answer is queued within them: this thread
        // holds the TUN device meanwhile, so the answer wakes no other thread, and sends it
        // (unless another thread holds the device and will).
        let claim = if forward_after_writes {
            let written = opened
                .iter()
                .map(|&(_, i, at, len)| &batch.message(i)[at..at + len]);
            ctx.dispatch.claim_tun_for(written, &ctx.stop)
        } else {
            None
        };
        for &(run, i, at, len) in opened.iter() {
            let packet = &batch.message(i)[at..at + len];
            if forwardable(ctx, Some(&runs[run].0), packet, access) {
                sink.push(&ctx.tun, packet);
            }
        }
        sink.flush(&ctx.tun);
        if let Some(_claim) = claim {
            forward_answers(ctx);
        }
        Ok(())
    }
}

/// Forwards what the corp side answered within the calling thread's TUN writes, which it
/// made holding the TUN device (claimed): at most [`FORWARD_AFTER_WRITES`] reads.
fn forward_answers(ctx: &Ctx) {
    if let Ok(mut side) = ctx.tun_side.lock() {
        for _ in 0..FORWARD_AFTER_WRITES {
            match side.forward(ctx) {
                Ok(read) if !read.last => {}
                _ => break,
            }
        }
        side.send_pending(ctx);
    }
}

/// After the packet path ran a session's state machine: when that made timer work (the
/// keys carried their byte lifetime), wakes the session's task, which runs the timers and
/// rekeys.
fn wake_if_timers_due(session: &Session, timers_due: bool) {
    if timers_due {
        session.wake.notify_one();
    }
}

/// Whether a packet a client sent (over TLS or ESP) may be forwarded: its source is one of
/// the client's addresses, and its destination one the access policy lets clients reach.
/// Counts and logs it when not.
pub(super) fn forwardable(
    ctx: &Ctx,
    session: Option<&Session>,
    packet: &[u8],
    access: &mut AccessCache,
) -> bool {
    match (session, ip_endpoints(packet)) {
        (Some(s), Some((src, _))) if s.owns(src) => {}
        (s, other) => {
            ctx.dropped.fetch_add(1, Ordering::Relaxed);
            debug!(session = s.map(|s| s.id), src = ?other.map(|(s, _)| s), "spoofed source dropped");
            return false;
        }
    }
    // A session is checked by its realm's routes and DNS; one without a realm the policy
    // knows reaches nothing.
    let realm = session.and_then(|s| s.realm_id);
    let verdict = ctx
        .access
        .policy(access)
        .map_or(Err(Refused::Unreadable), |p| match realm {
            Some(id) => p.check_in(id, packet),
            None => Err(Refused::NotRouted),
        });
    if let Err(why) = verdict {
        ctx.forbidden.fetch_add(1, Ordering::Relaxed);
        debug!(
            session = session.map(|s| s.id),
            dst = ?ip_endpoints(packet).map(|(_, d)| d),
            ?why,
            "destination not allowed: dropped"
        );
        return false;
    }
    true
}
