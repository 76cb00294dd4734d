//! What aya leaves out about pinned BPF links and bpffs: which device a pinned link is
//! attached to (aya's `LinkInfo` has no device), whether a directory is on a bpffs, and the
//! identity of the calling thread's network namespace. Raw `bpf(2)` and `getsockopt(2)`.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `SO_NETNS_COOKIE` (asm-generic; Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Where a link attaches its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkHook {
    TcxIngress,
    TcxEgress,
    Xdp,
    /// Any other link type or tcx attach type (the kernel's numbers).
    Other {
        link_type: u32,
        attach_type: u32,
    },
}

/// A pinned link as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTarget {
    pub hook: LinkHook,
    /// The device it is attached to; 0 once the device is gone (the link is then defunct:
    /// it holds its program but runs it nowhere).
    pub ifindex: u32,
}

/// `union bpf_attr` for `BPF_OBJ_GET` (the fields this module sets; the rest zero).
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: [u32; 27],
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
    _pad: [u32; 28],
}

/// `struct bpf_link_info`: type, id, prog_id, then (8-aligned) the union whose tcx and xdp
/// members start with the ifindex (tcx: then the attach type).
#[repr(C, align(8))]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    attach_type: u32,
    _rest: [u64; 6],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of the command's layout, zero beyond the
    // fields set, and lives for the call; its size is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The device and hook of the link pinned at `path`.
pub fn pinned_link_target(path: &Path) -> io::Result<LinkTarget> {
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut get = ObjGet {
        pathname: name.as_ptr() as u64,
        ..ObjGet::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfo::default();
    let mut get_info = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
        ..GetInfo::default()
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut get_info)?;
    let hook = match (info.link_type, info.attach_type) {
        (BPF_LINK_TYPE_TCX, BPF_TCX_INGRESS) => LinkHook::TcxIngress,
        (BPF_LINK_TYPE_TCX, BPF_TCX_EGRESS) => LinkHook::TcxEgress,
        (BPF_LINK_TYPE_XDP, _) => LinkHook::Xdp,
        (link_type, attach_type) => LinkHook::Other {
            link_type,
            attach_type,
        },
    };
    Ok(LinkTarget {
        hook,
        ifindex: info.ifindex,
    })
}

/// Whether `path` is on a BPF file system, where pins live.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let stat = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    Ok(stat.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

/// The calling thread's network namespace's cookie: unique among the namespaces of this
/// boot, never reused (unlike its inode number).
pub fn netns_cookie() -> io::Result<u64> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of their sizes during the call.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernels() {
        assert_eq!(std::mem::size_of::<ObjGet>(), 128);
        assert_eq!(std::mem::size_of::<GetInfo>(), 128);
        assert_eq!(std::mem::offset_of!(LinkInfo, ifindex), 16);
        assert_eq!(std::mem::offset_of!(LinkInfo, attach_type), 20);
    }

    #[test]
    fn the_namespace_has_a_cookie_and_tmp_is_no_bpffs() {
        assert_ne!(netns_cookie().unwrap(), 0);
        assert!(!is_bpffs(Path::new("/tmp")).unwrap());
    }
}
