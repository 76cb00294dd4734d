//! Waiting on several descriptors at once: an epoll set ([`Epoll`]) and the stop signal of a
//! set of threads that wait in one ([`Stop`]). Both are thin owners of a kernel object made
//! with `nix`; what is registered, and how it is handed out, is `fastpath::dispatch`'s.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
    sync::atomic::{AtomicBool, Ordering},
};

use nix::sys::{
    epoll::{self, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
    eventfd::{EfdFlags, EventFd},
};

/// The stop signal of a set of threads: a flag they look at between batches of work, and an
/// eventfd in the epoll set they wait on. An idle thread therefore sleeps with no timeout (no
/// periodic wake-ups, no timer armed per sleep) and still leaves at once when stopped: the
/// eventfd stays readable once set, so every thread waiting on a level-triggered
/// registration of it is woken in turn.
#[derive(Debug)]
pub(crate) struct Stop {
    flag: AtomicBool,
    event: EventFd,
}

impl Stop {
    pub(crate) fn new() -> io::Result<Stop> {
        Ok(Stop {
            flag: AtomicBool::new(false),
            event: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
        })
    }

    /// Whether the threads should leave.
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Tells the threads to leave and wakes every one that waits.
    pub(crate) fn set(&self) {
        self.flag.store(true, Ordering::Release);
        // A full counter (EAGAIN) is already readable, which is all a waiter needs.
        let _ = self.event.write(1);
    }

    /// Makes the signal reusable once the threads it stopped have been joined.
    pub(crate) fn clear(&self) {
        // EAGAIN when nothing was set.
        let _ = self.event.read();
        self.flag.store(false, Ordering::Release);
    }
}

impl AsFd for Stop {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.event.as_fd()
    }
}

/// A readiness report: `data()` is the token the ready descriptor was registered with.
pub(crate) type Ready = EpollEvent;

/// An empty report, to wait into.
pub(crate) fn no_report() -> Ready {
    EpollEvent::empty()
}

/// What a registration reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Readable, for as long as it is (level-triggered).
    Readable,
    /// Readable, reported once; nothing more until re-armed with [`Epoll::modify`].
    ReadableOnce,
    /// Nothing: registered, reporting no readiness until re-armed.
    Disarmed,
}

impl Interest {
    fn flags(self) -> EpollFlags {
        match self {
            Interest::Readable => EpollFlags::EPOLLIN,
            Interest::ReadableOnce => EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT,
            // One-shot with no event of interest: it reports nothing, and stays registered.
            Interest::Disarmed => EpollFlags::EPOLLONESHOT,
        }
    }
}

/// An epoll set, owned.
#[derive(Debug)]
pub(crate) struct Epoll(epoll::Epoll);

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        Ok(Epoll(epoll::Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?))
    }

    /// Registers `fd`, reported with `token`.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, interest: Interest, token: u64) -> io::Result<()> {
        Ok(self.0.add(fd, EpollEvent::new(interest.flags(), token))?)
    }

    /// Changes what `fd`'s registration reports (re-arms a one-shot one).
    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        interest: Interest,
        token: u64,
    ) -> io::Result<()> {
        let mut event = EpollEvent::new(interest.flags(), token);
        Ok(self.0.modify(fd, &mut event)?)
    }

    /// Unregisters `fd`.
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(self.0.delete(fd)?)
    }

    /// Waits for reports into `reports`: until one comes (`forever`), or not at all; how
    /// many came.
    pub(crate) fn wait(&self, reports: &mut [Ready], forever: bool) -> io::Result<usize> {
        let timeout = if forever {
            EpollTimeout::NONE
        } else {
            EpollTimeout::ZERO
        };
        Ok(self.0.wait(reports, timeout)?)
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.0.as_fd()
    }
}
