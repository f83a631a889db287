//! A VIP's `healthCheck`: how the agent probes each of its reals, through
//! the encapsulation the traffic takes.
//!
//! ```yaml
//! healthCheck:
//!   type: HTTP        # TCP, HTTP, DNS, UDP or None
//!   path: /healthz    # HTTP: GET it; a 2xx or 3xx status passes
//!   payload: ping     # UDP: send it; any datagram back passes
//!   port: 8080        # the port probed (default: the VIP's)
//! ```
//!
//! Absent, a TCP VIP with a port is probed by a TCP connection and any
//! other VIP is not probed: a UDP service answers only what it
//! understands, so its probe is one the user names (DNS: a query for the
//! root's NS records, passing on any answer with the query's id). The
//! value is the socket load balancer's [`HealthCheck`], the one the
//! annotations `weir.dev/health-check` and `weir.dev/udp-health-check` give.

use serde::{Deserialize, Serialize};
use weir_service::table::MAX_UDP_PROBE_PAYLOAD;
use weir_service::HealthCheck;
use weir_spec::{err, SpecError};

/// The `healthCheck` of a VIP, as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A VIP's validated probe: what, and at which port (0: the VIP's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub check: HealthCheck,
    pub port: u16,
}

/// The probe of a VIP of protocol `proto` (6, 17) and port `vip_port`
/// (0: any); `field` is the VIP's path. `local` VIPs have no reals to probe.
pub fn validate(
    field: &str,
    raw: Option<&HealthCheckSpec>,
    proto: u8,
    vip_port: u16,
    local: bool,
) -> Result<Probe, SpecError> {
    let Some(raw) = raw else {
        let check = if proto == 6 && vip_port != 0 && !local { HealthCheck::Tcp } else { HealthCheck::None };
        return Ok(Probe { check, port: 0 });
    };
    let field = format!("{field}.healthCheck");
    let check = match raw.kind.as_str() {
        "None" => HealthCheck::None,
        "TCP" => HealthCheck::Tcp,
        "HTTP" => {
            let path =
                raw.path.as_deref().ok_or_else(|| err(format!("{field}.path"), "HTTP needs a path, like /healthz"))?;
            if !path.starts_with('/') || path.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err(err(format!("{field}.path"), format!("{path:?}: a path starts with / and has no spaces")));
            }
            HealthCheck::Http { path: path.to_string() }
        }
        "DNS" => HealthCheck::Dns,
        "UDP" => {
            let payload = raw.payload.as_deref().unwrap_or_default();
            if payload.is_empty() || payload.len() > MAX_UDP_PROBE_PAYLOAD {
                return Err(err(
                    format!("{field}.payload"),
                    format!("UDP needs a payload of 1 to {MAX_UDP_PROBE_PAYLOAD} bytes"),
                ));
            }
            HealthCheck::Udp { payload: payload.to_string() }
        }
        other => return Err(err(format!("{field}.type"), format!("{other:?}: must be TCP, HTTP, DNS, UDP or None"))),
    };
    if raw.path.is_some() && !matches!(check, HealthCheck::Http { .. }) {
        return Err(err(format!("{field}.path"), "only an HTTP probe has a path"));
    }
    if raw.payload.is_some() && !matches!(check, HealthCheck::Udp { .. }) {
        return Err(err(format!("{field}.payload"), "only a UDP probe has a payload"));
    }
    let over_udp = matches!(check, HealthCheck::Dns | HealthCheck::Udp { .. });
    match (&check, proto) {
        (HealthCheck::None, _) => {
            if raw.port.is_some() {
                return Err(err(format!("{field}.port"), "type None probes nothing: no port"));
            }
            return Ok(Probe { check, port: 0 });
        }
        (_, 6) if over_udp => {
            return Err(err(format!("{field}.type"), format!("{}: a TCP VIP is probed by TCP or HTTP", raw.kind)))
        }
        (_, 17) if !over_udp => {
            return Err(err(format!("{field}.type"), format!("{}: a UDP VIP is probed by DNS or UDP", raw.kind)))
        }
        _ => {}
    }
    if local {
        return Err(err(field, "a local VIP has no reals to probe"));
    }
    let port = match raw.port {
        Some(0) => return Err(err(format!("{field}.port"), "must be 1-65535")),
        Some(port) => port,
        None if vip_port == 0 => {
            return Err(err(format!("{field}.port"), "the VIP takes any port: name the port probed"))
        }
        None => 0,
    };
    Ok(Probe { check, port })
}

