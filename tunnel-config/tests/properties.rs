//! Properties of every parser on arbitrary input: no panic, and where a parser has an
//! inverse (KVPs, server URLs, launch URLs), parsing what it printed gives the same value.
//! Inputs mix random text with the syntax's own pieces, so that deep paths are reached.

use proptest::prelude::*;
use tunnel_config::{
    ExitCode, Key, Kvps, LAUNCHER_USAGE, LaunchRequest, Preconfig, ServerUrl, parse_launcher_args,
};

/// Pieces of KVP values: numbers near the edges, booleans, CIDRs, port syntax.
fn kvp_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,20}",
        "[0-9]{1,8}",
        Just("0".to_string()),
        Just("5".to_string()),
        Just("18000".to_string()),
        Just("true".to_string()),
        Just("FALSE".to_string()),
        Just("debug packet".to_string()),
        "[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?(;[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?){0,3}",
        "[0-9]{1,5}(-[0-9]{1,5})?(;[0-9]{1,5}(-[0-9]{1,5})?){0,4};?",
        "f[cd][0-9a-f]{2}:[0-9a-f]{0,4}::/[0-9]{1,3}",
        "[a-z]{1,5}@[a-z]{1,5}\\.[a-z]{2,3}",
    ]
}

/// A key with a value of the kind it takes, usually valid, sometimes just outside.
fn kvp_pair() -> impl Strategy<Value = (String, String)> {
    let number = |lo: u64, hi: u64| {
        prop_oneof![
            (lo..=hi).prop_map(|n| n.to_string()),
            Just(lo.saturating_sub(1).to_string()),
            Just((hi + 1).to_string()),
        ]
    };
    prop_oneof![
        number(5, 18000).prop_map(|v| ("disconnectTimeoutInSeconds".to_string(), v)),
        number(5000, 1_800_000).prop_map(|v| ("TcpIdleTmoMs".to_string(), v)),
        "[a-z]{1,5}@[a-z]{1,5}\\.[a-z]{2,3}".prop_map(|v| ("debugInfoRecipient".to_string(), v)),
        "(error|warning|info|debug|session|packet|Info|debug info|verbose)"
            .prop_map(|v| ("LogLevel".to_string(), v)),
        (
            "(AnalyticsEnabled|DisablePinning|DirectLocalhost)",
            "(true|false|TRUE|yes)"
        )
            .prop_map(|(k, v)| (k, v)),
        (0u16..=0xffff, 8u8..=70)
            .prop_map(|(x, l)| { ("IPv6NetworkPrefix".to_string(), format!("fd00:{x:x}::/{l}")) }),
        (
            "(IPRoutes|ExcRoutes)",
            proptest::collection::vec((any::<[u8; 4]>(), 0u8..=33), 1..4)
        )
            .prop_map(|(k, nets)| {
                let v: Vec<String> = nets
                    .iter()
                    .map(|(a, l)| format!("{}.{}.{}.{}/{l}", a[0], a[1], a[2], a[3]))
                    .collect();
                (k, v.join(";"))
            }),
        ("(IPRoutes|ExcRoutes)", any::<[u16; 8]>(), 0u8..=128).prop_map(|(k, a, l)| {
            let addr = std::net::Ipv6Addr::from(a);
            (k, format!("{addr}/{l}"))
        }),
        proptest::collection::vec((1u16..=65535, 0u16..=100), 1..5).prop_map(|r| {
            let v: Vec<String> = r
                .iter()
                .map(|(a, d)| match d {
                    0 => a.to_string(),
                    d => format!("{a}-{}", a.saturating_add(*d)),
                })
                .collect();
            ("SplitUDPPortList".to_string(), v.join(";"))
        }),
        number(1280, 9000).prop_map(|v| ("MTU".to_string(), v)),
        any::<[u8; 4]>().prop_map(|a| (
            "TunIP".to_string(),
            format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
        )),
        number(1, 3600).prop_map(|v| ("AtpProbeIdleSec".to_string(), v)),
        number(1, 3600).prop_map(|v| ("AtpProbeldleSec".to_string(), v)),
        number(1, 60).prop_map(|v| ("AtpProbeIntervalSec".to_string(), v)),
        number(1, 30).prop_map(|v| ("AtpProbeCount".to_string(), v)),
    ]
}

