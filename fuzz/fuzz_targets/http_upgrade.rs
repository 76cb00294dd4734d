//! The HTTP upgrade that opens every IF-T/TLS connection, on arbitrary bytes: the gateway
//! parses it before anything is authenticated. Never a panic; a head that parses ends where
//! it says, parses the same with IF-T bytes behind it, and no shorter prefix of it parses
//! (so the gateway waits for more rather than acting on part of a head); a parsed request
//! rebuilt with `build_upgrade_request` parses to the same request; and the gateway's state
//! machine comes to the same result whether the bytes arrive at once or in pieces.
//!
//! `ift_frames` reaches these parsers too, but with raw bytes only, which seldom make a
//! request that gets past the `Upgrade` header. Here the first byte's low bit makes the rest
//! the path (first line) and extra header lines of a request that otherwise passes.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tunnel_proto::*;

struct Zero;
impl RandomSource for Zero {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0x5a);
    }
}

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, rest @ ..] = data else {
        return;
    };
    let buf: Vec<u8> = if sel & 1 == 0 {
        rest.to_vec()
    } else {
        let text = String::from_utf8_lossy(rest);
        let (path, headers) = text.split_once('\n').unwrap_or((&text, ""));
        let mut head = format!("GET /{path} HTTP/1.1\r\n");
        for line in headers.lines() {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("Content-Type: EAP\r\nUpgrade: IF-T/TLS 1.0\r\n\r\n");
        head.into_bytes()
    };

    // Both directions' parsers: where a head ends, and what a prefix or a suffix changes.
    let request = parse_upgrade_request(&buf);
    check_framing(&buf, &request, parse_upgrade_request);
    check_framing(&buf, &parse_upgrade_response(&buf), parse_upgrade_response);

    // Rebuilt, a request parses to itself (the builder writes a path with one leading '/',
    // and always a Host and a User-Agent).
    if let Ok(Some((req, _))) = &request
        && let (Some(host), Some(agent)) = (&req.host, &req.user_agent)
        && !req.path.starts_with("//")
    {
        let built = build_upgrade_request(
            host,
            &req.path,
            agent,
            req.offers_aes_gcm,
            req.stream_records,
        );
        match parse_upgrade_request(built.as_bytes()) {
            Ok(Some((again, n))) => {
                assert_eq!(n, built.len());
                assert_eq!(&again, req, "{built:?}");
            }
            other => panic!("rebuilt request {built:?} gave {other:?}"),
        }
    }

    // The gateway: at once, and in pieces of `chunk` bytes, to the same first error.
    let now = Instant::now();
    let first_error = |pieces: Vec<&[u8]>| {
        let mut server = Server::with_rng(ServerConfig::default(), Box::new(Zero), now);
        pieces
            .into_iter()
            .find_map(|p| server.handle_tls_bytes(p, now).err())
            .map(|e| format!("{e:?}"))
    };
    let whole = first_error(vec![&buf[..]]);
    let pieces = first_error(buf.chunks(usize::from(*chunk).max(1)).collect());
    assert_eq!(whole, pieces, "at once vs in pieces of {chunk}");
});

/// A head that parses used `n` bytes ending in CRLF CRLF; every shorter prefix is
/// incomplete; bytes after it change nothing. A buffer that is incomplete has no end of
/// head in it and fits the limit.
fn check_framing<T: PartialEq + std::fmt::Debug>(
    buf: &[u8],
    result: &Result<Option<(T, usize)>, IftError>,
    parse: fn(&[u8]) -> Result<Option<(T, usize)>, IftError>,
) {
    match result {
        Ok(Some((parsed, n))) => {
            let n = *n;
            assert!(n <= buf.len() && n <= MAX_HTTP_HEAD, "{n} of {}", buf.len());
            assert!(buf[..n].ends_with(b"\r\n\r\n"));
            for k in [0, 1, n / 2, n - 1] {
                assert!(
                    matches!(parse(&buf[..k]), Ok(None)),
                    "a prefix of {k} of a {n}-byte head is not incomplete"
                );
            }
            let mut longer = buf[..n].to_vec();
            longer.extend_from_slice(&[0, 0, 0x55, 0x97, 0, 0, 0, 1]);
            match parse(&longer) {
                Ok(Some((again, m))) => assert_eq!((&again, m), (parsed, n)),
                other => panic!("with bytes behind it the head gave {other:?}"),
            }
        }
        Ok(None) => {
            assert!(buf.len() <= MAX_HTTP_HEAD);
            assert!(!buf.windows(4).any(|w| w == b"\r\n\r\n"));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
