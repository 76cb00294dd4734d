//! Launch URLs: `pulsesecureclient://connect?name=..&server=..&userrealm=..&username=..&store=..`
//! (seed 004, "Launching Ivanti Secure Access Client using URL", line ~425).
//!
//! This module owns the URL's syntax and what opening one does to the connections store.
//! It does not ask the user for permission (the CLI does, as the seed's browser dialog
//! does) and does not connect.
//!
//! Decisions where the seed is silent or says two things:
//! - Values are percent-decoded (`%20`, UTF-8); a `+` is a plus sign, not a space: the
//!   launch URL is a URI (RFC 3986), not an HTML form, and user names such as `a+b@corp`
//!   must survive. A literal space is accepted too, as in the seed's example
//!   `name=Test Connection`, which a shell or a pasted link can produce.
//! - Parameter names and the `connect` action are matched without regard to ASCII case
//!   (Windows URL handlers do); values keep their case, as the seed requires for `name`,
//!   `userrealm` and `username`. `pulsesecureclient://connect/?...` (a browser's trailing
//!   slash) is the same URL.
//! - `store` defaults to **true**: the seed presents `store=false` as the way "to have
//!   temporary client entries", i.e. without it the connection is kept.
//! - The connection is named `<name> (Auto Launch)`, with a space. The seed writes both
//!   `Name(Auto Launch)` (its template) and `Test Connection (Auto Launch)` (its worked
//!   example); the spaced form reads as the suffix it is meant to be. A stored connection
//!   spelled without the space is recognised as the same connection.
//! - The same name with a server that is not among the connection's URLs is an error (the
//!   seed's "same connection name but with different server URL"); with the same server,
//!   the stored connection is used, and a realm or user name in the URL replaces the
//!   stored one.
//! - Opening a launch URL creates a connection, so it is refused when the machine settings
//!   forbid user connections (launcher exit code 8).
//! - The length limit is a browser's, and browsers measure a URL percent-encoded: a
//!   launch URL is refused when the text given is over it (checked first, so hostile input
//!   costs little) and when the URL [`LaunchRequest::to_url`] prints for it is, so that an
//!   accepted URL typed with raw spaces or non-ASCII characters, which percent-encoding makes
//!   up to three times longer, still prints to one that parses back.

use std::fmt;

use crate::{
    store::{Connection, ConnectionError, Source, Store, StoreError},
    text::{Shown, has_control},
    url::{ServerUrl, UrlError},
};

/// The URL scheme.
pub const LAUNCH_SCHEME: &str = "pulsesecureclient";
/// What a launch URL's connection name is suffixed with.
pub const AUTO_LAUNCH_SUFFIX: &str = " (Auto Launch)";
/// The seed's other spelling of the suffix, recognised on existing connections.
const AUTO_LAUNCH_SUFFIX_UNSPACED: &str = "(Auto Launch)";
/// Browsers cap URLs near this; longer is not a launch URL. In bytes, of the URL as given
/// and of the URL `to_url` prints for it.
const MAX_LAUNCH_URL_LEN: usize = 8192;

/// A parsed launch URL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LaunchRequest {
    /// `name`, as given (without the "(Auto Launch)" suffix), trimmed.
    pub name: String,
    /// `server`: an FQDN, an IP address or a sign-in URL.
    pub server: ServerUrl,
    /// `userrealm`.
    pub realm: Option<String>,
    /// `username`.
    pub user: Option<String>,
    /// `store` (default true).
    pub store: bool,
}

/// Where a percent-encoded value is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodingProblem {
    /// A `%` not followed by two hex digits, at this byte of the value.
    BadEscape { at: usize },
    /// The decoded bytes are not UTF-8.
    NotUtf8,
    /// The decoded value has control characters (`%0A`...), which have no place in a name.
    Control,
}

