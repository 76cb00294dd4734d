//! TUN devices: create one (in the calling thread's network namespace) and move raw IP packets
//! through its file descriptor. The device disappears when the [`Tun`] is dropped.
//!
//! [`Tun::create_offloaded`] opens the device with a virtio-net header before every packet and
//! the offloads of `docs/fastpath.md` (checksum, TSO4/6, USO): the kernel then hands out and
//! takes GSO packets of up to 64 KB; `tunnel_packet` splits and joins them.

use tunnel_packet::{VnetHdr, vnet};

use std::{
    ffi::CStr,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
const TUN_F_TSO_ECN: libc::c_ulong = 0x08;
const TUN_F_USO4: libc::c_ulong = 0x20;
const TUN_F_USO6: libc::c_ulong = 0x40;

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
            if unsafe { libc::ioctl(tun.fd.as_raw_fd(), TUNSETOFFLOAD, flags) } == 0 {
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
        // SAFETY: plain open(2) of a fixed path.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI | if vnet { IFF_VNET_HDR } else { 0 },
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
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
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one packet.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: `packet` is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Reads one packet with its virtio-net header (devices from [`Tun::create_offloaded`]):
    /// the header, and the packet's length at `buf[..n]`.
    pub fn recv_vnet(&self, buf: &mut [u8]) -> io::Result<(VnetHdr, usize)> {
        let mut hdr = [0u8; vnet::LEN];
        let mut iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of the given lengths.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_mut_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let hdr = VnetHdr::parse(&hdr[..n.min(vnet::LEN)])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((hdr, n - vnet::LEN))
    }

    /// Writes one packet behind a virtio-net header.
    pub fn send_vnet(&self, hdr: &VnetHdr, packet: &[u8]) -> io::Result<usize> {
        let hdr = hdr.encode();
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of the given lengths; writev only reads.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok((n as usize).saturating_sub(vnet::LEN))
        }
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
        let fd = self.fd.as_raw_fd();
        // SAFETY: fcntl on our own descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
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
