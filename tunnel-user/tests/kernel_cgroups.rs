//! Per-app rules follow the cgroup tree: a rule on an ancestor covers every cgroup below it,
//! and the deepest rule wins. This binary moves itself into a nested cgroup it creates, so it
//! is a test binary of its own (other tests are not affected).

mod support;

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use support::*;
use tunnel_common::Reason;
use tunnel_user::datapath::{
    AppRule, ConnPolicy, Policy,
    frames::{Frame, L4},
};

/// A cgroup subtree this test created; moves the process back to where it was and removes
/// the directories (deepest first) when dropped.
struct CgroupTree {
    dirs: Vec<PathBuf>,
    home: PathBuf,
}

impl CgroupTree {
    fn enter(levels: &[&str]) -> Self {
        let root = cgroup2_root();
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let home = root.join(
            text.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap()
                .trim_start_matches('/'),
        );
        let mut dirs = Vec::new();
        let mut dir = root.join(format!("tunnel-test-{}", std::process::id()));
        for level in std::iter::once("").chain(levels.iter().copied()) {
            if !level.is_empty() {
                dir = dir.join(level);
            }
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            dirs.push(dir.clone());
        }
        fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .expect("joining the test cgroup");
        CgroupTree { dirs, home }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        let _ = fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        for dir in self.dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[test]
fn deepest_cgroup_rule_wins() {
    let Some(mut dp) = load_or_skip("deepest_cgroup_rule_wins") else {
        return;
    };
    let _tree = CgroupTree::enter(&["apps", "browser"]);
    let ids = own_cgroup_ids();
    assert!(ids.len() >= 4, "test cgroup, apps, top, root: {ids:?}");
    let (browser, apps) = (ids[0], ids[1]);
    let conn = |id: u8, net: &str| ConnPolicy {
        tun_v4: Some(Ipv4Addr::new(10, 200, id, 2)),
        include: vec![net.parse().unwrap()],
        ..ConnPolicy::new(id, 100 + u32::from(id))
    };
    let mut p = Policy {
        device_conn: Some(0),
        conns: vec![
            conn(0, "10.0.0.0/8"),
            conn(1, "10.0.0.0/8"),
            conn(2, "10.0.0.0/8"),
        ],
        ..Default::default()
    };
    let frame = Frame::new(
        IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        L4::Tcp {
            sport: 1,
            dport: 2,
            flags: 0x10,
            mss: None,
        },
    )
    .build();
    let conn_of = |dp: &mut tunnel_user::Datapath| {
        let before = counters(dp);
        assert_eq!(egress(dp, &frame, 0).action, TC_ACT_REDIRECT);
        let d = counters(dp).since(&before).nonzero();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1, Reason::Tunnel);
        d[0].0.expect("a connection")
    };
    dp.apply(&p).unwrap();
    assert_eq!(conn_of(&mut dp), 0, "no rule: device-level");
    p.apps = vec![AppRule {
        cgroup_id: apps,
        conn: 1,
    }];
    dp.apply(&p).unwrap();
    assert_eq!(conn_of(&mut dp), 1, "a rule on the parent covers the child");
    p.apps.push(AppRule {
        cgroup_id: browser,
        conn: 2,
    });
    dp.apply(&p).unwrap();
    assert_eq!(conn_of(&mut dp), 2, "the deepest rule wins");
    p.apps = vec![
        AppRule {
            cgroup_id: browser,
            conn: 2,
        },
        AppRule {
            cgroup_id: *ids.last().unwrap(),
            conn: 1,
        },
    ];
    dp.apply(&p).unwrap();
    assert_eq!(conn_of(&mut dp), 2, "deeper than a rule on the root");
}
