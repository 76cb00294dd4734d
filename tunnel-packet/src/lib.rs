//! Sans-IO packet work for tunnel's fast path (see `docs/fastpath.md`): the Internet
//! checksum, the virtio-net header a TUN device with offloads speaks, splitting the GSO
//! packets such a device hands out into wire-size packets ([`segment`]), and joining
//! consecutive TCP segments back into one GSO packet for writing ([`Coalescer`]).
//!
//! Owns: byte-level packet rewriting. Does not own: descriptors, sockets or encryption.

pub mod checksum;
mod coalesce;
pub mod ip;
mod segment;
pub mod vnet;

pub use coalesce::{Coalescer, MAX_FLOWS};
pub use segment::{SegmentError, segment};
pub use vnet::VnetHdr;

/// The largest IP packet handled: an IPv4 total length or IPv6 payload length is 16 bits.
pub const MAX_PACKET: usize = 65_535 + 40;
