//! `pulselauncher` compatibility: its argument vector and its exit codes (seed 004,
//! "Ivanti Secure Access Client Command-line Launcher", line ~749), so that scripts written
//! for it keep working with `tunnel launcher`.
//!
//! This module owns the argument syntax, the rules for combining arguments and the exit
//! code table. It does not prompt, connect or exit: the CLI does that with what it gets.
//!
//! ```text
//! pulselauncher [-version|-help|-stop|-L <3|5>] [-sessionselection <connect|cancel>]
//!               [-url <url> -u <user> -p <password> -r <realm>] [-d <DSID> -url <url>]
//!               [-cert <issued-to> -url <url> -r <realm>] [-signout|-suspend|-resume -url <url>]
//!               [-t <45-600>]
//! ```
//!
//! Details the seed leaves open, decided here:
//! - Flags take one dash as in the seed; two (`--url`) are accepted as the same flag, as is
//!   `-loglevel` for `-L` (the seed's syntax line writes `-loglevel`, its table `-L`).
//! - A flag's value is the next argument whatever it looks like, so a password may start
//!   with `-`. `-signout`, `-suspend` and `-resume` take the URL either inline
//!   (`-signout <url>`, the seed's table) or from `-url` (its syntax line).
//! - A flag given twice with the same value is accepted: the seed's own certificate example
//!   repeats `-url`. With different values it is an error.
//! - `-version`, `-help` and `-stop` stand alone. `-L` alone sets the log level; with a
//!   connection action it applies to that action.
//! - Credentials are exclusive: `-d` (a DSID cookie) with neither `-u`/`-p` nor `-cert`;
//!   `-cert` without `-p`; `-p` only with `-u`. `-u` alone means "prompt for the password",
//!   which is what a Linux user should do anyway: `-p` puts the password in the process
//!   list.

use std::{fmt, time::Duration};

use crate::{
    text::{Shown, has_control},
    url::{ServerUrl, UrlError},
};

/// `-t` bounds and default, seconds (seed: "Min = 45 (default), Max = 600").
pub const LAUNCHER_TIMEOUT_MIN: u64 = 45;
pub const LAUNCHER_TIMEOUT_MAX: u64 = 600;

/// The launcher's help text.
pub const LAUNCHER_USAGE: &str = "\
usage: tunnel launcher [-version|-help|-stop|-L <3|5>] [-sessionselection <connect|cancel>]
                       [-url <url> -u <user> -p <password> -r <realm>] [-d <DSID> -url <url>]
                       [-cert <issued-to> -url <url> -r <realm>]
                       [-signout|-suspend|-resume -url <url>] [-t <seconds>]

  -version             print the version and exit
  -help                print this help and exit
  -stop                disconnect every connection and stop
  -L <3|5>             log level: 3 normal (critical, error, warning, info; default), 5 detailed (all)
  -url <url>           the gateway: https://host[:port][/sign-in-page]
  -u <user>            user name (without -p the password is prompted for)
  -p <password>        password (visible to other users in the process list: prefer the prompt)
  -r <realm>           realm on the gateway
  -d <DSID>            sign in with a DSID cookie obtained elsewhere; needs -url
  -cert <issued-to>    sign in with the client certificate issued to this name; needs -url and -r
  -signout, -suspend, -resume
                       sign out of, suspend or resume the connection to -url
  -t <seconds>         give up after this long, 45-600 (default 45)
  -sessionselection <connect|cancel>
                       at the concurrent session limit: end the oldest (first listed) session
                       and connect, or give up (exit code 5); without it the limit fails the
                       connection (exit code 2)

Nothing is asked after the password: a token code, an expired password or a sign-in notice
to accept fails the connection (exit code 2), as does a request this client does not
understand; `tunnel connect` asks for those, or takes them from its options.

exit codes: -1 (255) not running, 0 success, 1 invalid parameter, 2 connect failed,
  3 connected with error, 4 no such connection, 5 cancelled, 6 certificate error, 7 timeout,
  8 user connections not allowed, 9 policy override not allowed,
  25 invalid action for the connection's state, 100 general error
";

/// A secret from the command line (`-p`, `-d`): kept out of `Debug` output and errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `-L`: the launcher's two log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum LauncherLogLevel {
    /// 3: critical, error, warning and info messages (the default).
    #[default]
    Normal,
    /// 5: all messages.
    Detailed,
}

