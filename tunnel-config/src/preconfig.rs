//! `.pulsepreconfig` files: the admin's connection set (seed 004, "Adding a Configuration
//! to a New Ivanti Secure Access Client Installation", the example at line ~306).
//!
//! ```text
//! ; comment
//! schema version { version: "1" }
//! machine settings { allow-save: "true"  dynamic-trust: "false" ... }
//! ive "8211f09f-..." { friendly-name: "SA"  uri: "10.64.78.34"  connection-policy: "automatic" ... }
//! 8021x "06cc1f68-..." { ... }          <- reported and skipped
//! ```
//!
//! This module owns the syntax (sections of `key: "value"` entries), which keys mean
//! something on Linux, and the import rules (the binding server, dynamic connections). What
//! it does not understand is reported and skipped, never fatal; only broken syntax, an
//! unknown schema version or an invalid client-wide setting fail the whole file.
//!
//! Syntax details beyond the seed's example, chosen for robustness:
//! - Comments run from `;` or `#` to the end of the line (exported files start with `;`
//!   lines); a UTF-8 byte order mark and CRLF line ends are accepted.
//! - Strings are double-quoted on one line; `\"` and `\\` are escapes and any other
//!   backslash is kept as it is, because Windows paths appear unescaped in real files.
//!   Unquoted values (`version: 1`) are accepted too.
//! - Sections may nest; nested sections are reported and skipped.
//! - A URL list may be given as several `uri` entries, as a `uri-list` entry with URLs
//!   separated by `;`, `,` or whitespace, or both; the first `uri` is the primary URL and
//!   duplicates are dropped. `uri-list-use-last-connected: "true"` selects
//!   [`UrlMode::MostRecent`], `uri-list-randomize: "true"` [`UrlMode::Random`] (both: most
//!   recent, with a warning).
//! - `server-pin: "HOST pin-sha256:BASE64"` (repeatable) is the administrator's pin for the
//!   gateway HOST, which must be the host of one of the connection's URLs; a certificate
//!   with that key is trusted for that host (tunneld's trust rules, docs/client.md). A
//!   malformed entry skips the connection rather than importing it without the pin.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
};

use crate::{
    events::Level,
    pin::Pin,
    store::{
        Connection, ConnectionError, ConnectionPolicy, Identity, MachineSettings, Source, Store,
        StoreError, UrlMode,
    },
    text::{Position, Shown},
    url::{ServerUrl, UrlError},
};

/// Larger than any real connection set; bounds the work on hostile input.
pub const MAX_PRECONFIG_BYTES: usize = 4 * 1024 * 1024;
/// Nesting deeper than this is refused rather than recursed into.
const MAX_DEPTH: usize = 16;
/// The only schema version the seed shows.
const SCHEMA_VERSION: &str = "1";

/// A parsed `.pulsepreconfig` file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Preconfig {
    /// `schema version { version }`, `None` if the file has no such section.
    pub schema_version: Option<String>,
    /// `machine settings`, if the file has that section; keys it does not set take the
    /// seed's defaults (the section is the whole client-wide configuration).
    pub machine: Option<MachineSettings>,
    /// The `ive` sections that make connections.
    pub connections: Vec<Connection>,
    /// Sections that were not imported, and why.
    pub skipped: Vec<SkippedSection>,
    /// Keys and sections that were ignored, and other things worth telling the admin.
    pub warnings: Vec<PreconfigWarning>,
}

/// A section that was not imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedSection {
    /// The section kind, e.g. `8021x`.
    pub kind: String,
    /// The section's quoted ID, if it had one.
    pub id: Option<String>,
    pub position: Position,
    pub reason: SkipReason,
}

impl fmt::Display for SkippedSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: section {}", self.position, self.kind)?;
        if let Some(id) = &self.id {
            write!(f, " {}", Shown(id))?;
        }
        write!(f, " skipped: {}", self.reason)
    }
}

/// Why a section was not imported.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// A kind of connection this client does not run (802.1X).
    NotOnLinux,
    /// A section kind this parser does not know.
    UnknownKind,
    /// A second section of a kind that may appear once, or a second `ive` with the same
    /// GUID.
    Duplicate,
    /// Another `ive` section already uses the name.
    NameTaken {
        name: String,
    },
    /// `use-for-connect: "false"`: the connection is not for VPN access.
    NotForConnect,
    MissingName,
    NoUrl,
    BadUrl(UrlError),
    InvalidValue {
        key: String,
        value: String,
        allowed: &'static str,
    },
    Invalid(ConnectionError),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotOnLinux => {
                f.write_str("this kind of connection is not supported on Linux")
            }
            SkipReason::UnknownKind => f.write_str("unknown section kind"),
            SkipReason::Duplicate => f.write_str("a section like it came earlier"),
            SkipReason::NameTaken { name } => {
                write!(
                    f,
                    "the name {} is used by an earlier connection",
                    Shown(name)
                )
            }
            SkipReason::NotForConnect => f.write_str("use-for-connect is false"),
            SkipReason::MissingName => f.write_str("no friendly-name"),
            SkipReason::NoUrl => f.write_str("no uri or uri-list"),
            SkipReason::BadUrl(e) => write!(f, "{e}"),
            SkipReason::InvalidValue {
                key,
                value,
                allowed,
            } => write!(f, "{key} is {}; allowed: {allowed}", Shown(value)),
            SkipReason::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// Something ignored or doubtful, that did not stop a section from being used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreconfigWarning {
    pub position: Position,
    /// The section it was found in (`machine settings`, `ive`...), empty at top level.
    pub section: String,
    pub kind: WarningKind,
}

impl PreconfigWarning {
    /// How much an admin should care: unknown and doubtful things are warnings, settings
    /// that only matter on other platforms are information.
    pub fn level(&self) -> Level {
        match self.kind {
            WarningKind::NotOnLinux { .. } => Level::Info,
            _ => Level::Warning,
        }
    }
}

impl fmt::Display for PreconfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.position)?;
        if !self.section.is_empty() {
            write!(f, "{}: ", self.section)?;
        }
        write!(f, "{}", self.kind)
    }
}

/// What a [`PreconfigWarning`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarningKind {
    /// A key this parser does not know: ignored.
    UnknownKey { key: String },
    /// A known key that only means something on other platforms: ignored.
    NotOnLinux { key: String },
    /// A key given again; the last value is used.
    RepeatedKey { key: String },
    /// A section inside a section: ignored.
    NestedSection { kind: String },
    /// Both `uri-list-use-last-connected` and `uri-list-randomize` are true.
    UrlModeConflict,
    /// The file has no `schema version` section; version 1 is assumed.
    NoSchemaVersion,
}

