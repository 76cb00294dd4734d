//! The bytes hostile connections send: a TLS ClientHello to cut short, the HTTP upgrade
//! request, IF-T frame headers with whatever length they like, and random bytes.

use std::net::IpAddr;

use rand::RngCore as _;
use rustls::{ClientConnection, RootCertStore, pki_types::ServerName};
use tunnel_proto::{HEADER_LEN, VENDOR_TCG, build_upgrade_request};

use crate::client::tls::{Trust, client_config};

/// The `User-Agent` of the attacks' upgrade requests, so a gateway's log can tell them.
const USER_AGENT: &str = "tunnel-hostile";

/// The TLS records a client opens a handshake with (its ClientHello) for server `to`.
pub(super) fn client_hello(to: IpAddr) -> Result<Vec<u8>, String> {
    // Nothing is verified before the server answers, and the attack never reads the answer.
    let config = client_config(Trust::default(), RootCertStore::empty(), None)?;
    let mut conn = ClientConnection::new(config, ServerName::IpAddress(to.into()))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The HTTP upgrade request that opens IF-T over TLS, as the project's client sends it.
pub(super) fn upgrade_request(to: IpAddr) -> Vec<u8> {
    build_upgrade_request(&to.to_string(), "/", USER_AGENT, false, false).into_bytes()
}

/// An IF-T frame header claiming `length` bytes (header included), whatever follows.
pub(super) fn frame_header(vendor: u32, msg_type: u32, length: u32, seq: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    for (i, v) in [vendor, msg_type, length, seq].into_iter().enumerate() {
        h[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    h
}

/// The header of the first frame a client sends after the upgrade (the IF-T version
/// request), claiming `length` bytes.
pub(super) fn version_request_header(length: u32) -> [u8; HEADER_LEN] {
    frame_header(VENDOR_TCG, 1, length, 0)
}

/// `len` random bytes that do not open an HTTP request (they start with a byte no method
/// starts with).
pub(super) fn garbage(len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(1)];
    rand::rng().fill_bytes(&mut b);
    b[0] = 0;
    b
}

/// A well-formed frame of random vendor, type and payload (up to 4 KiB), as the first frame
/// after the upgrade.
pub(super) fn garbage_frame() -> Vec<u8> {
    let mut rng = rand::rng();
    let payload = garbage((rng.next_u32() % 4096) as usize + 1);
    let length = (HEADER_LEN + payload.len()) as u32;
    let mut f = frame_header(rng.next_u32(), rng.next_u32(), length, 0).to_vec();
    f.extend_from_slice(&payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunnel_proto::{FrameDecoder, parse_upgrade_request};

    #[test]
    fn a_client_hello_is_one_handshake_record() {
        let hello = client_hello("192.0.2.1".parse().unwrap()).unwrap();
        // Handshake content type, TLS 1.x record, its length as stated.
        assert_eq!(hello[0], 22);
        let len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
        assert_eq!(hello.len(), 5 + len);
    }

    #[test]
    fn the_upgrade_request_and_frames_parse_as_the_gateway_reads_them() {
        let req = upgrade_request("192.0.2.1".parse().unwrap());
        let (parsed, used) = parse_upgrade_request(&req).unwrap().unwrap();
        assert_eq!(used, req.len());
        assert_eq!(parsed.user_agent.as_deref(), Some(USER_AGENT));
        let mut d = FrameDecoder::new(1 << 20);
        d.push(&version_request_header(1000));
        assert!(
            d.next_frame().unwrap().is_none(),
            "waits for the claimed body"
        );
        let mut d = FrameDecoder::new(1 << 20);
        d.push(&garbage_frame());
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.header.length as usize, HEADER_LEN + f.payload.len());
        assert!((1..=4096).contains(&f.payload.len()));
        assert!(!garbage(10).starts_with(b"G"));
    }
}
