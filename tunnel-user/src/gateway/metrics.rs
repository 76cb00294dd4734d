//! Metrics in the Prometheus text format and a health endpoint for load balancers, on a
//! listener of their own (`metrics_listen`; off by default).
//!
//! `GET /metrics`: sessions by state and transport, logins (ok, failed), resumes, traffic
//! (packets and bytes each way), drops by reason, connections refused at a cap, the session
//! store's sessions and failed writes. `GET /health`: `200 ok` while the gateway accepts
//! logins, `503 draining` once it drains. Anything else: 404; a request head that is not HTTP: 400.
//!
//! Bounded as everything a network peer reaches: the request head is at most
//! [`MAX_HEAD`] bytes and has [`HEAD_TIME`] to arrive, at most [`MAX_CLIENTS`] are served
//! at once (more wait in the listen queue), and each connection gets one answer and is
//! closed. Bind it to an address only the monitoring system reaches.

use std::{fmt::Write as _, sync::Arc, sync::atomic::Ordering, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::broadcast,
};
use tracing::debug;

use super::{
    runtime::{Ctx, Shutdown},
    side_listener::serve_each,
};

/// The longest request head.
pub const MAX_HEAD: usize = 4096;
const HEAD_TIME: Duration = Duration::from_secs(5);
const MAX_CLIENTS: usize = 16;

/// Traffic and login counters the packet threads and connection tasks add to.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) logins_ok: std::sync::atomic::AtomicU64,
    pub(super) logins_failed: std::sync::atomic::AtomicU64,
    pub(super) resumes: std::sync::atomic::AtomicU64,
    pub(super) packets_in: std::sync::atomic::AtomicU64,
    pub(super) bytes_in: std::sync::atomic::AtomicU64,
    pub(super) packets_out: std::sync::atomic::AtomicU64,
    pub(super) bytes_out: std::sync::atomic::AtomicU64,
}

/// Serves the metrics listener until `stop`.
pub(super) async fn serve(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    stop: broadcast::Receiver<Shutdown>,
) {
    let listener = &listener;
    let accept = move || async move { listener.accept().await.map(|(s, _)| s) };
    let handle = |stream: TcpStream| {
        let ctx = ctx.clone();
        async move {
            if let Err(e) = tokio::time::timeout(HEAD_TIME, answer(&ctx, stream)).await {
                debug!(error = %e, "metrics request too slow");
            }
        }
    };
    serve_each("metrics", MAX_CLIENTS, accept, stop, handle).await;
}

/// What a request head asks for ([`asked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// The head has not ended yet (no blank line).
    Incomplete,
    /// More than [`MAX_HEAD`] bytes without an end.
    TooLarge,
    /// Not an HTTP/1 request line.
    NotHttp,
    /// A method other than GET.
    NotGet,
    Metrics,
    Health,
    NotFound,
}

/// What the request head read so far (`head`, from the first byte) asks for.
pub fn asked(head: &[u8]) -> Asked {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| head.windows(2).position(|w| w == b"\n\n"));
    if end.is_none() {
        return if head.len() > MAX_HEAD {
            Asked::TooLarge
        } else {
            Asked::Incomplete
        };
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path, version) = (words.next(), words.next(), words.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) || words.next().is_some() {
        return Asked::NotHttp;
    }
    match (method, path) {
        (Some("GET"), Some("/metrics")) => Asked::Metrics,
        (Some("GET"), Some("/health")) => Asked::Health,
        (Some("GET"), _) => Asked::NotFound,
        _ => Asked::NotGet,
    }
}

