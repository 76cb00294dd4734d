//! The event catalogue: the client's major operational events with the IDs, levels and
//! message texts of the Secure Access Client's event log (seed 004, "Ivanti Secure Access
//! Client Log Files"), the log levels of the `LogLevel` KVP, and the one-line log format.
//!
//! This module owns the texts and their formatting; it does no I/O (the rotating file is
//! [`crate::RotatingLog`]) and does not decide when an event happens (the daemon does).

use std::{
    fmt,
    str::FromStr,
    time::{SystemTime, UNIX_EPOCH},
};

/// How much detail a log keeps, from the least to the most verbose, as the `LogLevel` KVP
/// lists them (seed 000, table 2). The derived order is verbosity: `Error < Packet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Level {
    /// Errors the client hit while performing an action.
    Error,
    /// Missing or incorrect information that might cause an error.
    Warning,
    /// Inputs, metadata, parameter values. The seed's default.
    #[default]
    Info,
    /// Actions, operations, values of critical data.
    Debug,
    /// Everything that occurs during a tunnel session.
    Session,
    /// Packet-level information such as lengths (DNS troubleshooting).
    Packet,
}

impl Level {
    /// Every level, least verbose first.
    pub const ALL: [Level; 6] = [
        Level::Error,
        Level::Warning,
        Level::Info,
        Level::Debug,
        Level::Session,
        Level::Packet,
    ];

