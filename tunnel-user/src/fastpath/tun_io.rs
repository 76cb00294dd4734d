//! The TUN device as the packet path uses it: what it must do ([`TunIo`]: the real device,
//! or an in-memory one in tests), reading it as wire-size IP packets ([`TunSource`]) and
//! writing into it, joined where its offloads allow ([`TunSink`]).

use std::{io, os::fd::AsFd};

use tracing::debug;
use tunnel_packet::{Coalescer, MAX_PACKET, VnetHdr, segment};

use crate::sys::tun::{Offload, Tun};

/// A TUN device's reads and writes. Readiness comes from its descriptor ([`AsFd`]), which
/// the dispatcher waits on.
pub(crate) trait TunIo: AsFd + Send + Sync + 'static {
    /// Whether every packet carries a virtio-net header (then reads may hand out GSO
    /// packets, and writes may take them).
    fn has_vnet_hdr(&self) -> bool;

    /// The offloads the kernel accepted: which joined packets a write may take.
    fn offload(&self) -> Offload;

    /// Reads one packet into `buf`: its virtio-net header (on a device that has them) and
    /// its length. `WouldBlock` when nothing is queued (non-blocking device).
    fn read_packet(&self, buf: &mut [u8]) -> io::Result<(Option<VnetHdr>, usize)>;

    /// Writes one packet, behind `hdr` on a device with virtio-net headers.
    fn write_packet(&self, hdr: Option<&VnetHdr>, packet: &[u8]) -> io::Result<()>;
}

impl TunIo for Tun {
    fn has_vnet_hdr(&self) -> bool {
        Tun::has_vnet_hdr(self)
    }

    fn offload(&self) -> Offload {
        Tun::offload(self)
    }

    fn read_packet(&self, buf: &mut [u8]) -> io::Result<(Option<VnetHdr>, usize)> {
        if self.has_vnet_hdr() {
            let (hdr, n) = self.recv_vnet(buf)?;
            Ok((Some(hdr), n))
        } else {
            Ok((None, self.recv(buf)?))
        }
    }

    fn write_packet(&self, hdr: Option<&VnetHdr>, packet: &[u8]) -> io::Result<()> {
        match hdr {
            Some(hdr) => self.send_vnet(hdr, packet),
            None => self.send(packet),
        }
        .map(drop)
    }
}

/// Reads from a TUN device and hands out wire-size IP packets.
pub(crate) struct TunSource {
    buf: Vec<u8>,
    /// What the last [`Self::recv`] read: the virtio-net header (None on a plain device)
    /// and the packet's length in `buf`.
    read: Option<(Option<VnetHdr>, usize)>,
}

impl TunSource {
    pub(crate) fn new() -> Self {
        TunSource {
            buf: vec![0u8; MAX_PACKET],
            read: None,
        }
    }

    /// Reads one packet (a GSO packet on an offloading device); [`Self::packet`] shows it
    /// and [`Self::split`] hands out its wire-size packets. `WouldBlock` when nothing is
    /// queued.
    pub(crate) fn recv(&mut self, tun: &impl TunIo) -> io::Result<()> {
        self.read = None;
        self.read = Some(tun.read_packet(&mut self.buf)?);
        Ok(())
    }

    /// The packet [`Self::recv`] read, as it came (every segment of a GSO packet has its
    /// addresses), or empty.
    pub(crate) fn packet(&self) -> &[u8] {
        self.read.map_or(&[], |(_, n)| &self.buf[..n])
    }

    /// Calls `f` with each wire-size IP packet of what [`Self::recv`] read, splitting a GSO
    /// packet in place; returns how many. Once only: the packet is used up.
    pub(crate) fn split(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        match self.read.take() {
            None => 0,
            Some((None, n)) => {
                f(&self.buf[..n]);
                1
            }
            Some((Some(hdr), n)) => match segment(&hdr, &mut self.buf[..n], &mut f) {
                Ok(count) => count,
                Err(e) => {
                    debug!(error = %e, ?hdr, "packet from the TUN device dropped");
                    0
                }
            },
        }
    }
}

/// Writes IP packets into a TUN device, joining TCP segments on an offloading device, and
/// UDP datagrams too where its kernel takes USO packets.
pub(crate) struct TunSink {
    coalescer: Coalescer,
}

impl TunSink {
    /// A sink for `tun` (joining what its offloads allow).
    pub(crate) fn new(tun: &impl TunIo) -> Self {
        TunSink {
            coalescer: if tun.offload() == Offload::TsoUso {
                Coalescer::with_udp()
            } else {
                Coalescer::new()
            },
        }
    }

    /// Takes one packet; it is written now or at the latest by [`Self::flush`].
    pub(crate) fn push(&mut self, tun: &impl TunIo, packet: &[u8]) {
        if tun.has_vnet_hdr() {
            self.coalescer
                .push(packet, &mut |h: &VnetHdr, p: &[u8]| write(tun, Some(h), p));
        } else {
            write(tun, None, packet);
        }
    }

    /// Writes everything held.
    pub(crate) fn flush(&mut self, tun: &impl TunIo) {
        self.coalescer
            .flush(&mut |h: &VnetHdr, p: &[u8]| write(tun, Some(h), p));
    }
}

/// A write the device refused (full queue, device going away) loses the packet, as a full
/// interface queue would.
fn write(tun: &impl TunIo, hdr: Option<&VnetHdr>, packet: &[u8]) {
    if let Err(e) = tun.write_packet(hdr, packet) {
        debug!(error = %e, len = packet.len(), "write into the TUN device failed");
    }
}
