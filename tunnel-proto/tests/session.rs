//! Client and server state machines driven against each other with no I/O: every byte the
//! one writes is fed to the other, in small chunks so frames straddle "TLS records".

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tunnel_proto::*;

/// Reproducible randomness, different per seed.
struct TestRng(u64);

impl RandomSource for TestRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 33) as u8;
        }
    }
}

/// What one datagram was, opened as a train of one (the only way the API opens ESP): an IP
/// packet, a probe, or (server only) a probe whose answer was written into the reply
/// buffer by `poll_esp_transmit`.
#[derive(Debug, PartialEq, Eq)]
enum Opened<'a> {
    Packet(&'a [u8]),
    Probe,
    ProbeReply(usize),
}

/// Opens `d` as a train of one through `open`, keeping the payload's place in `d`.
fn open_one<'a>(
    d: &'a mut [u8],
    open: impl FnOnce(&mut [u8], &mut dyn FnMut(Result<EspInput<'_>, SessionError>)),
) -> Result<Opened<'a>, SessionError> {
    let base = d.as_ptr() as usize;
    let mut got = None;
    open(d, &mut |r| {
        got = Some(r.map(|input| match input {
            EspInput::Packet(p) => Some((p.as_ptr() as usize - base, p.len())),
            _ => None,
        }))
    });
    match got.expect("one datagram, one result")? {
        Some((at, len)) => Ok(Opened::Packet(&d[at..at + len])),
        None => Ok(Opened::Probe),
    }
}

/// The gateway opens one datagram; a probe's answer goes into `reply`.
fn server_esp<'a>(
    server: &mut Server,
    d: &'a mut [u8],
    now: Instant,
    reply: &mut [u8],
) -> Result<Opened<'a>, SessionError> {
    let len = d.len();
    let opened = open_one(d, |d, f| {
        let _newest = server.handle_esp_train(d, len, now, f);
    })?;
    if opened != Opened::Probe {
        return Ok(opened);
    }
    Ok(match server.poll_esp_transmit(reply)? {
        Some(n) => Opened::ProbeReply(n),
        None => Opened::Probe,
    })
}

/// The client opens one datagram.
fn client_esp<'a>(
    client: &mut Client,
    d: &'a mut [u8],
    now: Instant,
) -> Result<Opened<'a>, SessionError> {
    let len = d.len();
    open_one(d, |d, f| client.handle_esp_train(d, len, now, f))
}

/// The client's timers run; the probe they sent, if any, is written into `out`.
fn client_timers(
    client: &mut Client,
    now: Instant,
    out: &mut [u8],
) -> Result<Option<usize>, SessionError> {
    client.poll_timers(now)?;
    client.poll_esp_transmit(out)
}

struct Harness {
    client: Client,
    server: Server,
    now: Instant,
    chunk: usize,
    client_events: Vec<ClientEvent>,
    server_events: Vec<ServerEvent>,
    c2s_log: Vec<u8>,
    s2c_log: Vec<u8>,
}

impl Harness {
    fn new(client_cfg: ClientConfig, server_cfg: ServerConfig) -> Self {
        let now = Instant::now();
        let mut client = Client::with_rng(client_cfg, Box::new(TestRng(1)));
        client.start().expect("start");
        Self {
            client,
            server: Server::with_rng(server_cfg, Box::new(TestRng(2)), now),
            now,
            chunk: 7,
            client_events: Vec::new(),
            server_events: Vec::new(),
            c2s_log: Vec::new(),
            s2c_log: Vec::new(),
        }
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn pump(&mut self) {
        loop {
            let c2s = self.client.pending_tls().to_vec();
            self.client.consume_tls(c2s.len());
            self.c2s_log.extend_from_slice(&c2s);
            for piece in c2s.chunks(self.chunk) {
                if !self.server.is_closed() {
                    self.server
                        .handle_tls_bytes(piece, self.now)
                        .expect("server input");
                }
            }
            let s2c = self.server.pending_tls().to_vec();
            self.server.consume_tls(s2c.len());
            self.s2c_log.extend_from_slice(&s2c);
            for piece in s2c.chunks(self.chunk) {
                if !self.client.is_closed() {
                    self.client
                        .handle_tls_bytes(piece, self.now)
                        .expect("client input");
                }
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
            }
            if c2s.is_empty() && s2c.is_empty() {
                break;
            }
        }
    }

    fn take_client_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.client_events)
    }

    fn take_server_events(&mut self) -> Vec<ServerEvent> {
        std::mem::take(&mut self.server_events)
    }

    /// Runs the login up to the server's Authenticate event and returns that event's fields.
    fn login_until_decision(&mut self, realm: Option<&str>, user: &str, pass: &str) {
        self.pump();
        let events = self.take_client_events();
        match (realm, events.as_slice()) {
            (Some(r), [ClientEvent::RealmRequired { .. }]) => {
                self.client.choose_realm(r).expect("realm");
                self.pump();
                let events = self.take_client_events();
                assert!(
                    matches!(
                        events[..],
                        [ClientEvent::CredentialsRequired { retry: false, .. }]
                    ),
                    "{events:?}"
                );
            }
            (None, [ClientEvent::CredentialsRequired { retry: false, .. }]) => {}
            other => panic!("unexpected start of login: {other:?}"),
        }
        self.client.provide_credentials(user, pass).expect("creds");
        self.pump();
    }

    /// The client's first probe, the server's answer: ESP is up on the client.
    fn bring_up_esp(&mut self) {
        let (mut udp, mut reply) = ([0u8; 2048], [0u8; 2048]);
        let n = client_timers(&mut self.client, self.now, &mut udp)
            .expect("timers")
            .expect("first probe");
        let Ok(Opened::ProbeReply(m)) =
            server_esp(&mut self.server, &mut udp[..n], self.now, &mut reply)
        else {
            panic!("the server did not answer the probe");
        };
        assert_eq!(
            client_esp(&mut self.client, &mut reply[..m], self.now),
            Ok(Opened::Probe)
        );
        assert!(self.client.esp_up());
    }

    fn establish(&mut self, config: &Config) {
        self.login_until_decision(None, "alice", "correct horse");
        self.server.accept("DSID-1").expect("accept");
        self.pump();
        self.server.send_config(config, self.now).expect("config");
        self.pump();
        assert_eq!(self.client.state(), ClientState::Established);
        assert!(self.server.is_established());
    }
}

fn ipv4_packet(len: usize, tag: u8) -> Vec<u8> {
    let mut p = vec![tag; len];
    p[0] = 0x45;
    p
}

fn ipv6_packet(len: usize) -> Vec<u8> {
    let mut p = vec![6; len];
    p[0] = 0x60;
    p
}

fn tunnel_config(esp: bool) -> Config {
    Config {
        ipv4_address: Some(Ipv4Addr::new(10, 10, 0, 2)),
        ipv4_netmask: Some(Ipv4Addr::new(255, 255, 255, 255)),
        ipv6_address: Some(Ipv6Net {
            addr: "fd10::2".parse().expect("v6"),
            prefix_len: 64,
        }),
        dns: vec![
            IpAddr::V4(Ipv4Addr::new(10, 10, 0, 53)),
            IpAddr::V6("fd10::53".parse().expect("v6")),
        ],
        search_domains: vec!["corp.example".into()],
        mtu: Some(1400),
        include_v4: vec![
            Ipv4Net {
                addr: Ipv4Addr::new(10, 0, 0, 0),
                prefix_len: 8,
            },
            Ipv4Net {
                addr: Ipv4Addr::new(192, 168, 50, 0),
                prefix_len: 24,
            },
        ],
        exclude_v4: vec![Ipv4Net {
            addr: Ipv4Addr::new(10, 99, 0, 0),
            prefix_len: 16,
        }],
        include_v6: vec![Ipv6Net {
            addr: "fd00::".parse().expect("v6"),
            prefix_len: 8,
        }],
        exclude_v6: vec![Ipv6Net {
            addr: "fd99::".parse().expect("v6"),
            prefix_len: 16,
        }],
        esp: if esp {
            EspSettings {
                cipher: Some(EspCipher::Aes256Cbc.code()),
                hmac: Some(EspMac::HmacSha256_128.code()),
                lifetime_seconds: Some(3600),
                lifetime_bytes: Some(0),
                replay_protection: Some(true),
                port: Some(4500),
                fallback_seconds: Some(15),
                esp_only: Some(false),
                allow_6in4: Some(false),
            }
        } else {
            EspSettings::default()
        },
        ..Config::default()
    }
}

fn two_realms() -> ServerConfig {
    ServerConfig {
        realms: vec!["Users".into(), "Admins".into()],
        idle_timeout: Some(Duration::from_secs(600)),
        ..ServerConfig::default()
    }
}