    /// The level's name as the seed spells it (`error`, `warning`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Session => "session",
            Level::Packet => "packet",
        }
    }

    /// Whether a log kept at `self` records a message at `message`.
    pub fn records(self, message: Level) -> bool {
        message <= self
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Level`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown log level {}: expected one of error, warning, info, debug, session, packet", crate::text::Shown(.text))]
pub struct UnknownLevel {
    pub text: String,
}

impl FromStr for Level {
    type Err = UnknownLevel;

    /// Level names are matched without regard to ASCII case: `Info` from an MDM form means
    /// `info`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownLevel {
                text: s.to_string(),
            })
    }
}

/// One entry of the catalogue: an event ID with the seed's level and message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub id: u16,
    pub level: Level,
    /// The seed's message text, verbatim, with an `<ID>` for each argument.
    pub template: &'static str,
    /// The names of the arguments, in the order their `<ID>`s appear.
    pub args: &'static [&'static str],
    /// The seed's description of the event.
    pub description: &'static str,
}

/// Every event the client logs, ordered by ID. The texts are copied from the seed's table,
/// including its quirks, because admins search logs for these exact strings:
/// 103 has a stray `)` after the first `<ID>`, and 102's `<br>` (a line break inside the
/// table cell) is rendered as a single space so that each event stays on one log line.
/// The seed's level "informational" is [`Level::Info`].
pub const CATALOGUE: &[EventSpec] = &[
    EventSpec {
        id: 1,
        level: Level::Info,
        template: "The Ivanti service version <ID> has successfully started.",
        args: &["version"],
        description: "The Ivanti Secure Access Client service started.",
    },
    EventSpec {
        id: 2,
        level: Level::Info,
        template: "The Ivanti service has stopped.",
        args: &[],
        description: "The Ivanti Secure Access Client service stopped.",
    },
    EventSpec {
        id: 100,
        level: Level::Info,
        template: "User requested connection <ID> to start.",
        args: &["connection"],
        description: "The user initiated a connect request.",
    },
    EventSpec {
        id: 101,
        level: Level::Info,
        template: "User requested connection <ID> to stop.",
        args: &["connection"],
        description: "The user initiated a disconnect request.",
    },
    EventSpec {
        id: 102,
        level: Level::Info,
        template: "Connection <ID> is starting because its policy requirements have been met.<br>Connection Policy: <ID>.",
        args: &["connection", "policy"],
        description: "A connection was started because of a policy evaluation.",
    },
    EventSpec {
        id: 103,
        level: Level::Info,
        template: "Connection <ID>) is stopping because of its policy requirements. Connection Policy: <ID>.",
        args: &["connection", "policy"],
        description: "A connection was stopped because of a policy evaluation.",
    },
    EventSpec {
        id: 104,
        level: Level::Info,
        template: "Connection <ID> is stopping because of transition to context <ID>.",
        args: &["connection", "context"],
        description: "The machine-to-user connection was disconnected to transition to another identity.",
    },
    EventSpec {
        id: 105,
        level: Level::Info,
        template: "Connection <ID> is starting because of transition to context <ID>.",
        args: &["connection", "context"],
        description: "The machine-to-user connection was connected as part of the transition to another identity.",
    },
    EventSpec {
        id: 106,
        level: Level::Info,
        template: "Connection <ID> is disconnected due to computer suspend.",
        args: &["connection"],
        description: "The connection to Ivanti Connect Secure was disconnected because the computer is being suspended.",
    },
    EventSpec {
        id: 107,
        level: Level::Info,
        template: "Connection <ID> is disconnected due to login error.",
        args: &["connection"],
        description: "A credential provider connection was disconnected because of a login error.",
    },
    EventSpec {
        id: 108,
        level: Level::Info,
        template: "Connection <ID> is disconnected because it was modified.",
        args: &["connection"],
        description: "A connection was disconnected because it was modified.",
    },
    EventSpec {
        id: 109,
        level: Level::Info,
        template: "User requested connection <ID> to suspend.",
        args: &["connection"],
        description: "The user initiated a suspend request.",
    },
    EventSpec {
        id: 110,
        level: Level::Info,
        template: "User requested connection <ID> to resume.",
        args: &["connection"],
        description: "The user initiated a resume request.",
    },
    EventSpec {
        id: 300,
        level: Level::Info,
        template: "The connection <ID> was established successfully through web-proxy <ID>.",
        args: &["connection", "proxy"],
        description: "Ivanti Secure Access Client established a connection to Ivanti Connect Secure or Ivanti Policy Secure through a Web proxy.",
    },
    EventSpec {
        id: 301,
        level: Level::Info,
        template: "The connection <ID> was established successfully to address <ID>.",
        args: &["connection", "address"],
        description: "Ivanti Secure Access Client established a direct (nonproxy) connection to Ivanti Connect Secure or Ivanti Policy Secure.",
    },
    EventSpec {
        id: 302,
        level: Level::Info,
        template: "The connection <ID> was disconnected.",
        args: &["connection"],
        description: "The Ivanti Secure Access Client connection was disconnected from the Ivanti server.",
    },
    EventSpec {
        id: 303,
        level: Level::Error,
        template: "The connection <ID> encountered an error: <ID> Peer address: <ID>.",
        args: &["connection", "error", "peer"],
        description: "A connection encountered an error.",
    },
    EventSpec {
        id: 304,
        level: Level::Error,
        template: "The connection <ID> was disconnected due to change in routing table. Interface address changed from <ID> to <ID>.",
        args: &["connection", "from", "to"],
        description: "Ivanti Secure Access Client detected a change in the route to the Ivanti server.",
    },
    EventSpec {
        id: 305,
        level: Level::Info,
        template: "VPN tunnel transport for connection <ID> switched from ESP to SSL mode due to missing ESP heartbeat.",
        args: &["connection"],
        description: "ESP to SSL fallback occurred because of missing ESP heartbeats.",
    },
    EventSpec {
        id: 306,
        level: Level::Info,
        template: "VPN tunnel for connection <ID> is switched to ESP mode.",
        args: &["connection"],
        description: "Tunnel transport switched to ESP mode.",
    },
    EventSpec {
        id: 307,
        level: Level::Error,
        template: "The connection <ID> encountered an error: System error: <ID> Peer address: <ID>.",
        args: &["connection", "error", "peer"],
        description: "The Ivanti Secure Access Client connection failed because of a system error.",
    },
    EventSpec {
        id: 308,
        level: Level::Error,
        template: "The server disconnected connection <ID> Reason <ID>: Peer address: <ID>.",
        args: &["connection", "reason", "peer"],
        description: "The server disconnected a connection.",
    },
];

impl EventSpec {
    /// The catalogue entry for `id`.
    pub fn by_id(id: u16) -> Option<&'static EventSpec> {
        CATALOGUE.iter().find(|s| s.id == id)
    }

    /// Fills the template with `values`, one per `<ID>` in order; values are escaped so that
    /// nothing a peer or a user controls can break the line. Missing values render as empty,
    /// extra values are ignored: callers go through [`EventKind`] or [`EventSpec::render_named`],
    /// which always pass the right number.
    fn fill(&self, values: &[&str]) -> String {
        let template = self.template.replace("<br>", " ");
        let mut out = String::with_capacity(template.len() + 32);
        let mut values = values.iter();
        let mut parts = template.split("<ID>");
        if let Some(first) = parts.next() {
            out.push_str(first);
        }
        for part in parts {
            if let Some(v) = values.next() {
                push_escaped(&mut out, v);
            }
            out.push_str(part);
        }
        out
    }

    /// Renders the event from named arguments; every argument of the template must be
    /// given exactly once, and no other.
    pub fn render_named(&self, args: &[(&str, &str)]) -> Result<Event, EventError> {
        for (name, _) in args {
            if !self.args.contains(name) {
                return Err(EventError::UnknownArgument {
                    id: self.id,
                    name: (*name).to_string(),
                });
            }
        }
        let mut values = Vec::with_capacity(self.args.len());
        for wanted in self.args {
            let mut found = args.iter().filter(|(n, _)| n == wanted);
            match (found.next(), found.next()) {
                (Some((_, v)), None) => values.push(*v),
                (None, _) => {
                    return Err(EventError::MissingArgument {
                        id: self.id,
                        name: wanted,
                    });
                }
                (Some(_), Some(_)) => {
                    return Err(EventError::RepeatedArgument {
                        id: self.id,
                        name: wanted,
                    });
                }
            }
        }
        Ok(Event {
            id: self.id,
            level: self.level,
            message: self.fill(&values),
        })
    }
}

fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
}

/// Why an event could not be rendered from named arguments.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    #[error("there is no event {id} in the catalogue")]
    UnknownId { id: u16 },
    #[error("event {id} has no argument '{name}'")]
    UnknownArgument { id: u16, name: String },
    #[error("event {id} needs the argument '{name}'")]
    MissingArgument { id: u16, name: &'static str },
    #[error("event {id}: argument '{name}' is given more than once")]
    RepeatedArgument { id: u16, name: &'static str },
}

/// Renders catalogue event `id` from named arguments.
pub fn render_event(id: u16, args: &[(&str, &str)]) -> Result<Event, EventError> {
    EventSpec::by_id(id)
        .ok_or(EventError::UnknownId { id })?
        .render_named(args)
}

/// A rendered event: what goes into the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: u16,
    pub level: Level,
    pub message: String,
}

/// The catalogue's events with typed arguments, so that a call site cannot forget one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// 1
    ServiceStarted { version: String },
    /// 2
    ServiceStopped,
    /// 100
    UserStart { connection: String },
    /// 101
    UserStop { connection: String },
    /// 102
    PolicyStart { connection: String, policy: String },
    /// 103
    PolicyStop { connection: String, policy: String },
    /// 104
    ContextStop { connection: String, context: String },
    /// 105
    ContextStart { connection: String, context: String },
    /// 106
    SuspendDisconnect { connection: String },
    /// 107
    LoginErrorDisconnect { connection: String },
    /// 108
    ModifiedDisconnect { connection: String },
    /// 109
    UserSuspend { connection: String },
    /// 110
    UserResume { connection: String },
    /// 300
    EstablishedViaProxy { connection: String, proxy: String },
    /// 301
    Established { connection: String, address: String },
    /// 302
    Disconnected { connection: String },
    /// 303
    ConnectionError {
        connection: String,
        error: String,
        peer: String,
    },
    /// 304
    RouteChanged {
        connection: String,
        from: String,
        to: String,
    },
    /// 305
    EspToTls { connection: String },
    /// 306
    TlsToEsp { connection: String },
    /// 307
    SystemError {
        connection: String,
        error: String,
        peer: String,
    },
    /// 308
    ServerDisconnected {
        connection: String,
        reason: String,
        peer: String,
    },
}

impl EventKind {
    /// The event's ID in the catalogue.
    pub fn id(&self) -> u16 {
        self.parts().0
    }

    fn parts(&self) -> (u16, Vec<&str>) {
        use EventKind::*;
        match self {
            ServiceStarted { version } => (1, vec![version]),
            ServiceStopped => (2, vec![]),
            UserStart { connection } => (100, vec![connection]),
            UserStop { connection } => (101, vec![connection]),
            PolicyStart { connection, policy } => (102, vec![connection, policy]),
            PolicyStop { connection, policy } => (103, vec![connection, policy]),
            ContextStop {
                connection,
                context,
            } => (104, vec![connection, context]),
            ContextStart {
                connection,
                context,
            } => (105, vec![connection, context]),
            SuspendDisconnect { connection } => (106, vec![connection]),
            LoginErrorDisconnect { connection } => (107, vec![connection]),
            ModifiedDisconnect { connection } => (108, vec![connection]),
            UserSuspend { connection } => (109, vec![connection]),
            UserResume { connection } => (110, vec![connection]),
            EstablishedViaProxy { connection, proxy } => (300, vec![connection, proxy]),
            Established {
                connection,
                address,
            } => (301, vec![connection, address]),
            Disconnected { connection } => (302, vec![connection]),
            ConnectionError {
                connection,
                error,
                peer,
            } => (303, vec![connection, error, peer]),
            RouteChanged {
                connection,
                from,
                to,
            } => (304, vec![connection, from, to]),
            EspToTls { connection } => (305, vec![connection]),
            TlsToEsp { connection } => (306, vec![connection]),
            SystemError {
                connection,
                error,
                peer,
            } => (307, vec![connection, error, peer]),
            ServerDisconnected {
                connection,
                reason,
                peer,
            } => (308, vec![connection, reason, peer]),
        }
    }

    /// Renders the event with the seed's level and text.
    pub fn event(&self) -> Event {
        let (id, values) = self.parts();
        match EventSpec::by_id(id) {
            Some(spec) => Event {
                id,
                level: spec.level,
                message: spec.fill(&values),
            },
            // Unreachable while every variant's ID is in the catalogue (a test checks that);
            // an error line beats a panic in the daemon's logging path.
            None => Event {
                id,
                level: Level::Error,
                message: format!("event {id} is missing from the catalogue"),
            },
        }
    }
}

impl From<&EventKind> for Event {
    fn from(kind: &EventKind) -> Self {
        kind.event()
    }
}

/// Formats log lines: `<UTC time> <level> [<id>] <message>`, one line each, for a log kept
/// at `threshold` (the `LogLevel` KVP).
///
/// ```text
/// 2024-05-01T12:00:00.123Z info [301] The connection corp was established successfully to address 192.0.2.1.
/// 2024-05-01T12:00:01.000Z debug probe sent
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventLog {
    pub threshold: Level,
}

