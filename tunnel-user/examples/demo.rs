//! `cargo xtask demo`: the whole product in network namespaces. Our gateway, `tunneld` and the
//! `tunnel` command: connect, a corp name resolved through the tunnel, split tunnelling
//! decided in the kernel, a UDP port rule, a per-app rule, live status and counters,
//! sign-out, a session moving between two gateways that share Redis, and a clean teardown. The world is drawn
//! in `tunnel_user::testbed::client_world`.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tunnel_user::testbed::{
    client_world::{
        Binaries, CLIENT_LAN, CORP, ClientWorld, EXCLUDED, GATEWAY, GATEWAY2, PORT, wait_for,
    },
    dns_server::DnsServer,
    redis_server::RedisServer,
};

fn binaries() -> Result<Binaries> {
    let dir = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .context("locating the build directory")?;
    let bin = Binaries {
        gateway: dir.join("tunnel-gateway"),
        tunneld: dir.join("tunneld"),
        tunnel: dir.join("tunnel"),
    };
    for p in [&bin.gateway, &bin.tunneld, &bin.tunnel] {
        if !p.exists() {
            bail!(
                "{} is missing: `cargo xtask demo` builds it (or `cargo build --release -p tunnel-user --bins`)",
                p.display()
            );
        }
    }
    Ok(bin)
}

