//! EAP packets, AVP lists and the Juniper request/response views on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_proto::*;

fuzz_target!(|data: &[u8]| {
    if let Ok(pkt) = EapPacket::parse(data) {
        let mut out = Vec::new();
        pkt.encode(&mut out).expect("a parsed packet re-encodes");
        assert_eq!(out, data);
    }
    for avp in parse_avps(data) {
        if avp.is_err() {
            break;
        }
    }
    // parse -> encode -> parse is stable.
    if let Ok(req) = AuthRequest::parse(data) {
        let mut out = Vec::new();
        if req.encode(&mut out).is_ok() {
            assert_eq!(AuthRequest::parse(&out).expect("re-parse request"), req);
        }
    }
    if let Ok(resp) = AuthResponse::parse(data) {
        let mut out = Vec::new();
        if resp.encode(&mut out).is_ok() {
            assert_eq!(AuthResponse::parse(&out).expect("re-parse response"), resp);
        }
    }
    let _ = PasswordMessage::parse(EapCode::Request, data);
    let _ = PasswordMessage::parse(EapCode::Response, data);
});
