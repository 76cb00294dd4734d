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
    sync::{Semaphore, broadcast},
};
use tracing::{debug, warn};

use super::runtime::{Ctx, Shutdown};

const MAX_HEAD: usize = 4096;
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
    mut stop: broadcast::Receiver<Shutdown>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let permit = tokio::select! {
            _ = stop.recv() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let stream = tokio::select! {
            _ = stop.recv() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = tokio::time::timeout(HEAD_TIME, answer(&ctx, stream)).await {
                debug!(error = %e, "metrics request too slow");
            }
        });
    }
}

async fn answer(ctx: &Ctx, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "too large\n",
            )
            .await;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path, version) = (words.next(), words.next(), words.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return respond(&mut stream, "400 Bad Request", "text/plain", "not HTTP/1\n").await;
    }
    match (method, path) {
        (Some("GET"), Some("/metrics")) => {
            let body = render(ctx);
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        (Some("GET"), Some("/health")) if ctx.draining() => {
            respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                "draining\n",
            )
            .await
        }
        (Some("GET"), Some("/health")) => {
            respond(&mut stream, "200 OK", "text/plain", "ok\n").await
        }
        (Some("GET"), _) => {
            respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n",
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

/// The metrics now, in the Prometheus text format.
pub(super) fn render(ctx: &Ctx) -> String {
    let c = &ctx.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (live, parked) = ctx.table.snapshot();
    let esp = live
        .iter()
        .filter(|s| s.esp_peer.lock().is_ok_and(|p| p.is_some()))
        .count();
    let mut out = String::with_capacity(2048);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "tunnel_gateway_sessions",
        "gauge",
        "Sessions by state and transport.",
        &[
            (r#"{state="connected",transport="esp"}"#, esp as u64),
            (
                r#"{state="connected",transport="tls"}"#,
                (live.len() - esp) as u64,
            ),
            (r#"{state="parked",transport=""}"#, parked.len() as u64),
        ],
    );
    family(
        "tunnel_gateway_logins_total",
        "counter",
        "Password and certificate logins, by result.",
        &[
            (r#"{result="ok"}"#, get(&c.logins_ok)),
            (r#"{result="failed"}"#, get(&c.logins_failed)),
        ],
    );
    family(
        "tunnel_gateway_resumes_total",
        "counter",
        "Sessions resumed with their cookie.",
        &[("", get(&c.resumes))],
    );
    family(
        "tunnel_gateway_packets_total",
        "counter",
        "Packets between the sessions and the TUN device.",
        &[
            (r#"{direction="in"}"#, get(&c.packets_in)),
            (r#"{direction="out"}"#, get(&c.packets_out)),
        ],
    );
    family(
        "tunnel_gateway_bytes_total",
        "counter",
        "Bytes of those packets.",
        &[
            (r#"{direction="in"}"#, get(&c.bytes_in)),
            (r#"{direction="out"}"#, get(&c.bytes_out)),
        ],
    );
    family(
        "tunnel_gateway_dropped_packets_total",
        "counter",
        "Packets dropped, by reason.",
        &[
            (r#"{reason="no_session_or_spoofed"}"#, get(&ctx.dropped)),
            (r#"{reason="forbidden_destination"}"#, get(&ctx.forbidden)),
        ],
    );
    family(
        "tunnel_gateway_refused_connections_total",
        "counter",
        "Connections refused at a cap before their login.",
        &[("", get(&ctx.refused))],
    );
    family(
        "tunnel_gateway_dead_peers_total",
        "counter",
        "Sessions dead-peer detection took as gone.",
        &[("", get(&ctx.dead_peers))],
    );
    family(
        "tunnel_gateway_store_sessions",
        "gauge",
        "Sessions in the session store.",
        &[("", ctx.store.len() as u64)],
    );
    family(
        "tunnel_gateway_store_errors_total",
        "counter",
        "Session store writes that failed.",
        &[("", ctx.store.errors())],
    );
    out
}
