//! Typed handles over every map of the eBPF object, and the atomic policy swap on top of them:
//! write the inactive slot, flip [`tunnel_common::maps::ACTIVE_SLOT`], wait for an RCU grace
//! period, clear the old slot and the fragment verdicts given under it. A failure while writing removes what was written and leaves the
//! active slot untouched, so a policy is applied whole or not at all.

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::Key,
    },
};
use tunnel_common::{
    AppKey, CONN_NONE, ConnConfig, Counter, FlowKey, FlowValue, FragKey, FragVerdict,
    MAX_FRAG_DATAGRAMS, NUM_REASONS, POLICY_SLOTS, PortalException, ROUTE_KEY_PREFIX_BITS, Reason,
    RouteKeyV4, RouteKeyV6, SlotConfig, UplinkCounters, conn_index, counter_index, maps as names,
    udp_port_word,
};

use super::{
    DatapathError,
    barrier::RcuBarrier,
    compile::{CompiledPolicy, RouteEntry, words},
};

/// Every map, typed.
pub struct Maps {
    active_slot: Array<MapData, u32>,
    slot_config: Array<MapData, SlotConfig>,
    conn_config: Array<MapData, ConnConfig>,
    routes_v4: LpmTrie<MapData, RouteKeyV4, u32>,
    routes_v6: LpmTrie<MapData, RouteKeyV6, u32>,
    apps: HashMap<MapData, AppKey, u32>,
    udp_ports: Array<MapData, u64>,
    tun_ifaces: HashMap<MapData, u32, u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    frags: HashMap<MapData, FragKey, FragVerdict>,
    counters: PerCpuArray<MapData, Counter>,
    uplink_counters: PerCpuHashMap<MapData, u32, UplinkCounters>,
    portal: Array<MapData, PortalException>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DatapathError::MissingMap { name })?;
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Maps {
            active_slot: take(ebpf, names::ACTIVE_SLOT)?,
            slot_config: take(ebpf, names::SLOT_CONFIG)?,
            conn_config: take(ebpf, names::CONN_CONFIG)?,
            routes_v4: take(ebpf, names::ROUTES_V4)?,
            routes_v6: take(ebpf, names::ROUTES_V6)?,
            apps: take(ebpf, names::APPS)?,
            udp_ports: take(ebpf, names::UDP_PORTS)?,
            tun_ifaces: take(ebpf, names::TUN_IFACES)?,
            flows: take(ebpf, names::FLOWS)?,
            frags: take(ebpf, names::FRAGS)?,
            counters: take(ebpf, names::COUNTERS)?,
            uplink_counters: take(ebpf, names::UPLINK_COUNTERS)?,
            portal: take(ebpf, names::PORTAL)?,
        })
    }

    /// Sets the captive portal exception (a cgroup of 0: none).
    pub fn set_portal(&mut self, exception: PortalException) -> Result<(), DatapathError> {
        self.portal
            .set(0, exception, 0)
            .map_err(map_err(names::PORTAL))
    }

    /// The slot the programs currently read.
    pub fn active_slot(&self) -> Result<u32, DatapathError> {
        self.active_slot
            .get(&0, 0)
            .map(|s| s & 1)
            .map_err(map_err(names::ACTIVE_SLOT))
    }

    fn write_slot(&mut self, slot: u32, p: &CompiledPolicy) -> Result<(), DatapathError> {
        for e in &p.routes_v4 {
            self.routes_v4
                .insert(&route_key_v4(slot, e), e.kind, 0)
                .map_err(map_err(names::ROUTES_V4))?;
        }
        for e in &p.routes_v6 {
            self.routes_v6
                .insert(&route_key_v6(slot, e), e.kind, 0)
                .map_err(map_err(names::ROUTES_V6))?;
        }
        for &(cgroup_id, conn) in &p.apps {
            self.apps
                .insert(
                    AppKey {
                        cgroup_id,
                        slot,
                        _pad: 0,
                    },
                    conn,
                    0,
                )
                .map_err(map_err(names::APPS))?;
        }
        for &(conn, word, bits) in &p.udp_words {
            let index = udp_port_word(slot, u32::from(conn), 0) + word;
            self.udp_ports
                .set(index, bits, 0)
                .map_err(map_err(names::UDP_PORTS))?;
        }
        for (conn, cfg) in &p.conns {
            self.conn_config
                .set(conn_index(slot, u32::from(*conn)), cfg, 0)
                .map_err(map_err(names::CONN_CONFIG))?;
        }
        let cfg = SlotConfig {
            flags: p.slot_flags,
            device_conn: p.device_conn,
        };
        self.slot_config
            .set(slot, cfg, 0)
            .map_err(map_err(names::SLOT_CONFIG))
    }

    /// Removes `policy`'s entries from `slot`. Keeps going after an error and reports the
    /// first, so one bad entry does not leave the rest behind.
    fn clear_slot(&mut self, slot: u32, p: &CompiledPolicy) -> Result<(), DatapathError> {
        let mut first = Ok(());
        let mut note = |r: Result<(), DatapathError>| {
            if first.is_ok() {
                first = r;
            }
        };
        let absent_ok = |r: Result<(), MapError>, name| match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DatapathError::Map { name, source }),
        };
        note(
            self.slot_config
                .set(
                    slot,
                    SlotConfig {
                        flags: 0,
                        device_conn: CONN_NONE,
                    },
                    0,
                )
                .map_err(map_err(names::SLOT_CONFIG)),
        );
        for (conn, _) in &p.conns {
            note(
                self.conn_config
                    .set(conn_index(slot, u32::from(*conn)), ConnConfig::default(), 0)
                    .map_err(map_err(names::CONN_CONFIG)),
            );
        }
        for &(conn, word, _) in &p.udp_words {
            let index = udp_port_word(slot, u32::from(conn), 0) + word;
            note(
                self.udp_ports
                    .set(index, 0, 0)
                    .map_err(map_err(names::UDP_PORTS)),
            );
        }
        for &(cgroup_id, _) in &p.apps {
            let r = self.apps.remove(&AppKey {
                cgroup_id,
                slot,
                _pad: 0,
            });
            note(absent_ok(r, names::APPS));
        }
        for e in &p.routes_v6 {
            let r = self.routes_v6.remove(&route_key_v6(slot, e));
            note(absent_ok(r, names::ROUTES_V6));
        }
        for e in &p.routes_v4 {
            let r = self.routes_v4.remove(&route_key_v4(slot, e));
            note(absent_ok(r, names::ROUTES_V4));
        }
        first
    }

    /// Swaps `next` in atomically (see the module docs). `current` is what the active slot
    /// holds now (None if nothing was applied yet); returns the slot now active.
    pub fn swap(
        &mut self,
        barrier: &RcuBarrier,
        current: Option<&CompiledPolicy>,
        next: &CompiledPolicy,
    ) -> Result<u32, DatapathError> {
        let old = self.active_slot()?;
        let new = (old + 1) % POLICY_SLOTS;
        let prepared = self.write_slot(new, next).and_then(|()| {
            // TUN devices of the new policy must be known before its first packet. (A device
            // that moves to another connection id is seen with the new id by programs still
            // on the old slot for at most one grace period; such packets count as no-flow.)
            for &(ifindex, conn) in &next.tun_ifaces {
                self.tun_ifaces
                    .insert(ifindex, conn, 0)
                    .map_err(map_err(names::TUN_IFACES))?;
            }
            self.active_slot
                .set(0, new, 0)
                .map_err(map_err(names::ACTIVE_SLOT))
        });
        if let Err(e) = prepared {
            // Nothing reads the inactive slot; remove what was written so it starts empty
            // next time. The error that stopped us is the one worth reporting.
            let _ = self.clear_slot(new, next);
            return Err(e);
        }
        barrier
            .wait()
            .map_err(|source| DatapathError::Barrier { source })?;
        // From here on no program reads the old slot.
        if let Some(current) = current {
            for &(ifindex, _) in &current.tun_ifaces {
                if !next.tun_ifaces.iter().any(|(i, _)| *i == ifindex) {
                    let r = self.tun_ifaces.remove(&ifindex);
                    if !matches!(r, Ok(()) | Err(MapError::KeyNotFound)) {
                        r.map_err(map_err(names::TUN_IFACES))?;
                    }
                }
            }
            self.clear_slot(old, current)?;
        }
        self.retire_frags(old)?;
        Ok(new)
    }

    /// Removes the fragment verdicts given under `slot`'s policy. Called once no program
    /// reads that slot any more, so none can be added behind it: a later fragment never
    /// follows a verdict of a retired policy (lock-down turned on, a connection gone).
    fn retire_frags(&mut self, slot: u32) -> Result<(), DatapathError> {
        let stale: Vec<FragKey> = self
            .frags
            .keys()
            // A key removed under the walk restarts it from the first; the bound keeps
            // that from going on while the programs churn the table.
            .take(2 * MAX_FRAG_DATAGRAMS as usize)
            .filter_map(Result::ok)
            .filter(|k| u32::from(k.slot) == slot)
            .collect();
        for key in stale {
            match self.frags.remove(&key) {
                // The LRU may have evicted it, or its last fragment taken it out, meanwhile.
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DatapathError::Map {
                        name: names::FRAGS,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Sums the per-CPU counters into a table.
    pub fn counters(&self) -> Result<CounterTable, DatapathError> {
        let mut rows = Vec::with_capacity(tunnel_common::MAX_CONNS as usize + 1);
        for conn in 0..=CONN_NONE {
            let mut row = [Counter::default(); NUM_REASONS as usize];
            for reason in Reason::ALL {
                let values = self
                    .counters
                    .get(&counter_index(conn, reason), 0)
                    .map_err(map_err(names::COUNTERS))?;
                let cell = &mut row[reason as usize];
                for v in values.iter() {
                    *cell += *v;
                }
            }
            rows.push(row);
        }
        Ok(CounterTable { rows })
    }

    /// Starts counting for the uplink `ifindex` from zero (the programs only count into rows
    /// that exist).
    pub fn open_uplink_row(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
            name: names::UPLINK_COUNTERS,
            source: MapError::IoError(e),
        })?;
        let zero = PerCpuValues::try_from(vec![UplinkCounters::default(); cpus]).map_err(|e| {
            DatapathError::Map {
                name: names::UPLINK_COUNTERS,
                source: MapError::IoError(e),
            }
        })?;
        self.uplink_counters
            .insert(ifindex, zero, 0)
            .map_err(map_err(names::UPLINK_COUNTERS))
    }

    /// Stops counting for the uplink `ifindex` and forgets its figures.
    pub fn close_uplink_row(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        match self.uplink_counters.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DatapathError::Map {
                name: names::UPLINK_COUNTERS,
                source,
            }),
        }
    }

    /// Each counted uplink's row, summed over CPUs, by ifindex.
    pub fn uplink_counters(&self) -> Result<Vec<(u32, UplinkRow)>, DatapathError> {
        let mut rows = Vec::new();
        for entry in self.uplink_counters.iter() {
            let (ifindex, per_cpu) = entry.map_err(map_err(names::UPLINK_COUNTERS))?;
            let mut row = [Counter::default(); NUM_REASONS as usize];
            for cpu in per_cpu.iter() {
                for (sum, c) in row.iter_mut().zip(&cpu.cells) {
                    *sum += *c;
                }
            }
            rows.push((ifindex, row));
        }
        rows.sort_by_key(|(i, _)| *i);
        Ok(rows)
    }

    /// Number of entries in the NAT flow table.
    pub fn flow_count(&self) -> usize {
        self.flows.keys().filter(Result::is_ok).count()
    }

    /// Fragmented datagrams whose first fragment's verdict is kept for the rest.
    pub fn frag_count(&self) -> usize {
        self.frags.keys().filter(Result::is_ok).count()
    }
}

