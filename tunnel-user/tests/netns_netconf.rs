//! rtnetlink configuration against a real kernel, in a namespace of its own.

use std::net::IpAddr;

use tunnel_user::{
    sys::netconf::{Netlink, Route, Via, sysctl},
    testbed::Netns,
};

#[test]
fn links_addresses_and_routes() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP links_addresses_and_routes: needs root");
        return;
    }
    let ns = Netns::create(&format!("tnc{}", std::process::id())).unwrap();
    ns.sh("ip link add d0 type veth peer name d0p; ip link add d1 type veth peer name d1p; ip link set d0p up; ip link set d1p up; tc qdisc add dev d1 root pfifo")
        .unwrap();
    ns.enter(|| {
        let d0 = tunnel_user::datapath::ifindex("d0").unwrap();
        let d1 = tunnel_user::datapath::ifindex("d1").unwrap();
        let mut nl = Netlink::open().unwrap();
        nl.link_up(d0, Some(1400)).unwrap();
        nl.link_up(d1, None).unwrap();
        nl.addr_add(d0, "192.0.2.10".parse().unwrap(), 24).unwrap();
        nl.addr_add(d0, "192.0.2.10".parse().unwrap(), 24)
            .expect("adding twice is fine");
        nl.addr_add(d0, "2001:db8::10".parse().unwrap(), 64)
            .unwrap();
        assert_eq!(
            nl.route_get("198.51.100.1".parse().unwrap()).unwrap(),
            None,
            "no default route yet"
        );
        let default = Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            via: Via::Gateway("192.0.2.1".parse().unwrap(), d0),
            metric: None,
            mtu: None,
        };
        nl.route_add(&default).unwrap();
        assert!(nl.route_add(&default).is_err(), "identical route refused");
        let corp = Route {
            dst: "10.1.0.0/16".parse().unwrap(),
            via: Via::Dev(d1),
            metric: Some(50),
            mtu: Some(1300),
        };
        nl.route_add(&corp).unwrap();
        let r = nl
            .route_get("198.51.100.1".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.ifindex, r.gateway),
            (d0, Some("192.0.2.1".parse::<IpAddr>().unwrap()))
        );
        assert_eq!(r.prefsrc, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(
            nl.route_get("10.1.2.3".parse().unwrap())
                .unwrap()
                .unwrap()
                .ifindex,
            d1
        );
        nl.route_del(&corp).unwrap();
        assert_eq!(
            nl.route_get("10.1.2.3".parse().unwrap())
                .unwrap()
                .unwrap()
                .ifindex,
            d0
        );
        nl.route_add(&corp).unwrap();
        let err = nl
            .addr_add(9999, "192.0.2.11".parse().unwrap(), 24)
            .unwrap_err();
        assert!(err.to_string().contains("ifindex 9999"), "{err}");
        let err = nl.route_del(&corp6(d1)).unwrap_err();
        assert!(
            err.to_string().contains("2001:db8:1::/48 dev ifindex"),
            "the error names the route: {err}"
        );
        nl.route_add(&corp6(d1)).unwrap();
        assert_eq!(
            nl.route_get("2001:db8:1::5".parse().unwrap())
                .unwrap()
                .map(|r| r.ifindex),
            Some(d1)
        );
        nl.addr_add(d0, "192.0.2.99".parse().unwrap(), 32).unwrap();
        nl.addr_del(d0, "192.0.2.99".parse().unwrap(), 32).unwrap();
        assert!(
            nl.addr_del(d0, "192.0.2.99".parse().unwrap(), 32).is_err(),
            "a removed address is gone"
        );
        nl.root_qdisc_noqueue(d1).unwrap();
        sysctl("net/ipv4/conf/d1/rp_filter", "2").unwrap();
    })
    .unwrap();
    let shown = ns.sh("ip -d link show d0; ip addr show d0; ip route show proto 116; ip -6 route show proto 116; tc qdisc show dev d1; sysctl -n net.ipv4.conf.d1.rp_filter").unwrap();
    assert!(
        shown.contains("mtu 1400") && shown.contains("UP"),
        "{shown}"
    );
    assert!(
        shown.contains("192.0.2.10/24") && shown.contains("2001:db8::10/64"),
        "{shown}"
    );
    assert!(shown.contains("default via 192.0.2.1 dev d0"), "{shown}");
    assert!(
        shown.contains("10.1.0.0/16 dev d1")
            && shown.contains("metric 50")
            && shown.contains("mtu 1300"),
        "{shown}"
    );
    assert!(shown.contains("2001:db8:1::/48 dev d1"), "{shown}");
    assert!(
        shown.contains("qdisc noqueue") && !shown.contains("pfifo"),
        "noqueue replaced the root qdisc: {shown}"
    );
    assert!(!shown.contains("192.0.2.99"), "{shown}");
    assert!(
        shown.trim_end().ends_with('2'),
        "rp_filter set in the namespace: {shown}"
    );
}

/// An IPv6 route on-link through `d1`.
fn corp6(d1: u32) -> Route {
    Route {
        dst: "2001:db8:1::/48".parse().unwrap(),
        via: Via::Dev(d1),
        metric: None,
        mtu: None,
    }
}