#[test]
fn full_password_login_with_realm_selection_and_config_push() {
    let mut h = Harness::new(ClientConfig::new("gw.example"), two_realms());
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::RealmRequired {
            realms: vec!["Users".into(), "Admins".into()]
        }]
    );
    let server_events = h.take_server_events();
    assert!(matches!(
        &server_events[..],
        [ServerEvent::Upgraded(req), ServerEvent::ClientInfo(info)]
            if req.path == "/" && req.host.as_deref() == Some("gw.example")
                && info.hostname == "localhost"
    ));
    h.client.choose_realm("Admins").expect("realm");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::CredentialsRequired {
            retry: false,
            username_prompt: None,
            password_prompt: None,
            max_password_len: CURRENT_PASSWORD_FIELD,
        }]
    );
    assert_eq!(h.client.state(), ClientState::WaitingForInput);
    h.client
        .provide_credentials("alice", "correct horse")
        .expect("creds");
    h.pump();
    assert_eq!(
        h.take_server_events(),
        [ServerEvent::Authenticate {
            realm: Some("Admins".into()),
            username: "alice".into(),
            password: Password::new("correct horse"),
        }]
    );
    h.server.accept("DSID-0123456789abcdef").expect("accept");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [
            ClientEvent::CookieReceived {
                cookie: "DSID-0123456789abcdef".into(),
                auth_expiration: None,
                idle_timeout: Some(Duration::from_secs(600)),
            },
            ClientEvent::Authenticated
        ]
    );
    assert_eq!(
        h.take_server_events(),
        [ServerEvent::Authenticated {
            username: Some("alice".into()),
            realm: Some("Admins".into()),
            cookie: "DSID-0123456789abcdef".into(),
            resumed: false,
        }]
    );
    assert_eq!(h.client.state(), ClientState::Configuring);
    let config = tunnel_config(true);
    h.server.send_config(&config, h.now).expect("config");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::Configured(Box::new(config.clone()))]
    );
    assert_eq!(h.take_server_events(), [ServerEvent::EspKeysInstalled]);
    assert_eq!(h.client.config(), Some(&config));
    assert_eq!(h.client.state(), ClientState::Established);
}

#[test]
fn login_survives_one_byte_records() {
    let mut h = Harness::new(ClientConfig::new("gw"), two_realms());
    h.chunk = 1;
    h.login_until_decision(Some("Users"), "bob", "pw");
    assert!(matches!(
        &h.take_server_events()[..],
        [.., ServerEvent::Authenticate { username, realm: Some(r), .. }]
            if username == "bob" && r == "Users"
    ));
}

#[test]
fn wrong_password_retry_then_failure() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.login_until_decision(None, "alice", "wrong");
    h.server.reject(AuthRejection::Retry).expect("retry");
    h.pump();
    assert!(matches!(
        h.take_client_events()[..],
        [ClientEvent::CredentialsRequired { retry: true, .. }]
    ));
    h.client
        .provide_credentials("alice", "wrong again")
        .expect("creds");
    h.pump();
    assert!(matches!(
        &h.take_server_events()[..],
        [.., ServerEvent::Authenticate { password, realm: Some(r), .. }]
            if password.expose() == "wrong again" && r == "Users"
    ));
    h.server
        .reject(AuthRejection::Failure(
            "Invalid username or password".into(),
        ))
        .expect("reject");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::AuthFailed(AuthFailure::Message(
            "Invalid username or password".into()
        ))]
    );
    assert!(h.client.is_closed());
    assert_eq!(
        h.take_server_events(),
        [ServerEvent::Closed(CloseReason::AuthRejected)]
    );
}

#[test]
fn failure_code_reaches_the_client() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.login_until_decision(None, "locked", "pw");
    h.server.reject(AuthRejection::Code(0x0d)).expect("reject");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::AuthFailed(AuthFailure::Code(0x0d))]
    );
}

#[test]
fn unknown_realm_fails_the_login() {
    let mut h = Harness::new(ClientConfig::new("gw"), two_realms());
    h.pump();
    h.take_client_events();
    h.client.choose_realm("Nope").expect("realm");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::AuthFailed(AuthFailure::Message(
            "Unknown realm Nope".into()
        ))]
    );
}

#[test]
fn cookie_resume_accepted() {
    let mut cfg = ClientConfig::new("gw");
    cfg.cookie = Some("DSID-old".into());
    let mut h = Harness::new(cfg, two_realms());
    h.pump();
    assert!(matches!(
        &h.take_server_events()[..],
        [.., ServerEvent::ResumeRequested { cookie }] if cookie == "DSID-old"
    ));
    assert!(h.take_client_events().is_empty());
    h.server.accept("DSID-old").expect("accept");
    h.pump();
    assert!(matches!(
        &h.take_client_events()[..],
        [ClientEvent::CookieReceived { cookie, .. }, ClientEvent::Authenticated]
            if cookie == "DSID-old"
    ));
    assert_eq!(
        h.take_server_events(),
        [ServerEvent::Authenticated {
            username: None,
            realm: None,
            cookie: "DSID-old".into(),
            resumed: true
        }]
    );
    h.server
        .send_config(&tunnel_config(false), h.now)
        .expect("cfg");
    h.pump();
    assert_eq!(h.client.state(), ClientState::Established);
}

#[test]
fn cookie_resume_rejected_falls_back_to_login() {
    let mut cfg = ClientConfig::new("gw");
    cfg.cookie = Some("DSID-stale".into());
    let mut h = Harness::new(cfg, ServerConfig::default());
    h.pump();
    h.server
        .reject(AuthRejection::Retry)
        .expect("reject resume");
    h.pump();
    assert!(matches!(
        h.take_client_events()[..],
        [
            ClientEvent::ResumeRejected,
            ClientEvent::CredentialsRequired { retry: false, .. }
        ]
    ));
    h.client.provide_credentials("alice", "pw").expect("creds");
    h.pump();
    assert!(matches!(
        h.take_server_events().last(),
        Some(ServerEvent::Authenticate { .. })
    ));
}

#[test]
fn data_frames_both_ways_over_tls() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&tunnel_config(false));
    h.take_client_events();
    h.take_server_events();
    let mut buf = [0u8; 2048];
    let up = ipv4_packet(60, 1);
    assert_eq!(
        h.client.send_packet(&up, h.now, &mut buf),
        Ok(Transmit::Tls)
    );
    let down = ipv6_packet(80);
    assert_eq!(
        h.server.send_packet(&down, h.now, &mut buf),
        Ok(Transmit::Tls)
    );
    h.pump();
    assert_eq!(h.take_server_events(), [ServerEvent::Packet(up)]);
    assert_eq!(h.take_client_events(), [ClientEvent::Packet(down)]);
    // Once logged in, frames larger than any login message are taken (a 64 KiB packet).
    let big = ipv4_packet(65_535, 2);
    let mut buf = vec![0u8; 70_000];
    const { assert!(DEFAULT_LOGIN_MAX_FRAME_LEN < 65_535) };
    assert_eq!(
        h.client.send_packet(&big, h.now, &mut buf),
        Ok(Transmit::Tls)
    );
    h.pump();
    assert_eq!(h.take_server_events(), [ServerEvent::Packet(big)]);
}

/// The client sends its ESP keys over TLS and probes over UDP at once; the first probe can
/// reach the gateway before the keys. The gateway answers it once the keys are in.
#[test]
fn a_probe_that_overtakes_the_client_keys_is_answered_when_they_arrive() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.login_until_decision(None, "alice", "correct horse");
    h.server.accept("DSID-1").expect("accept");
    h.pump();
    h.server
        .send_config(&tunnel_config(true), h.now)
        .expect("config");
    // Deliver the server's config to the client only; hold the client's answer (its keys).
    let s2c = h.server.pending_tls().to_vec();
    h.server.consume_tls(s2c.len());
    h.client
        .handle_tls_bytes(&s2c, h.now)
        .expect("client takes the config");
    let mut udp = [0u8; 2048];
    let mut reply = [0u8; 2048];
    let n = client_timers(&mut h.client, h.now, &mut udp)
        .expect("timers")
        .expect("first probe");
    let got = server_esp(&mut h.server, &mut udp[..n], h.now, &mut reply).expect("server esp");
    assert_eq!(
        got,
        Opened::Probe,
        "no client keys yet: nothing to answer with"
    );
    assert_eq!(
        h.server.poll_esp_transmit(&mut reply),
        Ok(None),
        "still no keys"
    );
    h.pump();
    let m = h
        .server
        .poll_esp_transmit(&mut reply)
        .expect("esp transmit")
        .expect("the held probe is answered once the keys are in");
    assert_eq!(
        client_esp(&mut h.client, &mut reply[..m], h.now),
        Ok(Opened::Probe)
    );
    assert!(h.client.esp_up());
    assert_eq!(
        h.server.poll_esp_transmit(&mut reply),
        Ok(None),
        "answered once"
    );
}

