//! The pieces both ends' packet threads are made of (see `docs/fastpath.md`): reading GSO
//! packets from the TUN device as wire-size packets ([`TunSource`]), collecting sealed ESP
//! datagrams for one UDP GSO send ([`Train`]), and writing decrypted packets into the TUN
//! device joined where possible ([`TunSink`]), and handing the TUN device and the ESP
//! socket to the packet threads ([`Dispatch`], [`serve`]) until they are stopped
//! ([`Stop`]). What the threads do with each source, and the locking of the protocol
//! state, live with the client and the gateway.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    ops::ControlFlow,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use tracing::debug;
use tunnel_packet::{Coalescer, MAX_PACKET, VnetHdr, segment};

use crate::{
    fastpath::packet_io::may_be_answered_at_once,
    sys::tun::{Offload, Tun},
    sys::udp_gso,
};

/// Messages per `recvmmsg` on the ESP socket (each up to 64 KB with UDP GRO).
pub const RECV_BATCH: usize = 32;

/// How long a packet thread backs off after a read failed with a real error.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The stop signal of a set of packet threads: a flag they look at between batches, and an
/// eventfd in their [`Dispatch`]'s wait. An idle thread therefore sleeps with no timeout (no
/// periodic wake-ups, no timer armed per sleep) and still leaves at once when stopped.
#[derive(Debug)]
pub struct Stop {
    flag: AtomicBool,
    event: OwnedFd,
}

impl Stop {
    pub fn new() -> io::Result<Stop> {
        // SAFETY: eventfd has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Stop {
            flag: AtomicBool::new(false),
            // SAFETY: fd is a new descriptor that nothing else owns.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Whether the threads should leave.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Tells the threads to leave and wakes every one that waits.
    pub fn set(&self) {
        self.flag.store(true, Ordering::Release);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer. A full counter (EAGAIN) is already
        // readable, which is all a waiter needs.
        unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Makes the signal reusable once the threads it stopped have been joined.
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; EAGAIN when nothing was set.
        unsafe {
            libc::read(
                self.event.as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            )
        };
        self.flag.store(false, Ordering::Release);
    }
}

/// A source of packets an end's packet threads serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The TUN device: packets to send through the tunnel.
    Tun,
    /// The ESP socket: datagrams to open and write into the TUN device.
    Esp,
    /// The TLS side, where an end's packet threads read it: the client's connection, or
    /// the gateway's set of established sessions' connections. Records to open, packets to
    /// write into the TUN device, control frames for the session.
    Tls,
}

/// An epoll set, owned: [`Dispatch`]'s, and the gateway's set of TLS connections.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `epoll_ctl(op)` for descriptor `fd`, reported with `token`.
    pub fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: a valid event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: for ever, 0: not at all) for reports into `events`;
    /// how many came.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let room = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: room for `room` events, which the kernel fills.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), room, timeout_ms) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Hands an end's sources to its packet threads, one thread per source at a time.
///
/// The TUN device, the ESP socket and the TLS side (where there is one) sit in one epoll
/// set, each armed for one readiness report at a time (`EPOLLONESHOT`), with the stop
/// signal's eventfd. Every packet thread of the end waits on that set; a source that becomes
/// readable wakes one of them (the one that went to sleep last), which drains it and gives
/// it back. Both directions are served in parallel when both are busy, and a thread that
/// has just sent a packet finds the answer to it ready when it comes back, without a second
/// thread being woken for it. See `docs/fastpath.md`.
///
/// It refers to the descriptors by number: they must stay open as long as it lives.
#[derive(Debug)]
pub struct Dispatch {
    epoll: Epoll,
    tun: RawFd,
    esp: Option<RawFd>,
    tls: Option<RawFd>,
    /// Whether a thread holds the source (indexed by [`Source`]): handed it by the epoll
    /// set, or claimed with [`Self::claim`]. Whoever sets the flag gives the source back
    /// (clears it, then re-arms it); an epoll report of a held source is ignored, so a
    /// source is never served by two threads at once.
    held: [AtomicBool; 3],
    /// Sources that are given back without being re-armed ([`Self::retire`]).
    retired: [AtomicBool; 3],
}

const TOKEN_STOP: u64 = 0;
const TOKEN_TUN: u64 = 1;
const TOKEN_ESP: u64 = 2;
const TOKEN_TLS: u64 = 3;

impl Dispatch {
    pub fn new(tun: &impl AsFd, esp: Option<&impl AsFd>, stop: &Stop) -> io::Result<Dispatch> {
        let dispatch = Dispatch {
            epoll: Epoll::new()?,
            tun: tun.as_fd().as_raw_fd(),
            esp: esp.map(|e| e.as_fd().as_raw_fd()),
            tls: None,
            held: Default::default(),
            retired: Default::default(),
        };
        // The stop signal stays readable once set (level-triggered), so every waiting
        // thread is handed it in turn.
        dispatch.ctl(
            libc::EPOLL_CTL_ADD,
            stop.event.as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_STOP,
        )?;
        dispatch.ctl(libc::EPOLL_CTL_ADD, dispatch.tun, ONE_READ, TOKEN_TUN)?;
        if let Some(esp) = dispatch.esp {
            dispatch.ctl(libc::EPOLL_CTL_ADD, esp, ONE_READ, TOKEN_ESP)?;
        }
        Ok(dispatch)
    }

