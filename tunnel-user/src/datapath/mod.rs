//! The eBPF data path: loading the kernel programs, attaching them with RAII, and swapping
//! policies in atomically.
//!
//! ```text
//!            Policy ──validate──▶ compile ──▶ CompiledPolicy ──swap──▶ maps (slot 0 | slot 1)
//!                                                                         ▲
//!  app socket ─▶ routing ─▶ uplink TC egress ──TUNNEL(conn)──▶ TUN ─▶ tunneld (encrypt)
//!                                   │ BYPASS ─▶ wire          DROP ─▶ ✗
//!  tunneld (decrypt) ─▶ TUN ─▶ TC ingress (reverse NAT) ─▶ app socket
//!  wire ─▶ uplink guard (lock-down, anti-spoofing): XDP or TC ingress ─▶ stack
//! ```
//!
//! The guard's hook is chosen per uplink ([`GuardHook`]): XDP where the driver runs it on its
//! own receive buffers, TC ingress on veth and drivers without native XDP, where an XDP
//! program would copy every arriving packet and take GSO away from the peer.
//!
//! [`Datapath`] owns the loaded object and the maps; [`UplinkAttachment`] and
//! [`TunAttachment`] own the links they created and detach exactly those when dropped, in
//! reverse order of creation. [`reference`] is a plain Rust classifier with the kernel's
//! semantics, used to test it. [`KernelLog`] turns on the programs' record of every verdict,
//! which [`KernelLogReader`] forwards to tracing.

mod barrier;
mod compile;
pub mod frames;
mod klog;
mod maps;
mod pins;
mod policy;
pub mod reference;

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use tracing::warn;
use tunnel_common::programs;

use crate::sys::bpf_link::LinkHook;

pub use compile::{CompiledPolicy, RouteEntry, addr16, compile};
pub use klog::{KernelLog, KernelLogReader};
pub use maps::{CounterTable, UplinkCounterTable, UplinkRow};
pub use pins::PinError;
pub use policy::{AppRule, ConnId, ConnPolicy, MTU_RANGE, Policy, PolicyError, PortList};

use barrier::RcuBarrier;
use maps::Maps;
use pins::{Pins, Which};

/// Errors of the data path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatapathError {
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<EbpfError>),
    #[error("the eBPF object has no program '{name}'")]
    MissingProgram { name: &'static str },
    #[error("the eBPF object has no map '{name}'")]
    MissingMap { name: &'static str },
    #[error("program '{name}': {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map '{name}': {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("interface '{ifname}': {source}")]
    Interface { ifname: String, source: io::Error },
    #[error("interface '{ifname}' has link type {link_type}, which tunnel cannot classify")]
    UnsupportedLink { ifname: String, link_type: u32 },
    #[error("attaching '{program}' to '{ifname}' failed: {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        source: ProgramError,
    },
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("waiting for running BPF programs failed: {source}")]
    Barrier { source: io::Error },
    #[error("the kernel log: {0}")]
    KernelLog(#[source] Box<aya_log::Error>),
    #[error("keeping the uplinks' programs beyond tunneld: {0}")]
    Pins(#[from] PinError),
}

/// The loaded kernel programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    barrier: RcuBarrier,
    /// What the active slot holds.
    applied: Option<CompiledPolicy>,
    /// The kernel log's ring, until taken.
    log: Option<KernelLogReader>,
    /// Where the uplinks' links are pinned; None: they go with this process.
    pins: Option<Pins>,
}

/// ARPHRD_* link types we attach to.
const ARPHRD_ETHER: u32 = 1;
const ARPHRD_NONE: u32 = 65534;

/// The ethtool ioctl, which nix does not name.
const SIOCETHTOOL: libc::c_ulong = 0x8946;

// The interface ioctls take a `struct ifreq` that the kernel reads and writes, under request
// numbers that predate the `_IOWR` encoding: hence the `_bad` form.
mod ioctl {
    nix::ioctl_readwrite_bad!(get_hw_addr, libc::SIOCGIFHWADDR, libc::ifreq);
    nix::ioctl_readwrite_bad!(ethtool, super::SIOCETHTOOL, libc::ifreq);
}

