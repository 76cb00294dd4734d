//! Captive portal detection (seed 004, "Captive Portal Detection"): when no gateway of a
//! connection can be reached, an HTTP probe tells a network that holds us behind a sign-in
//! page from one that is simply down.
//!
//! ```text
//!  no gateway reached (a round of the URL walk failed to connect)
//!     ─▶ probe: GET the probe URL, from a socket with our mark (outside any tunnel)
//!          the expected answer ─▶ online: the usual back-off
//!          no answer at all    ─▶ offline: the usual back-off
//!          any other answer    ─▶ a portal (its address: a redirect's Location)
//!                                 state captive_portal, event log; the disconnect timeout
//!                                 does not run; probe again every PROBE_EVERY
//!                                 ─▶ the expected answer: connect at once
//! ```
//!
//! The probe is bounded: [`PROBE_TIMEOUT`] for the whole exchange, at most [`MAX_RESPONSE`]
//! bytes read, no redirect followed. [`judge`] decides from the bytes alone.

use std::{net::SocketAddr, time::Duration};

use socket2::Type;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sys::own_socket::socket_for;

/// How long one probe may take, connect to last byte.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a portal is probed again.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The most of a response read.
const MAX_RESPONSE: usize = 16 << 10;

/// Where to probe and what the true answer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The body of the true answer (status 200); empty: a 204.
    pub expect: String,
}

/// Why a probe URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeUrlError {
    #[error("captive portal probe {0}: only http:// URLs (a portal intercepts plain HTTP)")]
    NotHttp(String),
    #[error("captive portal probe {0}: no host")]
    NoHost(String),
    #[error("captive portal probe {0}: bad port")]
    BadPort(String),
}

impl Probe {
    /// `http://host[:port]/path`, whose true answer is `expect`.
    pub fn parse(url: &str, expect: &str) -> Result<Probe, ProbeUrlError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ProbeUrlError::NotHttp(url.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let bad_port = || ProbeUrlError::BadPort(url.to_string());
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| ProbeUrlError::NoHost(url.to_string()))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad_port())?,
                None if after.is_empty() => 80,
                None => return Err(bad_port()),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad_port())?),
                None => (authority, 80),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ProbeUrlError::NoHost(url.to_string()));
        }
        Ok(Probe {
            host: host.to_string(),
            port,
            path: path.to_string(),
            expect: expect.to_string(),
        })
    }

    fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tunnel captive-portal probe\r\nConnection: close\r\n\r\n",
            self.path, self.host
        )
    }
}

/// What the network is like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The true answer came back: the internet is reachable.
    Online,
    /// Something else answered: a portal, at this address when it said (a redirect).
    Portal { location: Option<String> },
    /// Nothing answered.
    Offline,
}

/// Judges a probe's response bytes (as much as was read).
pub(crate) fn judge(response: &[u8], probe: &Probe) -> Verdict {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return if response.is_empty() {
            Verdict::Offline
        } else {
            Verdict::Portal { location: None }
        };
    };
    let mut lines = head.split("\r\n");
    let status: Option<u16> = lines
        .next()
        .filter(|l| l.starts_with("HTTP/1."))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    let location = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then(|| value.trim().to_string())
    });
    match status {
        Some(204) if probe.expect.is_empty() => Verdict::Online,
        Some(200) if !probe.expect.is_empty() && body == probe.expect => Verdict::Online,
        Some(300..=399) => Verdict::Portal { location },
        _ => Verdict::Portal { location: None },
    }
}

/// Probes once, from a socket with our mark, the probe's host reached at `addr`.
pub(crate) async fn probe(probe: &Probe, addr: SocketAddr) -> Verdict {
    let exchange = async {
        let socket = socket_for(addr, Type::STREAM, true)?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        let mut stream = socket.connect(addr).await?;
        stream.write_all(probe.request().as_bytes()).await?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        while response.len() < MAX_RESPONSE {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n.min(MAX_RESPONSE - response.len())]);
        }
        Ok::<_, std::io::Error>(response)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
        Ok(Ok(response)) => judge(&response, probe),
        Ok(Err(_)) | Err(_) => Verdict::Offline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(expect: &str) -> Probe {
        Probe::parse("http://probe.example/success.txt", expect).unwrap()
    }

    #[test]
    fn urls() {
        let probe = Probe::parse("http://192.0.2.80:8080/check", "ok").unwrap();
        assert_eq!(
            (probe.host.as_str(), probe.port, probe.path.as_str()),
            ("192.0.2.80", 8080, "/check")
        );
        assert_eq!(Probe::parse("http://a.example", "").unwrap().path, "/");
        let v6 = Probe::parse("http://[2001:db8::1]:8080/x", "").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::1", 8080));
        assert!(matches!(
            Probe::parse("https://a.example/", ""),
            Err(ProbeUrlError::NotHttp(_))
        ));
        assert!(matches!(
            Probe::parse("http:///x", ""),
            Err(ProbeUrlError::NoHost(_))
        ));
        assert!(matches!(
            Probe::parse("http://a.example:http/", ""),
            Err(ProbeUrlError::BadPort(_))
        ));
    }

    #[test]
    fn the_true_answer_is_online_anything_else_a_portal_nothing_offline() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsuccess\n";
        assert_eq!(judge(ok, &p("success\n")), Verdict::Online);
        assert_eq!(
            judge(b"HTTP/1.1 204 No Content\r\n\r\n", &p("")),
            Verdict::Online
        );
        let redirect = b"HTTP/1.1 302 Found\r\nlocation: http://portal.example/login?x=1\r\n\r\n";
        assert_eq!(
            judge(redirect, &p("success\n")),
            Verdict::Portal {
                location: Some("http://portal.example/login?x=1".into())
            }
        );
        let login = b"HTTP/1.1 200 OK\r\n\r\n<html>Accept the terms</html>";
        assert_eq!(
            judge(login, &p("success\n")),
            Verdict::Portal { location: None }
        );
        assert_eq!(
            judge(b"garbage", &p("success\n")),
            Verdict::Portal { location: None }
        );
        assert_eq!(judge(b"", &p("success\n")), Verdict::Offline);
    }
}
