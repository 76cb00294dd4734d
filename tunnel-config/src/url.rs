//! Gateway URLs: `https://host[:port][/sign-in-page]`, or what admins type instead (a bare
//! FQDN, an IPv4 or IPv6 literal, `host/path` as `.pulsepreconfig` files carry it).
//!
//! This module owns the syntax and the normal form (lower-case host, port 443 implied,
//! path `/` when none). It does not resolve names or touch the network.
//!
//! The length limit holds for the URL as given (checked first, so hostile input costs
//! little) and for its normal form, which is what the store writes and what is shown and
//! handed on: the normal form adds `https://` and `/` to a bare `host/path`, so a URL that
//! fits as typed may not fit written out. Every accepted URL's normal form therefore parses
//! again, to the same URL.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::text::Shown;

/// The port a URL without one uses.
pub const HTTPS_PORT: u16 = 443;

/// Longer than any sign-in URL; bounds the work on hostile input. In bytes, of the URL as
/// given and of its normal form.
const MAX_URL_LEN: usize = 2048;

/// A gateway's host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, lower-case, without a trailing dot.
    Domain(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

impl fmt::Display for Host {
    /// The host as it goes into a URL (IPv6 in brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A gateway URL in normal form. Two URLs that reach the same sign-in page compare equal:
/// `VPN.example.com`, `https://vpn.example.com:443/` and `vpn.example.com.` are one URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    host: Host,
    port: u16,
    path: String,
}

/// What is wrong with a host.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostProblem {
    NotAscii,
    BadIpv4,
    BadIpv6,
    LabelLength,
    LabelCharacter { ch: char },
    LabelHyphen,
    NumericTopLabel,
    TooLong,
}

impl fmt::Display for HostProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostProblem::NotAscii => {
                f.write_str("non-ASCII host names must be written in their xn-- (punycode) form")
            }
            HostProblem::BadIpv4 => f.write_str("not a valid IPv4 address"),
            HostProblem::BadIpv6 => f.write_str("not a valid IPv6 address"),
            HostProblem::LabelLength => {
                f.write_str("each dot-separated label must be 1-63 characters")
            }
            HostProblem::LabelCharacter { ch } => write!(
                f,
                "{:?} is not allowed in a host name (letters, digits and '-' only)",
                ch
            ),
            HostProblem::LabelHyphen => f.write_str("a label may not start or end with '-'"),
            HostProblem::NumericTopLabel => {
                f.write_str("the last label is all digits, which no DNS name has")
            }
            HostProblem::TooLong => f.write_str("a host name has at most 253 characters"),
        }
    }
}

/// Why a URL was refused. Each names the URL as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    #[error("the server URL is empty")]
    Empty,
    #[error("the server URL is {len} bytes long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("server URL {}: written in full (https://host[:port]/path) it is {len} bytes long; at most {max} are allowed", Shown(.url))]
    NormalFormTooLong { url: String, len: usize, max: usize },
    #[error("server URL {}: {ch:?} is not allowed in a URL (spaces and control characters must be percent-encoded)", Shown(.url))]
    Character { url: String, ch: char },
    #[error("server URL {}: scheme {} is not supported; use https://", Shown(.url), Shown(.scheme))]
    Scheme { url: String, scheme: String },
    #[error("server URL {}: plain http:// is refused; the gateway is reached over https://", Shown(.url))]
    PlainHttp { url: String },
    #[error("server URL {}: credentials do not belong in the URL; use the user name setting", Shown(.url))]
    UserInfo { url: String },
    #[error("server URL {}: no host", Shown(.url))]
    MissingHost { url: String },
    #[error("server URL {}: host {}: {problem}", Shown(.url), Shown(.host))]
    Host {
        url: String,
        host: String,
        problem: HostProblem,
    },
    #[error("server URL {}: port {} is not a number 1-65535", Shown(.url), Shown(.port))]
    Port { url: String, port: String },
    #[error("server URL {}: a #fragment means nothing to a gateway", Shown(.url))]
    Fragment { url: String },
}

