//! The gateway's session store file (`sessions.log`) on arbitrary bytes: never a panic; the
//! lines that cannot be read are named by number within the file; what a start reads, it
//! writes back so that the next start reads the same sessions and no bad line.
//!
//! The first byte picks how the rest is used: as the file, or (bit 0 set) spliced into a
//! well-formed record line (the next byte picks the field), since raw bytes rarely make a
//! record that parses.
#![no_main]

use std::{fs, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use tunnel_user::gateway::load_session_store;

const RECORD: &str = r#"{"put":{"key":"KEY","id":7,"user":"USER","realm":"Users","peer":"192.0.2.7:40000","ipv4":"10.77.0.9","ipv6":null,"logged_in":1000,"ends":50000,"parked_until":PARKED}}"#;
const FIELDS: [&str; 3] = ["KEY", "USER", "PARKED"];
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::path::Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("tunnel-fuzz-sessions-{}", std::process::id()))
    })
}

fuzz_target!(|input: &[u8]| {
    let data: Vec<u8> = match input {
        [sel, pick, rest @ ..] if sel & 1 == 1 => {
            let field = FIELDS[usize::from(*pick) % FIELDS.len()];
            let text = String::from_utf8_lossy(rest);
            let mut line = RECORD.replace("KEY", KEY).replace("USER", "alice").replace("PARKED", "null");
            let normal = match field {
                "KEY" => format!("\"{KEY}\""),
                "USER" => "\"alice\"".to_string(),
                _ => "null".to_string(),
            };
            line = line.replacen(&normal, &text, 1);
            format!("{line}\n{line}\n").into_bytes()
        }
        _ => input.to_vec(),
    };
    let dir = dir();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("sessions.log"), &data).unwrap();
    let lines = data.split(|&b| b == b'\n').count();
    match load_session_store(dir, 2_000) {
        Ok((users, bad)) => {
            assert!(bad.iter().all(|&n| (1..=lines).contains(&n)), "{bad:?} of {lines}");
            let (again, bad_again) = load_session_store(dir, 2_000).expect("opens again");
            assert!(bad_again.is_empty(), "the rewritten file reads clean: {bad_again:?}");
            let mut a = users.clone();
            let mut b = again;
            a.sort();
            b.sort();
            assert_eq!(a, b, "the same sessions after the rewrite");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let _ = fs::remove_dir_all(dir);
});