#[test]
fn esp_probe_handshake_then_data_both_ways() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&tunnel_config(true));
    h.take_client_events();
    h.take_server_events();
    let mut udp = [0u8; 2048];
    let mut reply = [0u8; 2048];

    assert_eq!(h.client.next_timer(), Some(h.now));
    let n = client_timers(&mut h.client, h.now, &mut udp)
        .expect("timers")
        .expect("first probe");
    assert_eq!(peek_spi(&udp), h.server.esp_spi());
    let got = server_esp(&mut h.server, &mut udp[..n], h.now, &mut reply).expect("server esp");
    let Opened::ProbeReply(m) = got else {
        panic!("expected a probe reply, got {got:?}");
    };
    assert!(!h.client.esp_up());
    assert_eq!(
        client_esp(&mut h.client, &mut reply[..m], h.now),
        Ok(Opened::Probe)
    );
    assert!(h.client.esp_up());
    assert_eq!(h.client.poll_event(), Some(ClientEvent::EspUp));

    let up = ipv4_packet(1200, 2);
    let Transmit::Esp(n) = h.client.send_packet(&up, h.now, &mut udp).expect("send") else {
        panic!("client did not use ESP");
    };
    assert_eq!(
        server_esp(&mut h.server, &mut udp[..n], h.now, &mut reply),
        Ok(Opened::Packet(&up[..]))
    );
    let down = ipv4_packet(300, 3);
    let Transmit::Esp(n) = h.server.send_packet(&down, h.now, &mut udp).expect("send") else {
        panic!("server did not use ESP");
    };
    assert_eq!(
        client_esp(&mut h.client, &mut udp[..n], h.now),
        Ok(Opened::Packet(&down[..]))
    );
    // Replayed datagram: refused, session unaffected.
    let Transmit::Esp(n) = h.server.send_packet(&down, h.now, &mut udp).expect("send") else {
        panic!("server did not use ESP");
    };
    let copy = udp[..n].to_vec();
    assert!(client_esp(&mut h.client, &mut udp[..n], h.now).is_ok());
    assert!(matches!(
        client_esp(&mut h.client, &mut copy.clone(), h.now),
        Err(SessionError::Esp(EspError::Replayed { .. }))
    ));
    // Without the 6in4 flag, IPv6 goes over TLS when the ESP socket is IPv4.
    assert_eq!(
        h.client.send_packet(&ipv6_packet(60), h.now, &mut udp),
        Ok(Transmit::Tls)
    );
    assert!(!h.client.is_closed());
}

/// The fast path's trains between the two state machines: packets staged into one buffer,
/// sealed at once, opened at once, in order; a probe inside a train is answered through
/// `poll_esp_transmit`; a train staged before a rekey is not sealed with the new keys.
#[test]
fn esp_trains_both_ways() {
    for gcm in [false, true] {
        let mut client_cfg = ClientConfig::new("gw");
        client_cfg.offer_aes_gcm = gcm;
        let mut h = Harness::new(client_cfg, ServerConfig::default());
        let mut config = tunnel_config(true);
        if gcm {
            config.esp.cipher = Some(20);
            config.esp.hmac = Some(0);
        }
        h.establish(&config);
        h.bring_up_esp();
        let mut udp = [0u8; 2048];
        let mut reply = [0u8; 2048];
        let packets: Vec<Vec<u8>> = (0..20)
            .map(|i| ipv4_packet(if i == 19 { 500 } else { 1300 }, i as u8))
            .collect();
        // Client to server, with a probe as datagram 7 of the train.
        let mut train = Vec::new();
        let mut size = 0;
        for (i, p) in packets.iter().enumerate() {
            let mut d = [0u8; 2048];
            let Transmit::Esp(n) = h.client.stage_packet(p, h.now, &mut d).expect("stage") else {
                panic!("not ESP");
            };
            size = size.max(n);
            train.extend_from_slice(&d[..n]);
            if i == 6 {
                // A probe is a complete datagram of another size: it travels alone.
                h.client.seal_train(&mut train, size).expect("seal");
                let mut got = Vec::new();
                let newest = h
                    .server
                    .handle_esp_train(&mut train, size, h.now, |r| got.push(format!("{r:?}")));
                assert_eq!(got.len(), 7);
                assert!(newest, "fresh datagrams are the newest of their SA");
                train.clear();
                let n = client_timers(&mut h.client, h.now + Duration::from_secs(3600), &mut udp);
                let Ok(Some(n)) = n else {
                    panic!("no DPD probe: {n:?}");
                };
                {
                    let mut seen = Vec::new();
                    let newest = h
                        .server
                        .handle_esp_train(&mut udp[..n], n, h.now, |r| seen.push(format!("{r:?}")));
                    assert_eq!(seen, ["Ok(Probe)"]);
                    assert!(newest);
                    let m = h
                        .server
                        .poll_esp_transmit(&mut reply)
                        .expect("poll")
                        .expect("answer");
                    assert_eq!(
                        client_esp(&mut h.client, &mut reply[..m], h.now),
                        Ok(Opened::Probe)
                    );
                }
            }
        }
        h.client.seal_train(&mut train, size).expect("seal");
        let mut got: Vec<Vec<u8>> = Vec::new();
        let newest = h
            .server
            .handle_esp_train(&mut train, size, h.now, |r| match r {
                Ok(EspInput::Packet(p)) => got.push(p.to_vec()),
                other => panic!("{other:?}"),
            });
        assert!(newest);
        assert_eq!(got, packets[7..], "gcm {gcm}");
        // Server to client.
        let mut train = Vec::new();
        let mut size = 0;
        for p in &packets {
            let mut d = [0u8; 2048];
            let Transmit::Esp(n) = h.server.stage_packet(p, h.now, &mut d).expect("stage") else {
                panic!("not ESP");
            };
            size = size.max(n);
            train.extend_from_slice(&d[..n]);
        }
        h.server.seal_train(&mut train, size).expect("seal");
        let mut got: Vec<Vec<u8>> = Vec::new();
        h.client
            .handle_esp_train(&mut train, size, h.now, |r| match r {
                Ok(EspInput::Packet(p)) => got.push(p.to_vec()),
                other => panic!("{other:?}"),
            });
        assert_eq!(got, packets, "gcm {gcm}");
        // Staged, then the server rekeys and the client installs new keys: not sealed.
        let mut d = [0u8; 2048];
        let Transmit::Esp(n) = h
            .client
            .stage_packet(&packets[0], h.now, &mut d)
            .expect("stage")
        else {
            panic!("not ESP");
        };
        h.server.rekey_esp(h.now).expect("rekey");
        h.pump();
        let staged = d[..n].to_vec();
        if gcm {
            // Sealed when staged: nothing left to do, and nothing is changed.
            assert!(h.client.seal_train(&mut d[..n], n).is_ok());
        } else {
            assert!(matches!(
                h.client.seal_train(&mut d[..n], n),
                Err(SessionError::Esp(EspError::SpiMismatch { .. }))
            ));
        }
        assert_eq!(d[..n], staged[..]);
    }
}

#[test]
fn esp_dead_peer_detection_falls_back_to_tls_and_retries() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&tunnel_config(true));
    h.bring_up_esp();
    let mut udp = [0u8; 2048];
    // Fallback is 15 s: a DPD probe at 15 s, dead at 30 s.
    let dpd = h.now + Duration::from_secs(15);
    assert_eq!(h.client.next_timer(), Some(dpd));
    assert_eq!(
        client_timers(&mut h.client, dpd - Duration::from_secs(1), &mut udp),
        Ok(None)
    );
    assert!(
        client_timers(&mut h.client, dpd, &mut udp)
            .expect("t")
            .is_some()
    );
    assert_eq!(client_timers(&mut h.client, dpd, &mut udp), Ok(None));
    let dead = h.now + Duration::from_secs(30);
    assert!(
        client_timers(&mut h.client, dead, &mut udp)
            .expect("t")
            .is_some()
    );
    assert!(!h.client.esp_up());
    while let Some(e) = h.client.poll_event() {
        if e == ClientEvent::EspDown {
            break;
        }
    }
    assert_eq!(
        h.client.send_packet(&ipv4_packet(40, 1), dead, &mut udp),
        Ok(Transmit::Tls)
    );
    // Four more probes a second apart, then quiet until the next attempt.
    let mut t = dead;
    for _ in 0..4 {
        t += PROBE_INTERVAL;
        assert!(
            client_timers(&mut h.client, t, &mut udp)
                .expect("t")
                .is_some()
        );
    }
    t += PROBE_INTERVAL;
    assert_eq!(client_timers(&mut h.client, t, &mut udp), Ok(None));
    assert_eq!(h.client.next_timer(), Some(dead + ESP_ATTEMPT_PERIOD));
    assert!(
        client_timers(&mut h.client, dead + ESP_ATTEMPT_PERIOD, &mut udp)
            .expect("t")
            .is_some()
    );
}

