//! Handing a container's endpoint to the host agent: who it is (namespace,
//! name, labels from what the runtime passed) and where it is (veth, address,
//! MAC). The agent is reached through [`AgentLink`], which the binary
//! implements over the agent's gRPC socket: this crate does no RPC.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde_json::Value;

use crate::error::{CniError, INVALID_NETWORK_CONFIG};

/// The namespace of a container the runtime names none for.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A container's endpoint, as the agent registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host_interface: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// Dual-stack: the container's IPv6 address.
    pub ip6: Option<Ipv6Addr>,
    pub container_mac: String,
    pub netns: String,
    pub container_id: String,
    pub ifname: String,
    /// The network's name (the config's `name`).
    pub network: String,
    /// `runtimeConfig.portMappings`.
    pub port_mappings: Vec<PortMapping>,
    /// Chained after the plugin that made the veth: the agent judges and
    /// reports its packets but leaves their forwarding to that plugin.
    pub chained: bool,
}

/// One published port, as the runtime wrote it (`podman run -p 8082:80`
/// sends `{"hostPort": 8082, "containerPort": 80, "protocol": "tcp"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    /// Only this address of the host; None: every address.
    pub host_ip: Option<std::net::IpAddr>,
}

/// The host agent, as the plugin talks to it. The calls return once the
/// agent has done it, or fail with the CNI error to report (11 when the
/// agent did not answer in time).
pub trait AgentLink {
    fn add(&self, socket: &Path, endpoint: &Endpoint) -> Result<(), CniError>;
    fn delete(&self, socket: &Path, host_interface: &str) -> Result<(), CniError>;
    /// The endpoint the agent has on `host_interface`, if any (CHECK).
    fn get(&self, socket: &Path, host_interface: &str) -> Result<Option<Registered>, CniError>;
    /// Every endpoint the agent has, with the attachment it was added for (GC).
    fn list(&self, socket: &Path) -> Result<Vec<Attached>, CniError>;
}

/// An endpoint the agent has, and the attachment that added it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub host_interface: String,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub chained: bool,
}

/// An endpoint as the agent has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub namespace: String,
    pub name: String,
    /// The address, as the agent wrote it.
    pub ip: String,
}

/// Who a container is: Kubernetes' `K8S_POD_NAMESPACE` and `K8S_POD_NAME`
/// from `CNI_ARGS` (else `default` and the container id), and its labels.
pub fn identity(args: Option<&str>, container_id: &str) -> (String, String) {
    let mut namespace = DEFAULT_NAMESPACE.to_string();
    let mut name = container_id.to_string();
    for (key, value) in args.unwrap_or_default().split(';').filter_map(|p| p.split_once('=')) {
        match key {
            "K8S_POD_NAMESPACE" if !value.is_empty() => namespace = value.to_string(),
            "K8S_POD_NAME" if !value.is_empty() => name = value.to_string(),
            _ => {}
        }
    }
    (namespace, name)
}

