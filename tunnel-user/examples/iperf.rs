//! A developer's quick throughput check of our client and gateway: builds the client world,
//! connects (ESP with the gateway's default suite; `tls` for TLS only, or an ESP suite name
//! such as `aes128-sha1` as the first argument) and runs iperf3 from the client to corp,
//! printing iperf3's summary. With `PERF=file` set, `perf record -a -g` samples the whole
//! machine during the run into that file; with `PINGS=n`, n pings 10 ms apart go to corp
//! first and ping's summary is printed; with `HOLD=s` the idle tunnel stays up s seconds
//! before that. The full comparison is `cargo xtask bench`.
//!
//! `cargo build --release -p tunnel-user --bins && cargo run --release -p tunnel-user --example iperf [tls|SUITE] [-- iperf3 args]`

use std::{path::PathBuf, time::Duration};

use tunnel_user::testbed::client_world::{Binaries, CORP, ClientWorld};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().filter(|a| *a != "--").cloned();
    let tls = mode.as_deref() == Some("tls");
    let extra: Vec<String> = args
        .iter()
        .skip_while(|a| *a != "--")
        .skip(1)
        .cloned()
        .collect();
    // BIN_DIR: another build's binaries (to compare two trees in the same world).
    let bin = std::env::var_os("BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
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
    } else if let Some(suite) = &mode {
        let conf = w.dir.join("gateway.toml");
        let text = std::fs::read_to_string(&conf).unwrap();
        let with = format!("[esp]\nciphers = [\"{suite}\"]\n");
        std::fs::write(&conf, text.replace("[esp]\n", &with)).unwrap();
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
    // HOLD=secs: keep the tunnel up and idle that long first (to look at it from outside).
    if let Some(s) = std::env::var("HOLD")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_secs(s));
    }
    if let Some(n) = std::env::var("PINGS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
    {
        let out = w
            .client
            .command("ping")
            .args(["-q", "-c", &n.to_string(), "-i", "0.01", CORP])
            .output()
            .unwrap();
        println!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let mut server = w.corp.command("iperf3").args(["-s", "-1"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let perf = std::env::var("PERF").ok().map(|file| {
        std::process::Command::new("perf")
            .args([
                "record",
                "-a",
                "-g",
                "-e",
                "cpu-clock",
                "-o",
                &file,
                "--",
                "sleep",
                "4",
            ])
            .spawn()
            .unwrap()
    });
    let out = w
        .client
        .command("iperf3")
        .args(["-c", CORP, "-t", "5"])
        .args(&extra)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
    let _ = server.kill();
    let _ = server.wait();
    println!("{}", w.counters());
    if std::env::var_os("IPERF_STATS").is_some() {
        for (name, ns) in [("client", &w.client), ("gateway", &w.gw), ("corp", &w.corp)] {
            let stats = ns
                .sh("grep -A1 '^Udp:' /proc/net/snmp; ss -uamn; ip -s -s link")
                .unwrap_or_default();
            println!("--- {name}\n{stats}");
        }
    }
    println!(
        "{}",
        String::from_utf8_lossy(&w.tunnel(&["status"], "").stdout)
    );
}
