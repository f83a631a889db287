//! The network config a runtime hands the plugin on stdin, pure.
//!
//! The spec's standard keys are accepted; Weir's own are `subnet`,
//! `gateway`, `subnet6`, `gateway6`, `dataDir` and `mtu`. Any other key is refused by name, so a
//! misspelt field never silently falls back to a default.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::error::{CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_NETWORK_CONFIG, UNSUPPORTED_FIELD};

/// CNI versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
/// The plugin's own `type`, as runtimes find it in their plugin directories.
pub const PLUGIN_TYPE: &str = "weir-cni";
/// Where Weir's own IPAM keeps its allocations unless `dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/weir/cni";
/// Where the host agent listens (`weir agent`'s default socket).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/weir/agent.sock";
/// The one chained mode (`chaining`): after a plugin that gave the
/// container a veth, named after Cilium's mode of the same kind.
pub const CHAINING_GENERIC_VETH: &str = "generic-veth";

/// The network config exactly as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawNetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    #[serde(default)]
    pub ip_masq: Option<bool>,
    #[serde(default)]
    pub ipam: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub dns: Option<serde_json::Value>,
    #[serde(default)]
    pub capabilities: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Weir: the node's pod CIDR (IPv4), the addresses Weir's IPAM hands out.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Weir: the containers' gateway, the host side of every veth; the
    /// subnet's first address unless given.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Weir: the node's IPv6 pod CIDR: with it, containers are dual-stack.
    #[serde(default)]
    pub subnet6: Option<String>,
    /// Weir: the containers' IPv6 gateway; the subnet6's first address unless given.
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// Weir: where Weir's IPAM keeps its allocations.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Weir: the veth pair's MTU (the kernel's default unless given).
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub agent: Option<bool>,
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// Weir: chained after the plugin that made the interface
    /// ([`CHAINING_GENERIC_VETH`]); Weir adds policy and visibility only.
    #[serde(default)]
    pub chaining: Option<String>,
}

/// One attachment a runtime still holds (GC's `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Where addresses come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Ipam {
    /// Weir's own allocator over the pod CIDR.
    Weir { subnet: Ipv4Net, gateway: Ipv4Addr },
    /// A delegated IPAM plugin (`ipam.type`), run per the spec.
    Delegated { plugin: String },
    /// Chained (`chaining`): the interface and its addresses are the
    /// previous plugin's, read from `prevResult`.
    Previous,
}

/// Weir's IPAM for IPv6 (`subnet6`): each container also gets one address
/// of `subnet`, routed through `gateway`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool6 {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
}

/// A validated network config.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub ipam: Ipam,
    /// Dual-stack with Weir's IPAM (`subnet6`); None: IPv4 only, or the
    /// delegated plugin's result says.
    pub subnet6: Option<Pool6>,
    pub data_dir: PathBuf,
    pub mtu: Option<u32>,
    pub dns: Option<serde_json::Value>,
    pub prev_result: Option<serde_json::Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The host agent's socket; None: the agent is not told (`"agent": false`).
    pub agent_socket: Option<PathBuf>,
    /// The container's labels (`args.cni.labels`, `runtimeConfig.labels`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The container's published ports (`runtimeConfig.portMappings`).
    pub port_mappings: Vec<crate::handoff::PortMapping>,
    /// The container's rates (`runtimeConfig.bandwidth`).
    pub bandwidth: crate::bandwidth::Bandwidth,
}

/// The `cniVersion` of a config, if it has one, for error objects.
pub fn version_of(stdin: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(stdin).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_string)
}

/// Whether the plugin speaks `version`.
pub fn supports(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_NETWORK_CONFIG, msg)
}

/// Every key a network config may hold: the spec's, then Weir's.
const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "cni.dev/valid-attachments",
    "subnet",
    "gateway",
    "subnet6",
    "gateway6",
    "dataDir",
    "mtu",
    "agent",
    "agentSocket",
    "chaining",
];