/// A label list as the CNI conventions write it: `[{"key": K, "value": V}]`.
fn label_list(field: &str, list: &Value, labels: &mut BTreeMap<String, String>) -> Result<(), CniError> {
    let invalid = |why: String| CniError::new(INVALID_NETWORK_CONFIG, format!("{field}: {why}"));
    let items = list.as_array().ok_or_else(|| invalid(format!("{list} is not a list of {{key, value}}")))?;
    for item in items {
        let (Some(key), Some(value)) =
            (item.get("key").and_then(Value::as_str), item.get("value").and_then(Value::as_str))
        else {
            return Err(invalid(format!("{item} is not {{\"key\": string, \"value\": string}}")));
        };
        let bad = |s: &str| s.bytes().any(|b| b.is_ascii_control() || b == b' ');
        if key.is_empty() || key.len() > 317 || bad(key) || value.len() > 63 || bad(value) {
            return Err(invalid(format!("label {key:?}={value:?}: not a Kubernetes label")));
        }
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(())
}

/// The container's labels: `args.cni.labels` (the CNI conventions'), then
/// `runtimeConfig.labels` (same form; a later key wins).
pub fn labels(args: Option<&Value>, runtime_config: Option<&Value>) -> Result<BTreeMap<String, String>, CniError> {
    let mut labels = BTreeMap::new();
    if let Some(list) = args.and_then(|a| a.get("cni")).and_then(|c| c.get("labels")) {
        label_list("args.cni.labels", list, &mut labels)?;
    }
    if let Some(list) = runtime_config.and_then(|r| r.get("labels")) {
        label_list("runtimeConfig.labels", list, &mut labels)?;
    }
    Ok(labels)
}

/// The container's published ports (`runtimeConfig.portMappings`, the
/// `portMappings` capability's form): ports 1 to 65535, `protocol` tcp or
/// udp (tcp when absent), `hostIP` an address or absent (`""` and
/// `0.0.0.0` mean every address). Which addresses are the host's is the
/// agent's to judge.
pub fn port_mappings(runtime_config: Option<&Value>) -> Result<Vec<PortMapping>, CniError> {
    let Some(list) = runtime_config.and_then(|r| r.get("portMappings")) else { return Ok(Vec::new()) };
    let invalid = |why: String| CniError::new(INVALID_NETWORK_CONFIG, format!("runtimeConfig.portMappings: {why}"));
    let items = list.as_array().ok_or_else(|| invalid(format!("{list} is not a list")))?;
    let mut out = Vec::new();
    for item in items {
        let Some(fields) = item.as_object() else { return Err(invalid(format!("{item} is not an object"))) };
        if let Some(key) =
            fields.keys().find(|k| !["hostPort", "containerPort", "protocol", "hostIP"].contains(&k.as_str()))
        {
            return Err(invalid(format!("{item}: unknown field {key:?}")));
        }
        let port = |key: &str| -> Result<u16, CniError> {
            fields
                .get(key)
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(format!("{item}: {key} must be a port, 1 to 65535")))
        };
        let protocol = match fields.get("protocol").map(|p| p.as_str().map(str::to_ascii_lowercase)) {
            None => "tcp".to_string(),
            Some(Some(p)) if p == "tcp" || p == "udp" => p,
            Some(_) => return Err(invalid(format!("{item}: protocol must be \"tcp\" or \"udp\""))),
        };
        let host_ip = match fields.get("hostIP") {
            None => None,
            Some(Value::String(ip)) if ip.is_empty() => None,
            Some(Value::String(ip)) => match ip.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_unspecified() => None,
                Ok(ip) => Some(ip),
                Err(_) => return Err(invalid(format!("{item}: hostIP {ip:?} is not an IP address"))),
            },
            Some(_) => return Err(invalid(format!("{item}: hostIP must be a string"))),
        };
        out.push(PortMapping {
            host_port: port("hostPort")?,
            container_port: port("containerPort")?,
            protocol,
            host_ip,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kubernetes_args_name_the_endpoint_else_default_and_the_container_id() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc";
        assert_eq!(identity(Some(args), "c1"), ("shop".into(), "web-1".into()));
        assert_eq!(identity(None, "c1"), ("default".into(), "c1".into()));
        assert_eq!(identity(Some("K8S_POD_NAME="), "c1"), ("default".into(), "c1".into()));
    }

    #[test]
    fn labels_come_from_args_and_runtime_config_and_bad_ones_are_named() {
        let args = json!({"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "tier", "value": "a"}]}});
        let runtime = json!({"labels": [{"key": "tier", "value": "b"}]});
        let got = labels(Some(&args), Some(&runtime)).expect("valid");
        assert_eq!(got, BTreeMap::from([("app".into(), "web".into()), ("tier".into(), "b".into())]));
        assert!(labels(None, None).expect("valid").is_empty());
        let err = labels(Some(&json!({"cni": {"labels": {"app": "web"}}})), None).expect_err("an error");
        assert_eq!(err.code, INVALID_NETWORK_CONFIG);
        assert!(err.msg.starts_with("args.cni.labels"), "{}", err.msg);
        let err = labels(None, Some(&json!({"labels": [{"key": "a b", "value": "x"}]}))).expect_err("an error");
        assert!(err.msg.contains("\"a b\""), "{}", err.msg);
    }

    #[test]
    fn port_mappings_are_read_as_podman_sends_them_and_bad_ones_are_named() {
        let runtime = json!({"portMappings": [
            {"hostPort": 8082, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 53, "containerPort": 5353, "protocol": "UDP", "hostIP": "192.0.2.10"},
            {"hostPort": 9000, "containerPort": 9000, "hostIP": "0.0.0.0"},
        ]});
        let got = port_mappings(Some(&runtime)).expect("valid");
        assert_eq!(
            got,
            [
                PortMapping { host_port: 8082, container_port: 80, protocol: "tcp".into(), host_ip: None },
                PortMapping {
                    host_port: 53,
                    container_port: 5353,
                    protocol: "udp".into(),
                    host_ip: Some("192.0.2.10".parse().expect("valid"))
                },
                PortMapping { host_port: 9000, container_port: 9000, protocol: "tcp".into(), host_ip: None },
            ]
        );
        assert!(port_mappings(None).expect("valid").is_empty());
        assert!(port_mappings(Some(&json!({}))).expect("valid").is_empty());
        for (bad, named) in [
            (json!({"portMappings": {"hostPort": 1}}), "is not a list"),
            (json!({"portMappings": [{"hostPort": 0, "containerPort": 80}]}), "hostPort must be a port"),
            (json!({"portMappings": [{"hostPort": 80, "containerPort": 70000}]}), "containerPort must be a port"),
            (json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]}), "protocol"),
            (json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "::ffff:1.2.3.4x"}]}), "hostIP"),
            (json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "hostport": 1}]}), "\"hostport\""),
        ] {
            let err = port_mappings(Some(&bad)).expect_err("an error");
            assert_eq!(err.code, INVALID_NETWORK_CONFIG);
            assert!(err.msg.starts_with("runtimeConfig.portMappings") && err.msg.contains(named), "{}", err.msg);
        }
    }
}
