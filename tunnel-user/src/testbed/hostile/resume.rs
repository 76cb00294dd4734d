//! The resume-abort loop: log in and keep the session cookie; then, round after round,
//! resume with it and drop the connection as soon as the gateway has taken the cookie,
//! before the client acknowledges it. A gateway that loses the session on such an abort
//! refuses the cookie next time (the loop logs in again) and, if it also loses the session's
//! address, runs out of addresses.
//!
//! One round at a time on the calling thread, with blocking sockets ([`PulsePeer`]).

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use tunnel_proto::{AuthFailure, ClientConfig, ClientEvent};

use super::{Outcome, Params, Tally};
use crate::{client::tls::Pin, testbed::pulse_peer::PulsePeer};

/// How long one step (a login, a resume) may take.
const STEP: Duration = Duration::from_secs(10);

pub(super) fn run(
    to: SocketAddr,
    pin: Option<Pin>,
    user: &str,
    password: &str,
    params: &Params,
) -> Tally {
    let mut tally = Tally::default();
    let Some(pin) = pin else {
        tally.end("no pin");
        return tally;
    };
    let pin = pin.to_string();
    let period = Duration::from_secs_f64(1.0 / params.rate);
    let end = Instant::now() + params.duration;
    let mut cookie: Option<String> = None;
    let mut lasted = Vec::new();
    let mut round = 0usize;
    while Instant::now() < end {
        let next = Instant::now() + period;
        let source =
            (!params.sources.is_empty()).then(|| params.sources[round % params.sources.len()]);
        round += 1;
        let mut cfg = ClientConfig::new(to.ip().to_string());
        cfg.enable_esp = false;
        cfg.cookie = cookie.clone();
        tally.started += 1;
        tally.peak_open = 1;
        let started = Instant::now();
        let mut peer = match connect(to, source, &pin, cfg) {
            Ok(p) => p,
            Err(_) => {
                tally.connect_failed += 1;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                continue;
            }
        };
        let how = match &cookie {
            None => match peer.login(user, password) {
                Ok(c) => {
                    cookie = Some(c);
                    "logged in"
                }
                Err(_) => refusal(&peer.events),
            },
            Some(_) => match peer.until(STEP, |e| {
                matches!(
                    e,
                    ClientEvent::CookieReceived { .. }
                        | ClientEvent::CredentialsRequired { .. }
                        | ClientEvent::AuthFailed(_)
                        | ClientEvent::Terminated { .. }
                )
            }) {
                // Taken: drop the connection before the client acknowledges it.
                Ok(ClientEvent::CookieReceived { .. }) => "resume aborted",
                Ok(ClientEvent::CredentialsRequired { .. }) => {
                    cookie = None;
                    "resume refused"
                }
                _ => refusal(&peer.events),
            },
        };
        drop(peer);
        tally.end(how);
        lasted.push(started.elapsed());
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    lasted.sort_unstable();
    tally.ended_after_ms_median = lasted
        .get(lasted.len() / 2)
        .map_or(0, |d| d.as_millis() as u64);
    tally.ended_after_ms_max = lasted.last().map_or(0, |d| d.as_millis() as u64);
    tally
}

fn connect(
    to: SocketAddr,
    source: Option<IpAddr>,
    pin: &str,
    cfg: ClientConfig,
) -> std::io::Result<PulsePeer> {
    let domain = socket2::Domain::for_address(to);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    if let Some(source) = source {
        s.bind(&SocketAddr::new(source, 0).into())?;
    }
    s.connect_timeout(&to.into(), STEP)?;
    PulsePeer::over(TcpStream::from(s), pin, cfg)
}

/// What a login or resume that did not get through was told.
fn refusal(events: &[ClientEvent]) -> &'static str {
    for e in events.iter().rev() {
        match e {
            ClientEvent::AuthFailed(AuthFailure::Message(m)) => {
                return Outcome::Refused(m.clone()).label();
            }
            ClientEvent::AuthFailed(_) => return "refused",
            ClientEvent::CredentialsRequired { retry: true, .. } => return "wrong password",
            _ => {}
        }
    }
    "closed"
}