impl fmt::Display for EncodingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodingProblem::BadEscape { at } => {
                write!(
                    f,
                    "'%' at position {} is not followed by two hex digits",
                    at + 1
                )
            }
            EncodingProblem::NotUtf8 => f.write_str("the decoded value is not UTF-8"),
            EncodingProblem::Control => {
                f.write_str("the decoded value contains control characters")
            }
        }
    }
}

/// Why a launch URL was refused, or could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    #[error("the launch URL is {len} bytes long; at most {max} are accepted")]
    TooLong { len: usize, max: usize },
    #[error("the launch URL is {len} bytes long once percent-encoded; at most {max} are accepted")]
    EncodedTooLong { len: usize, max: usize },
    #[error("{} is not a launch URL: it must start with pulsesecureclient://", Shown(.url))]
    Scheme { url: String },
    #[error("launch URL action {} is not supported: the only action is connect", Shown(.action))]
    Action { action: String },
    #[error("launch URL parameter {} is unknown (known: name, server, userrealm, username, store)", Shown(.name))]
    UnknownParameter { name: String },
    #[error("launch URL parameter {name} is given more than once")]
    Repeated { name: &'static str },
    #[error("launch URL part {} is not a parameter: expected name=value", Shown(.part))]
    NotAParameter { part: String },
    #[error("launch URL parameter {name}: {problem}")]
    Encoding {
        name: &'static str,
        problem: EncodingProblem,
    },
    #[error("the launch URL needs a {name} parameter")]
    Missing { name: &'static str },
    #[error("launch URL parameter server: {source}")]
    Server {
        #[source]
        source: UrlError,
    },
    #[error("launch URL parameter store is {}; allowed: true or false", Shown(.value))]
    StoreValue { value: String },
    #[error("a launch URL has no #fragment")]
    Fragment,
    #[error("a connection named {} already exists for server {existing}, not {requested}", Shown(.name))]
    NameConflict {
        name: String,
        existing: String,
        requested: String,
    },
    #[error("the machine settings do not allow user connections")]
    UserConnectionsNotAllowed,
    #[error(transparent)]
    Invalid(#[from] ConnectionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Strict percent-decoding: `%XX` is a byte, everything else is itself (`+` included).
fn decode(value: &str) -> Result<String, EncodingProblem> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let pair = bytes
                .get(i + 1)
                .copied()
                .and_then(hex)
                .zip(bytes.get(i + 2).copied().and_then(hex));
            match pair {
                Some((hi, lo)) => out.push(hi << 4 | lo),
                None => return Err(EncodingProblem::BadEscape { at: i }),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| EncodingProblem::NotUtf8)?;
    if has_control(&s) {
        return Err(EncodingProblem::Control);
    }
    Ok(s)
}

/// Percent-encodes everything but unreserved characters and the `:` and `/` that make a
/// server URL readable.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Param {
    Name,
    Server,
    UserRealm,
    UserName,
    Store,
}

impl Param {
    const ALL: [Param; 5] = [
        Param::Name,
        Param::Server,
        Param::UserRealm,
        Param::UserName,
        Param::Store,
    ];

    fn name(self) -> &'static str {
        match self {
            Param::Name => "name",
            Param::Server => "server",
            Param::UserRealm => "userrealm",
            Param::UserName => "username",
            Param::Store => "store",
        }
    }
}