async fn answer(ctx: &Ctx, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    let what = loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        match asked(&head) {
            Asked::Incomplete => continue,
            what => break what,
        }
    };
    let text = "text/plain";
    match what {
        Asked::Metrics => {
            let body = render(ctx);
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        Asked::Health if ctx.draining() => {
            respond(&mut stream, "503 Service Unavailable", text, "draining\n").await
        }
        Asked::Health => respond(&mut stream, "200 OK", text, "ok\n").await,
        Asked::NotFound => respond(&mut stream, "404 Not Found", text, "not found\n").await,
        Asked::NotGet => respond(&mut stream, "405 Method Not Allowed", text, "GET only\n").await,
        Asked::NotHttp | Asked::Incomplete => {
            respond(&mut stream, "400 Bad Request", text, "not HTTP/1\n").await
        }
        Asked::TooLarge => {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                text,
                "too large\n",
            )
            .await
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One metric family: its help, type and samples (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The metrics now, in the Prometheus text format.
pub(super) fn render(ctx: &Ctx) -> String {
    let c = &ctx.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (live, esp, parked) = ctx.table.census();
    let mut out = String::with_capacity(2048);
    family(
        &mut out,
        "tunnel_gateway_sessions",
        "gauge",
        "Sessions by state and transport.",
        &[
            (r#"{state="connected",transport="esp"}"#, esp as u64),
            (
                r#"{state="connected",transport="tls"}"#,
                (live - esp) as u64,
            ),
            (r#"{state="parked",transport=""}"#, parked as u64),
        ],
    );
    family(
        &mut out,
        "tunnel_gateway_logins_total",
        "counter",
        "Password and certificate logins, by result.",
        &[
            (r#"{result="ok"}"#, get(&c.logins_ok)),
            (r#"{result="failed"}"#, get(&c.logins_failed)),
        ],
    );
    family(
        &mut out,
        "tunnel_gateway_resumes_total",
        "counter",
        "Sessions resumed with their cookie.",
        &[("", get(&c.resumes))],
    );
    family(
        &mut out,
        "tunnel_gateway_packets_total",
        "counter",
        "Packets between the sessions and the TUN device.",
        &[
            (r#"{direction="in"}"#, get(&c.packets_in)),
            (r#"{direction="out"}"#, get(&c.packets_out)),
        ],
    );
    family(
        &mut out,
        "tunnel_gateway_bytes_total",
        "counter",
        "Bytes of those packets.",
        &[
            (r#"{direction="in"}"#, get(&c.bytes_in)),
            (r#"{direction="out"}"#, get(&c.bytes_out)),
        ],
    );
    family(
        &mut out,
        "tunnel_gateway_dropped_packets_total",
        "counter",
        "Packets dropped, by reason.",
        &[
            (r#"{reason="no_session_or_spoofed"}"#, get(&ctx.dropped)),
            (r#"{reason="forbidden_destination"}"#, get(&ctx.forbidden)),
        ],
    );
    family(
        &mut out,
        "tunnel_gateway_refused_connections_total",
        "counter",
        "Connections refused at a cap before their login.",
        &[("", get(&ctx.refused))],
    );
    family(
        &mut out,
        "tunnel_gateway_dead_peers_total",
        "counter",
        "Sessions dead-peer detection took as gone.",
        &[("", get(&ctx.dead_peers))],
    );
    family(
        &mut out,
        "tunnel_gateway_store_sessions",
        "gauge",
        "Sessions in the session store.",
        &[("", ctx.store.len() as u64)],
    );
    let (writes, seconds) = ctx.store.write_time();
    let _ = writeln!(
        out,
        "# HELP tunnel_gateway_store_write_seconds Time the session store's writes took.\n\
         # TYPE tunnel_gateway_store_write_seconds summary\n\
         tunnel_gateway_store_write_seconds_sum {seconds:.6}\n\
         tunnel_gateway_store_write_seconds_count {writes}"
    );
    family(
        &mut out,
        "tunnel_gateway_store_errors_total",
        "counter",
        "Session store writes that failed.",
        &[("", ctx.store.errors())],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_read_as_written() {
        assert_eq!(
            asked(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics
        );
        assert_eq!(asked(b"GET /health HTTP/1.0\n\n"), Asked::Health);
        assert_eq!(asked(b"GET /x HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(asked(b"POST /metrics HTTP/1.1\r\n\r\n"), Asked::NotGet);
        assert_eq!(asked(b"GET /metrics\r\n\r\n"), Asked::NotHttp);
        assert_eq!(asked(b"GET /metrics HTTP/1.1 x\r\n\r\n"), Asked::NotHttp);
        assert_eq!(asked(b"\0\x01\r\n\r\n"), Asked::NotHttp);
        assert_eq!(asked(b"GET /metrics HTTP/1.1\r\n"), Asked::Incomplete);
        assert_eq!(asked(&[b'x'; MAX_HEAD]), Asked::Incomplete);
        assert_eq!(asked(&[b'x'; MAX_HEAD + 1]), Asked::TooLarge);
    }
}
