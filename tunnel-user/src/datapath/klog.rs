//! The kernel log: the kernel programs' diagnostic records, one per verdict, saying which
//! program judged a packet, tunnel, bypass or drop, the reason, the connection and the
//! packet (`tunnel-ebpf/src/log.rs`). Chosen when the programs are loaded and forwarded to
//! tracing from aya-log's ring buffer.
//!
//! Off by default. The programs read the switch (aya-log's level global) from a read-only map
//! that is frozen before they are verified, so when the log is off the verifier removes the
//! log code and the packet path keeps only the loads of the level; when it is on, every
//! packet costs a ring-buffer record, which is for diagnosis, not for production traffic.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// The tracing target of forwarded records, named after the crate that writes them.
pub const TARGET: &str = "tunnel_ebpf";

/// Ring buffer size when the log is off: the programs still name the map, but nothing
/// writes to it, so one page (the smallest ring the kernel makes) is enough.
const OFF_RING_BYTES: u32 = 4096;

/// Whether the kernel programs log their verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelLog {
    /// No records, and no log code left in the loaded programs.
    #[default]
    Off,
    /// A debug record for every verdict.
    Verdicts,
}

impl KernelLog {
    /// Sets the programs' log level (and, when off, shrinks the unused ring) on `loader`.
    pub(crate) fn configure<'a>(self, loader: &mut EbpfLoader<'a>) {
        match self {
            KernelLog::Off => {
                loader
                    .override_global(aya_log::LEVEL, &LEVEL_OFF, true)
                    .map_max_entries(RING, OFF_RING_BYTES);
            }
            KernelLog::Verdicts => {
                loader.override_global(aya_log::LEVEL, &LEVEL_DEBUG, true);
            }
        }
    }
}

/// aya-log's level numbers (`aya_log::Level`): below `Error` (1) nothing is logged; the
/// programs log their verdicts at `Debug`.
static LEVEL_OFF: u8 = 0;
static LEVEL_DEBUG: u8 = aya_log::Level::Debug as u8;

/// The name aya-log gives its ring buffer map.
const RING: &str = "AYA_LOGS";

/// Reads the kernel log's records and forwards them to tracing, at their level, with target
/// [`TARGET`]. While the log is off the ring stays empty.
pub struct KernelLogReader {
    logger: EbpfLogger<ToTracing>,
}

impl KernelLogReader {
    /// Takes the ring buffer out of a loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<KernelLogReader, aya_log::Error> {
        Ok(KernelLogReader {
            logger: EbpfLogger::init_with_logger(ebpf, ToTracing)?,
        })
    }

    /// Forwards every record waiting in the ring.
    pub fn flush(&mut self) {
        self.logger.flush();
    }

    /// Forwards records as they arrive, until the task running it is dropped or the ring
    /// cannot be waited on (the error).
    pub async fn forward(self) -> io::Error {
        // SAFETY: the reader owns the ring's descriptor (aya's map data holds it), which stays
        // open and the same for as long as the reader, and the AsyncFd owns the reader.
        let mut fd = match unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => return e.into(),
        };
        loop {
            let mut ready = match fd.readable_mut().await {
                Ok(r) => r,
                Err(e) => return e,
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }
}

impl AsFd for KernelLogReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }
}

impl AsRawFd for KernelLogReader {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}

/// A `log` logger that hands aya-log's records to tracing. tracing wants its level and
/// target at compile time, hence one arm per level and one target for all.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{text}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{text}"),
            log::Level::Info => tracing::info!(target: TARGET, "{text}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{text}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{text}"),
        }
    }

    fn flush(&self) {}
}
