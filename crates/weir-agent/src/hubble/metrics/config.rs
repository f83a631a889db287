//! `--hubble-metrics` in Hubble's syntax: metrics separated by spaces, each
//! `name` or `name:option=value;option=value`, with Hubble's context options
//! (`sourceContext`, `destinationContext`: identifiers joined by `|`, the
//! first non-empty one used; `labelsContext`: label names joined by `,`).
//! `dns` takes Hubble's `query` and `ignoreAAAA` (given without a value);
//! `http` and `httpV2` take `exemplars=false` (Weir's flows carry no trace
//! context, so `exemplars=true` is refused).
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
    Dns,
    /// Hubble's `http`: requests, responses and their durations.
    Http,
    /// Hubble's `httpV2`: responses only, counted as requests with their
    /// status, labelled from the request's side (source and destination
    /// swapped back).
    HttpV2,
}

impl Metric {
    pub const ALL: [(Metric, &'static str); 9] = [
        (Metric::Flow, "flow"),
        (Metric::Drop, "drop"),
        (Metric::Tcp, "tcp"),
        (Metric::PortDistribution, "port-distribution"),
        (Metric::Policy, "policy"),
        (Metric::Icmp, "icmp"),
        (Metric::Dns, "dns"),
        (Metric::Http, "http"),
        (Metric::HttpV2, "httpV2"),
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
    /// dns's `query`: the query name as a label.
    pub include_query: bool,
    /// dns's `ignoreAAAA`: messages asking only for AAAA are not counted.
    pub ignore_aaaa: bool,
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
        "kafka" => Err(format!(
            "metric {name:?}: Weir reads no Kafka messages (its L7 flows are DNS and HTTP), so it cannot count them (served: {})",
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

fn parse_options(name: &str, metric: Metric, text: &str) -> Result<ContextOptions, String> {
    let mut options = ContextOptions::default();
    let mut seen = BTreeSet::new();
    let served = match metric {
        Metric::Dns => "sourceContext, destinationContext, labelsContext, query, ignoreAAAA",
        Metric::Http | Metric::HttpV2 => "sourceContext, destinationContext, labelsContext, exemplars",
        _ => "sourceContext, destinationContext, labelsContext",
    };
    for option in text.split(';').filter(|o| !o.is_empty()) {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        let lower = key.to_ascii_lowercase();
        // dns's switches are named without a value, as Hubble writes them.
        let switch = metric == Metric::Dns && (lower == "query" || lower == "ignoreaaaa");
        if switch && !value.is_empty() {
            return Err(format!("{name}: option {key:?} takes no value (write `{key}` alone)"));
        }
        if !switch && value.is_empty() {
            return Err(format!("{name}: option {key:?} needs a value ({key}=...)"));
        }
        if !seen.insert(lower.clone()) {
            return Err(format!("{name}: option {key:?} given twice"));
        }
        let within = |e: String| format!("{name}: {e}");
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
            "query" if switch => options.include_query = true,
            "ignoreaaaa" if switch => options.ignore_aaaa = true,
            "exemplars" if matches!(metric, Metric::Http | Metric::HttpV2) => match value {
                "false" => {}
                "true" => {
                    return Err(format!(
                        "{name}: exemplars=true: Weir's flows carry no trace context, so there is no trace ID to attach"
                    ))
                }
                _ => return Err(format!("{name}: exemplars={value:?}: true or false")),
            },
            "sourceegresscontext"
            | "sourceingresscontext"
            | "destinationegresscontext"
            | "destinationingresscontext" => {
                return Err(format!("{name}: option {key:?} is Hubble's, but Weir does not serve it ({served})"))
            }
            _ => return Err(format!("{name}: unknown option {key:?} ({served})")),
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
        config.metrics.push((metric, parse_options(name, metric, options)?));
    }
    if config.get(Metric::Http).is_some() && config.get(Metric::HttpV2).is_some() {
        return Err("metrics \"http\" and \"httpV2\" both define hubble_http_requests_total: enable one".into());
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
        // L7 families with their own options.
        let l7 = parse(&["dns:query;ignoreAAAA;sourceContext=pod", "http:exemplars=false;labelsContext=source_pod"])
            .expect("valid");
        let dns = l7.get(Metric::Dns).expect("dns");
        assert!(dns.include_query && dns.ignore_aaaa && dns.source == [ContextId::Pod]);
        let http = l7.get(Metric::Http).expect("http");
        assert!(!http.include_query && http.labels == BTreeSet::from(["source_pod"]));
        assert_eq!(parse(&["httpV2"]).expect("valid").metrics[0].0, Metric::HttpV2);
        assert!(parse(&["  "]).expect("valid").is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_serve_naming_it() {
        let err = |s: &str| parse(&[s]).expect_err("refused");
        assert!(err("kafka").contains("\"kafka\"") && err("kafka").contains("Kafka"), "{}", err("kafka"));
        assert!(err("http httpV2").contains("enable one"));
        assert!(err("http:exemplars=true").contains("no trace context"));
        assert!(err("httpV2:exemplars=yes").contains("true or false"));
        assert!(err("dns:query=true").contains("option \"query\" takes no value"));
        assert!(err("dns:ignoreAAAA;ignoreaaaa").contains("given twice"));
        assert!(err("http:query=1").contains("unknown option \"query\""), "{}", err("http:query=1"));
        assert!(err("drop:exemplars=false").contains("unknown option \"exemplars\""));
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
