//! Established sessions' TLS connections, read by the gateway's packet threads instead of
//! their tasks.
//!
//! Were a connection's task to read its socket, each packet a client sent over TLS would wake
//! a tokio worker and pay for that wake-up and the runtime's scheduling
//! (docs/experiments/2026-12-03-tls-read-by-packet-threads.md). The packet threads already
//! wait on one epoll set
//! (`fastpath::dispatch::Dispatch`) with three fixed slots; the TLS slot holds this module's own epoll
//! set, in which every established session's socket is registered, level-triggered. An
//! epoll descriptor is readable while any socket in it is, so the thread handed the slot
//! asks the inner set which sockets are ready (without waiting) and reads each until it
//! has no more, the way the task did:
//!
//! ```text
//!  task: session established ─▶ reads what rustls and the socket hold ─▶ add() ─▶ waits
//!        for events, timers and the wake-up only
//!  packet thread handed Source::Tls ─▶ ready() ─▶ per connection: TlsLink::try_recv until
//!        it would block ─▶ state machine ─▶ TUN device; wakes the task when the state
//!        machine has events or frames to send
//!  closed or failed connection ─▶ remove(), `closed` set, task woken: it ends the
//!        connection as it did when its own read found it closed
//!  task ends (any reason) ─▶ remove() before it closes the link
//! ```
//!
//! One thread at a time holds the slot, so a connection is never read by two threads at
//! once; the task stops reading before it registers the socket.

use std::{
    collections::HashMap,
    io,
    os::fd::AsFd,
    sync::{Arc, Mutex, atomic::AtomicBool},
};

use super::table::Session;
use crate::sys::{
    epoll::{Epoll, Interest, no_report},
    tls_link::TlsLink,
};

/// One established session's connection, as the packet threads read it.
pub struct TlsReader {
    pub session: Arc<Session>,
    pub link: Arc<TlsLink>,
    /// Set by the thread that found the connection closed or failed; the task ends it.
    pub closed: AtomicBool,
}

/// The inner epoll set and what its tokens stand for. See the module docs.
pub struct TlsReaders {
    epoll: Epoll,
    by_token: Mutex<HashMap<u64, Arc<TlsReader>>>,
}

/// How many ready connections one look at the inner set takes.
pub const READY_BATCH: usize = 32;

impl TlsReaders {
    pub fn new() -> io::Result<TlsReaders> {
        Ok(TlsReaders {
            epoll: Epoll::new()?,
            by_token: Mutex::new(HashMap::new()),
        })
    }

    /// Registers `reader` under `token` (the connection's id): from now on its socket is
    /// reported to the packet threads.
    pub fn add(&self, token: u64, reader: Arc<TlsReader>) -> io::Result<()> {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        self.epoll
            .add(reader.link.as_fd(), Interest::Readable, token)?;
        map.insert(token, reader);
        Ok(())
    }

    /// Stops reporting the connection registered under `token`; nothing when it is not
    /// (any more).
    pub fn remove(&self, token: u64) {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        let Some(reader) = map.remove(&token) else {
            return;
        };
        // The socket is still open: `reader` holds its link.
        let _ = self.epoll.delete(reader.link.as_fd());
    }

    /// The connections with something to read now (at most [`READY_BATCH`]), without
    /// waiting. Fewer than [`READY_BATCH`] means no more were ready.
    pub fn ready(&self, out: &mut Vec<(u64, Arc<TlsReader>)>) -> usize {
        out.clear();
        let mut events = [no_report(); READY_BATCH];
        // A failed look (interrupted) finds nothing this time; the set stays readable.
        let n = self.epoll.wait(&mut events, false).unwrap_or(0);
        let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        for e in &events[..n] {
            let token = e.data();
            if let Some(r) = map.get(&token) {
                out.push((token, r.clone()));
            }
        }
        n
    }
}

/// The inner set, for the packet threads' own epoll set.
impl AsFd for TlsReaders {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}