impl LauncherLogLevel {
    pub fn number(self) -> u8 {
        match self {
            LauncherLogLevel::Normal => 3,
            LauncherLogLevel::Detailed => 5,
        }
    }
}

/// `-sessionselection`: what to do at the concurrent session limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionSelection {
    /// End the first (oldest) session and connect.
    Connect,
    /// Give up.
    Cancel,
}

/// How a launcher connection signs in.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LauncherAuth {
    /// Prompt for whatever the gateway asks (`-url` with or without `-u`).
    Prompt { user: Option<String> },
    /// `-u` and `-p`.
    Password { user: String, password: Secret },
    /// `-d`: a DSID cookie from another sign-in.
    Cookie(Secret),
    /// `-cert`: the client certificate issued to this name.
    Certificate {
        issued_to: String,
        user: Option<String>,
    },
}

/// What `tunnel launcher -url ...` connects with.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectArgs {
    pub url: ServerUrl,
    pub auth: LauncherAuth,
    pub realm: Option<String>,
    /// `-t`, 45-600 seconds (default 45).
    pub timeout: Duration,
    pub session_selection: Option<SessionSelection>,
    pub log_level: Option<LauncherLogLevel>,
}

/// The target of `-signout`, `-suspend` or `-resume`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UrlArgs {
    pub url: ServerUrl,
    pub timeout: Duration,
    pub log_level: Option<LauncherLogLevel>,
}

/// What the launcher's arguments ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LauncherAction {
    Version,
    Help,
    /// Disconnect every connection and stop.
    Stop,
    /// `-L` alone.
    SetLogLevel(LauncherLogLevel),
    Connect(ConnectArgs),
    SignOut(UrlArgs),
    Suspend(UrlArgs),
    Resume(UrlArgs),
}

/// Why the arguments were refused. Every one is exit code 1 ([`ExitCode::BadParameter`]).
/// No message ever shows a password or a cookie.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LauncherError {
    #[error("no arguments; see -help")]
    NoArguments,
    #[error("unknown argument {}{}", Shown(.flag), hint(.did_you_mean))]
    UnknownFlag {
        flag: String,
        did_you_mean: Option<&'static str>,
    },
    #[error("{flag} needs a value")]
    MissingValue { flag: &'static str },
    #[error("{flag} has an empty value")]
    EmptyValue { flag: &'static str },
    #[error("{flag}: the value contains control characters")]
    Control { flag: &'static str },
    #[error("unexpected argument {}; values follow their flag, e.g. -url <url>", Shown(.arg))]
    Unexpected { arg: String },
    #[error("{flag} is given twice with different values")]
    Repeated { flag: &'static str },
    #[error("{flag} cannot be combined with {with}")]
    Conflict {
        flag: &'static str,
        with: &'static str,
    },
    #[error("{flag} requires {needs}")]
    Requires {
        flag: &'static str,
        needs: &'static str,
    },
    #[error("-d: a DSID cookie has no spaces, ';' or ','")]
    BadCookie,
    #[error("-t {}: the timeout is a whole number of seconds from 45 to 600", Shown(.value))]
    Timeout { value: String },
    #[error("-L {}: the log level is 3 (normal) or 5 (detailed)", Shown(.value))]
    LogLevel { value: String },
    #[error("-sessionselection {}: expected connect or cancel", Shown(.value))]
    SessionSelection { value: String },
    #[error("{flag}: {source}")]
    Url {
        flag: &'static str,
        #[source]
        source: UrlError,
    },
}

fn hint(flag: &Option<&'static str>) -> String {
    flag.map(|f| format!(" (did you mean {f}?)"))
        .unwrap_or_default()
}

impl LauncherError {
    /// The exit code a refused argument vector ends with.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::BadParameter
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    Version,
    Help,
    Stop,
    LogLevel,
    SessionSelection,
    Url,
    User,
    Password,
    Realm,
    Dsid,
    Cert,
    SignOut,
    Suspend,
    Resume,
    Timeout,
}

/// Spellings, as typed after the dashes, and the canonical form errors use.
const FLAGS: &[(&str, Flag, &str)] = &[
    ("version", Flag::Version, "-version"),
    ("help", Flag::Help, "-help"),
    ("stop", Flag::Stop, "-stop"),
    ("L", Flag::LogLevel, "-L"),
    ("loglevel", Flag::LogLevel, "-L"),
    (
        "sessionselection",
        Flag::SessionSelection,
        "-sessionselection",
    ),
    ("url", Flag::Url, "-url"),
    ("u", Flag::User, "-u"),
    ("p", Flag::Password, "-p"),
    ("r", Flag::Realm, "-r"),
    ("d", Flag::Dsid, "-d"),
    ("cert", Flag::Cert, "-cert"),
    ("signout", Flag::SignOut, "-signout"),
    ("suspend", Flag::Suspend, "-suspend"),
    ("resume", Flag::Resume, "-resume"),
    ("t", Flag::Timeout, "-t"),
];

impl Flag {
    fn canonical(self) -> &'static str {
        FLAGS
            .iter()
            .find(|(_, f, _)| *f == self)
            .map_or("-?", |(_, _, c)| c)
    }

    fn takes_value(self) -> bool {
        !matches!(
            self,
            Flag::Version | Flag::Help | Flag::Stop | Flag::SignOut | Flag::Suspend | Flag::Resume
        )
    }
}

/// The flags seen, each with its value (or `""` for valueless ones), in order.
#[derive(Default)]
struct Seen {
    flags: Vec<(Flag, String)>,
}

impl Seen {
    fn has(&self, flag: Flag) -> bool {
        self.flags.iter().any(|(f, _)| *f == flag)
    }

    fn value(&self, flag: Flag) -> Option<&str> {
        self.flags
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    }

    /// Records `flag`; a repeat must have the same value.
    fn add(&mut self, flag: Flag, value: String) -> Result<(), LauncherError> {
        match self.value(flag) {
            Some(v) if v == value => Ok(()),
            Some(_) => Err(LauncherError::Repeated {
                flag: flag.canonical(),
            }),
            None => {
                self.flags.push((flag, value));
                Ok(())
            }
        }
    }

    fn first_of(&self, flags: &[Flag]) -> Option<Flag> {
        self.flags
            .iter()
            .map(|(f, _)| *f)
            .find(|f| flags.contains(f))
    }
}

fn lookup(arg: &str) -> Result<Flag, LauncherError> {
    let name = arg
        .strip_prefix("--")
        .or_else(|| arg.strip_prefix('-'))
        .unwrap_or(arg);
    if let Some((_, f, _)) = FLAGS.iter().find(|(n, _, _)| *n == name) {
        return Ok(*f);
    }
    let did_you_mean = FLAGS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, _, c)| *c);
    Err(LauncherError::UnknownFlag {
        flag: arg.to_string(),
        did_you_mean,
    })
}