fn route_key_v4(slot: u32, e: &RouteEntry<4>) -> Key<RouteKeyV4> {
    let addr = u32::from_ne_bytes(e.addr);
    let data = RouteKeyV4 {
        slot: slot as u8,
        conn: e.conn,
        _pad: [0; 2],
        addr,
    };
    Key::new(ROUTE_KEY_PREFIX_BITS + u32::from(e.prefix_len), data)
}

fn route_key_v6(slot: u32, e: &RouteEntry<16>) -> Key<RouteKeyV6> {
    let data = RouteKeyV6 {
        slot: slot as u8,
        conn: e.conn,
        _pad: [0; 2],
        addr: words(e.addr),
    };
    Key::new(ROUTE_KEY_PREFIX_BITS + u32::from(e.prefix_len), data)
}

/// One uplink's counters summed over CPUs, a cell per [`Reason`].
pub type UplinkRow = [Counter; NUM_REASONS as usize];

/// Packet and byte counters summed over CPUs: a row per connection, then the "no connection"
/// row; a column per [`Reason`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterTable {
    rows: Vec<[Counter; NUM_REASONS as usize]>,
}

impl CounterTable {
    /// The counter for `conn` (or [`CONN_NONE`]) and `reason`.
    pub fn get(&self, conn: u32, reason: Reason) -> Counter {
        self.rows
            .get(conn as usize)
            .map(|row| row[reason as usize])
            .unwrap_or_default()
    }