impl EventLog {
    pub fn new(threshold: Level) -> Self {
        EventLog { threshold }
    }

    /// The line for a catalogue event, or `None` if the threshold leaves it out.
    pub fn line(&self, at: SystemTime, event: &Event) -> Option<String> {
        self.threshold.records(event.level).then(|| {
            format!(
                "{} {} [{}] {}\n",
                utc_timestamp(at),
                event.level,
                event.id,
                event.message
            )
        })
    }

    /// The line for a message outside the catalogue (debug detail, packet traces).
    pub fn message_line(&self, at: SystemTime, level: Level, message: &str) -> Option<String> {
        self.threshold.records(level).then(|| {
            let mut text = String::with_capacity(message.len());
            push_escaped(&mut text, message);
            format!("{} {} {}\n", utc_timestamp(at), level, text)
        })
    }
}

/// RFC 3339 UTC with milliseconds. Times before 1970 (a broken clock) print as the epoch.
pub fn utc_timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`),
/// in unsigned arithmetic because the input is never before the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The seed's rows (ID, level, message) for the events we log, copied from seed 004.
    const SEED_ROWS: &[(u16, &str, &str)] = &[
        (
            1,
            "informational",
            "The Ivanti service version <ID> has successfully started.",
        ),
        (2, "informational", "The Ivanti service has stopped."),
        (
            100,
            "informational",
            "User requested connection <ID> to start.",
        ),
        (
            101,
            "informational",
            "User requested connection <ID> to stop.",
        ),
        (
            102,
            "informational",
            "Connection <ID> is starting because its policy requirements have been met.<br>Connection Policy: <ID>.",
        ),
        (
            103,
            "informational",
            "Connection <ID>) is stopping because of its policy requirements. Connection Policy: <ID>.",
        ),
        (
            104,
            "informational",
            "Connection <ID> is stopping because of transition to context <ID>.",
        ),
        (
            105,
            "informational",
            "Connection <ID> is starting because of transition to context <ID>.",
        ),
        (
            106,
            "informational",
            "Connection <ID> is disconnected due to computer suspend.",
        ),
        (
            107,
            "informational",
            "Connection <ID> is disconnected due to login error.",
        ),
        (
            108,
            "informational",
            "Connection <ID> is disconnected because it was modified.",
        ),
        (
            109,
            "informational",
            "User requested connection <ID> to suspend.",
        ),
        (
            110,
            "informational",
            "User requested connection <ID> to resume.",
        ),
        (
            300,
            "informational",
            "The connection <ID> was established successfully through web-proxy <ID>.",
        ),
        (
            301,
            "informational",
            "The connection <ID> was established successfully to address <ID>.",
        ),
        (
            302,
            "informational",
            "The connection <ID> was disconnected.",
        ),
        (
            303,
            "error",
            "The connection <ID> encountered an error: <ID> Peer address: <ID>.",
        ),
        (
            304,
            "error",
            "The connection <ID> was disconnected due to change in routing table. Interface address changed from <ID> to <ID>.",
        ),
        (
            305,
            "informational",
            "VPN tunnel transport for connection <ID> switched from ESP to SSL mode due to missing ESP heartbeat.",
        ),
        (
            306,
            "informational",
            "VPN tunnel for connection <ID> is switched to ESP mode.",
        ),
        (
            307,
            "error",
            "The connection <ID> encountered an error: System error: <ID> Peer address: <ID>.",
        ),
        (
            308,
            "error",
            "The server disconnected connection <ID> Reason <ID>: Peer address: <ID>.",
        ),
    ];

    fn seed_level(text: &str) -> Level {
        match text {
            "informational" => Level::Info,
            "error" => Level::Error,
            other => panic!("unexpected seed level {other}"),
        }
    }

    #[test]
    fn catalogue_matches_the_seed_rows_exactly() {
        assert_eq!(CATALOGUE.len(), SEED_ROWS.len());
        for ((id, level, text), spec) in SEED_ROWS.iter().zip(CATALOGUE) {
            assert_eq!(spec.id, *id);
            assert_eq!(spec.level, seed_level(level), "event {id}");
            assert_eq!(spec.template, *text, "event {id}");
            assert_eq!(
                spec.template.matches("<ID>").count(),
                spec.args.len(),
                "event {id}: one argument name per <ID>"
            );
        }
        let ids: Vec<u16> = CATALOGUE.iter().map(|s| s.id).collect();
        let mut wanted = vec![1, 2];
        wanted.extend(100..=110);
        wanted.extend(300..=308);
        assert_eq!(ids, wanted);
    }

    /// Checks the catalogue against the seed document itself when it is on this machine
    /// (the development setup keeps it in /work/shared/seeds; elsewhere the test says why it
    /// skipped).
    #[test]
    fn catalogue_matches_the_seed_document_when_present() {
        let dir = std::env::var("TUNNEL_SEEDS_DIR").unwrap_or_else(|_| "/work/shared/seeds".into());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("skipped: no seed directory at {dir}");
            return;
        };
        let Some(text) = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("004_"))
            .find_map(|e| std::fs::read_to_string(e.path()).ok())
        else {
            eprintln!("skipped: no 004_* seed in {dir}");
            return;
        };
        for spec in CATALOGUE {
            let level = match spec.level {
                Level::Info => "informational",
                Level::Error => "error",
                other => panic!("unexpected level {other}"),
            };
            let found = text.lines().any(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                cells.len() > 4
                    && cells[1] == spec.id.to_string()
                    && cells[2] == level
                    && cells[3] == spec.template
            });
            assert!(found, "event {} not found verbatim in the seed", spec.id);
        }
    }

    #[test]
    fn every_kind_renders_its_catalogue_entry() {
        let s = || "x".to_string();
        let kinds = vec![
            EventKind::ServiceStarted { version: s() },
            EventKind::ServiceStopped,
            EventKind::UserStart { connection: s() },
            EventKind::UserStop { connection: s() },
            EventKind::PolicyStart {
                connection: s(),
                policy: s(),
            },
            EventKind::PolicyStop {
                connection: s(),
                policy: s(),
            },
            EventKind::ContextStop {
                connection: s(),
                context: s(),
            },
            EventKind::ContextStart {
                connection: s(),
                context: s(),
            },
            EventKind::SuspendDisconnect { connection: s() },
            EventKind::LoginErrorDisconnect { connection: s() },
            EventKind::ModifiedDisconnect { connection: s() },
            EventKind::UserSuspend { connection: s() },
            EventKind::UserResume { connection: s() },
            EventKind::EstablishedViaProxy {
                connection: s(),
                proxy: s(),
            },
            EventKind::Established {
                connection: s(),
                address: s(),
            },
            EventKind::Disconnected { connection: s() },
            EventKind::ConnectionError {
                connection: s(),
                error: s(),
                peer: s(),
            },
            EventKind::RouteChanged {
                connection: s(),
                from: s(),
                to: s(),
            },
            EventKind::EspToTls { connection: s() },
            EventKind::TlsToEsp { connection: s() },
            EventKind::SystemError {
                connection: s(),
                error: s(),
                peer: s(),
            },
            EventKind::ServerDisconnected {
                connection: s(),
                reason: s(),
                peer: s(),
            },
        ];
        assert_eq!(kinds.len(), CATALOGUE.len());
        for (kind, spec) in kinds.iter().zip(CATALOGUE) {
            let event = kind.event();
            assert_eq!(event.id, spec.id);
            assert_eq!(event.level, spec.level);
            let expected = spec.template.replace("<br>", " ").replace("<ID>", "x");
            assert_eq!(event.message, expected);
        }
    }

    #[test]
    fn named_arguments_fill_in_order() {
        let e = render_event(
            304,
            &[
                ("to", "10.0.0.2"),
                ("connection", "corp"),
                ("from", "10.0.0.1"),
            ],
        )
        .unwrap();
        assert_eq!(
            e.message,
            "The connection corp was disconnected due to change in routing table. Interface address changed from 10.0.0.1 to 10.0.0.2."
        );
        assert_eq!(e.level, Level::Error);
        let e = render_event(102, &[("connection", "c"), ("policy", "automatic")]).unwrap();
        assert_eq!(
            e.message,
            "Connection c is starting because its policy requirements have been met. Connection Policy: automatic."
        );
        let e = render_event(103, &[("connection", "c"), ("policy", "p")]).unwrap();
        assert_eq!(
            e.message,
            "Connection c) is stopping because of its policy requirements. Connection Policy: p."
        );
    }

    #[test]
    fn named_argument_errors_name_the_problem() {
        assert_eq!(
            render_event(999, &[]),
            Err(EventError::UnknownId { id: 999 })
        );
        let err = render_event(301, &[("connection", "c")]).unwrap_err();
        assert_eq!(
            err,
            EventError::MissingArgument {
                id: 301,
                name: "address"
            }
        );
        assert_eq!(err.to_string(), "event 301 needs the argument 'address'");
        let err = render_event(302, &[("connection", "c"), ("peer", "p")]).unwrap_err();
        assert_eq!(err.to_string(), "event 302 has no argument 'peer'");
        let err = render_event(302, &[("connection", "c"), ("connection", "d")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 302: argument 'connection' is given more than once"
        );
    }

    #[test]
    fn values_cannot_break_the_line() {
        let e = EventKind::ConnectionError {
            connection: "c".into(),
            error: "bad\nline\r\u{1b}[31m".into(),
            peer: "192.0.2.1".into(),
        }
        .event();
        assert!(!e.message.contains('\n'));
        assert!(!e.message.contains('\u{1b}'));
        assert!(e.message.contains("bad\\nline\\r\\u{1b}[31m"));
        // A value that looks like a placeholder is just text.
        let e = EventKind::UserStart {
            connection: "<ID>".into(),
        }
        .event();
        assert_eq!(e.message, "User requested connection <ID> to start.");
    }

    #[test]
    fn levels_order_by_verbosity_and_parse_case_insensitively() {
        assert!(Level::Error < Level::Packet);
        assert!(Level::Info.records(Level::Error));
        assert!(Level::Info.records(Level::Info));
        assert!(!Level::Info.records(Level::Debug));
        assert!(Level::Packet.records(Level::Session));
        for l in Level::ALL {
            assert_eq!(l.as_str().parse::<Level>(), Ok(l));
            assert_eq!(l.as_str().to_uppercase().parse::<Level>(), Ok(l));
        }
        assert_eq!(Level::default(), Level::Info);
        let err = "verbose".parse::<Level>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown log level \"verbose\": expected one of error, warning, info, debug, session, packet"
        );
    }

    #[test]
    fn log_lines_have_time_level_id_and_respect_the_threshold() {
        let at = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
        let log = EventLog::new(Level::Info);
        let e = EventKind::Established {
            connection: "corp".into(),
            address: "192.0.2.1".into(),
        }
        .event();
        assert_eq!(
            log.line(at, &e).unwrap(),
            "2024-05-01T12:00:00.123Z info [301] The connection corp was established successfully to address 192.0.2.1.\n"
        );
        assert_eq!(log.message_line(at, Level::Debug, "x"), None);
        assert_eq!(
            EventLog::new(Level::Debug)
                .message_line(at, Level::Debug, "a\nb")
                .unwrap(),
            "2024-05-01T12:00:00.123Z debug a\\nb\n"
        );
        assert_eq!(EventLog::new(Level::Error).line(at, &e), None);
    }

    #[test]
    fn timestamps_are_correct_civil_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let at = |s: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59.000Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59.000Z");
        assert_eq!(
            utc_timestamp(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