/// Parses the launcher's arguments (without the program name).
pub fn parse_launcher_args<S: AsRef<str>>(args: &[S]) -> Result<LauncherAction, LauncherError> {
    if args.is_empty() {
        return Err(LauncherError::NoArguments);
    }
    let mut seen = Seen::default();
    let mut inline_url: Option<(Flag, String)> = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_ref();
        i += 1;
        if !arg.starts_with('-') {
            return Err(LauncherError::Unexpected {
                arg: arg.to_string(),
            });
        }
        let flag = lookup(arg)?;
        let value = if flag.takes_value() {
            let v =
                args.get(i)
                    .map(|v| v.as_ref().to_string())
                    .ok_or(LauncherError::MissingValue {
                        flag: flag.canonical(),
                    })?;
            i += 1;
            if v.trim().is_empty() {
                return Err(LauncherError::EmptyValue {
                    flag: flag.canonical(),
                });
            }
            if has_control(&v) {
                return Err(LauncherError::Control {
                    flag: flag.canonical(),
                });
            }
            v
        } else {
            String::new()
        };
        // `-signout <url>`: an inline URL is an argument that is not a flag.
        if matches!(flag, Flag::SignOut | Flag::Suspend | Flag::Resume)
            && let Some(next) = args.get(i).map(AsRef::as_ref)
            && !next.starts_with('-')
        {
            inline_url = Some((flag, next.to_string()));
            i += 1;
        }
        seen.add(flag, value)?;
    }
    interpret(&seen, inline_url)
}

