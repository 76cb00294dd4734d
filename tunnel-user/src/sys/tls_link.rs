//! A TLS connection that the packet threads send on directly, shared with the connection's
//! task, which receives, and flushes what a full socket left over.
//!
//! Before this, a packet going over TLS was queued in the state machine and the task was
//! woken to encrypt and write it: a wake-up of another thread (often on the other, idle,
//! core) in each direction, at both ends, for every packet. Now the thread that read the
//! packet from the TUN device writes its TLS record itself, the way ESP datagrams go out:
//!
//! ```text
//!  packet thread: stage the packet (state machine lock) ─▶ TlsLink::send:
//!    link lock ─▶ take the queued frames (state machine lock, briefly) ─▶ rustls records
//!    ─▶ non-blocking writev of what rustls holds
//!       ├─ all written: done, no other thread involved
//!       └─ socket full: `blocked`; the rest stays in rustls, and the frames queued after
//!          it stay in the state machine (whose backlog limit then holds the TUN side back
//!          or drops); the task is woken and flushes once the socket is writable
//!  task: TlsLink::recv ─▶ records read and opened under the link lock, the plaintext handed
//!    back with the lock released (the state machine parses it and the packets go to the
//!    TUN device without the link held)
//!  or, once the packet threads receive too (`TlsLink::read_by_threads`; the client's, and
//!  the gateway's for an established session):
//!  packet thread: the socket in their epoll set ─▶ TlsLink::try_recv, as the task would
//! ```
//!
//! The socket is registered with tokio's reactor for both directions while the task reads
//! it. Handed to the packet threads, it stays registered for writability only: a readable
//! socket in two epoll sets would wake a thread in each, and a tokio worker woken only to
//! note readiness nobody awaits costs the round trip as much as the wake-up it saves.
//! Writability is reported only after a write found the socket full, which the task still
//! flushes.
//!
//! Frames leave in the order the state machine queued them: the link lock is taken before
//! the frames are, and held until they are written or handed to rustls. Lock order: link,
//! then state machine; nothing takes the link while it holds the state machine.
//!
//! Records: frames are handed to rustls first and flushed to the socket at once (rustls
//! writes up to 64 records per `writev`); through `AsyncWrite` every record was a system
//! call. With `record_per_frame` every frame travels in a record of its own, which
//! openconnect needs (it reads one record at a time and expects one frame in it); an HTTP
//! response at the start goes out whole. Otherwise rustls packs the bytes into records as
//! large as it likes. The framing rules come from `tunnel-proto`.

