//! A rule to what the datapath stores. Pure.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::spec::{err, parse_hex, Action, ByteBase, Protocol, RatePer, RuleSpec, SpecError};

pub const SHAPE_IFINDEX: u8 = 1 << 0;
pub const SHAPE_PROTO: u8 = 1 << 1;
pub const SHAPE_SPORT: u8 = 1 << 2;
pub const SHAPE_DPORT: u8 = 1 << 3;

pub const CHECK_SPORT_RANGE: u16 = 1 << 0;
pub const CHECK_DPORT_RANGE: u16 = 1 << 1;
pub const CHECK_TCP_FLAGS: u16 = 1 << 2;
pub const CHECK_ICMP_TYPE: u16 = 1 << 3;
pub const CHECK_ICMP_CODE: u16 = 1 << 4;
pub const CHECK_LENGTH: u16 = 1 << 5;
pub const CHECK_FRAGMENT: u16 = 1 << 6;
pub const CHECK_IP_OPTIONS: u16 = 1 << 7;
pub const CHECK_TTL: u16 = 1 << 8;
pub const CHECK_BYTES: u16 = 1 << 9;
pub const CHECK_EXPRESSION: u16 = 1 << 10;

/// Which key fields a group of rules matches exactly, and their prefix lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shape {
    /// 0: any family, 4 or 6.
    pub family: u8,
    pub fields: u8,
    pub src_prefix: u8,
    pub dst_prefix: u8,
}

impl Shape {
    /// The address masks, as 16 bytes each (IPv4 in the first four).
    pub fn masks(&self) -> ([u8; 16], [u8; 16]) {
        (prefix_mask(self.src_prefix), prefix_mask(self.dst_prefix))
    }
}

fn prefix_mask(len: u8) -> [u8; 16] {
    let mut mask = [0u8; 16];
    for (i, byte) in mask.iter_mut().enumerate() {
        let bits = (usize::from(len)).saturating_sub(i * 8).min(8);
        *byte = if bits == 0 { 0 } else { 0xFFu8 << (8 - bits) };
    }
    mask
}

/// The masked packet fields a rule's packets share; ports in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BytesEntry {
    /// 0: from the L3 header, 1: from the L4 header.
    pub base: u8,
    pub len: u8,
    pub offset: u16,
    pub value: u32,
    pub mask: u32,
}

/// Everything the datapath checks and does once a rule's key matched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleEntry {
    /// Set by the planner: priority << 32 | order added.
    pub rank: u64,
    /// `api::filter_action` code.
    pub action: u8,
    pub per_source: bool,
    pub fragment: u8,
    pub checks: u16,
    pub tcp_flags_mask: u8,
    pub tcp_flags_value: u8,
    pub sport: (u16, u16),
    pub dport: (u16, u16),
    pub length: (u16, u16),
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub ttl: (u8, u8),
    pub ip_options: u8,
    pub bytes: [BytesEntry; 2],
    pub token_cost_ns: u64,
    pub bucket_ns: u64,
}

/// A compiled rule. Map-backed rules have a shape and key; expression rules have neither.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CompiledRule {
    pub shape: Option<Shape>,
    pub key: Option<Key>,
    pub entry: RuleEntry,
    pub expression: Option<String>,
}

/// The slot value meaning "no rule" (WEIR_FILTER_NO_RULE).
pub const NO_RULE: u32 = u32::MAX;

pub const ACTION_PASS: u8 = 0;
pub const ACTION_DROP: u8 = 1;
pub const ACTION_RATE_LIMIT: u8 = 2;
pub const ACTION_AUDIT: u8 = 3;

fn octets(addr: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

fn family_of(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 6,
    }
}