fn interpret(
    seen: &Seen,
    inline_url: Option<(Flag, String)>,
) -> Result<LauncherAction, LauncherError> {
    let conflict = |flag: Flag, with: Flag| LauncherError::Conflict {
        flag: flag.canonical(),
        with: with.canonical(),
    };
    let requires = |flag: Flag, needs: &'static str| LauncherError::Requires {
        flag: flag.canonical(),
        needs,
    };
    // Stand-alone flags.
    for alone in [Flag::Version, Flag::Help, Flag::Stop] {
        if seen.has(alone) {
            if let Some((other, _)) = seen.flags.iter().find(|(f, _)| *f != alone) {
                return Err(conflict(alone, *other));
            }
            return Ok(match alone {
                Flag::Version => LauncherAction::Version,
                Flag::Help => LauncherAction::Help,
                _ => LauncherAction::Stop,
            });
        }
    }
    let log_level = seen
        .value(Flag::LogLevel)
        .map(|v| match v.trim() {
            "3" => Ok(LauncherLogLevel::Normal),
            "5" => Ok(LauncherLogLevel::Detailed),
            _ => Err(LauncherError::LogLevel {
                value: v.to_string(),
            }),
        })
        .transpose()?;
    let timeout = match seen.value(Flag::Timeout) {
        None => Duration::from_secs(LAUNCHER_TIMEOUT_MIN),
        Some(v) => {
            let t = v.trim();
            match t.parse::<u64>() {
                Ok(s)
                    if t.bytes().all(|b| b.is_ascii_digit())
                        && (LAUNCHER_TIMEOUT_MIN..=LAUNCHER_TIMEOUT_MAX).contains(&s) =>
                {
                    Duration::from_secs(s)
                }
                _ => {
                    return Err(LauncherError::Timeout {
                        value: v.to_string(),
                    });
                }
            }
        }
    };
    let url = |flag: Flag, text: &str| {
        ServerUrl::parse(text).map_err(|source| LauncherError::Url {
            flag: flag.canonical(),
            source,
        })
    };

    // -signout, -suspend, -resume.
    let ops = [Flag::SignOut, Flag::Suspend, Flag::Resume];
    if let Some(op) = seen.first_of(&ops) {
        if let Some(other) = ops.iter().find(|o| **o != op && seen.has(**o)) {
            return Err(conflict(op, *other));
        }
        if let Some(other) = seen.first_of(&[
            Flag::User,
            Flag::Password,
            Flag::Realm,
            Flag::Dsid,
            Flag::Cert,
            Flag::SessionSelection,
        ]) {
            return Err(conflict(op, other));
        }
        let target = match (&inline_url, seen.value(Flag::Url)) {
            (Some((_, a)), Some(b)) => {
                let (a, b) = (url(op, a)?, url(Flag::Url, b)?);
                if a != b {
                    return Err(LauncherError::Repeated { flag: "-url" });
                }
                a
            }
            (Some((_, a)), None) => url(op, a)?,
            (None, Some(b)) => url(Flag::Url, b)?,
            // The seed: "the -url argument is required when you use -signout, -suspend, or
            // -resume".
            (None, None) => return Err(requires(op, "-url")),
        };
        let args = UrlArgs {
            url: target,
            timeout,
            log_level,
        };
        return Ok(match op {
            Flag::SignOut => LauncherAction::SignOut(args),
            Flag::Suspend => LauncherAction::Suspend(args),
            _ => LauncherAction::Resume(args),
        });
    }

    let connect_flags = [
        Flag::Url,
        Flag::User,
        Flag::Password,
        Flag::Realm,
        Flag::Dsid,
        Flag::Cert,
        Flag::Timeout,
        Flag::SessionSelection,
    ];
    let Some(first) = seen.first_of(&connect_flags) else {
        // Only -L is left.
        return Ok(LauncherAction::SetLogLevel(log_level.unwrap_or_default()));
    };
    let Some(url_text) = seen.value(Flag::Url) else {
        return Err(requires(first, "-url"));
    };
    let server = url(Flag::Url, url_text)?;
    let user = seen.value(Flag::User).map(str::to_string);
    let realm = seen.value(Flag::Realm).map(str::to_string);
    let auth = match (
        seen.value(Flag::Dsid),
        seen.value(Flag::Cert),
        seen.value(Flag::Password),
    ) {
        (Some(_), Some(_), _) => return Err(conflict(Flag::Dsid, Flag::Cert)),
        (Some(_), None, Some(_)) => return Err(conflict(Flag::Dsid, Flag::Password)),
        (Some(_), None, None) if user.is_some() => return Err(conflict(Flag::Dsid, Flag::User)),
        (Some(dsid), None, None) => {
            if dsid
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, ';' | ','))
            {
                return Err(LauncherError::BadCookie);
            }
            LauncherAuth::Cookie(Secret::new(dsid))
        }
        (None, Some(_), Some(_)) => return Err(conflict(Flag::Cert, Flag::Password)),
        (None, Some(issued_to), None) => {
            // The seed: "When using the -cert argument, you must also specify the -url and
            // -r <realm> arguments."
            if realm.is_none() {
                return Err(requires(Flag::Cert, "-r"));
            }
            LauncherAuth::Certificate {
                issued_to: issued_to.to_string(),
                user,
            }
        }
        (None, None, Some(password)) => match user {
            Some(user) => LauncherAuth::Password {
                user,
                password: Secret::new(password),
            },
            None => return Err(requires(Flag::Password, "-u")),
        },
        (None, None, None) => LauncherAuth::Prompt { user },
    };
    let session_selection = seen
        .value(Flag::SessionSelection)
        .map(|v| match v.trim().to_ascii_lowercase().as_str() {
            "connect" => Ok(SessionSelection::Connect),
            "cancel" => Ok(SessionSelection::Cancel),
            _ => Err(LauncherError::SessionSelection {
                value: v.to_string(),
            }),
        })
        .transpose()?;
    Ok(LauncherAction::Connect(ConnectArgs {
        url: server,
        auth,
        realm,
        timeout,
        session_selection,
        log_level,
    }))
}

