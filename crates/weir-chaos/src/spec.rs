//! Chaos Mesh's `NetworkChaos`, as its users write it:
//!
//! ```yaml
//! apiVersion: chaos-mesh.org/v1alpha1
//! kind: NetworkChaos
//! metadata: {name: web-db-loss, namespace: shop}
//! spec:
//!   action: loss              # partition, loss, duplicate, corrupt
//!   mode: all                 # one, all, fixed, fixed-percent, random-max-percent
//!   selector: {labelSelectors: {app: web}}
//!   direction: to             # to (default), from, both
//!   target:
//!     mode: all
//!     selector: {labelSelectors: {app: db}}
//!   loss: {loss: "30", correlation: "25"}
//!   duration: 30s
//! ```
//!
//! Every field Chaos Mesh defines and Weir does not honour (other actions,
//! devices, most node selectors …) is refused by its path, as
//! is every field Chaos Mesh does not define.
//!
//! Weir's one extension is an annotation: [`CHECKSUM_ANNOTATION`]
//! (`left-wrong`, the default, or `fixed`) says what a corrupt experiment
//! does to the transport checksum.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use weir_spec::{err, LabelSelectorRequirement, ObjectMeta, SpecError};

pub const API_VERSION: &str = "chaos-mesh.org/v1alpha1";
pub const KIND: &str = "NetworkChaos";
/// What `action: corrupt` does to the checksum: `left-wrong` (the
/// default, netem's: a receiver that checks it discards the packet) or
/// `fixed` (the receiver gets the corrupted payload).
pub const CHECKSUM_ANNOTATION: &str = "chaos.weir.dev/corrupt-checksum";

/// A chaos document as written: Kubernetes' envelope around one kind's spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChaosDocument<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    /// What Chaos Mesh's controller wrote back (`kubectl get -o yaml`):
    /// output, never input, so it is read past.
    #[serde(default)]
    pub status: Option<Value>,
}

/// Chaos Mesh's `NetworkChaos`, as written.
pub type NetworkChaos = ChaosDocument<NetworkChaosSpec>;

/// Chaos Mesh's `NetworkChaosSpec`. Fields of type `Value` are the ones Weir
/// refuses when present: they exist so the refusal names them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkChaosSpec {
    pub action: String,
    pub mode: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub selector: PodSelectorSpec,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub target: Option<PodSelectorWithMode>,
    #[serde(default)]
    pub loss: Option<LossSpec>,
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub delay: Option<DelaySpec>,
    #[serde(default)]
    pub duplicate: Option<DuplicateSpec>,
    #[serde(default)]
    pub corrupt: Option<CorruptSpec>,
    #[serde(default)]
    pub bandwidth: Option<BandwidthSpec>,
    #[serde(default)]
    pub rate: Option<Value>,
    /// Addresses, CIDRs or domain names outside the cluster ([`crate::external`]).
    #[serde(default)]
    pub external_targets: Option<Vec<String>>,
    #[serde(default)]
    pub device: Option<Value>,
    #[serde(default)]
    pub target_device: Option<Value>,
    #[serde(default)]
    pub remote_cluster: Option<Value>,
}

/// Chaos Mesh's `PodSelector`: a selector with its own mode, as `target`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSelectorWithMode {
    #[serde(default)]
    pub selector: PodSelectorSpec,
    pub mode: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// Chaos Mesh's `PodSelectorSpec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSelectorSpec {
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub label_selectors: BTreeMap<String, String>,
    #[serde(default)]
    pub expression_selectors: Vec<LabelSelectorRequirement>,
    /// Namespace to pod names.
    #[serde(default)]
    pub pods: BTreeMap<String, Vec<String>>,
    /// Node names: pods on these nodes.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    #[serde(default)]
    pub node_selectors: Option<Value>,
    #[serde(default)]
    pub field_selectors: Option<Value>,
    #[serde(default)]
    pub annotation_selectors: Option<Value>,
    #[serde(default)]
    pub pod_phase_selectors: Option<Value>,
}

/// Chaos Mesh's `LossSpec`: percentages as strings ("25", "0.5").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LossSpec {
    pub loss: String,
    #[serde(default)]
    pub correlation: Option<String>,
}

