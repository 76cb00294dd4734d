//! The connections store's file (JSON, or TOML by extension) on arbitrary bytes: never a
//! panic; a file that opens holds only connections that satisfy the store's rules, and
//! writing it back gives a file that opens to the same store; a corrupt file is kept aside
//! with a reason that renders.
//!
//! The store reads and writes a real file, so each input gets a fresh directory, on tmpfs
//! where there is one (the store fsyncs), removed again before the next input.
#![no_main]

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use libfuzzer_sys::fuzz_target;
use tunnel_config::*;

fn fresh_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "tunnel-fuzz-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir).expect("create the fuzz directory");
    dir
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let dir = fresh_dir();
    let path = dir.join(if sel & 1 == 0 {
        "connections.json"
    } else {
        "connections.toml"
    });
    fs::write(&path, bytes).expect("write the store file");
    check(&path);
    fs::remove_dir_all(&dir).expect("remove the fuzz directory");
});

fn check(path: &Path) {
    let (mut store, corrupt) = match Store::open(path) {
        Ok(opened) => opened,
        Err(e) => {
            assert!(
                matches!(e, StoreError::NewerFormat { .. }),
                "only a newer format is an error for a readable file: {e}"
            );
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    if let Some(c) = corrupt {
        assert!(!c.to_string().is_empty());
        assert!(c.kept_at.exists(), "the corrupt file is kept");
        assert!(!path.exists(), "the corrupt file is moved, not copied");
        assert!(store.list().is_empty());
        return;
    }
    let mut names = std::collections::HashSet::new();
    for c in store.list() {
        c.validate()
            .expect("a loaded connection satisfies the store's rules");
        assert!(names.insert(c.name.clone()), "duplicate name {}", c.name);
    }
    // Written back in the store's own encoding, the file opens to the same store.
    let machine = store.machine().clone();
    let connections = store.list().to_vec();
    store
        .set_machine(machine.clone())
        .expect("a store that was read writes back");
    let (again, corrupt) = Store::open(path).expect("the written store opens");
    assert_eq!(corrupt, None, "the written store is not corrupt");
    assert_eq!(again.machine(), &machine);
    assert_eq!(again.list(), &connections[..]);
}
