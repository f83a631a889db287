//! The XDP L4 load balancer in the kernel (bpf/progs/xlb.bpf.c): its maps
//! written from a weir-lb plan's changes — map updates only, never a
//! reload — and read back as counters; private copies for fixtures and
//! simulation; the real servers' decapsulation program (xlb_decap.bpf.c).

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use weir_lb::plan::{Changes, KernelConfig, KernelState, VipEntry};
use weir_lb::spec::{RealKey, VipKey};
use weir_lb::RING_SIZE;

use crate::api::{address_of_words, bytes_of, read_pod, words_of_address, Counter};
use crate::datapath::{
    attach_tc, attach_xdp, ensure_dir, ifindex, pin_maps_and_programs, read_counters, reuse_pinned_maps, Attachment,
    Hook, PinLayout,
};
use crate::error::map_error;
use crate::skel::xlb::types::{
    weir_xlb_config, weir_xlb_flow, weir_xlb_real, weir_xlb_source_key, weir_xlb_vip, weir_xlb_vip_key,
};
use crate::skel::xlb::{XlbSkel, XlbSkelBuilder};
use crate::skel::xlb_decap::{XlbDecapSkel, XlbDecapSkelBuilder};
use crate::BpfError;

/// The socket mark of the agent's health probes (`xlb_probe_mark`, set
/// before load): its top 15 bits; bit 16 asks for GUE, the low 16 bits
/// name the real.
pub const PROBE_MARK: u32 = 0x5748_0000;

/// The mark that sends a probe to the real with `index`, in IPIP or GUE.
pub fn probe_mark(index: u32, gue: bool) -> u32 {
    PROBE_MARK | if gue { 1 << 16 } else { 0 } | (index & 0xFFFF)
}

fn open_xlb(storage: &mut MaybeUninit<libbpf_rs::OpenObject>) -> Result<crate::skel::xlb::OpenXlbSkel<'_>, BpfError> {
    let mut open =
        XlbSkelBuilder::default().open(storage).map_err(|source| BpfError::Open { object: "xlb", source })?;
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata.xlb_probe_mark = PROBE_MARK;
    }
    Ok(open)
}

fn wire_port(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

fn family(address: IpAddr) -> u8 {
    if address.is_ipv4() {
        4
    } else {
        6
    }
}

fn vip_key(key: &VipKey) -> weir_xlb_vip_key {
    weir_xlb_vip_key {
        addr: words_of_address(key.address),
        port: wire_port(key.port),
        proto: key.proto,
        family: family(key.address),
    }
}

fn real_value(key: &RealKey) -> weir_xlb_real {
    weir_xlb_real {
        addr: words_of_address(key.address),
        port: wire_port(key.port),
        family: family(key.address),
        ..Default::default()
    }
}

/// Deletes a key; one already gone is no error.
fn delete_quietly(map: &MapHandle, key: &[u8], name: &str) -> Result<(), BpfError> {
    match map.delete(key) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(map_error(name)(e)),
    }
}

fn source_key((vip_index, prefix, len): &weir_lb::plan::SourceKey) -> weir_xlb_source_key {
    weir_xlb_source_key { prefixlen: 32 + u32::from(*len), vip_index: *vip_index, addr: words_of_address(*prefix) }
}

fn flow_key(client: IpAddr, client_port: u16, vip: IpAddr, vip_port: u16, proto: u8) -> weir_xlb_flow {
    weir_xlb_flow {
        src: words_of_address(client),
        dst: words_of_address(vip),
        sport: wire_port(client_port),
        dport: wire_port(vip_port),
        proto,
        family: family(vip),
        ..Default::default()
    }
}

/// The load balancer's maps, of a private copy or opened from pins.
#[derive(Debug)]
pub struct XlbMaps {
    vips: MapHandle,
    rings: MapHandle,
    reals: MapHandle,
    config: MapHandle,
    flows: MapHandle,
    vip_stats: MapHandle,
    real_stats: MapHandle,
    counters: MapHandle,
    drops: MapHandle,
    source_routes: MapHandle,
    quic_servers: MapHandle,
}

impl XlbMaps {
    /// The maps of a loaded skeleton.
    pub fn of(skel: &XlbSkel<'_>) -> Result<Self, BpfError> {
        let handle = |map, name| MapHandle::try_from(map).map_err(map_error(name));
        let m = &skel.maps;
        Ok(Self {
            vips: handle(&m.xlb_vips, "xlb_vips")?,
            rings: handle(&m.xlb_rings, "xlb_rings")?,
            reals: handle(&m.xlb_reals, "xlb_reals")?,
            config: handle(&m.xlb_config, "xlb_config")?,
            flows: handle(&m.xlb_flows, "xlb_flows")?,
            vip_stats: handle(&m.xlb_vip_stats, "xlb_vip_stats")?,
            real_stats: handle(&m.xlb_real_stats, "xlb_real_stats")?,
            counters: handle(&m.xlb_counters, "xlb_counters")?,
            drops: handle(&m.xlb_drops, "xlb_drops")?,
            source_routes: handle(&m.xlb_source_routes, "xlb_source_routes")?,
            quic_servers: handle(&m.xlb_quic_servers, "xlb_quic_servers")?,
        })
    }

