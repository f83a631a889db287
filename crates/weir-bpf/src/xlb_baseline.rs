//! The Katran-equivalent baseline of the load balancer's cost benchmark
//! (`bpf/progs/xlb_baseline.bpf.c`, benchmark only: nothing else loads it).

use std::mem::MaybeUninit;
use std::net::IpAddr;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};

use crate::skel::xlb_baseline::{XlbBaselineSkel, XlbBaselineSkelBuilder};
use crate::BpfError;

/// Slots of a VIP's ring in the baseline (Katran's default, and Weir's).
pub const RING_SIZE: u32 = 65_537;

/// Loads a private copy of the baseline and hands it to `work`.
pub fn with_baseline<T>(work: impl FnOnce(&XlbBaselineSkel<'_>) -> T) -> Result<T, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let open = XlbBaselineSkelBuilder::default()
        .open(&mut storage)
        .map_err(|source| BpfError::Open { object: "xlb_baseline", source })?;
    let skel = open.load().map_err(|source| BpfError::Load { object: "xlb_baseline", source })?;
    Ok(work(&skel))
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
