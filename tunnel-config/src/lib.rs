//! The client's configuration, as an admin or a script hands it over: Ivanti Tunnel
//! key-value pairs, the connections store, `.pulsepreconfig` files, `pulsesecureclient://`
//! launch URLs, `pulselauncher` arguments and exit codes, and the event log's catalogue and
//! file.
//!
//! Everything here is pure parsing and validation, except the store's file (read, atomic
//! replace, corrupt file kept aside) and the rotating log file. Nothing connects, prompts or
//! touches the kernel: `tunneld` and the `tunnel` CLI do, with what this crate gives them.
//!
//! ```text
//!  admin / script input                      this crate                        daemon
//!  ────────────────────                      ──────────                        ──────
//!  MTU=1300 ...           ──Kvps::parse────▶ Kvps (validated whole) ──┐
//!  FILE.pulsepreconfig    ──Preconfig::parse▶ Preconfig ──Store::import┤
//!  pulsesecureclient://.. ──LaunchRequest::parse──▶ apply_launch ──────┼─▶ Store ──▶ connections.json
//!  tunnel add/edit/delete ───────────────────────────────────────────┘     │       (atomic, 0600)
//!                                                   url_order / record_success ◀─▶ connect loop
//!  tunnel launcher -url.. ──parse_launcher_args──▶ LauncherAction ───────────────▶ run ──▶ ExitCode
//!                                     EventKind ──▶ Event ──EventLog──▶ RotatingLog (10 MB + .1)
//! ```
//!
//! Rules that hold throughout:
//! - No input makes this crate panic; every refusal is a typed error whose message names
//!   the key, value or position and says what is allowed. Untrusted values in messages are
//!   quoted, escaped and cut to a bounded length; passwords and cookies never appear.
//! - A batch (KVPs, an import, an edit) is validated whole before anything changes.
//! - The seed documents (Ivanti Tunnel and Secure Access Client guides) decide behaviour;
//!   where they are silent or contradict themselves, the module docs say what was chosen.

mod events;
mod kvp;
mod launch;
mod launcher;
mod pin;
mod preconfig;
mod rotate;
mod store;
mod text;
mod url;

pub use events::{
    CATALOGUE, Event, EventError, EventKind, EventLog, EventSpec, Level, UnknownLevel,
    render_event, utc_timestamp,
};
pub use kvp::{Key, KvpError, KvpErrors, Kvps, NoEffect, PortList, ValueProblem};
pub use launch::{
    AUTO_LAUNCH_SUFFIX, EncodingProblem, LAUNCH_SCHEME, LaunchError, LaunchOutcome, LaunchRequest,
    apply_launch,
};
pub use launcher::{
    ConnectArgs, ExitCode, LAUNCHER_TIMEOUT_MAX, LAUNCHER_TIMEOUT_MIN, LAUNCHER_USAGE,
    LauncherAction, LauncherAuth, LauncherError, LauncherLogLevel, Secret, SessionSelection,
    UrlArgs, parse_launcher_args,
};
pub use pin::{PIN_PREFIX, Pin, PinError};
pub use preconfig::{
    ImportRefusal, ImportReport, MAX_PRECONFIG_BYTES, MachineOutcome, Preconfig, PreconfigError,
    PreconfigWarning, SkipReason, SkippedSection, SyntaxProblem, WarningKind,
};
pub use rotate::{DEFAULT_MAX_LOG_BYTES, LogError, RotatingLog};
pub mod location;
pub use location::{Facts, LocationRule, LocationRules, RuleMatch};
pub use store::{
    Connection, ConnectionError, ConnectionPolicy, CorruptReason, CorruptStore, DnsSettings,
    FileFormat, Identity, MachineSettings, STORE_FORMAT, Scope, Source, Start, Store, StoreError,
    UrlMode, url_order,
};
pub use text::Position;
pub use url::{HTTPS_PORT, Host, HostProblem, ServerUrl, UrlError};
