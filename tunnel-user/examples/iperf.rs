//! A developer's quick throughput check of our client and gateway: builds the client world,
//! connects (ESP, or TLS with `tls` as the first argument) and runs iperf3 from the client to
//! corp, printing iperf3's summary. The full comparison is `cargo xtask bench`.
//!
//! `cargo build --release -p tunnel-user --bins && cargo run --release -p tunnel-user --example iperf [tls] [-- iperf3 args]`

use std::{path::PathBuf, time::Duration};

use tunnel_user::testbed::client_world::{Binaries, CORP, ClientWorld};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tls = args.first().is_some_and(|a| a == "tls");
    let extra: Vec<String> = args
        .iter()
        .skip_while(|a| *a != "--")
        .skip(1)
        .cloned()
        .collect();
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    let w = ClientWorld::build(
        "p",
        Binaries {
            gateway: bin.join("tunnel-gateway"),
            tunneld: bin.join("tunneld"),
            tunnel: bin.join("tunnel"),
        },
    );
    if tls {
        let conf = w.dir.join("gateway.toml");
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, text.replace("[esp]\n", "[esp]\nenabled = false\n")).unwrap();
    }
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let out = w.connect();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "{}",
        String::from_utf8_lossy(&w.tunnel(&["status"], "").stdout)
    );
    let mut server = w.corp.command("iperf3").args(["-s", "-1"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = w
        .client
        .command("iperf3")
        .args(["-c", CORP, "-t", "5"])
        .args(&extra)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let _ = server.kill();
    let _ = server.wait();
    println!("{}", w.counters());
    if std::env::var_os("IPERF_STATS").is_some() {
        for (name, ns) in [("client", &w.client), ("gateway", &w.gw)] {
            let stats = ns
                .sh("grep -A1 '^Udp:' /proc/net/snmp; ip -s -s link")
                .unwrap_or_default();
            println!("--- {name}\n{stats}");
        }
    }
    println!(
        "{}",
        String::from_utf8_lossy(&w.tunnel(&["status"], "").stdout)
    );
}