    /// Adds the TLS connection, for packet threads that read it themselves.
    pub fn add_tls(&mut self, tls: &impl AsFd) -> io::Result<()> {
        let fd = tls.as_fd().as_raw_fd();
        self.ctl(libc::EPOLL_CTL_ADD, fd, ONE_READ, TOKEN_TLS)?;
        self.tls = Some(fd);
        Ok(())
    }

    /// How many threads have something to do: one per source.
    pub fn sources(&self) -> usize {
        1 + usize::from(self.esp.is_some()) + usize::from(self.tls.is_some())
    }

    /// Waits until a source is readable and hands it to the calling thread: no other thread
    /// is handed it until the caller gives it back with [`Self::done`]. None once `stop` is
    /// set.
    pub fn next(&self, stop: &Stop) -> Option<Source> {
        loop {
            if stop.is_set() {
                return None;
            }
            let mut event = [libc::epoll_event { events: 0, u64: 0 }];
            let n = match self.epoll.wait(&mut event, -1) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::Interrupted {
                        debug!(error = %e, "waiting for packets");
                        std::thread::sleep(ERROR_BACKOFF);
                    }
                    continue;
                }
            };
            // A source claimed meanwhile (its report raced the claim) is the claimer's to
            // give back; this thread waits on.
            match event[0].u64 {
                TOKEN_TUN if n == 1 && self.take(Source::Tun) => return Some(Source::Tun),
                TOKEN_ESP if n == 1 && self.take(Source::Esp) => return Some(Source::Esp),
                TOKEN_TLS if n == 1 && self.take(Source::Tls) => return Some(Source::Tls),
                _ => {}
            }
        }
    }

    /// Takes `source` for the calling thread unless another holds it.
    fn take(&self, source: Source) -> bool {
        self.held[source as usize]
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes `source` for the calling thread, unless another thread holds it, and stops
    /// its readiness from waking the others until the claim is dropped (which gives it
    /// back as [`Self::done`] does). A thread that is about to write packets into the TUN
    /// device claims it first when it means to forward what the writes make the other
    /// side answer at once: that answer then wakes nobody (see `docs/fastpath.md`).
    pub fn claim<'a>(&'a self, source: Source, stop: &'a Stop) -> Option<Claim<'a>> {
        let (fd, _) = self.registration(source)?;
        if !self.take(source) {
            return None;
        }
        // Disarmed: registered with no event of interest. Failing that (the kernel out of
        // memory), a report wakes a thread that finds the source held and waits on.
        if let Err(e) = self.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLONESHOT as u32, 0) {
            debug!(error = %e, ?source, "disarming a claimed packet source");
        }
        Some(Claim {
            dispatch: self,
            source,
            stop,
        })
    }

    /// Claims the TUN device for a thread about to write `packets` into it, when one of
    /// them may be answered within the writes ([`may_be_answered_at_once`]): that answer
    /// then wakes nobody, and the thread forwards it itself. None when nothing written
    /// would be answered at once (the device is left to whoever it wakes), or when another
    /// thread holds the device.
    pub fn claim_tun_for<'a, 'p>(
        &'a self,
        mut packets: impl Iterator<Item = &'p [u8]>,
        stop: &'a Stop,
    ) -> Option<Claim<'a>> {
        if !packets.any(may_be_answered_at_once) {
            return None;
        }
        self.claim(Source::Tun, stop)
    }

    /// A source's descriptor and its epoll token (None: no ESP socket).
    fn registration(&self, source: Source) -> Option<(RawFd, u64)> {
        match source {
            Source::Tun => Some((self.tun, TOKEN_TUN)),
            Source::Esp => self.esp.map(|fd| (fd, TOKEN_ESP)),
            Source::Tls => self.tls.map(|fd| (fd, TOKEN_TLS)),
        }
    }

    /// Stops handing out `source` once its holder gives it back: it is not re-armed. For a
    /// source that will never have anything again but stays readable (a closed
    /// connection), which would otherwise be handed out again at once, for ever.
    pub fn retire(&self, source: Source) {
        self.retired[source as usize].store(true, Ordering::Release);
    }

    /// Gives `source` back: the next waiting thread is handed it when it is readable, at
    /// once if it still is.
    pub fn done(&self, source: Source, stop: &Stop) {
        let Some((fd, token)) = self.registration(source) else {
            return;
        };
        // Released before it is re-armed: a report right after the re-arm must find it free.
        // A thread that claims it in between disarms it; a re-arm landing after that only
        // lets a report wake a thread that finds the source held.
        self.held[source as usize].store(false, Ordering::Release);
        if self.retired[source as usize].load(Ordering::Acquire) {
            return;
        }
        // Only the kernel running out of memory fails this; until it works nobody is
        // handed the source, so it is tried again.
        while let Err(e) = self.ctl(libc::EPOLL_CTL_MOD, fd, ONE_READ, token) {
            debug!(error = %e, ?source, "re-arming a packet source");
            if stop.is_set() {
                return;
            }
            std::thread::sleep(ERROR_BACKOFF);
        }
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.epoll.ctl(op, fd, events, token)
    }
}

