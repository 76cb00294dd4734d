//! The packet path both ends share (see `docs/fastpath.md`).

pub mod packet_io;
pub mod pump;
