//! When a drain of the TUN device sends what it read, and when it may end before the read
//! that finds the device empty ([`DrainReads`]).

use std::time::{Duration, Instant};

/// Where a TUN side is in a drain of the device (the reads until it runs dry). The ESP
/// datagrams of the first read go out at once: after an idle spell it is usually the only
/// packet, and holding it for the read that finds the device empty would delay it. What
/// later reads give is held until `trains::SEND_BATCH` packets are, or the device runs dry.
///
/// A drain whose first read comes after an idle spell ([`IDLE_SPELL`]) and gives a lone
/// packet ends there, without the read that would find the device empty: giving the device
/// back re-arms it, and re-arming reports anything queued meanwhile, so nothing waits. That
/// read is a system call on the idle round trip's path (the thread that sent the packet
/// makes it before it sleeps, and on one CPU the woken peer waits for it); under load the
/// reads follow each other within the spell, and a drain runs until the device is dry.
#[derive(Default)]
pub(crate) struct DrainReads {
    started: bool,
    /// When the last read was made.
    last: Option<Instant>,
}

/// How long a TUN device must have given nothing for a drain's first read to count as
/// coming after an idle spell: longer than the gaps within any busy flow (a TCP stream's
/// ACKs, a flood of datagrams), shorter than an interactive session's.
pub(crate) const IDLE_SPELL: Duration = Duration::from_millis(1);

/// What [`DrainReads::read`] says of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DrainRead {
    /// The drain's first read: its datagrams go out at once.
    pub(crate) first: bool,
    /// The drain may end after this read ([`DrainReads`]).
    pub(crate) last: bool,
}

impl DrainReads {
    /// Notes a read made at `now` that gave `packets` packets.
    pub(crate) fn read(&mut self, packets: usize, now: Instant) -> DrainRead {
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
    pub(crate) fn ended(&mut self) {
        self.started = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
