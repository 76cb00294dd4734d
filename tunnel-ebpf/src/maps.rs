//! The maps, declared once. Layouts and names come from `tunnel_common`; the static names
//! here are the map names userspace looks up (`tunnel_common::maps`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use tunnel_common::{
    AppKey, ConnConfig, Counter, FlowKey, FlowValue, FragKey, FragVerdict, MAX_APPS, MAX_FLOWS,
    MAX_FRAG_DATAGRAMS, MAX_OWN_PEERS, MAX_ROUTES, MAX_UPLINKS, NUM_CONN_CONFIGS, NUM_COUNTERS,
    NUM_UDP_PORT_WORDS, POLICY_SLOTS, PortalException, RouteKeyV4, RouteKeyV6, SlotConfig,
    UplinkCounters,
};

use crate::log::Note;

#[map]
pub static PORTAL: Array<PortalException> = Array::with_max_entries(1, 0);

#[map]
pub static ACTIVE_SLOT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static SLOT_CONFIG: Array<SlotConfig> = Array::with_max_entries(POLICY_SLOTS, 0);

#[map]
pub static CONN_CONFIG: Array<ConnConfig> = Array::with_max_entries(NUM_CONN_CONFIGS, 0);

#[map]
pub static ROUTES_V4: LpmTrie<RouteKeyV4, u32> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

#[map]
pub static ROUTES_V6: LpmTrie<RouteKeyV6, u32> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

#[map]
pub static APPS: HashMap<AppKey, u32> = HashMap::with_max_entries(MAX_APPS, 0);

#[map]
pub static UDP_PORTS: Array<u64> = Array::with_max_entries(NUM_UDP_PORT_WORDS, 0);

#[map]
pub static TUN_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(tunnel_common::MAX_CONNS, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
pub static OWN_PEERS: LruHashMap<[u32; 4], u64> = LruHashMap::with_max_entries(MAX_OWN_PEERS, 0);

#[map]
pub static FRAGS: LruHashMap<FragKey, FragVerdict> =
    LruHashMap::with_max_entries(MAX_FRAG_DATAGRAMS, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

#[map]
pub static UPLINK_COUNTERS: PerCpuHashMap<u32, UplinkCounters> =
    PerCpuHashMap::with_max_entries(MAX_UPLINKS, 0);

/// The kernel log's note of this run's verdict (`log`); kernel-only, not part of the ABI.
#[map]
pub static NOTE: PerCpuArray<Note> = PerCpuArray::with_max_entries(1, 0);
