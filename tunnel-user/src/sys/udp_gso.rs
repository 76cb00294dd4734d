//! Batched UDP for ESP (see `docs/fastpath.md`): large socket buffers, sends of many
//! same-size datagrams in one `sendmsg` (UDP GSO, `UDP_SEGMENT`), and receives of many
//! datagrams in one `recvmsg` (UDP GRO). Falls back to one datagram per call where the kernel
//! refuses.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::atomic::{AtomicBool, Ordering},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{setsockopt, sockopt},
};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Socket buffer size asked for (root may exceed `net.core.rmem_max`).
pub const SOCKET_BUFFER: usize = 8 << 20;
/// Most bytes of datagrams in one GSO send (the kernel's limit is one IP datagram's worth).
pub const MAX_GSO_BYTES: usize = 65_000;
/// Most datagrams in one GSO send (`UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Large buffers (forced as root, else as large as allowed) and UDP GRO. Returns whether
/// GRO is on; failures of the buffer options are not fatal.
pub fn tune(sock: &UdpSocket) -> bool {
    if setsockopt(sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok()
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa: socket2::SockAddr = addr.into();
    // SAFETY: SockAddr holds a sockaddr_storage-sized, initialised address.
    let storage = unsafe { std::ptr::read(sa.as_ptr().cast::<libc::sockaddr_storage>()) };
    (storage, sa.len())
}

/// Sends `datagrams` (consecutive datagrams of `size` bytes each, the last possibly shorter)
/// to `to` (or the connected peer), in as few calls as UDP GSO allows. `gso` says whether the
/// kernel takes GSO sends; it is cleared the first time it refuses one.
pub fn send(
    sock: &UdpSocket,
    datagrams: &[u8],
    size: usize,
    to: Option<SocketAddr>,
    gso: &AtomicBool,
) -> io::Result<()> {
    if size == 0 || datagrams.is_empty() {
        return Ok(());
    }
    let per_call = if gso.load(Ordering::Relaxed) {
        (MAX_GSO_BYTES / size).clamp(1, MAX_GSO_SEGMENTS) * size
    } else {
        size
    };
    for chunk in datagrams.chunks(per_call) {
        if chunk.len() <= size {
            send_one(sock, chunk, to, None)?;
            continue;
        }
        match send_one(sock, chunk, to, Some(size as u16)) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                ) =>
            {
                gso.store(false, Ordering::Relaxed);
                for d in chunk.chunks(size) {
                    send_one(sock, d, to, None)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn send_one(
    sock: &UdpSocket,
    data: &[u8],
    to: Option<SocketAddr>,
    segment: Option<u16>,
) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let mut addr = to.map(sockaddr);
    if let Some((storage, len)) = &mut addr {
        msg.msg_name = (storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = *len;
    }
    // Room for one cmsg carrying a u16, aligned as cmsghdr needs.
    let mut control = [0u64; 4];
    if let Some(seg) = segment {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
        // SAFETY: msg_control points at `control`, which is large enough for one cmsg
        // of CMSG_SPACE(2) bytes; CMSG_FIRSTHDR and CMSG_DATA stay inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
        }
    }
    loop {
        // Raw sendmsg: nix's allocates a control buffer per call, and this one runs per GSO
        // train on the packet path.
        // SAFETY: msg points at live buffers set up above.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // A full send buffer on a non-blocking socket: wait until it drains.
            Some(libc::EAGAIN) => {
                wait_writable(sock.as_fd());
                continue;
            }
            _ => return Err(e),
        }
    }
}

/// The IP address in a `sockaddr_storage`.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                a.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Waits up to 100 ms for room in the send buffer; the send that follows says if there is.
fn wait_writable(fd: BorrowedFd<'_>) {
    let _ = poll(
        &mut [PollFd::new(fd, PollFlags::POLLOUT)],
        PollTimeout::from(100u8),
    );
}

/// One message of a [`RecvBatch`]: `len` bytes of datagrams, each `size` bytes (the last
/// possibly shorter), from `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub size: usize,
    pub from: SocketAddr,
}

/// Receives many messages per system call (`recvmmsg`), each of which may hold several
/// datagrams joined by UDP GRO.
pub struct RecvBatch {
    slot: usize,
    buf: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    /// One aligned control area per message, room for the UDP_GRO cmsg.
    controls: Vec<[u64; 4]>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    /// Messages the last receive filled in: their headers are reset before the next one.
    filled: usize,
    /// The messages of the last receive: which slot of `buf` each is in, and what it holds.
    got: Vec<(usize, Received)>,
}

// SAFETY: the raw pointers inside `iovs` and `msgs` point into the batch's own heap buffers,
// which are made once in `new` and never reallocated, and are never shared.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Room for `messages` messages of up to `slot` bytes each.
    pub fn new(messages: usize, slot: usize) -> RecvBatch {
        let messages = messages.max(1);
        let mut batch = RecvBatch {
            slot,
            buf: vec![0u8; messages * slot],
            // SAFETY: sockaddr_storage is plain data; all zeros is valid.
            names: vec![unsafe { std::mem::zeroed() }; messages],
            controls: vec![[0u64; 4]; messages],
            iovs: Vec::with_capacity(messages),
            // SAFETY: mmsghdr is plain data; all zeros is a valid empty message.
            msgs: vec![unsafe { std::mem::zeroed() }; messages],
            filled: 0,
            got: Vec::with_capacity(messages),
        };
        // The headers point into the buffers once and for all: a receive only resets the
        // fields the kernel wrote into the messages it filled (an idle tunnel's receive
        // touches a few cache lines, not every header of the batch).
        for chunk in batch.buf.chunks_mut(slot) {
            batch.iovs.push(libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            });
        }
        for i in 0..messages {
            let h = &mut batch.msgs[i].msg_hdr;
            h.msg_iov = &mut batch.iovs[i];
            h.msg_iovlen = 1;
            h.msg_name = (&mut batch.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_control = batch.controls[i].as_mut_ptr().cast();
        }
        batch.filled = messages;
        batch.reset_headers();
        batch
    }

    /// Gives the messages the last receive filled their full name and control room again.
    fn reset_headers(&mut self) {
        for m in &mut self.msgs[..self.filled] {
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_controllen = size_of::<[u64; 4]>();
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        self.filled = 0;
    }

    /// Receives what is queued, up to the batch's size; returns how many messages.
    /// `WouldBlock` on a non-blocking socket with nothing queued.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.msgs.len();
        self.reset_headers();
        let got = loop {
            // Raw recvmmsg: nix's builds every header of the batch again per call, where
            // this one only resets those the last receive filled.
            // SAFETY: every msghdr points at live buffers of this batch set up above.
            let r = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    self.msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    // Waits (on a blocking socket) for the first message only, then takes
                    // what is queued: without it a blocking receive waits for `n` messages.
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                self.filled = r as usize;
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        };
        self.got.clear();
        for i in 0..got {
            let len = self.msgs[i].msg_len as usize;
            let h = &self.msgs[i].msg_hdr;
            let mut size = len;
            // SAFETY: walking the control messages the kernel wrote into this message's area.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let s = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        if s > 0 {
                            size = s as usize;
                        }
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
            // A datagram from a non-IP address cannot be ESP from a peer: skipped, and the
            // slot index keeps the others paired with their bytes.
            let Some(from) = socket_addr(&self.names[i]) else {
                continue;
            };
            self.got.push((
                i,
                Received {
                    len,
                    size: size.max(1),
                    from,
                },
            ));
        }
        Ok(self.got.len())
    }

    /// Whether the last receive filled every slot, so more may be queued. A receive that
    /// filled fewer found the socket empty (`recvmmsg` stops at the first empty read).
    pub fn was_full(&self) -> bool {
        self.filled == self.msgs.len()
    }

    /// Message `i` of the last receive (as [`Self::messages`] numbers them).
    pub fn message(&self, i: usize) -> &[u8] {
        self.got.get(i).map_or(&[], |&(slot, r)| {
            &self.buf[slot * self.slot..slot * self.slot + r.len]
        })
    }

    /// The messages of the last receive with their bytes, for in-place work.
    pub fn messages(&mut self) -> impl Iterator<Item = (Received, &mut [u8])> {
        let slot = self.slot;
        let mut chunks = self.buf.chunks_mut(slot).enumerate();
        self.got.iter().filter_map(move |&(i, r)| {
            chunks
                .find(|(j, _)| *j == i)
                .map(|(_, chunk)| (r, &mut chunk[..r.len]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A GSO send arrives as separate datagrams of the right sizes; a GRO receive hands
    /// several back at once with their size; nothing is lost or changed.
    #[test]
    fn gso_sends_and_gro_receives_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = tune(&rx);
        tune(&tx);
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        let size = 1200;
        let mut data = Vec::new();
        for i in 0..100u32 {
            let len = if i == 99 { 500 } else { size };
            data.extend((0..len).map(|j| (i as usize + j) as u8));
        }
        let gso = AtomicBool::new(true);
        send(&tx, &data, size, Some(to), &gso).unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        let mut batch = RecvBatch::new(4, 65_536);
        while got.len() < data.len() {
            batch.recv(&rx).unwrap();
            for (r, bytes) in batch.messages() {
                assert_eq!(r.from, tx.local_addr().unwrap());
                for d in bytes.chunks(r.size) {
                    sizes.push(d.len());
                }
                got.extend_from_slice(bytes);
            }
        }
        assert_eq!(got, data);
        assert_eq!(sizes.len(), 100, "datagram boundaries are kept");
        assert!(sizes[..99].iter().all(|&s| s == size) && sizes[99] == 500);
        eprintln!("gso={} gro={gro}", gso.load(Ordering::Relaxed));
    }

    /// One receive takes the messages of several peers (without GRO, which would join
    /// one peer's); each keeps its own bytes and source, in arrival order.
    #[test]
    fn a_batch_keeps_each_message_with_its_source() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        let peers: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut sent = Vec::new();
        for round in 0..4u8 {
            for (i, p) in peers.iter().enumerate() {
                let d = vec![round * 16 + i as u8; 100 + i * 10 + round as usize];
                p.send_to(&d, to).unwrap();
                sent.push((p.local_addr().unwrap(), d));
            }
        }
        let mut batch = RecvBatch::new(5, 2048);
        let mut got = Vec::new();
        let mut receives = 0;
        while got.len() < sent.len() {
            let n = batch.recv(&rx).unwrap();
            assert!((1..=5).contains(&n));
            receives += 1;
            for (r, bytes) in batch.messages() {
                assert_eq!(r.size, r.len, "no GRO: one datagram per message");
                got.push((r.from, bytes.to_vec()));
            }
        }
        assert_eq!(got, sent);
        assert!(receives < sent.len(), "several messages per receive");
    }

    /// A receive that fills fewer slots than the batch has found the socket empty; one that
    /// fills them all may have left more queued. A header the kernel shortened (a lone
    /// datagram comes with no control message) has its full room again for the next
    /// receive, which then reports the GRO size of a joined message.
    #[test]
    fn a_reused_batch_says_whether_it_was_full_and_keeps_room_for_gro() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = tune(&rx);
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        let mut batch = RecvBatch::new(4, 65_536);
        tx.send_to(b"lone", to).unwrap();
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        assert!(!batch.was_full());
        for i in 0..6u8 {
            tx.send_to(&[i; 10], to).unwrap();
        }
        assert_eq!(batch.recv(&rx).unwrap(), 4);
        assert!(batch.was_full(), "four slots, four messages: more may wait");
        assert_eq!(batch.recv(&rx).unwrap(), 2);
        assert!(!batch.was_full());
        assert_eq!(batch.message(1), &[5u8; 10][..]);
        let gso = AtomicBool::new(true);
        let data = vec![7u8; 10 * 1000];
        send(&tx, &data, 1000, Some(to), &gso).unwrap();
        let mut got = 0;
        while got < data.len() {
            batch.recv(&rx).unwrap();
            for (r, bytes) in batch.messages() {
                if gro && gso.load(Ordering::Relaxed) {
                    assert_eq!(r.size, 1000, "the GRO size, read from a whole control area");
                }
                got += bytes.len();
            }
        }
        assert_eq!(got, data.len());
    }

    #[test]
    fn a_single_datagram_and_an_empty_send() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let gso = AtomicBool::new(true);
        send(&tx, &[], 100, None, &gso).unwrap();
        send(&tx, b"one", 100, None, &gso).unwrap();
        let mut batch = RecvBatch::new(2, 100);
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        let (r, bytes) = batch.messages().next().unwrap();
        assert_eq!((&*bytes, r.size), (&b"one"[..], 3));
    }
}
