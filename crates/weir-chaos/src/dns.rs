//! DNS faults: the selected pods' DNS queries (UDP, port 53) for chosen
//! names answered by the node's datapath itself, with NXDOMAIN or SERVFAIL,
//! or held by the delay line before they go on.
//!
//! Two documents of kind `DNSChaos`. Chaos Mesh's (`chaos-mesh.org/v1alpha1`)
//! as its users write it; `action: error` answers SERVFAIL, as Chaos Mesh's
//! DNS server does; `random` (a random address) is refused:
//!
//! ```yaml
//! apiVersion: chaos-mesh.org/v1alpha1
//! kind: DNSChaos
//! metadata: {name: api-dns, namespace: shop}
//! spec:
//!   action: error
//!   patterns: [api.shop.example, "github.*", "chaos-mes?.org"]
//!   mode: all
//!   selector: {labelSelectors: {app: web}}
//!   duration: 1m
//! ```
//!
//! Weir's own (`chaos.weir.dev/v1alpha1`) for what Chaos Mesh has no field
//! for: `action: nxdomain`, `servfail` or `delay` (with `delay`, Chaos
//! Mesh's NetworkChaos delay fields), and `percent`, the share of matching
//! queries affected.
//!
//! Patterns as Chaos Mesh defines them: a name, `?` for any one character,
//! `*` only at the end for any rest; none at all means every name. Names
//! are compared without their trailing dot and regardless of case.

use serde::Deserialize;
use serde_json::Value;
use weir_spec::{err, ObjectMeta, SpecError};

use crate::spec::{
    mode, percent_fraction, selector, DelaySpec, Direction, Experiment, Fault, PodSelection, PodSelectorSpec,
};

pub const KIND: &str = "DNSChaos";
/// Weir's own DNSChaos.
pub const WEIR_API_VERSION: &str = "chaos.weir.dev/v1alpha1";
/// Most patterns one experiment holds (the kernel's entry has room for so many).
pub const MAX_PATTERNS: usize = 8;
/// Longest name a pattern may be (DNS's limit, without the trailing dot).
pub const MAX_NAME: usize = 253;

/// DNS response codes the kernel answers with.
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;

/// What a matching query gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsAnswer {
    /// An answer from the node with this response code, no records.
    Rcode(u8),
    /// The query held by the delay line, then sent on to its server.
    Delay(crate::delay::DelayModel),
}

/// One pattern as the kernel holds it: lower-case text (`?` any one
/// character) and, when `wildcard`, a prefix (the `*` dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsPattern {
    pub text: [u8; 256],
    pub len: u16,
    pub wildcard: bool,
}

/// At most [`MAX_PATTERNS`]; none: every name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsPatterns {
    pub items: [DnsPattern; MAX_PATTERNS],
    pub count: usize,
}

impl DnsPatterns {
    pub fn iter(&self) -> impl Iterator<Item = &DnsPattern> {
        self.items[..self.count].iter()
    }

    /// Whether a query for `name` is affected: the kernel's rule, written
    /// once more for the tests and for `weir chaos list`.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let name = name.as_bytes();
        self.count == 0
            || self.iter().any(|p| {
                let text = &p.text[..p.len as usize];
                let long_enough = if p.wildcard { name.len() >= text.len() } else { name.len() == text.len() };
                long_enough && text.iter().zip(name).all(|(t, n)| *t == b'?' || t == n)
            })
    }

    /// The patterns as written (lower-cased).
    pub fn texts(&self) -> Vec<String> {
        self.iter()
            .map(|p| {
                let text = String::from_utf8_lossy(&p.text[..p.len as usize]).into_owned();
                if p.wildcard {
                    text + "*"
                } else {
                    text
                }
            })
            .collect()
    }
}

/// Chaos Mesh's pattern rules: letters, digits, `-`, `_`, `.`, `?`, and `*`
/// at the end only.
pub fn patterns(field: &str, written: &[String]) -> Result<DnsPatterns, SpecError> {
    if written.len() > MAX_PATTERNS {
        return Err(err(field, format!("{} patterns: at most {MAX_PATTERNS} per experiment", written.len())));
    }
    let empty = DnsPattern { text: [0; 256], len: 0, wildcard: false };
    let mut out = DnsPatterns { items: [empty; MAX_PATTERNS], count: written.len() };
    for (i, pattern) in written.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let lower = pattern.trim().to_ascii_lowercase();
        let (body, wildcard) = match lower.strip_suffix('*') {
            Some(body) => (body, true),
            None => (lower.strip_suffix('.').unwrap_or(&lower), false),
        };
        if body.is_empty() && !wildcard {
            return Err(err(at, "an empty pattern (\"*\" is every name)"));
        }
        if body.contains('*') {
            return Err(err(at, format!("{pattern:?}: the wildcard * may only end a pattern (as in Chaos Mesh)")));
        }
        if let Some(bad) = body.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.?".contains(*c))) {
            return Err(err(at, format!("{pattern:?}: {bad:?} is not allowed in a name pattern")));
        }
        if body.len() > MAX_NAME {
            return Err(err(at, format!("{} characters: a name has at most {MAX_NAME}", body.len())));
        }
        let item = &mut out.items[i];
        item.text[..body.len()].copy_from_slice(body.as_bytes());
        item.len = body.len() as u16;
        item.wildcard = wildcard;
    }
    Ok(out)
}

