//! `cargo xtask demo`: the eBPF data path sorting real traffic into tunnel, bypass and drop in
//! network namespaces, with the kernel's counters after each scene. The world is drawn in
//! `tunnel_user::testbed::world`; the "tunnel" is a TUN relay (the client and gateway issues
//! put the real encrypted tunnel there).

use std::{fs, os::unix::fs::MetadataExt, time::Instant};

use anyhow::{Context as _, Result, bail};
use tunnel_user::{
    Datapath,
    datapath::{AppRule, ConnPolicy, CounterTable, Policy, ifindex},
    testbed::{
        SplitWorld,
        split::{CORP, CORP6, GATEWAY, TCP_PORT, TUN_V4, TUN_V6},
    },
};

fn scene(dp: &Datapath, title: &str, f: impl FnOnce() -> Result<String>) -> Result<()> {
    let before = dp.counters()?;
    let t = Instant::now();
    let outcome = f()?;
    let delta: CounterTable = dp.counters()?.since(&before);
    println!(
        "\n▶ {title}\n  {outcome}  ({:.0} ms)",
        t.elapsed().as_secs_f64() * 1e3
    );
    for line in delta.to_string().lines() {
        println!("    {line}");
    }
    Ok(())
}

fn answer(who: Option<String>) -> String {
    match who.as_deref() {
        Some("corp") => "answered by corp: went through the tunnel".into(),
        Some("lan") => "answered by the LAN: went direct".into(),
        Some(other) => format!("answered by {other}"),
        None => "no answer: dropped".into(),
    }
}

fn main() -> Result<()> {
    println!("tunnel demo: the eBPF classifier in network namespaces");
    let w = SplitWorld::build("tdemo").context("building the namespaces")?;
    let mut dp = Datapath::load().context("loading the eBPF programs")?;
    let (uplink, tun, tun_ifindex) = w.client.enter(|| -> Result<_> {
        Ok((
            dp.attach_uplink("up0")?,
            dp.attach_tun("tun0")?,
            ifindex("tun0")?,
        ))
    })??;
    println!(
        "attached: TC egress + XDP on {}, TC ingress + egress on {}",
        uplink.ifname(),
        tun.ifname()
    );
    let conn = ConnPolicy {
        tun_v4: Some(TUN_V4),
        tun_v6: Some(TUN_V6),
        include: ["10.1.0.0/16", "172.31.0.0/16", "fd00:100::/64"]
            .iter()
            .map(|n| n.parse())
            .collect::<Result<_, _>>()?,
        exclude: vec!["172.31.9.0/24".parse()?],
        udp_ports: Some("5000-5001".parse()?),
        ..ConnPolicy::new(0, tun_ifindex)
    };
    let device = Policy {
        gateways: vec![GATEWAY.parse()?],
        device_conn: Some(0),
        conns: vec![conn],
        ..Default::default()
    };
    dp.apply(&device)?;
    println!(
        "policy: include 10.1.0.0/16 172.31.0.0/16 fd00:100::/64, exclude 172.31.9.0/24, UDP ports 5000-5001"
    );

    scene(&dp, &format!("TCP to {CORP}:{TCP_PORT} (included)"), || {
        Ok(answer(w.who_answers_tcp(CORP)))
    })?;
    scene(
        &dp,
        &format!("TCP to [{CORP6}]:{TCP_PORT} (included, IPv6)"),
        || Ok(answer(w.who_answers_tcp(CORP6))),
    )?;
    scene(
        &dp,
        "TCP to 172.31.9.1 (excluded route inside an included one)",
        || Ok(answer(w.who_answers_tcp("172.31.9.1"))),
    )?;
    scene(&dp, &format!("UDP to {CORP}:5000 (listed port)"), || {
        Ok(answer(w.who_answers_udp(CORP, 5000)))
    })?;
    scene(
        &dp,
        &format!("UDP to {CORP}:7000 (port not listed)"),
        || Ok(answer(w.who_answers_udp(CORP, 7000))),
    )?;
    scene(
        &dp,
        "8 MiB echoed through the tunnel (reverse NAT, MSS clamp)",
        || {
            let t = Instant::now();
            w.echo_transfer(CORP, 8 << 20)?;
            Ok(format!(
                "intact, {:.0} Mbit/s both ways",
                2.0 * 8.0 * 8.0 * 1.048_576 / t.elapsed().as_secs_f64()
            ))
        },
    )?;

    let cgroup = std::path::PathBuf::from("/sys/fs/cgroup/unified/tunnel-demo-app");
    let _ = fs::remove_dir(&cgroup);
    fs::create_dir(&cgroup).context("creating the app cgroup")?;
    let per_app = Policy {
        device_conn: None,
        apps: vec![AppRule {
            cgroup_id: fs::metadata(&cgroup)?.ino(),
            conn: 0,
        }],
        ..device.clone()
    };
    dp.apply(&per_app)?;
    println!("\npolicy: per-app only (cgroup {})", cgroup.display());
    let fetch = format!("exec 3<>/dev/tcp/{CORP}/{TCP_PORT}; head -c 4 <&3");
    scene(
        &dp,
        &format!("an app in the cgroup connects to {CORP}"),
        || Ok(answer(Some(w.run_in_cgroup(&cgroup, &fetch)?))),
    )?;
    scene(
        &dp,
        &format!("any other process connects to {CORP}"),
        || Ok(answer(w.who_answers_tcp(CORP))),
    )?;
    let _ = fs::remove_dir(&cgroup);

    dp.apply(&Policy {
        lockdown: true,
        ..device.clone()
    })?;
    println!("\npolicy: lock-down (VPN only access)");
    scene(&dp, "TCP to 172.16.0.1 (not included)", || {
        Ok(answer(w.who_answers_tcp("172.16.0.1")))
    })?;
    scene(&dp, &format!("TCP to {CORP} (tunnel)"), || {
        Ok(answer(w.who_answers_tcp(CORP)))
    })?;
    scene(&dp, "the LAN pings us from 172.16.0.1 (XDP)", || {
        Ok(
            match w.lan.sh("ping -c 2 -i 0.2 -W 1 -I 172.16.0.1 192.168.50.2") {
                Ok(_) => "replied".into(),
                Err(_) => "no reply: dropped on arrival".into(),
            },
        )
    })?;

    println!("\ntotals:\n{}", dp.counters()?);
    drop(tun);
    drop(uplink);
    drop(dp);
    let left = w.client.sh("ip -d link show up0; tc qdisc show dev up0")?;
    if left.contains("xdp") || left.contains("clsact") {
        bail!("something stayed attached: {left}");
    }
    drop(w);
    println!("detached and torn down: no program, qdisc, namespace or cgroup left behind");
    Ok(())
}
