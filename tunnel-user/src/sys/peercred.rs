//! Who is at the other end of a Unix socket: `SO_PEERCRED` gives the peer's uid and primary
//! gid (tokio has it), `SO_PEERGROUPS` (Linux 4.13) its supplementary groups, as they were
//! when it connected.

use std::{io, os::fd::AsRawFd};

/// `SO_PEERGROUPS` (asm-generic).
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups of the peer of `socket`.
pub fn peer_groups(socket: &impl AsRawFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` has room for `len` bytes, and `len` is valid for writes.
        let r = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the kernel wrote the size it needs into `len`.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65_536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_sees_this_process_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut seen = peer_groups(&a).unwrap();
        mine.sort();
        seen.sort();
        assert_eq!(seen, mine);
    }
}
