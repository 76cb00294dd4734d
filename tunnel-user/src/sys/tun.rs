//! TUN devices: create one (in the calling thread's network namespace) and move raw IP packets
//! through its file descriptor. The device disappears when the [`Tun`] is dropped.
//!
//! [`Tun::create_offloaded`] opens the device with a virtio-net header before every packet and
//! the offloads of `docs/fastpath.md` (checksum, TSO4/6, USO): the kernel then hands out and
//! takes GSO packets of up to 64 KB; `tunnel_packet` splits and joins them.

use tunnel_packet::{VnetHdr, vnet};

use std::{
    ffi::CStr,
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::{
        stat::Mode,
        uio::{readv, writev},
    },
    unistd::{read, write},
};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_int = 0x01;
const TUN_F_TSO4: libc::c_int = 0x02;
const TUN_F_TSO6: libc::c_int = 0x04;
const TUN_F_TSO_ECN: libc::c_int = 0x08;
const TUN_F_USO4: libc::c_int = 0x20;
const TUN_F_USO6: libc::c_int = 0x40;

// The TUN ioctls, which nix does not name. The kernel declares TUNSETIFF as writing an int
// but reads and writes back a `struct ifreq`, and TUNSETOFFLOAD takes its flags by value:
// hence the `_bad` forms, which take the request number as it is.
mod ioctl {
    use super::{IfReq, TUNSETIFF, TUNSETOFFLOAD};
    nix::ioctl_readwrite_bad!(tun_set_iff, TUNSETIFF, IfReq);
    nix::ioctl_write_int_bad!(tun_set_offload, TUNSETOFFLOAD);
}
use ioctl::{tun_set_iff, tun_set_offload};

/// Offloads a device was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// No virtio-net header: one packet per read and write.
    None,
    /// Checksum offload and TCP segmentation (IPv4, IPv6, ECN).
    Tso,
    /// Also UDP segmentation (kernel 6.2 and later).
    TsoUso,
}

/// `struct ifreq` as TUNSETIFF uses it: a name and flags.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN device (layer 3, no packet-information header).
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    offload: Offload,
    vnet: bool,
}

impl Tun {
    /// Creates (or attaches to) the TUN device `name` in this thread's network namespace.
    pub fn create(name: &str) -> io::Result<Tun> {
        Tun::open(name, false)
    }

    /// Creates the device with a virtio-net header and the offloads the kernel accepts (USO,
    /// then TSO and checksum only); if it takes none, the header is still there and every
    /// packet arrives whole.
    pub fn create_offloaded(name: &str) -> io::Result<Tun> {
        let mut tun = Tun::open(name, true)?;
        let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        for (flags, level) in [
            (tso | TUN_F_USO4 | TUN_F_USO6, Offload::TsoUso),
            (tso, Offload::Tso),
        ] {
            // SAFETY: TUNSETOFFLOAD takes the flags by value.
            if unsafe { tun_set_offload(tun.fd.as_raw_fd(), flags) }.is_ok() {
                tun.offload = level;
                return Ok(tun);
            }
        }
        Ok(tun)
    }

    /// Whether packets carry a virtio-net header ([`Tun::recv_vnet`], [`Tun::send_vnet`]).
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet
    }

    /// The offloads the kernel accepted.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    fn open(name: &str, vnet: bool) -> io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TUN name '{name}' must be 1-{} bytes", libc::IFNAMSIZ - 1),
            ));
        }
        let fd = nix::fcntl::open(
            c"/dev/net/tun",
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI | if vnet { IFF_VNET_HDR } else { 0 },
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as.
        unsafe { tun_set_iff(fd.as_raw_fd(), &mut req) }?;
        // SAFETY: the kernel NUL-terminates the name it writes back.
        let actual = unsafe { CStr::from_ptr(req.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(Tun {
            fd,
            name: actual,
            offload: Offload::None,
            vnet,
        })
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet; blocks until one arrives.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(read(&self.fd, buf)?)
    }

    /// Writes one packet.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        Ok(write(&self.fd, packet)?)
    }

    /// Reads one packet with its virtio-net header (devices from [`Tun::create_offloaded`]):
    /// the header, and the packet's length at `buf[..n]`.
    pub fn recv_vnet(&self, buf: &mut [u8]) -> io::Result<(VnetHdr, usize)> {
        let mut hdr = [0u8; vnet::LEN];
        let n = readv(
            &self.fd,
            &mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)],
        )?;
        let hdr = VnetHdr::parse(&hdr[..n.min(vnet::LEN)])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((hdr, n - vnet::LEN))
    }

    /// Writes one packet behind a virtio-net header.
    pub fn send_vnet(&self, hdr: &VnetHdr, packet: &[u8]) -> io::Result<usize> {
        let hdr = hdr.encode();
        let n = writev(&self.fd, &[IoSlice::new(&hdr), IoSlice::new(packet)])?;
        Ok(n.saturating_sub(vnet::LEN))
    }

    /// Writes one plain IP packet whatever the device's mode (a zero header if it has one).
    pub fn send_packet(&self, packet: &[u8]) -> io::Result<usize> {
        if self.vnet {
            self.send_vnet(&VnetHdr::default(), packet)
        } else {
            self.send(packet)
        }
    }

    /// Non-blocking reads and writes (readers then wait with `poll` only when idle).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        let flags = OFlag::from_bits_retain(fcntl(&self.fd, FcntlArg::F_GETFL)?);
        fcntl(&self.fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(())
    }

    /// A second handle on the same device, e.g. for a reader and a writer thread.
    pub fn try_clone(&self) -> io::Result<Tun> {
        Ok(Tun {
            fd: self.fd.try_clone()?,
            name: self.name.clone(),
            offload: self.offload,
            vnet: self.vnet,
        })
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
