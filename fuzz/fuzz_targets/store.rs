//! The connections store's file (JSON, or TOML by extension) on arbitrary bytes: never a
//! panic; a file that opens holds only connections that satisfy the store's rules, and
//! writing it back gives a file that opens to the same store; a corrupt file is kept aside
//! with a reason that renders.
//!
//! The first byte picks the format (bit 0) and how the rest is used (bit 1): as the file,
//! or as the value of one field of a hand-written store with two connections (the next byte
//! picks the field, a KVP among them), as TOML when it is a TOML value, else as a string.
//! Raw bytes rarely make a connection that validates; the second form reaches every field's
//! checks, repeated names and the KVPs.
//!
//! The store reads and writes a real file, so each input gets a fresh directory, on tmpfs
//! where there is one (the store fsyncs), removed again before the next input.
#![no_main]

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use libfuzzer_sys::fuzz_target;
use tunnel_config::*;

/// A store with every field set, in the second connection's case as little as may be.
const EXAMPLE: &str = r#"
format = 1

[machine]
allow_save = true
user_connection = true
dynamic_trust = false
dynamic_connection = true
vpn_only_access = true
server_id = "binding-server"
version = 3

[[connections]]
name = "corp"
urls = ["vpn.example.com", "vpn2.example.com:8443/usr"]
url_mode = "most-recent"
last_url = 1
realm = "Users"
user = "alice"
scope = { kind = "per-app", cgroup = "/user.slice/app.scope" }
source = "preconfig"
policy = "automatic"
identity = "user"
lock_down = true
server_id = "binding-server"
guid = "5f2c9a80-0000-4000-8000-000000000001"

[connections.kvps]
MTU = 1300
DisablePinning = true
SplitUDPPortList = "53;161-162;200-1024"

[[connections]]
name = "lab"
urls = ["[2001:db8::1]"]
"#;

const MACHINE_FIELDS: [&str; 7] = [
    "allow_save",
    "user_connection",
    "dynamic_trust",
    "dynamic_connection",
    "vpn_only_access",
    "server_id",
    "version",
];
const CONNECTION_FIELDS: [&str; 16] = [
    "name",
    "urls",
    "urls[0]",
    "url_mode",
    "last_url",
    "realm",
    "user",
    "kvps",
    "scope",
    "source",
    "policy",
    "identity",
    "lock_down",
    "server_id",
    "guid",
    "scope.cgroup",
];

fn example() -> &'static toml::Table {
    static TABLE: OnceLock<toml::Table> = OnceLock::new();
    TABLE.get_or_init(|| toml::from_str(EXAMPLE).expect("the example is TOML"))
}

/// The example with one field set to `value`, chosen by `pick`.
fn with_field(pick: u8, value: toml::Value) -> toml::Table {
    let mut table = example().clone();
    let machine = MACHINE_FIELDS.len();
    let connection = CONNECTION_FIELDS.len();
    let kvps = Key::ALL.len();
    let mut n = usize::from(pick) % (1 + machine + 2 * connection + kvps);
    if n == 0 {
        table.insert("format".into(), value);
        return table;
    }
    n -= 1;
    if n < machine {
        let m = table["machine"].as_table_mut().expect("machine is a table");
        m.insert(MACHINE_FIELDS[n].into(), value);
        return table;
    }
    n -= machine;
    let connections = table["connections"]
        .as_array_mut()
        .expect("connections is an array");
    if n < 2 * connection {
        let c = connections[n / connection]
            .as_table_mut()
            .expect("a connection is a table");
        match CONNECTION_FIELDS[n % connection] {
            "urls[0]" => {
                c.insert("urls".into(), toml::Value::Array(vec![value]));
            }
            "scope.cgroup" => {
                let mut scope = toml::Table::new();
                scope.insert("kind".into(), "per-app".into());
                scope.insert("cgroup".into(), value);
                c.insert("scope".into(), toml::Value::Table(scope));
            }
            field => {
                c.insert(field.into(), value);
            }
        }
        return table;
    }
    n -= 2 * connection;
    let kvps = connections[0]
        .as_table_mut()
        .and_then(|c| c.get_mut("kvps"))
        .and_then(toml::Value::as_table_mut)
        .expect("the first connection has KVPs");
    kvps.insert(Key::ALL[n].name().into(), value);
    table
}

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
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let toml_file = sel & 1 == 1;
    let bytes = if sel & 2 == 0 {
        rest.to_vec()
    } else {
        let Some((&pick, rest)) = rest.split_first() else {
            return;
        };
        let raw = String::from_utf8_lossy(rest);
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.into_owned()));
        let table = with_field(pick, value);
        let text = if toml_file {
            toml::to_string(&table).ok()
        } else {
            serde_json::to_string(&table).ok()
        };
        let Some(text) = text else { return };
        text.into_bytes()
    };
    let dir = fresh_dir();
    let path = dir.join(if toml_file {
        "connections.toml"
    } else {
        "connections.json"
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
