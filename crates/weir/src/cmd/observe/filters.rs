//! `hubble observe`'s filter flags as Hubble's FlowFilters (pure).
//!
//! The same construction as Hubble's CLI: a `--from-*` flag (and every flag
//! with no side, such as `--verdict`) applies to both the source-side and the
//! destination-side filter; a flag for either end (`--pod`, `--ip`, ...)
//! puts the source field in the first and the destination field in the
//! second. Equal filters collapse into one, so `--from-pod a --to-pod b`
//! means from a to b, and `--pod a` means from a or to a. Flags after
//! `--not` build the blacklist the same way.

use weir_proto::flow::{self, FlowFilter};

/// Which end of the flow a flag speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    From,
    To,
    /// Either end: the source in one filter, the destination in the other.
    Either,
    /// Neither: the flow as a whole.
    Flow,
}

/// What a flag sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Pod,
    Service,
    Namespace,
    Ip,
    Label,
    Identity,
    Port,
    Workload,
    Verdict,
    DropReason,
    Protocol,
    NodeName,
    TrafficDirection,
    TcpFlags,
    IpVersion,
    DnsQuery,
    HttpMethod,
    HttpPath,
    HttpStatus,
    EventType,
}

/// Every filter flag: its name (without `--`), side and field.
const FLAGS: &[(&str, Side, Field)] = &[
    ("pod", Side::Either, Field::Pod),
    ("from-pod", Side::From, Field::Pod),
    ("to-pod", Side::To, Field::Pod),
    ("service", Side::Either, Field::Service),
    ("from-service", Side::From, Field::Service),
    ("to-service", Side::To, Field::Service),
    ("namespace", Side::Either, Field::Namespace),
    ("from-namespace", Side::From, Field::Namespace),
    ("to-namespace", Side::To, Field::Namespace),
    ("ip", Side::Either, Field::Ip),
    ("from-ip", Side::From, Field::Ip),
    ("to-ip", Side::To, Field::Ip),
    ("label", Side::Either, Field::Label),
    ("from-label", Side::From, Field::Label),
    ("to-label", Side::To, Field::Label),
    ("identity", Side::Either, Field::Identity),
    ("from-identity", Side::From, Field::Identity),
    ("to-identity", Side::To, Field::Identity),
    ("port", Side::Either, Field::Port),
    ("from-port", Side::From, Field::Port),
    ("to-port", Side::To, Field::Port),
    ("workload", Side::Either, Field::Workload),
    ("from-workload", Side::From, Field::Workload),
    ("to-workload", Side::To, Field::Workload),
    ("verdict", Side::Flow, Field::Verdict),
    ("drop-reason-desc", Side::Flow, Field::DropReason),
    ("protocol", Side::Flow, Field::Protocol),
    ("node-name", Side::Flow, Field::NodeName),
    ("traffic-direction", Side::Flow, Field::TrafficDirection),
    ("tcp-flags", Side::Flow, Field::TcpFlags),
    ("ip-version", Side::Flow, Field::IpVersion),
    ("dns-query", Side::Flow, Field::DnsQuery),
    ("http-method", Side::Flow, Field::HttpMethod),
    ("http-path", Side::Flow, Field::HttpPath),
    ("http-status", Side::Flow, Field::HttpStatus),
    ("type", Side::Flow, Field::EventType),
];

/// Whether `name` (without `--`) is a filter flag.
pub fn is_filter_flag(name: &str) -> bool {
    FLAGS.iter().any(|(n, _, _)| *n == name)
}

/// The two filters Hubble's CLI builds up.
#[derive(Debug, Default)]
struct Tracker {
    source_side: Option<FlowFilter>,
    destination_side: Option<FlowFilter>,
}

impl Tracker {
    fn on_source_side(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.source_side.get_or_insert_with(FlowFilter::default));
    }

    fn on_destination_side(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.destination_side.get_or_insert_with(FlowFilter::default));
    }

    fn on_both(&mut self, update: impl Fn(&mut FlowFilter)) {
        self.on_source_side(&update);
        self.on_destination_side(&update);
    }

    fn filters(self) -> Vec<FlowFilter> {
        match (self.source_side, self.destination_side) {
            (Some(a), Some(b)) if a == b => vec![a],
            (a, b) => a.into_iter().chain(b).collect(),
        }
    }
}