/// The launcher's exit codes (seed 004, table 10), which `tunnel launcher` and the modern
/// `tunnel connect|disconnect|...` subcommands end with.
///
/// A Unix exit status is one byte, so -1 ("not running") reaches the shell as 255, just as
/// `exit(-1)` does in C; [`ExitCode::unix_status`] gives that byte and
/// [`ExitCode::from_unix_status`] maps it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitCode {
    /// -1
    NotRunning,
    /// 0
    Success,
    /// 1
    BadParameter,
    /// 2
    ConnectFailed,
    /// 3
    ConnectedWithError,
    /// 4
    NoSuchConnection,
    /// 5
    UserCancelled,
    /// 6
    CertificateError,
    /// 7
    Timeout,
    /// 8
    UserConnectionNotAllowed,
    /// 9
    PolicyOverrideNotAllowed,
    /// 25
    InvalidState,
    /// 100
    General,
}

impl ExitCode {
    /// Every code, in the seed table's order.
    pub const ALL: [ExitCode; 13] = [
        ExitCode::NotRunning,
        ExitCode::Success,
        ExitCode::BadParameter,
        ExitCode::ConnectFailed,
        ExitCode::ConnectedWithError,
        ExitCode::NoSuchConnection,
        ExitCode::UserCancelled,
        ExitCode::CertificateError,
        ExitCode::Timeout,
        ExitCode::UserConnectionNotAllowed,
        ExitCode::PolicyOverrideNotAllowed,
        ExitCode::InvalidState,
        ExitCode::General,
    ];

    /// The code as the seed numbers it.
    pub fn code(self) -> i32 {
        match self {
            ExitCode::NotRunning => -1,
            ExitCode::Success => 0,
            ExitCode::BadParameter => 1,
            ExitCode::ConnectFailed => 2,
            ExitCode::ConnectedWithError => 3,
            ExitCode::NoSuchConnection => 4,
            ExitCode::UserCancelled => 5,
            ExitCode::CertificateError => 6,
            ExitCode::Timeout => 7,
            ExitCode::UserConnectionNotAllowed => 8,
            ExitCode::PolicyOverrideNotAllowed => 9,
            ExitCode::InvalidState => 25,
            ExitCode::General => 100,
        }
    }