impl fmt::Display for WarningKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WarningKind::UnknownKey { key } => write!(f, "unknown key {} ignored", Shown(key)),
            WarningKind::NotOnLinux { key } => {
                write!(f, "{} has no meaning on Linux and is ignored", Shown(key))
            }
            WarningKind::RepeatedKey { key } => {
                write!(f, "{} is given again; the last value is used", Shown(key))
            }
            WarningKind::NestedSection { kind } => {
                write!(f, "nested section {} ignored", Shown(kind))
            }
            WarningKind::UrlModeConflict => f.write_str(
                "uri-list-use-last-connected and uri-list-randomize are both true; most-recent is used",
            ),
            WarningKind::NoSchemaVersion => {
                f.write_str("no schema version section; version 1 is assumed")
            }
        }
    }
}

/// What is wrong with the syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyntaxProblem {
    UnexpectedCharacter {
        ch: char,
    },
    UnterminatedString,
    /// Found `found` where `expected` should be.
    Expected {
        expected: &'static str,
        found: String,
    },
    UnmatchedCloseBrace,
    UnclosedSection {
        kind: String,
    },
    TooDeep {
        max: usize,
    },
}

impl fmt::Display for SyntaxProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyntaxProblem::UnexpectedCharacter { ch } => write!(f, "unexpected character {ch:?}"),
            SyntaxProblem::UnterminatedString => {
                f.write_str("string not closed before the end of the line")
            }
            SyntaxProblem::Expected { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            SyntaxProblem::UnmatchedCloseBrace => f.write_str("'}' without a section to close"),
            SyntaxProblem::UnclosedSection { kind } => {
                write!(f, "section {} is not closed with '}}'", Shown(kind))
            }
            SyntaxProblem::TooDeep { max } => write!(f, "sections nested deeper than {max}"),
        }
    }
}

/// Why a file could not be imported at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreconfigError {
    #[error("{position}: {problem}")]
    Syntax {
        position: Position,
        problem: SyntaxProblem,
    },
    #[error("the file is {len} bytes; at most {max} are accepted")]
    TooLarge { len: usize, max: usize },
    #[error("the file is not UTF-8 text ({position})")]
    NotUtf8 { position: Position },
    #[error("{position}: schema version {} is not supported (only \"1\")", Shown(.version))]
    UnsupportedSchema { position: Position, version: String },
    #[error("{position}: machine settings: {key} is {}; allowed: {allowed}", Shown(.value))]
    MachineSetting {
        position: Position,
        key: String,
        value: String,
        allowed: &'static str,
    },
}

// ---------------------------------------------------------------------------------------
// Syntax: text -> sections

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Str(String),
    Open,
    Close,
    Colon,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("word {}", Shown(w)),
            Token::Str(s) => format!("string {}", Shown(s)),
            Token::Open => "'{'".into(),
            Token::Close => "'}'".into(),
            Token::Colon => "':'".into(),
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn tokenize(text: &str) -> Result<Vec<(Token, Position)>, PreconfigError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut column) = (1usize, 1usize);
    let syntax = |line, column, problem| PreconfigError::Syntax {
        position: Position { line, column },
        problem,
    };
    while let Some(&c) = chars.peek() {
        let here = Position { line, column };
        match c {
            '\n' => {
                chars.next();
                line += 1;
                column = 1;
            }
            c if c.is_whitespace() => {
                chars.next();
                column += 1;
            }
            ';' | '#' => {
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                    column += 1;
                }
            }
            '{' | '}' | ':' => {
                chars.next();
                column += 1;
                let t = match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    _ => Token::Colon,
                };
                tokens.push((t, here));
            }
            '"' => {
                chars.next();
                column += 1;
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None | Some('\n') => {
                            return Err(syntax(
                                here.line,
                                here.column,
                                SyntaxProblem::UnterminatedString,
                            ));
                        }
                        Some('"') => {
                            column += 1;
                            break;
                        }
                        Some('\\') => {
                            column += 1;
                            match chars.peek() {
                                Some(&e @ ('"' | '\\')) => {
                                    chars.next();
                                    column += 1;
                                    s.push(e);
                                }
                                _ => s.push('\\'),
                            }
                        }
                        Some(c) => {
                            column += 1;
                            s.push(c);
                        }
                    }
                }
                tokens.push((Token::Str(s), here));
            }
            c if is_word_char(c) => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if !is_word_char(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                    column += 1;
                }
                tokens.push((Token::Word(w), here));
            }
            other => {
                return Err(syntax(
                    line,
                    column,
                    SyntaxProblem::UnexpectedCharacter { ch: other },
                ));
            }
        }
    }
    Ok(tokens)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    key: String,
    value: String,
    position: Position,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Section {
    /// The header's words joined by one space, e.g. `machine settings`.
    kind: String,
    id: Option<String>,
    position: Position,
    entries: Vec<Entry>,
    children: Vec<Section>,
}

struct Parser {
    tokens: Vec<(Token, Position)>,
    at: usize,
    end: Position,
}

impl Parser {
    fn peek(&self) -> Option<&(Token, Position)> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<(Token, Position)> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn found(&self) -> (String, Position) {
        match self.peek() {
            Some((t, p)) => (t.describe(), *p),
            None => ("the end of the file".into(), self.end),
        }
    }

    fn expected(&self, expected: &'static str) -> PreconfigError {
        let (found, position) = self.found();
        PreconfigError::Syntax {
            position,
            problem: SyntaxProblem::Expected { expected, found },
        }
    }

    /// Sections until the end of the file.
    fn file(&mut self) -> Result<Vec<Section>, PreconfigError> {
        let mut sections = Vec::new();
        while let Some((t, p)) = self.peek() {
            match t {
                Token::Word(_) => sections.push(self.section(0)?),
                Token::Close => {
                    return Err(PreconfigError::Syntax {
                        position: *p,
                        problem: SyntaxProblem::UnmatchedCloseBrace,
                    });
                }
                _ => return Err(self.expected("a section name")),
            }
        }
        Ok(sections)
    }

    /// `word+ "id"? { (key: value | section)* }`, the first word already peeked.
    fn section(&mut self, depth: usize) -> Result<Section, PreconfigError> {
        let mut words = Vec::new();
        let mut position = self.end;
        while let Some((Token::Word(w), p)) = self.peek() {
            if words.is_empty() {
                position = *p;
            }
            words.push(w.clone());
            self.at += 1;
        }
        let kind = words.join(" ");
        if depth >= MAX_DEPTH {
            return Err(PreconfigError::Syntax {
                position,
                problem: SyntaxProblem::TooDeep { max: MAX_DEPTH },
            });
        }
        let id = match self.peek() {
            Some((Token::Str(s), _)) => {
                let s = s.clone();
                self.at += 1;
                Some(s)
            }
            _ => None,
        };
        match self.next() {
            Some((Token::Open, _)) => {}
            _ => {
                self.at -= 1;
                return Err(self.expected("'{' after a section name"));
            }
        }
        let mut section = Section {
            kind,
            id,
            position,
            entries: Vec::new(),
            children: Vec::new(),
        };
        loop {
            let Some((t, p)) = self.peek().cloned() else {
                return Err(PreconfigError::Syntax {
                    position: section.position,
                    problem: SyntaxProblem::UnclosedSection { kind: section.kind },
                });
            };
            match t {
                Token::Close => {
                    self.at += 1;
                    return Ok(section);
                }
                Token::Word(key) => {
                    // `key "value"` without the colon would otherwise read as a nested
                    // section header and fail later with a confusing message.
                    if let (Some((Token::Str(v), vp)), next) =
                        (self.tokens.get(self.at + 1), self.tokens.get(self.at + 2))
                        && !matches!(next, Some((Token::Open, _)))
                    {
                        return Err(PreconfigError::Syntax {
                            position: *vp,
                            problem: SyntaxProblem::Expected {
                                expected: "':' between a key and its value",
                                found: Token::Str(v.clone()).describe(),
                            },
                        });
                    }
                    if let Some((Token::Colon, _)) = self.tokens.get(self.at + 1) {
                        self.at += 2;
                        let value = match self.next() {
                            Some((Token::Str(v) | Token::Word(v), _)) => v,
                            _ => {
                                self.at -= 1;
                                return Err(self.expected("a value after ':'"));
                            }
                        };
                        section.entries.push(Entry {
                            key,
                            value,
                            position: p,
                        });
                    } else {
                        section.children.push(self.section(depth + 1)?);
                    }
                }
                _ => return Err(self.expected("a key or '}'")),
            }
        }
    }
}

