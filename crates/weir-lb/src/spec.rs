//! The `XdpLoadBalancer` document: one load balancer's whole configuration,
//! applied at once.
//!
//! ```yaml
//! apiVersion: weir.dev/v1alpha1
//! kind: XdpLoadBalancer
//! metadata: {name: edge}
//! spec:
//!   nextHop: Sender                      # Sender (default), Gateway or Route; see below
//!   gatewayMac: "02:00:00:00:00:01"     # Gateway only (and implies it): the MAC to send to
//!   encapsulationSource: {ipv4: 172.16.0.0, ipv6: "100::"}  # optional (these are the defaults)
//!   newConnectionsPerSecondPerCore: 125000  # the flood guard (default)
//!   vips:
//!   - name: web
//!     address: 203.0.113.10              # IPv4 or IPv6
//!     port: 80                           # 0 (or absent): any port
//!     protocol: TCP                      # TCP or UDP
//!     forwarding: IPIP                   # IPIP (default), GUE or NAT
//!     hash: ClientAddressAndPort         # or ClientAddress, DestinationPort
//!     lruBypass: false                   # every packet takes the ring
//!     local: false                       # deliver to this host's stack
//!     healthCheck: {type: HTTP, path: /healthz}  # see crate::health
//!     reals:
//!     - {address: 10.0.1.2, weight: 2}
//!     - {address: "fd00::3"}             # IPv6 reals may serve IPv4 VIPs (4in6)
//! ```
//!
//! `nextHop` says where a forwarded packet leaves:
//! - `Sender` (the default without `gatewayMac`): out of the interface it
//!   came in, back to the MAC that sent it (one-armed, behind a router);
//! - `Gateway` (the default with `gatewayMac`): out of the interface it came
//!   in, to `gatewayMac`;
//! - `Route`: the kernel's route and neighbour for each packet as it leaves
//!   (the outer destination, the NAT real, the client of a NAT reply),
//!   looked up as if forwarded from the receiving interface: out of that
//!   interface or redirected to another, to the neighbour's MAC; a next hop
//!   whose MAC is not known yet goes to the stack, which resolves it.
//!
//! Unknown fields are errors naming their path; so are IPv4-mapped IPv6
//! spellings (write IPv4 as IPv4: the kernel keys them differently), and a
//! `gatewayMac` with a `nextHop` other than `Gateway`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_spec::{err, ObjectMeta, SpecError};

use crate::hash::HashInput;
use crate::health::{HealthCheckSpec, Probe};
use crate::{MAX_REALS, MAX_VIPS};

pub const API_VERSION: &str = "weir.dev/v1alpha1";
pub const KIND: &str = "XdpLoadBalancer";
/// The largest weight of a real: weights are relative, and Maglev's turns
/// stay cheap below this.
pub const MAX_WEIGHT: u32 = 65535;

/// The document, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct XdpLoadBalancer {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: XdpLoadBalancerSpec,
    /// Output of a controller, never input: read past.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct XdpLoadBalancerSpec {
    /// Sender, Gateway or Route (default: Gateway with a gatewayMac, else Sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encapsulation_source: Option<EncapsulationSource>,
    /// The flood guard: new connections each core remembers per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_connections_per_second_per_core: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<VipSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EncapsulationSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VipSpec {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub port: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lru_bypass: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// UDP only: QUIC short headers go to the real their connection id names.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quic: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reals: Vec<RealSpec>,
    /// New connections from these client prefixes go to the named real.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_routes: Vec<SourceRouteSpec>,
    /// How each real is probed (default: TCP for a TCP VIP with a port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceRouteSpec {
    /// A client prefix, ADDRESS/LENGTH.
    pub cidr: String,
    /// The address of one of the VIP's reals.
    pub real: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RealSpec {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// NAT mode only: the port the real listens on (default: the VIP's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// QUIC VIPs: the server id this real puts in the first 16 bits of the
    /// connection ids it chooses (1-65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic_server_id: Option<u16>,
}

/// How packets reach a VIP's reals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Forwarding {
    Ipip,
    Gue,
    Nat,
}

