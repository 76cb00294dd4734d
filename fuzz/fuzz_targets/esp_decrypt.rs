//! ESP decapsulation of arbitrary datagrams, for every suite (AES-GCM included); and encapsulate/decapsulate of
//! arbitrary payloads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_proto::*;

struct Fixed(u8);
impl RandomSource for Fixed {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(self.0);
    }
}

const SPI: u32 = 0x0102_0304;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // Bits 0-1 pick a CBC suite; bit 5 picks AES-256-GCM instead.
    let suite = if sel & 32 != 0 {
        EspSuite::AES256_GCM
    } else {
        EspSuite {
            cipher: if sel & 1 == 0 {
                EspCipher::Aes128Cbc
            } else {
                EspCipher::Aes256Cbc
            },
            mac: if sel & 2 == 0 {
                EspMac::HmacSha1_96
            } else {
                EspMac::HmacSha256_128
            },
        }
    };
    let enc = vec![0x11; suite.cipher.key_len()];
    let mac = vec![0x22; suite.mac.key_len()];
    let mut rx = InboundSa::new(suite, SPI, &enc, &mac).expect("in");
    rx.set_replay_protection(sel & 4 == 0);

    // Arbitrary datagram, with our SPI when it is long enough to carry one.
    let mut datagram = rest.to_vec();
    if sel & 8 == 0 && datagram.len() >= 4 {
        datagram[..4].copy_from_slice(&SPI.to_be_bytes());
    }
    let forged = rx.decapsulate(&mut datagram);
    assert!(forged.is_err(), "forged datagram accepted");

    // Arbitrary payload as an IP packet: must come back unchanged.
    let mut tx = OutboundSa::new(suite, SPI, &enc, &mac).expect("out");
    let mut ip = rest.to_vec();
    if let Some(first) = ip.first_mut() {
        *first = if sel & 16 == 0 { 0x45 } else { 0x60 };
    }
    let mut out = vec![0u8; ip.len() + MAX_OVERHEAD];
    match tx.encapsulate(&ip, &mut out, &mut Fixed(sel)) {
        Ok(n) => {
            let got = rx.decapsulate(&mut out[..n]).expect("own packet decrypts");
            assert_eq!(got.payload, &ip[..]);
        }
        Err(e) => assert!(ip.is_empty(), "encapsulate failed: {e}"),
    }
});