    /// The code numbered `code`.
    pub fn from_code(code: i32) -> Option<ExitCode> {
        ExitCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The process exit status: the code as one byte, so -1 is 255.
    pub fn unix_status(self) -> u8 {
        self.code().to_le_bytes()[0]
    }

    /// The code a process exit status stands for.
    pub fn from_unix_status(status: u8) -> Option<ExitCode> {
        ExitCode::ALL
            .into_iter()
            .find(|c| c.unix_status() == status)
    }

    /// What the code means (the seed's descriptions, for this client).
    pub fn description(self) -> &'static str {
        match self {
            ExitCode::NotRunning => "The client (tunneld) is not running.",
            ExitCode::Success => "Success.",
            ExitCode::BadParameter => "A parameter is invalid.",
            ExitCode::ConnectFailed => {
                "Connection has failed or the client is unable to connect to the specified gateway."
            }
            ExitCode::ConnectedWithError => "Connection established with error.",
            ExitCode::NoSuchConnection => "Connection does not exist.",
            ExitCode::UserCancelled => "User cancelled connection.",
            ExitCode::CertificateError => "Client certificate error.",
            ExitCode::Timeout => "Timeout error.",
            ExitCode::UserConnectionNotAllowed => "No user connection allowed.",
            ExitCode::PolicyOverrideNotAllowed => "No policy override allowed.",
            ExitCode::InvalidState => "Invalid action for current connection state.",
            ExitCode::General => "General error.",
        }
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.description())
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.unix_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> LauncherAction {
        let v: Vec<&str> = args.split_whitespace().collect();
        parse_launcher_args(&v).unwrap_or_else(|e| panic!("{args}: {e}"))
    }

    fn err(args: &str) -> String {
        let v: Vec<&str> = args.split_whitespace().collect();
        match parse_launcher_args(&v) {
            Ok(a) => panic!("{args} accepted: {a:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), ExitCode::BadParameter);
                e.to_string()
            }
        }
    }

    fn connect(args: &str) -> ConnectArgs {
        match parse(args) {
            LauncherAction::Connect(c) => c,
            other => panic!("{args}: {other:?}"),
        }
    }

    #[test]
    fn the_seed_examples() {
        let c = connect("-u JDoe -p my$Pass84 -url https://int-company.portal.com/usr -r Users");
        assert_eq!(c.url.to_string(), "https://int-company.portal.com/usr");
        assert_eq!(c.realm.as_deref(), Some("Users"));
        assert_eq!(
            c.auth,
            LauncherAuth::Password {
                user: "JDoe".into(),
                password: Secret::new("my$Pass84")
            }
        );
        assert_eq!(c.timeout, Duration::from_secs(45));
        // The certificate example repeats -url with the same value.
        let c = connect(
            "-url https://int-company.portal.com/usr -cert MyCert -url https://int-company.portal.com/usr -r Users",
        );
        assert_eq!(
            c.auth,
            LauncherAuth::Certificate {
                issued_to: "MyCert".into(),
                user: None
            }
        );
        let c = connect("-d 12adf234nasu234 -url https://int-company.portal.com/usr");
        assert_eq!(c.auth, LauncherAuth::Cookie(Secret::new("12adf234nasu234")));
    }

    #[test]
    fn standalone_actions() {
        assert_eq!(parse("-version"), LauncherAction::Version);
        assert_eq!(parse("-help"), LauncherAction::Help);
        assert_eq!(parse("--help"), LauncherAction::Help);
        assert_eq!(parse("-stop"), LauncherAction::Stop);
        assert_eq!(
            parse("-L 5"),
            LauncherAction::SetLogLevel(LauncherLogLevel::Detailed)
        );
        assert_eq!(
            parse("-loglevel 3"),
            LauncherAction::SetLogLevel(LauncherLogLevel::Normal)
        );
        assert_eq!(
            err("-version -url a.example"),
            "-version cannot be combined with -url"
        );
        assert_eq!(err("-stop -help"), "-help cannot be combined with -stop");
        assert_eq!(
            err("-L 4"),
            "-L \"4\": the log level is 3 (normal) or 5 (detailed)"
        );
        assert_eq!(LauncherLogLevel::Detailed.number(), 5);
    }

    #[test]
    fn timeout_is_45_to_600() {
        assert_eq!(
            connect("-url a.example -t 45").timeout,
            Duration::from_secs(45)
        );
        assert_eq!(
            connect("-url a.example -t 600").timeout,
            Duration::from_secs(600)
        );
        assert_eq!(
            connect("-url a.example -t 120").timeout,
            Duration::from_secs(120)
        );
        for bad in [
            "44",
            "601",
            "0",
            "-5",
            "1e3",
            "45s",
            "99999999999999999999999",
        ] {
            assert_eq!(
                err(&format!("-url a.example -t {bad}")),
                format!("-t \"{bad}\": the timeout is a whole number of seconds from 45 to 600")
            );
        }
    }