impl Forwarding {
    /// The code of bpf/api/xlb.h's WEIR_XLB_FORWARDINGS.
    pub fn code(self) -> u32 {
        match self {
            Forwarding::Ipip => 0,
            Forwarding::Gue => 1,
            Forwarding::Nat => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Ipip => "IPIP",
            Forwarding::Gue => "GUE",
            Forwarding::Nat => "NAT",
        }
    }
}

/// Where a forwarded packet leaves (`spec.nextHop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NextHop {
    /// Out of the receiving interface, back to the sender's MAC.
    Sender,
    /// Out of the receiving interface, to `gatewayMac`.
    Gateway,
    /// Where the kernel's route and neighbour table send the packet.
    Route,
}

impl NextHop {
    /// The code of bpf/api/xlb.h's WEIR_XLB_NEXT_HOPS.
    pub fn code(self) -> u16 {
        match self {
            NextHop::Sender => 0,
            NextHop::Gateway => 1,
            NextHop::Route => 2,
        }
    }
    /// As the document spells it.
    pub fn name(self) -> &'static str {
        match self {
            NextHop::Sender => "Sender",
            NextHop::Gateway => "Gateway",
            NextHop::Route => "Route",
        }
    }
}

/// A VIP's identity in the kernel: (address, port, protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub address: IpAddr,
    /// 0: any port.
    pub port: u16,
    pub proto: u8,
}

/// A real server: its address, and in NAT mode the port it listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealKey {
    pub address: IpAddr,
    /// 0: the VIP's port (and always 0 outside NAT mode).
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Real {
    pub key: RealKey,
    pub weight: u32,
    pub quic_server_id: Option<u16>,
}

/// A validated VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub name: String,
    pub key: VipKey,
    pub forwarding: Forwarding,
    pub hash: HashInput,
    pub lru_bypass: bool,
    pub local: bool,
    pub quic: bool,
    pub reals: Vec<Real>,
    /// (client prefix, its length, the real) — longest prefix wins.
    pub source_routes: Vec<(IpAddr, u8, RealKey)>,
    /// How the agent probes each real.
    pub probe: Probe,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    pub name: String,
    pub next_hop: NextHop,
    /// Next hop Gateway's MAC; all zero otherwise.
    pub gateway_mac: [u8; 6],
    pub encap_source4: Ipv4Addr,
    pub encap_source6: Ipv6Addr,
    /// The flood guard's rate: LRU inserts per second per core.
    pub flood_limit: u32,
    /// QUIC server ids and their reals.
    pub quic_servers: std::collections::BTreeMap<u16, RealKey>,
    pub vips: Vec<Vip>,
}

/// Katran's flood guard default: 125,000 new connections per second per core.
pub const DEFAULT_FLOOD_LIMIT: u32 = 125_000;

/// The default outer source prefixes (Katran's): 172.16.0.0/16 and 100::/96.
pub const DEFAULT_ENCAP_SOURCE4: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 0);
pub const DEFAULT_ENCAP_SOURCE6: Ipv6Addr = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0);

/// Parses and validates one document.
pub fn parse(yaml: &str) -> Result<LoadBalancer, SpecError> {
    let doc: XdpLoadBalancer = weir_spec::parse_yaml(yaml)?;
    validate(&doc)
}