/// A source's registration: readable, reported once until re-armed.
const ONE_READ: u32 = (libc::EPOLLIN | libc::EPOLLONESHOT) as u32;

/// A source claimed with [`Dispatch::claim`]; dropping it gives the source back.
#[derive(Debug)]
pub struct Claim<'a> {
    dispatch: &'a Dispatch,
    source: Source,
    stop: &'a Stop,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.dispatch.done(self.source, self.stop);
    }
}

/// The loop of one packet thread: drains whichever source `dispatch` hands it with
/// `drain`, gives it back, and waits for the next, until `stop` is set or `drain` breaks
/// (the protocol state it needs is gone).
pub fn serve(dispatch: &Dispatch, stop: &Stop, mut drain: impl FnMut(Source) -> ControlFlow<()>) {
    while let Some(source) = dispatch.next(stop) {
        let flow = drain(source);
        dispatch.done(source, stop);
        if flow.is_break() {
            return;
        }
    }
}

/// What a packet thread does after a read from its source failed: nothing when the queue
/// was just empty (the source goes back); after a real error (logged as `what`), backs off
/// for [`ERROR_BACKOFF`] first.
pub fn after_failed_read(e: &io::Error, what: &str) {
    if e.kind() != io::ErrorKind::WouldBlock {
        debug!(error = %e, "{what}");
        std::thread::sleep(ERROR_BACKOFF);
    }
}

/// Reads from a TUN device and hands out wire-size IP packets.
pub struct TunSource {
    buf: Vec<u8>,
    /// What the last [`Self::recv`] read: the virtio-net header (None on a plain device)
    /// and the packet's length in `buf`.
    read: Option<(Option<VnetHdr>, usize)>,
    /// Packets the TUN device handed out that could not be split.
    pub malformed: u64,
}

impl Default for TunSource {
    fn default() -> Self {
        Self::new()
    }
}

impl TunSource {
    pub fn new() -> Self {
        TunSource {
            buf: vec![0u8; MAX_PACKET],
            read: None,
            malformed: 0,
        }
    }

    /// Reads one packet (a GSO packet on an offloading device) and calls `f` with each
    /// wire-size IP packet in it. Returns how many; `WouldBlock` when nothing is queued.
    pub fn read(&mut self, tun: &Tun, f: impl FnMut(&[u8])) -> io::Result<usize> {
        self.recv(tun)?;
        Ok(self.split(f))
    }

    /// Reads one packet (a GSO packet on an offloading device); [`Self::packet`] shows it
    /// and [`Self::split`] hands out its wire-size packets. `WouldBlock` when nothing is
    /// queued.
    pub fn recv(&mut self, tun: &Tun) -> io::Result<()> {
        self.read = None;
        self.read = Some(if tun.has_vnet_hdr() {
            let (hdr, n) = tun.recv_vnet(&mut self.buf)?;
            (Some(hdr), n)
        } else {
            (None, tun.recv(&mut self.buf)?)
        });
        Ok(())
    }

    /// The packet [`Self::recv`] read, as it came (every segment of a GSO packet has its
    /// addresses), or empty.
    pub fn packet(&self) -> &[u8] {
        self.read.map_or(&[], |(_, n)| &self.buf[..n])
    }

    /// Calls `f` with each wire-size IP packet of what [`Self::recv`] read, splitting a GSO
    /// packet in place; returns how many. Once only: the packet is used up.
    pub fn split(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        match self.read.take() {
            None => 0,
            Some((None, n)) => {
                f(&self.buf[..n]);
                1
            }
            Some((Some(hdr), n)) => match segment(&hdr, &mut self.buf[..n], &mut f) {
                Ok(count) => count,
                Err(e) => {
                    self.malformed += 1;
                    debug!(error = %e, ?hdr, "packet from the TUN device dropped");
                    0
                }
            },
        }
    }
}

/// Sealed ESP datagrams for one peer, sent together with UDP GSO: all the same size except
/// possibly the last. How many there are, and whether the last was shorter (then nothing
/// more may join), follow from the bytes used and the size.
pub struct Train {
    buf: Vec<u8>,
    /// Bytes of the datagrams in `buf` (none is empty: each carries an ESP header).
    used: usize,
    /// The first datagram's length, which the others have but the last.
    size: usize,
    /// The first `sealed` bytes are sealed: a train that is held across TUN reads is sealed
    /// a read at a time, each under that read's lock.
    sealed: usize,
    /// A datagram that could not join sits at `buf[used..used + spill]`.
    spill: usize,
}

impl Default for Train {
    fn default() -> Self {
        Self::new()
    }
}

impl Train {
    pub fn new() -> Self {
        Train {
            buf: vec![0u8; udp_gso::MAX_GSO_BYTES + MAX_PACKET + tunnel_proto::MAX_OVERHEAD],
            used: 0,
            size: 0,
            sealed: 0,
            spill: 0,
        }
    }