/// With `AtpProbe*`-style settings: quiet for `idle`, then `count` probes `interval` apart;
/// no answer takes ESP down, a retry every `retry` brings it back when the gateway answers.
#[test]
fn configured_esp_dead_peer_detection() {
    let mut cfg = ClientConfig::new("gw");
    let dpd = EspDpd {
        idle: Duration::from_secs(10),
        interval: Duration::from_secs(2),
        count: 3,
        retry: Duration::from_secs(20),
    };
    cfg.esp_dpd = Some(dpd);
    let mut h = Harness::new(cfg, ServerConfig::default());
    h.establish(&tunnel_config(true));
    h.bring_up_esp();
    let mut udp = [0u8; 2048];
    let mut reply = [0u8; 2048];
    assert!(h.client.esp_up());
    while h.client.poll_event().is_some() {}
    let t0 = h.now;
    // Nothing before the idle time.
    assert_eq!(h.client.next_timer(), Some(t0 + dpd.idle));
    assert_eq!(
        client_timers(
            &mut h.client,
            t0 + dpd.idle - Duration::from_millis(1),
            &mut udp
        ),
        Ok(None)
    );
    // Three probes, two seconds apart.
    for k in 0..3u32 {
        let t = t0 + dpd.idle + dpd.interval * k;
        assert!(
            client_timers(&mut h.client, t, &mut udp)
                .expect("t")
                .is_some(),
            "probe {k}"
        );
        assert_eq!(
            client_timers(&mut h.client, t, &mut udp),
            Ok(None),
            "one probe at a time"
        );
        assert!(h.client.esp_up(), "still up during the probes");
    }
    // No answer: down after idle + count * interval.
    let dead = t0 + dpd.idle + dpd.interval * dpd.count;
    assert_eq!(h.client.next_timer(), Some(dead));
    assert!(
        client_timers(&mut h.client, dead, &mut udp)
            .expect("t")
            .is_some(),
        "the first probe of a recovery attempt"
    );
    assert!(!h.client.esp_up());
    assert_eq!(h.client.poll_event(), Some(ClientEvent::EspDown));
    assert_eq!(
        h.client.send_packet(&ipv4_packet(40, 1), dead, &mut udp),
        Ok(Transmit::Tls)
    );
    // The attempt's other probes, then a wait of `retry` from its start.
    let mut t = dead;
    for _ in 1..dpd.count {
        t += dpd.interval;
        assert!(
            client_timers(&mut h.client, t, &mut udp)
                .expect("t")
                .is_some()
        );
    }
    t += dpd.interval;
    assert_eq!(client_timers(&mut h.client, t, &mut udp), Ok(None));
    assert_eq!(h.client.next_timer(), Some(dead + dpd.retry));
    // The gateway answers the next attempt: ESP is back.
    let retry = dead + dpd.retry;
    let n = client_timers(&mut h.client, retry, &mut udp)
        .expect("t")
        .expect("retry probe");
    let Opened::ProbeReply(m) =
        server_esp(&mut h.server, &mut udp[..n], retry, &mut reply).expect("esp")
    else {
        panic!("no reply");
    };
    client_esp(&mut h.client, &mut reply[..m], retry).expect("esp");
    assert!(h.client.esp_up());
    assert_eq!(h.client.poll_event(), Some(ClientEvent::EspUp));
}

#[test]
fn esp_rekey_keeps_traffic_flowing() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&tunnel_config(true));
    h.bring_up_esp();
    let mut udp = [0u8; 2048];
    let mut reply = [0u8; 2048];
    h.take_client_events();
    h.take_server_events();
    while h.client.poll_event().is_some() {}

    // A packet encrypted with the old keys, delivered after the rekey.
    let Transmit::Esp(late_len) = h
        .client
        .send_packet(&ipv4_packet(100, 9), h.now, &mut udp)
        .expect("send")
    else {
        panic!("not ESP");
    };
    let mut late = udp[..late_len].to_vec();
    let old_spi = h.server.esp_spi();

    h.server.rekey_esp(h.now).expect("rekey");
    h.pump();
    assert_eq!(h.take_client_events(), [ClientEvent::EspRekeyed]);
    assert_ne!(h.server.esp_spi(), old_spi);
    assert!(matches!(
        server_esp(&mut h.server, &mut late, h.now, &mut reply),
        Ok(Opened::Packet(p)) if p[1] == 9
    ));

    let up = ipv4_packet(100, 4);
    let Transmit::Esp(n) = h.client.send_packet(&up, h.now, &mut udp).expect("send") else {
        panic!("not ESP");
    };
    assert_eq!(peek_spi(&udp), h.server.esp_spi());
    assert_eq!(
        server_esp(&mut h.server, &mut udp[..n], h.now, &mut reply),
        Ok(Opened::Packet(&up[..]))
    );
    let down = ipv4_packet(100, 5);
    let Transmit::Esp(n) = h.server.send_packet(&down, h.now, &mut udp).expect("send") else {
        panic!("not ESP");
    };
    assert_eq!(
        client_esp(&mut h.client, &mut udp[..n], h.now),
        Ok(Opened::Packet(&down[..]))
    );
}

#[test]
fn server_rekeys_at_the_esp_lifetime() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    let mut cfg = tunnel_config(true);
    cfg.esp.lifetime_seconds = Some(100);
    h.establish(&cfg);
    let spi = h.server.esp_spi();
    let later = h.now + Duration::from_secs(100);
    assert_eq!(h.server.next_timer(), Some(later));
    h.server.poll_timers(later).expect("timers");
    h.pump();
    assert_ne!(h.server.esp_spi(), spi);
    assert!(h.take_client_events().contains(&ClientEvent::EspRekeyed));
}

#[test]
fn logout_closes_both_sides() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&tunnel_config(false));
    h.take_server_events();
    h.client.logout().expect("logout");
    assert!(h.client.is_closed());
    h.pump();
    assert_eq!(
        h.take_server_events(),
        [ServerEvent::Closed(CloseReason::LoggedOut)]
    );
    assert!(h.server.is_closed());
}

#[test]
fn fatal_error_terminates_the_client() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&tunnel_config(false));
    h.take_client_events();
    h.server
        .terminate(
            FatalErrorKind::SessionTerminated,
            "session has been terminated",
        )
        .expect("terminate");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::Terminated {
            kind: FatalErrorKind::SessionTerminated,
            message: "session has been terminated".into()
        }]
    );
    assert!(h.client.is_closed());
}

#[test]
fn idle_timeout_sends_fatal_error_8() {
    let mut h = Harness::new(ClientConfig::new("gw"), two_realms());
    h.login_until_decision(Some("Users"), "a", "b");
    h.server.accept("c").expect("accept");
    h.pump();
    h.server
        .send_config(&tunnel_config(false), h.now)
        .expect("cfg");
    h.pump();
    h.take_client_events();
    h.take_server_events();
    let idle = h.now + Duration::from_secs(600);
    assert_eq!(h.server.next_timer(), Some(idle));
    // Traffic from the client pushes the deadline out.
    let mut buf = [0u8; 256];
    h.client
        .send_packet(&ipv4_packet(40, 1), h.now, &mut buf)
        .expect("send");
    h.now += Duration::from_secs(300);
    h.pump();
    assert_eq!(
        h.server.next_timer(),
        Some(h.now + Duration::from_secs(600))
    );
    h.server.poll_timers(idle).expect("timers");
    assert!(!h.server.is_closed());
    h.server
        .poll_timers(h.now + Duration::from_secs(600))
        .expect("timers");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::Terminated {
            kind: FatalErrorKind::IdleTimeout,
            message: "session timed out".into()
        }]
    );
    assert!(matches!(
        h.take_server_events().last(),
        Some(ServerEvent::Closed(CloseReason::IdleTimeout))
    ));
}

#[test]
fn out_of_order_message_is_a_typed_error() {
    let now = Instant::now();
    let mut client = Client::with_rng(ClientConfig::new("gw"), Box::new(TestRng(5)));
    client.start().expect("start");
    let mut bytes = build_upgrade_response().to_vec();
    Message::Data(&[0x45, 0, 0, 20])
        .encode_to_vec(0, &mut bytes)
        .expect("encode");
    assert!(matches!(
        client.handle_tls_bytes(&bytes, now),
        Err(SessionError::UnexpectedMessage {
            got: FrameKind::Data,
            ..
        })
    ));
    assert!(client.is_closed());

    let mut server = Server::with_rng(ServerConfig::default(), Box::new(TestRng(6)), now);
    let mut bytes = build_upgrade_request("gw", "/", "ua", false, false).into_bytes();
    Message::VersionRequest {
        min: 3,
        max: 4,
        preferred: 4,
    }
    .encode_to_vec(0, &mut bytes)
    .expect("encode");
    assert_eq!(
        server.handle_tls_bytes(&bytes, now),
        Err(SessionError::Version {
            got: 4,
            min: 1,
            max: 2
        })
    );
}

#[test]
fn client_refuses_insufficient_config() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.login_until_decision(None, "a", "b");
    h.server.accept("c").expect("accept");
    h.pump();
    h.server
        .send_config(&Config::default(), h.now)
        .expect("cfg");
    let bytes = h.server.pending_tls().to_vec();
    assert_eq!(
        h.client.handle_tls_bytes(&bytes, h.now),
        Err(SessionError::InsufficientConfig { what: "no MTU" })
    );
}