/// The (sender, unspecified) pairs of DNS sources: each selected pod's
/// addresses, whatever server it asks.
pub fn sources(
    selected: &[(std::net::Ipv4Addr, Option<std::net::Ipv6Addr>)],
) -> Vec<(std::net::IpAddr, std::net::IpAddr)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut out = Vec::new();
    for (v4, v6) in selected {
        out.push((IpAddr::V4(*v4), IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        if let Some(v6) = v6 {
            out.push((IpAddr::V6(*v6), IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        }
    }
    out
}

/// Chaos Mesh's `DNSChaos`.
pub type ChaosMeshDnsChaos = crate::spec::ChaosDocument<ChaosMeshDnsSpec>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChaosMeshDnsSpec {
    pub action: String,
    #[serde(default)]
    pub patterns: Vec<String>,
    pub mode: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub selector: PodSelectorSpec,
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub container_names: Option<Value>,
    #[serde(default)]
    pub remote_cluster: Option<Value>,
}

/// Weir's `DNSChaos`.
pub type WeirDnsChaos = crate::spec::ChaosDocument<WeirDnsSpec>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeirDnsSpec {
    pub action: String,
    #[serde(default)]
    pub patterns: Vec<String>,
    /// The share of matching queries affected; all when left out.
    #[serde(default)]
    pub percent: Option<String>,
    #[serde(default)]
    pub delay: Option<DelaySpec>,
    pub mode: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub selector: PodSelectorSpec,
    #[serde(default)]
    pub duration: Option<String>,
}

/// Parses either DNSChaos, told apart by its apiVersion.
pub fn parse(yaml: &str) -> Result<Experiment, SpecError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        #[serde(default)]
        api_version: String,
    }
    let peek: Peek = weir_spec::parse_yaml(yaml)?;
    if peek.api_version == WEIR_API_VERSION {
        weir_spec::parse_yaml::<WeirDnsChaos>(yaml)?.validate()
    } else {
        weir_spec::parse_yaml::<ChaosMeshDnsChaos>(yaml)?.validate()
    }
}

fn experiment(
    metadata: &ObjectMeta,
    fault: Fault,
    (selector_spec, mode_text, value): (&PodSelectorSpec, &str, Option<&str>),
    duration: Option<&str>,
) -> Result<Experiment, SpecError> {
    let namespace = metadata.namespace.clone();
    let selection = PodSelection {
        selector: selector("spec.selector", selector_spec, &namespace)?,
        mode: mode("spec", mode_text, value)?,
    };
    Ok(Experiment {
        name: metadata.name.clone(),
        namespace,
        fault,
        // No peers: the selection stands in as its own target.
        target: selection.clone(),
        selection,
        direction: Direction::To,
        duration: crate::spec::duration_of("spec.duration", duration)?,
    })
}

impl ChaosMeshDnsChaos {
    pub fn validate(&self) -> Result<Experiment, SpecError> {
        self.check_header(crate::spec::API_VERSION, KIND)?;
        let spec = &self.spec;
        match spec.action.as_str() {
            "error" => {}
            "random" => {
                return Err(err(
                    "spec.action",
                    "\"random\" is not supported by Weir (error; Weir's own DNSChaos, chaos.weir.dev/v1alpha1, answers nxdomain, servfail or delays)",
                ))
            }
            other => return Err(err("spec.action", format!("{other:?} is not a DNSChaos action (error, random)"))),
        }
        let refused =
            [("containerNames", spec.container_names.is_some()), ("remoteCluster", spec.remote_cluster.is_some())];
        if let Some((field, _)) = refused.iter().find(|(_, present)| *present) {
            return Err(err(
                format!("spec.{field}"),
                "not supported by Weir (it answers the pod's queries on the node, for all its containers)",
            ));
        }
        let fault = Fault::Dns(DnsFault {
            answer: DnsAnswer::Rcode(RCODE_SERVFAIL),
            probability: u32::MAX,
            patterns: patterns("spec.patterns", &spec.patterns)?,
        });
        experiment(&self.metadata, fault, (&spec.selector, &spec.mode, spec.value.as_deref()), spec.duration.as_deref())
    }
}

impl WeirDnsChaos {
    pub fn validate(&self) -> Result<Experiment, SpecError> {
        self.check_header(WEIR_API_VERSION, KIND)?;
        let spec = &self.spec;
        let answer = match spec.action.as_str() {
            "nxdomain" => DnsAnswer::Rcode(RCODE_NXDOMAIN),
            "servfail" => DnsAnswer::Rcode(RCODE_SERVFAIL),
            "delay" => {
                let delay = spec.delay.as_ref().ok_or_else(|| err("spec.delay", "action delay needs delay.latency"))?;
                DnsAnswer::Delay(crate::params::delay_model(delay)?)
            }
            other => return Err(err("spec.action", format!("{other:?}: must be nxdomain, servfail or delay"))),
        };
        if spec.delay.is_some() && !matches!(answer, DnsAnswer::Delay(_)) {
            return Err(err("spec.delay", "only with action delay"));
        }
        let probability = match &spec.percent {
            Some(text) => percent_fraction("spec.percent", text)?,
            None => u32::MAX,
        };
        let fault = Fault::Dns(DnsFault { answer, probability, patterns: patterns("spec.patterns", &spec.patterns)? });
        experiment(&self.metadata, fault, (&spec.selector, &spec.mode, spec.value.as_deref()), spec.duration.as_deref())
    }
}

/// A DNS fault: which queries (patterns), how many of them (`probability`
/// of 2^32, u32::MAX all), and what they get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsFault {
    pub answer: DnsAnswer,
    pub probability: u32,
    pub patterns: DnsPatterns,
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
