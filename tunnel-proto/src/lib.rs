//! placeholder
mod config;
mod eap;
mod esp;
mod ift;
mod rng;
mod wire;
pub use config::*;
pub use eap::*;
pub use esp::*;
pub use ift::*;
pub use rng::*;