    /// The maps pinned in `dir` (one file per map, by its name in the object).
    pub fn open(dir: &Path) -> Result<Self, BpfError> {
        let open = |name: &str| {
            let path = dir.join(name);
            MapHandle::from_pinned_path(&path).map_err(|source| BpfError::OpenPinned { path, source })
        };
        Ok(Self {
            vips: open("xlb_vips")?,
            rings: open("xlb_rings")?,
            reals: open("xlb_reals")?,
            config: open("xlb_config")?,
            flows: open("xlb_flows")?,
            vip_stats: open("xlb_vip_stats")?,
            real_stats: open("xlb_real_stats")?,
            counters: open("xlb_counters")?,
            drops: open("xlb_drops")?,
            source_routes: open("xlb_source_routes")?,
            quic_servers: open("xlb_quic_servers")?,
        })
    }

    /// Applies a plan's changes in the order [`Changes`] gives.
    pub fn apply(&self, changes: &Changes) -> Result<(), BpfError> {
        if let Some(config) = &changes.config {
            self.write_config(config)?;
        }
        for key in &changes.vips_deleted {
            delete_quietly(&self.vips, bytes_of(&vip_key(key)), "xlb_vips")?;
        }
        for (index, real) in &changes.reals_written {
            self.reals
                .update(&index.to_ne_bytes(), bytes_of(&real_value(real)), MapFlags::ANY)
                .map_err(map_error("xlb_reals"))?;
        }
        for (index, ring) in &changes.rings_written {
            self.write_ring(*index, ring)?;
        }
        for (index, slots) in &changes.ring_slots_written {
            self.write_ring_slots(*index, slots)?;
        }
        if changes.source_routes_reset {
            for raw in self.source_routes.keys().collect::<Vec<_>>() {
                delete_quietly(&self.source_routes, &raw, "xlb_source_routes")?;
            }
        }
        if changes.quic_reset {
            for raw in self.quic_servers.keys().collect::<Vec<_>>() {
                delete_quietly(&self.quic_servers, &raw, "xlb_quic_servers")?;
            }
        }
        for (id, real) in &changes.quic_written {
            self.quic_servers
                .update(&id.to_ne_bytes(), &real.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_error("xlb_quic_servers"))?;
        }
        for (key, real) in &changes.source_routes_written {
            self.source_routes
                .update(bytes_of(&source_key(key)), &real.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_error("xlb_source_routes"))?;
        }
        for (key, entry) in &changes.vips_written {
            self.write_vip(key, entry)?;
        }
        for key in &changes.source_routes_deleted {
            delete_quietly(&self.source_routes, bytes_of(&source_key(key)), "xlb_source_routes")?;
        }
        for id in &changes.quic_deleted {
            delete_quietly(&self.quic_servers, &id.to_ne_bytes(), "xlb_quic_servers")?;
        }
        for index in &changes.reals_cleared {
            self.reals
                .update(&index.to_ne_bytes(), bytes_of(&weir_xlb_real::default()), MapFlags::ANY)
                .map_err(map_error("xlb_reals"))?;
        }
        Ok(())
    }

    fn write_config(&self, config: &KernelConfig) -> Result<(), BpfError> {
        let value = weir_xlb_config {
            gateway_mac: config.gateway_mac,
            next_hop: config.next_hop.code(),
            encap_src4: u32::from_ne_bytes(config.encap_source4.octets()),
            encap_src6: words_of_address(IpAddr::V6(config.encap_source6)),
            nat_enabled: u32::from(config.nat_enabled),
            flood_limit: config.flood_limit,
            any_port_vips: u32::from(config.any_port_vips),
        };
        self.config.update(&0u32.to_ne_bytes(), bytes_of(&value), MapFlags::ANY).map_err(map_error("xlb_config"))
    }

    /// One VIP's ring, in one batch.
    fn write_ring(&self, vip_index: u32, ring: &[u32]) -> Result<(), BpfError> {
        if ring.len() != RING_SIZE {
            return Err(BpfError::Xlb(format!("a ring has {RING_SIZE} slots, not {}", ring.len())));
        }
        let base = vip_index * RING_SIZE as u32;
        let keys: Vec<u8> = (0..RING_SIZE as u32).flat_map(|i| (base + i).to_ne_bytes()).collect();
        let values: Vec<u8> = ring.iter().flat_map(|r| r.to_ne_bytes()).collect();
        self.rings
            .update_batch(&keys, &values, RING_SIZE as u32, MapFlags::ANY, MapFlags::ANY)
            .map_err(map_error("xlb_rings"))
    }