/// Chaos Mesh's `DuplicateSpec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DuplicateSpec {
    pub duplicate: String,
    #[serde(default)]
    pub correlation: Option<String>,
}

/// Chaos Mesh's `CorruptSpec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CorruptSpec {
    pub corrupt: String,
    #[serde(default)]
    pub correlation: Option<String>,
}

/// Chaos Mesh's `DelaySpec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DelaySpec {
    pub latency: String,
    #[serde(default)]
    pub correlation: Option<String>,
    #[serde(default)]
    pub jitter: Option<String>,
    #[serde(default)]
    pub reorder: Option<ReorderSpec>,
}

/// Chaos Mesh's `ReorderSpec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReorderSpec {
    pub reorder: String,
    #[serde(default)]
    pub correlation: Option<String>,
    #[serde(default)]
    pub gap: Option<i64>,
}

/// Chaos Mesh's `BandwidthSpec`: tbf's parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BandwidthSpec {
    pub rate: String,
    pub limit: u32,
    pub buffer: u32,
    #[serde(default)]
    pub peakrate: Option<u64>,
    #[serde(default)]
    pub minburst: Option<u32>,
}

/// A token bucket, in tbf's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    /// Bytes per second.
    pub rate: u64,
    /// Bytes that may wait for tokens; more are dropped.
    pub limit: u32,
    /// The bucket's size in bytes (tbf's burst).
    pub buffer: u32,
    /// The peak rate (bytes per second) and its bucket's size in bytes.
    pub peak: Option<(u64, u32)>,
}

/// What an experiment does to the packets it matches.
// The DNS variant carries its patterns (2 KiB) as the kernel holds them, so
// that a Fault stays Copy; experiments are few and rarely copied.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every packet dropped.
    Partition,
    /// Each packet dropped with `probability` / 2^32; with `correlation` /
    /// 2^32 a packet shares the previous packet's fate (bursts, same rate).
    Loss { probability: u32, correlation: u32 },
    /// Each packet sent twice with `probability`, correlated as for loss.
    Duplicate { probability: u32, correlation: u32 },
    /// One bit of each packet's transport payload flipped with
    /// `probability`, correlated as for loss; the checksum repaired when
    /// `fix_checksum`, else left as it was.
    Corrupt { probability: u32, correlation: u32, fix_checksum: bool },
    /// Each sending pod's packets to its peers of the experiment go
    /// through one token bucket of its own.
    Bandwidth(Shaping),
    /// Each packet held by the node's delay line as the model says.
    Delay(crate::delay::DelayModel),
    /// Weir's SocketChaos: the selected pods' connect() calls to the
    /// targets fail with `errno`, each with `probability` / 2^32.
    ConnectError { errno: u32, probability: u32 },
    /// Chaos Mesh's PodChaos pod-kill: the selected pods' processes get
    /// SIGTERM, then SIGKILL after `grace` (at once when zero).
    PodKill { grace: Duration },
    /// Chaos Mesh's PodChaos pod-failure: the selected pods unavailable
    /// for the experiment's duration; Weir freezes their processes.
    PodFailure,
    /// Weir's SocketChaos tcp-reset: the pairs' established TCP sockets
    /// aborted once (their peers get a RST).
    TcpReset,
    /// DNSChaos: the selected pods' DNS queries for the patterns answered
    /// by the node, or delayed.
    Dns(crate::dns::DnsFault),
    /// Weir's ServiceChaos refuse: calls to a Service fail with `errno`,
    /// each with `probability` / 2^32.
    ServiceRefuse { errno: u32, probability: u32 },
    /// Weir's ServiceChaos blackhole: calls to a Service sent nowhere (the
    /// connection times out), each with `probability` / 2^32.
    ServiceBlackhole { probability: u32 },
}

/// Which way packets are affected, between the selected pods and the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the selected pods to the targets.
    To,
    /// From the targets to the selected pods.
    From,
    Both,
}

/// How many of the matching pods an experiment picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    One,
    All,
    Fixed(usize),
    /// Percent of the matching pods, rounded down.
    FixedPercent(u32),
    /// A random percent from 0 to this, of the matching pods, rounded down.
    RandomMaxPercent(u32),
}

