//! `FilterPolicy` documents and rules.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "weir.dev/v1alpha1";
pub const KIND: &str = "FilterPolicy";
/// The priority of a rule that gives none.
pub const DEFAULT_PRIORITY: u32 = 1000;

/// Many rules, applied together and atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PolicyBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    pub rules: Vec<RuleSpec>,
}

/// One rule: what to match and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Unique among all rules: a DNS label.
    pub name: String,
    /// Lower values win among rules that match one packet; ties go to the
    /// rule added first. Default 1000.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Field matches; all given fields must match. Exclusive with `expression`.
    #[serde(default, rename = "match", skip_serializing_if = "MatchSpec::is_empty")]
    pub matches: MatchSpec,
    /// A tcpdump/pcap filter expression. Exclusive with `match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    pub action: Action,
    /// Required with `action: rateLimit`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

fn default_priority() -> u32 {
    DEFAULT_PRIORITY
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Drop,
    Pass,
    RateLimit,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RatePer {
    /// One bucket for every packet the rule matches.
    Rule,
    /// One bucket per source address.
    Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub packets_per_second: u64,
    /// Packets allowed in a burst; default: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(default = "default_per")]
    pub per: RatePer,
}

fn default_per() -> RatePer {
    RatePer::Rule
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    /// Ingress interface name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpNet>,
    /// tcp, udp, icmp, icmpv6, or a protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// A port or a range "LOW-HIGH"; needs protocol tcp or udp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<PortRange>,
    /// TCP flags under `mask` must equal `value`, e.g. mask [syn, ack], value [syn].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlags>,
    /// ICMP or ICMPv6 type and code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    /// Frame length in bytes, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<Range>,
    /// true: fragments only; false: unfragmented packets only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment: Option<bool>,
    /// true: IPv4 packets with options; false: IPv4 packets without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_options: Option<bool>,
    /// TTL or hop limit, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Range>,
    /// Up to two raw byte matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bytes: Vec<BytesMatch>,
}

impl MatchSpec {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Protocol(pub u8);

impl Protocol {
    pub const ICMP: Protocol = Protocol(1);
    pub const TCP: Protocol = Protocol(6);
    pub const UDP: Protocol = Protocol(17);
    pub const ICMPV6: Protocol = Protocol(58);
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Protocol::TCP => s.serialize_str("tcp"),
            Protocol::UDP => s.serialize_str("udp"),
            Protocol::ICMP => s.serialize_str("icmp"),
            Protocol::ICMPV6 => s.serialize_str("icmpv6"),
            Protocol(n) => s.serialize_u8(n),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Number(u8),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Protocol(n)),
            Raw::Name(name) => name.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::TCP),
            "udp" => Ok(Protocol::UDP),
            "icmp" => Ok(Protocol::ICMP),
            "icmpv6" | "ipv6-icmp" => Ok(Protocol::ICMPV6),
            other => other
                .parse::<u8>()
                .map(Protocol)
                .map_err(|_| format!("unknown protocol {s:?}: use tcp, udp, icmp, icmpv6 or a number 0-255")),
        }
    }
}

