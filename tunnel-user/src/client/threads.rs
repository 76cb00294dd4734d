//! The client's packet threads: TUN to ESP or TLS, ESP and TLS to TUN.

use std::{
    io,
    net::UdpSocket,
    ops::ControlFlow,
    sync::{Arc, Mutex, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::{debug, warn};
use tunnel_proto::{EspInput, Transmit};

use crate::{
    fastpath::packet_io::ip_endpoints,
    fastpath::pump::{
        self, Dispatch, DrainRead, DrainReads, RECV_BATCH, SEND_BATCH, Source, Stop, Trains,
        TunSink, TunSource, after_failed_read,
    },
    sys::tun::Tun,
    sys::udp_gso::RecvBatch,
};

use super::{
    session::{Ended, Session, take_tls_bytes},
    status::{Lost, Shared},
    tunnel::Tunnel,
};

pub(super) fn start_threads(
    t: &Tunnel,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
) -> io::Result<Vec<JoinHandle<()>>> {
    // Only a non-blocking device may be read by the ESP side after its writes: a blocking
    // read there would stall ESP until the next packet from an application.
    let nonblocking = match t.tun.set_nonblocking() {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "TUN device stays blocking");
            false
        }
    };
    let mut dispatch = Dispatch::new(&*t.tun, t.udp.as_deref(), &t.stop)?;
    // The TLS connection is read here from now on, not by the task (see `tls_link`).
    dispatch.add_tls(&session.link)?;
    session.link.read_by_threads()?;
    let dispatch = Arc::new(dispatch);
    let outbound = Arc::new(Mutex::new(Outbound::new(shared.clone())));
    let inbound = Arc::new(Mutex::new(Inbound::new(&t.tun, shared.clone())));
    let tls_inbound = Arc::new(Mutex::new(TlsInbound::new()));
    let threads = (0..dispatch.sources())
        .map(|i| {
            let (tun, udp, stop, session, dispatch, outbound, inbound, tls_inbound, shared) = (
                t.tun.clone(),
                t.udp.clone(),
                t.stop.clone(),
                session.clone(),
                dispatch.clone(),
                outbound.clone(),
                inbound.clone(),
                tls_inbound.clone(),
                shared.clone(),
            );
            std::thread::Builder::new()
                .name(format!("tunnel-packets-{i}"))
                .spawn(move || {
                    let udp = udp.as_deref();
                    pump::serve(&dispatch, &stop, |source| match (source, udp) {
                        (Source::Tun, _) => drain_tun(&tun, udp, &stop, &session, &outbound),
                        (Source::Esp, Some(udp)) => {
                            let Ok(mut inbound) = inbound.lock() else {
                                return ControlFlow::Break(());
                            };
                            let outbound = nonblocking.then_some(&*outbound);
                            inbound.drain(&tun, udp, &stop, &session, &dispatch, outbound)
                        }
                        (Source::Esp, None) => ControlFlow::Continue(()),
                        (Source::Tls, _) => {
                            drain_tls(&tls_inbound, &tun, &stop, &session, &shared, &dispatch)
                        }
                    })
                })
        })
        .collect::<io::Result<Vec<_>>>()?;
    // Plaintext rustls already holds (beyond what the task's last read took) makes the
    // socket report nothing: it is taken now.
    if let Some(_claim) = dispatch.claim(Source::Tls, &t.stop) {
        let _ = drain_tls(&tls_inbound, &t.tun, &t.stop, session, shared, &dispatch);
    }
    Ok(threads)
}

/// The TLS connection's receiving side, once the packet threads read it: records opened
/// and handed to the state machine, its packets written into the TUN device, joined where
/// possible. Reading it here rather than in the task saves the round trip the wake-up of a
/// tokio worker and its scheduling (about 20 us at each end on the benchmark's VM,
/// `docs/fastpath.md`).
struct TlsInbound {
    buf: Vec<u8>,
    /// Made by the first packet ([`take_tls_bytes`]).
    sink: Option<TunSink>,
}