fn verdict(text: &str) -> Result<i32, String> {
    flow::Verdict::from_str_name(&text.to_uppercase())
        .filter(|v| *v != flow::Verdict::Unknown)
        .map(|v| v as i32)
        .ok_or_else(|| {
            format!("{text:?} is not a verdict (FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED)")
        })
}

/// Hubble's drop reason by its name in flow.proto (any case).
fn drop_reason(text: &str) -> Result<i32, String> {
    flow::DropReason::from_str_name(&text.to_uppercase())
        .map(|r| r as i32)
        .ok_or_else(|| format!("{text:?} is not one of Hubble's drop reasons (POLICY_DENIED, POLICY_DENY, ...)"))
}

fn direction(text: &str) -> Result<i32, String> {
    match text.to_lowercase().as_str() {
        "ingress" => Ok(flow::TrafficDirection::Ingress as i32),
        "egress" => Ok(flow::TrafficDirection::Egress as i32),
        _ => Err(format!("{text:?} is neither ingress nor egress")),
    }
}

fn ip_version(text: &str) -> Result<i32, String> {
    match text.to_lowercase().as_str() {
        "4" | "v4" | "ipv4" => Ok(flow::IpVersion::IPv4 as i32),
        "6" | "v6" | "ipv6" => Ok(flow::IpVersion::IPv6 as i32),
        _ => Err(format!("{text:?} is neither 4 nor 6")),
    }
}

/// `SYN,ACK` as one TCPFlags (all of them set).
fn tcp_flags(text: &str) -> Result<flow::TcpFlags, String> {
    let mut flags = flow::TcpFlags::default();
    for name in text.split(',').map(str::trim) {
        let bit = match name.to_uppercase().as_str() {
            "SYN" => &mut flags.syn,
            "ACK" => &mut flags.ack,
            "FIN" => &mut flags.fin,
            "RST" => &mut flags.rst,
            "PSH" => &mut flags.psh,
            "URG" => &mut flags.urg,
            "ECE" => &mut flags.ece,
            "CWR" => &mut flags.cwr,
            "NS" => &mut flags.ns,
            _ => return Err(format!("{name:?} is not a TCP flag (SYN, ACK, FIN, RST, PSH, URG, ECE, CWR, NS)")),
        };
        *bit = true;
    }
    Ok(flags)
}

fn identity(text: &str) -> Result<u32, String> {
    text.parse().map_err(|_| format!("{text:?} is not a security identity (a number)"))
}

fn port(text: &str) -> Result<String, String> {
    text.parse::<u16>().map(|p| p.to_string()).map_err(|_| format!("{text:?} is not a port (0-65535)"))
}

