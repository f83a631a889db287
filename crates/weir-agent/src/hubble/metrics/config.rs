//! `--hubble-metrics` in Hubble's syntax: metrics separated by spaces, each
//! `name` or `name:option=value;option=value`, with Hubble's context options
//! (`sourceContext`, `destinationContext`: identifiers joined by `|`, the
//! first non-empty one used; `labelsContext`: label names joined by `,`).
//! Pure. What Weir has no data for is refused by name, never served empty.

use std::collections::BTreeSet;

/// A metric family Weir serves, by Hubble's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Flow,
    Drop,
    Tcp,
    PortDistribution,
    Policy,
    Icmp,
}

impl Metric {
    pub const ALL: [(Metric, &'static str); 6] = [
        (Metric::Flow, "flow"),
        (Metric::Drop, "drop"),
        (Metric::Tcp, "tcp"),
        (Metric::PortDistribution, "port-distribution"),
        (Metric::Policy, "policy"),
        (Metric::Icmp, "icmp"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(m, _)| *m == self).map_or("", |(_, n)| n)
    }
}

/// How one side of a flow is named in a `source`/`destination` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextId {
    /// The identity's labels joined by `,`.
    Identity,
    Namespace,
    /// `namespace/pod`.
    Pod,
    PodName,
    /// The first of `k8s:app.kubernetes.io/name`, `k8s:k8s-app`, `k8s:app`.
    App,
    Ip,
    /// `reserved:kube-apiserver` if present, else the first `reserved:` label.
    ReservedIdentity,
}

impl ContextId {
    /// Whether a label of this kind names one pod: such series go when the pod does.
    pub fn names_a_pod(self) -> bool {
        matches!(self, ContextId::Pod | ContextId::PodName | ContextId::Ip)
    }
}

/// Hubble's `labelsContext` labels, in Hubble's order (label names and
/// values are listed in this order).
pub const CONTEXT_LABELS: [&str; 9] = [
    "source_ip",
    "source_pod",
    "source_namespace",
    "source_app",
    "destination_ip",
    "destination_pod",
    "destination_namespace",
    "destination_app",
    "traffic_direction",
];

/// One metric's context options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextOptions {
    pub source: Vec<ContextId>,
    pub destination: Vec<ContextId>,
    /// Names from [`CONTEXT_LABELS`].
    pub labels: BTreeSet<&'static str>,
}

/// Every metric enabled, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub metrics: Vec<(Metric, ContextOptions)>,
}

impl MetricsConfig {
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    pub fn get(&self, metric: Metric) -> Option<&ContextOptions> {
        self.metrics.iter().find(|(m, _)| *m == metric).map(|(_, o)| o)
    }
}

fn supported_metrics() -> String {
    Metric::ALL.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

fn parse_metric(name: &str) -> Result<Metric, String> {
    if let Some((m, _)) = Metric::ALL.iter().find(|(_, n)| *n == name) {
        return Ok(*m);
    }
    match name {
        "dns" | "http" | "httpV2" | "kafka" => Err(format!(
            "metric {name:?}: Weir has no L7 (DNS/HTTP/Kafka) visibility yet, so it cannot count it (served: {})",
            supported_metrics()
        )),
        "flows-to-world" | "sctp" | "flows-per-pod" => {
            Err(format!("metric {name:?} is Hubble's, but Weir does not serve it (served: {})", supported_metrics()))
        }
        _ => Err(format!("unknown metric {name:?} (served: {})", supported_metrics())),
    }
}

fn parse_context_id(option: &str, value: &str) -> Result<ContextId, String> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "identity" => ContextId::Identity,
        "namespace" => ContextId::Namespace,
        "pod" => ContextId::Pod,
        "pod-name" => ContextId::PodName,
        "app" => ContextId::App,
        "ip" => ContextId::Ip,
        "reserved-identity" => ContextId::ReservedIdentity,
        "dns" => return Err(format!("{option}: \"dns\": Weir does not know endpoints' DNS names (no L7 yet)")),
        "workload-name" => {
            return Err(format!("{option}: \"workload-name\": Weir's pods carry no workload (owner) to name"))
        }
        "pod-short" => {
            return Err(format!("{option}: \"pod-short\" is deprecated by Hubble and not served; use pod or pod-name"))
        }
        "" => return Err(format!("{option}: an empty identifier (between `|`s)")),
        other => {
            return Err(format!(
                "{option}: unknown context {other:?} (identity, namespace, pod, pod-name, app, ip, reserved-identity)"
            ))
        }
    })
}

fn parse_labels(value: &str) -> Result<BTreeSet<&'static str>, String> {
    let mut labels = BTreeSet::new();
    for label in value.split(',') {
        match CONTEXT_LABELS.iter().find(|l| **l == label) {
            Some(l) => {
                labels.insert(*l);
            }
            None if label == "source_workload" || label == "destination_workload" => {
                return Err(format!("labelsContext: {label:?}: Weir's pods carry no workload (owner) to name"))
            }
            None => {
                return Err(format!("labelsContext: unknown label {label:?} (one of {})", CONTEXT_LABELS.join(", ")))
            }
        }
    }
    Ok(labels)
}

