//! Writing IF-T frames to a TLS connection with few system calls: frames are handed to
//! rustls as records first, then everything is flushed to the socket at once (rustls writes
//! up to 64 records per `writev`). Writing through `AsyncWrite` instead costs one system call
//! per record, which is one per packet on the data path.
//!
//! Owns the batching only; the framing rules (which bytes form a frame) come from
//! `tunnel-proto`.

use std::io::{self, Write as _};

use tokio::{io::AsyncWriteExt, net::TcpStream};

/// A TLS stream whose records can be queued without I/O.
pub trait TlsWrite: tokio::io::AsyncWrite + Unpin {
    /// Plaintext written here becomes TLS records queued in rustls; nothing is sent yet.
    fn records(&mut self) -> rustls::Writer<'_>;
}

impl TlsWrite for tokio_rustls::client::TlsStream<TcpStream> {
    fn records(&mut self) -> rustls::Writer<'_> {
        self.get_mut().1.writer()
    }
}

impl TlsWrite for tokio_rustls::server::TlsStream<TcpStream> {
    fn records(&mut self) -> rustls::Writer<'_> {
        self.get_mut().1.writer()
    }
}

/// Lifts rustls's limit on queued TLS bytes (64 KB by default), so a batch is queued whole
/// and flushed at once; the state machine bounds what a batch can hold
/// ([`tunnel_proto::MAX_TLS_BACKLOG`]).
pub fn unlimited_buffer(conn: &mut rustls::ConnectionCommon<impl Sized>) {
    conn.set_buffer_limit(None);
}

/// Writes `out` (IF-T frames as the state machine queued them) and flushes. With
/// `record_per_frame` every frame travels in a TLS record of its own, which openconnect
/// needs while it receives the configuration (it reads one record at a time and expects one
/// frame in it); an HTTP response at the start goes out whole. Otherwise rustls packs the
/// bytes into records as large as it likes.
pub async fn write_frames<W: TlsWrite>(
    tls: &mut W,
    mut out: &[u8],
    record_per_frame: bool,
) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    if !record_per_frame {
        tls.records().write_all(out)?;
        return tls.flush().await;
    }
    if out.starts_with(b"HTTP/") {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(out.len(), |p| p + 4);
        tls.records().write_all(&out[..end])?;
        out = &out[end..];
    }
    while !out.is_empty() {
        let len = out
            .get(8..12)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .filter(|&l| l >= tunnel_proto::HEADER_LEN && l <= out.len())
            .unwrap_or(out.len());
        tls.records().write_all(&out[..len])?;
        out = &out[len..];
    }
    tls.flush().await
}
