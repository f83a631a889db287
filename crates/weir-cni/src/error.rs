//! CNI error objects: the spec's well-known codes and Weir's own (100 and up).

use serde::Serialize;

/// The CNI spec's incompatible-version code.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// A field of the network config the plugin does not support.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// The container is unknown or does not exist.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// A required environment variable is missing or invalid.
pub const INVALID_ENVIRONMENT: u32 = 4;
/// An I/O failure (state dir, netns file).
pub const IO_FAILURE: u32 = 5;
/// stdin (or a delegated plugin's output) could not be decoded.
pub const DECODE_FAILURE: u32 = 6;
/// The network config is invalid.
pub const INVALID_NETWORK_CONFIG: u32 = 7;
/// A transient condition (the IPAM lock stayed held); the runtime may retry.
pub const TRY_AGAIN_LATER: u32 = 11;
/// STATUS: the plugin cannot add containers now.
pub const NOT_AVAILABLE: u32 = 50;
/// Weir: CHECK found the attachment differs from what ADD made.
pub const CHECK_MISMATCH: u32 = 100;
/// Weir: a netlink request failed.
pub const NETLINK_FAILURE: u32 = 101;
/// Weir: the subnet has no free address.
pub const ADDRESSES_EXHAUSTED: u32 = 102;
/// Weir: the delegated IPAM plugin failed or could not be run.
pub const DELEGATE_FAILURE: u32 = 103;
/// Weir: the host agent answered, refusing the endpoint.
pub const AGENT_REFUSED: u32 = 104;

/// A CNI error object, printed on stdout with a nonzero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl std::fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    /// The error object as the spec prints it, in `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut value = serde_json::json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            value["details"] = serde_json::Value::String(self.details.clone());
        }
        value
    }
}
