//! The client as an end of the packet path (`fastpath`): the case of one peer, its session
//! with the gateway. Every packet the classifier redirects into the TUN device goes to it,
//! every datagram on the ESP socket (connected to the gateway) and every record on the TLS
//! connection comes from it; what it sends is the client's to receive (the kernel policy
//! decides which applications see it).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    ops::ControlFlow,
    os::fd::{AsFd, BorrowedFd},
    sync::{Arc, Mutex, atomic::Ordering},
    thread::JoinHandle,
    time::Instant,
};

use tunnel_proto::{Client, SessionError};

use super::{
    session::{Ended, Session},
    status::{Lost, Shared},
    tunnel::Tunnel,
};
use crate::{
    fastpath::{
        device::{self, Device},
        dispatch::Source,
        end::{Direction, End, EspTo},
        tls_in::{TlsIn, TlsRead, ToTun},
        tun_io::{TunIo, TunSink},
    },
    sys::tun::Tun,
};

/// The client's end: its one session, and the counters its status shows.
pub(super) struct ClientEnd {
    session: Arc<Session>,
    shared: Arc<Shared>,
}

impl End for ClientEnd {
    /// The one peer needs no name.
    type Peer = ();
    type Proto = Client;
    type Scratch = ();

    fn proto<'a>(&'a self, _: &'a ()) -> &'a Mutex<Client> {
        &self.session.proto
    }

    fn same_peer(_: &(), _: &()) -> bool {
        true
    }

    fn peer_by_destination(&self, _: IpAddr, _: &mut ()) -> Option<()> {
        Some(())
    }

    /// The state machine checks the SPI itself.
    fn peer_by_spi(&self, _: u32, _: &mut ()) -> Option<()> {
        Some(())
    }

    fn esp_to(&self, _: &()) -> Option<EspTo> {
        Some(EspTo::Connected)
    }

    fn heard_over_esp(&self, _: &(), _: SocketAddr, _: bool, now: Instant) {
        self.heard(now);
    }

    fn heard_over_tls(&self, _: &(), now: Instant) {
        self.heard(now);
    }

    fn admit(&self, _: &(), _: &[u8], _: &mut ()) -> bool {
        true
    }

    fn wake(&self, _: &()) {
        self.session.wake.notify_one();
    }

    fn send_tls(&self, _: &()) {
        self.session.send_tls_now();
    }

    const PUSH_BACK_ON_TLS: bool = true;

    const CLAIM_FOR_TLS_WRITES: bool = false;

    fn dropped(&self, _: usize) {}

    fn count(&self, direction: Direction, packets: u64, bytes: u64) {
        let t = &self.shared.traffic;
        let (p, b) = match direction {
            Direction::Out => (&t.packets_out, &t.bytes_out),
            Direction::In => (&t.packets_in, &t.bytes_in),
        };
        p.fetch_add(packets, Ordering::Relaxed);
        b.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A closed connection, a read error or a protocol error ends the session: recorded for
    /// the task, and the connection is no longer handed out (it would read as closed for
    /// ever).
    fn drain_tls<T: TunIo>(
        &self,
        device: &Device<Self, T>,
        tls_in: &mut TlsIn<Self>,
    ) -> ControlFlow<()> {
        let why = match tls_in.read_connection(self, device, &(), &self.session.link) {
            TlsRead::Drained => return ControlFlow::Continue(()),
            TlsRead::Closed => Ended::Lost(Lost::Closed),
            TlsRead::Failed(e) => Ended::Lost(Lost::Read(Arc::new(e))),
            TlsRead::Protocol(e) => ended(e),
        };
        device.dispatch.retire(Source::Tls);
        self.session.end(why);
        ControlFlow::Continue(())
    }
}

impl ClientEnd {
    /// Something came from the gateway: the connection's dead-peer detection starts over.
    fn heard(&self, now: Instant) {
        self.shared.heard.mark(now);
    }
}

/// Why bytes that closed the session ended it.
fn ended(e: SessionError) -> Ended {
    match e {
        SessionError::UnsupportedRequest { what } => Ended::Unsupported(what),
        e => Ended::Lost(Lost::Protocol(e)),
    }
}

/// The TLS connection's socket, as the packet threads' dispatcher registers it.
struct LinkFd(Arc<Session>);

impl AsFd for LinkFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.link.as_fd()
    }
}

/// The client's packet threads' shared state.
struct Packets {
    end: ClientEnd,
    device: Device<ClientEnd>,
}

/// Starts the packet threads of `t` for `session`: TUN to the gateway over ESP or TLS, ESP
/// and TLS to TUN. From now on they read the TLS connection, not the task: that saves the
/// round trip the wake-up of a tokio worker and its scheduling (`docs/fastpath.md`).
pub(super) fn start_threads(
    t: &Tunnel,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let nonblocking = device::set_nonblocking(&t.tun);
    let link = Arc::new(LinkFd(session.clone()));
    let device = Device::new(
        t.tun.clone(),
        t.udp.clone(),
        Some(link),
        t.stop.clone(),
        nonblocking,
    )?;
    session.link.read_by_threads()?;
    let packets = Arc::new(Packets {
        end: ClientEnd {
            session: session.clone(),
            shared: shared.clone(),
        },
        device,
    });
    let threads = device::start("tunnel-packets", &packets, |p| (&p.end, &p.device))?;
    // Plaintext rustls already holds (beyond what the task's last read took) makes the
    // socket report nothing: it is taken now.
    let device = &packets.device;
    if let Some(_claim) = device.dispatch.claim(Source::Tls, &device.stop) {
        let _ = device.drain_tls(&packets.end);
    }
    Ok(threads)
}

/// Hands plaintext the task read from the TLS connection (before the packet threads read
/// it) to the state machine: its packets go into the TUN device (`tun`, joined in `sink`;
/// dropped while there is no tunnel), the rest becomes the session's events. `Ok(true)`:
/// the task has something to act on. `Err`: the bytes closed the session.
pub(super) fn take_tls_bytes(
    session: &Arc<Session>,
    shared: &Arc<Shared>,
    tun: Option<&Tun>,
    sink: &mut Option<TunSink>,
    data: &[u8],
) -> Result<bool, Ended> {
    let end = ClientEnd {
        session: session.clone(),
        shared: shared.clone(),
    };
    let to = tun.map(|tun| (tun, &mut *sink.get_or_insert_with(|| TunSink::new(tun))));
    let mut scratch = ();
    let mut to_tun = ToTun::<ClientEnd, Tun>::new(to, &mut scratch, None);
    let taken = session
        .proto
        .lock()
        .map(|mut c| to_tun.open(&end, &mut c, Some(&()), data))
        // The state machine panicked: the task finds out when it next takes it.
        .unwrap_or(Ok(true));
    to_tun.finish(&end);
    taken.map_err(ended)
}
