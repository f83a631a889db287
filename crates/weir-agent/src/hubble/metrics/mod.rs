//! Hubble's metrics on the agent's Prometheus endpoint, off unless
//! `--hubble-metrics` names them.
//!
//! - [`config`]: Hubble's `--hubble-metrics` syntax (pure).
//! - [`registry`]: counting Flows and rendering the families (pure).
//! - [`l7`]: what the `dns`, `http` and `httpV2` families count (pure).

pub mod config;
pub mod l7;
pub mod registry;

use weir_bpf::api::{flow_verdict, policy_match};
use weir_bpf::policy::FlowEvent;
use weir_policy::compile::Compiled;
use weir_policy::identity::ANY;

pub use config::{parse, MetricsConfig};
pub use registry::{Facts, HubbleMetrics};

/// Hubble's policy match type of each rule, by the shape of its policy-map
/// entries: whether they name peers (L3) and ports or protocols (L4).
pub fn rule_matches(compiled: &Compiled) -> Vec<&'static str> {
    let mut shape = vec![(false, false); compiled.rules.len()];
    for entry in compiled.endpoints.values().flat_map(|ep| &ep.entries) {
        if let Some(s) = shape.get_mut(entry.rule as usize) {
            s.0 |= entry.identity != ANY;
            s.1 |= entry.protocol != 0;
        }
    }
    shape
        .into_iter()
        .map(|s| match s {
            (true, true) => "l3-l4",
            (true, false) => "l3-only",
            (false, true) => "l4-only",
            (false, false) => "all",
        })
        .collect()
}

/// What the metrics need beyond the Flow: policy's match type when policy
/// judged the event (a rule decided, or the endpoint's default deny). Where
/// no policy selects the endpoint there is no verdict, as in Cilium, which
/// reports verdicts only where policy is enforced.
pub fn facts(event: &FlowEvent, rule_matches: &[&'static str]) -> Facts {
    let matched = match u32::from(event.policy_match) {
        policy_match::RULE => rule_matches.get(event.rule as usize).copied(),
        policy_match::DEFAULT_DENY if u32::from(event.verdict) == flow_verdict::DROPPED => Some("none"),
        _ => None,
    };
    Facts { policy_match: matched }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use weir_policy::compile::{EndpointPolicy, MapEntry, RuleRef};
    use weir_policy::Direction;

    #[test]
    fn policy_match_types_follow_the_rules_shape_and_default_deny() {
        let rule = |path: &str| RuleRef { policy: None, path: path.into(), deny: false };
        let entry = |identity, protocol, rule| MapEntry {
            identity,
            direction: Direction::Ingress,
            protocol,
            port: if protocol == 0 { 0 } else { 80 },
            port_prefix: if protocol == 0 { 0 } else { 16 },
            deny: false,
            rule,
        };
        let mut compiled = Compiled {
            rules: ["host", "peers and ports", "peers", "ports", "everything"].map(rule).to_vec(),
            ..Default::default()
        };
        compiled.endpoints.insert(
            Ipv4Addr::new(10, 0, 0, 2),
            EndpointPolicy {
                entries: vec![entry(1, 0, 0), entry(300, 6, 1), entry(300, 0, 2), entry(ANY, 6, 3), entry(ANY, 0, 4)],
                ..Default::default()
            },
        );
        let matches = rule_matches(&compiled);
        assert_eq!(matches, ["l3-only", "l3-l4", "l3-only", "l4-only", "all"]);
        let event = |verdict: u32, matched: u32, rule: u32| FlowEvent {
            time_ns: 0,
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            sport: 40000,
            dport: 80,
            protocol: 6,
            direction: Direction::Ingress,
            verdict: verdict as u8,
            policy_match: matched as u8,
            drop_reason: 0,
            src_identity: 300,
            dst_identity: 301,
            rule,
            ifindex: 0,
            tcp_flags: 0x02,
            icmp_type: 0,
            src_pid: 0,
            dst_pid: 0,
            owner_comm: [0; 16],
            l7: None,
        };
        let m = |e: FlowEvent| facts(&e, &matches).policy_match;
        assert_eq!(m(event(flow_verdict::FORWARDED, policy_match::RULE, 1)), Some("l3-l4"));
        assert_eq!(m(event(flow_verdict::DROPPED, policy_match::DEFAULT_DENY, 0)), Some("none"));
        assert_eq!(m(event(flow_verdict::FORWARDED, policy_match::NOT_ENFORCED, 0)), None, "no policy, no verdict");
        assert_eq!(m(event(flow_verdict::DROPPED, policy_match::NONE, 0)), None, "dropped before policy");
    }
}