    /// Where the next datagram is to be sealed.
    pub fn slot(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..]
    }

    /// Takes the `len`-byte datagram just sealed into [`Self::slot`]. Returns true when the
    /// train must be sent before the next one is sealed.
    pub fn commit(&mut self, len: usize) -> bool {
        if self.used == 0 {
            self.size = len;
        } else if self.closed() || len > self.size {
            self.spill = len;
            return true;
        }
        self.used += len;
        self.closed()
            || self.len() == udp_gso::MAX_GSO_SEGMENTS
            || self.used + self.size > udp_gso::MAX_GSO_BYTES
    }

    /// The last datagram was shorter than the others: nothing more may join.
    fn closed(&self) -> bool {
        self.size > 0 && !self.used.is_multiple_of(self.size)
    }

    /// The datagrams staged since the train was last sealed, for sealing in place, and their
    /// size (the last may be shorter).
    pub fn unsealed_mut(&mut self) -> (&mut [u8], usize) {
        (&mut self.buf[self.sealed..self.used], self.size)
    }

    /// Notes that everything staged so far is sealed.
    pub fn mark_sealed(&mut self) {
        self.sealed = self.used;
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        if self.size == 0 {
            0
        } else {
            self.used.div_ceil(self.size)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Sends what is waiting to `to` (or the connected peer).
    pub fn flush(
        &mut self,
        sock: &UdpSocket,
        to: Option<SocketAddr>,
        gso: &AtomicBool,
    ) -> io::Result<()> {
        let r = if self.used > 0 {
            udp_gso::send(sock, &self.buf[..self.used], self.size, to, gso)
        } else {
            Ok(())
        };
        self.drop_pending();
        r
    }

    /// Forgets the datagrams waiting to be sent; a datagram that could not join them
    /// becomes the start of the next train.
    pub fn drop_pending(&mut self) {
        self.sealed = 0;
        self.forget_unsealed();
        let spill = std::mem::take(&mut self.spill);
        if spill > 0 {
            self.commit(spill);
        }
    }

    /// Forgets the datagrams staged since the train was last sealed (sealing them failed);
    /// the sealed ones stay, and a datagram that could not join stays apart, for
    /// [`Trains::next`] to move into the next train.
    pub fn forget_unsealed(&mut self) {
        self.buf
            .copy_within(self.used..self.used + self.spill, self.sealed);
        self.used = self.sealed;
    }

    /// Forgets what is waiting (the peer went away).
    pub fn clear(&mut self) {
        self.used = 0;
        self.sealed = 0;
        self.spill = 0;
    }
}

/// Datagrams (or packets over TLS) a TUN side holds across reads before it sends them. One
/// send per packet cost a flood of small packets most of its rate: on a veth the send also
/// runs the receiving side's stack, once per datagram instead of once per batch.
pub const SEND_BATCH: usize = 32;

/// Trains held across reads, at most: each size change starts another, and each is 64 KB.
const MAX_TRAINS_HELD: usize = 4;

/// Where a TUN side is in a drain of the device (the reads until it runs dry). The ESP
/// datagrams of the first read go out at once: after an idle spell it is usually the only
/// packet, and holding it for the read that finds the device empty would delay it. What
/// later reads give is held until [`SEND_BATCH`] packets are, or the device runs dry.
///
/// A drain whose first read comes after an idle spell ([`IDLE_SPELL`]) and gives a lone
/// packet ends there, without the read that would find the device empty: giving the device
/// back re-arms it, and re-arming reports anything queued meanwhile, so nothing waits. That
/// read is a system call on the idle round trip's path (the thread that sent the packet
/// makes it before it sleeps, and on one CPU the woken peer waits for it); under load the
/// reads follow each other closely and drains run dry as before.
#[derive(Default)]
pub struct DrainReads {
    started: bool,
    /// When the last read was made.
    last: Option<Instant>,
}

/// How long a TUN device must have given nothing for a drain's first read to count as
/// coming after an idle spell: longer than the gaps within any busy flow (a TCP stream's
/// ACKs, a flood of datagrams), shorter than an interactive session's.
pub const IDLE_SPELL: Duration = Duration::from_millis(1);

/// What [`DrainReads::read`] says of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainRead {
    /// The drain's first read: its datagrams go out at once.
    pub first: bool,
    /// The drain may end after this read ([`DrainReads`]).
    pub last: bool,
}

impl DrainReads {
    /// Notes a read made at `now` that gave `packets` packets.
    pub fn read(&mut self, packets: usize, now: Instant) -> DrainRead {
        let first = !std::mem::replace(&mut self.started, true);
        let after_idle = self
            .last
            .is_none_or(|at| now.saturating_duration_since(at) > IDLE_SPELL);
        self.last = Some(now);
        DrainRead {
            first,
            last: first && after_idle && packets == 1,
        }
    }

    /// The drain ended (everything held was sent): the next read starts another.
    pub fn ended(&mut self) {
        self.started = false;
    }
}