/// A port, or an inclusive range written "LOW-HIGH".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn is_single(&self) -> bool {
        self.low == self.high
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port (0-65535) or a range LOW-HIGH");
        let (low, high) = match s.split_once('-') {
            Some((a, b)) => (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?),
            None => {
                let p = s.trim().parse().map_err(|_| bad())?;
                (p, p)
            }
        };
        if low > high {
            return Err(format!("port range {s:?} runs backwards"));
        }
        Ok(Self { low, high })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_single() {
            s.serialize_u16(self.low)
        } else {
            s.serialize_str(&format!("{}-{}", self.low, self.high))
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => u16::try_from(n)
                .map(|p| PortRange { low: p, high: p })
                .map_err(|_| serde::de::Error::custom(format!("port {n} is out of range (0-65535)"))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpFlag {
    Fin,
    Syn,
    Rst,
    Psh,
    Ack,
    Urg,
    Ece,
    Cwr,
}

impl TcpFlag {
    pub fn bit(self) -> u8 {
        match self {
            TcpFlag::Fin => 0x01,
            TcpFlag::Syn => 0x02,
            TcpFlag::Rst => 0x04,
            TcpFlag::Psh => 0x08,
            TcpFlag::Ack => 0x10,
            TcpFlag::Urg => 0x20,
            TcpFlag::Ece => 0x40,
            TcpFlag::Cwr => 0x80,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpFlags {
    pub mask: Vec<TcpFlag>,
    #[serde(default)]
    pub value: Vec<TcpFlag>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Icmp {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default)]
    pub min: u32,
    #[serde(default = "max_u32")]
    pub max: u32,
}

fn max_u32() -> u32 {
    u32::MAX
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteBase {
    /// From the start of the IP header.
    L3,
    /// From the start of the TCP/UDP/ICMP header.
    L4,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BytesMatch {
    pub base: ByteBase,
    pub offset: u16,
    /// 1 to 4 bytes in hex, e.g. "0x80" or "deadbeef".
    pub value: String,
    /// Same length as value; default all ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
}

pub(crate) use weir_spec::err;
pub use weir_spec::SpecError;

/// Parses "0x80", "80" or "deadbeef" into 1 to 4 bytes.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.trim().trim_start_matches("0x").trim_start_matches("0X");
    if digits.is_empty() || !digits.len().is_multiple_of(2) || digits.len() > 8 {
        return Err(format!("{text:?} must be 1 to 4 bytes of hex, written with an even number of digits"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| format!("{text:?} is not hex")))
        .collect()
}

/// Parses any even number of hex digits ("0x0001", "deadbeef00").
pub fn parse_hex_any(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.trim().trim_start_matches("0x").trim_start_matches("0X");
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{text:?} has an odd number of hex digits"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| format!("{text:?} is not hex")))
        .collect()
}

fn check_name(field: &str, name: &str) -> Result<(), SpecError> {
    weir_spec::check_dns_label(field, name, 63)
}

impl RuleSpec {
    /// Every check a rule must pass on its own; `field` prefixes error paths.
    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        let f = |name: &str| if field.is_empty() { name.to_string() } else { format!("{field}.{name}") };
        check_name(&f("name"), &self.name)?;
        let m = &self.matches;
        match (&self.expression, m.is_empty()) {
            (Some(_), false) => return Err(err(f("expression"), "give either match or expression, not both")),
            (Some(expr), true) if expr.trim().is_empty() => return Err(err(f("expression"), "is empty")),
            (Some(expr), true) => {
                let classic = crate::pcap::compile(expr).map_err(|e| err(f("expression"), format!("{expr:?}: {e}")))?;
                crate::expr::generate(&[(0, classic)], None).map_err(|e| err(f("expression"), format!("{expr:?}: {e}")))?;
            }
            (None, true) => return Err(err(f("match"), "a rule needs a match or an expression (a rule that matches everything is a default, and the default is pass)")),
            _ => {}
        }
        match (self.action, &self.rate_limit) {
            (Action::RateLimit, None) => {
                return Err(err(f("rateLimit"), "action rateLimit needs rateLimit.packetsPerSecond"))
            }
            (Action::RateLimit, Some(r)) if r.packets_per_second == 0 || r.packets_per_second > 1_000_000_000 => {
                return Err(err(f("rateLimit.packetsPerSecond"), "must be between 1 and 1000000000"))
            }
            (Action::RateLimit, Some(r)) if r.burst == Some(0) => {
                return Err(err(f("rateLimit.burst"), "must be at least 1"))
            }
            (action, Some(_)) if action != Action::RateLimit => {
                return Err(err(f("rateLimit"), "is only for action rateLimit"))
            }
            _ => {}
        }
        let family = |net: &Option<IpNet>| net.map(|n| matches!(n, IpNet::V4(_)));
        if let (Some(a), Some(b)) = (family(&m.source), family(&m.destination)) {
            if a != b {
                return Err(err(f("match.destination"), "source and destination are of different IP families"));
            }
        }
        for (name, net) in [("match.source", &m.source), ("match.destination", &m.destination)] {
            if let Some(net) = net {
                if net.trunc() != *net {
                    return Err(err(f(name), format!("{net} has host bits set; did you mean {}?", net.trunc())));
                }
            }
        }
        let transport = matches!(m.protocol, Some(Protocol::TCP) | Some(Protocol::UDP));
        if (m.source_port.is_some() || m.destination_port.is_some()) && !transport {
            let which = if m.source_port.is_some() { "match.sourcePort" } else { "match.destinationPort" };
            return Err(err(f(which), "ports need protocol tcp or udp"));
        }
        if m.tcp_flags.is_some() && m.protocol != Some(Protocol::TCP) {
            return Err(err(f("match.tcpFlags"), "needs protocol tcp"));
        }
        if let Some(flags) = &m.tcp_flags {
            if flags.mask.is_empty() {
                return Err(err(f("match.tcpFlags.mask"), "names no flag"));
            }
            if let Some(extra) = flags.value.iter().find(|v| !flags.mask.contains(v)) {
                return Err(err(
                    f("match.tcpFlags.value"),
                    format!("{extra:?} is not in the mask, so it can never match"),
                ));
            }
        }
        if let Some(icmp) = &m.icmp {
            let v4 = m.protocol == Some(Protocol::ICMP);
            let v6 = m.protocol == Some(Protocol::ICMPV6);
            if !v4 && !v6 {
                return Err(err(f("match.icmp"), "needs protocol icmp or icmpv6"));
            }
            if (v4 && family(&m.source).or(family(&m.destination)) == Some(false))
                || (v6 && family(&m.source).or(family(&m.destination)) == Some(true))
            {
                return Err(err(f("match.protocol"), "does not fit the IP family of the addresses"));
            }
            if icmp.kind.is_none() && icmp.code.is_none() {
                return Err(err(f("match.icmp"), "give a type, a code or both"));
            }
        }
        for (name, range, max) in [("match.length", &m.length, u32::from(u16::MAX)), ("match.ttl", &m.ttl, 255)] {
            if let Some(r) = range {
                if r.min > r.max {
                    return Err(err(f(name), format!("min {} is above max {}", r.min, r.max)));
                }
                if r.min > max {
                    return Err(err(f(name), format!("min {} can never match (at most {max})", r.min)));
                }
            }
        }
        if m.ip_options.is_some() && family(&m.source).or(family(&m.destination)) == Some(false) {
            return Err(err(f("match.ipOptions"), "IPv6 has no IP options"));
        }
        if m.bytes.len() > 2 {
            return Err(err(f("match.bytes"), "at most 2 byte matches"));
        }
        for (i, b) in m.bytes.iter().enumerate() {
            let value = parse_hex(&b.value).map_err(|e| err(f(&format!("match.bytes[{i}].value")), e))?;
            if let Some(mask) = &b.mask {
                let mask = parse_hex(mask).map_err(|e| err(f(&format!("match.bytes[{i}].mask")), e))?;
                if mask.len() != value.len() {
                    return Err(err(f(&format!("match.bytes[{i}].mask")), "must be as long as value"));
                }
                if value.iter().zip(&mask).any(|(v, m)| v & !m != 0) {
                    return Err(err(
                        f(&format!("match.bytes[{i}].value")),
                        "has bits outside the mask, so it can never match",
                    ));
                }
            }
            if b.base == ByteBase::L4 && m.protocol.is_none() {
                return Err(err(f(&format!("match.bytes[{i}].base")), "l4 needs a protocol"));
            }
        }
        if let Some(iface) = &m.interface {
            if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']) {
                return Err(err(f("match.interface"), format!("{iface:?} is not an interface name")));
            }
        }
        Ok(())
    }
}

impl FilterPolicy {
    /// Parses and validates a document.
    pub fn parse(yaml: &str) -> Result<Self, SpecError> {
        let policy: FilterPolicy = weir_spec::parse_yaml(yaml)?;
        if policy.api_version != API_VERSION {
            return Err(err("apiVersion", format!("must be {API_VERSION:?}")));
        }
        if policy.kind != KIND {
            return Err(err("kind", format!("must be {KIND:?}")));
        }
        check_name("metadata.name", &policy.metadata.name)?;
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            rule.validate(&format!("spec.rules[{i}]"))?;
            if !names.insert(rule.name.as_str()) {
                return Err(err(format!("spec.rules[{i}].name"), format!("duplicate rule {:?}", rule.name)));
            }
        }
        Ok(policy)
    }
}