/// Applies one flag to the tracker.
fn apply(tracker: &mut Tracker, name: &str, value: &str) -> Result<(), String> {
    let Some((_, side, field)) = FLAGS.iter().find(|(n, _, _)| *n == name) else {
        return Err(format!("--{name} is not a filter flag"));
    };
    let fail = |why: String| format!("--{name}: {why}");
    let value = value.trim();
    if value.is_empty() {
        return Err(fail("an empty value".into()));
    }
    // The flow as a whole: both filters.
    if *side == Side::Flow {
        match field {
            Field::Verdict => {
                let v = verdict(value).map_err(fail)?;
                tracker.on_both(|f| f.verdict.push(v));
            }
            Field::DropReason => {
                let r = drop_reason(value).map_err(fail)?;
                tracker.on_both(|f| f.drop_reason_desc.push(r));
            }
            Field::Protocol => tracker.on_both(|f| f.protocol.push(value.to_lowercase())),
            Field::NodeName => tracker.on_both(|f| f.node_name.push(value.to_string())),
            Field::TrafficDirection => {
                let d = direction(value).map_err(fail)?;
                tracker.on_both(|f| f.traffic_direction.push(d));
            }
            Field::TcpFlags => {
                let flags = tcp_flags(value).map_err(fail)?;
                tracker.on_both(|f| f.tcp_flags.push(flags));
            }
            Field::IpVersion => {
                let v = ip_version(value).map_err(fail)?;
                tracker.on_both(|f| f.ip_version.push(v));
            }
            // Checked by the agent (a regular expression, a status), whose
            // error names the field.
            Field::DnsQuery => tracker.on_both(|f| f.dns_query.push(value.to_string())),
            Field::HttpMethod => tracker.on_both(|f| f.http_method.push(value.to_string())),
            Field::HttpPath => tracker.on_both(|f| f.http_path.push(value.to_string())),
            Field::HttpStatus => tracker.on_both(|f| f.http_status_code.push(value.to_string())),
            Field::EventType => {
                let t = weir_agent::hubble::event_type::parse_flag(value).map_err(fail)?;
                tracker.on_both(|f| f.event_type.push(t));
            }
            _ => unreachable!("every flow-wide flag is handled above"),
        }
        return Ok(());
    }
    // An end of the flow: which fields it sets on the source and the destination.
    type Setter = Box<dyn Fn(&mut FlowFilter)>;
    let (on_source, on_destination): (Setter, Setter) = match field {
        Field::Pod => {
            let v = value.to_string();
            let w = v.clone();
            (Box::new(move |f| f.source_pod.push(v.clone())), Box::new(move |f| f.destination_pod.push(w.clone())))
        }
        Field::Service => {
            let v = value.to_string();
            let w = v.clone();
            (
                Box::new(move |f| f.source_service.push(v.clone())),
                Box::new(move |f| f.destination_service.push(w.clone())),
            )
        }
        Field::Namespace => {
            if value.contains('/') {
                return Err(fail(format!("{value:?} is a namespace, without a '/'")));
            }
            let v = format!("{value}/");
            let w = v.clone();
            (Box::new(move |f| f.source_pod.push(v.clone())), Box::new(move |f| f.destination_pod.push(w.clone())))
        }
        Field::Ip => {
            let v = value.to_string();
            let w = v.clone();
            (Box::new(move |f| f.source_ip.push(v.clone())), Box::new(move |f| f.destination_ip.push(w.clone())))
        }
        Field::Label => {
            let v = value.to_string();
            let w = v.clone();
            (Box::new(move |f| f.source_label.push(v.clone())), Box::new(move |f| f.destination_label.push(w.clone())))
        }
        Field::Identity => {
            let id = identity(value).map_err(fail)?;
            (Box::new(move |f| f.source_identity.push(id)), Box::new(move |f| f.destination_identity.push(id)))
        }
        Field::Workload => {
            let w = weir_agent::hubble::workload::parse_flag(value);
            let v = w.clone();
            (
                Box::new(move |f| f.source_workload.push(w.clone())),
                Box::new(move |f| f.destination_workload.push(v.clone())),
            )
        }
        Field::Port => {
            let v = port(value).map_err(fail)?;
            let w = v.clone();
            (Box::new(move |f| f.source_port.push(v.clone())), Box::new(move |f| f.destination_port.push(w.clone())))
        }
        _ => unreachable!("every end-of-flow flag is handled above"),
    };
    match side {
        Side::From => tracker.on_both(on_source),
        Side::To => tracker.on_both(on_destination),
        Side::Either => {
            tracker.on_source_side(on_source);
            tracker.on_destination_side(on_destination);
        }
        Side::Flow => unreachable!("handled above"),
    }
    Ok(())
}