/// Validates a parsed document; every error names its field.
pub fn validate(doc: &XdpLoadBalancer) -> Result<LoadBalancer, SpecError> {
    if doc.api_version != API_VERSION {
        return Err(err("apiVersion", format!("must be {API_VERSION}, not {:?}", doc.api_version)));
    }
    if doc.kind != KIND {
        return Err(err("kind", format!("must be {KIND}, not {:?}", doc.kind)));
    }
    let name = doc.metadata.name.clone();
    weir_spec::check_dns_label("metadata.name", &name, 63)?;
    let spec = &doc.spec;
    let (next_hop, gateway_mac) = next_hop(spec)?;
    let source = spec.encapsulation_source.clone().unwrap_or_default();
    let encap_source4 = match &source.ipv4 {
        Some(text) => match parse_address("spec.encapsulationSource.ipv4", text)? {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => return Err(err("spec.encapsulationSource.ipv4", "must be an IPv4 address")),
        },
        None => DEFAULT_ENCAP_SOURCE4,
    };
    let encap_source6 = match &source.ipv6 {
        Some(text) => match parse_address("spec.encapsulationSource.ipv6", text)? {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => return Err(err("spec.encapsulationSource.ipv6", "must be an IPv6 address")),
        },
        None => DEFAULT_ENCAP_SOURCE6,
    };
    let flood_limit = spec.new_connections_per_second_per_core.unwrap_or(DEFAULT_FLOOD_LIMIT);
    if flood_limit == 0 {
        return Err(err("spec.newConnectionsPerSecondPerCore", "must be at least 1"));
    }
    if spec.vips.len() > MAX_VIPS {
        return Err(err("spec.vips", format!("{} VIPs; at most {MAX_VIPS}", spec.vips.len())));
    }
    let mut names = BTreeSet::new();
    let mut reals_in_use = BTreeSet::new();
    let mut server_ids = std::collections::BTreeMap::new();
    let mut ids_of_real = std::collections::BTreeMap::new();
    let mut vips = Vec::with_capacity(spec.vips.len());
    for (i, raw) in spec.vips.iter().enumerate() {
        let field = format!("spec.vips[{i}]");
        let vip = validate_vip(&field, raw)?;
        if !names.insert(vip.name.clone()) {
            return Err(err(format!("{field}.name"), format!("{:?} names two VIPs", vip.name)));
        }
        if let Some(other) = vips.iter().find(|v: &&Vip| v.key == vip.key) {
            let key = vip.key;
            return Err(err(
                field,
                format!(
                    "{} port {} {} is already VIP {:?}",
                    key.address,
                    key.port,
                    protocol_name(key.proto),
                    other.name
                ),
            ));
        }
        reals_in_use.extend(vip.reals.iter().map(|r| r.key));
        for (j, real) in vip.reals.iter().enumerate() {
            let Some(id) = real.quic_server_id else { continue };
            let at = format!("{field}.reals[{j}].quicServerId");
            match server_ids.insert(id, real.key) {
                Some(other) if other != real.key => {
                    return Err(err(at, format!("server id {id} is also {}'s", other.address)))
                }
                _ => {}
            }
            match ids_of_real.insert(real.key, id) {
                Some(other) if other != id => {
                    return Err(err(at, format!("{} has server id {other} in another VIP", real.key.address)))
                }
                _ => {}
            }
        }
        vips.push(vip);
    }
    // Index 0 of the kernel's reals is "no real".
    if reals_in_use.len() > MAX_REALS - 1 {
        return Err(err("spec.vips", format!("{} distinct reals; at most {}", reals_in_use.len(), MAX_REALS - 1)));
    }
    Ok(LoadBalancer {
        name,
        next_hop,
        gateway_mac,
        encap_source4,
        encap_source6,
        flood_limit,
        quic_servers: server_ids,
        vips,
    })
}

/// `spec.nextHop` and `spec.gatewayMac`, which must agree.
fn next_hop(spec: &XdpLoadBalancerSpec) -> Result<(NextHop, [u8; 6]), SpecError> {
    let gateway_mac = match &spec.gateway_mac {
        Some(text) => match parse_mac(text) {
            None => {
                return Err(err("spec.gatewayMac", format!("{text:?} is not a MAC address like 02:00:00:00:00:01")))
            }
            Some([0, 0, 0, 0, 0, 0]) => return Err(err("spec.gatewayMac", "all zero is no gateway's MAC")),
            mac => mac,
        },
        None => None,
    };
    let next_hop = match spec.next_hop.as_deref() {
        None => return Ok(gateway_mac.map_or((NextHop::Sender, [0; 6]), |mac| (NextHop::Gateway, mac))),
        Some("Sender") => NextHop::Sender,
        Some("Gateway") => NextHop::Gateway,
        Some("Route") => NextHop::Route,
        Some(other) => return Err(err("spec.nextHop", format!("{other:?}: must be Sender, Gateway or Route"))),
    };
    match (next_hop, gateway_mac) {
        (NextHop::Gateway, Some(mac)) => Ok((next_hop, mac)),
        (NextHop::Gateway, None) => Err(err("spec.gatewayMac", "nextHop Gateway needs the gateway's MAC")),
        (_, Some(_)) => Err(err(
            "spec.gatewayMac",
            format!("only nextHop Gateway sends to a gateway MAC; nextHop is {}", next_hop.name()),
        )),
        (_, None) => Ok((next_hop, [0; 6])),
    }
}