impl ServerUrl {
    /// Parses `https://host[:port][/path]`, or a bare `host[:port][/path]` (then https is
    /// implied). IPv6 literals go in brackets when a port or path follows; a bare IPv6
    /// literal alone is accepted too. Surrounding whitespace is ignored.
    pub fn parse(input: &str) -> Result<ServerUrl, UrlError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(UrlError::Empty);
        }
        if s.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong {
                len: s.len(),
                max: MAX_URL_LEN,
            });
        }
        let url = || s.to_string();
        if let Some(ch) = s.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(UrlError::Character { url: url(), ch });
        }
        if s.contains('#') {
            return Err(UrlError::Fragment { url: url() });
        }
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => {
                return Err(UrlError::PlainHttp { url: url() });
            }
            Some((scheme, _)) => {
                return Err(UrlError::Scheme {
                    url: url(),
                    scheme: scheme.to_string(),
                });
            }
            None => s,
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(UrlError::UserInfo { url: url() });
        }
        let (host, port) = split_authority(authority, s)?;
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        let parsed = ServerUrl { host, port, path };
        let len = parsed.to_string().len();
        if len > MAX_URL_LEN {
            return Err(UrlError::NormalFormTooLong {
                url: url(),
                len,
                max: MAX_URL_LEN,
            });
        }
        Ok(parsed)
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The host as TLS and DNS want it: a name, or an address without brackets.
    pub fn host_name(&self) -> String {
        match &self.host {
            Host::Domain(d) => d.clone(),
            Host::Ipv4(a) => a.to_string(),
            Host::Ipv6(a) => a.to_string(),
        }
    }

    /// The port (443 unless the URL gave another).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path of the sign-in page, `/` at least.
    pub fn path(&self) -> &str {
        &self.path
    }
}

fn split_authority(authority: &str, url: &str) -> Result<(Host, u16), UrlError> {
    let host_err = |host: &str, problem| UrlError::Host {
        url: url.to_string(),
        host: host.to_string(),
        problem,
    };
    if authority.is_empty() {
        return Err(UrlError::MissingHost {
            url: url.to_string(),
        });
    }
    if let Some(inner) = authority.strip_prefix('[') {
        let Some((literal, after)) = inner.split_once(']') else {
            return Err(host_err(authority, HostProblem::BadIpv6));
        };
        let addr: Ipv6Addr = literal
            .parse()
            .map_err(|_| host_err(literal, HostProblem::BadIpv6))?;
        let port = match after {
            "" => HTTPS_PORT,
            p => match p.strip_prefix(':') {
                Some(p) => port(p, url)?,
                None => return Err(host_err(authority, HostProblem::BadIpv6)),
            },
        };
        return Ok((Host::Ipv6(addr), port));
    }
    // More than one colon without brackets can only be a bare IPv6 literal.
    if authority.matches(':').count() > 1 {
        let addr: Ipv6Addr = authority
            .parse()
            .map_err(|_| host_err(authority, HostProblem::BadIpv6))?;
        return Ok((Host::Ipv6(addr), HTTPS_PORT));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, port(p, url)?),
        None => (authority, HTTPS_PORT),
    };
    Ok((parse_host(host).map_err(|p| host_err(host, p))?, port))
}

fn port(text: &str, url: &str) -> Result<u16, UrlError> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(UrlError::Port {
            url: url.to_string(),
            port: text.to_string(),
        }),
    }
}

/// A host name or IPv4 literal. A name that looks numeric must be a valid IPv4 address:
/// `10.64.78` is a typo, not a host called that.
fn parse_host(host: &str) -> Result<Host, HostProblem> {
    if host.is_empty() {
        return Err(HostProblem::LabelLength);
    }
    if !host.is_ascii() {
        return Err(HostProblem::NotAscii);
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<Ipv4Addr>()
            .map(Host::Ipv4)
            .map_err(|_| HostProblem::BadIpv4);
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if name.len() > 253 {
        return Err(HostProblem::TooLong);
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HostProblem::LabelLength);
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(HostProblem::LabelCharacter { ch });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostProblem::LabelHyphen);
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostProblem::NumericTopLabel);
    }
    Ok(Host::Domain(name))
}

impl fmt::Display for ServerUrl {
    /// The normal form: `https://host[:port]/path`, the port only when it is not 443.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.host)?;
        if self.port != HTTPS_PORT {
            write!(f, ":{}", self.port)?;
        }
        f.write_str(&self.path)
    }
}

