//! Handing a container's endpoint to the host agent: who it is (namespace,
//! name, labels from what the runtime passed) and where it is (veth, address,
//! MAC). The agent is reached through [`AgentLink`], which the binary
//! implements over the agent's gRPC socket: this crate does no RPC.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
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
    pub container_mac: String,
    pub netns: String,
    pub container_id: String,
    pub ifname: String,
}

/// The host agent, as the plugin talks to it. Both calls return once the
/// agent has done it, or fail with the CNI error to report (11 when the
/// agent did not answer in time).
pub trait AgentLink {
    fn add(&self, socket: &Path, endpoint: &Endpoint) -> Result<(), CniError>;
    fn delete(&self, socket: &Path, host_interface: &str) -> Result<(), CniError>;
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
}