    /// Rewrites the given (slot, real) of VIP `vip_index`'s ring, in one batch.
    fn write_ring_slots(&self, vip_index: u32, slots: &[(u32, u32)]) -> Result<(), BpfError> {
        if let Some((slot, _)) = slots.iter().find(|(slot, _)| *slot as usize >= RING_SIZE) {
            return Err(BpfError::Xlb(format!("ring slot {slot} is past the ring's {RING_SIZE} slots")));
        }
        if slots.is_empty() {
            return Ok(());
        }
        let base = vip_index * RING_SIZE as u32;
        let keys: Vec<u8> = slots.iter().flat_map(|(slot, _)| (base + slot).to_ne_bytes()).collect();
        let values: Vec<u8> = slots.iter().flat_map(|(_, real)| real.to_ne_bytes()).collect();
        self.rings
            .update_batch(&keys, &values, slots.len() as u32, MapFlags::ANY, MapFlags::ANY)
            .map_err(map_error("xlb_rings"))
    }

    fn write_vip(&self, key: &VipKey, entry: &VipEntry) -> Result<(), BpfError> {
        let value =
            weir_xlb_vip { index: entry.index, flags: entry.flags, forwarding: entry.forwarding, ..Default::default() };
        self.vips.update(bytes_of(&vip_key(key)), bytes_of(&value), MapFlags::ANY).map_err(map_error("xlb_vips"))
    }

    /// The VIP entries and reals the kernel holds (rings are not read back).
    pub fn kernel_state(&self) -> Result<KernelState, BpfError> {
        let mut state = KernelState::default();
        for raw in self.vips.keys() {
            let (Some(key), Some(value)) = (
                read_pod::<weir_xlb_vip_key>(&raw),
                self.vips
                    .lookup(&raw, MapFlags::ANY)
                    .map_err(map_error("xlb_vips"))?
                    .and_then(|v| read_pod::<weir_xlb_vip>(&v)),
            ) else {
                continue;
            };
            let key = VipKey {
                address: address_of_words(key.family, key.addr),
                port: u16::from_be_bytes(key.port.to_ne_bytes()),
                proto: key.proto,
            };
            state.vips.insert(key, VipEntry { index: value.index, flags: value.flags, forwarding: value.forwarding });
        }
        for index in 1..weir_lb::MAX_REALS as u32 {
            let raw = self.reals.lookup(&index.to_ne_bytes(), MapFlags::ANY).map_err(map_error("xlb_reals"))?;
            let Some(real) = raw.and_then(|v| read_pod::<weir_xlb_real>(&v)) else { continue };
            if real.family == 0 {
                continue;
            }
            let key = RealKey {
                address: address_of_words(real.family, real.addr),
                port: u16::from_be_bytes(real.port.to_ne_bytes()),
            };
            state.reals.insert(index, key);
        }
        Ok(state)
    }

    /// The program's counters, in registry order (`api::xlb_counter`).
    pub fn counters(&self) -> Result<Vec<Counter>, BpfError> {
        read_counters(&self.counters, 0..crate::api::xlb_counter::COUNT)
    }

    /// Traffic of the VIP with `index`.
    pub fn vip_traffic(&self, index: u32) -> Result<Counter, BpfError> {
        Ok(read_counters(&self.vip_stats, [index])?.pop().unwrap_or_default())
    }

    /// Traffic sent to the real with `index`.
    pub fn real_traffic(&self, index: u32) -> Result<Counter, BpfError> {
        Ok(read_counters(&self.real_stats, [index])?.pop().unwrap_or_default())
    }

    /// Drops by reason code, the non-zero ones.
    pub fn drops(&self) -> Result<Vec<(u32, Counter)>, BpfError> {
        let all = read_counters(&self.drops, 0..crate::api::drop_reason::COUNT)?;
        Ok(all.into_iter().enumerate().filter(|(_, c)| c.packets > 0).map(|(i, c)| (i as u32, c)).collect())
    }

    /// Puts a connection in the table: a private copy simulating what the
    /// live one holds.
    #[allow(clippy::too_many_arguments, reason = "a flow's five parts and its destination")]
    pub fn remember(
        &self,
        client: IpAddr,
        client_port: u16,
        vip: IpAddr,
        vip_port: u16,
        proto: u8,
        real: u32,
        vip_index: u32,
    ) -> Result<(), BpfError> {
        let flow = flow_key(client, client_port, vip, vip_port, proto);
        let conn = crate::skel::xlb::types::weir_xlb_conn { real, vip: vip_index };
        self.flows.update(bytes_of(&flow), bytes_of(&conn), MapFlags::ANY).map_err(map_error("xlb_flows"))
    }