impl LaunchRequest {
    /// Parses a launch URL.
    pub fn parse(url: &str) -> Result<LaunchRequest, LaunchError> {
        let url = url.trim();
        if url.len() > MAX_LAUNCH_URL_LEN {
            return Err(LaunchError::TooLong {
                len: url.len(),
                max: MAX_LAUNCH_URL_LEN,
            });
        }
        let rest = url
            .split_once("://")
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(LAUNCH_SCHEME))
            .map(|(_, rest)| rest)
            .ok_or_else(|| LaunchError::Scheme {
                url: url.to_string(),
            })?;
        if rest.contains('#') {
            return Err(LaunchError::Fragment);
        }
        let (action, query) = rest.split_once('?').unwrap_or((rest, ""));
        let action = action.strip_suffix('/').unwrap_or(action);
        if !action.eq_ignore_ascii_case("connect") {
            return Err(LaunchError::Action {
                action: action.to_string(),
            });
        }
        let mut values: [Option<String>; 5] = Default::default();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = part
                .split_once('=')
                .ok_or_else(|| LaunchError::NotAParameter {
                    part: part.to_string(),
                })?;
            let (slot, param) = Param::ALL
                .iter()
                .enumerate()
                .find(|(_, p)| p.name().eq_ignore_ascii_case(name))
                .ok_or_else(|| LaunchError::UnknownParameter {
                    name: name.to_string(),
                })?;
            if values[slot].is_some() {
                return Err(LaunchError::Repeated { name: param.name() });
            }
            let value = decode(raw).map_err(|problem| LaunchError::Encoding {
                name: param.name(),
                problem,
            })?;
            values[slot] = Some(value);
        }
        let [name, server, realm, user, store] = values;
        let present = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let name = present(name).ok_or(LaunchError::Missing { name: "name" })?;
        let server = present(server).ok_or(LaunchError::Missing { name: "server" })?;
        let server = ServerUrl::parse(&server).map_err(|source| LaunchError::Server { source })?;
        let store = match store {
            None => true,
            Some(v) if v.trim().eq_ignore_ascii_case("true") => true,
            Some(v) if v.trim().eq_ignore_ascii_case("false") => false,
            Some(value) => return Err(LaunchError::StoreValue { value }),
        };
        let request = LaunchRequest {
            name,
            server,
            realm: present(realm),
            user: present(user),
            store,
        };
        let len = request.to_url().len();
        if len > MAX_LAUNCH_URL_LEN {
            return Err(LaunchError::EncodedTooLong {
                len,
                max: MAX_LAUNCH_URL_LEN,
            });
        }
        Ok(request)
    }

    /// The name of the connection the URL opens: `<name> (Auto Launch)`.
    pub fn connection_name(&self) -> String {
        format!("{}{AUTO_LAUNCH_SUFFIX}", self.name)
    }

    /// The stored connection this request names (its name with either suffix), if any.
    pub fn stored<'s>(&self, store: &'s Store) -> Option<&'s Connection> {
        let unspaced = format!("{}{AUTO_LAUNCH_SUFFIX_UNSPACED}", self.name);
        store
            .get(&self.connection_name())
            .or_else(|| store.get(&unspaced))
    }

    /// The launch URL for this request (for admins to hand out), percent-encoded. For a
    /// request [`LaunchRequest::parse`] returned, it is within the length limit and parses
    /// back to `self`; fields changed afterwards are not checked again.
    pub fn to_url(&self) -> String {
        let mut url = format!(
            "{LAUNCH_SCHEME}://connect?name={}&server={}",
            encode(&self.name),
            encode(&self.server.to_string())
        );
        if let Some(r) = &self.realm {
            url.push_str(&format!("&userrealm={}", encode(r)));
        }
        if let Some(u) = &self.user {
            url.push_str(&format!("&username={}", encode(u)));
        }
        url.push_str(&format!("&store={}", self.store));
        url
    }
}

/// What opening a launch URL did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LaunchOutcome {
    /// A new connection was added to the store.
    Added(Connection),
    /// A connection of that name and server was already there; `updated` if the URL's
    /// realm or user name changed it (persisted only when the URL says `store=true`).
    Existing {
        connection: Connection,
        updated: bool,
    },
    /// `store=false` and no such connection: this connection is for this run only and is
    /// not in the store; the caller runs it and forgets it.
    Temporary(Connection),
}