/// A datagram socket to ask interface ioctls on.
fn ioctl_socket() -> nix::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// The link type (ARPHRD_*) of an interface in this thread's network namespace. Asked with
/// SIOCGIFHWADDR on a socket, because sysfs shows the namespace it was mounted in, not ours.
fn link_type(ifname: &str) -> Result<u32, DatapathError> {
    let err = |source| DatapathError::Interface {
        ifname: ifname.to_string(),
        source,
    };
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        )));
    }
    let sock = ioctl_socket().map_err(|e| err(e.into()))?;
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes the hardware address of `req`.
    unsafe { ioctl::get_hw_addr(sock.as_raw_fd(), &mut req) }.map_err(|e| err(e.into()))?;
    // SAFETY: SIOCGIFHWADDR filled the `ifru_hwaddr` member of the union.
    Ok(u32::from(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family }))
}

/// The interface index of `ifname`.
pub fn ifindex(ifname: &str) -> Result<u32, DatapathError> {
    let err = |source| DatapathError::Interface {
        ifname: ifname.to_string(),
        source,
    };
    if ifname.contains('\0') {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL in name",
        )));
    }
    nix::net::if_::if_nametoindex(ifname).map_err(|e| err(e.into()))
}

impl Datapath {
    /// Loads the embedded eBPF object and every program in it (the verifier runs here), with
    /// the kernel log off.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(KernelLog::Off)
    }

    /// Loads the programs with the kernel log on or off; its records wait for
    /// [`Datapath::take_kernel_log`].
    pub fn load_with(log: KernelLog) -> Result<Self, DatapathError> {
        let mut ebpf =
            load_without_kernel_btf(log).map_err(|e| DatapathError::Load(Box::new(e)))?;
        for name in [
            programs::UPLINK_EGRESS_ETH,
            programs::UPLINK_EGRESS_IP,
            programs::UPLINK_INGRESS_ETH,
            programs::UPLINK_INGRESS_IP,
            programs::TUN_EGRESS,
            programs::TUN_INGRESS,
            programs::NOOP_TC,
        ] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        for name in [programs::UPLINK_XDP, programs::NOOP_XDP] {
            xdp(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let maps = Maps::take(&mut ebpf)?;
        let barrier = RcuBarrier::new().map_err(|source| DatapathError::Barrier { source })?;
        let log =
            KernelLogReader::take(&mut ebpf).map_err(|e| DatapathError::KernelLog(Box::new(e)))?;
        Ok(Datapath {
            ebpf,
            maps,
            barrier,
            applied: None,
            log: Some(log),
            pins: None,
        })
    }

    /// From now on pins the uplinks' links under `root` (in a directory of this network
    /// namespace's), and takes over the ones a previous process pinned there as their
    /// uplinks are attached ([`pins`]). Call it before the first attach, after the first
    /// policy is applied: a link taken over runs the new programs with the maps as they are.
    pub fn keep_uplinks_in(&mut self, root: &Path) -> Result<(), DatapathError> {
        self.pins = Some(Pins::open(root)?);
        Ok(())
    }

    /// This namespace's pin directory, when pins are kept.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(Pins::dir)
    }

    /// Removes the pins of uplinks not in `attached`: links of devices that are gone, or no
    /// longer uplinks. Their programs go with the last handle.
    pub fn drop_pins_except(&self, attached: &std::collections::BTreeSet<u32>) {
        let Some(pins) = &self.pins else { return };
        for ifindex in pins.pinned().difference(attached) {
            for which in [Which::Egress, Which::Guard] {
                if let Err(e) = pins.remove(*ifindex, which) {
                    warn!(ifindex, error = %e, "removing a stale pin");
                }
            }
        }
    }

    /// Removes every pin, and the directory: the uplinks' programs then go with this
    /// process. For a stop with lock-down off.
    pub fn drop_all_pins(&self) {
        self.drop_pins_except(&Default::default());
        if let Some(pins) = &self.pins
            && let Err(e) = pins.remove_dir()
        {
            warn!(pins = %pins.dir().display(), error = %e, "removing the pin directory");
        }
    }

    /// The kernel log's reader, the first time (it stays empty while the log is off).
    pub fn take_kernel_log(&mut self) -> Option<KernelLogReader> {
        self.log.take()
    }

    /// A loaded classifier program, for tests and benchmarks (`BPF_PROG_TEST_RUN`).
    pub fn classifier(
        &mut self,
        name: &'static str,
    ) -> Result<&mut SchedClassifier, DatapathError> {
        classifier(&mut self.ebpf, name)
    }

    /// A loaded XDP program, for tests and benchmarks.
    pub fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp, DatapathError> {
        xdp(&mut self.ebpf, name)
    }

    /// Validates `policy` and swaps it in atomically: every packet is classified either by the
    /// previous policy or by this one. On error the previous policy stays in force.
    pub fn apply(&mut self, policy: &Policy) -> Result<(), DatapathError> {
        policy.validate()?;
        let next = compile(policy);
        self.maps
            .swap(&self.barrier, self.applied.as_ref(), &next)?;
        self.applied = Some(next);
        Ok(())
    }

    /// The policy in force, compiled.
    pub fn applied(&self) -> Option<&CompiledPolicy> {
        self.applied.as_ref()
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<CounterTable, DatapathError> {
        self.maps.counters()
    }

    /// Each attached uplink's counters, summed over CPUs, by ifindex.
    pub fn uplink_counters(&self) -> Result<Vec<(u32, UplinkRow)>, DatapathError> {
        self.maps.uplink_counters()
    }

    /// Detaches an uplink's programs (their pins removed) and stops counting for it.
    pub fn detach_uplink(&mut self, attachment: UplinkAttachment) -> Result<(), DatapathError> {
        let ifindex = attachment.ifindex;
        if let Some(pins) = &self.pins {
            for which in [Which::Guard, Which::Egress] {
                if let Err(e) = pins.remove(ifindex, which) {
                    warn!(ifindex, error = %e, "removing a pin: the program stays attached");
                }
            }
        }
        drop(attachment);
        self.maps.close_uplink_row(ifindex)
    }

    /// Opens the captive portal exception for the sockets of cgroup `cgroup_id` until the
    /// monotonic clock reads `deadline_ns` (the kernel checks it), or closes it (None).
    pub fn set_portal_exception(
        &mut self,
        exception: Option<(u64, u64)>,
    ) -> Result<(), DatapathError> {
        let (cgroup_id, deadline_ns) = exception.unwrap_or((0, 0));
        self.maps.set_portal(tunnel_common::PortalException {
            cgroup_id,
            deadline_ns,
        })
    }

    /// Entries in the NAT flow table.
    pub fn flow_count(&self) -> usize {
        self.maps.flow_count()
    }

    /// Fragmented datagrams in flight: first fragments whose verdict waits for the rest.
    pub fn frag_count(&self) -> usize {
        self.maps.frag_count()
    }

    /// Attaches the classifier (TC egress) and the guard to an uplink, the guard on the hook
    /// [`GuardHook::for_uplink`] chooses.
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<UplinkAttachment, DatapathError> {
        self.attach_uplink_with(ifname, GuardHook::for_uplink(ifname))
    }

    /// Attaches the classifier and the guard on the given hook. XDP is only for Ethernet
    /// uplinks; a raw-IP uplink gets TC ingress whatever is asked.
    pub fn attach_uplink_with(
        &mut self,
        ifname: &str,
        hook: GuardHook,
    ) -> Result<UplinkAttachment, DatapathError> {
        let (egress, ingress, hook) = match link_type(ifname)? {
            ARPHRD_ETHER => (
                programs::UPLINK_EGRESS_ETH,
                programs::UPLINK_INGRESS_ETH,
                hook,
            ),
            ARPHRD_NONE => (
                programs::UPLINK_EGRESS_IP,
                programs::UPLINK_INGRESS_IP,
                GuardHook::TcIngress,
            ),
            link_type => {
                return Err(DatapathError::UnsupportedLink {
                    ifname: ifname.into(),
                    link_type,
                });
            }
        };
        let ifindex = ifindex(ifname)?;
        // The row exists before the first packet the programs see, so every one is counted.
        self.maps.open_uplink_row(ifindex)?;
        let guard = match hook {
            GuardHook::Xdp => Hooked::Xdp(programs::UPLINK_XDP),
            GuardHook::TcIngress => Hooked::Tc(ingress, TcAttachType::Ingress),
        };
        let attached = self
            .hold(
                Hooked::Tc(egress, TcAttachType::Egress),
                ifname,
                ifindex,
                Which::Egress,
            )
            .and_then(|tc| Ok((tc, self.hold(guard, ifname, ifindex, Which::Guard)?)));
        let (tc, guard) = match attached {
            Ok(links) => links,
            Err(e) => {
                // The error that stopped the attach is the one worth reporting.
                let _ = self.maps.close_uplink_row(ifindex);
                return Err(e);
            }
        };
        // Field order is drop order: the guard (attached last) goes first.
        Ok(UplinkAttachment {
            ifname: ifname.into(),
            ifindex,
            hook,
            _guard: guard,
            _tc: tc,
        })
    }

    /// Puts `program` on `which` of the uplink: into the link pinned there when it is a live
    /// one of that hook (the old program replaced atomically), else in a new link, pinned when
    /// pins are kept. A pin that cannot be made leaves the link attached, unpinned, and says so.
    fn hold(
        &mut self,
        program: Hooked,
        ifname: &str,
        ifindex: u32,
        which: Which,
    ) -> Result<Held, DatapathError> {
        let Some(pins) = &self.pins else {
            return program.attach(&mut self.ebpf, ifname);
        };
        if let Some(path) = pins.live(ifindex, which, program.link_hook()) {
            match program.take_over(&mut self.ebpf, ifname, &path) {
                Ok(held) => return Ok(held),
                Err(e) => {
                    warn!(uplink = ifname, error = %e, "taking over the pinned link failed; attaching anew")
                }
            }
        }
        let held = program.attach(&mut self.ebpf, ifname)?;
        // Whatever was pinned there goes only now: the new program runs first.
        let path = pins.path(ifindex, which);
        if let Err(e) = pins.remove(ifindex, which) {
            warn!(uplink = ifname, error = %e, "removing a stale pin");
        }
        match held.pin(&path) {
            Ok(held) => Ok(held),
            Err(e) => {
                warn!(uplink = ifname, pin = %path.display(), error = %e, "pinning failed: this uplink's programs go with tunneld");
                program.attach(&mut self.ebpf, ifname)
            }
        }
    }

    /// Attaches the reverse NAT (TC ingress) and the egress guard to a connection's TUN device.
    pub fn attach_tun(&mut self, ifname: &str) -> Result<TunAttachment, DatapathError> {
        let ingress = attach_tc(
            &mut self.ebpf,
            programs::TUN_INGRESS,
            ifname,
            TcAttachType::Ingress,
        )?;
        let egress = attach_tc(
            &mut self.ebpf,
            programs::TUN_EGRESS,
            ifname,
            TcAttachType::Egress,
        )?;
        Ok(TunAttachment {
            ifname: ifname.into(),
            _egress: egress,
            _ingress: ingress,
        })
    }
}

/// Loads the embedded object without the kernel's BTF.
///
/// Our programs make no CO-RE relocations, so the kernel's types are of no use to them (a
/// program that starts to need CO-RE fails at load). But aya 0.14's `EbpfLoader::new()` parses
/// `/sys/kernel/btf/vmlinux` before `.btf(None)` can say so (aya issue #1172, fixed in later
/// releases): about 15 MiB of types made and thrown away, most of tunneld's peak memory.
/// So the load runs on a thread of its own that first moves into a mount namespace of its own,
/// where an empty tmpfs covers `/sys/kernel/btf`; the thread ends with the load and no other
/// thread sees that namespace. Where that is not allowed (no `CAP_SYS_ADMIN`) the load is the
/// same, only costlier.
fn load_without_kernel_btf(log: KernelLog) -> Result<Ebpf, EbpfError> {
    let load = move || {
        if let Err(error) = hide_kernel_btf() {
            tracing::debug!(%error, "loading with the kernel's BTF in sight");
        }
        let mut loader = EbpfLoader::new();
        log.configure(&mut loader);
        loader.btf(None).load(crate::EBPF_OBJECT)
    };
    std::thread::scope(|scope| scope.spawn(load).join())
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Gives the calling thread a mount namespace in which `/sys/kernel/btf` is empty.
fn hide_kernel_btf() -> nix::Result<()> {
    use nix::{
        mount::{MsFlags, mount},
        sched::{CloneFlags, unshare},
    };
    // A thread may take a mount namespace of its own (the kernel gives it its own root and
    // working directory with it); the others keep theirs.
    unshare(CloneFlags::CLONE_NEWNS)?;
    // Private before anything is mounted: a mount in a namespace whose mounts are shared
    // with the host's would appear in the host's too.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some("none"),
        "/sys/kernel/btf",
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k"),
    )
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?;
    prog.try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?;
    prog.try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

fn attach_tc(
    ebpf: &mut Ebpf,
    program: &'static str,
    ifname: &str,
    at: TcAttachType,
) -> Result<SchedClassifierLink, DatapathError> {
    let prog = classifier(ebpf, program)?;
    let err = |source| DatapathError::Attach {
        program,
        ifname: ifname.into(),
        source,
    };
    let id = prog.attach(ifname, at).map_err(err)?;
    prog.take_link(id).map_err(err)
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    program: &'static str,
    ifname: &str,
) -> Result<XdpLink, DatapathError> {
    let prog = xdp(ebpf, program)?;
    let err = |source| DatapathError::Attach {
        program,
        ifname: ifname.into(),
        source,
    };
    let id = prog.attach(ifname, XdpMode::Default).map_err(err)?;
    prog.take_link(id).map_err(err)
}

/// Where an uplink's guard (lock-down, anti-spoofing) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardHook {
    /// XDP: drops before the kernel builds an skb. Cheap where the driver runs XDP on its own
    /// receive buffers.
    Xdp,
    /// TC ingress: after the skb exists, before the stack. No copy on any device, and a GSO
    /// packet is judged once.
    TcIngress,
}

impl GuardHook {
    /// XDP for an uplink whose driver runs it natively on its own buffers; TC ingress for
    /// veth (an XDP program there copies every packet that arrives from the peer, and the
    /// peer segments its GSO packets in software), for virtual devices without a driver
    /// name, and when the driver cannot be asked.
    pub fn for_uplink(ifname: &str) -> GuardHook {
        match driver_name(ifname).as_deref() {
            Some("veth") | Some("bridge") | Some("tun") | None => GuardHook::TcIngress,
            Some(_) => GuardHook::Xdp,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GuardHook::Xdp => "xdp",
            GuardHook::TcIngress => "tc-ingress",
        }
    }
}

/// The driver behind an interface (`ETHTOOL_GDRVINFO`), in this network namespace.
fn driver_name(ifname: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // struct ethtool_drvinfo: cmd, then driver[32], version[32], fw_version[32],
    // bus_info[32], erom_version[32], reserved2[12] and five u32 counts.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 5 * 4],
    }
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return None;
    }
    let sock = ioctl_socket().ok()?;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 32 * 4 + 12 + 5 * 4],
    };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO fills `info`, which outlives the call.
    unsafe { ioctl::ethtool(sock.as_raw_fd(), &mut req) }.ok()?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    let name = String::from_utf8_lossy(&info.driver[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// An uplink program and the hook it goes on.
#[derive(Clone, Copy)]
enum Hooked {
    Tc(&'static str, TcAttachType),
    Xdp(&'static str),
}

impl Hooked {
    fn link_hook(self) -> LinkHook {
        match self {
            Hooked::Tc(_, TcAttachType::Egress) => LinkHook::TcxEgress,
            Hooked::Tc(_, _) => LinkHook::TcxIngress,
            Hooked::Xdp(_) => LinkHook::Xdp,
        }
    }

    fn attach(self, ebpf: &mut Ebpf, ifname: &str) -> Result<Held, DatapathError> {
        Ok(match self {
            Hooked::Tc(program, at) => Held::Tc(attach_tc(ebpf, program, ifname, at)?),
            Hooked::Xdp(program) => Held::Xdp(attach_xdp(ebpf, program, ifname)?),
        })
    }

    /// Replaces the program in the link pinned at `path` with this one (`bpf_link_update`).
    fn take_over(self, ebpf: &mut Ebpf, ifname: &str, path: &Path) -> Result<Held, DatapathError> {
        let name = match self {
            Hooked::Tc(p, _) | Hooked::Xdp(p) => p,
        };
        let err = |source| DatapathError::Attach {
            program: name,
            ifname: ifname.into(),
            source,
        };
        let link = FdLink::from(
            PinnedLink::from_pin(path)
                .map_err(|e| err(ProgramError::IOError(io::Error::other(e))))?,
        );
        let link_err =
            |e: aya::programs::links::LinkError| err(ProgramError::IOError(io::Error::other(e)));
        Ok(match self {
            Hooked::Tc(program, _) => {
                let prog = classifier(ebpf, program)?;
                let id = prog
                    .attach_to_link(SchedClassifierLink::try_from(link).map_err(link_err)?)
                    .map_err(err)?;
                Held::Tc(prog.take_link(id).map_err(err)?)
            }
            Hooked::Xdp(program) => {
                let prog = xdp(ebpf, program)?;
                let id = prog
                    .attach_to_link(XdpLink::try_from(link).map_err(link_err)?)
                    .map_err(err)?;
                Held::Xdp(prog.take_link(id).map_err(err)?)
            }
        })
    }
}

/// A link held for its `Drop`, which detaches its program unless the link is pinned.
enum Held {
    Tc(SchedClassifierLink),
    Xdp(XdpLink),
    /// Pinned by this process.
    Pinned(FdLink),
}

impl Held {
    /// Pins the link at `path`. On error the link is gone (aya consumes it).
    fn pin(self, path: &PathBuf) -> Result<Held, String> {
        let fd = match self {
            Held::Tc(l) => FdLink::try_from(l).map_err(|e| e.to_string())?,
            Held::Xdp(l) => FdLink::try_from(l).map_err(|e| e.to_string())?,
            Held::Pinned(l) => l,
        };
        let pinned = fd.pin(path).map_err(|e| e.to_string())?;
        Ok(Held::Pinned(FdLink::from(pinned)))
    }
}

/// The programs attached to one uplink; dropping it detaches them
/// ([`Datapath::detach_uplink`] also stops counting for it).
pub struct UplinkAttachment {
    ifname: String,
    ifindex: u32,
    hook: GuardHook,
    _guard: Held,
    _tc: Held,
}

impl UplinkAttachment {
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Where this uplink's guard runs.
    pub fn guard_hook(&self) -> GuardHook {
        self.hook
    }
}

/// The programs attached to one TUN device; dropping it detaches them.
pub struct TunAttachment {
    ifname: String,
    _egress: SchedClassifierLink,
    _ingress: SchedClassifierLink,
}

impl TunAttachment {
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    fn covers_btf(mountinfo: &str) -> bool {
        mountinfo
            .lines()
            .any(|line| line.split(' ').nth(4) == Some("/sys/kernel/btf"))
    }

    /// The loading thread's namespace hides the kernel's BTF from it and from nobody else:
    /// neither the process's other threads nor the host see the tmpfs.
    #[test]
    fn the_kernel_btf_is_hidden_from_the_loading_thread_only() {
        if !nix::unistd::geteuid().is_root() || !Path::new(VMLINUX).exists() {
            eprintln!("SKIP: needs root and a kernel with BTF");
            return;
        }
        let (hidden, own_mounts) = std::thread::spawn(|| {
            super::hide_kernel_btf().expect("a private mount namespace");
            (
                !Path::new(VMLINUX).exists(),
                fs::read_to_string("/proc/thread-self/mountinfo").unwrap(),
            )
        })
        .join()
        .unwrap();
        assert!(hidden, "the loading thread still sees {VMLINUX}");
        assert!(covers_btf(&own_mounts), "the tmpfs is not in its mountinfo");
        assert!(
            Path::new(VMLINUX).exists(),
            "the test's thread lost {VMLINUX}"
        );
        for others in ["/proc/thread-self/mountinfo", "/proc/1/mountinfo"] {
            let mounts = fs::read_to_string(others).unwrap();
            assert!(!covers_btf(&mounts), "the tmpfs leaked into {others}");
        }
    }
}