#[test]
fn unsupported_esp_offer_disables_esp_only() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    let mut cfg = tunnel_config(true);
    h.login_until_decision(None, "a", "b");
    h.server.accept("c").expect("accept");
    h.pump();
    // The gateway API refuses to offer a suite it cannot run...
    cfg.esp.hmac = Some(1);
    assert_eq!(
        h.server.send_config(&cfg, h.now),
        Err(SessionError::Esp(EspError::UnsupportedMac { code: 1 }))
    );
    // ...and a client that is offered one (MD5) carries on over TLS.
    let mut payload = Vec::new();
    cfg.encode(&mut payload).expect("encode");
    let mut bytes = Vec::new();
    Message::Config(&payload)
        .encode_to_vec(100, &mut bytes)
        .expect("encode");
    let mut esp = Vec::new();
    EspKeyExchange {
        keys: EspKeys {
            spi: 1,
            secrets: [1; ESP_SECRETS_LEN],
        },
        echo: None,
    }
    .encode(&mut esp)
    .expect("encode");
    Message::Config(&esp)
        .encode_to_vec(101, &mut bytes)
        .expect("encode");
    Message::EndOfConfig
        .encode_to_vec(102, &mut bytes)
        .expect("encode");
    h.client.handle_tls_bytes(&bytes, h.now).expect("client");
    assert_eq!(h.client.state(), ClientState::Established);
    assert_eq!(h.client.next_timer(), None);
    let mut udp = [0u8; 256];
    assert_eq!(
        h.client.send_packet(&ipv4_packet(40, 1), h.now, &mut udp),
        Ok(Transmit::Tls)
    );
}

/// Splits a transcript (HTTP head, then IF-T frames) into whole frames.
fn frames(log: &[u8]) -> Vec<Vec<u8>> {
    let head = log
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head")
        + 4;
    let mut dec = FrameDecoder::default();
    dec.push(&log[head..]);
    let mut out = Vec::new();
    while let Some(f) = dec.next_frame().expect("frame") {
        let mut bytes = Vec::new();
        f.message()
            .expect("message")
            .encode_to_vec(f.header.seq, &mut bytes)
            .expect("encode");
        out.push(bytes);
    }
    assert_eq!(dec.buffered(), 0);
    out
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The gateway's frames pass the exact checks openconnect's pulse.c applies
/// (`valid_ift_auth`, `valid_ift_auth_eap_exj1`, `valid_ift_success`, the version response
/// and config packet checks), and the client's frames have the shapes pulse.c sends.
#[test]
fn transcripts_have_the_shapes_pulse_c_checks() {
    let mut h = Harness::new(ClientConfig::new("gw"), two_realms());
    h.login_until_decision(Some("Users"), "alice", "pw");
    h.server.accept("DSID").expect("accept");
    h.pump();
    h.server
        .send_config(&tunnel_config(true), h.now)
        .expect("cfg");
    h.pump();

    let s2c = frames(&h.s2c_log);
    let kinds: Vec<(u32, u32)> = s2c.iter().map(|f| (be32(f, 0), be32(f, 4))).collect();
    assert_eq!(
        kinds,
        [
            (0x5597, 2), // version response
            (0x5597, 5), // empty challenge
            (0x5597, 5), // server info
            (0x5597, 5), // realms
            (0x5597, 5), // password request
            (0x5597, 5), // cookie
            (0x5597, 7), // success
            (0xa4c, 1),  // config
            (0xa4c, 1),  // ESP keys
            (0xa4c, 0x8f),
        ]
    );
    for (seq, f) in s2c.iter().enumerate() {
        assert_eq!(be32(f, 8) as usize, f.len());
        assert_eq!(
            be32(f, 12),
            seq as u32,
            "server sequence numbers count from 0"
        );
    }
    assert_eq!(s2c[0].len(), 0x14);
    assert_eq!(s2c[1].len(), 0x14);
    assert_eq!(be32(&s2c[1], 0x10), 0x000a_4c01);
    for f in &s2c[2..6] {
        assert_eq!(be32(f, 0x10), 0x000a_4c01);
        assert_eq!(f[0x14], 1, "EAP request");
        assert_eq!(
            u16::from_be_bytes([f[0x16], f[0x17]]) as usize,
            f.len() - 0x14
        );
        assert_eq!(be32(f, 0x18), 0xfe00_0a4c);
        assert_eq!(be32(f, 0x1c), 1);
    }
    let success = &s2c[6];
    assert_eq!(success.len(), 0x18);
    assert_eq!(success[0x14], 3);
    assert_eq!(u16::from_be_bytes([success[0x16], success[0x17]]), 4);
    for f in &s2c[7..9] {
        assert!(f[0x10..0x20].iter().all(|&b| b == 0));
        assert_eq!(be32(f, 0x24), 0);
        assert_eq!(be32(f, 0x28) as usize, f.len() - 0x10);
    }
    assert_eq!(be32(&s2c[7], 0x20), 0x2c20_f000);
    let esp = &s2c[8];
    assert_eq!(be32(esp, 0x20), 0x2120_2400);
    assert_eq!(esp.len(), 0x80);
    assert_eq!(be32(esp, 0x2c) as usize, esp.len() - 0x2c);
    assert_eq!(be32(esp, 0x30), 0x0100_0000);
    assert_eq!(u16::from_be_bytes([esp[0x38], esp[0x39]]), 0x40);
    assert_eq!(&s2c[9][16..], &[0, 0, 0, 0]);

    let c2s = frames(&h.c2s_log);
    let kinds: Vec<(u32, u32)> = c2s.iter().map(|f| (be32(f, 0), be32(f, 4))).collect();
    assert_eq!(
        kinds,
        [
            (0x5597, 1),
            (0xa4c, 0x88),
            (0x5597, 6), // identity
            (0x5597, 6), // user agent
            (0x5597, 6), // realm
            (0x5597, 6), // credentials
            (0x5597, 6), // cookie acknowledgement
            (0xa4c, 1),  // ESP keys
            (0xa4c, 5),  // ncmo=1
        ]
    );
    assert_eq!(&c2s[0][16..], &[0, 1, 2, 2]);
    assert_eq!(&c2s[2][0x14..], b"\x02\x01\x00\x0e\x01anonymous");
    // The acknowledgement is a bare Juniper/1 response.
    assert_eq!(c2s[6].len(), 0x20);
    let reply = &c2s[7];
    assert_eq!(reply.len(), 0xc0);
    assert_eq!(be32(reply, 0x28), 0xb0);
    assert_eq!(be32(reply, 0x2c), 0x94);
    // The second block echoes the gateway's block byte for byte.
    assert_eq!(&reply[0x7a..0xc0], &esp[0x34..0x7a]);
    assert_eq!(&c2s[8][16..], b"ncmo=1\n\0");
}

#[test]
fn aes_gcm_is_used_only_by_a_client_that_offered_it() {
    let mut gcm = tunnel_config(true);
    gcm.esp.cipher = Some(20);
    gcm.esp.hmac = Some(0);

    // Offered: the upgrade request says so, and ESP runs AES-256-GCM both ways.
    let mut cfg = ClientConfig::new("gw");
    cfg.offer_aes_gcm = true;
    let mut h = Harness::new(cfg, ServerConfig::default());
    h.establish(&gcm);
    assert!(matches!(
        h.take_server_events().first(),
        Some(ServerEvent::Upgraded(req)) if req.offers_aes_gcm
    ));
    h.take_client_events();
    let (mut udp, mut reply) = ([0u8; 2048], [0u8; 2048]);
    let n = client_timers(&mut h.client, h.now, &mut udp)
        .expect("timers")
        .expect("probe");
    let Ok(Opened::ProbeReply(m)) = server_esp(&mut h.server, &mut udp[..n], h.now, &mut reply)
    else {
        panic!("no probe reply");
    };
    assert_eq!(
        client_esp(&mut h.client, &mut reply[..m], h.now),
        Ok(Opened::Probe)
    );
    let up = ipv4_packet(1201, 2);
    let Transmit::Esp(n) = h.client.send_packet(&up, h.now, &mut udp).expect("send") else {
        panic!("client did not use ESP");
    };
    // SPI, sequence, 8-byte IV, payload + trailer padded to 4, 16-byte tag.
    assert_eq!(n, 8 + 8 + 1204 + 16);
    assert_eq!(
        server_esp(&mut h.server, &mut udp[..n], h.now, &mut reply),
        Ok(Opened::Packet(&up[..]))
    );
    let down = ipv4_packet(300, 3);
    let Transmit::Esp(n) = h.server.send_packet(&down, h.now, &mut udp).expect("send") else {
        panic!("server did not use ESP");
    };
    udp[20] ^= 1;
    assert_eq!(
        client_esp(&mut h.client, &mut udp[..n].to_vec(), h.now),
        Err(SessionError::Esp(EspError::AuthenticationFailed)),
        "a flipped bit fails the tag"
    );
    udp[20] ^= 1;
    assert_eq!(
        client_esp(&mut h.client, &mut udp[..n], h.now),
        Ok(Opened::Packet(&down[..]))
    );

    // Not offered (openconnect, or a client configured so): the same config leaves ESP off.
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&gcm);
    assert!(matches!(
        h.take_server_events().first(),
        Some(ServerEvent::Upgraded(req)) if !req.offers_aes_gcm
    ));
    assert_eq!(h.client.next_timer(), None, "no ESP probes");
    assert_eq!(
        h.client.send_packet(&ipv4_packet(40, 1), h.now, &mut udp),
        Ok(Transmit::Tls)
    );
}