use std::{
    io::{self, Read, Write},
    net::Shutdown,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::io::{Interest, unix::AsyncFd};

/// The TLS side of one connection. See the module docs.
pub struct TlsLink {
    /// The socket's registration with tokio's reactor (read and write, or write only once
    /// the packet threads read): taken out (an `Arc` clone) to wait on, never held across
    /// a wait. Declared before `tcp`, so it is deregistered before the socket closes.
    reactor: Mutex<Option<Arc<AsyncFd<Fd>>>>,
    /// Non-blocking; every read and write goes straight to it.
    tcp: std::net::TcpStream,
    state: Mutex<State>,
    /// A write found the socket full. What rustls holds waits for [`TlsLink::flush`];
    /// senders leave their frames queued until then.
    blocked: AtomicBool,
    record_per_frame: AtomicBool,
}

struct State {
    tls: rustls::Connection,
    /// Frames taken from the state machine, kept to reuse the allocation.
    frames: Vec<u8>,
}

/// The socket's descriptor as tokio's reactor registers it; the socket itself is owned by
/// the link.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Registers the link's socket with tokio's reactor.
fn register(tcp: &std::net::TcpStream, interest: Interest) -> io::Result<AsyncFd<Fd>> {
    // SAFETY: the descriptor is the link's socket, which the link closes only after its
    // registrations are gone (`reactor` is declared before `tcp`, and a registration taken
    // out to wait on lives only as long as a wait borrowing the link).
    Ok(unsafe { AsyncFd::register_with_interest(Fd(tcp.as_raw_fd()), interest) }?)
}

impl TlsLink {
    /// A link over an established connection (the handshake is done). rustls's limit on
    /// queued TLS bytes (64 KB by default) is lifted, so a batch is queued whole and
    /// flushed at once; the state machine bounds what a batch can hold
    /// ([`tunnel_proto::MAX_TLS_BACKLOG`]).
    ///
    /// Needs tokio's reactor (call it from the runtime).
    pub fn new(
        tcp: tokio::net::TcpStream,
        tls: impl Into<rustls::Connection>,
        record_per_frame: bool,
    ) -> io::Result<Self> {
        let mut tls = tls.into();
        tls.set_buffer_limit(None);
        // Out of tokio's stream (which deregisters it) into a plain non-blocking socket
        // registered anew, so that the registration can change when the packet threads
        // take over reading.
        let tcp = tcp.into_std()?;
        tcp.set_nonblocking(true)?;
        let reactor = register(&tcp, Interest::READABLE | Interest::WRITABLE)?;
        Ok(TlsLink {
            reactor: Mutex::new(Some(Arc::new(reactor))),
            tcp,
            state: Mutex::new(State {
                tls,
                frames: Vec::new(),
            }),
            blocked: AtomicBool::new(false),
            record_per_frame: AtomicBool::new(record_per_frame),
        })
    }

    /// From now on the socket is read by threads that wait on it themselves (the packet
    /// threads, through [`Self::try_recv`]); tokio's reactor keeps watching it for
    /// writability only, for [`Self::flush`]. [`Self::recv`] must not be called any more.
    /// Needs tokio's reactor (call it from the runtime).
    pub fn read_by_threads(&self) -> io::Result<()> {
        let mut reactor = self.reactor.lock().unwrap_or_else(|e| e.into_inner());
        // The old registration goes before the new one is made: one descriptor cannot be
        // in tokio's epoll set twice. Only the task that calls this waits on it, so no
        // clone of it is alive now.
        drop(reactor.take());
        *reactor = Some(Arc::new(register(&self.tcp, Interest::WRITABLE)?));
        Ok(())
    }

    /// The registration to wait on; an error when making it failed in
    /// [`Self::read_by_threads`].
    fn reactor(&self) -> io::Result<Arc<AsyncFd<Fd>>> {
        self.reactor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| io::Error::other("the TLS socket is not registered with the runtime"))
    }

    /// Whether each frame goes in a TLS record of its own (from the next send on).
    pub fn set_record_per_frame(&self, on: bool) {
        self.record_per_frame.store(on, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves rustls consistent (every call on it
        // completes or fails whole), so a poisoned lock is used as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns the frames `take` moves out of the state machine into TLS records and writes
    /// what the socket takes now, from the calling thread. `Ok(true)`: all of it went out.
    /// `Ok(false)`: the socket is full (now or from before, in which case `take` is not
    /// called and the frames stay queued); whoever owns the connection is to
    /// [`flush`](Self::flush). An error is the connection's end.
    pub fn send(&self, take: impl FnOnce(&mut Vec<u8>)) -> io::Result<bool> {
        if self.blocked.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut state = self.lock();
        if self.blocked.load(Ordering::Acquire) {
            return Ok(false);
        }
        let State { tls, frames } = &mut *state;
        frames.clear();
        take(frames);
        if !frames.is_empty() {
            queue_frames(tls, frames, self.record_per_frame.load(Ordering::Relaxed))?;
        }
        self.write_now(tls)
    }

    /// [`send`](Self::send) from a thread that does not own the connection: when not all
    /// went out (the socket is full, or the connection failed), `owner` is woken to flush,
    /// or to find the failure on its next read.
    pub fn send_or_wake(&self, take: impl FnOnce(&mut Vec<u8>), owner: &tokio::sync::Notify) {
        if !matches!(self.send(take), Ok(true)) {
            owner.notify_one();
        }
    }

    /// Writes what rustls holds until the socket is full (`Ok(false)`, `blocked` set) or
    /// nothing is left (`Ok(true)`).
    fn write_now(&self, tls: &mut rustls::Connection) -> io::Result<bool> {
        while tls.wants_write() {
            match tls.write_tls(&mut &self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked.store(true, Ordering::Release);
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Waits until everything rustls holds is written, then lets senders write again.
    pub async fn flush(&self) -> io::Result<()> {
        loop {
            if self.write_now(&mut self.lock().tls)? {
                self.blocked.store(false, Ordering::Release);
                return Ok(());
            }
            self.reactor()?.writable().await?.clear_ready();
        }
    }

    /// Sends everything `take` moves out of the state machine, waiting for the socket as
    /// long as it is full.
    pub async fn send_all(&self, mut take: impl FnMut(&mut Vec<u8>)) -> io::Result<()> {
        loop {
            if self.send(&mut take)? {
                return Ok(());
            }
            self.flush().await?;
        }
    }

    /// Plaintext from the peer into `buf`: what records already read hold, else what the
    /// socket brings next (waiting for it). `Ok(0)`: the peer closed the connection (with
    /// `close_notify` or not). Cancel-safe: bytes read stay in rustls for the next call.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.try_recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            self.reactor()?.readable().await?.clear_ready();
        }
    }

    /// [`Self::recv`] without the wait: `WouldBlock` when the socket has nothing and the
    /// records read so far hold no more plaintext.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut state = self.lock();
        let tls = &mut state.tls;
        loop {
            let mut filled = 0;
            let mut closed = false;
            while filled < buf.len() {
                match tls.reader().read(&mut buf[filled..]) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        closed = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if filled > 0 || closed {
                return Ok(filled);
            }
            // End of stream reads as `Ok(0)` here and is processed below; the reader
            // then reports it. `WouldBlock` and real errors go to the caller.
            tls.read_tls(&mut &self.tcp)?;
            let processed = tls.process_new_packets();
            // Alerts, key updates, session tickets: best effort (a full socket leaves
            // them for the next flush).
            let _ = self.write_now(tls);
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Ends the connection: `close_notify` and what is left go out (as far as the socket
    /// takes them without waiting), then the sending half of the socket is shut.
    pub fn close(&self) {
        let mut state = self.lock();
        state.tls.send_close_notify();
        let _ = self.write_now(&mut state.tls);
        let _ = socket2::SockRef::from(&self.tcp).shutdown(Shutdown::Write);
    }
}

/// The socket, for an epoll set of threads that read it ([`TlsLink::read_by_threads`]).
impl AsFd for TlsLink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp.as_fd()
    }
}

/// Hands `out` (IF-T frames as the state machine queued them) to rustls as records; see
/// the module docs for `record_per_frame`.
fn queue_frames(
    tls: &mut rustls::Connection,
    mut out: &[u8],
    record_per_frame: bool,
) -> io::Result<()> {
    if !record_per_frame {
        return tls.writer().write_all(out);
    }
    if out.starts_with(b"HTTP/") {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(out.len(), |p| p + 4);
        tls.writer().write_all(&out[..end])?;
        out = &out[end..];
    }
    while !out.is_empty() {
        let len = out
            .get(8..12)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .filter(|&l| l >= tunnel_proto::HEADER_LEN && l <= out.len())
            .unwrap_or(out.len());
        tls.writer().write_all(&out[..len])?;
        out = &out[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use rustls::{ClientConfig, RootCertStore, ServerConfig, pki_types::ServerName};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// An IF-T frame of `len` bytes (header included) whose body repeats `fill`.
    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[..4].copy_from_slice(&0x5597u32.to_be_bytes());
        f[4..8].copy_from_slice(&4u32.to_be_bytes());
        f[8..12].copy_from_slice(&(len as u32).to_be_bytes());
        f
    }

    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["gw.test".to_string()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Both ends of a fresh connection over loopback: (client, server).
    async fn pair(record_per_frame: bool) -> (TlsLink, TlsLink) {
        let (server_cfg, client_cfg) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = TlsAcceptor::from(server_cfg).accept(tcp).await.unwrap();
            let (tcp, conn) = tls.into_inner();
            TlsLink::new(tcp, conn, false).unwrap()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("gw.test").unwrap();
        let tls = TlsConnector::from(client_cfg)
            .connect(name, tcp)
            .await
            .unwrap();
        let (tcp, conn) = tls.into_inner();
        (
            TlsLink::new(tcp, conn, record_per_frame).unwrap(),
            accept.await.unwrap(),
        )
    }

    async fn recv_exactly(link: &TlsLink, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while got.len() < want {
            let n = tokio::time::timeout(Duration::from_secs(10), link.recv(&mut buf))
                .await
                .expect("data within 10 s")
                .unwrap();
            assert!(n > 0, "closed after {} of {want} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Frames sent from plain threads (not the runtime's) arrive whole and in order, both
    /// ways at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_from_other_threads_arrive_in_order() {
        let (client, server) = pair(false).await;
        let (client, server) = (Arc::new(client), Arc::new(server));
        let frames: Vec<Vec<u8>> = (0..200).map(|i| frame(40 + i * 7, i as u8)).collect();
        let expected: Vec<u8> = frames.concat();
        let runtime = tokio::runtime::Handle::current();
        let senders: Vec<_> = [client.clone(), server.clone()]
            .into_iter()
            .map(|link| {
                let (frames, runtime) = (frames.clone(), runtime.clone());
                std::thread::spawn(move || {
                    for f in &frames {
                        // As the state machine's queue would: taken once, whatever the
                        // socket then takes.
                        let mut taken = false;
                        while !taken {
                            let all = link
                                .send(|out| {
                                    out.extend_from_slice(f);
                                    taken = true;
                                })
                                .unwrap();
                            if !all {
                                // What the connection's task does when woken.
                                runtime.block_on(link.flush()).unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        let (at_server, at_client) = tokio::join!(
            recv_exactly(&server, expected.len()),
            recv_exactly(&client, expected.len())
        );
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(at_server, expected);
        assert_eq!(at_client, expected);
    }

    /// Counts the TLS application-data records in `wire` (complete records only).
    fn data_records(wire: &[u8]) -> usize {
        let (mut at, mut n) = (0, 0);
        while at + 5 <= wire.len() {
            let len = u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
            if wire[at] == 23 {
                n += 1;
            }
            at += 5 + len;
        }
        n
    }

    /// With a record per frame each frame has its own record (openconnect reads one at a
    /// time); otherwise one batch is one record.
    #[tokio::test]
    async fn a_record_per_frame_or_one_for_the_batch() {
        for (per_frame, want) in [(true, 5), (false, 1)] {
            let (client, server) = pair(per_frame).await;
            let batch: Vec<u8> = (0..5).flat_map(|i| frame(100, i)).collect();
            assert!(client.send(|out| out.extend_from_slice(&batch)).unwrap());
            let mut wire = vec![0u8; 4096];
            let mut got = 0;
            // The batch is in the kernel already: read it raw, blocking.
            let mut raw = &server.tcp;
            raw.set_nonblocking(false).unwrap();
            raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // Until the batch's bytes are in: 500 of frames plus each record's overhead.
            while got < 500 + want * 22 {
                let n = raw.read(&mut wire[got..]).unwrap();
                assert!(n > 0);
                got += n;
            }
            assert_eq!(
                data_records(&wire[..got]),
                want,
                "record per frame: {per_frame}"
            );
        }
    }

    /// A peer that does not read fills the socket: the link says so, leaves later frames
    /// with the caller (`take` is not called), and flushes everything once the peer reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_socket_holds_frames_back_until_flushed() {
        let (client, server) = pair(false).await;
        let big = frame(60_000, 0xab);
        let mut sent = 0usize;
        while client.send(|out| out.extend_from_slice(&big)).unwrap() {
            sent += 1;
            assert!(sent < 10_000, "the socket never filled");
        }
        sent += 1; // the batch that found the socket full is in rustls
        let mut taken = false;
        assert!(!client.send(|_| taken = true).unwrap());
        assert!(!taken, "frames were taken while the socket was full");
        let expected = sent * big.len();
        let (flushed, received) = tokio::join!(client.flush(), recv_exactly(&server, expected));
        flushed.unwrap();
        assert_eq!(received.len(), expected);
        assert!(received.chunks(big.len()).all(|c| c == big.as_slice()));
        assert!(
            client
                .send(|out| out.extend_from_slice(&frame(20, 1)))
                .unwrap()
        );
        assert_eq!(recv_exactly(&server, 20).await, frame(20, 1));
    }

    /// The peer's close reads as the end, with `close_notify` and without.
    #[tokio::test]
    async fn the_peer_closing_reads_as_the_end() {
        let (client, server) = pair(false).await;
        assert!(
            client
                .send(|out| out.extend_from_slice(&frame(30, 7)))
                .unwrap()
        );
        client.close();
        assert_eq!(recv_exactly(&server, 30).await, frame(30, 7));
        let mut buf = [0u8; 64];
        assert_eq!(server.recv(&mut buf).await.unwrap(), 0);

        let (client, server) = pair(false).await;
        // The server's session tickets read first: unread data would make the close a
        // reset.
        let _ = tokio::time::timeout(Duration::from_millis(200), client.recv(&mut buf)).await;
        drop(client);
        assert_eq!(server.recv(&mut buf).await.unwrap(), 0);
    }
}
