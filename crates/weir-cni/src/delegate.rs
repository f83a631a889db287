//! Delegated IPAM: the plugin named by `ipam.type`, found in `CNI_PATH` and
//! run as the spec says (the same environment, the same config on stdin).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::error::{CniError, DECODE_FAILURE, DELEGATE_FAILURE, INVALID_ENVIRONMENT};

/// What a delegated IPAM ADD gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// Dual-stack: the result's first IPv6 address and its gateway.
    pub v6: Option<crate::link::Addressing6>,
    pub dns: Option<serde_json::Value>,
}

/// The plugin's executable, from `CNI_PATH`.
pub fn find(plugin: &str, cni_path: Option<&str>) -> Result<PathBuf, CniError> {
    let path = cni_path.filter(|p| !p.is_empty()).ok_or_else(|| {
        CniError::new(INVALID_ENVIRONMENT, format!("CNI_PATH: needed to find the delegated IPAM plugin {plugin:?}"))
    })?;
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(plugin))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| CniError::new(DELEGATE_FAILURE, format!("IPAM plugin {plugin:?} not found in CNI_PATH {path}")))
}

/// Runs `executable` for `command` with `stdin`; its stdout on success, its
/// error object (or what it printed) otherwise.
pub fn exec(executable: &Path, command: &str, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let name = executable.display().to_string();
    let mut child = Command::new(executable)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(DELEGATE_FAILURE, format!("running IPAM plugin {name}")).with_details(e))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .map_err(|e| CniError::new(DELEGATE_FAILURE, format!("writing the config to {name}")).with_details(e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| CniError::new(DELEGATE_FAILURE, format!("waiting for {name}")).with_details(e))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    #[derive(serde::Deserialize)]
    struct ErrorObject {
        code: u32,
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<ErrorObject>(&output.stdout) {
        Ok(obj) => Err(CniError {
            code: obj.code,
            msg: format!("IPAM plugin {name} {command}: {}", obj.msg),
            details: obj.details,
        }),
        Err(_) => {
            Err(CniError::new(DELEGATE_FAILURE, format!("IPAM plugin {name} {command} failed ({})", output.status))
                .with_details(String::from_utf8_lossy(&output.stderr).trim()))
        }
    }
}

/// Whether the plugin speaks CNI 1.1 (STATUS and GC), from its VERSION.
pub fn speaks_1_1(executable: &Path) -> Result<bool, CniError> {
    let out = exec(executable, "VERSION", br#"{"cniVersion":"1.1.0"}"#)?;
    let value: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| CniError::new(DECODE_FAILURE, "decoding the IPAM plugin's VERSION").with_details(e))?;
    Ok(value["supportedVersions"].as_array().is_some_and(|v| v.iter().any(|s| s == "1.1.0")))
}

/// The first IPv4 address of an IPAM result, with its gateway, and its
/// first IPv6 address with its gateway (dual-stack ranges).
pub fn lease_of(result: &[u8]) -> Result<Lease, CniError> {
    let value: serde_json::Value = serde_json::from_slice(result)
        .map_err(|e| CniError::new(DECODE_FAILURE, "decoding the IPAM plugin's result").with_details(e))?;
    let ips = value["ips"].as_array().cloned().unwrap_or_default();
    let v6 = ips
        .iter()
        .find_map(|ip| Some((ip["address"].as_str()?.parse::<Ipv6Net>().ok()?, ip)))
        .map(|(net, ip)| {
            let gateway = ip["gateway"].as_str().and_then(|g| g.parse().ok()).ok_or_else(|| {
                CniError::new(DELEGATE_FAILURE, format!("IPAM result for {} has no IPv6 gateway", net.addr()))
            })?;
            Ok::<_, CniError>(crate::link::Addressing6 { address: net.addr(), gateway })
        })
        .transpose()?;
    for ip in ips {
        let Some(Ok(net)) = ip["address"].as_str().map(str::parse::<Ipv4Net>) else { continue };
        let gateway = ip["gateway"].as_str().and_then(|g| g.parse().ok()).ok_or_else(|| {
            CniError::new(DELEGATE_FAILURE, format!("IPAM result for {} has no IPv4 gateway", net.addr()))
        })?;
        return Ok(Lease { address: net.addr(), gateway, v6, dns: value.get("dns").cloned() });
    }
    Err(CniError::new(DELEGATE_FAILURE, "IPAM result has no IPv4 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_takes_the_first_ipv4_address_and_its_gateway() {
        let lease = lease_of(
            br#"{"cniVersion":"1.0.0","ips":[{"address":"fd00::5/64","gateway":"fd00::1"},
                {"address":"10.9.0.5/24","gateway":"10.9.0.1"}],"dns":{}}"#,
        )
        .expect("valid");
        assert_eq!(lease.address, Ipv4Addr::new(10, 9, 0, 5));
        assert_eq!(lease.gateway, Ipv4Addr::new(10, 9, 0, 1));
        let v6 = lease.v6.expect("dual-stack");
        assert_eq!((v6.address.to_string(), v6.gateway.to_string()), ("fd00::5".into(), "fd00::1".into()));
        assert_eq!(lease_of(br#"{"ips":[{"address":"10.9.0.5/24","gateway":"10.9.0.1"}]}"#).expect("valid").v6, None);
        let err = lease_of(br#"{"ips":[{"address":"10.9.0.5/24","gateway":"10.9.0.1"},{"address":"fd00::5/64"}]}"#)
            .expect_err("an error");
        assert!(err.code == DELEGATE_FAILURE && err.msg.contains("no IPv6 gateway"), "{err}");
        assert_eq!(lease_of(br#"{"ips":[{"address":"10.9.0.5/24"}]}"#).expect_err("an error").code, DELEGATE_FAILURE);
        assert_eq!(lease_of(b"nope").expect_err("an error").code, DECODE_FAILURE);
    }
}
