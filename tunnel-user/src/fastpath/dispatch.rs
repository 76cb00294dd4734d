//! Handing an end's packet sources to its packet threads, one thread per source at a time
//! ([`Dispatch`]), and the loop each packet thread runs ([`serve`]).
//!
//! The TUN device, the ESP socket and the TLS side (where there is one) sit in one epoll
//! set, each armed for one readiness report at a time (one-shot), with the stop signal's
//! eventfd. Every packet thread of the end waits on that set; a source that becomes readable
//! wakes one of them (the one that went to sleep last), which drains it and gives it back.
//! Both directions are served in parallel when both are busy, and a thread that has just
//! sent a packet finds the answer to it ready when it comes back, without a second thread
//! being woken for it.

use std::{
    io,
    ops::ControlFlow,
    os::fd::{AsFd, BorrowedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tracing::debug;

use crate::sys::epoll::{Epoll, Interest, Stop, no_report};
use tunnel_packet::ip::may_be_answered_at_once;

/// How long a packet thread backs off after a read failed with a real error.
pub(crate) const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A source of packets an end's packet threads serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The TUN device: packets to send through the tunnel.
    Tun,
    /// The ESP socket: datagrams to open and write into the TUN device.
    Esp,
    /// The TLS side, where an end's packet threads read it: the client's connection, or
    /// the gateway's set of established sessions' connections. Records to open, packets to
    /// write into the TUN device, control frames for the session.
    Tls,
}

impl Source {
    const ALL: [Source; 3] = [Source::Tun, Source::Esp, Source::Tls];

    /// The token its reports carry (0 is the stop signal's).
    fn token(self) -> u64 {
        self as u64 + 1
    }
}

/// Something whose descriptor a [`Dispatch`] registers, shared with it so that the
/// descriptor stays open as long as it is registered.
pub(crate) type SharedFd = Arc<dyn AsFd + Send + Sync>;

/// Hands an end's sources to its packet threads, one thread per source at a time (see the
/// module docs). It holds a share of each source, so a registered descriptor cannot be
/// closed under it.
pub(crate) struct Dispatch {
    epoll: Epoll,
    /// The registered sources, indexed by [`Source`].
    sources: [Option<SharedFd>; 3],
    /// Whether a thread holds the source (indexed by [`Source`]): handed it by the epoll
    /// set, or claimed with [`Self::claim`]. Whoever sets the flag gives the source back
    /// (clears it, then re-arms it); an epoll report of a held source is ignored, so a
    /// source is never served by two threads at once.
    held: [AtomicBool; 3],
    /// Sources that are given back without being re-armed ([`Self::retire`]).
    retired: [AtomicBool; 3],
}

const TOKEN_STOP: u64 = 0;

impl Dispatch {
    /// A dispatcher whose wait ends, in every thread, once `stop` is set.
    pub(crate) fn new(stop: &Stop) -> io::Result<Dispatch> {
        let epoll = Epoll::new()?;
        // The stop signal stays readable once set (level-triggered), so every waiting
        // thread is handed it in turn.
        epoll.add(stop.as_fd(), Interest::Readable, TOKEN_STOP)?;
        Ok(Dispatch {
            epoll,
            sources: Default::default(),
            held: Default::default(),
            retired: Default::default(),
        })
    }

    /// Registers `source` (once each), armed.
    pub(crate) fn add(&mut self, source: Source, fd: SharedFd) -> io::Result<()> {
        self.epoll
            .add(fd.as_fd(), Interest::ReadableOnce, source.token())?;
        self.sources[source as usize] = Some(fd);
        Ok(())
    }

    /// How many threads have something to do: one per source.
    pub(crate) fn sources(&self) -> usize {
        self.sources.iter().flatten().count()
    }

    fn fd(&self, source: Source) -> Option<BorrowedFd<'_>> {
        self.sources[source as usize].as_ref().map(|s| s.as_fd())
    }

    /// Waits until a source is readable and hands it to the calling thread: no other thread
    /// is handed it until the caller gives it back with [`Self::done`]. None once `stop` is
    /// set.
    pub(crate) fn next(&self, stop: &Stop) -> Option<Source> {
        loop {
            if stop.is_set() {
                return None;
            }
            let mut report = [no_report()];
            let n = match self.epoll.wait(&mut report, true) {
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
            if n == 1
                && let Some(&source) = Source::ALL.iter().find(|s| s.token() == report[0].data())
                && self.take(source)
            {
                return Some(source);
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
    /// side answer at once: that answer then wakes nobody.
    pub(crate) fn claim<'a>(&'a self, source: Source, stop: &'a Stop) -> Option<Claim<'a>> {
        let fd = self.fd(source)?;
        if !self.take(source) {
            return None;
        }
        // Failing this (the kernel out of memory), a report wakes a thread that finds the
        // source held and waits on.
        if let Err(e) = self.epoll.modify(fd, Interest::Disarmed, source.token()) {
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
    pub(crate) fn claim_tun_for<'a, 'p>(
        &'a self,
        mut packets: impl Iterator<Item = &'p [u8]>,
        stop: &'a Stop,
    ) -> Option<Claim<'a>> {
        if !packets.any(may_be_answered_at_once) {
            return None;
        }
        self.claim(Source::Tun, stop)
    }

    /// Stops handing out `source` once its holder gives it back: it is not re-armed. For a
    /// source that will never have anything again but stays readable (a closed
    /// connection), which would otherwise be handed out again at once, for ever.
    pub(crate) fn retire(&self, source: Source) {
        self.retired[source as usize].store(true, Ordering::Release);
    }

    /// Gives `source` back: the next waiting thread is handed it when it is readable, at
    /// once if it still is.
    pub(crate) fn done(&self, source: Source, stop: &Stop) {
        let Some(fd) = self.fd(source) else {
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
        while let Err(e) = self
            .epoll
            .modify(fd, Interest::ReadableOnce, source.token())
        {
            debug!(error = %e, ?source, "re-arming a packet source");
            if stop.is_set() {
                return;
            }
            std::thread::sleep(ERROR_BACKOFF);
        }
    }
}

/// A source claimed with [`Dispatch::claim`]; dropping it gives the source back.
pub(crate) struct Claim<'a> {
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
pub(crate) fn serve(
    dispatch: &Dispatch,
    stop: &Stop,
    mut drain: impl FnMut(Source) -> ControlFlow<()>,
) {
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
pub(crate) fn after_failed_read(e: &io::Error, what: &str) {
    if e.kind() != io::ErrorKind::WouldBlock {
        debug!(error = %e, "{what}");
        std::thread::sleep(ERROR_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, UdpSocket};

    use super::*;

    /// A dispatcher over a "TUN device" and an "ESP socket" that are UDP sockets (readable
    /// when a datagram is queued), and how to make each readable.
    fn dispatch(with_esp: bool) -> (Dispatch, Stop, UdpSocket, SocketAddr, SocketAddr) {
        let stop = Stop::new().unwrap();
        let mut d = Dispatch::new(&stop).unwrap();
        let (tun, to_tun) = receiver();
        let (esp, to_esp) = receiver();
        d.add(Source::Tun, Arc::new(tun)).unwrap();
        if with_esp {
            d.add(Source::Esp, Arc::new(esp)).unwrap();
        }
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        (d, stop, tx, to_tun, to_esp)
    }

    fn receiver() -> (UdpSocket, SocketAddr) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        (rx, to)
    }

    /// A readable source is handed to one thread, and to no other until it is given back
    /// (then at once, as it is still readable); meanwhile the other source goes to another
    /// thread.
    #[test]
    fn dispatch_hands_a_source_to_one_thread_at_a_time() {
        let (d, stop, tx, to_tun, to_esp) = dispatch(true);
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
        let (d, stop, tx, to_tun, _) = dispatch(false);
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
        let (d, stop, tx, to_tun, _) = dispatch(false);
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
        let (d, stop, tx, to_tun, _) = dispatch(false);
        tx.send_to(b"a", to_tun).unwrap();
        assert_eq!(d.next(&stop), Some(Source::Tun));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| d.next(&stop));
            // Armed while this thread still holds it: the report reaches the waiter.
            let fd = d.fd(Source::Tun).unwrap();
            d.epoll
                .modify(fd, Interest::ReadableOnce, Source::Tun.token())
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
        let (mut d, stop, tx, to_tun, _) = dispatch(false);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tls, _) = listener.accept().unwrap();
        d.add(Source::Tls, Arc::new(tls)).unwrap();
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

    /// A claim for packets none of which may be answered at once (UDP) takes nothing; one
    /// for a batch with a TCP segment in it takes the TUN device.
    #[test]
    fn the_tun_device_is_claimed_only_for_what_may_be_answered_at_once() {
        let (d, stop, _, _, _) = dispatch(false);
        let ip = |proto: u8| {
            let mut p = vec![0u8; 40];
            p[0] = 0x45;
            p[9] = proto;
            p
        };
        let (udp, tcp) = (ip(17), ip(6));
        assert!(d.claim_tun_for([&udp[..]].into_iter(), &stop).is_none());
        let claim = d.claim_tun_for([&udp[..], &tcp[..]].into_iter(), &stop);
        assert!(claim.is_some());
        assert!(d.claim(Source::Tun, &stop).is_none(), "held by the claim");
        drop(claim);
        assert!(d.claim(Source::Tun, &stop).is_some(), "given back");
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
}
