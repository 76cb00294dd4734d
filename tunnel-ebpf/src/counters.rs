//! Per-CPU packet and byte counters, one row per connection (plus "none"), one column per
//! [`Reason`]. Userspace sums the CPUs. Every verdict is counted here, and noted for the
//! kernel log (`log`), which keeps it only while userspace has the log on.

use tunnel_common::{Reason, counter_index};

use crate::{log::note, maps::COUNTERS, packet::Packet};

/// Counts the verdict `reason` given a packet of `bytes` bytes for connection `conn`; `pkt`
/// is the packet where its addresses could be read (for the log).
#[inline(always)]
pub fn count(pkt: Option<&Packet>, conn: u32, reason: Reason, bytes: u32) {
    note(pkt, conn, reason);
    if let Some(cell) = COUNTERS.get_ptr_mut(counter_index(conn, reason)) {
        // SAFETY: per-CPU cells are only written by this CPU, and the pointer comes from a
        // successful lookup into a map of `Counter`s.
        unsafe {
            (*cell).packets += 1;
            (*cell).bytes += bytes as u64;
        }
    }
}