/// Which pods: every field given must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Empty when `pods` names them.
    pub namespaces: Vec<String>,
    pub label_selector: weir_spec::LabelSelector,
    /// Namespace to names; empty: any name.
    pub pods: BTreeMap<String, Vec<String>>,
    /// Pods on these nodes; empty: any node.
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSelection {
    pub selector: Selector,
    pub mode: Mode,
}

/// A validated NetworkChaos: what Weir does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Experiment {
    pub name: String,
    pub namespace: String,
    pub fault: Fault,
    pub selection: PodSelection,
    pub direction: Direction,
    pub target: PodSelection,
    /// None: until it is stopped.
    pub duration: Option<Duration>,
}

/// What a NetworkChaos targets besides its selected pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// Whether `target` picks pods ([`Experiment::target`]); false when
    /// only `externalTargets` are given.
    pub pods: bool,
    /// `externalTargets`, with `direction: to`.
    pub external: Vec<crate::external::ExternalTarget>,
}

impl<S> ChaosDocument<S> {
    /// The checks every chaos document starts with: its apiVersion and kind
    /// against what they must be, and its name.
    pub(crate) fn check_header(&self, api_version: &str, kind: &str) -> Result<(), SpecError> {
        if self.api_version != api_version {
            return Err(err("apiVersion", format!("must be {api_version}, not {:?}", self.api_version)));
        }
        if self.kind != kind {
            return Err(err("kind", format!("must be {kind}, not {:?}", self.kind)));
        }
        weir_spec::check_dns_label("metadata.name", &self.metadata.name, 253)
    }
}

impl NetworkChaos {
    /// Parses and validates one document.
    pub fn parse(yaml: &str) -> Result<Experiment, SpecError> {
        let doc: NetworkChaos = weir_spec::parse_yaml(yaml)?;
        doc.validate()
    }

    pub fn validate(&self) -> Result<Experiment, SpecError> {
        self.validate_with_targets().map(|(experiment, _)| experiment)
    }

    /// Parses one document, with what it targets beyond its `target` pods.
    pub fn parse_with_targets(yaml: &str) -> Result<(Experiment, Targets), SpecError> {
        let doc: NetworkChaos = weir_spec::parse_yaml(yaml)?;
        doc.validate_with_targets()
    }

