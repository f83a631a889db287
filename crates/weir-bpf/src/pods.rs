//! The pod path's endpoint table (pinned with the node datapath): which
//! addresses are pods of this node, and through which veth to reach them.

use std::net::{Ipv4Addr, Ipv6Addr};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::api::{bytes_of, endpoint_flag, pod_path};
use crate::datapath::PinLayout;
use crate::error::{map_error, percpu_u64_sum};
use crate::skel::node::types::{weir_endpoint, weir_pod_cidr, weir_pod_masq6, weir_pod_overlay, weir_pod_tunnel};
use crate::BpfError;

/// One local pod as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    /// Dual-stack: the pod's IPv6 address.
    pub address6: Option<Ipv6Addr>,
    /// The node-side end of the pod's veth.
    pub ifindex: u32,
    pub pod_mac: [u8; 6],
    pub node_mac: [u8; 6],
    /// The pod's security identity.
    pub identity: u32,
    /// The revision of its installed policy map (see `policy::PolicyMaps::install`).
    pub policy_revision: u32,
    /// The pod's network namespace by its id in the node's (the veth's
    /// peer netnsid), where flow events find the pod's sockets; None:
    /// flows from and to this pod name no process.
    pub netnsid: Option<u32>,
    /// A chained endpoint (bpf/api/endpoint.h's `WEIR_ENDPOINT_CHAINED_FLAG`):
    /// judged and reported, but forwarded by the plugin that made its veth.
    pub chained: bool,
}

#[derive(Debug)]
pub struct PodEndpoints {
    endpoints: MapHandle,
    endpoints6: MapHandle,
    paths: MapHandle,
    cidrs: MapHandle,
    tunnels: MapHandle,
    overlay: MapHandle,
    masq6: MapHandle,
}

