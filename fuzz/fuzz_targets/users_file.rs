//! The gateway's users file on arbitrary bytes: never a panic; a file that loads holds
//! exactly its user lines, each with its realms; a refusal names a line of the file and never
//! shows a hash.
//!
//! The loader reads a real file, so each input is written to a file on tmpfs where there
//! is one, removed again before the next input. Passwords are not verified here: argon2
//! with the file's parameters costs milliseconds to seconds per input.
#![no_main]

use std::{fs, path::Path, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use tunnel_user::gateway::{UsersError, UsersFile};

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

fuzz_target!(|data: &[u8]| {
    let path = path();
    fs::write(path, data).expect("write the users file");
    let loaded = UsersFile::load(path);
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