/// How `weir lb status` names a probe: `TCP`, `HTTP /healthz`, `DNS`, `UDP`.
pub fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::None => "none".into(),
        HealthCheck::Tcp => "TCP".into(),
        HealthCheck::Http { path } => format!("HTTP {path}"),
        HealthCheck::Dns => "DNS".into(),
        HealthCheck::Udp { .. } => "UDP".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    fn doc(vip: &str) -> String {
        format!("apiVersion: weir.dev/v1alpha1\nkind: XdpLoadBalancer\nmetadata: {{name: edge}}\nspec:\n  vips:\n  - {vip}\n")
    }

    fn probe_of(vip: &str) -> Probe {
        let lb = spec::parse(&doc(vip)).unwrap_or_else(|e| panic!("{vip}: {e}"));
        lb.vips[0].probe.clone()
    }

    #[test]
    fn defaults_probe_tcp_vips_with_a_port_and_nothing_else() {
        let tcp = probe_of("{name: a, address: 198.51.100.1, port: 80, protocol: TCP}");
        assert_eq!(tcp, Probe { check: HealthCheck::Tcp, port: 0 });
        for vip in [
            "{name: a, address: 198.51.100.1, protocol: TCP}",
            "{name: a, address: 198.51.100.1, port: 53, protocol: UDP}",
            "{name: a, address: 198.51.100.1, port: 80, protocol: TCP, local: true}",
        ] {
            assert_eq!(probe_of(vip).check, HealthCheck::None, "{vip}");
        }
    }

    #[test]
    fn every_probe_is_written_as_users_write_it() {
        let cases = [
            (
                "port: 80, protocol: TCP, healthCheck: {type: HTTP, path: /healthz}",
                HealthCheck::Http { path: "/healthz".into() },
                0,
            ),
            ("protocol: TCP, healthCheck: {type: TCP, port: 8080}", HealthCheck::Tcp, 8080),
            ("port: 53, protocol: UDP, healthCheck: {type: DNS}", HealthCheck::Dns, 0),
            (
                "port: 9, protocol: UDP, healthCheck: {type: UDP, payload: ping, port: 7}",
                HealthCheck::Udp { payload: "ping".into() },
                7,
            ),
            ("port: 80, protocol: TCP, healthCheck: {type: None}", HealthCheck::None, 0),
        ];
        for (fields, check, port) in cases {
            let probe = probe_of(&format!("{{name: a, address: 198.51.100.1, {fields}}}"));
            assert_eq!(probe, Probe { check, port }, "{fields}");
        }
    }

    #[test]
    fn the_documents_example_is_valid() {
        let page = include_str!("../../../docs/lb.md");
        let example = page.split("```yaml\n").find(|b| b.contains("kind: XdpLoadBalancer")).expect("an example");
        let lb = spec::parse(example.split("```").next().expect("a block")).expect("the example is valid");
        assert_eq!(lb.vips[0].probe.check, HealthCheck::Http { path: "/healthz".into() });
        assert_eq!(lb.vips[1].probe.check, HealthCheck::Udp { payload: "ping".into() });
    }

    #[test]
    fn bad_probes_are_refused_by_field() {
        let at = "spec.vips[0].healthCheck";
        let cases = [
            ("port: 80, protocol: TCP, healthCheck: {type: HTTP, path: /, method: GET}", at.to_string()),
            ("port: 80, protocol: TCP, healthCheck: {path: /}", at.to_string()),
            ("port: 80, protocol: TCP, healthCheck: {type: http, path: /}", format!("{at}.type")),
            ("port: 80, protocol: TCP, healthCheck: {type: HTTP}", format!("{at}.path")),
            ("port: 80, protocol: TCP, healthCheck: {type: HTTP, path: healthz}", format!("{at}.path")),
            ("port: 80, protocol: TCP, healthCheck: {type: HTTP, path: \"/a b\"}", format!("{at}.path")),
            ("port: 80, protocol: TCP, healthCheck: {type: TCP, path: /}", format!("{at}.path")),
            ("port: 9, protocol: UDP, healthCheck: {type: UDP}", format!("{at}.payload")),
            ("port: 9, protocol: UDP, healthCheck: {type: UDP, payload: \"\"}", format!("{at}.payload")),
            (
                &format!("port: 9, protocol: UDP, healthCheck: {{type: UDP, payload: {}}}", "x".repeat(513)),
                format!("{at}.payload"),
            ),
            ("port: 53, protocol: UDP, healthCheck: {type: DNS, payload: x}", format!("{at}.payload")),
            ("port: 80, protocol: TCP, healthCheck: {type: DNS}", format!("{at}.type")),
            ("port: 53, protocol: UDP, healthCheck: {type: TCP}", format!("{at}.type")),
            ("port: 53, protocol: UDP, healthCheck: {type: HTTP, path: /}", format!("{at}.type")),
            ("port: 80, protocol: TCP, healthCheck: {type: None, port: 80}", format!("{at}.port")),
            ("port: 80, protocol: TCP, healthCheck: {type: TCP, port: 0}", format!("{at}.port")),
            ("port: 80, protocol: TCP, healthCheck: {type: TCP, port: 70000}", at.to_string()),
            ("protocol: TCP, healthCheck: {type: TCP}", format!("{at}.port")),
            ("port: 80, protocol: TCP, local: true, healthCheck: {type: TCP}", at.to_string()),
        ];
        for (fields, field) in cases {
            let yaml = doc(&format!("{{name: a, address: 198.51.100.1, {fields}}}"));
            let error = spec::parse(&yaml).expect_err(fields);
            assert!(error.field.starts_with(&field), "{fields}\n=> {error} (expected {field})");
        }
    }
}
