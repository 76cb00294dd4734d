//! Config and ESP key exchange packets on arbitrary bytes; what decodes must re-encode to
//! something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_proto::*;

fuzz_target!(|data: &[u8]| {
    // Raw, and behind a valid common header so the structured paths are reached.
    check(data);
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let magic = [CONFIG_MAGIC, CONFIG_MAGIC_R14, ESP_CONFIG_MAGIC][usize::from(sel % 3)];
    let mut p = vec![0u8; 0x1c];
    p[0x10..0x14].copy_from_slice(&magic.to_be_bytes());
    p.extend_from_slice(body);
    let len = p.len() as u32;
    p[0x18..0x1c].copy_from_slice(&len.to_be_bytes());
    check(&p);
});

fn check(payload: &[u8]) {
    match ConfigPacket::parse(payload) {
        Ok(ConfigPacket::Main(cfg)) => {
            let mut out = Vec::new();
            // Too many routes after range-to-prefix splitting is a legitimate encode error.
            if cfg.encode(&mut out).is_ok() {
                match ConfigPacket::parse(&out) {
                    Ok(ConfigPacket::Main(again)) => assert_eq!(again, cfg),
                    other => panic!("re-encoded config decodes as {other:?}"),
                }
            }
        }
        Ok(ConfigPacket::Esp(x)) => {
            let mut out = Vec::new();
            x.encode(&mut out).expect("ESP exchange re-encodes");
            assert_eq!(
                ConfigPacket::parse(&out).expect("re-parse"),
                ConfigPacket::Esp(x)
            );
        }
        Ok(_) | Err(_) => {}
    }
}
