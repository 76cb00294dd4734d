//! The kernel log: one debug record per verdict, saying which program judged the packet,
//! for which connection, the packet's protocol, addresses and ports, what happened to it
//! (tunnel, bypass, drop) and why (its [`Reason`]).
//!
//! Off unless userspace asks (`datapath::KernelLog`). The switch is aya-log's level global,
//! which the loader sets before the programs are verified. It lives in a read-only, frozen
//! map, so the verifier knows its value and, when the log is off, removes every branch that
//! tests it together with the code behind it: what is left on the packet path is the load of
//! the level, twice per packet ([`note`] and [`write`]). When it is on, records go through
//! aya-log's ring buffer to userspace, which forwards them to tracing; a record that finds
//! the ring full is lost, the verdict is not.
//!
//! A verdict is noted where it is counted ([`note`], from `counters`) and written once, when
//! the program's run ends ([`write`], from the entry points). One record site per program
//! keeps verification bounded: a record is a few hundred byte copies, and written at each of
//! the dozen places that count, on every path the classifier can take to them, it took the
//! verifier past its million-instruction limit.
//!
//! Owns: the records and the note that carries a verdict to them. Does not own: the verdicts,
//! or the counters, which stay the exact account whether the log is on or off.

use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
};
use tunnel_common::{NUM_REASONS, Reason, VerdictKind};

use crate::{maps::NOTE, packet::Packet};

/// Which program judged a packet.
#[derive(Clone, Copy)]
pub enum Hook {
    /// TC egress on an uplink: the classifier.
    UplinkEgress,
    /// TC egress on a TUN device.
    TunEgress,
    /// TC ingress on a TUN device: the reverse NAT.
    TunIngress,
    /// XDP or TC ingress on an uplink: the guard.
    Guard,
}

impl Hook {
    #[inline(always)]
    const fn name(self) -> &'static str {
        match self {
            Hook::UplinkEgress => "uplink egress",
            Hook::TunEgress => "tun egress",
            Hook::TunIngress => "tun ingress",
            Hook::Guard => "uplink guard",
        }
    }
}

/// A verdict on its way from where it is counted to the end of the program's run. Per CPU:
/// a program runs to its end on the CPU it started on, without another TC or XDP program
/// in between on that CPU.
#[repr(C)]
pub struct Note {
    /// 1 between [`note`] and [`write`].
    pending: u32,
    conn: u32,
    reason: u32,
    /// 1 where the packet's addresses were read.
    addressed: u32,
    v6: u32,
    proto: u32,
    sport: u32,
    dport: u32,
    src: [u32; 4],
    dst: [u32; 4],
}

/// Whether the log is on. aya-log's macros test the same level; testing it first here puts
/// all of the log's work behind one branch, which the verifier removes when it is off.
#[inline(always)]
fn on() -> bool {
    level_enabled(Level::Debug)
}

/// Notes the verdict `reason` given a packet of connection `conn`; `pkt` is the packet
/// where its addresses could be read.
#[inline(always)]
pub fn note(pkt: Option<&Packet>, conn: u32, reason: Reason) {
    if !on() {
        return;
    }
    let Some(n) = NOTE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a lookup into a per-CPU map of `Note`s, which only this CPU's running program
    // touches.
    let n = unsafe { &mut *n };
    n.pending = 1;
    n.conn = conn;
    n.reason = reason as u32;
    match pkt {
        Some(p) => {
            n.addressed = 1;
            n.v6 = p.v6 as u32;
            n.proto = p.proto as u32;
            n.sport = p.sport as u32;
            n.dport = p.dport as u32;
            n.src = p.src;
            n.dst = p.dst;
        }
        None => n.addressed = 0,
    }
}

/// Writes the verdict noted during this run of `hook`'s program, if any.
#[inline(always)]
pub fn write(hook: Hook) {
    if !on() {
        return;
    }
    let Some(n) = NOTE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `note`.
    let n = unsafe { &mut *n };
    if n.pending == 0 {
        return;
    }
    n.pending = 0;
    let Some(outcome) = OUTCOMES.get(n.reason) else {
        return;
    };
    // aya-log's macros take a program context and do not use it.
    let ctx = ();
    match (n.addressed, n.v6) {
        (0, _) => debug!(
            &ctx,
            "{}: conn {} (no addresses read) => {}",
            hook.name(),
            n.conn,
            outcome
        ),
        (_, 0) => debug!(
            &ctx,
            "{}: conn {} proto {} {:i}:{} -> {:i}:{} => {}",
            hook.name(),
            n.conn,
            n.proto,
            n.src[3].to_ne_bytes(),
            n.sport,
            n.dst[3].to_ne_bytes(),
            n.dport,
            outcome
        ),
        _ => debug!(
            &ctx,
            "{}: conn {} proto {} [{:i}]:{} -> [{:i}]:{} => {}",
            hook.name(),
            n.conn,
            n.proto,
            octets(&n.src),
            n.sport,
            octets(&n.dst),
            n.dport,
            outcome
        ),
    }
}

/// Room for the longest outcome, "bypass (bypass_link_control)".
const OUTCOME_MAX: usize = 32;

/// "verdict (reason)", e.g. "drop (drop_lockdown)", for every reason: made at compile time
/// from [`Reason::name`] and looked up by number. A record takes its outcome from this table,
/// and as its last field, so the verifier follows one path through it; with one string
/// constant per reason it followed twenty, through the whole record, past its limit.
struct Outcomes {
    text: [[u8; OUTCOME_MAX]; NUM_REASONS as usize],
    len: [u8; NUM_REASONS as usize],
}

static OUTCOMES: Outcomes = Outcomes::new();

impl Outcomes {
    const fn new() -> Outcomes {
        let mut t = Outcomes {
            text: [[0; OUTCOME_MAX]; NUM_REASONS as usize],
            len: [0; NUM_REASONS as usize],
        };
        let mut i = 0;
        while i < Reason::ALL.len() {
            let r = Reason::ALL[i];
            let verdict = match r.verdict() {
                VerdictKind::Tunnel => "tunnel",
                VerdictKind::Bypass => "bypass",
                VerdictKind::Drop => "drop",
            };
            let mut n = 0;
            n = put(&mut t.text[i], n, verdict);
            n = put(&mut t.text[i], n, " (");
            n = put(&mut t.text[i], n, r.name());
            n = put(&mut t.text[i], n, ")");
            t.len[i] = n as u8;
            i += 1;
        }
        t
    }

    /// The outcome of reason number `reason`.
    #[inline(always)]
    fn get(&self, reason: u32) -> Option<&str> {
        let i = reason as usize;
        let len = *self.len.get(i)? as usize;
        let text = self.text.get(i)?.get(..len)?;
        // SAFETY: the table holds whole copies of ASCII strings (`new`).
        Some(unsafe { core::str::from_utf8_unchecked(text) })
    }
}

/// Copies `s` into `buf` at `at`; returns where it ends. Fails the build if it does not fit.
const fn put(buf: &mut [u8; OUTCOME_MAX], at: usize, s: &str) -> usize {
    let b = s.as_bytes();
    let mut j = 0;
    while j < b.len() {
        buf[at + j] = b[j];
        j += 1;
    }
    at + b.len()
}

/// An address kept as network-order words, as its sixteen bytes.
#[inline(always)]
fn octets(a: &[u32; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    for (chunk, w) in o.chunks_exact_mut(4).zip(a) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    o
}
