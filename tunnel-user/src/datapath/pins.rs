//! The uplinks' links pinned in bpffs, so that the policy in force, lock-down above all,
//! outlives tunneld: a program attached through a pinned link stays attached, with the maps
//! it reads, after every handle of the process that attached it is closed.
//!
//! ```text
//!  <root>/netns-<cookie>/<ifindex>-egress   the classifier's tcx link
//!  <root>/netns-<cookie>/<ifindex>-guard    the guard's link (XDP or tcx ingress)
//!  (bpffs refuses names with a dot)
//!
//!  attach, nothing pinned      ─▶ attach, then pin
//!  attach, a live pin there    ─▶ the new program replaces the old one in the pinned link
//!                                 (bpf_link_update: no moment without a program)
//!  attach, a dead or other pin ─▶ attach, then the pin replaced (the old link runs nowhere,
//!                                 or is another hook's: both run until the pin goes)
//!  detach (link gone, renamed, no longer an uplink) ─▶ pins removed, program goes with us
//!  tunneld stops, lock-down off ─▶ every pin removed: the programs go with the process
//!  tunneld stops with lock-down on, or dies ─▶ pins stay: the last policy keeps running
//! ```
//!
//! The directory is per network namespace, by the namespace's cookie (unique for the boot,
//! never reused): tunnelds in different namespaces never touch each other's pins. A stop that
//! removes the pins removes the directory too. A namespace that is gone leaves a directory
//! whose links are all defunct (their devices went with it); the next start anywhere removes
//! such directories.

use std::{
    collections::BTreeSet,
    fs, io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use crate::sys::bpf_link::{LinkHook, LinkTarget, is_bpffs, netns_cookie, pinned_link_target};

/// Which of an uplink's links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Egress,
    Guard,
}

impl Which {
    fn suffix(self) -> &'static str {
        match self {
            Which::Egress => "egress",
            Which::Guard => "guard",
        }
    }
}

/// Why the pins cannot be kept.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0} is not on a BPF file system (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    #[error("pinning needs bpf links for TC (tcx, Linux 6.6); this kernel is {0}")]
    OldKernel(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// This namespace's pin directory.
pub(crate) struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// The pin directory of the calling thread's network namespace under `root` (created),
    /// after removing the directories of namespaces that are gone.
    pub(crate) fn open(root: &Path) -> Result<Pins, PinError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| PinError::Io { what, path, source }
        };
        let version = aya::util::KernelVersion::current()
            .map_err(|e| PinError::OldKernel(format!("unknown ({e})")))?;
        if version < aya::util::KernelVersion::new(6, 6, 0) {
            return Err(PinError::OldKernel(format!("{version:?}")));
        }
        // The nearest directory there is must be on bpffs: the rest is made below it.
        let parent = root
            .ancestors()
            .skip(1)
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        if !is_bpffs(parent).map_err(io("checking", parent))? {
            return Err(PinError::NotBpffs(parent.to_path_buf()));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io("creating", root))?;
        let cookie = netns_cookie().map_err(io("the namespace's cookie for", root))?;
        let dir = root.join(format!("netns-{cookie}"));
        sweep_dead_namespaces(root, &dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io("creating", &dir))?;
        Ok(Pins { dir })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `which` of the uplink `ifindex` is pinned.
    pub(crate) fn path(&self, ifindex: u32, which: Which) -> PathBuf {
        self.dir.join(format!("{ifindex}-{}", which.suffix()))
    }

    /// The link pinned for `which` of `ifindex`, if there is one and it runs on that device
    /// at `hook`. None: no pin, or one the caller is to replace (defunct, another hook).
    pub(crate) fn live(&self, ifindex: u32, which: Which, hook: LinkHook) -> Option<PathBuf> {
        let path = self.path(ifindex, which);
        match pinned_link_target(&path) {
            Ok(LinkTarget {
                hook: h,
                ifindex: i,
            }) if h == hook && i == ifindex => Some(path),
            Ok(_) | Err(_) => None,
        }
    }

    /// Removes a pin (the program goes when no handle is left); a pin not there is fine.
    pub(crate) fn remove(&self, ifindex: u32, which: Which) -> io::Result<()> {
        match fs::remove_file(self.path(ifindex, which)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes this namespace's directory, once its pins are removed.
    pub(crate) fn remove_dir(&self) -> io::Result<()> {
        fs::remove_dir(&self.dir)
    }

    /// The uplinks that have a pin here.
    pub(crate) fn pinned(&self) -> BTreeSet<u32> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.split_once('-')?.0.parse().ok()
            })
            .collect()
    }
}

/// Removes the sibling directories of `keep` under `root` that hold links and only defunct
/// ones (a namespace that is gone). A directory with a live link, an empty one, or one that
/// cannot be read, stays.
fn sweep_dead_namespaces(root: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        if dir == keep
            || !dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("netns-"))
        {
            continue;
        }
        let Ok(pins) = fs::read_dir(&dir) else {
            continue;
        };
        let pins: Vec<PathBuf> = pins.flatten().map(|e| e.path()).collect();
        // An empty directory may be one a tunneld just made and is about to pin into.
        let all_dead = !pins.is_empty()
            && pins
                .iter()
                .all(|p| pinned_link_target(p).is_ok_and(|t| t.ifindex == 0));
        if all_dead {
            for p in &pins {
                let _ = fs::remove_file(p);
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}
