//! What crosses a wire, for tests that must show a packet did not: a capture of the frames
//! arriving on an interface (an `AF_PACKET` socket inside its namespace), and UDP datagrams
//! sent by an unprivileged user (the attacker the kernel policy must hold against).

use std::{
    fs, io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
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
                    // SAFETY: an all-zero sockaddr_ll is valid; recvfrom fills at most its size.
                    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    // SAFETY: the buffers outlive the call and their sizes are passed.
                    let n = unsafe {
                        libc::recvfrom(
                            sock.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&mut from as *mut libc::sockaddr_ll).cast(),
                            &mut from_len,
                        )
                    };
                    if n < 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                        continue;
                    }
                    if let Ok(mut f) = frames.lock() {
                        f.push(buf[..n as usize].to_vec());
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
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2).
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            all.into(),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size passed.
    let bound = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the size passed.
    let set = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
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

/// Sends `datagrams` from namespace `ns` as user and group [`NOBODY`] with no supplementary
/// groups and no capabilities, each from a socket of its own. Returns the user id the sending
/// process had (checked by running `id -u` in it afterwards).
pub fn send_unprivileged(ns: &Netns, datagrams: &[Datagram]) -> io::Result<String> {
    use std::os::unix::process::CommandExt;
    // Everything the child needs is built here: between fork and exec only system calls run.
    let prepared: Vec<(socket2::SockAddr, Vec<u8>, Option<Vec<u8>>)> = datagrams
        .iter()
        .map(|d| (d.to.into(), vec![b'x'; d.len], d.ipv6_rthdr.clone()))
        .collect();
    let netns = fs::File::open(&ns.path)?;
    let ns_fd = netns.as_raw_fd();
    let mut cmd = Command::new("id");
    cmd.arg("-u");
    // SAFETY: only async-signal-safe system calls between fork and exec (setns, setgroups,
    // setgid, setuid, socket, setsockopt, sendto, close), on memory allocated before the
    // fork; `netns` stays open in the parent until the child has been waited for.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_long| {
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setns(ns_fd, libc::CLONE_NEWNET).into())?;
            check(libc::syscall(
                libc::SYS_setgroups,
                0,
                std::ptr::null::<libc::gid_t>(),
            ))?;
            check(libc::setgid(NOBODY).into())?;
            check(libc::setuid(NOBODY).into())?;
            for (to, payload, rthdr) in &prepared {
                let fd = libc::socket(i32::from(to.family()), libc::SOCK_DGRAM, 0);
                check(fd.into())?;
                if let Some(h) = rthdr {
                    check(
                        libc::setsockopt(
                            fd,
                            libc::IPPROTO_IPV6,
                            libc::IPV6_RTHDR,
                            h.as_ptr().cast(),
                            h.len() as libc::socklen_t,
                        )
                        .into(),
                    )?;
                }
                let sent = libc::sendto(
                    fd,
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    to.as_ptr().cast(),
                    to.len(),
                );
                libc::close(fd);
                check(sent as libc::c_long)?;
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
