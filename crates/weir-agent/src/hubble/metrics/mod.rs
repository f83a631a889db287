//! Hubble's metrics on the agent's Prometheus endpoint, off unless
//! `--hubble-metrics` names them.
//!
//! - [`config`]: Hubble's `--hubble-metrics` syntax (pure).
//! - [`registry`]: counting Flows and rendering the families (pure).

pub mod config;
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