/// A datagram the client sent before the newest one the gateway accepted (delayed, or held
/// back by someone on the path) still opens while the replay window allows it, but it is not
/// the newest of its SA, so it must not move the client's ESP endpoint: whoever replays it
/// from their own address would otherwise get the session's downstream traffic.
#[test]
fn only_the_newest_datagram_of_an_sa_may_move_the_esp_endpoint() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&tunnel_config(true));
    h.bring_up_esp();
    let seal = |h: &mut Harness, tag: u8| {
        let mut udp = [0u8; 2048];
        let Transmit::Esp(n) = h
            .client
            .send_packet(&ipv4_packet(100, tag), h.now, &mut udp)
            .expect("send")
        else {
            panic!("not ESP");
        };
        udp[..n].to_vec()
    };
    let (mut held_back, mut fresh, mut later) = (seal(&mut h, 1), seal(&mut h, 2), seal(&mut h, 3));
    let open = |h: &mut Harness, d: &mut Vec<u8>| {
        let len = d.len();
        let mut got = Vec::new();
        let newest = h.server.handle_esp_train(d, len, h.now, |r| {
            got.push(r.map(|i| format!("{i:?}")).map_err(|e| e.to_string()))
        });
        (newest, got)
    };
    let (newest, got) = open(&mut h, &mut fresh);
    assert!(newest, "{got:?}");
    let (newest, got) = open(&mut h, &mut held_back);
    assert!(got[0].is_ok(), "inside the window it still opens: {got:?}");
    assert!(!newest, "an older datagram moves nothing");
    let mut replay = fresh.clone();
    let (newest, got) = open(&mut h, &mut replay);
    assert!(got[0].is_err() && !newest, "a replay: {got:?}");
    let (newest, _) = open(&mut h, &mut later);
    assert!(newest);
}

/// The client's key reply installs the gateway's outbound SA. Installing a second reply to
/// the same key exchange would start that SA's sequence numbers again under the same keys
/// (with AES-GCM: the same nonces). The gateway refuses it and ends the session; after a
/// rekey of its own, one new reply is taken again.
#[test]
fn a_repeated_client_key_reply_is_refused() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&tunnel_config(true));
    let key_reply = |log: &[u8]| {
        frames(log)
            .into_iter()
            .rfind(|f| be32(f, 0) == 0x0a4c && be32(f, 4) == 1)
            .expect("the client's key reply")
    };
    let first = key_reply(&h.c2s_log);
    // After a rekey the client answers the new keys once: taken.
    h.server.rekey_esp(h.now).expect("rekey");
    h.pump();
    assert!(!h.server.is_closed());
    let second = key_reply(&h.c2s_log);
    assert_ne!(first, second, "a new reply for new keys");
    // The same reply again.
    assert_eq!(
        h.server.handle_tls_bytes(&second, h.now),
        Err(SessionError::EspKeysRepeated)
    );
    assert!(h.server.is_closed());
    assert_eq!(
        h.server.poll_event(),
        Some(ServerEvent::Closed(CloseReason::ProtocolError))
    );
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.establish(&tunnel_config(true));
    let first = key_reply(&h.c2s_log);
    assert_eq!(
        h.server.handle_tls_bytes(&first, h.now),
        Err(SessionError::EspKeysRepeated)
    );
}

/// A login lasts `session_lifetime` whatever the traffic: the client is told what is left,
/// and at the end the session gets a fatal error and closes. A resumed login keeps the end
/// of the login it resumes, and is told only what is left of it.
#[test]
fn the_session_lifetime_is_enforced_and_a_resume_keeps_the_first_end() {
    let lifetime = Duration::from_secs(3600);
    let cfg = ServerConfig {
        session_lifetime: Some(lifetime),
        idle_timeout: None,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(ClientConfig::new("gw"), cfg.clone());
    h.establish(&tunnel_config(false));
    assert!(h.take_client_events().iter().any(|e| matches!(
        e,
        ClientEvent::CookieReceived { auth_expiration: Some(d), .. } if *d == lifetime
    )));
    let end = h.now + lifetime;
    assert_eq!(h.server.session_end(), Some(end));
    assert_eq!(h.server.next_timer(), Some(end));
    // Traffic does not move the end.
    let mut buf = [0u8; 256];
    h.client
        .send_packet(&ipv4_packet(40, 1), h.now, &mut buf)
        .expect("send");
    h.now += Duration::from_secs(1800);
    h.pump();
    assert_eq!(h.server.next_timer(), Some(end));
    h.server
        .poll_timers(end - Duration::from_secs(1))
        .expect("timers");
    assert!(!h.server.is_closed());
    h.server.poll_timers(end).expect("timers");
    h.pump();
    assert!(matches!(
        h.take_server_events().last(),
        Some(ServerEvent::Closed(CloseReason::LifetimeExpired))
    ));
    assert!(matches!(
        h.take_client_events()[..],
        [ClientEvent::Terminated {
            kind: FatalErrorKind::SessionTerminated,
            ..
        }]
    ));

    // A resume 50 minutes into the login: 10 minutes are left, not a new hour.
    let mut client = ClientConfig::new("gw");
    client.cookie = Some("DSID-old".into());
    let mut h = Harness::new(client, cfg);
    let first_login = h.now - Duration::from_secs(3000);
    h.pump();
    h.server.set_session_end(first_login + lifetime);
    h.server.accept("DSID-old").expect("accept");
    h.pump();
    assert!(h.take_client_events().iter().any(|e| matches!(
        e,
        ClientEvent::CookieReceived { auth_expiration: Some(d), .. } if *d == Duration::from_secs(600)
    )));
    h.server
        .send_config(&tunnel_config(false), h.now)
        .expect("cfg");
    h.pump();
    assert_eq!(h.server.next_timer(), Some(first_login + lifetime));
    // A later end than the one in force is not taken.
    h.server.set_session_end(h.now + lifetime);
    assert_eq!(h.server.session_end(), Some(first_login + lifetime));
}

/// `lifetime_bytes` replaces the keys once that many bytes went through them, either way.
#[test]
fn the_esp_byte_lifetime_rekeys() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    let mut cfg = tunnel_config(true);
    cfg.esp.lifetime_bytes = Some(10_000);
    h.establish(&cfg);
    h.bring_up_esp();
    let spi = h.server.esp_spi();
    let mut udp = [0u8; 2048];
    let mut reply = [0u8; 2048];
    for i in 0..9 {
        let Transmit::Esp(n) = h
            .client
            .send_packet(&ipv4_packet(1000, 1), h.now, &mut udp)
            .expect("send")
        else {
            panic!("not ESP");
        };
        server_esp(&mut h.server, &mut udp[..n], h.now, &mut reply).expect("open");
        assert!(!h.server.timers_due(), "{i}");
    }
    let Transmit::Esp(_) = h
        .server
        .send_packet(&ipv4_packet(1000, 2), h.now, &mut udp)
        .expect("send")
    else {
        panic!("not ESP");
    };
    assert!(h.server.timers_due(), "10,000 bytes went through the keys");
    assert!(h.server.next_timer().is_some_and(|t| t <= h.now));
    h.server.poll_timers(h.now).expect("timers");
    h.pump();
    assert_ne!(h.server.esp_spi(), spi);
    assert!(!h.server.timers_due());
    assert!(h.take_client_events().contains(&ClientEvent::EspRekeyed));
}

/// An allocator that hands out SPIs from a set and records what is reserved.
#[derive(Default)]
struct CountingSpis(std::sync::Mutex<(u32, std::collections::BTreeSet<u32>)>);

impl SpiAllocator for CountingSpis {
    fn reserve(&self, _rng: &mut dyn RandomSource) -> Option<u32> {
        let mut g = self.0.lock().unwrap();
        g.0 += 1;
        let spi = MIN_SPI + g.0;
        g.1.insert(spi);
        Some(spi)
    }
    fn release(&self, spi: u32) {
        assert!(
            self.0.lock().unwrap().1.remove(&spi),
            "{spi} released twice"
        );
    }
}

impl CountingSpis {
    fn held(&self) -> Vec<u32> {
        self.0.lock().unwrap().1.iter().copied().collect()
    }
}

/// With an allocator, every inbound SA's SPI is reserved while datagrams may carry it and
/// released after: the previous SA's at the end of a rekey's overlap (or at the next rekey),
/// all of them when the session is dropped.
#[test]
fn inbound_spis_are_reserved_while_they_open_datagrams() {
    let spis = std::sync::Arc::new(CountingSpis::default());
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.server = Server::with_rng(ServerConfig::default(), Box::new(TestRng(2)), h.now)
        .with_spi_allocator(spis.clone());
    h.establish(&tunnel_config(true));
    let first = h.server.esp_spi().expect("spi");
    assert_eq!(spis.held(), [first]);
    assert_eq!(h.server.esp_spis().collect::<Vec<_>>(), [first]);
    h.server.rekey_esp(h.now).expect("rekey");
    h.pump();
    let second = h.server.esp_spi().expect("spi");
    assert_eq!(spis.held(), [first, second]);
    assert_eq!(h.server.esp_spis().collect::<Vec<_>>(), [second, first]);
    // The overlap ends: the first is retired at the timer.
    let until = h.now + REKEY_OVERLAP;
    assert!(h.server.next_timer().is_some_and(|t| t <= until));
    h.server
        .poll_timers(until + Duration::from_millis(1))
        .expect("timers");
    assert_eq!(spis.held(), [second]);
    assert_eq!(h.server.esp_spis().collect::<Vec<_>>(), [second]);
    // Two rekeys within one overlap: the SA displaced by the second is released at once.
    h.server.rekey_esp(h.now).expect("rekey");
    h.pump();
    h.server.rekey_esp(h.now).expect("rekey");
    h.pump();
    assert_eq!(spis.held().len(), 2);
    drop(h);
    assert!(spis.held().is_empty(), "all released with the session");
}