    /// The real index the connection table holds for a client's packet, if any.
    pub fn connection(&self, client: IpAddr, client_port: u16, vip: IpAddr, vip_port: u16, proto: u8) -> Option<u32> {
        let flow = flow_key(client, client_port, vip, vip_port, proto);
        let value = self.flows.lookup(bytes_of(&flow), MapFlags::ANY).ok()??;
        Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
    }
}

/// The load balancer's pins below an agent's pin directory (its own
/// `maps/`, `progs/` and `links/`, apart from the node datapath's).
pub fn pin_layout(agent_pin_dir: &Path) -> PinLayout {
    PinLayout::new(agent_pin_dir.join("xlb"))
}

/// Loads the load balancer with its maps pinned (reusing pins a previous
/// agent left, so connections and counters carry over) and attaches it at
/// XDP on `interface` through a pinned link, updated in place when one
/// exists: traffic never goes unbalanced across an agent restart. The
/// health probes' encapsulation goes on the same interface's tc egress.
pub fn establish(pins: &PinLayout, interface: &str) -> Result<Attachment, BpfError> {
    for dir in [pins.maps(), pins.progs(), pins.links()] {
        ensure_dir(&dir)?;
    }
    let mut storage = MaybeUninit::uninit();
    let mut open = open_xlb(&mut storage)?;
    let reused = reuse_pinned_maps(open.open_object_mut(), pins)?;
    let mut skel = open.load().map_err(|source| BpfError::Load { object: "xlb", source })?;
    pin_maps_and_programs(skel.object_mut(), pins, &reused)?;
    let index = ifindex(interface)?;
    // Health probes leave through the same interface, encapsulated on the way out.
    attach_tc(pins, &skel.progs.weir_xlb_probe, Hook::TcEgress, interface, index, false)?;
    attach_xdp(pins, &skel.progs.weir_xlb, interface, index, false)
}

/// Attaches the real servers' decapsulation at tc ingress of `interface`
/// (tcx where the kernel has it, in front of other programs), pinned like
/// the load balancer. Without tcx it takes Weir's clsact filter slot, so
/// there it cannot share an interface with the node datapath.
pub fn establish_decap(pins: &PinLayout, interface: &str) -> Result<Attachment, BpfError> {
    for dir in [pins.maps(), pins.progs(), pins.links()] {
        ensure_dir(&dir)?;
    }
    let mut storage = MaybeUninit::uninit();
    let mut open = XlbDecapSkelBuilder::default()
        .open(&mut storage)
        .map_err(|source| BpfError::Open { object: "xlb_decap", source })?;
    let reused = reuse_pinned_maps(open.open_object_mut(), pins)?;
    let mut skel = open.load().map_err(|source| BpfError::Load { object: "xlb_decap", source })?;
    pin_maps_and_programs(skel.object_mut(), pins, &reused)?;
    let index = ifindex(interface)?;
    // First, so the node datapath behind it sees the client's packet.
    attach_tc(pins, &skel.progs.weir_xlb_decap, Hook::TcIngress, interface, index, true)
}

/// Packets the real's decapsulation stripped, and those it could not, from the pins.
pub fn decap_counters(pins: &PinLayout) -> Result<(Counter, Counter), BpfError> {
    let done = read_counters(&pins.open_map("xlb_decapsulated")?, [0])?.pop().unwrap_or_default();
    let failed = read_counters(&pins.open_map("xlb_decap_drops")?, [crate::api::drop_reason::XLB_DECAP_FAILED])?
        .pop()
        .unwrap_or_default();
    Ok((done, failed))
}

/// Loads a private copy of the load balancer (nothing pinned or attached)
/// and hands it to `work`: fixtures, simulation, benchmarks.
pub fn with_private<T>(work: impl FnOnce(&XlbSkel<'_>, &XlbMaps) -> T) -> Result<T, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let open = open_xlb(&mut storage)?;
    let skel = open.load().map_err(|source| BpfError::Load { object: "xlb", source })?;
    let maps = XlbMaps::of(&skel)?;
    Ok(work(&skel, &maps))
}

/// Loads a private copy of the real servers' decapsulation program.
pub fn with_private_decap<T>(work: impl FnOnce(&XlbDecapSkel<'_>) -> T) -> Result<T, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let open = XlbDecapSkelBuilder::default()
        .open(&mut storage)
        .map_err(|source| BpfError::Open { object: "xlb_decap", source })?;
    let skel = open.load().map_err(|source| BpfError::Load { object: "xlb_decap", source })?;
    Ok(work(&skel))
}
