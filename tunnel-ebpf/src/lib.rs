//! The library target exists so tunnel-user can name this crate as a build dependency (cargo
//! then rebuilds the eBPF object when it changes); the programs are in the `tunnel` binary.
#![no_std]
