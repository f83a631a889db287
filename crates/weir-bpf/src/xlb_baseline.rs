//! The Katran-equivalent baseline of the load balancer's cost benchmark
//! (`bpf/progs/xlb_baseline.bpf.c`, benchmark only: nothing else loads it).

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::skel::xlb_baseline::{XlbBaselineSkel, XlbBaselineSkelBuilder};
use crate::BpfError;

/// Slots of a VIP's ring in the baseline (Katran's default, and Weir's).
pub const RING_SIZE: u32 = 65_537;

/// Connections remembered, over all CPUs (Weir's `WEIR_XLB_MAX_FLOWS`).
const MAX_FLOWS: u32 = 65_536;
/// The CPUs the baseline's LRU table of tables has room for.
const MAX_CPUS: usize = 128;
/// The baseline's connection key and LRU value (`struct base_flow`, `struct base_lru`).
const FLOW_KEY_SIZE: u32 = 40;
const LRU_VALUE_SIZE: u32 = 16;

/// Loads a private copy of the baseline and hands it to `work`.
pub fn with_baseline<T>(work: impl FnOnce(&XlbBaselineSkel<'_>) -> T) -> Result<T, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let open = XlbBaselineSkelBuilder::default()
        .open(&mut storage)
        .map_err(|source| BpfError::Open { object: "xlb_baseline", source })?;
    let skel = open.load().map_err(|source| BpfError::Load { object: "xlb_baseline", source })?;
    per_cpu_lrus(&skel)?;
    Ok(work(&skel))
}

/// One LRU per CPU, each its share of the connections, in the table the
/// program finds its CPU's in (what Katran's loader does per forwarding
/// core). The table holds them; the handles here may close.
fn per_cpu_lrus(skel: &XlbBaselineSkel<'_>) -> Result<(), BpfError> {
    let map_error = |name: &'static str| crate::error::map_error(name);
    let cpus = libbpf_rs::num_possible_cpus().map_err(map_error("base_lru_mapping"))?.min(MAX_CPUS);
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    for cpu in 0..cpus as u32 {
        let lru = MapHandle::create(
            MapType::LruHash,
            Some("base_lru"),
            FLOW_KEY_SIZE,
            LRU_VALUE_SIZE,
            (MAX_FLOWS / cpus as u32).max(1_000),
            &opts,
        )
        .map_err(map_error("base_lru (inner)"))?;
        let fd = lru.as_fd().as_raw_fd() as u32;
        skel.maps
            .base_lru_mapping
            .update(&cpu.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error("base_lru_mapping"))?;
    }
    Ok(())
}

/// `stats` entries after the VIPs' (Katran's layout): LRU_MISS_CNTR.
const STATS_LRU_MISS: u32 = 64 + 1;

/// The baseline's TCP LRU misses, summed over CPUs: (SYNs, other packets).
pub fn lru_misses(skel: &XlbBaselineSkel<'_>) -> Result<(u64, u64), BpfError> {
    let per_cpu = skel
        .maps
        .base_stats
        .lookup_percpu(&STATS_LRU_MISS.to_ne_bytes(), MapFlags::ANY)
        .map_err(crate::error::map_error("base_stats"))?
        .unwrap_or_default();
    let word = |value: &[u8], at: usize| {
        value.get(at..at + 8).map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
    };
    Ok(per_cpu.iter().fold((0, 0), |(syns, misses), value| (syns + word(value, 0), misses + word(value, 8))))
}

/// The address as the datapath keys it: IPv4 in the first word, network order.
fn addr_words(address: IpAddr) -> ([u8; 16], u8) {
    let mut bytes = [0u8; 16];
    match address {
        IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            (bytes, 4)
        }
        IpAddr::V6(a) => (a.octets(), 6),
    }
}

/// Makes (`address`, `port`, `proto`) VIP number `index` of the baseline,
/// its ring spread evenly over `reals` (reals numbered from
/// `first_real`, which must leave room for them all).
pub fn add_vip(
    skel: &XlbBaselineSkel<'_>,
    index: u32,
    (address, port, proto): (IpAddr, u16, u8),
    first_real: u32,
    reals: &[IpAddr],
) -> Result<(), BpfError> {
    let map_error = |name: &'static str| crate::error::map_error(name);
    let (addr, family) = addr_words(address);
    let mut key = Vec::with_capacity(20);
    key.extend_from_slice(&addr);
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[proto, family]);
    let mut vip = index.to_ne_bytes().to_vec();
    vip.extend_from_slice(&0u32.to_ne_bytes());
    skel.maps.base_vips.update(&key, &vip, MapFlags::ANY).map_err(map_error("base_vips"))?;
    for (i, real) in reals.iter().enumerate() {
        let (addr, family) = addr_words(*real);
        let mut value = addr.to_vec();
        value.extend_from_slice(&[family, 0, 0, 0]);
        let real_index = first_real + i as u32;
        skel.maps
            .base_reals
            .update(&real_index.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(map_error("base_reals"))?;
    }
    let count = reals.len().max(1) as u32;
    let keys: Vec<u8> = (0..RING_SIZE).flat_map(|slot| (index * RING_SIZE + slot).to_ne_bytes()).collect();
    let values: Vec<u8> = (0..RING_SIZE).flat_map(|slot| (first_real + slot % count).to_ne_bytes()).collect();
    skel.maps
        .base_rings
        .update_batch(&keys, &values, RING_SIZE, MapFlags::ANY, MapFlags::ANY)
        .map_err(map_error("base_rings"))
}
