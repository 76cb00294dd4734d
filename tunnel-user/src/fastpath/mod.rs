//! The packet path, written once for both ends of the tunnel.
//!
//! An end is a device with peers, as in WireGuard: the gateway's peers are its established
//! sessions, and the client is the case of one peer (its session with the gateway). What
//! differs between the ends is the [`End`](end::End) trait; everything else here is generic
//! over it and knows neither end.
//!
//! # Data flow
//!
//! ```text
//!                 ┌──────────── send path (outbound) ────────────┐
//!  TUN device ──▶ TunSource: read, GSO packet split in place ──▶ End::peer_by_destination
//!                 ──▶ peer's lock: stage + seal into Trains ──▶ lock released ──▶ UDP GSO
//!                 send to End::esp_to (or TLS frames queued ──▶ End::send_tls)
//!
//!                 ┌──────────── receive paths (inbound, tls_in) ─┐
//!  ESP socket ──▶ recvmmsg (+GRO) ──▶ runs of one SPI ──▶ End::peer_by_spi ──▶ peer's lock:
//!                 open in place ──▶ lock released ──▶ End::admit ──▶ TunSink (joined) ──▶ TUN
//!  TLS link  ──▶ TlsLink::try_recv ──▶ peer's lock: parse, each data packet End::admit ──▶
//!                 TunSink ──▶ lock released ──▶ flush into TUN
//! ```
//!
//! # Threads
//!
//! Each end runs one packet thread per source (the TUN device, the ESP socket, and the TLS
//! side where packet threads read it: the client's connection, the gateway's set of
//! established sessions' connections). They share one epoll set in which each source is
//! registered one-shot ([`dispatch::Dispatch`]): a readable source is handed to one thread,
//! which drains it until it is empty and gives it back. Both directions run in parallel
//! under load; an idle tunnel's threads sleep with no timeout, and a stop eventfd in the
//! set ends them all ([`crate::sys::epoll::Stop`]). The owner of each peer (the client's
//! connection task, the gateway's session task) is woken only for what it acts on: events,
//! TLS frames the threads could not send, timer work, the connection's end
//! ([`End::wake`](end::End::wake)).
//!
//! # Who owns the TUN device, and why it is claimed before a write
//!
//! The TUN device is read only by the thread that holds it: the one the dispatcher handed
//! it to, or one that claimed it ([`dispatch::Dispatch::claim`]). The send path's buffers
//! ([`outbound::Outbound`]) are taken only by the holder, which sends what each read gave
//! before the next read, so packets leave in the order the device gave them.
//!
//! A packet written into a TUN device is routed within the `write`, and what the other side
//! answers at once (a TCP ACK, an ICMP echo reply) is already queued in the device when the
//! write returns. So a receiving thread about to write a packet that may be answered at
//! once claims the device first (it is disarmed: its readiness wakes nobody), writes, and
//! forwards up to eight reads of answers itself ([`outbound::forward_answers`]) before it
//! gives the device back (which re-arms it and reports anything queued since). Without the
//! claim the answer would wake the other packet thread, which would then wait on the locks
//! the writer holds: a wake-up and a futex per round trip.
//!
//! # Lock order
//!
//! 1. A receiving direction's buffers ([`device::Device::inbound`] or
//!    [`device::Device::tls_in`]), held for a whole drain by the source's holder.
//! 2. The send direction's buffers ([`device::Device::outbound`]): by the TUN device's
//!    holder, or by a receiving thread after its writes, with the device claimed.
//! 3. The TLS link's lock (`TlsLink`), to send or receive records.
//! 4. A peer's state machine ([`End::proto`](end::End::proto)): held only to stage and
//!    seal, or to open, never across a system call on the packet path; TUN writes and UDP
//!    sends happen once it is released, so the other direction never waits for them.
//!
//! A thread takes locks only in this order. Claims of a source are not locks: a claim that
//! fails (another thread holds the source) is given up, never waited for.
//!
//! # The `End` trait
//!
//! [`End`](end::End) says what differs between the ends: finding the peer of a packet by
//! its destination (TUN to peer) and of a datagram by its SPI (ESP to TUN), whether a
//! decrypted packet may be forwarded (source ownership and the access policy, at the
//! gateway), where a peer's ESP goes (the client's connected socket, the gateway's learned
//! address), waking the peer's owner, sending its TLS frames, the TLS side's drain, and
//! the traffic counters. [`end::PeerState`] is the calls the path makes on a peer's
//! protocol state machine.
//!
//! # Modules
//!
//! `dispatch` (one-shot sources, claims, the thread loop), `trains` (sealed datagrams for
//! one UDP GSO send), `drain` (when a drain of the TUN device sends and ends), `outbound`
//! (TUN to ESP or TLS), `inbound` (ESP to TUN), `tls_in` (TLS to TUN), `tun_io` (the TUN
//! device's reads and writes, behind a trait tests implement in memory), `device` (the whole,
//! and its threads); `tunnel_packet::ip` reads a packet's addresses and whether it may be
//! answered at once. `docs/fastpath.md` has the measurements behind the choices.

pub(crate) mod device;
pub(crate) mod dispatch;
pub(crate) mod drain;
pub(crate) mod end;
pub(crate) mod inbound;
pub(crate) mod outbound;
pub(crate) mod tls_in;
pub(crate) mod trains;
pub(crate) mod tun_io;

#[cfg(test)]
mod tests;
