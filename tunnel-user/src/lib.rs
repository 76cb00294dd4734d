//! tunnel's userspace: the eBPF data path, the client daemon and its CLI, the gateway, the
//! packet path they share, and (feature `testbed`) the namespace test beds.

pub mod cli_docs;
pub mod client;
pub mod datapath;
pub(crate) mod fastpath;
pub mod gateway;
pub mod sys;
#[cfg(any(test, feature = "testbed"))]
pub mod testbed;

pub use datapath::{Datapath, DatapathError, Policy};

/// The eBPF object built by `build.rs`, embedded.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tunnel-ebpf"));
