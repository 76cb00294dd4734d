//! An RCU barrier for BPF programs: after [`RcuBarrier::wait`] returns, no TC or XDP program
//! that started before the call is still running.
//!
//! The kernel offers no direct "synchronize" command, but it documents one as a side effect:
//! updating an element of a map-in-map (`BPF_MAP_TYPE_ARRAY_OF_MAPS`) calls `synchronize_rcu()`
//! before returning, "so that userspace, when we return to it, knows that all non-sleepable
//! programs that could be running use the new map value" (`maybe_wait_bpf_programs()` in
//! `kernel/bpf/syscall.c`). TC and XDP programs are non-sleepable and run inside RCU read-side
//! sections, so one such update is our barrier. The two maps live only in this process.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`; the kernel accepts a shorter
/// attribute as long as everything it does not see would be zero.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

/// `union bpf_attr` for `BPF_MAP_*_ELEM`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// bpf(2), raw: neither nix nor libc wraps it, and aya keeps its own wrapper private.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly sized, initialised `bpf_attr` prefix for `cmd`, and the
    // kernel only reads `size_of::<T>()` bytes from it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn create_map(attr: &mut MapCreateAttr) -> io::Result<OwnedFd> {
    let fd = bpf(BPF_MAP_CREATE, attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// See the module docs.
#[derive(Debug)]
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    /// Creates the two tiny maps the barrier updates.
    pub fn new() -> io::Result<Self> {
        let mut inner_attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..Default::default()
        };
        let inner = create_map(&mut inner_attr)?;
        let mut outer_attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd() as u32,
            ..Default::default()
        };
        let outer = create_map(&mut outer_attr)?;
        Ok(RcuBarrier { outer, inner })
    }

    /// Returns once every BPF program already running has finished.
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = MapElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}