fn parse_options(metric: &str, text: &str) -> Result<ContextOptions, String> {
    let mut options = ContextOptions::default();
    let mut seen = BTreeSet::new();
    for option in text.split(';').filter(|o| !o.is_empty()) {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        let lower = key.to_ascii_lowercase();
        if value.is_empty() {
            return Err(format!("{metric}: option {key:?} needs a value ({key}=...)"));
        }
        if !seen.insert(lower.clone()) {
            return Err(format!("{metric}: option {key:?} given twice"));
        }
        let within = |e: String| format!("{metric}: {e}");
        match lower.as_str() {
            "sourcecontext" => {
                options.source =
                    value.split('|').map(|v| parse_context_id(key, v)).collect::<Result<_, _>>().map_err(within)?
            }
            "destinationcontext" => {
                options.destination =
                    value.split('|').map(|v| parse_context_id(key, v)).collect::<Result<_, _>>().map_err(within)?
            }
            "labelscontext" => options.labels = parse_labels(value).map_err(within)?,
            "sourceegresscontext" | "sourceingresscontext" | "destinationegresscontext"
            | "destinationingresscontext" => {
                return Err(format!(
                    "{metric}: option {key:?} is Hubble's, but Weir does not serve it (sourceContext, destinationContext, labelsContext)"
                ))
            }
            _ => {
                return Err(format!(
                    "{metric}: unknown option {key:?} (sourceContext, destinationContext, labelsContext)"
                ))
            }
        }
    }
    Ok(options)
}

/// Parses `--hubble-metrics` values (each may hold several metrics separated
/// by spaces); a metric named twice is refused.
pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<MetricsConfig, String> {
    let mut config = MetricsConfig::default();
    for item in values.iter().flat_map(|v| v.as_ref().split_whitespace()) {
        let (name, options) = item.split_once(':').unwrap_or((item, ""));
        let metric = parse_metric(name)?;
        if config.get(metric).is_some() {
            return Err(format!("metric {name:?} given twice"));
        }
        config.metrics.push((metric, parse_options(name, options)?));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hubbles_syntax_with_context_options() {
        let config = parse(&[
            "drop:sourceContext=pod;destinationContext=pod flow tcp",
            "port-distribution policy:sourceContext=app|pod;labelsContext=source_namespace,source_pod icmp",
        ])
        .expect("valid");
        let names: Vec<_> = config.metrics.iter().map(|(m, _)| m.name()).collect();
        assert_eq!(names, ["drop", "flow", "tcp", "port-distribution", "policy", "icmp"]);
        let drop = config.get(Metric::Drop).expect("valid");
        assert_eq!(
            (drop.source.as_slice(), drop.destination.as_slice()),
            (&[ContextId::Pod][..], &[ContextId::Pod][..])
        );
        let policy = config.get(Metric::Policy).expect("valid");
        assert_eq!(policy.source, [ContextId::App, ContextId::Pod]);
        assert_eq!(policy.labels, BTreeSet::from(["source_namespace", "source_pod"]));
        assert_eq!(config.get(Metric::Flow), Some(&ContextOptions::default()));
        // Option names are matched without regard to case, as Hubble does.
        assert_eq!(
            parse(&["flow:SOURCECONTEXT=namespace"]).expect("valid").metrics[0].1.source,
            [ContextId::Namespace]
        );
        assert!(parse::<&str>(&[]).expect("valid").is_empty());
        assert!(parse(&["  "]).expect("valid").is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_serve_naming_it() {
        let err = |s: &str| parse(&[s]).expect_err("refused");
        assert!(err("dns").contains("\"dns\"") && err("dns").contains("L7"), "{}", err("dns"));
        assert!(err("http:sourceContext=pod").contains("\"http\""));
        assert!(err("flows").contains("unknown metric \"flows\""));
        assert!(err("drop:sourceContex=pod").contains("unknown option \"sourceContex\""));
        assert!(err("drop:sourceContext=pods").contains("unknown context \"pods\""));
        assert!(err("drop:sourceContext=dns").contains("sourceContext: \"dns\""));
        assert!(err("drop:destinationContext=workload-name").contains("destinationContext: \"workload-name\""));
        assert!(err("drop:labelsContext=source_pod,nope").contains("unknown label \"nope\""));
        assert!(err("drop:labelsContext=source_workload").contains("\"source_workload\""));
        assert!(err("drop:sourceContext").contains("option \"sourceContext\" needs a value"));
        assert!(err("drop:sourceContext=pod;sourceContext=ip").contains("given twice"));
        assert!(err("drop drop").contains("metric \"drop\" given twice"));
        assert!(err("drop:sourceEgressContext=pod").contains("\"sourceEgressContext\""));
        assert!(err("drop:sourceContext=pod|").contains("empty identifier"));
    }
}