fn validate_vip(field: &str, raw: &VipSpec) -> Result<Vip, SpecError> {
    weir_spec::check_dns_label(&format!("{field}.name"), &raw.name, 63)?;
    let address = parse_address(&format!("{field}.address"), &raw.address)?;
    if address.is_unspecified() || address.is_multicast() {
        return Err(err(format!("{field}.address"), format!("{address} cannot be a VIP")));
    }
    let proto = match raw.protocol.as_str() {
        "TCP" => 6,
        "UDP" => 17,
        other => return Err(err(format!("{field}.protocol"), format!("{other:?}: must be TCP or UDP"))),
    };
    let forwarding = match raw.forwarding.as_deref() {
        None | Some("IPIP") => Forwarding::Ipip,
        Some("GUE") => Forwarding::Gue,
        Some("NAT") => Forwarding::Nat,
        Some(other) => return Err(err(format!("{field}.forwarding"), format!("{other:?}: must be IPIP, GUE or NAT"))),
    };
    let hash = match raw.hash.as_deref() {
        None | Some("ClientAddressAndPort") => HashInput::ClientAddressAndPort,
        Some("ClientAddress") => HashInput::ClientAddress,
        Some("DestinationPort") => HashInput::DestinationPort,
        Some(other) => {
            return Err(err(
                format!("{field}.hash"),
                format!("{other:?}: must be ClientAddressAndPort, ClientAddress or DestinationPort"),
            ))
        }
    };
    if raw.quic && proto != 17 {
        return Err(err(format!("{field}.quic"), "QUIC runs over UDP: the VIP's protocol must be UDP"));
    }
    if raw.local && !raw.reals.is_empty() {
        return Err(err(format!("{field}.reals"), "a local VIP is delivered to this host's stack: it has no reals"));
    }
    let probe = crate::health::validate(field, raw.health_check.as_ref(), proto, raw.port, raw.local)?;
    let mut seen = BTreeSet::new();
    let mut reals = Vec::with_capacity(raw.reals.len());
    for (j, real) in raw.reals.iter().enumerate() {
        let rfield = format!("{field}.reals[{j}]");
        let real_address = parse_address(&format!("{rfield}.address"), &real.address)?;
        if real_address.is_unspecified() || real_address.is_multicast() || real_address.is_loopback() {
            return Err(err(format!("{rfield}.address"), format!("{real_address} cannot be a real server")));
        }
        match (address, real_address, forwarding) {
            (IpAddr::V6(_), IpAddr::V4(_), _) => {
                return Err(err(
                    format!("{rfield}.address"),
                    "an IPv6 VIP needs IPv6 reals (IPv6 does not fit in IPv4)",
                ))
            }
            (IpAddr::V4(_), IpAddr::V6(_), Forwarding::Nat) => {
                return Err(err(format!("{rfield}.address"), "NAT mode needs reals of the VIP's family"))
            }
            _ => {}
        }
        let port = match (real.port, forwarding) {
            (None, _) => 0,
            (Some(0), _) => return Err(err(format!("{rfield}.port"), "must be 1-65535")),
            (Some(p), Forwarding::Nat) => p,
            (Some(_), _) => {
                return Err(err(
                    format!("{rfield}.port"),
                    "only NAT mode rewrites the port; encapsulated packets keep the VIP's",
                ))
            }
        };
        let weight = real.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err(err(format!("{rfield}.weight"), format!("{weight}: at most {MAX_WEIGHT}")));
        }
        let key = RealKey { address: real_address, port };
        if !seen.insert(key) {
            return Err(err(format!("{rfield}.address"), format!("{real_address} is listed twice")));
        }
        let quic_server_id = match real.quic_server_id {
            Some(0) => return Err(err(format!("{rfield}.quicServerId"), "must be 1-65535 (0 means none)")),
            Some(_) if !raw.quic => {
                return Err(err(format!("{rfield}.quicServerId"), "only the reals of a VIP with quic: true have one"))
            }
            id => id,
        };
        reals.push(Real { key, weight, quic_server_id });
    }
    let mut source_routes = Vec::with_capacity(raw.source_routes.len());
    let mut prefixes = BTreeSet::new();
    for (j, route) in raw.source_routes.iter().enumerate() {
        let rfield = format!("{field}.sourceRoutes[{j}]");
        let (prefix, len) = parse_cidr(&format!("{rfield}.cidr"), &route.cidr)?;
        if prefix.is_ipv4() != address.is_ipv4() {
            return Err(err(format!("{rfield}.cidr"), "clients of a VIP are of its family"));
        }
        if !prefixes.insert((prefix, len)) {
            return Err(err(format!("{rfield}.cidr"), format!("{} is routed twice", route.cidr)));
        }
        let target = parse_address(&format!("{rfield}.real"), &route.real)?;
        let mut matching = reals.iter().filter(|r| r.key.address == target);
        let real = match (matching.next(), matching.next()) {
            (Some(real), None) => real.key,
            (None, _) => return Err(err(format!("{rfield}.real"), format!("{target} is not one of this VIP's reals"))),
            (Some(_), Some(_)) => {
                return Err(err(format!("{rfield}.real"), format!("{target} is listed with two ports: name one real")))
            }
        };
        source_routes.push((prefix, len, real));
    }
    Ok(Vip {
        name: raw.name.clone(),
        key: VipKey { address, port: raw.port, proto },
        forwarding,
        hash,
        lru_bypass: raw.lru_bypass,
        local: raw.local,
        quic: raw.quic,
        reals,
        source_routes,
        probe,
    })
}

