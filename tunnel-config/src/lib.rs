//! tunnel-config (work in progress)
mod events;
mod kvp;
mod launch;
mod preconfig;
mod rotate;
mod store;
mod text;
mod url;

pub use events::*;
pub use kvp::*;
pub use launch::*;
pub use preconfig::*;
pub use rotate::*;
pub use store::*;
pub use text::Position;
pub use url::*;
