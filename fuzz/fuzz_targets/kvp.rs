//! KVP batches on arbitrary input: never a panic; what validates prints to pairs that
//! validate to the same settings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_config::*;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Lines of KEY=VALUE, as a profile or a command line gives them.
    let mut pairs = Vec::new();
    for line in text.lines() {
        if let Ok(pair) = Kvps::split_pair(line) {
            pairs.push(pair);
        }
    }
    check(&pairs);
    // The first byte picks a known key for the rest, so that every value parser is reached.
    if let Some((&k, rest)) = data.split_first() {
        let key = Key::ALL[usize::from(k) % Key::ALL.len()];
        check(&[(
            key.name().to_string(),
            String::from_utf8_lossy(rest).into_owned(),
        )]);
    }
});

fn check(pairs: &[(String, String)]) {
    match Kvps::parse(pairs) {
        Ok(kvps) => {
            let back = kvps.to_pairs();
            assert_eq!(Kvps::parse(&back).ok(), Some(kvps.clone()), "{back:?}");
            let _ = (
                kvps.mtu(),
                kvps.ip_routes(),
                kvps.split_udp_ports(),
                kvps.disconnect_timeout(),
            );
        }
        Err(e) => {
            assert!(!e.errors().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
}