/// The whitelist and blacklist of these flags, in the order given: each
/// `(name, value, negated)`.
pub fn build(flags: &[(String, String, bool)]) -> Result<(Vec<FlowFilter>, Vec<FlowFilter>), String> {
    let (mut allow, mut deny) = (Tracker::default(), Tracker::default());
    for (name, value, negated) in flags {
        apply(if *negated { &mut deny } else { &mut allow }, name, value)?;
    }
    Ok((allow.filters(), deny.filters()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[(&str, &str)]) -> Vec<(String, String, bool)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string(), false)).collect()
    }

    #[test]
    fn from_and_to_flags_make_one_filter() {
        let (allow, deny) = build(&flags(&[("from-pod", "a/web"), ("to-pod", "b/api"), ("verdict", "dropped")]))
            .expect("the flags build");
        assert!(deny.is_empty());
        assert_eq!(
            allow,
            vec![FlowFilter {
                source_pod: vec!["a/web".into()],
                destination_pod: vec!["b/api".into()],
                verdict: vec![flow::Verdict::Dropped as i32],
                ..Default::default()
            }]
        );
    }

    #[test]
    fn either_end_flags_make_two_filters() {
        let (allow, _) = build(&flags(&[("pod", "a/web"), ("protocol", "TCP")])).expect("the flags build");
        assert_eq!(
            allow,
            vec![
                FlowFilter { source_pod: vec!["a/web".into()], protocol: vec!["tcp".into()], ..Default::default() },
                FlowFilter {
                    destination_pod: vec!["a/web".into()],
                    protocol: vec!["tcp".into()],
                    ..Default::default()
                },
            ]
        );
        let (allow, _) = build(&flags(&[("namespace", "kube-system"), ("to-port", "53")])).expect("the flags build");
        assert_eq!(allow[0].source_pod, vec!["kube-system/"]);
        assert_eq!(allow[0].destination_port, vec!["53"]);
        assert_eq!(allow[1].destination_pod, vec!["kube-system/"]);
        assert_eq!(allow[1].destination_port, vec!["53"]);
    }

    #[test]
    fn negated_flags_build_the_blacklist() {
        let list = vec![
            ("to-port".to_string(), "8080".to_string(), false),
            ("from-ip".to_string(), "10.0.0.1".to_string(), true),
        ];
        let (allow, deny) = build(&list).expect("the flags build");
        assert_eq!(allow, vec![FlowFilter { destination_port: vec!["8080".into()], ..Default::default() }]);
        assert_eq!(deny, vec![FlowFilter { source_ip: vec!["10.0.0.1".into()], ..Default::default() }]);
    }

    #[test]
    fn workload_flags_take_a_kind_and_a_name() {
        let (allow, _) =
            build(&flags(&[("from-workload", "Deployment/web"), ("to-workload", "db")])).expect("the flags build");
        let w = |kind: &str, name: &str| flow::Workload { name: name.into(), kind: kind.into() };
        assert_eq!(
            allow,
            vec![FlowFilter {
                source_workload: vec![w("Deployment", "web")],
                destination_workload: vec![w("", "db")],
                ..Default::default()
            }]
        );
        let (allow, _) = build(&flags(&[("workload", "StatefulSet/")])).expect("the flags build");
        assert_eq!(allow.len(), 2, "either end");
        assert_eq!(allow[0].source_workload, vec![w("StatefulSet", "")]);
        assert_eq!(allow[1].destination_workload, vec![w("StatefulSet", "")]);
    }

    #[test]
    fn repeated_types_are_any_of_them() {
        let (allow, _) = build(&flags(&[("type", "drop"), ("type", "trace:to-endpoint"), ("to-pod", "b/api")]))
            .expect("the flags build");
        let kind = |r#type, match_sub_type, sub_type| flow::EventTypeFilter { r#type, match_sub_type, sub_type };
        assert_eq!(
            allow,
            vec![FlowFilter {
                event_type: vec![kind(1, false, 0), kind(4, true, 0)],
                destination_pod: vec!["b/api".into()],
                ..Default::default()
            }]
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let refused = |name: &str, value: &str, says: &str| {
            let err = build(&flags(&[(name, value)])).expect_err("refused");
            assert!(err.contains(&format!("--{name}")) && err.contains(says), "{err}");
        };
        refused("verdict", "maybe", "not a verdict");
        refused("port", "http", "not a port");
        refused("identity", "web", "not a security identity");
        refused("traffic-direction", "up", "neither ingress nor egress");
        refused("tcp-flags", "SYN,XMAS", "\"XMAS\" is not a TCP flag");
        refused("namespace", "a/b", "without a '/'");
        refused("pod", " ", "empty");
        refused("type", "drops", "\"drops\" is not an event type");
        refused("drop-reason-desc", "denied", "not one of Hubble's drop reasons");
        let (allow, _) = build(&flags(&[("drop-reason-desc", "policy_denied")])).expect("the flags build");
        assert_eq!(allow[0].drop_reason_desc, vec![flow::DropReason::PolicyDenied as i32]);
        refused("type", "trace:to-moon", "not a trace observation point");
        let (allow, _) = build(&flags(&[("tcp-flags", "syn,ack")])).expect("the flags build");
        assert!(allow[0].tcp_flags[0].syn && allow[0].tcp_flags[0].ack && !allow[0].tcp_flags[0].fin);
    }
}