/// Trains filled and sealed while the state machine is locked and sent once it is released.
/// A GSO packet from the TUN device can fill more than one train, and a UDP send (which on
/// a veth also runs the receiving side's stack) takes too long to hold the lock that the
/// thread of the other direction needs for every packet it opens.
///
/// The caller stages into [`Self::slot`]; when [`Self::commit`] says the current train is
/// complete it calls [`Self::seal_current`] and [`Self::next`]; at the end of a batch it
/// seals the current train, releases the lock and calls [`Self::send`].
pub struct Trains {
    trains: Vec<Train>,
    current: usize,
    /// Whether the kernel takes GSO sends (cleared the first time it refuses one).
    gso: AtomicBool,
}

impl Default for Trains {
    fn default() -> Self {
        Self::new()
    }
}

impl Trains {
    pub fn new() -> Self {
        Trains {
            trains: vec![Train::new()],
            current: 0,
            gso: AtomicBool::new(true),
        }
    }

    /// Where the next datagram is to be staged.
    pub fn slot(&mut self) -> &mut [u8] {
        self.trains[self.current].slot()
    }

    /// Takes the `len`-byte datagram staged into [`Self::slot`]; true when the current train
    /// is complete.
    pub fn commit(&mut self, len: usize) -> bool {
        self.trains[self.current].commit(len)
    }

    /// Seals the datagrams staged into the current train since it was last sealed, in place
    /// with `seal` (given them and their size); nothing to seal, nothing called. When it
    /// fails (the keys changed since they were staged) none of them is ever sent, and a
    /// datagram that did not fit the train still moves into the next one.
    pub fn seal_current<E>(
        &mut self,
        seal: impl FnOnce(&mut [u8], usize) -> Result<(), E>,
    ) -> Result<(), E> {
        let train = &mut self.trains[self.current];
        let (unsealed, size) = train.unsealed_mut();
        if unsealed.is_empty() {
            return Ok(());
        }
        let r = seal(unsealed, size);
        match r {
            Ok(()) => train.mark_sealed(),
            Err(_) => train.forget_unsealed(),
        }
        r
    }

    /// Starts the next train (made on first use, kept for reuse); a datagram that did not
    /// fit the complete one moves into it.
    pub fn next(&mut self) {
        if self.current + 1 == self.trains.len() {
            self.trains.push(Train::new());
        }
        let (done, rest) = self.trains.split_at_mut(self.current + 1);
        let (done, next) = (&mut done[self.current], &mut rest[0]);
        next.clear();
        let spill = std::mem::take(&mut done.spill);
        if spill > 0 {
            next.buf[..spill].copy_from_slice(&done.buf[done.used..done.used + spill]);
            next.commit(spill);
        }
        self.current += 1;
    }

    /// Whether the trains are to be sent before more is staged: [`SEND_BATCH`] datagrams
    /// held, or as many trains as are held at most.
    pub fn full(&self) -> bool {
        self.current + 1 >= MAX_TRAINS_HELD || self.len() >= SEND_BATCH
    }