/// The legacy form: J2 code 1, the password in TLV 2, code 0x81 on a wrong password.
#[test]
fn legacy_password_form_end_to_end() {
    let server_cfg = ServerConfig {
        password_form: PasswordForm::Legacy,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(ClientConfig::new("gw"), server_cfg);
    h.pump();
    assert!(matches!(
        h.take_client_events()[..],
        [ClientEvent::CredentialsRequired {
            retry: false,
            max_password_len: 253,
            ..
        }]
    ));
    let long = "a-password-longer-than-eighteen-bytes";
    h.client.provide_credentials("alice", long).expect("creds");
    h.pump();
    match &h.take_server_events()[..] {
        [.., ServerEvent::Authenticate { password, .. }] => assert_eq!(password.expose(), long),
        other => panic!("{other:?}"),
    }
    h.server.reject(AuthRejection::Retry).expect("retry");
    h.pump();
    assert!(matches!(
        h.take_client_events()[..],
        [ClientEvent::CredentialsRequired { retry: true, .. }]
    ));
}

/// The current form cuts a long password at 18 bytes; a wrong one is asked again and the
/// client knows it is a retry.
#[test]
fn current_password_form_cuts_at_18_bytes_and_retries() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.pump();
    assert!(matches!(
        h.take_client_events()[..],
        [ClientEvent::CredentialsRequired {
            retry: false,
            max_password_len: 18,
            ..
        }]
    ));
    h.client
        .provide_credentials("alice", "0123456789abcdefghij")
        .expect("creds");
    h.pump();
    match &h.take_server_events()[..] {
        [.., ServerEvent::Authenticate { password, .. }] => {
            assert_eq!(password.expose(), "0123456789abcdefgh")
        }
        other => panic!("{other:?}"),
    }
    h.server.reject(AuthRejection::Retry).expect("retry");
    h.pump();
    assert!(matches!(
        h.take_client_events()[..],
        [ClientEvent::CredentialsRequired { retry: true, .. }]
    ));
}

fn answered(h: &mut Harness) -> PromptAnswer {
    match h.take_server_events().pop() {
        Some(ServerEvent::Answered { answer, .. }) => answer,
        other => panic!("{other:?}"),
    }
}

/// Every prompt of docs/login.md, in its order: pre-auth notice, password, password change,
/// token code (twice: the second is "next"), session choice, post-auth notice, then the
/// cookie with a notice that is only shown.
#[test]
fn the_whole_dialogue_in_order() {
    let mut server_cfg = ServerConfig::default();
    server_cfg.pre_auth_notices.insert(
        "Users".into(),
        Notice {
            text: "Authorised users only".into(),
            accept: true,
        },
    );
    let mut h = Harness::new(ClientConfig::new("gw"), server_cfg);
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::Notice {
            text: "Authorised users only".into(),
            needs_acceptance: true
        }]
    );
    assert!(h.client.provide_credentials("a", "b").is_err());
    h.client.accept_notice().expect("accept");
    h.pump();
    assert!(matches!(
        h.take_client_events()[..],
        [ClientEvent::CredentialsRequired { retry: false, .. }]
    ));
    h.client
        .provide_credentials("alice", "old-pass")
        .expect("creds");
    h.pump();
    assert!(matches!(
        h.take_server_events()[..],
        [.., ServerEvent::Authenticate { .. }]
    ));

    h.server.ask(Prompt::PasswordChange).expect("ask");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::PasswordChangeRequired]
    );
    h.client
        .change_password("old-pass", "new-pass-1")
        .expect("change");
    h.pump();
    match answered(&mut h) {
        PromptAnswer::NewPassword { old, new } => {
            assert_eq!((old.expose(), new.expose()), ("old-pass", "new-pass-1"))
        }
        other => panic!("{other:?}"),
    }

    for next in [false, true] {
        h.server
            .ask(Prompt::TokenCode {
                prompt: "Token code:".into(),
            })
            .expect("ask");
        h.pump();
        assert_eq!(
            h.take_client_events(),
            [ClientEvent::TokenRequired {
                prompt: "Token code:".into(),
                next
            }]
        );
        h.client.provide_token("123456").expect("token");
        h.pump();
        match answered(&mut h) {
            PromptAnswer::TokenCode(code) => assert_eq!(code.expose(), "123456"),
            other => panic!("{other:?}"),
        }
    }

    let sessions = vec![ActiveSession {
        id: "s-1".into(),
        from: "192.0.2.9".into(),
        started: 1_764_000_000,
    }];
    h.server
        .ask(Prompt::SessionChoice {
            sessions: sessions.clone(),
        })
        .expect("ask");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::SessionLimit {
            sessions: sessions.clone()
        }]
    );
    assert!(h.client.end_session("s-2").is_err(), "not listed");
    h.client.end_session("s-1").expect("end");
    h.pump();
    assert_eq!(answered(&mut h), PromptAnswer::EndSession("s-1".into()));

    h.server
        .ask(Prompt::Notice {
            text: "Maintenance on Sunday".into(),
        })
        .expect("ask");
    h.pump();
    assert_eq!(
        h.take_client_events(),
        [ClientEvent::Notice {
            text: "Maintenance on Sunday".into(),
            needs_acceptance: true
        }]
    );
    h.client.accept_notice().expect("accept");
    h.pump();
    assert_eq!(answered(&mut h), PromptAnswer::NoticeAccepted);

    h.server.show_notice("Welcome back".into());
    h.server.accept("cookie-1").expect("accept");
    h.pump();
    let events = h.take_client_events();
    assert_eq!(
        events[0],
        ClientEvent::Notice {
            text: "Welcome back".into(),
            needs_acceptance: false
        }
    );
    assert!(matches!(events[1], ClientEvent::CookieReceived { .. }));
    assert!(matches!(events[2], ClientEvent::Authenticated));
}

/// A notice that needs no acceptance rides on the password request.
#[test]
fn a_notice_without_acceptance_comes_with_the_password_request() {
    let mut server_cfg = ServerConfig::default();
    server_cfg.pre_auth_notices.insert(
        "Users".into(),
        Notice {
            text: "Be nice".into(),
            accept: false,
        },
    );
    let mut h = Harness::new(ClientConfig::new("gw"), server_cfg);
    h.pump();
    let events = h.take_client_events();
    assert_eq!(
        events[0],
        ClientEvent::Notice {
            text: "Be nice".into(),
            needs_acceptance: false
        }
    );
    assert!(matches!(
        events[1..],
        [ClientEvent::CredentialsRequired { .. }]
    ));
}

/// An answer that does not fit the prompt is a protocol error, never taken as another one.
#[test]
fn an_answer_to_another_prompt_is_refused() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.login_until_decision(None, "alice", "pw");
    h.take_server_events();
    h.server
        .ask(Prompt::TokenCode {
            prompt: "Code:".into(),
        })
        .expect("ask");
    h.pump();
    h.take_client_events();
    // A notice acceptance sent where a token code is due.
    let mut avps = Vec::new();
    AuthResponse {
        notice_accepted: Some(1),
        ..AuthResponse::default()
    }
    .encode(&mut avps)
    .expect("encode");
    let ident = {
        // The request's identifier is the last J1 request the server sent.
        let frames = frames(&h.s2c_log);
        let last = frames.last().expect("a frame");
        last[0x10 + 4 + 1]
    };
    let mut eap = Vec::new();
    encode_juniper_avps(EapCode::Response, ident, &avps, &mut eap).expect("eap");
    let mut bytes = Vec::new();
    Message::AuthResponse { eap: &eap }
        .encode_to_vec(99, &mut bytes)
        .expect("encode");
    assert!(matches!(
        h.server.handle_tls_bytes(&bytes, h.now),
        Err(SessionError::UnexpectedAuth { .. })
    ));
    assert!(!h.take_server_events().iter().any(|e| matches!(
        e,
        ServerEvent::Answered { .. } | ServerEvent::Authenticated { .. }
    )));
}

