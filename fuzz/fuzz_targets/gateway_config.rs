//! The gateway's config file on arbitrary text: never a panic; an accepted config renders
//! (`--check-config`) and keeps its documented ranges; every refusal renders.
//!
//! Raw text rarely gets past the TOML grammar and the required keys, so the input also sets
//! one key of a documented example (docs/gateway-config.md: the full one, or the minimal
//! one, which parses faster), the first byte picking the key, the second the example, the
//! rest giving the value: as a TOML value when it is one, else as a string. That reaches
//! every key's validation.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tunnel_user::gateway::{GatewayConfig, MTU_RANGE};

const DOC: &str = include_str!("../../docs/gateway-config.md");

struct Examples {
    /// The full example and the minimal one.
    tables: [toml::Table; 2],
    /// Every key of the full example: (section, key).
    keys: Vec<(Option<String>, String)>,
}

fn examples() -> &'static Examples {
    static EXAMPLES: OnceLock<Examples> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        let block = |n| {
            let text = DOC
                .split("```toml\n")
                .nth(n)
                .and_then(|rest| rest.split("```").next())
                .expect("docs/gateway-config.md has two toml examples");
            GatewayConfig::from_str(text).expect("a documented example is a valid config");
            toml::from_str::<toml::Table>(text).expect("a documented example is TOML")
        };
        let tables = [block(1), block(2)];
        let mut keys = Vec::new();
        for (k, v) in &tables[0] {
            match v {
                toml::Value::Table(section) => {
                    keys.extend(section.keys().map(|s| (Some(k.clone()), s.clone())));
                }
                _ => keys.push((None, k.clone())),
            }
        }
        Examples { tables, keys }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    let [pick, base, rest @ ..] = data else {
        return;
    };
    let examples = examples();
    let (section, key) = &examples.keys[usize::from(*pick) % examples.keys.len()];
    let raw = String::from_utf8_lossy(rest);
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.into_owned()));
    let mut table = examples.tables[usize::from(base & 1)].clone();
    let slot = match section {
        Some(s) => table
            .entry(s.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a section is a table"),
        None => &mut table,
    };
    slot.insert(key.clone(), value);
    if let Ok(text) = toml::to_string(&table) {
        check(&text);
    }
});

fn check(text: &str) {
    match GatewayConfig::from_str(text) {
        Ok(c) => {
            // What docs/gateway-config.md promises of every accepted config.
            assert!(MTU_RANGE.contains(&c.mtu), "mtu {}", c.mtu);
            assert!(
                c.pool.ipv4.contains(&c.pool.gateway_ipv4),
                "{}",
                c.pool.gateway_ipv4
            );
            match (c.pool.ipv6, c.pool.gateway_ipv6) {
                (Some(net), Some(gw)) => assert!(net.contains(&gw), "{gw}"),
                (None, None) => {}
                other => panic!("pool.ipv6 and its gateway go together: {other:?}"),
            }
            assert!((1..=3600).contains(&c.dpd_interval.as_secs()));
            assert!(c.session_lifetime.as_secs() >= 1);
            assert!((1..=15).contains(&c.tun_name.len()), "{:?}", c.tun_name);
            assert!(
                !c.tun_name
                    .chars()
                    .any(|ch| ch == '/' || ch == ':' || ch.is_whitespace()),
                "{:?}",
                c.tun_name
            );
            assert_ne!(c.esp.port, 0);
            assert!(!c.auth.realms.is_empty());
            assert!(!c.to_string().is_empty());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