    /// The experiment, and whether it targets pods (`target`) and which
    /// addresses outside the cluster (`externalTargets`).
    pub fn validate_with_targets(&self) -> Result<(Experiment, Targets), SpecError> {
        self.check_header(API_VERSION, KIND)?;
        let namespace = self.metadata.namespace.clone();
        let spec = &self.spec;
        let refused = [
            ("rate", spec.rate.is_some()),
            ("device", spec.device.is_some()),
            ("targetDevice", spec.target_device.is_some()),
            ("remoteCluster", spec.remote_cluster.is_some()),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, present)| *present) {
            return Err(err(
                format!("spec.{field}"),
                "not supported by Weir (actions partition, loss, delay, duplicate, corrupt and bandwidth, to pods and external targets)",
            ));
        }
        // Each action's parameters belong to it alone.
        let parameters = [
            ("loss", spec.loss.is_some()),
            ("duplicate", spec.duplicate.is_some()),
            ("corrupt", spec.corrupt.is_some()),
            ("bandwidth", spec.bandwidth.is_some()),
            ("delay", spec.delay.is_some()),
        ];
        if let Some((field, _)) = parameters.iter().find(|(field, present)| *present && *field != spec.action) {
            return Err(err(format!("spec.{field}"), format!("only with action {field}")));
        }
        let share = |at: &str, value: &str, correlation: &Option<String>| -> Result<(u32, u32), SpecError> {
            let probability = percent_fraction(&format!("{at}.{}", at.rsplit('.').next().unwrap_or(at)), value)?;
            let correlation = match correlation {
                Some(text) => percent_fraction(&format!("{at}.correlation"), text)?,
                None => 0,
            };
            Ok((probability, correlation))
        };
        let checksum = self.metadata.annotations.get(CHECKSUM_ANNOTATION);
        if checksum.is_some() && spec.action != "corrupt" {
            return Err(err(format!("metadata.annotations.{CHECKSUM_ANNOTATION}"), "only with action corrupt"));
        }
        let fault = match spec.action.as_str() {
            "partition" => Fault::Partition,
            "loss" => {
                let loss = spec.loss.as_ref().ok_or_else(|| err("spec.loss", "action loss needs loss.loss"))?;
                let (probability, correlation) = share("spec.loss", &loss.loss, &loss.correlation)?;
                Fault::Loss { probability, correlation }
            }
            "duplicate" => {
                let duplicate = spec
                    .duplicate
                    .as_ref()
                    .ok_or_else(|| err("spec.duplicate", "action duplicate needs duplicate.duplicate"))?;
                let (probability, correlation) =
                    share("spec.duplicate", &duplicate.duplicate, &duplicate.correlation)?;
                Fault::Duplicate { probability, correlation }
            }
            "corrupt" => {
                let corrupt =
                    spec.corrupt.as_ref().ok_or_else(|| err("spec.corrupt", "action corrupt needs corrupt.corrupt"))?;
                let (probability, correlation) = share("spec.corrupt", &corrupt.corrupt, &corrupt.correlation)?;
                let fix_checksum = match checksum.map(String::as_str) {
                    None | Some("left-wrong") => false,
                    Some("fixed") => true,
                    Some(other) => {
                        return Err(err(
                            format!("metadata.annotations.{CHECKSUM_ANNOTATION}"),
                            format!("{other:?}: must be left-wrong or fixed"),
                        ))
                    }
                };
                Fault::Corrupt { probability, correlation, fix_checksum }
            }
            "bandwidth" => {
                let bandwidth = spec
                    .bandwidth
                    .as_ref()
                    .ok_or_else(|| err("spec.bandwidth", "action bandwidth needs rate, limit and buffer"))?;
                Fault::Bandwidth(crate::params::shaping(bandwidth)?)
            }
            "delay" => {
                let delay = spec.delay.as_ref().ok_or_else(|| err("spec.delay", "action delay needs delay.latency"))?;
                Fault::Delay(crate::params::delay_model(delay)?)
            }
            "netem" | "rate" => {
                return Err(err(
                    "spec.action",
                    format!(
                        "{:?} is not supported by Weir (partition, loss, delay, duplicate, corrupt, bandwidth)",
                        spec.action
                    ),
                ))
            }
            other => {
                return Err(err(
                    "spec.action",
                    format!("{other:?} is not a NetworkChaos action (loss, delay, duplicate, corrupt, partition, bandwidth, netem, rate)"),
                ))
            }
        };
        let direction = match spec.direction.as_deref() {
            None | Some("to") => Direction::To,
            Some("from") => Direction::From,
            Some("both") => Direction::Both,
            Some(other) => return Err(err("spec.direction", format!("{other:?}: must be to, from or both"))),
        };
        let selection = PodSelection {
            selector: selector("spec.selector", &spec.selector, &namespace)?,
            mode: mode("spec", &spec.mode, spec.value.as_deref())?,
        };
        let external = match &spec.external_targets {
            Some(entries) => {
                if direction != Direction::To {
                    return Err(err(
                        "spec.direction",
                        "externalTargets work with direction to only (as in Chaos Mesh)",
                    ));
                }
                crate::external::parse("spec.externalTargets", entries)?
            }
            None => Vec::new(),
        };
        let target = match &spec.target {
            Some(target) => PodSelection {
                selector: selector("spec.target.selector", &target.selector, &namespace)?,
                mode: mode("spec.target", &target.mode, target.value.as_deref())?,
            },
            // Only external targets: no target pods are picked.
            None if !external.is_empty() => selection.clone(),
            None => {
                return Err(err(
                    "spec.target",
                    "required without externalTargets: Weir applies chaos between the selected pods and targets",
                ))
            }
        };
        let targets = Targets { pods: spec.target.is_some(), external };
        let duration = duration_of("spec.duration", spec.duration.as_deref())?;
        let experiment =
            Experiment { name: self.metadata.name.clone(), namespace, fault, selection, direction, target, duration };
        Ok((experiment, targets))
    }
}

/// An experiment's `duration` (None: until stopped).
pub(crate) fn duration_of(field: &str, text: Option<&str>) -> Result<Option<Duration>, SpecError> {
    let Some(text) = text else { return Ok(None) };
    let d = crate::duration::parse(text).map_err(|e| err(field, e))?;
    if d.is_zero() {
        return Err(err(field, "must be longer than zero"));
    }
    Ok(Some(d))
}