/// Parses and validates the config on stdin: not JSON is code 6, a field
/// this plugin does not know is code 2 (named with its value), a field of
/// the wrong shape code 7.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: serde_json::Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(DECODE_FAILURE, "decoding the network config").with_details(e))?;
    let object =
        value.as_object().ok_or_else(|| CniError::new(DECODE_FAILURE, "the network config is not a JSON object"))?;
    if let Some((key, field)) = object.iter().find(|(k, _)| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(CniError::new(
            UNSUPPORTED_FIELD,
            format!("unsupported field {key:?} = {field} in the network config"),
        )
        .with_details(format!("known fields: {}", KNOWN_KEYS.join(", "))));
    }
    let raw: RawNetConf =
        serde_json::from_value(value).map_err(|e| invalid("invalid network config").with_details(e))?;
    validate(raw)
}

fn validate(raw: RawNetConf) -> Result<NetConf, CniError> {
    if !supports(&raw.cni_version) {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("cniVersion {:?} is not supported (supported: {})", raw.cni_version, SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    // The spec's pattern, which also keeps the name a safe directory name.
    let first_ok = raw.name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || !raw.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(invalid(format!(
            "name {:?}: must start with a letter or digit, then letters, digits, '-', '_' or '.'",
            raw.name
        )));
    }
    if raw.plugin_type != PLUGIN_TYPE {
        return Err(invalid(format!("type {:?}: this plugin is {PLUGIN_TYPE:?}", raw.plugin_type)));
    }
    if let Some(mtu) = raw.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(invalid(format!("mtu {mtu}: must be between 68 and 65535")));
        }
    }
    if let Some(mode) = &raw.chaining {
        if mode != CHAINING_GENERIC_VETH {
            return Err(invalid(format!("chaining {mode:?}: the one mode is {CHAINING_GENERIC_VETH:?}")));
        }
        // The previous plugin made the interface and chose its addresses.
        for (field, given) in [
            ("subnet", raw.subnet.is_some()),
            ("gateway", raw.gateway.is_some()),
            ("ipam", raw.ipam.is_some()),
            ("mtu", raw.mtu.is_some()),
            ("dataDir", raw.data_dir.is_some()),
        ] {
            if given {
                return Err(invalid(format!(
                    "{field}: not with \"chaining\": the previous plugin made the interface and its addresses"
                )));
            }
        }
        if raw.agent == Some(false) {
            return Err(invalid("agent: false with \"chaining\": a chained Weir is its agent's policy and visibility"));
        }
    }
    let ipam = match (&raw.ipam, &raw.subnet) {
        _ if raw.chaining.is_some() => Ipam::Previous,
        (Some(ipam), subnet) => {
            if subnet.is_some() || raw.gateway.is_some() || raw.subnet6.is_some() || raw.gateway6.is_some() {
                return Err(invalid(
                    "subnet/gateway/subnet6/gateway6 are Weir's IPAM; with a delegated ipam, set the ranges there",
                ));
            }
            let plugin = ipam
                .get("type")
                .and_then(|t| t.as_str())
                .ok_or_else(|| invalid("ipam.type: a delegated IPAM plugin needs a type"))?;
            if plugin.is_empty() || plugin.contains('/') || plugin.starts_with('.') {
                return Err(invalid(format!("ipam.type {plugin:?}: must be a plugin name, not a path")));
            }
            Ipam::Delegated { plugin: plugin.to_string() }
        }
        (None, None) => return Err(invalid("subnet: required (the node's pod CIDR) unless ipam names a plugin")),
        (None, Some(subnet)) => {
            let subnet: Ipv4Net =
                subnet.parse().map_err(|e| invalid(format!("subnet {subnet:?}: not an IPv4 CIDR")).with_details(e))?;
            if subnet.network() != subnet.addr() {
                return Err(invalid(format!("subnet {subnet}: has host bits set (network is {})", subnet.trunc())));
            }
            if subnet.prefix_len() > 30 {
                return Err(invalid(format!("subnet {subnet}: too small, needs at least a /30")));
            }
            let gateway = raw.gateway.unwrap_or_else(|| Ipv4Addr::from(u32::from(subnet.network()) + 1));
            if !subnet.contains(&gateway) || gateway == subnet.network() || gateway == subnet.broadcast() {
                return Err(invalid(format!("gateway {gateway}: not a host address of subnet {subnet}")));
            }
            Ipam::Weir { subnet, gateway }
        }
    };
    let subnet6 = match (&raw.ipam, &raw.subnet6) {
        (None, Some(subnet6)) => Some(pool6(subnet6, raw.gateway6)?),
        _ if raw.gateway6.is_some() => return Err(invalid("gateway6: given without subnet6")),
        _ => None,
    };
    let agent_socket = match (raw.agent, raw.agent_socket) {
        (Some(false), Some(_)) => return Err(invalid("agentSocket: given with \"agent\": false")),
        (Some(false), None) => None,
        (_, Some(socket)) if !socket.is_absolute() => {
            return Err(invalid(format!("agentSocket {}: must be an absolute path", socket.display())))
        }
        (_, socket) => Some(socket.unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET))),
    };
    // Masquerading is the host agent's, for every pod of its node alike (as
    // a Cilium node's): traffic leaving its `--cluster-cidr`s goes out as the
    // node. A network cannot opt out of it, and without the agent nothing
    // masquerades, so either contradiction is refused rather than ignored.
    match (raw.ip_masq, &agent_socket) {
        (Some(true), None) => {
            return Err(CniError::new(
                UNSUPPORTED_FIELD,
                "unsupported field \"ipMasq\" = true with \"agent\": false: the host agent's datapath is what \
                 masquerades containers",
            ))
        }
        (Some(false), Some(_)) => {
            return Err(CniError::new(
                UNSUPPORTED_FIELD,
                "unsupported field \"ipMasq\" = false: the host agent masquerades every container's traffic that \
                 leaves its cluster CIDRs (weir agent --cluster-cidr); name the destinations that must see \
                 container addresses there, or set \"agent\": false",
            ))
        }
        _ => {}
    }
    let labels = crate::handoff::labels(raw.args.as_ref(), raw.runtime_config.as_ref())?;
    let port_mappings = crate::handoff::port_mappings(raw.runtime_config.as_ref())?;
    let bandwidth = crate::bandwidth::parse(raw.runtime_config.as_ref())?;
    if ipam == Ipam::Previous && !port_mappings.is_empty() {
        return Err(invalid("runtimeConfig.portMappings: not with \"chaining\" (the portmap plugin publishes ports)"));
    }
    if ipam == Ipam::Previous && (bandwidth.ingress.is_some() || bandwidth.egress.is_some()) {
        return Err(invalid("runtimeConfig.bandwidth: not with \"chaining\" (the bandwidth plugin shapes chains)"));
    }
    Ok(NetConf {
        bandwidth,
        port_mappings,
        agent_socket,
        labels,
        cni_version: raw.cni_version,
        data_dir: raw.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        name: raw.name,
        ipam,
        subnet6,
        mtu: raw.mtu,
        dns: raw.dns,
        prev_result: raw.prev_result,
        valid_attachments: raw.valid_attachments,
    })
}