/// Pairs, mostly well-typed, some arbitrary.
fn kvp_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let noise = (kvp_key(), kvp_value());
    proptest::collection::vec(prop_oneof![3 => kvp_pair(), 1 => noise], 0..6)
}

fn kvp_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(Key::ALL.to_vec()).prop_map(|k| k.name().to_string()),
        1 => Just("AtpProbeldleSec".to_string()),
        1 => "\\PC{0,20}",
        1 => proptest::sample::select(Key::ALL.to_vec()).prop_map(|k| k.name().to_lowercase()),
    ]
}

/// URL-ish text: schemes, hosts, literals, ports and paths, plus noise.
fn url_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "(https?://)?[a-zA-Z0-9.-]{0,20}(:[0-9]{0,6})?(/[!-~]{0,10})?",
        "(https://)?\\[[0-9a-f:.]{0,20}\\](:[0-9]{1,5})?(/[a-z]{0,5})?",
        "[0-9.]{1,16}",
        "[0-9a-f:]{2,20}",
    ]
}

/// A well-formed `ive` or `machine settings` section with plausible and odd values.
fn preconfig_section() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("true".to_string()),
        Just("false".to_string()),
        Just("automatic".to_string()),
        Just("manual".to_string()),
        Just("user".to_string()),
        Just("machine-only".to_string()),
        url_text(),
        "[!-~ ]{0,10}".prop_map(|v| v.replace(['"', '\\'], "")),
    ];
    let ive_key = proptest::sample::select(vec![
        "uri",
        "uri",
        "uri-list",
        "connection-policy",
        "connection-identity",
        "use-for-connect",
        "uri-list-randomize",
        "uri-list-use-last-connected",
        "connection-lock-down",
        "server-id",
        "guid",
        "version",
        "odd-key",
        "client-certificate-matching-rule-x",
    ]);
    let machine_key = proptest::sample::select(vec![
        "allow-save",
        "user-connection",
        "dynamic-trust",
        "dynamic-connection",
        "lock-down",
        "vpn-only-access",
        "server-id",
        "version",
        "FIPSClient",
        "odd-key",
    ]);
    prop_oneof![
        (
            "[A-Za-z0-9 ]{1,12}",
            "[0-9a-f-]{0,12}",
            good_url(),
            proptest::collection::vec((ive_key, value.clone()), 0..4),
        )
            .prop_map(|(name, id, uri, entries)| {
                let mut s =
                    format!("ive \"{id}\" {{\n  friendly-name: \"{name}\"\n  uri: \"{uri}\"\n");
                for (k, v) in entries {
                    s.push_str(&format!("  {k}: \"{v}\"\n"));
                }
                s.push_str("}\n");
                s
            }),
        proptest::collection::vec((machine_key, value), 0..6).prop_map(|entries| {
            let mut s = "machine settings {\n".to_string();
            for (k, v) in entries {
                s.push_str(&format!("  {k}: \"{v}\"\n"));
            }
            s.push_str("}\n");
            s
        }),
        Just("schema version {\n  version: \"1\"\n}\n".to_string()),
        Just("8021x \"x\" { friendly-name: \"w\" }\n".to_string()),
    ]
}

/// A file of sections, sometimes with a random cut or splice that breaks the syntax.
fn preconfig_file() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(preconfig_section(), 0..5),
        0usize..8,
        any::<usize>(),
        "\\PC{0,3}",
    )
        .prop_map(|(sections, damage, at, splice)| {
            let mut text = sections.concat();
            if damage == 0 && !text.is_empty() {
                let mut cut = at % text.len();
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.insert_str(cut, &splice);
            }
            text
        })
}

/// Mostly valid server URLs, sometimes noise.
fn good_url() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "(https://|HTTPS://)?[a-z][a-z0-9]{0,7}(\\.[a-z][a-z0-9-]{0,6}[a-z]){1,2}(:[1-9][0-9]{0,3})?(/[a-z]{0,6})?",
        1 => "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        1 => url_text(),
    ]
}

