//! The attacks made of many connections: keep up to `count` open, open at most `rate` a
//! second, replace those that end, drop them all at the end; and what each connection does.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use rustls::{RootCertStore, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};
use tokio_rustls::client::TlsStream;

use super::{Attack, Params, Tally, login, wire};
use crate::client::tls::{Pin, Trust, client_config};

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How one connection ended.
enum End {
    /// TCP connect failed.
    ConnectFailed,
    /// Ended this way (a [`Tally::ended`] name).
    As(&'static str),
    /// Ended with an error of ours, not the gateway's doing.
    Failed(String),
}

/// A TCP connection to `to`, from `source` when given.
pub(super) async fn connect(to: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
        .await
        .map_err(|_| format!("connect: no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    Ok(tcp)
}

/// Runs a connection-level attack (every one but the resume-abort loop).
pub(super) async fn run(
    attack: &Attack,
    to: SocketAddr,
    pin: Option<Pin>,
    params: &Params,
) -> Tally {
    let mut tally = Tally::default();
    let mut conns = JoinSet::new();
    let end = Instant::now() + params.duration;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / params.rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut lasted = Vec::new();
    let hello = match wire::client_hello(to.ip()) {
        Ok(h) => Arc::new(h),
        Err(e) => {
            tally.end(format!("error: {e}"));
            return tally;
        }
    };
    let mut i = 0usize;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                match done {
                    Ok((End::ConnectFailed, _)) => tally.connect_failed += 1,
                    Ok((End::As(how), took)) => {
                        tally.end(how);
                        lasted.push(took);
                    }
                    Ok((End::Failed(e), _)) => tally.end(format!("error: {e}")),
                    Err(e) => tally.end(format!("error: {e}")),
                }
            }
            _ = tick.tick(), if conns.len() < params.count => {
                let source = match attack {
                    Attack::StormOneSource { .. } => params.sources.first().copied(),
                    _ if params.sources.is_empty() => None,
                    _ => Some(params.sources[i % params.sources.len()]),
                };
                let job = Job { attack: attack.clone(), to, source, pin, i, hello: hello.clone() };
                conns.spawn(async move {
                    let started = Instant::now();
                    let how = job.run().await;
                    (how, started.elapsed())
                });
                tally.started += 1;
                tally.peak_open = tally.peak_open.max(conns.len() as u64);
                i += 1;
            }
        }
    }
    tally.open_at_end = conns.len() as u64;
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    lasted.sort_unstable();
    tally.ended_after_ms_median = lasted.get(lasted.len() / 2).map_or(0, as_ms);
    tally.ended_after_ms_max = lasted.last().map_or(0, as_ms);
    tally
}

fn as_ms(d: &Duration) -> u64 {
    d.as_millis() as u64
}

/// One connection of an attack.
struct Job {
    attack: Attack,
    to: SocketAddr,
    source: Option<IpAddr>,
    pin: Option<Pin>,
    /// Its number in the attack.
    i: usize,
    hello: Arc<Vec<u8>>,
}

impl Job {
    async fn run(self) -> End {
        let tcp = match connect(self.to, self.source).await {
            Ok(t) => t,
            Err(_) => return End::ConnectFailed,
        };
        match self.go(tcp).await {
            Ok(how) => End::As(how),
            Err(e) => End::Failed(e),
        }
    }

    async fn go(&self, mut tcp: TcpStream) -> Result<&'static str, String> {
        let source = self.source.unwrap_or(self.to.ip());
        match &self.attack {
            Attack::HalfOpen => Ok(until_closed(&mut tcp).await),
            Attack::TlsPartial => {
                // Half of the ClientHello: the gateway has to wait for the rest.
                if tcp
                    .write_all(&self.hello[..self.hello.len() / 2])
                    .await
                    .is_err()
                {
                    return Ok("closed");
                }
                Ok(until_closed(&mut tcp).await)
            }
            Attack::TlsSilent => match self.tls(tcp).await {
                Some(mut tls) => Ok(until_closed(&mut tls).await),
                None => Ok("closed"),
            },
            Attack::BigFrame { claim } => {
                let Some(tls) = self.tls(tcp).await else {
                    return Ok("closed");
                };
                Ok(big_frame(tls, self.to.ip(), *claim).await)
            }
            Attack::Garbage => {
                let Some(mut tls) = self.tls(tcp).await else {
                    return Ok("closed");
                };
                // Half the connections: more garbage than an HTTP head may hold where the
                // upgrade request belongs; the other half a proper upgrade and a garbage frame.
                let (bytes, how) = if self.i.is_multiple_of(2) {
                    (wire::garbage(tunnel_proto::MAX_HTTP_HEAD + 4096), "closed")
                } else {
                    let mut b = wire::upgrade_request(self.to.ip());
                    b.extend_from_slice(&wire::garbage_frame());
                    (b, "closed after a garbage frame")
                };
                if tls.write_all(&bytes).await.is_err() || tls.flush().await.is_err() {
                    return Ok(how);
                }
                until_closed(&mut tls).await;
                Ok(how)
            }
            Attack::StormOneSource { user } | Attack::StormOneAccount { user } => {
                let a = login::Attempt::new(source, user, &format!("guess {}", self.i));
                Ok(self.login(tcp, &a).await)
            }
            Attack::StormManyAccounts => {
                let a = login::Attempt::new(source, &format!("user{}", self.i), "guess");
                Ok(self.login(tcp, &a).await)
            }
            Attack::ResumeAbort { .. } => Err("not a connection-level attack".into()),
        }
    }

    async fn login(&self, tcp: TcpStream, a: &login::Attempt) -> &'static str {
        match self.pin {
            Some(pin) => login::over(tcp, self.to, pin, a).await.label(),
            None => "no pin",
        }
    }

    /// A TLS handshake over `tcp` (None: the gateway ended it).
    async fn tls(&self, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
        let trust = Trust {
            pin: self.pin,
            ..Trust::default()
        };
        let config = client_config(trust, RootCertStore::empty(), None).ok()?;
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(self.to.ip().into()), tcp)
            .await
            .ok()
    }
}

/// Reads (and drops) whatever comes until the gateway ends the connection.
async fn until_closed(r: &mut (impl AsyncRead + Unpin)) -> &'static str {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return "closed",
            Ok(_) => {}
        }
    }
}

/// The upgrade request, a version request claiming `claim` bytes, and its body.
async fn big_frame(tls: TlsStream<TcpStream>, to: IpAddr, claim: u32) -> &'static str {
    let (mut r, mut w) = tokio::io::split(tls);
    let send = async {
        w.write_all(&wire::upgrade_request(to)).await?;
        w.write_all(&wire::version_request_header(claim)).await?;
        let chunk = vec![0u8; 16 * 1024];
        let mut left = (claim as usize).saturating_sub(tunnel_proto::HEADER_LEN);
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).await?;
            left -= n;
        }
        w.flush().await
    };
    let mut closed = std::pin::pin!(until_closed(&mut r));
    let sent = tokio::select! {
        _ = &mut closed => false,
        done = send => done.is_ok(),
    };
    if !sent {
        return "closed mid-frame";
    }
    closed.await
}
