//! The gateway as an end of the packet path (`fastpath`): its peers are the established
//! sessions, found by destination address (the session leased it) and by SPI (the session
//! installed it); a packet a client sends is forwarded only from the client's own address
//! and to where the access policy lets it go. Each session's task is woken for what it acts
//! on; the TLS side is the set of established sessions' connections (`tls_readers`).

use std::{
    net::{IpAddr, SocketAddr},
    ops::ControlFlow,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Instant,
};

use tracing::debug;
use tunnel_proto::Server;

use super::{
    access::{AccessCache, Refused},
    runtime::Ctx,
    table::{LastLookup, Session},
    tls_readers::{READY_BATCH, TlsReader},
};
use crate::fastpath::{
    device::Device,
    end::{Direction, End, EspTo},
    tls_in::{TlsIn, TlsRead},
    tun_io::TunIo,
};
use tunnel_packet::ip::ip_endpoints;

/// What each direction of the gateway's packet path keeps between packets.
#[derive(Default)]
pub(super) struct Scratch {
    by_addr: LastLookup<IpAddr>,
    by_spi: LastLookup<u32>,
    pub(super) access: AccessCache,
    /// The TLS side's connections with something to read.
    ready: Vec<(u64, Arc<TlsReader>)>,
}

impl End for Ctx {
    type Peer = Arc<Session>;
    type Proto = Server;
    type Scratch = Scratch;

    fn proto<'a>(&'a self, peer: &'a Arc<Session>) -> &'a Mutex<Server> {
        &peer.proto
    }

    fn same_peer(a: &Arc<Session>, b: &Arc<Session>) -> bool {
        Arc::ptr_eq(a, b)
    }

    fn peer_by_destination(&self, dst: IpAddr, scratch: &mut Scratch) -> Option<Arc<Session>> {
        self.table.by_addr_since(dst, &mut scratch.by_addr)
    }

    fn peer_by_spi(&self, spi: u32, scratch: &mut Scratch) -> Option<Arc<Session>> {
        self.table.by_spi_since(spi, &mut scratch.by_spi)
    }

    /// Where the session's ESP last came from (none before its first datagram).
    fn esp_to(&self, peer: &Arc<Session>) -> Option<EspTo> {
        peer.esp_peer.lock().ok().and_then(|p| *p).map(EspTo::Addr)
    }

    fn heard_over_esp(&self, peer: &Arc<Session>, from: SocketAddr, newest: bool, _: Instant) {
        // Authenticated and not a replay of an older datagram: this is where the client's
        // ESP comes from now. The session's task is woken when that changes: the first
        // datagram arms dead-peer detection, whose timer the task runs.
        if newest
            && let Ok(mut p) = peer.esp_peer.lock()
            && *p != Some(from)
        {
            *p = Some(from);
            peer.wake.notify_one();
        }
    }

    fn heard_over_tls(&self, _: &Arc<Session>, _: Instant) {}

    fn admit(&self, peer: &Arc<Session>, packet: &[u8], scratch: &mut Scratch) -> bool {
        forwardable(self, Some(peer), packet, &mut scratch.access)
    }

    fn wake(&self, peer: &Arc<Session>) {
        peer.wake.notify_one();
    }

    fn send_tls(&self, peer: &Arc<Session>) {
        peer.send_tls_now();
    }

    const PUSH_BACK_ON_TLS: bool = false;

    const CLAIM_FOR_TLS_WRITES: bool = true;

    fn dropped(&self, count: usize) {
        self.dropped.fetch_add(count as u64, Ordering::Relaxed);
    }

    fn count(&self, direction: Direction, packets: u64, bytes: u64) {
        let c = &self.counters;
        let (p, b) = match direction {
            Direction::In => (&c.packets_in, &c.bytes_in),
            Direction::Out => (&c.packets_out, &c.bytes_out),
        };
        p.fetch_add(packets, Ordering::Relaxed);
        b.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Established sessions' TLS connections with something to read, each until it has no
    /// more.
    fn drain_tls<T: TunIo>(
        &self,
        device: &Device<Self, T>,
        tls_in: &mut TlsIn<Self>,
    ) -> ControlFlow<()> {
        let mut ready = std::mem::take(&mut tls_in.scratch.ready);
        while !device.stop.is_set() {
            let reported = self.tls_readers.ready(&mut ready);
            for (token, reader) in ready.iter() {
                read_tls_connection(self, device, tls_in, *token, reader);
            }
            if reported < READY_BATCH {
                break;
            }
        }
        // No connection is kept alive by the list until the next drain.
        ready.clear();
        tls_in.scratch.ready = ready;
        ControlFlow::Continue(())
    }
}

/// Reads one established session's TLS connection until it has no more, waking its task
/// when the state machine has something for it. A closed or failed connection is taken out
/// of the set and marked `closed` for the task, which ends it; a session the bytes closed
/// is the task's to end (it acts on the state machine's events).
pub(super) fn read_tls_connection<T: TunIo>(
    ctx: &Ctx,
    device: &Device<Ctx, T>,
    tls_in: &mut TlsIn<Ctx>,
    token: u64,
    reader: &TlsReader,
) {
    let session = &reader.session;
    loop {
        match tls_in.read_connection(ctx, device, session, &reader.link) {
            TlsRead::Drained => return,
            TlsRead::Protocol(e) => {
                debug!(session = session.id, error = %e, "protocol error");
                session.wake.notify_one();
                continue;
            }
            TlsRead::Closed => debug!(session = session.id, "the client closed the TLS connection"),
            TlsRead::Failed(e) => {
                debug!(session = session.id, error = %e, "reading the TLS connection");
            }
        }
        ctx.tls_readers.remove(token);
        reader.closed.store(true, Ordering::Release);
        session.wake.notify_one();
        return;
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