    #[test]
    fn combination_rules_from_the_seed() {
        assert_eq!(err("-d 12adf234"), "-d requires -url");
        assert_eq!(err("-cert MyCert -r Users"), "-cert requires -url");
        assert_eq!(err("-cert MyCert -url a.example"), "-cert requires -r");
        assert_eq!(err("-signout"), "-signout requires -url");
        assert_eq!(err("-suspend"), "-suspend requires -url");
        assert_eq!(err("-resume"), "-resume requires -url");
        assert_eq!(err("-u bob -p pw"), "-u requires -url");
        assert_eq!(err("-t 60"), "-t requires -url");
        assert_eq!(err("-url a.example -p pw"), "-p requires -u");
        assert_eq!(
            err("-url a.example -d x -p pw"),
            "-d cannot be combined with -p"
        );
        assert_eq!(
            err("-url a.example -d x -u bob"),
            "-d cannot be combined with -u"
        );
        assert_eq!(
            err("-url a.example -d x -cert c -r R"),
            "-d cannot be combined with -cert"
        );
        assert_eq!(
            err("-url a.example -cert c -r R -u b -p pw"),
            "-cert cannot be combined with -p"
        );
        assert_eq!(
            err("-signout -url a.example -u bob"),
            "-signout cannot be combined with -u"
        );
        assert_eq!(
            err("-suspend -url a.example -resume"),
            "-suspend cannot be combined with -resume"
        );
        assert_eq!(
            err("-url a.example -url b.example"),
            "-url is given twice with different values"
        );
        assert_eq!(
            err("-url a.example -u a -u b"),
            "-u is given twice with different values"
        );
    }

    #[test]
    fn signout_suspend_resume_take_the_url_inline_or_from_url() {
        let LauncherAction::SignOut(a) = parse("-signout https://a.example/usr") else {
            panic!()
        };
        assert_eq!(a.url.to_string(), "https://a.example/usr");
        let LauncherAction::Suspend(a) = parse("-suspend -url a.example -t 100 -L 5") else {
            panic!()
        };
        assert_eq!(a.timeout, Duration::from_secs(100));
        assert_eq!(a.log_level, Some(LauncherLogLevel::Detailed));
        assert!(matches!(
            parse("-url a.example -resume"),
            LauncherAction::Resume(_)
        ));
        assert!(matches!(
            parse("-resume a.example -url https://A.example:443/"),
            LauncherAction::Resume(_)
        ));
        assert_eq!(
            err("-resume a.example -url b.example"),
            "-url is given twice with different values"
        );
        assert!(err("-signout http://a.example").starts_with("-signout: server URL"));
    }

    #[test]
    fn prompting_session_selection_and_secrets() {
        let c = connect("-url a.example -u bob -sessionselection connect");
        assert_eq!(
            c.auth,
            LauncherAuth::Prompt {
                user: Some("bob".into())
            }
        );
        assert_eq!(c.session_selection, Some(SessionSelection::Connect));
        assert_eq!(
            connect("--url a.example --sessionselection Cancel").session_selection,
            Some(SessionSelection::Cancel)
        );
        assert_eq!(
            connect("-url a.example").auth,
            LauncherAuth::Prompt { user: None }
        );
        assert_eq!(
            err("-url a.example -sessionselection later"),
            "-sessionselection \"later\": expected connect or cancel"
        );
        // A password may start with a dash, and never shows in Debug output or errors.
        let v = ["-url", "a.example", "-u", "bob", "-p", "-s3cret-"];
        let LauncherAction::Connect(c) = parse_launcher_args(&v).unwrap() else {
            panic!()
        };
        let LauncherAuth::Password { password, .. } = &c.auth else {
            panic!()
        };
        assert_eq!(password.expose(), "-s3cret-");
        assert!(!format!("{c:?}").contains("s3cret"));
        let v = ["-url", "a.example", "-u", "bob", "-p", "one", "-p", "two"];
        let e = parse_launcher_args(&v).unwrap_err().to_string();
        assert!(!e.contains("one") && !e.contains("two"), "{e}");
        assert_eq!(
            err("-url a.example -d bad;cookie"),
            "-d: a DSID cookie has no spaces, ';' or ','"
        );
    }

