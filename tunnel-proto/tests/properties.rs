//! Property tests: decoders never panic on arbitrary input, and encode/decode is the identity
//! on generated values.

use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;
use tunnel_proto::*;

struct TestRng(u64);

impl RandomSource for TestRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.0 >> 40) as u8;
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._@-]{0,40}"
}

fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,30}"
}

fn v4net() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, len)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ipv4Net {
            addr: Ipv4Addr::from(a & mask),
            prefix_len: len,
        }
    })
}

fn v6net() -> impl Strategy<Value = Ipv6Net> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, len)| Ipv6Net {
        addr: Ipv6Addr::from(a),
        prefix_len: len,
    })
}

fn config() -> impl Strategy<Value = Config> {
    let addrs = (
        proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        proptest::option::of(v6net()),
        vec(
            prop_oneof![
                any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
                any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
            ],
            0..4,
        ),
        vec(any::<u32>().prop_map(Ipv4Addr::from), 0..2),
        vec(word(), 0..3),
        proptest::option::of(any::<u32>()),
    );
    let routes = (
        vec(v4net(), 0..20),
        vec(v4net(), 0..20),
        vec(v6net(), 0..5),
        vec(v6net(), 0..5),
    );
    let esp = (
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    );
    let unknown = vec(
        (0x4100u16..0x4200, vec(any::<u8>(), 0..8))
            .prop_map(|(kind, value)| RawTlv { kind, value }),
        0..3,
    );
    (addrs, routes, esp, unknown).prop_map(
        |(
            (ipv4_address, ipv4_netmask, ipv6_address, dns, wins, search_domains, mtu),
            (include_v4, exclude_v4, include_v6, exclude_v6),
            (cipher, hmac, fallback_seconds, port, esp_only, allow_6in4),
            unknown,
        )| Config {
            ipv4_address,
            ipv4_netmask,
            ipv6_address,
            dns,
            wins,
            search_domains,
            mtu,
            include_v4,
            exclude_v4,
            include_v6,
            exclude_v6,
            esp: EspSettings {
                cipher,
                hmac,
                fallback_seconds,
                port,
                esp_only,
                allow_6in4,
                ..EspSettings::default()
            },
            unknown,
            ..Config::default()
        },
    )
}

fn suite() -> impl Strategy<Value = EspSuite> {
    (any::<bool>(), any::<bool>()).prop_map(|(a, b)| EspSuite {
        cipher: if a {
            EspCipher::Aes128Cbc
        } else {
            EspCipher::Aes256Cbc
        },
        mac: if b {
            EspMac::HmacSha1_96
        } else {
            EspMac::HmacSha256_128
        },
    })
}