fn parse_sections(text: &str) -> Result<Vec<Section>, PreconfigError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        end: crate::text::position_of(text, text.len()),
    };
    parser.file()
}

// ---------------------------------------------------------------------------------------
// Meaning: sections -> Preconfig

/// Machine settings keys that describe the file, not the client: accepted silently.
const MACHINE_METADATA: &[&str] = &[
    "guid",
    "connection-source",
    "connection-set-owner",
    "connection-set-name",
    "connection-set-last-modified",
    "connection-set-download-host",
];

/// Machine settings keys known from Pulse clients that mean nothing for this client.
const MACHINE_NOT_ON_LINUX: &[&str] = &[
    "splashscreen-display",
    "wireless-suppression",
    "eap-fragment-size",
    "embedded-browser-saml",
    "enable-browser",
    "embedded-cef-browser-saml",
    "FIPSClient",
    "clear-smart-card-pin-cache",
    "block-traffic-on-vpn-disconnect",
    "lockdown-exceptions-configured",
];

/// `ive` keys that describe the file: accepted silently.
const IVE_METADATA: &[&str] = &[
    "version",
    "connection-source",
    "factory-default",
    "this-server",
];

/// `ive` keys known from Pulse clients that mean nothing for this client.
const IVE_NOT_ON_LINUX: &[&str] = &[
    "connection-policy-override",
    "use-for-secure-meetings",
    "client-certificate-location-system",
    "client-certificate-selection-rule",
    "enable-stealth-mode",
    "show-stealth-connection",
    "sso-cached-credential",
    "reconnect-at-session-timeout",
];

fn ive_not_on_linux(key: &str) -> bool {
    IVE_NOT_ON_LINUX.contains(&key) || key.starts_with("client-certificate-matching-rule-")
}

const BOOL_ALLOWED: &str = "\"true\" or \"false\"";

fn boolean(v: &str) -> Option<bool> {
    if v.trim().eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.trim().eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

impl Preconfig {
    /// Parses the text of a `.pulsepreconfig` file.
    pub fn parse(text: &str) -> Result<Preconfig, PreconfigError> {
        if text.len() > MAX_PRECONFIG_BYTES {
            return Err(PreconfigError::TooLarge {
                len: text.len(),
                max: MAX_PRECONFIG_BYTES,
            });
        }
        // Files saved on Windows may start with a byte order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let sections = parse_sections(text)?;
        let mut pre = Preconfig {
            schema_version: None,
            machine: None,
            connections: Vec::new(),
            skipped: Vec::new(),
            warnings: Vec::new(),
        };
        // Sets, not scans: a 4 MiB file holds tens of thousands of sections, and every
        // lookup below must stay constant-time for parsing to stay linear.
        let mut guids: HashSet<String> = HashSet::new();
        let mut names: HashSet<String> = HashSet::new();
        for section in sections {
            let skip = |reason| SkippedSection {
                kind: section.kind.clone(),
                id: section.id.clone(),
                position: section.position,
                reason,
            };
            match section.kind.to_ascii_lowercase().as_str() {
                "schema version" => {
                    if pre.schema_version.is_some() {
                        pre.skipped.push(skip(SkipReason::Duplicate));
                        continue;
                    }
                    pre.schema_version = Some(schema(&section, &mut pre.warnings)?);
                }
                "machine settings" => {
                    if pre.machine.is_some() {
                        pre.skipped.push(skip(SkipReason::Duplicate));
                        continue;
                    }
                    pre.machine = Some(machine(&section, &mut pre.warnings)?);
                }
                "ive" => match connection(&section, &mut pre.warnings) {
                    Err(reason) => pre.skipped.push(skip(reason)),
                    Ok(c) => {
                        if let Some(g) = &c.guid {
                            if guids.contains(g) {
                                pre.skipped.push(skip(SkipReason::Duplicate));
                                continue;
                            }
                            guids.insert(g.clone());
                        }
                        if !names.insert(c.name.clone()) {
                            pre.skipped
                                .push(skip(SkipReason::NameTaken { name: c.name }));
                            continue;
                        }
                        pre.connections.push(c);
                    }
                },
                "8021x" => pre.skipped.push(skip(SkipReason::NotOnLinux)),
                _ => pre.skipped.push(skip(SkipReason::UnknownKind)),
            }
        }
        if pre.schema_version.is_none() {
            pre.warnings.push(PreconfigWarning {
                position: Position { line: 1, column: 1 },
                section: String::new(),
                kind: WarningKind::NoSchemaVersion,
            });
        }
        Ok(pre)
    }

    /// Parses a file's bytes; they must be UTF-8.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Preconfig, PreconfigError> {
        if bytes.len() > MAX_PRECONFIG_BYTES {
            return Err(PreconfigError::TooLarge {
                len: bytes.len(),
                max: MAX_PRECONFIG_BYTES,
            });
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Preconfig::parse(text),
            Err(e) => {
                let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
                Err(PreconfigError::NotUtf8 {
                    position: crate::text::position_of(valid, valid.len()),
                })
            }
        }
    }

    /// The warnings about keys this parser does not know.
    pub fn unknown_keys(&self) -> impl Iterator<Item = &PreconfigWarning> {
        self.warnings
            .iter()
            .filter(|w| matches!(w.kind, WarningKind::UnknownKey { .. }))
    }
}

fn nested_warnings(section: &Section, warnings: &mut Vec<PreconfigWarning>) {
    for child in &section.children {
        warnings.push(PreconfigWarning {
            position: child.position,
            section: section.kind.clone(),
            kind: WarningKind::NestedSection {
                kind: child.kind.clone(),
            },
        });
    }
}