/// `.pulsepreconfig`-like text built from the grammar's tokens.
fn preconfig_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("schema version".to_string()),
        Just("machine settings".to_string()),
        Just("ive".to_string()),
        Just("8021x".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(":".to_string()),
        Just("\n".to_string()),
        Just("; comment\n".to_string()),
        Just("\"1\"".to_string()),
        Just("\"true\"".to_string()),
        Just("\"a\\\"b\\\\c\\d\"".to_string()),
        Just("\"unterminated".to_string()),
        proptest::sample::select(vec![
            "version",
            "friendly-name",
            "uri",
            "uri-list",
            "allow-save",
            "lock-down",
            "connection-policy",
            "connection-identity",
            "use-for-connect",
            "guid",
            "server-id",
            "uri-list-randomize",
            "uri-list-use-last-connected",
            "connection-lock-down",
        ])
        .prop_map(str::to_string),
        url_text().prop_map(|u| format!("\"{u}\"")),
        "\\PC{0,6}",
    ];
    proptest::collection::vec(token, 0..60).prop_map(|t| t.join(" "))
}

/// A launch URL assembled from parameters, values percent-encoded or raw.
fn launch_structured() -> impl Strategy<Value = String> {
    let encoded = |re: &'static str| {
        (re, any::<bool>()).prop_map(|(v, enc): (String, bool)| {
            if enc {
                v.bytes().map(|b| format!("%{b:02X}")).collect()
            } else {
                v
            }
        })
    };
    (
        encoded("[A-Za-z0-9 +é]{0,10}"),
        good_url(),
        proptest::option::of(encoded("[A-Za-z0-9 _]{0,8}")),
        proptest::option::of(encoded("[A-Za-z0-9._+@]{0,8}")),
        proptest::option::of("(true|false|TRUE|maybe)"),
    )
        .prop_map(|(name, server, realm, user, store)| {
            let mut url = format!("pulsesecureclient://connect?name={name}&server={server}");
            if let Some(r) = realm {
                url.push_str(&format!("&userrealm={r}"));
            }
            if let Some(u) = user {
                url.push_str(&format!("&username={u}"));
            }
            if let Some(s) = store {
                url.push_str(&format!("&store={s}"));
            }
            url
        })
}

fn launch_text() -> impl Strategy<Value = String> {
    let param = prop_oneof![
        (
            "(name|NAME|server|userrealm|username|store|other)",
            "[!-~ ]{0,12}"
        )
            .prop_map(|(k, v)| format!("{k}={v}")),
        url_text().prop_map(|u| format!("server={u}")),
        "[%0-9A-Fa-f+]{0,8}".prop_map(|v| format!("name={v}")),
        "\\PC{0,8}",
    ];
    (
        prop_oneof![
            Just("pulsesecureclient://connect?".to_string()),
            Just("PulseSecureClient://connect/?".to_string()),
            Just("pulsesecureclient://".to_string()),
            "\\PC{0,20}",
        ],
        proptest::collection::vec(param, 0..7),
    )
        .prop_map(|(head, params)| format!("{head}{}", params.join("&")))
}

/// Flags followed by a value of the kind they take, in random combinations.
fn launcher_pairs() -> impl Strategy<Value = Vec<String>> {
    let pair = prop_oneof![
        3 => good_url().prop_map(|u| vec!["-url".to_string(), u]),
        1 => "[a-z]{1,6}".prop_map(|u| vec!["-u".to_string(), u]),
        1 => "[!-~]{1,8}".prop_map(|p| vec!["-p".to_string(), p]),
        1 => "[A-Za-z]{1,6}".prop_map(|r| vec!["-r".to_string(), r]),
        1 => "[0-9a-f]{4,16}".prop_map(|d| vec!["-d".to_string(), d]),
        1 => "[A-Za-z]{1,6}".prop_map(|c| vec!["-cert".to_string(), c]),
        1 => (40u32..=610).prop_map(|t| vec!["-t".to_string(), t.to_string()]),
        1 => "[2-6]".prop_map(|l| vec!["-L".to_string(), l]),
        1 => "(connect|cancel|later)".prop_map(|v| vec!["-sessionselection".to_string(), v]),
        1 => "(-signout|-suspend|-resume)".prop_map(|f| vec![f]),
        1 => good_url().prop_map(|u| vec!["-signout".to_string(), u]),
    ];
    proptest::collection::vec(pair, 1..5).prop_map(|v| v.concat())
}

