//! The gateway's users file on arbitrary bytes: never a panic; a file that loads holds
//! exactly its user lines, each with its realms; a refusal names a line of the file and never
//! shows a hash.
//!
//! A well-formed PHC string is hard to come by at random, so when the first byte's low bit
//! is set, every `name:realms` line of the rest gets a hash appended, the first byte picking
//! it from a few (argon2id, argon2id with other parameters, argon2i, no hash output, broken),
//! so that names, realms, comments and repeats are explored around hashes that pass.
//!
//! The loader reads a real file, so each input is written to a file on tmpfs where there
//! is one, removed again before the next input. Passwords are not verified here: argon2
//! with the file's parameters costs milliseconds to seconds per input.
#![no_main]

use std::{fs, path::Path, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use tunnel_user::gateway::{HashLimits, UsersError, UsersFile};

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("tunnel-fuzz-users-{}", std::process::id()))
    })
}

/// Hashes for the structured inputs: only their syntax matters to the loader.
const HASHES: [&str; 5] = [
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "$argon2id$v=19$m=65536,t=3,p=4$YW5vdGhlcnNhbHQ$QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo",
    "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0",
    "$argon2id$v=19$m=19456,t=2,p=1$!!$AAAA",
];

fuzz_target!(|input: &[u8]| {
    let structured;
    let data = match input.split_first() {
        Some((&sel, rest)) if sel & 1 == 1 => {
            let hash = HASHES[usize::from(sel >> 1) % HASHES.len()].as_bytes();
            let mut out = Vec::with_capacity(rest.len() * 2);
            for line in rest.split_inclusive(|&b| b == b'\n') {
                let (body, end) = match line.strip_suffix(b"\n") {
                    Some(body) => (body, &b"\n"[..]),
                    None => (line, &b""[..]),
                };
                out.extend_from_slice(body);
                if body.iter().filter(|&&b| b == b':').count() == 1 {
                    out.push(b':');
                    out.extend_from_slice(hash);
                }
                out.extend_from_slice(end);
            }
            structured = out;
            &structured[..]
        }
        _ => input,
    };
    let path = path();
    fs::write(path, data).expect("write the users file");
    let loaded = UsersFile::load(path, &HashLimits::default());
    fs::remove_file(path).expect("remove the users file");
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        Err(_) => {
            assert!(
                matches!(loaded, Err(UsersError::Read { .. })),
                "a file that is not UTF-8 is refused: {loaded:?}"
            );
            return;
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    // The user lines, as the format describes them.
    let users: Vec<(&str, Vec<&str>, &str)> = lines
        .iter()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            Some((f.next()?, f.next()?.split(',').collect(), f.next()?))
        })
        .collect();
    match &loaded {
        Ok(file) => {
            assert_eq!(file.len(), users.len());
            for (name, realms, _) in &users {
                let got = file.realms(name).expect("every user line is a user");
                assert_eq!(got, &realms[..], "realms of {name:?}");
            }
        }
        Err(e @ UsersError::Corrupt { line, .. }) => {
            assert!(
                (1..=lines.len()).contains(line),
                "line {line} of {}",
                lines.len()
            );
            // A hash long enough not to occur by chance, and not also a name or realm
            // (which an error may show), must not be in the message.
            let shown = e.to_string();
            for (_, _, hash) in &users {
                let elsewhere = users
                    .iter()
                    .any(|(n, r, _)| n.contains(hash) || r.iter().any(|r| r.contains(hash)));
                assert!(
                    hash.len() < 24 || elsewhere || !shown.contains(hash),
                    "the error shows a hash: {shown}"
                );
            }
        }
        Err(e) => panic!("a readable file is loaded or refused by line: {e}"),
    }
});