/// Entries with repeats of the same key reported (the last value wins). `repeatable` keys
/// are left alone: they are lists.
fn entries<'a>(
    section: &'a Section,
    repeatable: &[&str],
    warnings: &mut Vec<PreconfigWarning>,
) -> Vec<&'a Entry> {
    let mut out: Vec<Option<&Entry>> = Vec::with_capacity(section.entries.len());
    let mut last: HashMap<&str, usize> = HashMap::new();
    for e in &section.entries {
        if !repeatable.contains(&e.key.as_str())
            && let Some(i) = last.insert(e.key.as_str(), out.len())
        {
            warnings.push(PreconfigWarning {
                position: e.position,
                section: section.kind.clone(),
                kind: WarningKind::RepeatedKey { key: e.key.clone() },
            });
            out[i] = None;
        }
        out.push(Some(e));
    }
    out.into_iter().flatten().collect()
}

fn schema(
    section: &Section,
    warnings: &mut Vec<PreconfigWarning>,
) -> Result<String, PreconfigError> {
    nested_warnings(section, warnings);
    let mut version = None;
    for e in entries(section, &[], warnings) {
        if e.key == "version" {
            if e.value.trim() != SCHEMA_VERSION {
                return Err(PreconfigError::UnsupportedSchema {
                    position: e.position,
                    version: e.value.clone(),
                });
            }
            version = Some(e.value.trim().to_string());
        } else {
            warnings.push(unknown_key(section, e));
        }
    }
    Ok(version.unwrap_or_else(|| SCHEMA_VERSION.to_string()))
}

fn unknown_key(section: &Section, e: &Entry) -> PreconfigWarning {
    PreconfigWarning {
        position: e.position,
        section: section.kind.clone(),
        kind: WarningKind::UnknownKey { key: e.key.clone() },
    }
}

fn not_on_linux(section: &Section, e: &Entry) -> PreconfigWarning {
    PreconfigWarning {
        position: e.position,
        section: section.kind.clone(),
        kind: WarningKind::NotOnLinux { key: e.key.clone() },
    }
}

/// The client-wide settings. An invalid value here fails the file: importing with a
/// misread trust or lock-down setting is worse than not importing.
fn machine(
    section: &Section,
    warnings: &mut Vec<PreconfigWarning>,
) -> Result<MachineSettings, PreconfigError> {
    nested_warnings(section, warnings);
    let mut m = MachineSettings::default();
    let invalid = |e: &Entry, allowed| PreconfigError::MachineSetting {
        position: e.position,
        key: e.key.clone(),
        value: e.value.clone(),
        allowed,
    };
    for e in entries(section, &[], warnings) {
        let flag = match e.key.as_str() {
            "allow-save" => Some(&mut m.allow_save),
            "user-connection" => Some(&mut m.user_connection),
            "dynamic-trust" => Some(&mut m.dynamic_trust),
            "dynamic-connection" => Some(&mut m.dynamic_connection),
            // The seed calls the option "VPN only access" and describes it as lock-down
            // mode; exported files name it `lock-down`.
            "lock-down" | "vpn-only-access" => Some(&mut m.vpn_only_access),
            "captive-portal-detection" => Some(&mut m.captive_portal_detection),
            _ => None,
        };
        if let Some(flag) = flag {
            *flag = boolean(&e.value).ok_or_else(|| invalid(e, BOOL_ALLOWED))?;
            continue;
        }
        match e.key.as_str() {
            "server-id" => m.server_id = non_empty(&e.value),
            "version" => {
                let v = e.value.trim();
                if !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(e, "a whole number"));
                }
                m.version = Some(v.parse().map_err(|_| invalid(e, "a whole number"))?);
            }
            k if MACHINE_METADATA.contains(&k) => {}
            k if MACHINE_NOT_ON_LINUX.contains(&k) => warnings.push(not_on_linux(section, e)),
            _ => warnings.push(unknown_key(section, e)),
        }
    }
    Ok(m)
}

fn non_empty(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// One `ive` section as a connection, or why it is skipped.
fn connection(
    section: &Section,
    warnings: &mut Vec<PreconfigWarning>,
) -> Result<Connection, SkipReason> {
    nested_warnings(section, warnings);
    let invalid = |e: &Entry, allowed| SkipReason::InvalidValue {
        key: e.key.clone(),
        value: e.value.clone(),
        allowed,
    };
    let mut name = None;
    let mut uris: Vec<&str> = Vec::new();
    let mut list: Vec<&str> = Vec::new();
    let (mut most_recent, mut random) = (false, false);
    let mut mode_position = section.position;
    let mut policy = ConnectionPolicy::default();
    let mut identity = Identity::default();
    let mut lock_down = false;
    let mut guid = section.id.as_deref().and_then(non_empty);
    let mut server_id = None;
    let mut pins: BTreeMap<String, Vec<Pin>> = BTreeMap::new();
    for e in entries(section, &["uri", "server-pin"], warnings) {
        let v = e.value.as_str();
        match e.key.as_str() {
            "friendly-name" => name = non_empty(v),
            "uri" => uris.push(v),
            "uri-list" => list.extend(
                v.split(|c: char| c == ';' || c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty()),
            ),
            "uri-list-use-last-connected" => {
                most_recent = boolean(v).ok_or_else(|| invalid(e, BOOL_ALLOWED))?;
                mode_position = e.position;
            }
            "uri-list-randomize" => {
                random = boolean(v).ok_or_else(|| invalid(e, BOOL_ALLOWED))?;
                mode_position = e.position;
            }
            "connection-policy" => {
                policy = match v.trim().to_ascii_lowercase().as_str() {
                    "automatic" => ConnectionPolicy::Automatic,
                    "manual" => ConnectionPolicy::Manual,
                    _ => return Err(invalid(e, "\"automatic\" or \"manual\"")),
                }
            }
            "connection-identity" => {
                identity = match v.trim().to_ascii_lowercase().as_str() {
                    "user" => Identity::User,
                    "machine" | "machine-only" => Identity::Machine,
                    _ => return Err(invalid(e, "\"user\", \"machine\" or \"machine-only\"")),
                }
            }
            "connection-lock-down" => {
                lock_down = boolean(v).ok_or_else(|| invalid(e, BOOL_ALLOWED))?;
            }
            "use-for-connect" => {
                if !boolean(v).ok_or_else(|| invalid(e, BOOL_ALLOWED))? {
                    return Err(SkipReason::NotForConnect);
                }
            }
            "guid" => guid = non_empty(v).or(guid),
            "server-id" => server_id = non_empty(v),
            "server-pin" => {
                let (host, pin) = server_pin(v).ok_or_else(|| invalid(e, SERVER_PIN_ALLOWED))?;
                let list = pins.entry(host).or_default();
                if !list.contains(&pin) {
                    list.push(pin);
                }
            }
            "friendly-name-description" | "description" => {}
            k if IVE_METADATA.contains(&k) => {}
            k if ive_not_on_linux(k) => warnings.push(not_on_linux(section, e)),
            _ => warnings.push(unknown_key(section, e)),
        }
    }
    let name = name.ok_or(SkipReason::MissingName)?;
    let mut urls: Vec<ServerUrl> = Vec::new();
    let mut seen: HashSet<ServerUrl> = HashSet::new();
    for text in uris.into_iter().chain(list) {
        let url = ServerUrl::parse(text).map_err(SkipReason::BadUrl)?;
        if seen.insert(url.clone()) {
            urls.push(url);
        }
    }
    let first = urls.first().cloned().ok_or(SkipReason::NoUrl)?;
    if most_recent && random {
        warnings.push(PreconfigWarning {
            position: mode_position,
            section: section.kind.clone(),
            kind: WarningKind::UrlModeConflict,
        });
    }
    let mut c = Connection::new(name, first);
    c.urls = urls;
    c.url_mode = if most_recent {
        UrlMode::MostRecent
    } else if random {
        UrlMode::Random
    } else {
        UrlMode::Top
    };
    c.source = Source::Preconfig;
    c.policy = policy;
    c.identity = identity;
    c.lock_down = lock_down;
    c.guid = guid;
    c.server_id = server_id;
    c.pins = pins;
    c.validate().map_err(SkipReason::Invalid)?;
    Ok(c)
}

/// What a `server-pin` entry holds.
const SERVER_PIN_ALLOWED: &str = "a gateway host of the connection's URLs and its key's pin, e.g. \"vpn.example.com pin-sha256:BASE64\"";

/// A `server-pin` entry, `HOST pin-sha256:BASE64`: the host as a URL names it (normalised
/// as TLS sees it) and the pin.
fn server_pin(v: &str) -> Option<(String, Pin)> {
    let mut words = v.split_whitespace();
    let (host, pin) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let url = ServerUrl::parse(host).ok()?;
    // A bare host only: pins are per host, and a port or path would suggest otherwise.
    if url.port() != crate::url::HTTPS_PORT || url.path() != "/" {
        return None;
    }
    Some((url.host_name(), Pin::parse(pin).ok()?))
}

// ---------------------------------------------------------------------------------------
// Import: Preconfig -> Store

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    pub machine: MachineOutcome,
    /// Names of connections added.
    pub added: Vec<String>,
    /// Names of connections replaced (same GUID as a stored one).
    pub updated: Vec<String>,
    /// Connections not imported: name and reason.
    pub refused: Vec<(String, ImportRefusal)>,
}

