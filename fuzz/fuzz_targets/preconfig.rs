//! `.pulsepreconfig` parsing on arbitrary bytes: never a panic, every imported connection
//! satisfies the store's rules, and every error and report renders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_config::*;

fuzz_target!(|data: &[u8]| {
    check(Preconfig::parse_bytes(data));
    // Invalid UTF-8 stops the parser early; the lossy text reaches the grammar.
    check(Preconfig::parse(&String::from_utf8_lossy(data)));
});

fn check(result: Result<Preconfig, PreconfigError>) {
    match result {
        Ok(p) => {
            let mut names = std::collections::HashSet::new();
            for c in &p.connections {
                c.validate()
                    .expect("imported connections satisfy the store's rules");
                assert!(names.insert(c.name.clone()), "duplicate name {}", c.name);
                assert!(!c.urls.is_empty());
            }
            for s in &p.skipped {
                assert!(!s.to_string().is_empty());
            }
            for w in &p.warnings {
                assert!(!w.to_string().is_empty());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
