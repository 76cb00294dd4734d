//! tunnel's userspace: the eBPF data path today; the client daemon, CLI and gateway build on it.

pub mod client;
pub mod datapath;
pub(crate) mod fastpath;
pub mod gateway;
pub mod sys;
pub mod testbed;

pub use datapath::{Datapath, DatapathError, Policy};

/// The eBPF object built by `build.rs`, embedded.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tunnel-ebpf"));