/// An IP address as users write it; IPv4-mapped IPv6 refused.
pub fn parse_address(field: &str, text: &str) -> Result<IpAddr, SpecError> {
    let address: IpAddr = text.trim().parse().map_err(|_| err(field, format!("{text:?} is not an IP address")))?;
    if let IpAddr::V6(v6) = address {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Err(err(field, format!("{text:?} is IPv4-mapped: write {v4}")));
        }
    }
    Ok(address)
}

/// ADDRESS/LENGTH with no bits set past LENGTH.
pub fn parse_cidr(field: &str, text: &str) -> Result<(IpAddr, u8), SpecError> {
    let (addr, len) = text.split_once('/').ok_or_else(|| err(field, format!("{text:?} is not ADDRESS/LENGTH")))?;
    let address = parse_address(field, addr)?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| err(field, format!("{text:?}: a length of 0 to {max}")))?;
    let host_bits_set = match address {
        IpAddr::V4(a) => len < 32 && u32::from(a) & (u32::MAX >> len) != 0,
        IpAddr::V6(a) => len < 128 && u128::from(a) & (u128::MAX >> len) != 0,
    };
    if host_bits_set {
        return Err(err(field, format!("{text:?} has bits set past /{len}")));
    }
    Ok((address, len))
}

/// Whether `client` is inside `prefix`/`len`.
pub fn cidr_contains(prefix: IpAddr, len: u8, client: IpAddr) -> bool {
    match (prefix, client) {
        (IpAddr::V4(p), IpAddr::V4(c)) => {
            len == 0 || (u32::from(p) ^ u32::from(c)) >> (32 - u32::from(len.min(32))) == 0
        }
        (IpAddr::V6(p), IpAddr::V6(c)) => {
            len == 0 || (u128::from(p) ^ u128::from(c)) >> (128 - u32::from(len.min(128))) == 0
        }
        _ => false,
    }
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

/// "TCP" or "UDP".
pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        6 => "TCP",
        17 => "UDP",
        _ => "?",
    }
}
