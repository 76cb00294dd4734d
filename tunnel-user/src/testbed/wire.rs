//! What crosses a wire, for tests that must show a packet did not: a capture of the frames
//! arriving on an interface (an `AF_PACKET` socket inside its namespace), and UDP datagrams
//! sent by an unprivileged user (the attacker the kernel policy must hold against).

use std::{
    fs, io,
    net::SocketAddr,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use nix::{
    sched::{CloneFlags, setns},
    sys::{
        socket::{
            AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrLike,
            SockaddrStorage, bind, recvfrom, sendto, setsockopt, socket, sockopt,
        },
        time::TimeVal,
    },
    unistd::{Gid, Uid, setgid, setgroups, setuid},
};

use super::Netns;

/// Every frame arriving on one interface, from [`Capture::start`] until it is dropped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Frames kept; more are counted as lost by a panic in [`Capture::frames`].
const CAPTURE_LIMIT: usize = 100_000;

impl Capture {
    /// Captures what arrives on `ifname` in `ns` (not what it sends).
    pub fn start(ns: &Netns, ifname: &str) -> io::Result<Capture> {
        let ifindex = ns
            .enter(|| crate::datapath::ifindex(ifname))?
            .map_err(io::Error::other)?;
        let sock = ns.enter(|| packet_socket(ifindex))??;
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, frames) = (stop.clone(), frames.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    // An error is the receive timeout, there to notice a stop.
                    let Ok((n, Some(from))) = recvfrom::<LinkAddr>(sock.as_raw_fd(), &mut buf)
                    else {
                        continue;
                    };
                    if from.pkttype() == libc::PACKET_OUTGOING {
                        continue;
                    }
                    if let Ok(mut f) = frames.lock() {
                        f.push(buf[..n].to_vec());
                    }
                }
            })
        };
        Ok(Capture {
            stop,
            thread: Some(thread),
            frames,
        })
    }

    /// The frames captured so far.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        assert!(frames.len() < CAPTURE_LIMIT, "the capture overflowed");
        frames.clone()
    }

    /// How many captured frames satisfy `matches`.
    pub fn count(&self, matches: impl Fn(&[u8]) -> bool) -> usize {
        self.frames().iter().filter(|f| matches(f)).count()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An `AF_PACKET` socket bound to interface `ifindex` of this thread's namespace, receiving
/// every protocol, with a short receive timeout so its reader can notice a stop.
fn packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )?;
    // nix reads link addresses but builds none, so the address is made as the kernel's
    // struct and taken from there.
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut raw: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    raw.sll_family = libc::AF_PACKET as u16;
    raw.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    raw.sll_ifindex = ifindex as i32;
    // SAFETY: `raw` is a whole, initialised sockaddr_ll of the length given.
    let addr = unsafe {
        LinkAddr::from_raw(
            (&raw as *const libc::sockaddr_ll).cast(),
            Some(size_of::<libc::sockaddr_ll>() as libc::socklen_t),
        )
    }
    .ok_or_else(|| io::Error::other("sockaddr_ll not taken as a link address"))?;
    bind(sock.as_raw_fd(), &addr)?;
    setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000))?;
    Ok(sock)
}

/// A UDP datagram for [`send_unprivileged`].
#[derive(Clone, Debug)]
pub struct Datagram {
    pub to: SocketAddr,
    /// Payload bytes (larger than the path MTU: the kernel fragments it).
    pub len: usize,
    /// IPv6: a routing header set on the socket (`IPV6_RTHDR`, which needs no privilege).
    pub ipv6_rthdr: Option<Vec<u8>>,
}

/// The user and group `nobody`.
pub const NOBODY: u32 = 65_534;

/// A segment routing header (routing type 4) whose `n` segments all name `dst`: the packet
/// goes to `dst` with `8 + 16 * n` bytes of extension header in front of its transport
/// header. Linux lets any user set one on a socket.
pub fn segment_routing_header(dst: std::net::Ipv6Addr, n: u8) -> Vec<u8> {
    let last = n.saturating_sub(1);
    // Next header (filled in by the kernel), length in 8-byte units after the first 8,
    // routing type 4, segments left, last entry, flags, tag.
    let mut h = vec![0, 2 * n, 4, last, last, 0, 0, 0];
    for _ in 0..n {
        h.extend_from_slice(&dst.octets());
    }
    h
}

/// A [`Datagram`] made ready before the fork of [`send_unprivileged`].
struct Prepared {
    family: AddressFamily,
    to: SockaddrStorage,
    payload: Vec<u8>,
    rthdr: Option<Vec<u8>>,
}

/// Sends `datagrams` from namespace `ns` as user and group [`NOBODY`] with no supplementary
/// groups and no capabilities, each from a socket of its own. Returns the user id the sending
/// process had (checked by running `id -u` in it afterwards).
pub fn send_unprivileged(ns: &Netns, datagrams: &[Datagram]) -> io::Result<String> {
    use std::os::unix::process::CommandExt;
    // Everything the child needs is built here: between fork and exec only system calls run.
    let prepared: Vec<Prepared> = datagrams
        .iter()
        .map(|d| Prepared {
            family: if d.to.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            },
            to: d.to.into(),
            payload: vec![b'x'; d.len],
            rthdr: d.ipv6_rthdr.clone(),
        })
        .collect();
    let netns = fs::File::open(&ns.path)?;
    let ns_fd = netns.as_raw_fd();
    let mut cmd = Command::new("id");
    cmd.arg("-u");
    // SAFETY: only async-signal-safe system calls between fork and exec (setns, setgroups,
    // setgid, setuid, socket, setsockopt, sendto, close), on memory allocated before the
    // fork; `netns` stays open in the parent until the child has been waited for, so the
    // child's copy is open while it borrows it.
    unsafe {
        cmd.pre_exec(move || {
            setns(BorrowedFd::borrow_raw(ns_fd), CloneFlags::CLONE_NEWNET)?;
            setgroups(&[])?;
            setgid(Gid::from_raw(NOBODY))?;
            setuid(Uid::from_raw(NOBODY))?;
            for d in &prepared {
                let sock = socket(d.family, SockType::Datagram, SockFlag::empty(), None)?;
                if let Some(h) = &d.rthdr {
                    // Raw setsockopt: nix has no IPV6_RTHDR option.
                    let set = libc::setsockopt(
                        sock.as_raw_fd(),
                        libc::IPPROTO_IPV6,
                        libc::IPV6_RTHDR,
                        h.as_ptr().cast(),
                        h.len() as libc::socklen_t,
                    );
                    if set < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                sendto(sock.as_raw_fd(), &d.payload, &d.to, MsgFlags::empty())?;
            }
            Ok(())
        });
    }
    let out = cmd.output()?;
    drop(netns);
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "the unprivileged sender failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
