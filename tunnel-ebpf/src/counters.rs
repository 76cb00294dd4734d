//! Per-CPU packet and byte counters, one row per connection (plus "none"), one column per
//! [`Reason`]; and on the uplinks, one row per uplink too. Userspace sums the CPUs. Every
//! verdict is counted here, and noted for the kernel log (`log`), which keeps it only while
//! userspace has the log on.

use tunnel_common::{NUM_REASONS, Reason, counter_index};

use crate::{
    log::note,
    maps::{COUNTERS, UPLINK_COUNTERS},
    packet::Packet,
};

/// Where a verdict was given.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// On the uplink with this ifindex: counted in its row as well.
    Uplink(u32),
    /// On a TUN device.
    Tun,
}

/// Counts the verdict `reason` given at `at` to a packet of `bytes` bytes for connection
/// `conn`; `pkt` is the packet where its addresses could be read (for the log).
#[inline(always)]
pub fn count(at: At, pkt: Option<&Packet>, conn: u32, reason: Reason, bytes: u32) {
    note(pkt, conn, reason);
    if let Some(cell) = COUNTERS.get_ptr_mut(counter_index(conn, reason)) {
        // SAFETY: per-CPU cells are only written by this CPU, and the pointer comes from a
        // successful lookup into a map of `Counter`s.
        unsafe {
            (*cell).packets += 1;
            (*cell).bytes += bytes as u64;
        }
    }
    if let At::Uplink(ifindex) = at
        && let Some(row) = UPLINK_COUNTERS.get_ptr_mut(ifindex)
    {
        // The compiler knows a `Reason` is below NUM_REASONS and drops a bounds check; the
        // verifier does not, and refuses the index without one. Read through a volatile
        // load, the index is opaque to the compiler, so the check stays.
        let column = reason as u32;
        // SAFETY: reading a local.
        let column = unsafe { core::ptr::read_volatile(&column) };
        if column < NUM_REASONS {
            // SAFETY: as above; a row is a plain array of counters and `column` is in it.
            unsafe {
                let cell = (*row).cells.as_mut_ptr().add(column as usize);
                (*cell).packets += 1;
                (*cell).bytes += bytes as u64;
            }
        }
    }
}