    #[test]
    fn malformed_vectors() {
        assert_eq!(
            parse_launcher_args::<&str>(&[]),
            Err(LauncherError::NoArguments)
        );
        assert_eq!(err("-url"), "-url needs a value");
        assert_eq!(err("-url a.example -r"), "-r needs a value");
        assert_eq!(
            err("-URL a.example"),
            "unknown argument \"-URL\" (did you mean -url?)"
        );
        assert_eq!(err("-x"), "unknown argument \"-x\"");
        assert_eq!(err("-"), "unknown argument \"-\"");
        assert_eq!(
            err("a.example"),
            "unexpected argument \"a.example\"; values follow their flag, e.g. -url <url>"
        );
        assert_eq!(
            err("-url a.example extra"),
            "unexpected argument \"extra\"; values follow their flag, e.g. -url <url>"
        );
        assert!(
            err("-url http://a.example")
                .starts_with("-url: server URL \"http://a.example\": plain http://")
        );
        let v = ["-url", "a.example", "-u", " "];
        assert_eq!(
            parse_launcher_args(&v).unwrap_err().to_string(),
            "-u has an empty value"
        );
        let v = ["-url", "a.example", "-r", "a\nb"];
        assert_eq!(
            parse_launcher_args(&v).unwrap_err().to_string(),
            "-r: the value contains control characters"
        );
    }

    #[test]
    fn exit_codes_follow_the_seed_table() {
        let table = [
            (ExitCode::NotRunning, -1, 255),
            (ExitCode::Success, 0, 0),
            (ExitCode::BadParameter, 1, 1),
            (ExitCode::ConnectFailed, 2, 2),
            (ExitCode::ConnectedWithError, 3, 3),
            (ExitCode::NoSuchConnection, 4, 4),
            (ExitCode::UserCancelled, 5, 5),
            (ExitCode::CertificateError, 6, 6),
            (ExitCode::Timeout, 7, 7),
            (ExitCode::UserConnectionNotAllowed, 8, 8),
            (ExitCode::PolicyOverrideNotAllowed, 9, 9),
            (ExitCode::InvalidState, 25, 25),
            (ExitCode::General, 100, 100),
        ];
        assert_eq!(table.len(), ExitCode::ALL.len());
        for (code, number, status) in table {
            assert_eq!(code.code(), number);
            assert_eq!(code.unix_status(), status);
            assert_eq!(ExitCode::from_code(number), Some(code));
            assert_eq!(ExitCode::from_unix_status(status), Some(code));
            assert!(code.description().ends_with('.'));
        }
        assert_eq!(ExitCode::from_code(10), None);
        assert_eq!(ExitCode::from_unix_status(254), None);
        assert_eq!(
            ExitCode::NotRunning.to_string(),
            "-1 (The client (tunneld) is not running.)"
        );
        assert_eq!(
            ExitCode::InvalidState.description(),
            "Invalid action for current connection state."
        );
        assert_eq!(
            std::process::ExitCode::from(ExitCode::NotRunning),
            std::process::ExitCode::from(255)
        );
    }

    #[test]
    fn usage_mentions_every_flag() {
        for (_, _, canonical) in FLAGS {
            assert!(LAUNCHER_USAGE.contains(canonical), "{canonical}");
        }
    }

    #[test]
    fn session_selection_goes_with_a_connection_only() {
        // With each way of signing in.
        for args in [
            "-url a.example -u bob -p pw -sessionselection connect",
            "-url a.example -d 12adf234 -sessionselection connect",
            "-sessionselection connect -url a.example -cert MyCert -r Users",
        ] {
            assert_eq!(
                connect(args).session_selection,
                Some(SessionSelection::Connect),
                "{args}"
            );
        }
        assert_eq!(
            connect("-url a.example -u bob -sessionselection CANCEL -t 60").session_selection,
            Some(SessionSelection::Cancel)
        );
        // Without it the launcher cannot answer the session limit.
        assert_eq!(connect("-url a.example -u bob").session_selection, None);
        assert_eq!(
            err("-sessionselection connect"),
            "-sessionselection requires -url"
        );
        assert_eq!(
            err("-signout a.example -sessionselection connect"),
            "-signout cannot be combined with -sessionselection"
        );
        assert_eq!(
            err("-stop -sessionselection cancel"),
            "-stop cannot be combined with -sessionselection"
        );
        assert_eq!(
            err("-url a.example -sessionselection connect -sessionselection cancel"),
            "-sessionselection is given twice with different values"
        );
        assert!(err("-url a.example -sessionselection").contains("-sessionselection"));
        // Cancelling at the limit is the table's "user cancelled".
        assert_eq!(ExitCode::UserCancelled.code(), 5);
        assert!(LAUNCHER_USAGE.contains("exit code 5"));
    }
}