impl PodEndpoints {
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self {
            endpoints: pins.open_map("pod_endpoints")?,
            endpoints6: pins.open_map("pod_endpoints6")?,
            paths: pins.open_map("pod_paths")?,
            cidrs: pins.open_map("pod_cidrs")?,
            tunnels: pins.open_map("pod_tunnels")?,
            overlay: pins.open_map("pod_overlay")?,
            masq6: pins.open_map("pod_masq6")?,
        })
    }

    /// Overlay mode: pods of other nodes are reached through the VXLAN
    /// device `ifindex` (collect-metadata mode), to the node holding each
    /// pod CIDR. An ifindex of 0 turns the overlay off. The tunnel table
    /// then holds exactly `tunnels`: new ones are written first, then those
    /// gone (a cluster of a mesh that left) are removed.
    pub fn set_overlay(&self, ifindex: u32, tunnels: &[((Ipv4Addr, u8), Ipv4Addr)]) -> Result<(), BpfError> {
        let mut want = Vec::new();
        for ((net, prefix), node) in tunnels {
            let key = weir_pod_cidr { prefixlen: u32::from(*prefix), addr: u32::from_ne_bytes(net.octets()) };
            let value = weir_pod_tunnel { node_addr: u32::from_ne_bytes(node.octets()) };
            self.tunnels.update(bytes_of(&key), bytes_of(&value), MapFlags::ANY).map_err(map_error("pod_tunnels"))?;
            want.push(key);
        }
        let keys: Vec<Vec<u8>> = self.tunnels.keys().collect();
        for raw in keys {
            if !want.iter().any(|k| bytes_of(k) == raw.as_slice()) {
                self.tunnels.delete(&raw).map_err(map_error("pod_tunnels"))?;
            }
        }
        let overlay = weir_pod_overlay { ifindex };
        self.overlay.update(&0u32.to_ne_bytes(), bytes_of(&overlay), MapFlags::ANY).map_err(map_error("pod_overlay"))
    }

    /// Dual-stack: the node's IPv6 address pods' IPv6 flows to the outside
    /// are masqueraded as (None: they are not).
    pub fn set_masquerade6(&self, node: Option<Ipv6Addr>) -> Result<(), BpfError> {
        let o = node.map_or([0; 16], |a| a.octets());
        let value = weir_pod_masq6 {
            node_addr: std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            }),
        };
        self.masq6.update(&0u32.to_ne_bytes(), bytes_of(&value), MapFlags::ANY).map_err(map_error("pod_masq6"))
    }

    /// The cluster's CIDRs (every node's pods and address): traffic from a
    /// local pod to anywhere else off the node is masqueraded as the node.
    pub fn set_pod_cidrs(&self, cidrs: &[(Ipv4Addr, u8)]) -> Result<(), BpfError> {
        let key = |addr: Ipv4Addr, prefixlen: u8| weir_pod_cidr {
            prefixlen: u32::from(prefixlen),
            addr: u32::from_ne_bytes(addr.octets()),
        };
        let want: Vec<weir_pod_cidr> = cidrs.iter().map(|(a, p)| key(*a, *p)).collect();
        for k in &want {
            self.cidrs.update(bytes_of(k), &[1u8], MapFlags::ANY).map_err(map_error("pod_cidrs"))?;
        }
        let keys: Vec<Vec<u8>> = self.cidrs.keys().collect();
        for raw in keys {
            if !want.iter().any(|k| bytes_of(k) == raw.as_slice()) {
                self.cidrs.delete(&raw).map_err(map_error("pod_cidrs"))?;
            }
        }
        Ok(())
    }

    /// Makes the tables (by IPv4 and by IPv6 address) hold exactly
    /// `endpoints`: new and changed ones are written first, then those gone
    /// are removed. Returns the writes.
    pub fn replace(&self, endpoints: &[Endpoint]) -> Result<usize, BpfError> {
        let mut writes = 0;
        let (mut keep4, mut keep6) = (Vec::new(), Vec::new());
        for e in endpoints {
            let pod_key = u32::from_ne_bytes(e.address.octets());
            let value = weir_endpoint {
                ifindex: e.ifindex,
                pod_mac: e.pod_mac,
                node_mac: e.node_mac,
                identity: e.identity,
                policy_revision: e.policy_revision,
                pod_key,
                netnsid_plus_one: e.netnsid.map_or(0, |id| id.saturating_add(1)),
                flags: if e.chained { endpoint_flag::CHAINED } else { 0 },
            };
            let key4 = pod_key.to_ne_bytes().to_vec();
            self.endpoints.update(&key4, bytes_of(&value), MapFlags::ANY).map_err(map_error("pod_endpoints"))?;
            keep4.push(key4);
            writes += 1;
            if let Some(v6) = e.address6 {
                let key6 = v6.octets().to_vec();
                self.endpoints6.update(&key6, bytes_of(&value), MapFlags::ANY).map_err(map_error("pod_endpoints6"))?;
                keep6.push(key6);
                writes += 1;
            }
        }
        for (map, keep, name) in
            [(&self.endpoints, &keep4, "pod_endpoints"), (&self.endpoints6, &keep6, "pod_endpoints6")]
        {
            let stale: Vec<Vec<u8>> = map.keys().filter(|k| !keep.contains(k)).collect();
            for key in stale {
                map.delete(&key).map_err(map_error(name))?;
                writes += 1;
            }
        }
        Ok(writes)
    }

    /// The highest policy revision the table names (0: none), so a restarted
    /// agent numbers its revisions above every one the kernel still holds.
    pub fn max_policy_revision(&self) -> u32 {
        self.endpoints
            .keys()
            .filter_map(|k| self.endpoints.lookup(&k, MapFlags::ANY).ok().flatten())
            .filter_map(|v| crate::api::read_pod::<weir_endpoint>(&v))
            .map(|e| e.policy_revision)
            .max()
            .unwrap_or(0)
    }

    /// Packets by pod path (registry name, count), summed over CPUs.
    pub fn paths(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        pod_path::ALL
            .iter()
            .map(|(code, name, _)| Ok((*name, percpu_u64_sum(&self.paths, *code, "pod_paths")?)))
            .collect()
    }
}