/// What happened to the file's machine settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MachineOutcome {
    /// The file has none.
    Absent,
    Applied,
    /// The client is bound to another server; the seed: "If the server-id does not match,
    /// the client ignores the update."
    OtherServer {
        bound_to: String,
        offered: Option<String>,
    },
    /// The same server, but an older configuration version than the one in force.
    Older {
        have: u32,
        offered: u32,
    },
}

/// Why a connection of the file was not imported.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportRefusal {
    /// A stored connection that is not this one (another GUID) has the name.
    NameTaken,
    /// The stored connection with this GUID belongs to the binding server, and the file
    /// comes from another.
    OtherServer { bound_to: String },
    /// The file comes from another server and the binding server does not allow dynamic
    /// connections.
    DynamicConnectionsOff,
}

impl fmt::Display for ImportRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportRefusal::NameTaken => f.write_str("another connection already has this name"),
            ImportRefusal::OtherServer { bound_to } => write!(
                f,
                "it belongs to the binding server {} and the file comes from another",
                Shown(bound_to)
            ),
            ImportRefusal::DynamicConnectionsOff => f.write_str(
                "the file comes from another server and dynamic connections are not allowed",
            ),
        }
    }
}

impl Store {
    /// Imports a parsed `.pulsepreconfig` file in one atomic write, following the seed's
    /// binding rules: the first server whose configuration is imported binds the client;
    /// later, only that server's files may change the machine settings or the connections it
    /// provided (and not to an older version), while other servers may only add new
    /// connections, and only when dynamic connections are allowed. A re-imported connection
    /// (same GUID) takes the file's URLs, mode and policy and keeps the user's own settings
    /// (user, realm, KVPs, scope, client certificate, last URL).
    pub fn import(&mut self, pre: &Preconfig) -> Result<ImportReport, StoreError> {
        let bound = self.machine().server_id.clone();
        let offered = pre.machine.as_ref().and_then(|m| m.server_id.clone());
        let same_server = match (&bound, &offered) {
            (None, _) => true,
            (Some(b), Some(o)) => b == o,
            (Some(_), None) => false,
        };
        let mut machine = self.machine().clone();
        let machine_outcome = match (&pre.machine, &bound) {
            (None, _) => MachineOutcome::Absent,
            (Some(_), Some(b)) if !same_server => MachineOutcome::OtherServer {
                bound_to: b.clone(),
                offered: offered.clone(),
            },
            (Some(m), _) => match (self.machine().version, m.version) {
                (Some(have), Some(offered)) if bound.is_some() && offered < have => {
                    MachineOutcome::Older { have, offered }
                }
                _ => {
                    machine = m.clone();
                    MachineOutcome::Applied
                }
            },
        };
        let mut connections = self.list().to_vec();
        let mut report = ImportReport {
            machine: machine_outcome,
            added: Vec::new(),
            updated: Vec::new(),
            refused: Vec::new(),
        };
        // Indexes instead of scans, so that importing a large file stays linear.
        let mut by_guid: HashMap<String, usize> = HashMap::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (i, c) in connections.iter().enumerate() {
            if let Some(g) = &c.guid {
                by_guid.entry(g.clone()).or_insert(i);
            }
            by_name.insert(c.name.clone(), i);
        }
        for new in &pre.connections {
            let existing = new.guid.as_ref().and_then(|g| by_guid.get(g).copied());
            let name_taken =
                |except: Option<usize>| by_name.get(&new.name).is_some_and(|i| Some(*i) != except);
            match existing {
                Some(i) => {
                    if !same_server {
                        report.refused.push((
                            new.name.clone(),
                            ImportRefusal::OtherServer {
                                bound_to: bound.clone().unwrap_or_default(),
                            },
                        ));
                    } else if name_taken(Some(i)) {
                        report
                            .refused
                            .push((new.name.clone(), ImportRefusal::NameTaken));
                    } else {
                        let old = &connections[i];
                        let mut merged = new.clone();
                        merged.user = old.user.clone();
                        merged.realm = old.realm.clone();
                        merged.kvps = old.kvps.clone();
                        merged.scope = old.scope.clone();
                        merged.client_certificate = old.client_certificate.clone();
                        merged.last_url = old
                            .last_url
                            .and_then(|l| old.urls.get(l))
                            .and_then(|u| merged.urls.iter().position(|x| x == u));
                        by_name.remove(&connections[i].name);
                        by_name.insert(merged.name.clone(), i);
                        connections[i] = merged;
                        report.updated.push(new.name.clone());
                    }
                }
                None => {
                    if !same_server && !self.machine().dynamic_connection {
                        report
                            .refused
                            .push((new.name.clone(), ImportRefusal::DynamicConnectionsOff));
                    } else if name_taken(None) {
                        report
                            .refused
                            .push((new.name.clone(), ImportRefusal::NameTaken));
                    } else {
                        if let Some(g) = &new.guid {
                            by_guid.insert(g.clone(), connections.len());
                        }
                        by_name.insert(new.name.clone(), connections.len());
                        connections.push(new.clone());
                        report.added.push(new.name.clone());
                    }
                }
            }
        }
        self.set_all(machine, connections)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the seed, verbatim (seed 004 line ~306).
    const SEED_EXAMPLE: &str = r#"
schema version {
  version: "1"
}

machine settings {
  version: "14"
  guid: "bf4801a3-527f-4f98-9ea3-7dcb7e271bc9"
  connection-source: "preconfig"
  server-id: "0241ML82AOPRD1VR"
  allow-save: "true"
  user-connection: "true"
  splashscreen-display: "true"
  dynamic-trust: "true"
  dynamic-connection: "true"
  wireless-suppression: "false"
}

ive "8211f09f-6674-4bdb-a44a-e6fa8b7402eb" {
  friendly-name: "SA"
  version: "2"
  guid: "8211f09f-6674-4bdb-a44a-e6fa8b7402eb"
  server-id: "0241ML82AOPRD1VR"
  connection-source: "preconfig"
  factory-default: "true"
  uri: "10.64.78.34"
  connection-policy-override: "true"
  use-for-secure-meetings: "false"
  use-for-connect: "true"
  connection-identity: "user"
  connection-policy: "automatic"
  client-certificate-location-system: "false"
}

8021x "06cc1f68-3714-4871-9abf-458f1c0ef4b0" {
  friendly-name: "MachAuthCnrxn"
  version: "2"
  guid: "06cc1f68-3714-4871-9abf-458f1c0ef4b0"
  server-id: "0241ML82AOPRD1VR"
  connection-source: "preconfig"
  adapter-type: "wireless"
  outer-username: "anonymous"
  scan-list: "juniper_wireless_network"
  non-broadcast-ssid: "false"
  connection-identity: "machine-only"
  connection-policy: "automatic"
}
"#;

    fn parse(text: &str) -> Preconfig {
        Preconfig::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn err(text: &str) -> String {
        match Preconfig::parse(text) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_seed_example() {
        let p = parse(SEED_EXAMPLE);
        assert_eq!(p.schema_version.as_deref(), Some("1"));
        let m = p.machine.as_ref().unwrap();
        assert!(m.allow_save && m.user_connection && m.dynamic_trust && m.dynamic_connection);
        assert!(!m.vpn_only_access);
        assert_eq!(m.server_id.as_deref(), Some("0241ML82AOPRD1VR"));
        assert_eq!(m.version, Some(14));

        assert_eq!(p.connections.len(), 1);
        let c = &p.connections[0];
        assert_eq!(c.name, "SA");
        assert_eq!(c.urls.len(), 1);
        assert_eq!(c.urls[0].to_string(), "https://10.64.78.34/");
        assert_eq!(c.urls[0].port(), 443);
        assert_eq!(c.policy, ConnectionPolicy::Automatic);
        assert_eq!(c.identity, Identity::User);
        assert_eq!(c.source, Source::Preconfig);
        assert_eq!(c.url_mode, UrlMode::Top);
        assert_eq!(
            c.guid.as_deref(),
            Some("8211f09f-6674-4bdb-a44a-e6fa8b7402eb")
        );
        assert_eq!(c.server_id.as_deref(), Some("0241ML82AOPRD1VR"));
        assert!(c.store);

        assert_eq!(
            p.skipped,
            vec![SkippedSection {
                kind: "8021x".into(),
                id: Some("06cc1f68-3714-4871-9abf-458f1c0ef4b0".into()),
                position: Position {
                    line: 35,
                    column: 1
                },
                reason: SkipReason::NotOnLinux,
            }]
        );
        assert_eq!(
            p.skipped[0].to_string(),
            "line 35, column 1: section 8021x \"06cc1f68-3714-4871-9abf-458f1c0ef4b0\" skipped: this kind of connection is not supported on Linux"
        );
        // Windows-only settings are information, and nothing is unknown.
        assert_eq!(p.unknown_keys().count(), 0);
        let ignored: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            ignored,
            [
                "line 13, column 3: machine settings: \"splashscreen-display\" has no meaning on Linux and is ignored",
                "line 16, column 3: machine settings: \"wireless-suppression\" has no meaning on Linux and is ignored",
                "line 27, column 3: ive: \"connection-policy-override\" has no meaning on Linux and is ignored",
                "line 28, column 3: ive: \"use-for-secure-meetings\" has no meaning on Linux and is ignored",
                "line 32, column 3: ive: \"client-certificate-location-system\" has no meaning on Linux and is ignored",
            ]
        );
        assert!(p.warnings.iter().all(|w| w.level() == Level::Info));
    }

    /// The shape of files exported by Pulse servers: comments, `lock-down`, `uri-list`, the
    /// URL-list mode keys, `connection-lock-down`, CRLF and a byte order mark.
    #[test]
    fn an_exported_file_with_comments_and_url_lists() {
        let text = "\u{feff}; Name: Corp\r\n; Description: two gateways\r\n\
            schema version {\r\n    version: \"1\"\r\n}\r\n\
            machine settings {\r\n    server-id: \"S1\"\r\n    lock-down: \"true\"\r\n    dynamic-trust: \"false\"\r\n    FIPSClient: \"false\"\r\n}\r\n\
            ive \"g1\" {\r\n    friendly-name: \"Corp\"\r\n    uri-list: \"https://a.example/x;b.example, c.example\"\r\n    uri: \"https://a.example/x\"\r\n\
            uri-list-use-last-connected: \"true\"\r\n    uri-list-randomize: \"false\"\r\n    connection-lock-down: \"true\"\r\n\
            connection-identity: \"machine\"\r\n    connection-policy: \"manual\"\r\n    client-certificate-matching-rule-eku-oid: \"\"\r\n}\r\n";
        let p = parse(text);
        let m = p.machine.as_ref().unwrap();
        assert!(m.vpn_only_access);
        assert!(!m.dynamic_trust);
        let c = &p.connections[0];
        let urls: Vec<String> = c.urls.iter().map(ToString::to_string).collect();
        assert_eq!(
            urls,
            [
                "https://a.example/x",
                "https://b.example/",
                "https://c.example/"
            ]
        );
        assert_eq!(c.url_mode, UrlMode::MostRecent);
        assert!(c.lock_down);
        assert_eq!(c.identity, Identity::Machine);
        assert_eq!(c.policy, ConnectionPolicy::Manual);
        assert_eq!(
            c.guid.as_deref(),
            Some("g1"),
            "the section ID stands in for a guid key"
        );
        assert_eq!(p.unknown_keys().count(), 0, "{:?}", p.warnings);
    }

    #[test]
    fn several_uri_entries_make_a_list_and_modes_are_read() {
        let p = parse(
            r#"ive "x" { friendly-name: "R" uri: "a.example" uri: "b.example" uri: "a.example" uri-list-randomize: "true" }"#,
        );
        let c = &p.connections[0];
        assert_eq!(c.urls.len(), 2);
        assert_eq!(c.url_mode, UrlMode::Random);
        let p = parse(
            r#"ive "x" { friendly-name: "R" uri: "a.example" uri-list-randomize: "true" uri-list-use-last-connected: "TRUE" }"#,
        );
        assert_eq!(p.connections[0].url_mode, UrlMode::MostRecent);
        assert!(
            p.warnings
                .iter()
                .any(|w| w.kind == WarningKind::UrlModeConflict)
        );
    }

    #[test]
    fn unknown_sections_and_keys_are_reported_never_fatal() {
        let p = parse(
            r#"schema version { version: "1" colour: "blue" }
sdp "z" { anything: "goes" }
machine settings { frobnicate: "1" allow-save: "false" allow-save: "true" }
ive "a" { friendly-name: "A" uri: "a.example" odd-key: "x" inner { k: "v" } }
"#,
        );
        assert_eq!(p.connections.len(), 1);
        assert!(
            p.machine.as_ref().unwrap().allow_save,
            "the last value wins"
        );
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].reason, SkipReason::UnknownKind);
        assert_eq!(p.skipped[0].kind, "sdp");
        let unknown: Vec<String> = p.unknown_keys().map(ToString::to_string).collect();
        assert_eq!(
            unknown,
            [
                "line 1, column 31: schema version: unknown key \"colour\" ignored",
                "line 3, column 20: machine settings: unknown key \"frobnicate\" ignored",
                "line 4, column 47: ive: unknown key \"odd-key\" ignored",
            ]
        );
        let other: Vec<String> = p
            .warnings
            .iter()
            .filter(|w| !matches!(w.kind, WarningKind::UnknownKey { .. }))
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            other,
            [
                "line 3, column 56: machine settings: \"allow-save\" is given again; the last value is used",
                "line 4, column 60: ive: nested section \"inner\" ignored",
            ]
        );
    }

    #[test]
    fn bad_connections_are_skipped_with_a_reason() {
        let p = parse(
            r#"
ive "1" { uri: "a.example" }
ive "2" { friendly-name: "no url" }
ive "3" { friendly-name: "bad url" uri: "http://a.example" }
ive "4" { friendly-name: "bad policy" uri: "a.example" connection-policy: "sometimes" }
ive "5" { friendly-name: "meetings" uri: "a.example" use-for-connect: "false" }
ive "6" { friendly-name: "ok" uri: "a.example" }
ive "6" { friendly-name: "same guid" uri: "a.example" }
ive "7" { friendly-name: "ok" uri: "b.example" }
ive "8" { friendly-name: "bad identity" uri: "a.example" connection-identity: "robot" }
ive "9" { friendly-name: "bad bool" uri: "a.example" connection-lock-down: "maybe" }
ive "10" { friendly-name: " padded " uri: "a.example" }
"#,
        );
        let names: Vec<&str> = p.connections.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ok", "padded"]);
        let reasons: Vec<String> = p.skipped.iter().map(|s| s.reason.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "no friendly-name",
                "no uri or uri-list",
                "server URL \"http://a.example\": plain http:// is refused; the gateway is reached over https://",
                "connection-policy is \"sometimes\"; allowed: \"automatic\" or \"manual\"",
                "use-for-connect is false",
                "a section like it came earlier",
                "the name \"ok\" is used by an earlier connection",
                "connection-identity is \"robot\"; allowed: \"user\", \"machine\" or \"machine-only\"",
                "connection-lock-down is \"maybe\"; allowed: \"true\" or \"false\"",
            ]
        );
        assert_eq!(p.skipped[0].position, Position { line: 2, column: 1 });
    }

    #[test]
    fn server_pins_are_per_host_and_a_bad_one_skips_the_connection() {
        const A: &str = "pin-sha256:otI/3nrjGjN+MR5SFOD8hTzpnsZQAusZrkq/vH0/3mQ=";
        const B: &str = "pin-sha256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
        let p = parse(&format!(
            r#"
ive "1" {{ friendly-name: "pinned" uri: "https://VPN.example:8443/x" uri: "b.example"
  server-pin: "vpn.example {A}" server-pin: "vpn.example {B}" server-pin: "b.example {A}"
  server-pin: "vpn.example {A}" }}
ive "2" {{ friendly-name: "other host" uri: "a.example" server-pin: "c.example {A}" }}
ive "3" {{ friendly-name: "not a pin" uri: "a.example" server-pin: "a.example pin-sha256:YWJj" }}
ive "4" {{ friendly-name: "no host" uri: "a.example" server-pin: "{A}" }}
ive "5" {{ friendly-name: "a port" uri: "a.example:8443" server-pin: "a.example:8443 {A}" }}
"#
        ));
        assert_eq!(p.connections.len(), 1, "{:?}", p.skipped);
        let c = &p.connections[0];
        let pin = |t| Pin::parse(t).unwrap();
        assert_eq!(
            c.pins,
            BTreeMap::from([
                ("vpn.example".to_string(), vec![pin(A), pin(B)]),
                ("b.example".to_string(), vec![pin(A)]),
            ])
        );
        let reasons: Vec<String> = p.skipped.iter().map(|s| s.reason.to_string()).collect();
        assert!(
            reasons[0].contains("pins for \"c.example\", which is not the host of any of its URLs"),
            "{reasons:?}"
        );
        for r in &reasons[1..] {
            assert!(r.starts_with("server-pin is "), "{reasons:?}");
        }
        assert_eq!(reasons.len(), 4);
    }

    #[test]
    fn whole_file_errors_carry_line_and_column() {
        assert_eq!(
            err("machine settings {\n  allow-save: \"yes\"\n}"),
            "line 2, column 3: machine settings: allow-save is \"yes\"; allowed: \"true\" or \"false\""
        );
        assert_eq!(
            err("machine settings { version: \"x14\" }"),
            "line 1, column 20: machine settings: version is \"x14\"; allowed: a whole number"
        );
        assert_eq!(
            err("schema version {\n version: \"2\" }"),
            "line 2, column 2: schema version \"2\" is not supported (only \"1\")"
        );
        assert_eq!(
            err("ive \"a\" {\n  friendly-name: \"A\n}"),
            "line 2, column 18: string not closed before the end of the line"
        );
        assert_eq!(
            err("ive \"a\" {\n  friendly-name \"A\"\n}"),
            "line 2, column 17: expected ':' between a key and its value, found string \"A\""
        );
        assert_eq!(
            err("ive \"a\" {\n  uri: }"),
            "line 2, column 8: expected a value after ':', found '}'"
        );
        assert_eq!(
            err("ive \"a\" {\n  uri: \"x\"\n"),
            "line 1, column 1: section \"ive\" is not closed with '}'"
        );
        assert_eq!(err("}"), "line 1, column 1: '}' without a section to close");
        assert_eq!(
            err("ive \"a\" { = }"),
            "line 1, column 11: unexpected character '='"
        );
        assert_eq!(
            err("\"stray\" { }"),
            "line 1, column 1: expected a section name, found string \"stray\""
        );
        assert_eq!(
            err("ive \"a\""),
            "line 1, column 8: expected '{' after a section name, found the end of the file"
        );
        assert_eq!(
            err("ive { : }"),
            "line 1, column 7: expected a key or '}', found ':'"
        );
        let deep = "a {".repeat(MAX_DEPTH + 1) + &"}".repeat(MAX_DEPTH + 1);
        assert!(err(&deep).contains("nested deeper than 16"));
        assert!(matches!(
            Preconfig::parse_bytes(b"ive \"a\" {\n \xff }"),
            Err(PreconfigError::NotUtf8 {
                position: Position { line: 2, column: 2 }
            })
        ));
        let big = " ".repeat(MAX_PRECONFIG_BYTES + 1);
        assert!(err(&big).contains("at most 4194304 are accepted"));
    }

    #[test]
    fn strings_escapes_and_bare_values() {
        let p = parse(
            r#"ive "a" { friendly-name: "say \"hi\" \\ C:\Temp" uri: a.example version: 2 }"#,
        );
        assert_eq!(p.connections[0].name, r#"say "hi" \ C:\Temp"#);
        assert_eq!(p.connections[0].urls[0].to_string(), "https://a.example/");
        // A comment character inside a string is text.
        let p = parse("ive \"a\" { friendly-name: \"a;b#c\" uri: \"a.example\" } ; trailing");
        assert_eq!(p.connections[0].name, "a;b#c");
    }

    #[test]
    fn a_file_without_schema_or_machine_settings() {
        let p = parse("ive \"a\" { friendly-name: \"A\" uri: \"a.example\" }");
        assert_eq!(p.schema_version, None);
        assert_eq!(p.machine, None);
        assert_eq!(p.warnings[0].kind, WarningKind::NoSchemaVersion);
        let p = parse("");
        assert!(p.connections.is_empty());
        let p = parse("schema version { }");
        assert_eq!(p.schema_version.as_deref(), Some("1"));
        let p = parse(
            "schema version { version: \"1\" }\nschema version { version: \"1\" }\nmachine settings {}\nmachine settings {}",
        );
        assert_eq!(p.skipped.len(), 2);
        assert!(p.skipped.iter().all(|s| s.reason == SkipReason::Duplicate));
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let (store, corrupt) = Store::open(dir.path().join("c.json")).unwrap();
        assert!(corrupt.is_none());
        (dir, store)
    }

    #[test]
    fn importing_the_seed_example_binds_the_client() {
        let (dir, mut store) = store();
        let report = store.import(&parse(SEED_EXAMPLE)).unwrap();
        assert_eq!(report.machine, MachineOutcome::Applied);
        assert_eq!(report.added, ["SA"]);
        assert_eq!(
            store.machine().server_id.as_deref(),
            Some("0241ML82AOPRD1VR")
        );
        let (reopened, _) = Store::open(dir.path().join("c.json")).unwrap();
        assert_eq!(
            reopened.get("SA").unwrap().policy,
            ConnectionPolicy::Automatic
        );
        assert_eq!(reopened.machine(), store.machine());
    }

    #[test]
    fn re_import_updates_and_keeps_user_settings() {
        let (_dir, mut store) = store();
        store.import(&parse(SEED_EXAMPLE)).unwrap();
        store
            .edit("SA", |c| {
                c.user = Some("alice".into());
                c.realm = Some("Users".into());
                c.client_certificate = Some("alice-2026".into());
            })
            .unwrap();
        store.record_success("SA", 0).unwrap();
        let newer = SEED_EXAMPLE
            .replace("version: \"14\"", "version: \"15\"")
            .replace(
                "uri: \"10.64.78.34\"",
                "uri: \"10.64.78.35\"\n  uri: \"10.64.78.34\"",
            );
        let report = store.import(&parse(&newer)).unwrap();
        assert_eq!(report.updated, ["SA"]);
        assert_eq!(report.machine, MachineOutcome::Applied);
        let c = store.get("SA").unwrap();
        assert_eq!(c.urls.len(), 2);
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert_eq!(c.realm.as_deref(), Some("Users"));
        assert_eq!(c.client_certificate.as_deref(), Some("alice-2026"));
        assert_eq!(c.last_url, Some(1), "the last URL follows its address");
        assert_eq!(store.machine().version, Some(15));
        // Going back to version 14 is refused for the machine settings.
        let report = store.import(&parse(SEED_EXAMPLE)).unwrap();
        assert_eq!(
            report.machine,
            MachineOutcome::Older {
                have: 15,
                offered: 14
            }
        );
    }

    #[test]
    fn another_server_may_only_add_when_dynamic_connections_are_allowed() {
        let (_dir, mut store) = store();
        store.import(&parse(SEED_EXAMPLE)).unwrap();
        let other = r#"
machine settings { server-id: "OTHER" dynamic-trust: "false" }
ive "8211f09f-6674-4bdb-a44a-e6fa8b7402eb" { friendly-name: "SA" uri: "evil.example" }
ive "new" { friendly-name: "Lab" uri: "lab.example" }
"#;
        let report = store.import(&parse(other)).unwrap();
        assert_eq!(
            report.machine,
            MachineOutcome::OtherServer {
                bound_to: "0241ML82AOPRD1VR".into(),
                offered: Some("OTHER".into())
            }
        );
        assert_eq!(report.added, ["Lab"]);
        assert_eq!(
            report.refused,
            [(
                "SA".to_string(),
                ImportRefusal::OtherServer {
                    bound_to: "0241ML82AOPRD1VR".into()
                }
            )]
        );
        assert!(
            store.machine().dynamic_trust,
            "not changed by the other server"
        );
        assert_eq!(
            store.get("SA").unwrap().urls[0].to_string(),
            "https://10.64.78.34/"
        );

        // With dynamic connections off, the other server cannot add either.
        let mut m = store.machine().clone();
        m.dynamic_connection = false;
        store.set_machine(m).unwrap();
        let report = store
            .import(&parse(
                r#"ive "n2" { friendly-name: "Lab2" uri: "lab2.example" }"#,
            ))
            .unwrap();
        assert_eq!(report.machine, MachineOutcome::Absent);
        assert_eq!(
            report.refused,
            [("Lab2".to_string(), ImportRefusal::DynamicConnectionsOff)]
        );
        assert!(store.get("Lab2").is_none());
    }

    #[test]
    fn a_user_connection_with_the_same_name_is_never_overwritten() {
        let (_dir, mut store) = store();
        store
            .add(Connection::new(
                "SA",
                ServerUrl::parse("mine.example").unwrap(),
            ))
            .unwrap();
        let report = store.import(&parse(SEED_EXAMPLE)).unwrap();
        assert_eq!(
            report.refused,
            [("SA".to_string(), ImportRefusal::NameTaken)]
        );
        assert_eq!(store.get("SA").unwrap().source, Source::User);
        assert_eq!(
            ImportRefusal::NameTaken.to_string(),
            "another connection already has this name"
        );
    }
}