/// A percentage string ("30", "0.5") as a fraction of 2^32, saturating at
/// u32::MAX (which the kernel treats as always).
pub(crate) fn percent_fraction(field: &str, text: &str) -> Result<u32, SpecError> {
    let value: f64 =
        text.trim().parse().map_err(|_| err(field, format!("{text:?} is not a percentage (e.g. \"25\")")))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(err(field, format!("{text:?}: must be from 0 to 100")));
    }
    Ok((value / 100.0 * 4294967296.0).round().min(u32::MAX as f64) as u32)
}

pub(crate) fn mode(at: &str, mode: &str, value: Option<&str>) -> Result<Mode, SpecError> {
    let field = format!("{at}.value");
    let number = |max: Option<u64>| -> Result<u64, SpecError> {
        let text = value.ok_or_else(|| err(&field, format!("mode {mode} needs a value")))?;
        let n: u64 = text.trim().parse().map_err(|_| err(&field, format!("{text:?} is not a whole number")))?;
        if let Some(max) = max {
            if n > max {
                return Err(err(&field, format!("{text:?}: a percent from 0 to {max}")));
            }
        }
        Ok(n)
    };
    let parsed = match mode {
        "one" => Mode::One,
        "all" => Mode::All,
        "fixed" => match number(None)? {
            0 => return Err(err(&field, "mode fixed needs at least 1 pod")),
            n => Mode::Fixed(usize::try_from(n).map_err(|_| err(&field, "too large"))?),
        },
        "fixed-percent" => Mode::FixedPercent(number(Some(100))? as u32),
        "random-max-percent" => Mode::RandomMaxPercent(number(Some(100))? as u32),
        other => {
            return Err(err(
                format!("{at}.mode"),
                format!("{other:?}: must be one, all, fixed, fixed-percent or random-max-percent"),
            ))
        }
    };
    if matches!(parsed, Mode::One | Mode::All) && value.is_some_and(|v| !v.is_empty()) {
        return Err(err(field, format!("mode {mode} takes no value")));
    }
    Ok(parsed)
}

pub(crate) fn selector(at: &str, spec: &PodSelectorSpec, own_namespace: &str) -> Result<Selector, SpecError> {
    let refused = [
        ("nodeSelectors", spec.node_selectors.is_some()),
        ("fieldSelectors", spec.field_selectors.is_some()),
        ("annotationSelectors", spec.annotation_selectors.is_some()),
        ("podPhaseSelectors", spec.pod_phase_selectors.is_some()),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, present)| *present) {
        return Err(err(
            format!("{at}.{field}"),
            "not supported by Weir (namespaces, labelSelectors, expressionSelectors, pods, nodes)",
        ));
    }
    let label_selector = weir_spec::LabelSelector {
        match_labels: spec.label_selectors.clone(),
        match_expressions: spec.expression_selectors.clone(),
    };
    let mut requirements = label_selector.clone();
    requirements.match_labels.clear();
    requirements.validate(&format!("{at}.expressionSelectors")).map_err(|e| {
        // LabelSelector names its own list; ours is expressionSelectors.
        err(e.field.replace(".matchExpressions", ""), e.message)
    })?;
    for (ns, names) in &spec.pods {
        if names.is_empty() {
            return Err(err(format!("{at}.pods.{ns}"), "names no pods"));
        }
    }
    // Chaos Mesh's default: no namespaces and no pods means the
    // experiment's own namespace.
    let namespaces = if spec.namespaces.is_empty() && spec.pods.is_empty() {
        vec![own_namespace.to_string()]
    } else {
        spec.namespaces.clone()
    };
    let nodes = spec.nodes.clone().unwrap_or_default();
    if spec.nodes.is_some() && nodes.is_empty() {
        return Err(err(format!("{at}.nodes"), "names no node (leave it out instead)"));
    }
    for (i, node) in nodes.iter().enumerate() {
        weir_spec::check_dns_label(&format!("{at}.nodes[{i}]"), node, 253)?;
    }
    Ok(Selector { namespaces, label_selector, pods: spec.pods.clone(), nodes })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
