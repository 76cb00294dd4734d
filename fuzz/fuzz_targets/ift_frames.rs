//! IF-T framing, message parsing, the HTTP upgrade and both state machines on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Instant;
use tunnel_proto::*;

struct Zero;
impl RandomSource for Zero {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0x5a);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);

    // Decoder: frames across arbitrary record boundaries, every frame interpreted and, when
    // it parses, re-encoded to the same bytes (modulo the masked reserved byte).
    let mut dec = FrameDecoder::new(4096);
    'outer: for piece in rest.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(msg) = frame.message() {
                        let mut out = Vec::new();
                        if msg.encode_to_vec(frame.header.seq, &mut out).is_ok() {
                            let again = Frame::parse(&out, u32::MAX).expect("re-encoded frame");
                            assert_eq!(again.message().expect("re-parse"), msg);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }

    let _ = parse_upgrade_request(rest);
    let _ = parse_upgrade_response(rest);

    // Both state machines after a valid upgrade.
    let now = Instant::now();
    let mut client = Client::with_rng(ClientConfig::new("gw"), Box::new(Zero));
    client.start().expect("start");
    let _ = client.handle_tls_bytes(build_upgrade_response(), now);
    for piece in rest.chunks(chunk) {
        if client.handle_tls_bytes(piece, now).is_err() {
            break;
        }
    }
    let mut server = Server::with_rng(ServerConfig::default(), Box::new(Zero), now);
    let _ = server.handle_tls_bytes(build_upgrade_request("gw", "/", "f", false, false).as_bytes(), now);
    for piece in rest.chunks(chunk) {
        if server.handle_tls_bytes(piece, now).is_err() {
            break;
        }
    }
    let _ = server.poll_timers(now);
});