impl LaunchOutcome {
    /// The connection to connect.
    pub fn connection(&self) -> &Connection {
        match self {
            LaunchOutcome::Added(c)
            | LaunchOutcome::Existing { connection: c, .. }
            | LaunchOutcome::Temporary(c) => c,
        }
    }
}

/// Applies a launch URL to the store, as the seed describes (see the module documentation).
pub fn apply_launch(
    store: &mut Store,
    request: &LaunchRequest,
) -> Result<LaunchOutcome, LaunchError> {
    let name = request.connection_name();
    if let Some(existing) = request.stored(store).cloned() {
        if !existing.urls.contains(&request.server) {
            return Err(LaunchError::NameConflict {
                existing: existing
                    .primary_url()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                name: existing.name,
                requested: request.server.to_string(),
            });
        }
        let mut connection = existing.clone();
        if let Some(r) = &request.realm {
            connection.realm = Some(r.clone());
        }
        if let Some(u) = &request.user {
            connection.user = Some(u.clone());
        }
        let updated = connection != existing;
        if updated && request.store {
            let (realm, user) = (connection.realm.clone(), connection.user.clone());
            connection = store
                .edit(&existing.name, |c| {
                    c.realm = realm;
                    c.user = user;
                })?
                .clone();
        }
        return Ok(LaunchOutcome::Existing {
            connection,
            updated,
        });
    }
    if !store.machine().user_connection {
        return Err(LaunchError::UserConnectionsNotAllowed);
    }
    let mut c = Connection::new(name, request.server.clone());
    c.realm = request.realm.clone();
    c.user = request.user.clone();
    c.source = Source::AutoLaunch;
    c.store = request.store;
    c.validate()?;
    if request.store {
        store.add(c.clone())?;
        Ok(LaunchOutcome::Added(c))
    } else {
        Ok(LaunchOutcome::Temporary(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's example, with the line breaks of the printed page removed.
    const SEED_URL: &str = "pulsesecureclient://connect?name=Test Connection&server=https://pcssamlpcs.psecure.net/&userrealm=Users&username=test_user&store=true";

    fn parse(s: &str) -> LaunchRequest {
        LaunchRequest::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match LaunchRequest::parse(s) {
            Ok(r) => panic!("{s} accepted: {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path().join("c.json")).unwrap();
        (dir, store)
    }

    #[test]
    fn the_seed_example() {
        let r = parse(SEED_URL);
        assert_eq!(r.name, "Test Connection");
        assert_eq!(r.server.to_string(), "https://pcssamlpcs.psecure.net/");
        assert_eq!(r.realm.as_deref(), Some("Users"));
        assert_eq!(r.user.as_deref(), Some("test_user"));
        assert!(r.store);
        assert_eq!(r.connection_name(), "Test Connection (Auto Launch)");
        // The same with the space percent-encoded, as a browser sends it.
        assert_eq!(
            parse(&SEED_URL.replace("Test Connection", "Test%20Connection")),
            r
        );
    }

    #[test]
    fn decoding_plus_case_and_defaults() {
        let r = parse(
            "PulseSecureClient://Connect/?NAME=a%2Bb+c&Server=10.0.0.1&username=al%C3%ADce+x",
        );
        assert_eq!(r.name, "a+b+c", "+ is a plus sign");
        assert_eq!(r.user.as_deref(), Some("alíce+x"));
        assert_eq!(r.server.to_string(), "https://10.0.0.1/");
        assert!(r.store, "store defaults to true");
        assert_eq!(r.realm, None);
        for (v, want) in [("TRUE", true), ("False", false), ("false", false)] {
            assert_eq!(
                parse(&format!(
                    "pulsesecureclient://connect?name=n&server=h.example&store={v}"
                ))
                .store,
                want
            );
        }
        // Empty optional values are absent; stray '&' are ignored.
        let r = parse("pulsesecureclient://connect?&name=n&&server=[2001:db8::1]:8443&userrealm=&");
        assert_eq!(r.realm, None);
        assert_eq!(r.server.port(), 8443);
        assert_eq!(
            parse("pulsesecureclient://connect?name=%20n%20&server=h.example").name,
            "n"
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        assert_eq!(
            err("https://vpn.example.com"),
            "\"https://vpn.example.com\" is not a launch URL: it must start with pulsesecureclient://"
        );
        assert!(
            err("pulsesecureclient:connect?name=a&server=b.example").contains("not a launch URL")
        );
        assert_eq!(
            err("pulsesecureclient://disconnect?name=a&server=b.example"),
            "launch URL action \"disconnect\" is not supported: the only action is connect"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a&server=b.example&password=x"),
            "launch URL parameter \"password\" is unknown (known: name, server, userrealm, username, store)"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a&name=b&server=b.example"),
            "launch URL parameter name is given more than once"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a&server"),
            "launch URL part \"server\" is not a parameter: expected name=value"
        );
        assert_eq!(
            err("pulsesecureclient://connect?server=b.example"),
            "the launch URL needs a name parameter"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=%20&server=b.example"),
            "the launch URL needs a name parameter"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a"),
            "the launch URL needs a server parameter"
        );
        assert_eq!(
            err("pulsesecureclient://connect"),
            "the launch URL needs a name parameter"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a&server=http://b.example"),
            "launch URL parameter server: server URL \"http://b.example\": plain http:// is refused; the gateway is reached over https://"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a&server=b.example&store=yes"),
            "launch URL parameter store is \"yes\"; allowed: true or false"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a%2&server=b.example"),
            "launch URL parameter name: '%' at position 2 is not followed by two hex digits"
        );
        assert!(
            err("pulsesecureclient://connect?name=a%zz&server=b.example").contains("position 2")
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a%FF&server=b.example"),
            "launch URL parameter name: the decoded value is not UTF-8"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a%0Ab&server=b.example"),
            "launch URL parameter name: the decoded value contains control characters"
        );
        assert_eq!(
            err("pulsesecureclient://connect?name=a&server=b.example#x"),
            "a launch URL has no #fragment"
        );
        assert!(
            err(&format!(
                "pulsesecureclient://connect?name={}",
                "a".repeat(9000)
            ))
            .contains("at most 8192")
        );
    }

    #[test]
    fn to_url_round_trips() {
        let mut r = parse(SEED_URL);
        assert_eq!(
            r.to_url(),
            "pulsesecureclient://connect?name=Test%20Connection&server=https://pcssamlpcs.psecure.net/&userrealm=Users&username=test_user&store=true"
        );
        r.name = "a&b=c%d+e f#g é".into();
        r.user = None;
        r.store = false;
        assert_eq!(parse(&r.to_url()), r);
    }

    /// Parses `text`; if that succeeds, the URL it prints must parse back to the same request.
    fn parse_round_trip(text: &str) -> Result<LaunchRequest, LaunchError> {
        let r = LaunchRequest::parse(text)?;
        let url = r.to_url();
        match LaunchRequest::parse(&url) {
            Ok(again) => assert_eq!(again, r, "{url}"),
            Err(e) => panic!("accepted, but the URL it prints does not parse: {e}"),
        }
        Ok(r)
    }

    /// Fuzz finding (launch_url): the server's length limit holds for its normal form
    /// (`https://l/...`), which is what the URL `to_url` prints carries, not only for the
    /// server as given (`l/...`). Otherwise a launch URL whose server has a long path of
    /// non-ASCII characters parses while the URL printed for it does not; such a server is
    /// refused.
    #[test]
    fn regression_a_long_non_ascii_server_path_prints_a_url_that_parses() {
        // The fuzz target's third form, with the fuzzer's input cut to its essence: `l/` and
        // 680 bytes that are not UTF-8, each of which the target turns into U+FFFD.
        let mut input = b"l/".to_vec();
        input.extend([0x83; 680]);
        let text = format!(
            "pulsesecureclient://connect?name=n&server={}",
            String::from_utf8_lossy(&input)
        );
        assert!(parse_round_trip(&text).is_err());
        assert!(
            err(&text).ends_with(
                "written in full (https://host[:port]/path) it is 2050 bytes long; at most 2048 are allowed"
            ),
            "{}",
            err(&text)
        );
        // Two characters fewer, the server fits written in full, and the URL round-trips.
        let fits = text.replacen('\u{FFFD}', "", 2);
        assert_eq!(
            parse_round_trip(&fits).unwrap().server.to_string().len(),
            2044
        );
    }

    /// The launch URL's own limit, in both directions: a name of raw non-ASCII characters
    /// fits as given but not percent-encoded ('é' is two bytes, six once encoded).
    #[test]
    fn the_length_limit_holds_for_the_printed_url_too() {
        let url = |name: &str| format!("pulsesecureclient://connect?name={name}&server=h.example");
        let text = url(&"é".repeat(2000));
        assert_eq!(text.len(), 4050, "under the limit as given");
        assert!(parse_round_trip(&text).is_err());
        assert_eq!(
            err(&text),
            "the launch URL is 12070 bytes long once percent-encoded; at most 8192 are accepted"
        );
        // At the limit exactly: accepted, printed in 8192 bytes, parsed back.
        let name = format!("abcd{}", "é".repeat(1353));
        let r = parse_round_trip(&url(&name)).unwrap();
        assert_eq!(r.to_url().len(), MAX_LAUNCH_URL_LEN);
        assert!(err(&url(&format!("{name}e"))).contains("8193 bytes long once percent-encoded"));
    }

    #[test]
    fn store_true_adds_a_suffixed_auto_launch_connection() {
        let (dir, mut store) = store();
        let r = parse(SEED_URL);
        let outcome = apply_launch(&mut store, &r).unwrap();
        let LaunchOutcome::Added(c) = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(c.name, "Test Connection (Auto Launch)");
        assert_eq!(c.source, Source::AutoLaunch);
        assert_eq!(c.user.as_deref(), Some("test_user"));
        assert_eq!(c.realm.as_deref(), Some("Users"));
        let (reopened, _) = Store::open(dir.path().join("c.json")).unwrap();
        assert_eq!(reopened.get("Test Connection (Auto Launch)"), Some(c));
        // Opening it again uses the stored connection.
        let again = apply_launch(&mut store, &r).unwrap();
        assert_eq!(
            again,
            LaunchOutcome::Existing {
                connection: c.clone(),
                updated: false
            }
        );
        assert_eq!(store.list().len(), 1);
    }

    #[test]
    fn store_false_is_temporary_and_never_written() {
        let (dir, mut store) = store();
        let r = parse(&SEED_URL.replace("store=true", "store=false"));
        let outcome = apply_launch(&mut store, &r).unwrap();
        let LaunchOutcome::Temporary(c) = &outcome else {
            panic!("{outcome:?}")
        };
        assert!(!c.store);
        assert_eq!(outcome.connection().name, "Test Connection (Auto Launch)");
        assert!(store.get(&c.name).is_none());
        assert!(!dir.path().join("c.json").exists());
        // The next launch creates a new one again.
        assert!(matches!(
            apply_launch(&mut store, &r).unwrap(),
            LaunchOutcome::Temporary(_)
        ));
    }

    #[test]
    fn same_name_with_another_server_is_an_error() {
        let (_dir, mut store) = store();
        apply_launch(&mut store, &parse(SEED_URL)).unwrap();
        let other = parse(&SEED_URL.replace("pcssamlpcs.psecure.net", "other.example"));
        let e = apply_launch(&mut store, &other).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a connection named \"Test Connection (Auto Launch)\" already exists for server https://pcssamlpcs.psecure.net/, not https://other.example/"
        );
        // The same server written differently is the same server.
        let same = parse(&SEED_URL.replace(
            "https://pcssamlpcs.psecure.net/",
            "PCSSAMLPCS.psecure.net:443",
        ));
        assert!(matches!(
            apply_launch(&mut store, &same).unwrap(),
            LaunchOutcome::Existing { .. }
        ));
        // Names are case-sensitive: connection1 is not Connection1.
        let lower = parse(
            &SEED_URL
                .replace("Test Connection", "test connection")
                .replace("pcssamlpcs.psecure.net", "other.example"),
        );
        assert!(matches!(
            apply_launch(&mut store, &lower).unwrap(),
            LaunchOutcome::Added(_)
        ));
    }

    #[test]
    fn the_unspaced_spelling_is_the_same_connection() {
        let (_dir, mut store) = store();
        let url = ServerUrl::parse("h.example").unwrap();
        let mut c = Connection::new("Test Connection(Auto Launch)", url);
        c.source = Source::AutoLaunch;
        store.add(c).unwrap();
        let r = parse(
            "pulsesecureclient://connect?name=Test%20Connection&server=h.example&username=bob",
        );
        let outcome = apply_launch(&mut store, &r).unwrap();
        let LaunchOutcome::Existing {
            connection,
            updated,
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert!(updated);
        assert_eq!(connection.name, "Test Connection(Auto Launch)");
        assert_eq!(
            store
                .get("Test Connection(Auto Launch)")
                .unwrap()
                .user
                .as_deref(),
            Some("bob")
        );
        let other = parse("pulsesecureclient://connect?name=Test%20Connection&server=x.example");
        assert!(matches!(
            apply_launch(&mut store, &other),
            Err(LaunchError::NameConflict { .. })
        ));
    }

    #[test]
    fn url_values_update_an_existing_connection_only_when_stored() {
        let (_dir, mut store) = store();
        apply_launch(&mut store, &parse(SEED_URL)).unwrap();
        let r = parse(
            &SEED_URL
                .replace("test_user", "other_user")
                .replace("store=true", "store=false"),
        );
        let LaunchOutcome::Existing {
            connection,
            updated,
        } = apply_launch(&mut store, &r).unwrap()
        else {
            panic!()
        };
        assert!(updated);
        assert_eq!(connection.user.as_deref(), Some("other_user"));
        assert_eq!(
            store
                .get("Test Connection (Auto Launch)")
                .unwrap()
                .user
                .as_deref(),
            Some("test_user"),
            "store=false leaves the stored connection alone"
        );
        let r = parse(&SEED_URL.replace("test_user", "other_user"));
        apply_launch(&mut store, &r).unwrap();
        assert_eq!(
            store
                .get("Test Connection (Auto Launch)")
                .unwrap()
                .user
                .as_deref(),
            Some("other_user")
        );
    }

    #[test]
    fn refused_when_user_connections_are_not_allowed() {
        let (_dir, mut store) = store();
        let mut m = store.machine().clone();
        m.user_connection = false;
        store.set_machine(m).unwrap();
        let e = apply_launch(&mut store, &parse(SEED_URL)).unwrap_err();
        assert!(matches!(e, LaunchError::UserConnectionsNotAllowed));
        assert_eq!(
            e.to_string(),
            "the machine settings do not allow user connections"
        );
        let e = apply_launch(
            &mut store,
            &parse(&SEED_URL.replace("store=true", "store=false")),
        )
        .unwrap_err();
        assert!(matches!(e, LaunchError::UserConnectionsNotAllowed));
    }

    #[test]
    fn an_over_long_name_is_refused_by_the_store_rules() {
        let (_dir, mut store) = store();
        let r = parse(&format!(
            "pulsesecureclient://connect?name={}&server=h.example",
            "n".repeat(190)
        ));
        let e = apply_launch(&mut store, &r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a connection name has at most 200 characters; this one has 204"
        );
    }
}