/// Compiles a validated rule; `ifindex` resolves interface names on this node.
pub fn compile(rule: &RuleSpec, ifindex: impl Fn(&str) -> Option<u32>) -> Result<CompiledRule, SpecError> {
    let m = &rule.matches;
    let mut entry = RuleEntry {
        action: match rule.action {
            Action::Pass => ACTION_PASS,
            Action::Drop => ACTION_DROP,
            Action::RateLimit => ACTION_RATE_LIMIT,
            Action::Audit => ACTION_AUDIT,
        },
        ..Default::default()
    };
    if let Some(rate) = &rule.rate_limit {
        entry.token_cost_ns = (1_000_000_000 / rate.packets_per_second).max(1);
        entry.bucket_ns = rate.burst.unwrap_or(rate.packets_per_second).saturating_mul(entry.token_cost_ns);
        entry.per_source = rate.per == RatePer::Source;
    }
    if let Some(expression) = &rule.expression {
        entry.checks = CHECK_EXPRESSION;
        return Ok(CompiledRule { shape: None, key: None, entry, expression: Some(expression.clone()) });
    }

    let family = m
        .source
        .as_ref()
        .or(m.destination.as_ref())
        .map(family_of)
        .or(match m.protocol {
            Some(Protocol::ICMP) => Some(4),
            Some(Protocol::ICMPV6) => Some(6),
            _ => None,
        })
        .unwrap_or(0);
    let mut shape = Shape { family, fields: 0, src_prefix: 0, dst_prefix: 0 };
    let mut key = Key { ifindex: 0, family, proto: 0, sport: 0, dport: 0, src: [0; 16], dst: [0; 16] };
    if let Some(name) = &m.interface {
        key.ifindex =
            ifindex(name).ok_or_else(|| err("match.interface", format!("no interface {name:?} on this node")))?;
        shape.fields |= SHAPE_IFINDEX;
    }
    if let Some(net) = &m.source {
        shape.src_prefix = net.prefix_len();
        key.src = octets(net.network());
    }
    if let Some(net) = &m.destination {
        shape.dst_prefix = net.prefix_len();
        key.dst = octets(net.network());
    }
    if let Some(proto) = m.protocol {
        shape.fields |= SHAPE_PROTO;
        key.proto = proto.0;
    }
    match m.source_port {
        Some(p) if p.is_single() => {
            shape.fields |= SHAPE_SPORT;
            key.sport = p.low;
        }
        Some(p) => {
            entry.checks |= CHECK_SPORT_RANGE;
            entry.sport = (p.low, p.high);
        }
        None => {}
    }
    match m.destination_port {
        Some(p) if p.is_single() => {
            shape.fields |= SHAPE_DPORT;
            key.dport = p.low;
        }
        Some(p) => {
            entry.checks |= CHECK_DPORT_RANGE;
            entry.dport = (p.low, p.high);
        }
        None => {}
    }
    if let Some(flags) = &m.tcp_flags {
        entry.checks |= CHECK_TCP_FLAGS;
        entry.tcp_flags_mask = flags.mask.iter().fold(0, |acc, f| acc | f.bit());
        entry.tcp_flags_value = flags.value.iter().fold(0, |acc, f| acc | f.bit());
    }
    if let Some(icmp) = &m.icmp {
        if let Some(kind) = icmp.kind {
            entry.checks |= CHECK_ICMP_TYPE;
            entry.icmp_type = kind;
        }
        if let Some(code) = icmp.code {
            entry.checks |= CHECK_ICMP_CODE;
            entry.icmp_code = code;
        }
    }
    if let Some(length) = &m.length {
        entry.checks |= CHECK_LENGTH;
        entry.length = (length.min.min(65535) as u16, length.max.min(65535) as u16);
    }
    if let Some(fragment) = m.fragment {
        entry.checks |= CHECK_FRAGMENT;
        entry.fragment = u8::from(fragment);
    }
    if let Some(options) = m.ip_options {
        entry.checks |= CHECK_IP_OPTIONS;
        entry.ip_options = u8::from(options);
    }
    if let Some(ttl) = &m.ttl {
        entry.checks |= CHECK_TTL;
        entry.ttl = (ttl.min.min(255) as u8, ttl.max.min(255) as u8);
    }
    for (i, b) in m.bytes.iter().enumerate() {
        let field = |name: &str| format!("match.bytes[{i}].{name}");
        let value = parse_hex(&b.value).map_err(|e| err(field("value"), e))?;
        let mask = match &b.mask {
            Some(mask) => parse_hex(mask).map_err(|e| err(field("mask"), e))?,
            None => vec![0xFF; value.len()],
        };
        let word = |bytes: &[u8]| bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        entry.checks |= CHECK_BYTES;
        entry.bytes[i] = BytesEntry {
            base: u8::from(b.base == ByteBase::L4),
            len: value.len() as u8,
            offset: b.offset,
            value: word(&value),
            mask: word(&mask),
        };
    }
    Ok(CompiledRule { shape: Some(shape), key: Some(key), entry, expression: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::FilterPolicy;

    fn rule(yaml: &str) -> RuleSpec {
        let doc = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: FilterPolicy\nmetadata: {{name: t}}\nspec:\n  rules:\n  - {}",
            yaml.replace('\n', "\n    ")
        );
        FilterPolicy::parse(&doc).expect("valid").spec.rules.remove(0)
    }

    #[test]
    fn cidr_and_single_ports_go_into_the_shape_ranges_into_checks() {
        let r = rule("name: r\nmatch: {source: 10.1.0.0/16, protocol: udp, destinationPort: 53, sourcePort: 1000-2000}\naction: drop");
        let c = compile(&r, |_| None).expect("compiles");
        let shape = c.shape.expect("map-backed");
        assert_eq!((shape.family, shape.src_prefix, shape.dst_prefix), (4, 16, 0));
        assert_eq!(shape.fields, SHAPE_PROTO | SHAPE_DPORT);
        let key = c.key.expect("key");
        assert_eq!((&key.src[..4], key.dport, key.proto), (&[10, 1, 0, 0][..], 53, 17));
        assert_eq!(c.entry.checks, CHECK_SPORT_RANGE);
        assert_eq!(c.entry.sport, (1000, 2000));
        assert_eq!(c.entry.action, ACTION_DROP);
    }

    #[test]
    fn ipv6_prefix_masks_cover_whole_and_partial_bytes() {
        let shape = Shape { family: 6, fields: 0, src_prefix: 20, dst_prefix: 0 };
        let (src, dst) = shape.masks();
        assert_eq!(&src[..4], &[0xFF, 0xFF, 0xF0, 0x00]);
        assert_eq!(dst, [0; 16]);
    }

    #[test]
    fn byte_matches_and_rates_compile_to_words_and_nanoseconds() {
        let r = rule("name: r\nmatch: {protocol: udp, bytes: [{base: l4, offset: 10, value: '0x80', mask: '0x80'}]}\naction: rateLimit\nrateLimit: {packetsPerSecond: 1000, burst: 10, per: source}");
        let c = compile(&r, |_| None).expect("compiles");
        assert_eq!(c.entry.bytes[0], BytesEntry { base: 1, len: 1, offset: 10, value: 0x80, mask: 0x80 });
        assert_eq!((c.entry.token_cost_ns, c.entry.bucket_ns, c.entry.per_source), (1_000_000, 10_000_000, true));
    }

    #[test]
    fn an_unknown_interface_is_an_error() {
        let r = rule("name: r\nmatch: {interface: nope0}\naction: drop");
        assert_eq!(compile(&r, |_| None).expect_err("rejected").field, "match.interface");
        assert_eq!(compile(&r, |_| Some(7)).expect("resolves").key.map(|k| k.ifindex), Some(7));
    }
}