impl FromStr for ServerUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServerUrl::parse(s)
    }
}

impl Serialize for ServerUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServerUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        ServerUrl::parse(&s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ServerUrl {
        ServerUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match ServerUrl::parse(s) {
            Ok(u) => panic!("{s} accepted as {u}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn full_urls_and_their_normal_form() {
        let u = ok("https://pcssamlpcs.psecure.net/");
        assert_eq!(u.host(), &Host::Domain("pcssamlpcs.psecure.net".into()));
        assert_eq!(u.port(), 443);
        assert_eq!(u.path(), "/");
        assert_eq!(u.to_string(), "https://pcssamlpcs.psecure.net/");
        let u = ok("HTTPS://VPN.Example.com:8443/usr");
        assert_eq!(u.to_string(), "https://vpn.example.com:8443/usr");
        assert_eq!(u.host_name(), "vpn.example.com");
        assert_eq!(ok("https://int-company.portal.com/usr").path(), "/usr");
        assert_eq!(ok("https://h.example/saml?x=1").path(), "/saml?x=1");
        assert_eq!(ok("https://h.example?x=1").path(), "/?x=1");
    }

    #[test]
    fn bare_hosts_and_literals_mean_https_on_443() {
        assert_eq!(ok("vpn.example.com"), ok("https://vpn.example.com:443/"));
        assert_eq!(ok("vpn.example.com."), ok("https://vpn.example.com/"));
        assert_eq!(
            ok("  vpn.example.com  ").to_string(),
            "https://vpn.example.com/"
        );
        // The seed's preconfig example, and the path form real preconfig files use.
        let u = ok("10.64.78.34");
        assert_eq!(u.host(), &Host::Ipv4(Ipv4Addr::new(10, 64, 78, 34)));
        assert_eq!(u.to_string(), "https://10.64.78.34/");
        assert_eq!(
            ok("ssl.example.se/nexer").to_string(),
            "https://ssl.example.se/nexer"
        );
        assert_eq!(ok("vpn:10443").port(), 10443);
        // IPv6: bare, bracketed, with a port.
        let u = ok("2001:db8::1");
        assert_eq!(u.host(), &Host::Ipv6("2001:db8::1".parse().unwrap()));
        assert_eq!(u.to_string(), "https://[2001:db8::1]/");
        assert_eq!(u.host_name(), "2001:db8::1");
        assert_eq!(
            ok("[2001:db8::1]:8443/x").to_string(),
            "https://[2001:db8::1]:8443/x"
        );
        assert_eq!(ok("https://[::1]").port(), 443);
        assert_eq!(ok("localhost").host_name(), "localhost");
    }

    #[test]
    fn refusals_name_the_url_and_the_problem() {
        assert_eq!(err(""), "the server URL is empty");
        assert_eq!(err("   "), "the server URL is empty");
        assert_eq!(
            err("http://vpn.example.com"),
            "server URL \"http://vpn.example.com\": plain http:// is refused; the gateway is reached over https://"
        );
        assert_eq!(
            err("ftp://vpn.example.com"),
            "server URL \"ftp://vpn.example.com\": scheme \"ftp\" is not supported; use https://"
        );
        assert_eq!(
            err("https://bob:pw@vpn.example.com"),
            "server URL \"https://bob:pw@vpn.example.com\": credentials do not belong in the URL; use the user name setting"
        );
        assert_eq!(err("https:///x"), "server URL \"https:///x\": no host");
        assert_eq!(
            err("https://vpn.example.com:0"),
            "server URL \"https://vpn.example.com:0\": port \"0\" is not a number 1-65535"
        );
        assert!(err("vpn:65536").contains("port \"65536\" is not a number 1-65535"));
        assert!(err("vpn:").contains("port \"\""));
        assert!(err("vpn:+44").contains("port \"+44\""));
        assert_eq!(
            err("https://vpn.example.com/a b"),
            "server URL \"https://vpn.example.com/a b\": ' ' is not allowed in a URL (spaces and control characters must be percent-encoded)"
        );
        assert!(err("vpn\u{0}x").contains("'\\0' is not allowed"));
        assert_eq!(
            err("https://vpn/#top"),
            "server URL \"https://vpn/#top\": a #fragment means nothing to a gateway"
        );
        assert_eq!(
            err("10.64.78"),
            "server URL \"10.64.78\": host \"10.64.78\": not a valid IPv4 address"
        );
        assert!(err("300.1.1.1").contains("not a valid IPv4 address"));
        assert!(err("vpn_1.example.com").contains("'_' is not allowed in a host name"));
        assert!(err("-vpn.example.com").contains("may not start or end with '-'"));
        assert!(err("vpn..example.com").contains("1-63 characters"));
        assert!(err(&format!("{}.com", "a".repeat(64))).contains("1-63 characters"));
        assert!(err("vpn.123").contains("last label is all digits"));
        assert!(err("bücher.example").contains("punycode"));
        assert!(err("[2001:db8::1").contains("not a valid IPv6 address"));
        assert!(err("[10.0.0.1]").contains("not a valid IPv6 address"));
        assert!(err("[::1]x").contains("not a valid IPv6 address"));
        assert!(err("fe80::1%eth0").contains("not a valid IPv6 address"));
        assert!(err("a:b:c").contains("not a valid IPv6 address"));
        let long = format!("https://vpn/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(
            err(&long),
            "the server URL is 2060 bytes long; at most 2048 are allowed"
        );
        let labels = vec!["abcdefghij"; 24].join(".");
        assert!(err(&labels).contains("at most 253 characters"));
    }

    #[test]
    fn display_parses_back_to_the_same_url() {
        for s in [
            "vpn.example.com",
            "https://VPN.example.com:8443/usr/",
            "10.64.78.34",
            "[2001:db8::1]:1/x?y",
            "2001:db8::1",
            "h.example?q",
        ] {
            let u = ok(s);
            assert_eq!(ok(&u.to_string()), u, "{s}");
        }
    }

    /// Fuzz finding (launch_url): the length limit holds for a URL's normal form, not only
    /// for the URL as typed. Otherwise a bare `host/path` just under the limit is accepted
    /// while its normal form, eight bytes longer, is refused: the store would write a URL it
    /// cannot read back, and a launch URL printed by `LaunchRequest::to_url` would not parse.
    #[test]
    fn regression_an_accepted_url_has_a_normal_form_that_parses() {
        // The fuzzer's server, to its essence: a non-ASCII path (U+FFFD, three bytes each).
        let typed = format!("l/{}", "\u{FFFD}".repeat(680));
        assert_eq!(typed.len(), 2042, "under the limit as typed");
        match ServerUrl::parse(&typed) {
            Err(UrlError::NormalFormTooLong { len, max, .. }) => {
                assert_eq!((len, max), (2050, MAX_URL_LEN));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err(&typed).ends_with(
                "written in full (https://host[:port]/path) it is 2050 bytes long; at most 2048 are allowed"
            ),
            "{}",
            err(&typed)
        );
        // Exactly at the limit written in full: accepted, and the normal form parses back,
        // in the store's serde form too.
        let fits = ok(&format!("l/{}", "é".repeat(1019)));
        let printed = fits.to_string();
        assert_eq!(printed.len(), MAX_URL_LEN);
        assert_eq!(ok(&printed), fits);
        let json = serde_json::to_string(&fits).unwrap();
        assert_eq!(serde_json::from_str::<ServerUrl>(&json).unwrap(), fits);
        // The limit holds for what was typed too (it bounds the work before parsing): a
        // spelt-out port that the normal form drops still counts.
        assert_eq!(
            err(&format!("https://l:00443/{}", "é".repeat(1019))),
            "the server URL is 2054 bytes long; at most 2048 are allowed"
        );
    }

    #[test]
    fn serde_uses_the_normal_form_and_validates() {
        let u = ok("VPN.example.com:8443");
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(json, "\"https://vpn.example.com:8443/\"");
        assert_eq!(serde_json::from_str::<ServerUrl>(&json).unwrap(), u);
        let e = serde_json::from_str::<ServerUrl>("\"http://x\"").unwrap_err();
        assert!(e.to_string().contains("plain http:// is refused"), "{e}");
    }
}