    /// Packets counted for `reason` over all connections.
    pub fn packets(&self, reason: Reason) -> u64 {
        self.rows
            .iter()
            .map(|row| row[reason as usize].packets)
            .sum()
    }

    /// What changed since `earlier`.
    pub fn since(&self, earlier: &CounterTable) -> CounterTable {
        let rows = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let mut out = *row;
                if let Some(old) = earlier.rows.get(i) {
                    for (cell, old) in out.iter_mut().zip(old) {
                        cell.packets -= old.packets;
                        cell.bytes -= old.bytes;
                    }
                }
                out
            })
            .collect();
        CounterTable { rows }
    }

    /// Non-zero cells as (connection, reason, counter); connection is None for the
    /// "no connection" row.
    pub fn nonzero(&self) -> Vec<(Option<u32>, Reason, Counter)> {
        let mut out = Vec::new();
        for (conn, row) in self.rows.iter().enumerate() {
            for reason in Reason::ALL {
                let c = row[reason as usize];
                if c.packets != 0 {
                    let conn = (conn as u32 != CONN_NONE).then_some(conn as u32);
                    out.push((conn, reason, c));
                }
            }
        }
        out
    }
}

impl std::fmt::Display for CounterTable {
    /// One line per non-zero cell: connection, reason, packets, bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<6} {:<22} {:>10} {:>14}",
            "conn", "reason", "packets", "bytes"
        )?;
        for (conn, reason, c) in self.nonzero() {
            let conn = conn.map_or_else(|| "-".to_string(), |c| c.to_string());
            writeln!(
                f,
                "{conn:<6} {:<22} {:>10} {:>14}",
                reason.name(),
                c.packets,
                c.bytes
            )?;
        }
        Ok(())
    }
}