fn say(w: &ClientWorld, args: &[&str]) -> Result<()> {
    let out = w.tunnel(args, "");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn way(seen: Option<String>, tunnel_addr: &str) -> String {
    match seen {
        Some(s) if s == tunnel_addr => format!("seen as {s}: through the tunnel"),
        Some(s) if s == CLIENT_LAN => format!("seen as {s}: directly, not tunnelled"),
        Some(s) => format!("seen as {s}"),
        None => "no answer".into(),
    }
}

fn main() -> Result<()> {
    let bin = binaries()?;
    // Program IDs only grow: the demo's programs have IDs above every one loaded now
    // (another tunneld on this machine keeps its own).
    let loaded_before = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .max()
        .unwrap_or(0);
    println!("tunnel demo: gateway, tunneld and tunnel in network namespaces\n");
    let w = ClientWorld::build("demo", bin);
    // The corp DNS server the gateway pushes (dnsmasq), answering one corp name.
    w.corp.sh("ip addr add 172.20.0.53/24 dev x0")?;
    let _corp_dns = DnsServer::start(
        &w.corp,
        "172.20.0.53".parse()?,
        &[("intranet.corp.example", CORP.parse()?)],
        &w.dir,
    )?;
    let mut gateway = w.start_gateway();
    let mut tunneld = w.start_tunneld();
    println!("▶ tunnel connect --url https://{GATEWAY}:8443 -u alice --kvp SplitUDPPortList=5000");
    let started = Instant::now();
    let out = w.connect_with(&["--kvp", "SplitUDPPortList=5000"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("connect failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!(
        "  connected in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "\n▶ getent hosts intranet.corp.example (tunneld's DNS forwarder; its own resolv.conf)"
    );
    wait_for("the corp name", Duration::from_secs(10), || {
        w.resolve(&tunneld, "intranet.corp.example").as_deref() == Some(CORP)
    });
    println!(
        "  {CORP}: resolved by the corp server through the tunnel, {:.0} ms after the connect began",
        started.elapsed().as_secs_f64() * 1e3
    );
    wait_for("ESP", Duration::from_secs(10), || {
        w.status()[0]["transport"] == "esp"
    });
    let tunnel_addr = w.status()[0]["ipv4"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    println!(
        "\n▶ split tunnelling (the gateway pushes 172.20.0.0/24 and 198.51.100.0/24, excluding {EXCLUDED})"
    );
    println!(
        "  TCP {CORP}:{PORT}      {}",
        way(w.seen_as(CORP), &tunnel_addr)
    );
    println!(
        "  TCP {EXCLUDED}:{PORT}  {}",
        way(w.seen_as(EXCLUDED), &tunnel_addr)
    );
    println!("\n▶ UDP port rule (SplitUDPPortList=5000)");
    println!(
        "  UDP {CORP}:5000     {}",
        way(w.udp_seen_as(5000), &tunnel_addr)
    );
    println!(
        "  UDP {CORP}:7000     {}",
        way(w.udp_seen_as(7000), &tunnel_addr)
    );
    println!("\n▶ tunnel status");
    say(&w, &["status"])?;
    println!("\n▶ tunnel counters (the kernel classifier)");
    say(&w, &["counters"])?;
    println!("\n▶ tunnel signout {GATEWAY}");
    say(&w, &["signout", GATEWAY])?;

    println!("\n▶ per-app: only processes in cgroup tunnel-demo-app use the tunnel");
    let cgroup = PathBuf::from("/sys/fs/cgroup/unified/tunnel-demo-app");
    let _ = fs::remove_dir(&cgroup);
    fs::create_dir(&cgroup).context("creating the app cgroup")?;
    let out = w.connect_with(&["--per-app", &cgroup.display().to_string()]);
    if !out.status.success() {
        bail!(
            "per-app connect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tunnel_addr = w.status()[0]["ipv4"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let fetch = format!("exec 3<>/dev/tcp/{CORP}/{PORT}; head -n 1 <&3");
    let app = w.in_cgroup(&cgroup, &fetch);
    println!("  the app:         {}", way(Some(app), &tunnel_addr));
    println!("  anything else:   {}", way(w.seen_as(CORP), &tunnel_addr));
    say(&w, &["signout", GATEWAY])?;
    let _ = fs::remove_dir(&cgroup);

    println!(
        "\n▶ a cluster: gateways {GATEWAY} and {GATEWAY2} share their sessions in Redis; the first dies"
    );
    gateway.stop();
    tunneld.stop();
    let redis = RedisServer::start(&w.gw, 6390, &w.dir)?;
    let (dir2, _) = w.second_gateway();
    w.share_sessions(&dir2, &redis.url(), "");
    let mut gateway = w.start_gateway();
    let mut gateway2 = w.start_gateway_in(&dir2);
    let mut tunneld = w.start_tunneld_with(&[("SSL_CERT_FILE", &w.both_certificates(&dir2))]);
    let (one, two) = (
        format!("https://{GATEWAY}:8443"),
        format!("https://{GATEWAY2}:8443"),
    );
    w.tunnel(
        &[
            "add", "cluster", "--url", &one, "--url", &two, "-u", "alice",
        ],
        "",
    );
    let out = w.tunnel(
        &["connect", "cluster", "-u", "alice", "--password-stdin"],
        "s3cret\n",
    );
    if !out.status.success() {
        bail!(
            "cluster connect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let where_ = || {
        let st = w.status();
        (
            st[0]["server"].as_str().unwrap_or_default().to_string(),
            st[0]["ipv4"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (server, tunnel_addr) = where_();
    println!("  connected to {server} as {tunnel_addr}; gateway 1 killed (SIGKILL)");
    gateway.kill();
    let killed = Instant::now();
    wait_for("the move to gateway 2", Duration::from_secs(60), || {
        w.status()[0]["state"] == "connected" && where_().0.contains(GATEWAY2)
    });
    let (server, addr) = where_();
    println!(
        "  {:.0} ms later: connected to {server} as {addr}, the same session (its cookie) and address",
        killed.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "  TCP {CORP}:{PORT}      {}",
        way(w.seen_as(CORP), &tunnel_addr)
    );
    say(&w, &["signout", "cluster"])?;

    println!("\n▶ teardown");
    tunneld.stop();
    gateway2.stop();
    drop(redis);
    let left: Vec<String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.id() > loaded_before)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| n.starts_with("tunnel_"))
        .collect();
    drop(w);
    if !left.is_empty() {
        bail!("programs still loaded after tunneld stopped: {left:?}");
    }
    println!(
        "  tunneld and the gateway stopped; no kernel program, namespace or cgroup left behind"
    );
    Ok(())
}