impl TlsInbound {
    fn new() -> TlsInbound {
        TlsInbound {
            buf: vec![0u8; 65_536],
            sink: None,
        }
    }
}

/// Reads the TLS connection until the socket has no more ([`TlsInbound`]). A closed
/// connection, a read error or a protocol error ends the session: recorded for the task,
/// and the connection is no longer handed out (it would read as closed for ever).
fn drain_tls(
    inbound: &Mutex<TlsInbound>,
    tun: &Tun,
    stop: &Stop,
    session: &Session,
    shared: &Shared,
    dispatch: &Dispatch,
) -> ControlFlow<()> {
    let Ok(mut this) = inbound.lock() else {
        return ControlFlow::Break(());
    };
    let TlsInbound { buf, sink } = &mut *this;
    while !stop.is_set() {
        let why = match session.link.try_recv(buf) {
            Ok(0) => Ended::Lost(Lost::Closed),
            Ok(n) => match take_tls_bytes(session, shared, Some(tun), sink, &buf[..n]) {
                Ok(attention) => {
                    if attention {
                        session.wake.notify_one();
                    }
                    continue;
                }
                Err(end) => end,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => Ended::Lost(Lost::Read(Arc::new(e))),
        };
        dispatch.retire(Source::Tls);
        session.end(why);
        break;
    }
    ControlFlow::Continue(())
}

/// Packets the classifier redirected into the TUN device, until it has no more: to the
/// gateway over ESP (staged into UDP GSO trains, sealed a read at a time, sent in batches)
/// or TLS. The ESP side forwards too, right after its own TUN writes ([`Outbound`]). See
/// `docs/fastpath.md`.
fn drain_tun(
    tun: &Tun,
    udp: Option<&UdpSocket>,
    stop: &Stop,
    session: &Session,
    outbound: &Mutex<Outbound>,
) -> ControlFlow<()> {
    let Ok(mut out) = outbound.lock() else {
        return ControlFlow::Break(());
    };
    while !stop.is_set() {
        // Over TLS, a host can push back instead of dropping: while the TLS connection has
        // half the backlog limit queued, the TUN device is not read, its queue fills and the
        // kernel throttles the sending sockets (TCP small queues), which costs the inner TCP
        // no losses. (The gateway, a router for many clients, drops at the limit instead.)
        if out.held_back_by_tls(session) {
            out.send_pending(udp, session);
            session.wake.notify_one();
            std::thread::sleep(TLS_DRAIN_WAIT);
            continue;
        }
        match out.forward(tun, udp, session) {
            Ok(Some(read)) if read.last => break,
            Ok(Some(_)) => {}
            Ok(None) => return ControlFlow::Break(()),
            Err(e) => {
                after_failed_read(&e, "reading the TUN device");
                break;
            }
        }
    }
    out.send_pending(udp, session);
    ControlFlow::Continue(())
}

/// The TUN-to-gateway direction's buffers. Whoever holds them reads the TUN device and
/// sends what it read before the next read, so packets leave in the order the device gave
/// them: the thread the TUN device was handed to, or the ESP side right after its TUN
/// writes. A packet written into the TUN device reaches its socket within the write, and
/// what the application's stack answers at once (a TCP ACK) is queued by then; the ESP side
/// sends it without a wake-up of another thread. Within a drain of the device, what the
/// reads after the first give is held and sent in batches ([`DrainReads`]); whoever holds
/// the buffers sends what they hold before letting go of them.
struct Outbound {
    source: TunSource,
    trains: Trains,
    reads: DrainReads,
    shared: Arc<Shared>,
    /// The last packet forwarded went over TLS: only then can the TLS backlog be what
    /// holds the TUN device back, and only then is it looked at (it takes the state
    /// machine's lock, a cold one after an idle spell).
    over_tls: bool,
    /// Packets whose TLS frames are queued and not sent yet: a flood of small packets goes
    /// out a batch of records per `writev`, not one each.
    tls_queued: usize,
}

/// TUN reads the ESP side makes after its writes, at most (it has ESP to receive).
const FORWARD_AFTER_WRITES: usize = 8;

impl Outbound {
    fn new(shared: Arc<Shared>) -> Outbound {
        Outbound {
            source: TunSource::new(),
            trains: Trains::new(),
            reads: DrainReads::default(),
            shared,
            over_tls: false,
            tls_queued: 0,
        }
    }

    /// Sends what the reads so far left held, ESP and TLS; the drain ends.
    fn send_pending(&mut self, udp: Option<&UdpSocket>, session: &Session) {
        send_trains(&mut self.trains, udp);
        if self.tls_queued > 0 {
            self.tls_queued = 0;
            session.send_tls_now();
        }
        self.reads.ended();
    }

    /// Whether the TUN device is to wait for TLS to drain (half the backlog limit queued):
    /// only while packets go over TLS is the backlog looked at.
    fn held_back_by_tls(&self, session: &Session) -> bool {
        self.over_tls
            && session.proto.lock().map(|c| c.tls_backlog()).unwrap_or(0)
                >= tunnel_proto::MAX_TLS_BACKLOG / 2
    }

    /// Reads one packet (or GSO packet) from the TUN device, forwards it, and says where the
    /// read leaves the drain ([`DrainReads`]). None when the session's state machine is gone
    /// (it panicked); the read's error (`WouldBlock` with nothing queued) otherwise.
    fn forward(
        &mut self,
        tun: &Tun,
        udp: Option<&UdpSocket>,
        session: &Session,
    ) -> io::Result<Option<DrainRead>> {
        let Outbound {
            source,
            trains,
            reads,
            shared,
            over_tls,
            tls_queued,
        } = self;
        source.recv(tun)?;
        let Ok(mut c) = session.proto.lock() else {
            return Ok(None);
        };
        let (mut packets, mut bytes) = (0u64, 0u64);
        let mut to_tls = 0;
        let now = Instant::now();
        source.split(|p| {
            if ip_endpoints(p).is_none() {
                return;
            }
            packets += 1;
            bytes += p.len() as u64;
            match c.stage_packet(p, now, trains.slot()) {
                Ok(Transmit::Esp(len)) => {
                    if trains.commit(len) {
                        seal_current(&mut c, trains);
                        trains.next();
                    }
                }
                Ok(Transmit::Tls) => to_tls += 1,
                Err(e) => debug!(error = %e, "packet to the gateway dropped"),
            }
        });
        seal_current(&mut c, trains);
        drop(c);
        // Sent with the lock released: the receiving thread opens packets meanwhile.
        let read = reads.read(packets as usize, now);
        if read.first || trains.full() || udp.is_none() {
            send_trains(trains, udp);
        }
        *tls_queued += to_tls;
        // TLS frames wait for the drain's end even from its first read: one `writev` more
        // per drain cost TCP over TLS several per cent (its ACKs come in drains of a few).
        if *tls_queued >= SEND_BATCH {
            *tls_queued = 0;
            session.send_tls_now();
        }
        if packets > 0 {
            *over_tls = to_tls > 0;
            shared
                .traffic
                .packets_out
                .fetch_add(packets, Ordering::Relaxed);
            shared.traffic.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(Some(read))
    }
}

/// Sends the sealed trains to the gateway (forgets them when there is no ESP socket).
fn send_trains(trains: &mut Trains, udp: Option<&UdpSocket>) {
    if let Err(e) = trains.send_or_forget(udp, None) {
        debug!(error = %e, "sending ESP");
    }
}

/// How long the TUN side waits for the TLS connection to drain its backlog before it looks
/// again: a few hundred kilobytes at multi-gigabit rates.
const TLS_DRAIN_WAIT: Duration = Duration::from_micros(200);

/// Seals the current train's staged datagrams (or forgets them when the keys changed since
/// they were staged).
fn seal_current(c: &mut tunnel_proto::Client, trains: &mut Trains) {
    if let Err(e) = trains.seal_current(|pending, size| c.seal_train(pending, size)) {
        debug!(error = %e, "ESP train dropped");
    }
}

/// The gateway-to-TUN direction's buffers: ESP datagrams from the gateway, many per system
/// call (`recvmmsg`, and UDP GRO where the kernel joins them), opened and written into the
/// TUN device, joined where possible.
struct Inbound {
    batch: RecvBatch,
    sink: TunSink,
    /// Where the opened packets are in `batch`: (message, offset, length). They are written
    /// into the TUN device after the state machine's lock is released, so the sending side
    /// never waits for TUN writes.
    opened: Vec<(usize, usize, usize)>,
    shared: Arc<Shared>,
}

impl Inbound {
    fn new(tun: &Tun, shared: Arc<Shared>) -> Inbound {
        Inbound {
            batch: RecvBatch::new(RECV_BATCH, tunnel_packet::MAX_PACKET),
            sink: TunSink::new(tun),
            opened: Vec::with_capacity(RECV_BATCH * 64),
            shared,
        }
    }

    /// Receives until the socket has no more; after each batch's writes, sends what the
    /// applications answered at once through `outbound` (None: the TUN device blocks),
    /// holding the TUN device (claimed from `dispatch`) from before the writes.
    fn drain(
        &mut self,
        tun: &Tun,
        udp: &UdpSocket,
        stop: &Stop,
        session: &Session,
        dispatch: &Dispatch,
        outbound: Option<&Mutex<Outbound>>,
    ) -> ControlFlow<()> {
        let Inbound {
            batch,
            sink,
            opened,
            shared,
        } = self;
        while !stop.is_set() {
            if let Err(e) = batch.recv(udp) {
                after_failed_read(&e, "receiving ESP");
                break;
            }
            let Ok(mut c) = session.proto.lock() else {
                return ControlFlow::Break(());
            };
            let now = Instant::now();
            let mut ok = false;
            opened.clear();
            for (i, (r, message)) in batch.messages().enumerate() {
                let base = message.as_ptr() as usize;
                c.handle_esp_train(message, r.size, now, |input| match input {
                    Ok(EspInput::Packet(p)) => {
                        ok = true;
                        opened.push((i, p.as_ptr() as usize - base, p.len()));
                    }
                    Ok(_) => ok = true,
                    Err(e) => debug!(error = %e, "ESP datagram dropped"),
                });
            }
            // EspUp and similar events are picked up by the TLS task.
            let events = c.has_events();
            drop(c);
            // What the writes make the local stack answer (TCP ACKs) is queued within them:
            // this thread holds the TUN device meanwhile, so the answer wakes no other
            // thread, and sends it (unless another thread holds the device and will, or TLS
            // is backed up; the TUN side waits then). A batch nothing in which is answered
            // at once (UDP, echo replies) is written without taking the device.
            let claim = outbound.and_then(|outbound| {
                let written = opened
                    .iter()
                    .map(|&(i, at, len)| &batch.message(i)[at..at + len]);
                Some((outbound, dispatch.claim_tun_for(written, stop)?))
            });
            let mut bytes = 0u64;
            for &(i, at, len) in opened.iter() {
                sink.push(tun, &batch.message(i)[at..at + len]);
                bytes += len as u64;
            }
            sink.flush(tun);
            if let Some((outbound, _claim)) = claim
                && let Ok(mut out) = outbound.lock()
                && !out.held_back_by_tls(session)
            {
                for _ in 0..FORWARD_AFTER_WRITES {
                    match out.forward(tun, Some(udp), session) {
                        Ok(Some(read)) if !read.last => {}
                        _ => break,
                    }
                }
                out.send_pending(Some(udp), session);
            }
            if events {
                session.wake.notify_one();
            }
            if ok {
                shared.heard.mark(now);
            }
            shared
                .traffic
                .packets_in
                .fetch_add(opened.len() as u64, Ordering::Relaxed);
            shared.traffic.bytes_in.fetch_add(bytes, Ordering::Relaxed);
            // A batch with room to spare emptied the socket: given back without another
            // receive to find it empty (re-arming reports what arrived since).
            if !batch.was_full() {
                break;
            }
        }
        ControlFlow::Continue(())
    }
}