/// Per-uplink counters summed over CPUs: a row per attached uplink (name and ifindex), a
/// column per [`Reason`]. Every connection's packets together; the uplink programs count
/// here as well as in the [`CounterTable`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkCounterTable {
    pub rows: Vec<(String, u32, UplinkRow)>,
}

impl UplinkCounterTable {
    /// The counter for the uplink named `uplink` and `reason` (zero if it is not attached).
    pub fn get(&self, uplink: &str, reason: Reason) -> Counter {
        self.rows
            .iter()
            .find(|(name, _, _)| name == uplink)
            .map(|(_, _, row)| row[reason as usize])
            .unwrap_or_default()
    }

    /// Non-zero cells as (uplink, ifindex, reason, counter).
    pub fn nonzero(&self) -> Vec<(&str, u32, Reason, Counter)> {
        let mut out = Vec::new();
        for (name, ifindex, row) in &self.rows {
            for reason in Reason::ALL {
                let c = row[reason as usize];
                if c.packets != 0 {
                    out.push((name.as_str(), *ifindex, reason, c));
                }
            }
        }
        out
    }
}

impl std::fmt::Display for UplinkCounterTable {
    /// One line per non-zero cell: uplink, ifindex, reason, packets, bytes; an uplink with
    /// nothing counted yet gets one line with `-` for the reason, so every attached uplink
    /// is listed. Five columns, so a line is never mistaken for one of the connection table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<15} {:>7} {:<22} {:>10} {:>14}",
            "uplink", "ifindex", "reason", "packets", "bytes"
        )?;
        for (name, ifindex, row) in &self.rows {
            let mut any = false;
            for reason in Reason::ALL {
                let c = row[reason as usize];
                if c.packets != 0 {
                    any = true;
                    writeln!(
                        f,
                        "{name:<15} {ifindex:>7} {:<22} {:>10} {:>14}",
                        reason.name(),
                        c.packets,
                        c.bytes
                    )?;
                }
            }
            if !any {
                writeln!(f, "{name:<15} {ifindex:>7} {:<22} {:>10} {:>14}", "-", 0, 0)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uplink_table_lists_every_uplink_and_only_counted_cells() {
        let mut busy = [Counter::default(); NUM_REASONS as usize];
        busy[Reason::Tunnel as usize] = Counter {
            packets: 3,
            bytes: 300,
        };
        busy[Reason::DropLockdown as usize] = Counter {
            packets: 2,
            bytes: 120,
        };
        let table = UplinkCounterTable {
            rows: vec![
                ("eth0".into(), 2, busy),
                ("usb0".into(), 9, [Counter::default(); NUM_REASONS as usize]),
            ],
        };
        let shown = table.to_string();
        let lines: Vec<Vec<&str>> = shown
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            vec![
                vec!["eth0", "2", "tunnel", "3", "300"],
                vec!["eth0", "2", "drop_lockdown", "2", "120"],
                vec!["usb0", "9", "-", "0", "0"],
            ],
            "{shown}"
        );
        assert_eq!(table.get("eth0", Reason::DropLockdown).packets, 2);
        assert_eq!(table.get("usb0", Reason::Tunnel).packets, 0);
        assert_eq!(table.get("wlan0", Reason::Tunnel).packets, 0);
        assert_eq!(table.nonzero().len(), 2);
    }

    #[test]
    fn the_table_names_every_reason_it_counts() {
        let mut rows = vec![[Counter::default(); NUM_REASONS as usize]; CONN_NONE as usize + 1];
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            rows[CONN_NONE as usize][reason as usize] = Counter {
                packets: i as u64 + 1,
                bytes: 100,
            };
        }
        let table = CounterTable { rows };
        let shown = table.to_string();
        for reason in Reason::ALL {
            assert!(
                shown.contains(reason.name()),
                "{reason:?} missing:\n{shown}"
            );
            assert_eq!(table.get(CONN_NONE, reason).packets, reason as u64 + 1);
        }
        assert!(shown.contains("drop_unparsed") && shown.contains("drop_fragment"));
        assert_eq!(table.nonzero().len(), Reason::ALL.len());
    }
}