/// `subnet6` and `gateway6`, checked: an IPv6 CIDR a container's address
/// can be routed from (not link-local, multicast or loopback), no host
/// bits, room for the gateway and at least one container.
fn pool6(subnet: &str, gateway: Option<Ipv6Addr>) -> Result<Pool6, CniError> {
    let subnet: Ipv6Net =
        subnet.parse().map_err(|e| invalid(format!("subnet6 {subnet:?}: not an IPv6 CIDR")).with_details(e))?;
    if subnet.network() != subnet.addr() {
        return Err(invalid(format!("subnet6 {subnet}: has host bits set (network is {})", subnet.trunc())));
    }
    if subnet.prefix_len() == 0 || subnet.prefix_len() > 126 {
        return Err(invalid(format!("subnet6 {subnet}: the prefix must be /1 to /126")));
    }
    let first = subnet.network().segments()[0];
    if (first & 0xffc0) == 0xfe80 || (first & 0xff00) == 0xff00 || subnet.contains(&Ipv6Addr::LOCALHOST) {
        return Err(invalid(format!("subnet6 {subnet}: not a unicast range containers can be routed from")));
    }
    // The subnet's first address is its subnet-router anycast address: no container has it.
    let gateway = gateway.unwrap_or_else(|| Ipv6Addr::from(u128::from(subnet.network()) + 1));
    if !subnet.contains(&gateway) || gateway == subnet.network() {
        return Err(invalid(format!("gateway6 {gateway}: not a host address of subnet6 {subnet}")));
    }
    Ok(Pool6 { subnet, gateway })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<NetConf, CniError> {
        parse(s.as_bytes())
    }

    #[test]
    fn weir_ipam_defaults_gateway_to_first_address() {
        let conf =
            parse_str(r#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","subnet":"10.22.0.0/24"}"#).expect("valid");
        assert_eq!(
            conf.ipam,
            Ipam::Weir { subnet: "10.22.0.0/24".parse().expect("valid"), gateway: Ipv4Addr::new(10, 22, 0, 1) }
        );
        assert_eq!(conf.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn subnet6_makes_containers_dual_stack_and_is_checked_by_name() {
        let base = r#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","subnet":"10.22.0.0/24""#;
        let with = |extra: &str| parse_str(&format!("{base}{extra}}}"));
        assert_eq!(with("").expect("valid").subnet6, None);
        let pool = with(r#","subnet6":"fd00:22::/64""#).expect("valid").subnet6.expect("dual-stack");
        assert_eq!(pool.subnet, "fd00:22::/64".parse::<Ipv6Net>().expect("valid"));
        assert_eq!(pool.gateway, "fd00:22::1".parse::<Ipv6Addr>().expect("valid"));
        let pool = with(r#","subnet6":"fd00:22::/120","gateway6":"fd00:22::fe""#).expect("valid").subnet6;
        assert_eq!(pool.map(|p| p.gateway), Some("fd00:22::fe".parse().expect("valid")));
        for (extra, named) in [
            (r#","subnet6":"10.0.0.0/24""#, "subnet6 \"10.0.0.0/24\": not an IPv6 CIDR"),
            (r#","subnet6":"fd00::1/64""#, "subnet6 fd00::1/64: has host bits set"),
            (r#","subnet6":"fd00::/127""#, "subnet6 fd00::/127: the prefix"),
            (r#","subnet6":"fe80::/64""#, "subnet6 fe80::/64: not a unicast range"),
            (r#","subnet6":"ff02::/64""#, "subnet6 ff02::/64: not a unicast range"),
            (r#","subnet6":"fd00::/64","gateway6":"fd01::1""#, "gateway6 fd01::1: not a host address"),
            (r#","subnet6":"fd00::/64","gateway6":"fd00::""#, "gateway6 fd00::: not a host address"),
            (r#","gateway6":"fd00::1""#, "gateway6: given without subnet6"),
            (r#","subnet6":"fd00::/64","gateway6":"x""#, "invalid network config"),
        ] {
            let err = with(extra).expect_err(extra);
            assert_eq!(err.code, INVALID_NETWORK_CONFIG, "{extra}: {err}");
            assert!(err.msg.starts_with(named), "{extra}: {err}");
        }
        let delegated =
            r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","subnet6":"fd00::/64","ipam":{"type":"host-local"}}"#;
        assert!(parse_str(delegated).expect_err("both").msg.contains("subnet6"));
        let v6_only = r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","subnet6":"fd00::/64"}"#;
        assert!(parse_str(v6_only).expect_err("no subnet").msg.starts_with("subnet: required"));
    }

    #[test]
    fn unknown_field_is_refused_by_name() {
        let err =
            parse_str(r#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24","subnett":1}"#)
                .expect_err("an error");
        assert_eq!(err.code, UNSUPPORTED_FIELD);
        assert!(err.msg.contains("\"subnett\" = 1"), "{err}");
    }

    #[test]
    fn errors_carry_the_spec_codes() {
        let code = |s: &str| parse_str(s).expect_err("an error").code;
        assert_eq!(code(r#"{"cniVersion":"0.2.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24"}"#), 1);
        assert_eq!(code("not json"), DECODE_FAILURE);
        assert_eq!(code("[1]"), DECODE_FAILURE);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24","mtu":"big"}"#),
            7
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","subnet":"10.0.0.0/24"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","subnet":"10.0.0.1/24"}"#), 7);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24","gateway":"10.0.1.1"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24","ipMasq":false}"#),
            2
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24","ipMasq":true,"agent":false}"#
            ),
            2
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","ipam":{"type":"../x"}}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"..","type":"weir-cni","subnet":"10.0.0.0/24"}"#), 7);
    }

    #[test]
    fn delegated_ipam_and_standard_keys_are_accepted() {
        let conf = parse_str(
            r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","ipMasq":true,"args":{},"capabilities":{},
                "runtimeConfig":{},"dns":{"nameservers":["10.0.0.2"]},
                "ipam":{"type":"host-local","ranges":[[{"subnet":"10.9.0.0/24"}]]}}"#,
        )
        .expect("valid");
        assert_eq!(conf.ipam, Ipam::Delegated { plugin: "host-local".into() });
    }

    #[test]
    fn chaining_is_generic_veth_alone_with_no_addressing_of_its_own() {
        let base = r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","chaining":"generic-veth""#;
        let with = |extra: &str| parse_str(&format!("{base}{extra}}}"));
        assert_eq!(with("").expect("valid").ipam, Ipam::Previous);
        for (extra, named) in [
            (r#","subnet":"10.0.0.0/24""#, "subnet"),
            (r#","gateway":"10.0.0.1""#, "gateway"),
            (r#","ipam":{"type":"host-local"}"#, "ipam"),
            (r#","mtu":1400"#, "mtu"),
            (r#","dataDir":"/x""#, "dataDir"),
            (r#","agent":false"#, "agent"),
            (r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}"#, "portMappings"),
            (r#","runtimeConfig":{"bandwidth":{"ingressRate":1000,"ingressBurst":1000}}"#, "bandwidth"),
        ] {
            let err = with(extra).expect_err("refused");
            assert!(err.code == INVALID_NETWORK_CONFIG && err.msg.contains(named), "{extra}: {err}");
        }
        let err = parse_str(r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","chaining":"veth"}"#)
            .expect_err("unknown mode");
        assert!(err.code == INVALID_NETWORK_CONFIG && err.msg.contains("\"veth\""), "{err}");
    }

    #[test]
    fn the_agent_socket_defaults_and_can_be_moved_or_turned_off() {
        let base = r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24""#;
        let with = |extra: &str| parse_str(&format!("{base}{extra}}}"));
        assert_eq!(with("").expect("valid").agent_socket, Some(PathBuf::from(DEFAULT_AGENT_SOCKET)));
        assert_eq!(with(r#","agentSocket":"/x/a.sock""#).expect("valid").agent_socket, Some("/x/a.sock".into()));
        assert_eq!(with(r#","agent":false"#).expect("valid").agent_socket, None);
        let err = with(r#","agentSocket":"a.sock""#).expect_err("relative");
        assert!(err.code == INVALID_NETWORK_CONFIG && err.msg.contains("a.sock"), "{err}");
        assert_eq!(with(r#","agent":false,"agentSocket":"/a""#).expect_err("both").code, INVALID_NETWORK_CONFIG);
        assert_eq!(with(r#","agent":"no""#).expect_err("type").code, INVALID_NETWORK_CONFIG);
    }
}