/// A request the client does not know ends the login with an error naming it.
#[test]
fn an_unknown_request_is_named() {
    let now = Instant::now();
    let j1 = |ident: u8, req: &AuthRequest| {
        let mut avps = Vec::new();
        req.encode(&mut avps).expect("avps");
        let mut eap = Vec::new();
        encode_juniper_avps(EapCode::Request, ident, &avps, &mut eap).expect("eap");
        let mut bytes = Vec::new();
        Message::AuthChallenge { eap: &eap }
            .encode_to_vec(0, &mut bytes)
            .expect("frame");
        bytes
    };
    let cases = [
        (
            InnerRequest::Other {
                identifier: 1,
                eap_type: 13,
            },
            "EAP type 13",
        ),
        (
            InnerRequest::Expanded {
                identifier: 1,
                vendor: EAP_VENDOR_JUNIPER,
                subtype: 3,
                code: None,
            },
            "subtype 3 (host checker)",
        ),
        (
            InnerRequest::Expanded {
                identifier: 1,
                vendor: EAP_VENDOR_JUNIPER,
                subtype: JUNIPER_SUBTYPE_PASSWORD_CURRENT,
                code: Some(2),
            },
            "subtype 5, code 0x02",
        ),
        (
            InnerRequest::Password {
                identifier: 1,
                message: PasswordMessage::Request { code: 0x07 },
            },
            "subtype 2), code 0x07",
        ),
    ];
    for (inner, want) in cases {
        let mut client = Client::with_rng(ClientConfig::new("gw"), Box::new(TestRng(9)));
        client.start().expect("start");
        let mut bytes = build_upgrade_response().to_vec();
        Message::VersionResponse { version: 2 }
            .encode_to_vec(0, &mut bytes)
            .expect("frame");
        Message::AuthChallenge { eap: &[] }
            .encode_to_vec(0, &mut bytes)
            .expect("frame");
        bytes.extend(j1(2, &AuthRequest::default()));
        client.handle_tls_bytes(&bytes, now).expect("hello");
        let req = AuthRequest {
            inner: Some(inner),
            ..AuthRequest::default()
        };
        match client.handle_tls_bytes(&j1(3, &req), now) {
            Err(SessionError::UnsupportedRequest { what }) => {
                assert!(what.contains(want), "{what} lacks {want}")
            }
            other => panic!("{other:?}"),
        }
        assert!(client.is_closed());
    }
}

/// A client that cut a long password inside a character sends no UTF-8: the gateway's
/// caller gets it to check (and find wrong), not a protocol error.
#[test]
fn a_password_cut_inside_a_character_is_checked_not_refused_as_malformed() {
    let mut h = Harness::new(ClientConfig::new("gw"), ServerConfig::default());
    h.pump();
    h.take_client_events();
    let ident = {
        let frames = frames(&h.s2c_log);
        frames.last().expect("a frame")[0x10 + 4 + 1]
    };
    // The nested identifier is the one after the J1 request's.
    let mut field = vec![
        2,
        ident.wrapping_add(1),
        0,
        31,
        0xfe,
        0,
        0x0a,
        0x4c,
        0,
        0,
        0,
        5,
        1,
    ];
    field.extend_from_slice(b"0123456789abcdefg\xc3");
    let mut avps = Vec::new();
    append_avp(
        &mut avps,
        avp::USERNAME,
        Some(AVP_VENDOR_JUNIPER),
        false,
        b"alice",
    )
    .unwrap();
    append_avp(&mut avps, AVP_EAP_MESSAGE, None, true, &field).unwrap();
    let mut eap = Vec::new();
    encode_juniper_avps(EapCode::Response, ident, &avps, &mut eap).unwrap();
    let mut bytes = Vec::new();
    Message::AuthResponse { eap: &eap }
        .encode_to_vec(99, &mut bytes)
        .unwrap();
    h.server.handle_tls_bytes(&bytes, h.now).expect("taken");
    match h.server.poll_event() {
        Some(ServerEvent::Authenticate {
            username, password, ..
        }) => {
            assert_eq!(username, "alice");
            assert_eq!(password.expose(), "0123456789abcdefg\u{fffd}");
        }
        other => panic!("{other:?}"),
    }
}

/// Gateway dead-peer detection: a client heard on ESP that goes silent gets a probe after
/// each interval of silence, and after `DPD_PROBES` unanswered ones its session closes as
/// gone, with nothing sent over TLS (the caller parks it as a lost connection).
#[test]
fn the_gateway_takes_a_silent_esp_client_as_gone_after_its_probes() {
    let interval = Duration::from_secs(60);
    let cfg = ServerConfig {
        dpd_interval: Some(interval),
        idle_timeout: None,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(ClientConfig::new("gw"), cfg);
    h.establish(&tunnel_config(true));
    h.bring_up_esp();
    h.take_server_events();
    let t0 = h.now;
    let mut udp = [0u8; 2048];
    assert_eq!(h.server.next_timer(), Some(t0 + interval));
    h.server
        .poll_timers(t0 + interval - Duration::from_millis(1))
        .expect("timers");
    assert_eq!(
        h.server.poll_esp_transmit(&mut udp),
        Ok(None),
        "not silent yet"
    );
    for k in 1..=DPD_PROBES {
        let t = t0 + interval * k;
        assert_eq!(h.server.next_timer(), Some(t), "probe {k}");
        h.server.poll_timers(t).expect("timers");
        let n = h
            .server
            .poll_esp_transmit(&mut udp)
            .expect("transmit")
            .unwrap_or_else(|| panic!("probe {k} not sent"));
        assert_eq!(
            client_esp(&mut h.client, &mut udp[..n], t),
            Ok(Opened::Probe),
            "probe {k} is an ESP probe the client opens"
        );
        assert_eq!(
            h.server.poll_esp_transmit(&mut udp),
            Ok(None),
            "one per step"
        );
        assert!(!h.server.is_closed());
    }
    let gone = t0 + interval * (DPD_PROBES + 1);
    assert_eq!(h.server.next_timer(), Some(gone));
    h.server.poll_timers(gone).expect("timers");
    assert!(h.server.is_closed());
    assert_eq!(
        h.server.poll_event(),
        Some(ServerEvent::Closed(CloseReason::PeerGone))
    );
    assert!(h.server.pending_tls().is_empty(), "nothing said over TLS");
}

/// A live client that sends nothing is still heard: it probes after each of its own DPD
/// periods without traffic (the fallback time the gateway pushes, shorter than the
/// gateway's interval), the gateway answers, and its detection never fires.
#[test]
fn the_gateway_keeps_a_live_idle_esp_client() {
    keeps_a_live_idle_client(ClientConfig::new("gw"));
}

/// The same with `AtpProbe*` settings whose idle time (tunneld's default, 60 s) is no shorter
/// than the gateway's interval: the client probes once per fallback time all the same, or
/// the gateway's probes, which reset its silence, would keep it from ever probing, and the
/// gateway would take it for gone.
#[test]
fn the_gateway_keeps_a_live_idle_client_with_a_long_probe_idle_time() {
    let mut cfg = ClientConfig::new("gw");
    cfg.esp_dpd = Some(EspDpd {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(1),
        count: 5,
        retry: Duration::from_secs(60),
    });
    keeps_a_live_idle_client(cfg);
}

/// Runs a gateway with a 60 s DPD interval (fallback time 15 s) and a client made with
/// `client`, both idle, for three times as long as detection takes.
fn keeps_a_live_idle_client(client: ClientConfig) {
    let interval = Duration::from_secs(60);
    let cfg = ServerConfig {
        dpd_interval: Some(interval),
        idle_timeout: None,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(client, cfg);
    h.establish(&tunnel_config(true));
    h.bring_up_esp();
    h.take_server_events();
    let (mut udp, mut reply) = ([0u8; 2048], [0u8; 2048]);
    let end = h.now + interval * (DPD_PROBES + 1) * 3;
    let mut t = h.now;
    let mut client_probes = 0;
    while t < end {
        t += Duration::from_secs(1);
        if let Some(n) = client_timers(&mut h.client, t, &mut udp).expect("client timers") {
            client_probes += 1;
            let Ok(Opened::ProbeReply(m)) = server_esp(&mut h.server, &mut udp[..n], t, &mut reply)
            else {
                panic!("the gateway did not answer the client's probe at {t:?}");
            };
            client_esp(&mut h.client, &mut reply[..m], t).expect("answer");
        }
        h.server.poll_timers(t).expect("server timers");
        assert_eq!(
            h.server.poll_esp_transmit(&mut udp),
            Ok(None),
            "no dead-peer probe for a client heard every fallback period"
        );
        assert!(!h.server.is_closed());
    }
    assert!(client_probes >= 40, "{client_probes} probes in 12 minutes");
    assert!(h.client.esp_up());
}

/// Without ESP there is nothing to probe with: a silent TLS-only session is left to the
/// idle timeout.
#[test]
fn the_gateway_does_not_probe_a_tls_only_session() {
    let cfg = ServerConfig {
        dpd_interval: Some(Duration::from_secs(60)),
        idle_timeout: Some(Duration::from_secs(600)),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(ClientConfig::new("gw"), cfg);
    h.establish(&tunnel_config(false));
    let idle = h.now + Duration::from_secs(600);
    assert_eq!(h.server.next_timer(), Some(idle));
    h.server
        .poll_timers(idle - Duration::from_secs(1))
        .expect("timers");
    assert!(!h.server.is_closed());
}