proptest! {
    #[test]
    fn frame_decoder_never_panics(data in vec(any::<u8>(), 0..600), chunk in 1usize..64) {
        let mut dec = FrameDecoder::new(512);
        for piece in data.chunks(chunk) {
            dec.push(piece);
            while let Ok(Some(frame)) = dec.next_frame() {
                let _ = frame.message();
            }
        }
    }

    #[test]
    fn message_payload_parsers_never_panic(vendor in any::<u32>(), ty in 0u32..0x100, payload in vec(any::<u8>(), 0..64)) {
        let _ = Message::parse(FrameKind::from_wire(vendor, ty), &payload);
        for kind in [FrameKind::FatalError, FrameKind::ClientInfo, FrameKind::EspEnable,
                     FrameKind::AuthChallenge, FrameKind::VersionRequest] {
            let _ = Message::parse(kind, &payload);
        }
    }

    #[test]
    fn messages_round_trip(seq in any::<u32>(), bytes in vec(any::<u8>(), 0..100), s in text(),
                           a in any::<u8>(), b in any::<u8>(), c in any::<u8>(), code in any::<u32>()) {
        let msgs = vec![
            Message::VersionRequest { min: a, max: b, preferred: c },
            Message::VersionResponse { version: a },
            Message::AuthChallenge { eap: &bytes },
            Message::AuthResponse { eap: &bytes },
            Message::AuthSuccess { eap: &bytes },
            Message::Config(&bytes),
            Message::Data(&bytes),
            Message::FatalError { kind: FatalErrorKind::from_code(code), message: s.clone() },
            Message::ClientInfo(ClientInfo { hostname: s.replace(' ', "_"), client_ip: None }),
        ];
        for msg in msgs {
            let mut out = Vec::new();
            msg.encode_to_vec(seq, &mut out).expect("encode");
            let frame = Frame::parse(&out, u32::MAX).expect("frame");
            prop_assert_eq!(frame.header.seq, seq);
            prop_assert_eq!(frame.message().expect("message"), msg);
        }
    }

    #[test]
    fn upgrade_parsers_never_panic(data in vec(any::<u8>(), 0..300)) {
        let _ = parse_upgrade_request(&data);
        let _ = parse_upgrade_response(&data);
        let mut with_end = data.clone();
        with_end.extend_from_slice(b"\r\n\r\n");
        let _ = parse_upgrade_request(&with_end);
        let _ = parse_upgrade_response(&with_end);
    }

    #[test]
    fn eap_and_avp_parsers_never_panic(data in vec(any::<u8>(), 0..200)) {
        if let Ok(pkt) = EapPacket::parse(&data) {
            let mut out = Vec::new();
            pkt.encode(&mut out).expect("re-encode");
            prop_assert_eq!(&out, &data);
        }
        for avp in parse_avps(&data) {
            if avp.is_err() { break; }
        }
        let _ = AuthRequest::parse(&data);
        let _ = AuthResponse::parse(&data);
        let _ = PasswordMessage::parse(EapCode::Request, &data);
        let _ = PasswordMessage::parse(EapCode::Response, &data);
    }

    #[test]
    fn auth_messages_round_trip(realms in vec(word(), 0..4), cookie in proptest::option::of(word()),
                                user in proptest::option::of(text()), pw in text(), ident in any::<u8>(),
                                idle in proptest::option::of(any::<u32>()), retry in any::<bool>()) {
        let req = AuthRequest {
            realms: realms.clone(),
            cookie: cookie.clone(),
            idle_timeout: idle,
            inner: Some(InnerRequest::Password {
                identifier: ident,
                message: PasswordMessage::Request { code: if retry { J2_PASSWORD_RETRY } else { J2_PASSWORD_REQUEST } },
            }),
            ..AuthRequest::default()
        };
        let mut out = Vec::new();
        req.encode(&mut out).expect("encode");
        prop_assert_eq!(AuthRequest::parse(&out).expect("parse"), req);

        let resp = AuthResponse {
            realm: realms.first().cloned(),
            cookie,
            username: user,
            inner: Some(InnerResponse { identifier: ident, answer: Answer::J2(PasswordMessage::Response { password: pw }) }),
            ..AuthResponse::default()
        };
        let mut avps = Vec::new();
        resp.encode(&mut avps).expect("encode");
        prop_assert_eq!(avps.len() % 4, 0);
        let mut eap = Vec::new();
        encode_juniper_avps(EapCode::Response, ident, &avps, &mut eap).expect("eap");
        let pkt = EapPacket::parse(&eap).expect("parse");
        let data = pkt.juniper_data(EapCode::Response, JUNIPER_SUBTYPE_AVPS).expect("J1");
        prop_assert_eq!(AuthResponse::parse(data).expect("parse"), resp);
    }

    #[test]
    fn config_parser_never_panics(data in vec(any::<u8>(), 0..400), magic in prop_oneof![
        Just(CONFIG_MAGIC), Just(CONFIG_MAGIC_R14), Just(ESP_CONFIG_MAGIC)]) {
        let _ = ConfigPacket::parse(&data);
        // Give the structured paths a chance: valid header, random body.
        let mut p = vec![0u8; 0x1c];
        p[0x10..0x14].copy_from_slice(&magic.to_be_bytes());
        p.extend_from_slice(&data);
        let len = p.len() as u32;
        p[0x18..0x1c].copy_from_slice(&len.to_be_bytes());
        let _ = ConfigPacket::parse(&p);
    }

    #[test]
    fn config_round_trips(cfg in config()) {
        let mut out = Vec::new();
        cfg.encode(&mut out).expect("encode");
        match ConfigPacket::parse(&out).expect("parse") {
            ConfigPacket::Main(got) => prop_assert_eq!(*got, cfg),
            other => prop_assert!(false, "got {:?}", other),
        }
    }

    #[test]
    fn esp_exchange_round_trips(spi in any::<u32>(), s in vec(any::<u8>(), 64), echo in any::<bool>()) {
        let mut secrets = [0u8; ESP_SECRETS_LEN];
        secrets.copy_from_slice(&s);
        let x = EspKeyExchange {
            keys: EspKeys { spi, secrets },
            echo: echo.then_some(EspKeys { spi: !spi, secrets }),
        };
        let mut out = Vec::new();
        x.encode(&mut out).expect("encode");
        prop_assert_eq!(ConfigPacket::parse(&out).expect("parse"), ConfigPacket::Esp(x));
    }

    #[test]
    fn range_to_prefixes_covers_exactly(a in any::<u32>(), b in any::<u32>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        let nets = range_to_prefixes(Ipv4Addr::from(lo), Ipv4Addr::from(hi));
        let mut next = u64::from(lo);
        for n in &nets {
            let (first, last) = n.range();
            prop_assert_eq!(u64::from(u32::from(first)), next);
            prop_assert_eq!(first, n.addr);
            next = u64::from(u32::from(last)) + 1;
        }
        prop_assert_eq!(next, u64::from(hi) + 1);
        prop_assert!(nets.len() <= 62);
    }

    #[test]
    fn esp_round_trip_and_garbage(suite in suite(), payload in vec(any::<u8>(), 1..1500),
                                  v6 in any::<bool>(), garbage in vec(any::<u8>(), 0..200), flip in any::<usize>()) {
        let enc = vec![7u8; suite.cipher.key_len()];
        let mac = vec![9u8; suite.mac.key_len()];
        let mut tx = OutboundSa::new(suite, 0xabcd, &enc, &mac).expect("out");
        let mut rx = InboundSa::new(suite, 0xabcd, &enc, &mac).expect("in");
        let mut ip = payload.clone();
        ip[0] = if v6 { 0x60 } else { 0x45 };
        let mut out = vec![0u8; ip.len() + MAX_OVERHEAD];
        let n = tx.encapsulate(&ip, &mut out, &mut TestRng(4)).expect("enc");
        let mut tampered = out[..n].to_vec();
        let got = rx.decapsulate(&mut out[..n]).expect("dec");
        prop_assert_eq!(got.payload, &ip[..]);
        // Any single-bit change after the SPI is caught (replay or MAC).
        let i = 4 + flip % (n - 4);
        tampered[i] ^= 1 << (flip % 8);
        prop_assert!(rx.decapsulate(&mut tampered).is_err());
        // Arbitrary datagrams, with our SPI so they reach the MAC check.
        let mut g = garbage.clone();
        if g.len() >= 4 { g[..4].copy_from_slice(&0xabcdu32.to_be_bytes()); }
        prop_assert!(rx.decapsulate(&mut g).is_err());
    }

    /// The window against a naive model: accept iff unseen and within 64 of the highest.
    #[test]
    fn replay_window_matches_model(seqs in vec(prop_oneof![0u32..200, any::<u32>()], 1..200)) {
        let mut w = ReplayWindow::new();
        let mut seen = HashSet::new();
        let mut highest: Option<u32> = None;
        for s in seqs {
            let model_ok = !seen.contains(&s)
                && highest.is_none_or(|h| s > h || h - s < REPLAY_WINDOW);
            let got = w.check(s);
            prop_assert_eq!(got.is_ok(), model_ok, "seq {} highest {:?}", s, highest);
            if got.is_ok() {
                w.accept(s);
                seen.insert(s);
                highest = Some(highest.map_or(s, |h| h.max(s)));
            }
        }
    }

    #[test]
    fn sessions_never_panic_on_garbage(data in vec(any::<u8>(), 0..400), prefix in any::<bool>()) {
        let now = Instant::now();
        let mut client = Client::with_rng(ClientConfig::new("gw"), Box::new(TestRng(1)));
        client.start().expect("start");
        let mut input = if prefix { build_upgrade_response().to_vec() } else { Vec::new() };
        input.extend_from_slice(&data);
        let _ = client.handle_tls_bytes(&input, now);
        let mut server = Server::with_rng(ServerConfig::default(), Box::new(TestRng(2)), now);
        let mut input = if prefix { build_upgrade_request("gw", "/", "x", prefix, prefix).into_bytes() } else { Vec::new() };
        input.extend_from_slice(&data);
        let _ = server.handle_tls_bytes(&input, now);
        let _ = server.poll_timers(now);
    }
}