fn launcher_args() -> impl Strategy<Value = Vec<String>> {
    let arg = prop_oneof![
        proptest::sample::select(vec![
            "-url",
            "-u",
            "-p",
            "-r",
            "-d",
            "-cert",
            "-signout",
            "-suspend",
            "-resume",
            "-t",
            "-stop",
            "-version",
            "-help",
            "-L",
            "-loglevel",
            "-sessionselection",
            "--url",
            "-URL",
            "-",
        ])
        .prop_map(str::to_string),
        url_text(),
        "[0-9]{1,4}",
        Just("connect".to_string()),
        "\\PC{0,10}",
    ];
    proptest::collection::vec(arg, 0..10)
}

/// Where the value of a `-p` flag is, walking the vector as the launcher does: a flag that
/// takes a value consumes the next argument, whatever it looks like.
fn password_position(args: &[String]) -> Option<usize> {
    const TAKES_VALUE: &[&str] = &[
        "url",
        "u",
        "p",
        "r",
        "d",
        "cert",
        "t",
        "L",
        "loglevel",
        "sessionselection",
    ];
    let mut i = 0;
    while i < args.len() {
        let name = args[i].trim_start_matches('-');
        if args[i].starts_with('-') && TAKES_VALUE.contains(&name) {
            if name == "p" {
                return Some(i + 1);
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn kvps_never_panic_and_round_trip(pairs in kvp_pairs()) {
        if let Ok(kvps) = Kvps::parse(&pairs) {
            let back = kvps.to_pairs();
            prop_assert_eq!(Kvps::parse(&back).ok(), Some(kvps.clone()));
            // The getters are total.
            let _ = (kvps.mtu(), kvps.ip_routes(), kvps.disconnect_timeout(), kvps.tcp_idle_timeout());
            let _ = (kvps.atp_probe_idle(), kvps.atp_probe_interval(), kvps.atp_probe_count());
        } else {
            let e = Kvps::parse(&pairs).unwrap_err();
            prop_assert!(!e.errors().is_empty());
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn kvp_errors_are_bounded_in_size(value in "\\PC{0,5000}") {
        if let Err(e) = Kvps::parse(&[("MTU", value.as_str())]) {
            prop_assert!(e.to_string().len() < 400, "{}", e);
        }
    }

    #[test]
    fn server_urls_never_panic_and_normalise_idempotently(text in url_text()) {
        if let Ok(url) = ServerUrl::parse(&text) {
            let printed = url.to_string();
            let again = ServerUrl::parse(&printed);
            prop_assert_eq!(again.as_ref().ok(), Some(&url), "{} -> {}", text, printed);
            prop_assert_eq!(again.map(|u| u.to_string()).ok(), Some(printed));
        }
    }

    #[test]
    fn preconfig_never_panics(text in prop_oneof![preconfig_file(), preconfig_text()]) {
        match Preconfig::parse(&text) {
            Ok(p) => {
                for c in &p.connections {
                    prop_assert!(c.validate().is_ok());
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn preconfig_never_panics_on_raw_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Preconfig::parse_bytes(&bytes);
    }

    #[test]
    fn launch_urls_never_panic_and_round_trip(text in prop_oneof![launch_structured(), launch_text()]) {
        if let Ok(request) = LaunchRequest::parse(&text) {
            let url = request.to_url();
            prop_assert_eq!(LaunchRequest::parse(&url).ok(), Some(request), "{}", url);
        }
    }

    #[test]
    fn launcher_args_never_panic(args in prop_oneof![launcher_pairs(), launcher_args()]) {
        if let Err(e) = parse_launcher_args(&args) {
            prop_assert_eq!(e.exit_code(), ExitCode::BadParameter);
            // A password given with -p never shows in the message.
            if let Some(i) = password_position(&args)
                && let Some(secret) = args.get(i)
                && secret.len() > 3
                // A "password" such as `-url` also names a flag in honest messages.
                && !LAUNCHER_USAGE.contains(secret.as_str())
                && !args.iter().enumerate().any(|(j, a)| j != i && a.contains(secret.as_str()))
            {
                prop_assert!(!e.to_string().contains(secret.as_str()), "{}", e);
            }
        }
    }
}
