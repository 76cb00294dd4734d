//! Per-CPU packet and byte counters, one row per connection (plus "none"), one column per
//! [`Reason`]. Userspace sums the CPUs.

use tunnel_common::{Reason, counter_index};

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(conn: u32, reason: Reason, bytes: u32) {
    if let Some(cell) = COUNTERS.get_ptr_mut(counter_index(conn, reason)) {
        // SAFETY: per-CPU cells are only written by this CPU, and the pointer comes from a
        // successful lookup into a map of `Counter`s.
        unsafe {
            (*cell).packets += 1;
            (*cell).bytes += bytes as u64;
        }
    }
}