    /// Datagrams in all trains.
    pub fn len(&self) -> usize {
        self.trains[..=self.current].iter().map(Train::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends every train, in order, to `to` (or the connected peer); the set is empty
    /// afterwards. The first error is returned, after the other trains went out.
    pub fn send(&mut self, sock: &UdpSocket, to: Option<SocketAddr>) -> io::Result<()> {
        let mut result = Ok(());
        for t in &mut self.trains[..=self.current] {
            let r = t.flush(sock, to, &self.gso);
            if result.is_ok() {
                result = r;
            }
        }
        self.current = 0;
        result
    }

    /// Sends every train to `to` (or the connected peer) through `sock`, or forgets them when
    /// there is no socket; the set is empty afterwards.
    pub fn send_or_forget(
        &mut self,
        sock: Option<&UdpSocket>,
        to: Option<SocketAddr>,
    ) -> io::Result<()> {
        match sock {
            Some(sock) => self.send(sock, to),
            None => {
                self.clear();
                Ok(())
            }
        }
    }

    /// Forgets every train (no peer, no socket).
    pub fn clear(&mut self) {
        for t in &mut self.trains[..=self.current] {
            t.clear();
        }
        self.current = 0;
    }
}

/// Writes IP packets into a TUN device, joining TCP segments on an offloading device, and
/// UDP datagrams too where its kernel takes USO packets.
pub struct TunSink {
    coalescer: Coalescer,
    /// Writes the device refused.
    pub write_errors: u64,
}

impl TunSink {
    /// A sink for `tun` (joining what its offloads allow).
    pub fn new(tun: &Tun) -> Self {
        TunSink {
            coalescer: if tun.offload() == Offload::TsoUso {
                Coalescer::with_udp()
            } else {
                Coalescer::new()
            },
            write_errors: 0,
        }
    }

    /// Takes one packet; it is written now or at the latest by [`Self::flush`].
    pub fn push(&mut self, tun: &Tun, packet: &[u8]) {
        if tun.has_vnet_hdr() {
            let errors = &mut self.write_errors;
            self.coalescer.push(packet, &mut |h: &VnetHdr, p: &[u8]| {
                if tun.send_vnet(h, p).is_err() {
                    *errors += 1;
                }
            });
        } else if tun.send(packet).is_err() {
            self.write_errors += 1;
        }
    }

    /// Writes everything held.
    pub fn flush(&mut self, tun: &Tun) {
        let errors = &mut self.write_errors;
        self.coalescer.flush(&mut |h: &VnetHdr, p: &[u8]| {
            if tun.send_vnet(h, p).is_err() {
                *errors += 1;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A readable source is handed to one thread, and to no other until it is given back
    /// (then at once, as it is still readable); meanwhile the other source goes to another
    /// thread.
    #[test]
    fn dispatch_hands_a_source_to_one_thread_at_a_time() {
        let (tun, tx, to_tun) = loopback();
        let (esp, _, to_esp) = loopback();
        let stop = Stop::new().unwrap();
        let d = Dispatch::new(&tun, Some(&esp), &stop).unwrap();
        assert_eq!(d.sources(), 2);
        tx.send_to(b"a", to_tun).unwrap();
        assert_eq!(d.next(&stop), Some(Source::Tun));
        tx.send_to(b"b", to_tun).unwrap();
        let other = waits_until(
            &d,
            &stop,
            "the TUN source is taken: nothing to hand out",
            || {
                tx.send_to(b"c", to_esp).unwrap();
            },
        );
        assert_eq!(other, Some(Source::Esp));
        // Given back with two datagrams queued: handed out again at once.
        d.done(Source::Tun, &stop);
        assert_eq!(d.next(&stop), Some(Source::Tun));
    }

    /// The stop signal ends every waiting thread, not only one; cleared, it lets the next
    /// wait sleep until a source is readable.
    #[test]
    fn stop_ends_every_waiting_thread_and_can_be_reused() {
        let (tun, tx, to_tun) = loopback();
        let stop = Stop::new().unwrap();
        let d = Dispatch::new(&tun, None::<&UdpSocket>, &stop).unwrap();
        assert_eq!(d.sources(), 1);
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..3).map(|_| s.spawn(|| d.next(&stop))).collect();
            std::thread::sleep(Duration::from_millis(50));
            stop.set();
            for w in waiters {
                assert_eq!(w.join().unwrap(), None, "woken by the stop signal");
            }
        });
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(stop.is_set());
        stop.clear();
        assert!(!stop.is_set());
        let waiter = waits_until(&d, &stop, "cleared: the wait sleeps", || {
            tx.send_to(b"y", to_tun).unwrap();
        });
        assert_eq!(waiter, Some(Source::Tun));
    }

    /// A claimed source wakes no waiting thread while it is claimed, however readable it
    /// becomes; given back, it is handed out at once. A source another thread holds cannot
    /// be claimed.
    #[test]
    fn a_claimed_source_wakes_nobody_until_it_is_given_back() {
        let (tun, tx, to_tun) = loopback();
        let stop = Stop::new().unwrap();
        let d = Dispatch::new(&tun, None::<&UdpSocket>, &stop).unwrap();
        std::thread::scope(|s| {
            let claim = d.claim(Source::Tun, &stop).expect("nobody holds it");
            let waiter = s.spawn(|| d.next(&stop));
            tx.send_to(b"answer", to_tun).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiter.is_finished(), "readable, but claimed: nobody woken");
            assert!(
                d.claim(Source::Tun, &stop).is_none(),
                "claimed once at a time"
            );
            drop(claim);
            assert_eq!(waiter.join().unwrap(), Some(Source::Tun));
        });
        assert!(
            d.claim(Source::Tun, &stop).is_none(),
            "held by the thread it was handed to"
        );
        d.done(Source::Tun, &stop);
        assert!(d.claim(Source::Tun, &stop).is_some());
    }

    /// A report of a source that another thread holds (armed again while held, as when a
    /// give-back and a claim cross) is not handed out: the waiter waits on until the holder
    /// gives the source back.
    #[test]
    fn a_report_of_a_held_source_is_not_handed_out() {
        let (tun, tx, to_tun) = loopback();
        let stop = Stop::new().unwrap();
        let d = Dispatch::new(&tun, None::<&UdpSocket>, &stop).unwrap();
        tx.send_to(b"a", to_tun).unwrap();
        assert_eq!(d.next(&stop), Some(Source::Tun));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| d.next(&stop));
            // Armed while this thread still holds it: the report reaches the waiter.
            d.ctl(libc::EPOLL_CTL_MOD, d.tun, ONE_READ, TOKEN_TUN)
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiter.is_finished(), "the source is held: not handed out");
            d.done(Source::Tun, &stop);
            assert_eq!(waiter.join().unwrap(), Some(Source::Tun));
        });
    }

    /// The TLS connection is a third source; retired (its connection closed, so readable for
    /// ever), it is not handed out again once given back, while the others still are.
    #[test]
    fn a_retired_source_is_not_handed_out_again() {
        let (tun, tx, to_tun) = loopback();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tls, _) = listener.accept().unwrap();
        let stop = Stop::new().unwrap();
        let mut d = Dispatch::new(&tun, None::<&UdpSocket>, &stop).unwrap();
        d.add_tls(&tls).unwrap();
        assert_eq!(d.sources(), 2);
        std::io::Write::write_all(&mut peer, b"record").unwrap();
        assert_eq!(d.next(&stop), Some(Source::Tls));
        // Given back unread: handed out again at once.
        d.done(Source::Tls, &stop);
        assert_eq!(d.next(&stop), Some(Source::Tls));
        drop(peer);
        d.retire(Source::Tls);
        d.done(Source::Tls, &stop);
        let waiter = waits_until(&d, &stop, "retired: readable, but not handed out", || {
            tx.send_to(b"a", to_tun).unwrap();
        });
        assert_eq!(waiter, Some(Source::Tun));
    }

    /// What a thread waiting on `d` is handed once `wake` has run; asserts that it was
    /// still waiting 50 ms in, before `wake` (`why` says why it should be).
    fn waits_until(d: &Dispatch, stop: &Stop, why: &str, wake: impl FnOnce()) -> Option<Source> {
        std::thread::scope(|s| {
            let waiter = s.spawn(|| d.next(stop));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiter.is_finished(), "{why}");
            wake();
            waiter.join().unwrap()
        })
    }

    /// A receiving socket (large buffers, UDP GRO, reads time out after 2 s), a sending one,
    /// and the receiver's address.
    fn loopback() -> (UdpSocket, UdpSocket, SocketAddr) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp_gso::tune(&rx);
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        (rx, tx, to)
    }

    /// Datagrams of one size travel together; a shorter one closes the train; a longer one
    /// waits for the next; every byte arrives once and in order.
    #[test]
    fn trains_keep_datagrams_whole_and_in_order() {
        let (rx, tx, to) = loopback();
        let gso = AtomicBool::new(true);
        let mut train = Train::new();
        let lens = [1000, 1000, 1000, 600, 1000, 1200, 1200, 1300];
        let mut sent = Vec::new();
        let mut sends = 0;
        for (i, &len) in lens.iter().enumerate() {
            let d: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            train.slot()[..len].copy_from_slice(&d);
            sent.push(d);
            if train.commit(len) {
                train.flush(&tx, Some(to), &gso).unwrap();
                sends += 1;
            }
        }
        train.flush(&tx, Some(to), &gso).unwrap();
        sends += 1;
        assert!(train.is_empty());
        assert_eq!(
            sends, 4,
            "600 closes one train; 1200 and 1300 do not join the one before"
        );
        let mut got = Vec::new();
        let mut batch = udp_gso::RecvBatch::new(8, 65_536);
        while got.len() < sent.len() {
            batch.recv(&rx).unwrap();
            for (r, bytes) in batch.messages() {
                got.extend(bytes.chunks(r.size).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, sent);
        assert!(gso.load(Ordering::Relaxed));
    }

    /// A batch that fills several trains keeps every datagram once and in order, the one
    /// that did not fit a complete train included, and an emptied set starts over.
    #[test]
    fn a_set_of_trains_keeps_order_across_trains() {
        let (rx, tx, to) = loopback();
        let mut set = Trains::new();
        let mut sent = Vec::new();
        let mut trains = 1;
        // 70 full datagrams (more than one train holds), a short one, then longer ones.
        let lens: Vec<usize> = (0..70).map(|_| 1000).chain([400, 1200, 1200]).collect();
        for (i, &len) in lens.iter().enumerate() {
            let d: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
            set.slot()[..len].copy_from_slice(&d);
            sent.push(d);
            if set.commit(len) {
                set.next();
                trains += 1;
            }
        }
        assert_eq!(set.len(), lens.len());
        assert!(trains >= 3, "{trains} trains");
        set.send(&tx, Some(to)).unwrap();
        assert!(set.is_empty());
        let mut got = Vec::new();
        let mut batch = udp_gso::RecvBatch::new(16, 65_536);
        while got.len() < sent.len() {
            batch.recv(&rx).unwrap();
            for (r, bytes) in batch.messages() {
                got.extend(bytes.chunks(r.size).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, sent);
        // Reused: one more datagram goes out alone.
        set.slot()[..3].copy_from_slice(b"one");
        set.commit(3);
        set.send(&tx, Some(to)).unwrap();
        batch.recv(&rx).unwrap();
        assert_eq!(batch.message(0), b"one");
    }

    /// A train whose sealing failed sends nothing; the datagram that did not fit it is
    /// neither lost nor left behind in it.
    #[test]
    fn a_forgotten_train_sends_nothing_but_keeps_the_one_that_did_not_fit() {
        let (rx, tx, to) = loopback();
        let mut set = Trains::new();
        for _ in 0..3 {
            set.slot()[..1000].fill(b'f');
            assert!(!set.commit(1000));
        }
        set.slot()[..1200].fill(b'k');
        assert!(set.commit(1200), "a longer datagram completes the train");
        assert_eq!(
            set.seal_current(|_, _| Err("keys changed")),
            Err("keys changed")
        );
        set.next();
        assert_eq!(set.len(), 1);
        set.send(&tx, Some(to)).unwrap();
        let mut batch = udp_gso::RecvBatch::new(8, 65_536);
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        assert_eq!(batch.message(0), &[b'k'; 1200][..]);
        rx.set_nonblocking(true).unwrap();
        assert!(batch.recv(&rx).is_err(), "nothing else was sent");
    }

    /// A train held across reads is sealed a read at a time: each seal sees only what was
    /// staged since the last, so every datagram is sealed exactly once; a failed seal
    /// forgets only its own datagrams, and the one that did not fit still moves on.
    #[test]
    fn a_train_held_across_reads_is_sealed_a_read_at_a_time() {
        let (rx, tx, to) = loopback();
        let mut set = Trains::new();
        // "Sealing" adds 1 to every byte: twice would show.
        let seal = |ok: bool| {
            move |d: &mut [u8], _size: usize| {
                d.iter_mut().for_each(|b| *b += 1);
                if ok { Ok(()) } else { Err("keys changed") }
            }
        };
        let stage = |set: &mut Trains, byte: u8, len: usize| {
            set.slot()[..len].fill(byte);
            set.commit(len)
        };
        // Read 1: two datagrams; read 2: one.
        assert!(!stage(&mut set, 10, 100) && !stage(&mut set, 20, 100));
        assert_eq!(set.seal_current(seal(true)), Ok(()));
        assert!(!stage(&mut set, 30, 100));
        let mut seen = 0;
        set.seal_current(|d, size| {
            seen = d.len();
            assert_eq!(size, 100);
            seal(true)(d, size)
        })
        .unwrap();
        assert_eq!(seen, 100, "only the datagram staged since the last seal");
        // Read 3: its seal fails; read 4 stages a longer datagram, which completes the train.
        assert!(!stage(&mut set, 40, 100));
        assert_eq!(set.seal_current(seal(false)), Err("keys changed"));
        assert_eq!(set.len(), 3, "the sealed ones stay");
        assert!(
            stage(&mut set, 50, 200),
            "a longer datagram completes the train"
        );
        // Nothing unsealed is left in the complete train: the seal is not called.
        set.seal_current(|_, _| -> Result<(), &str> { panic!("nothing to seal") })
            .unwrap();
        set.next();
        set.seal_current(seal(true)).unwrap();
        assert_eq!(set.len(), 4);
        set.send(&tx, Some(to)).unwrap();
        let mut got = Vec::new();
        let mut batch = udp_gso::RecvBatch::new(8, 65_536);
        while got.len() < 4 {
            batch.recv(&rx).unwrap();
            for (r, bytes) in batch.messages() {
                got.extend(bytes.chunks(r.size).map(<[u8]>::to_vec));
            }
        }
        let want: Vec<Vec<u8>> = [(11, 100), (21, 100), (31, 100), (51, 200)]
            .iter()
            .map(|&(b, n)| vec![b; n])
            .collect();
        assert_eq!(got, want);
    }

    /// Trains held across reads go out at [`SEND_BATCH`] datagrams, or when as many trains
    /// as are held have been started (sizes keep changing).
    #[test]
    fn held_trains_are_full_at_a_batch_or_at_the_train_limit() {
        let mut set = Trains::new();
        for i in 0..SEND_BATCH {
            assert!(!set.full(), "{i} datagrams held");
            set.slot()[..80].fill(1);
            assert!(!set.commit(80));
        }
        assert!(set.full());
        set.clear();
        for len in [100, 200, 300, 400] {
            assert!(!set.full());
            set.slot()[..len].fill(1);
            if set.commit(len) {
                set.next();
            }
        }
        assert_eq!(set.len(), 4);
        assert!(set.full(), "four trains held");
    }

    #[test]
    fn a_drain_sends_its_first_read_at_once() {
        let t0 = Instant::now();
        let mut reads = DrainReads::default();
        assert!(reads.read(3, t0).first);
        assert!(!reads.read(1, t0).first && !reads.read(1, t0).first);
        reads.ended();
        assert!(reads.read(2, t0).first, "the next drain starts over");
    }

    #[test]
    fn a_drain_ends_after_a_lone_packet_only_after_an_idle_spell() {
        let t0 = Instant::now();
        let later = |us| t0 + Duration::from_micros(us);
        let mut reads = DrainReads::default();
        let read = reads.read(1, t0);
        assert!(
            read.first && read.last,
            "the very first read comes after idleness"
        );
        reads.ended();
        // A busy flow: the next drain starts 100 us later and reads on until the device
        // is dry, however few packets each read gives.
        assert_eq!(
            reads.read(1, later(100)),
            DrainRead {
                first: true,
                last: false
            }
        );
        assert!(
            !reads.read(1, later(5_000)).last,
            "only a drain's first read"
        );
        reads.ended();
        let spell = IDLE_SPELL.as_micros() as u64;
        assert!(reads.read(1, later(5_000 + spell + 1)).last);
        reads.ended();
        // After an idle spell, a read with more than one packet (a GSO packet) reads on.
        assert!(!reads.read(2, later(20_000)).last);
        reads.ended();
        // A clock that went backwards is no idle spell.
        assert!(!reads.read(1, t0).last);
    }

    #[test]
    fn a_full_train_asks_to_be_sent() {
        let mut train = Train::new();
        let mut n = 0;
        while !train.commit(1400) {
            n += 1;
        }
        assert_eq!(n + 1, udp_gso::MAX_GSO_BYTES / 1400);
        assert!(train.len() * 1400 <= udp_gso::MAX_GSO_BYTES);
    }
}
