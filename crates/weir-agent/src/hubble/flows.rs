//! Weir's flow events as Hubble's `flow.Flow`: verdict, Hubble's drop reason
//! code, Cilium's event type, IP and L4, both endpoints (identity,
//! namespace, pod, labels as `k8s:key=value`, workload), the traffic direction,
//! whether it is a reply where that is known, and the policy whose rule
//! decided.

use std::net::IpAddr;

use weir_bpf::api::{drop_reason, flow_verdict, policy_match};
use weir_bpf::policy::FlowEvent;
use weir_policy::identity::{reserved_name, FIRST_CIDR};
use weir_policy::Direction;
use weir_proto::flow;

use crate::hubble::services::service_at;
use crate::netpolicy::{code_name, FlowContext, Naming};

/// Weir's drop reason as Hubble's, where Hubble has one with the same
/// meaning; DROP_REASON_UNKNOWN where it has none (the filter's rule drops,
/// which never reach flow events anyway).
pub fn hubble_drop_reason(code: u32) -> flow::DropReason {
    use flow::DropReason as H;
    match code {
        drop_reason::TRUNCATED | drop_reason::BAD_IPV4_HEADER | drop_reason::BAD_IPV6_HEADER => H::InvalidPacketDropped,
        drop_reason::TOO_MANY_IPV6_EXT_HEADERS => H::InvalidIpv6ExtensionHeader,
        drop_reason::POLICY_DENIED => H::PolicyDenied,
        drop_reason::POLICY_DENY_RULE => H::PolicyDeny,
        // The pod path's FIB lookup said unreachable, blackhole or prohibit.
        drop_reason::NO_ROUTE => H::FibLookupFailed,
        drop_reason::CT_MAP_FULL => H::CtMapInsertionFailed,
        drop_reason::LB_SOURCE_RANGE => H::DeniedByLbSrcRangeCheck,
        _ => H::Unknown,
    }
}

fn tcp_flags(bits: u8) -> flow::TcpFlags {
    let on = |bit: u8| bits & bit != 0;
    flow::TcpFlags {
        fin: on(0x01),
        syn: on(0x02),
        rst: on(0x04),
        psh: on(0x08),
        ack: on(0x10),
        urg: on(0x20),
        ece: on(0x40),
        cwr: on(0x80),
        ns: false,
    }
}

fn layer4(event: &FlowEvent) -> Option<flow::Layer4> {
    use flow::layer4::Protocol;
    let (sport, dport) = (u32::from(event.sport), u32::from(event.dport));
    let protocol = match event.protocol {
        6 => Protocol::Tcp(flow::Tcp {
            source_port: sport,
            destination_port: dport,
            flags: Some(tcp_flags(event.tcp_flags)),
        }),
        17 => Protocol::Udp(flow::Udp { source_port: sport, destination_port: dport }),
        132 => Protocol::Sctp(flow::Sctp { source_port: sport, destination_port: dport }),
        // The datapath reports the ICMP type, not the code.
        1 => Protocol::IcmPv4(flow::IcmPv4 { r#type: u32::from(event.icmp_type), code: 0 }),
        58 => Protocol::IcmPv6(flow::IcmPv6 { r#type: u32::from(event.icmp_type), code: 0 }),
        _ => return None,
    };
    Some(flow::Layer4 { protocol: Some(protocol) })
}

fn endpoint(ctx: &FlowContext, ip: IpAddr, identity: u32) -> flow::Endpoint {
    let pod = ctx.pods.get(&ip);
    // In a mesh a pod is of its own cluster, or of the one it was read from.
    let cluster = pod.and(ctx.remote_clusters.get(&ip).or(ctx.cluster.as_ref()));
    let mut labels: Vec<String> = match pod {
        Some(p) => p
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != crate::clustermesh::CLUSTER_LABEL)
            .map(|(k, v)| format!("k8s:{k}={v}"))
            .chain(std::iter::once(format!("k8s:io.kubernetes.pod.namespace={}", p.namespace)))
            .chain(cluster.map(|c| format!("k8s:{}={c}", crate::clustermesh::CLUSTER_LABEL)))
            .collect(),
        None => reserved_name(identity)
            .or((identity >= FIRST_CIDR).then_some("world"))
            .map(|name| vec![format!("reserved:{name}")])
            .unwrap_or_default(),
    };
    labels.sort();
    flow::Endpoint {
        identity,
        cluster_name: cluster.cloned().unwrap_or_default(),
        namespace: pod.map(|p| p.namespace.clone()).unwrap_or_default(),
        labels,
        pod_name: pod.map(|p| p.name.clone()).unwrap_or_default(),
        workloads: pod
            .map(|p| crate::hubble::workload::of_pod(p.generate_name.as_deref(), &p.labels, &p.owner_references))
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The process behind one end, in the pod at that end's address (the
/// datapath found the socket in that pod's namespace).
fn process(ctx: &FlowContext, ip: IpAddr, named: Option<&flow::WeirProcess>) -> Option<flow::WeirProcess> {
    let mut process = named?.clone();
    if let Some(pod) = ctx.pods.get(&ip) {
        process.namespace.clone_from(&pod.namespace);
        process.pod_name.clone_from(&pod.name);
    }
    Some(process)
}

/// A flow event as Hubble's Flow, observed on `node` at `unix_ns`.
#[allow(deprecated, reason = "Hubble's clients still read drop_reason; it is filled as Hubble fills it")]
pub(crate) fn describe(node: &str, unix_ns: u64, event: &FlowEvent, naming: &Naming) -> flow::Flow {
    let ctx: &FlowContext = &naming.context;
    let dropped = u32::from(event.verdict) == flow_verdict::DROPPED;
    let reason = if dropped { hubble_drop_reason(event.drop_reason) } else { flow::DropReason::Unknown };
    let ingress = matches!(event.direction, Direction::Ingress);
    let chaos = u32::from(event.policy_match) == policy_match::CHAOS;
    let rule =
        (u32::from(event.policy_match) == policy_match::RULE).then(|| ctx.rules.get(event.rule as usize)).flatten();
    let policy = rule.and_then(|r| r.policy.as_ref()).map(|key| flow::Policy {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        kind: format!("{:?}", key.kind),
        ..Default::default()
    });
    let mut f = flow::Flow {
        time: Some(prost_timestamp(unix_ns)),
        verdict: if dropped { flow::Verdict::Dropped } else { flow::Verdict::Forwarded } as i32,
        drop_reason: if dropped { reason as u32 } else { 0 },
        ip: Some(flow::Ip {
            source: event.src.to_string(),
            destination: event.dst.to_string(),
            ip_version: if event.src.is_ipv6() { flow::IpVersion::IPv6 } else { flow::IpVersion::IPv4 } as i32,
            encrypted: false,
        }),
        l4: layer4(event),
        source: Some(endpoint(ctx, event.src, event.src_identity)),
        destination: Some(endpoint(ctx, event.dst, event.dst_identity)),
        r#type: flow::FlowType::L3L4 as i32,
        node_name: node.to_string(),
        // As Hubble: only on traces, where a packet was seen going on (not
        // on drops, policy verdicts nor L7 records, set below).
        trace_observation_point: match (dropped, chaos, ingress) {
            (false, true, true) => flow::TraceObservationPoint::ToEndpoint,
            (false, true, false) => flow::TraceObservationPoint::FromEndpoint,
            _ => flow::TraceObservationPoint::UnknownPoint,
        } as i32,
        event_type: Some(crate::hubble::event_type::of_flow_event(dropped, chaos, ingress, reason)),
        source_service: service_at(&naming.services, event.src, event.sport, event.protocol),
        destination_service: service_at(&naming.services, event.dst, event.dport, event.protocol),
        traffic_direction: if ingress { flow::TrafficDirection::Ingress } else { flow::TrafficDirection::Egress }
            as i32,
        drop_reason_desc: reason as i32,
        // A forwarded event is a new flow's first packet (but for a packet
        // a chaos fault changed, which can be either), and policy judges
        // only packets conntrack does not know as replies; other drops can
        // be either.
        is_reply: ((!dropped && !chaos)
            || matches!(reason, flow::DropReason::PolicyDenied | flow::DropReason::PolicyDeny))
        .then_some(false),
        weir: Some(flow::WeirFlow {
            drop_reason: if dropped {
                code_name(drop_reason::ALL, event.drop_reason).to_lowercase()
            } else {
                String::new()
            },
            drop_reason_code: if dropped { event.drop_reason } else { 0 },
            rule: rule.map(ToString::to_string).unwrap_or_default(),
            r#match: code_name(policy_match::ALL, u32::from(event.policy_match)).to_lowercase(),
            // The chaos state names what was done (FlowShared::hubble_flow).
            chaos: String::new(),
            source_process: process(ctx, event.src, naming.processes[0].as_deref()),
            destination_process: process(ctx, event.dst, naming.processes[1].as_deref()),
        }),
        ..Default::default()
    };
    // Read when the event was (unreadable messages, counted then, stay
    // L3/L4 flows without a record).
    if let (Some(message), Some(record)) = (&event.l7, &naming.layer7) {
        f.l7 = Some(crate::hubble::l7::layer7(message, record));
        f.r#type = flow::FlowType::L7 as i32;
        f.trace_observation_point = flow::TraceObservationPoint::UnknownPoint as i32;
        f.event_type = Some(flow::CiliumEventType { r#type: crate::hubble::event_type::ACCESS_LOG, sub_type: 0 });
        f.is_reply = Some(message.response);
        // Seen from the client, as Hubble's proxy sees a pod's egress.
        f.traffic_direction = flow::TrafficDirection::Egress as i32;
    }
    if let Some(policy) = policy {
        let list = match (dropped, ingress) {
            (false, false) => &mut f.egress_allowed_by,
            (false, true) => &mut f.ingress_allowed_by,
            (true, false) => &mut f.egress_denied_by,
            (true, true) => &mut f.ingress_denied_by,
        };
        list.push(policy);
    }
    f
}

pub fn prost_timestamp(unix_ns: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(unix_ns / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(unix_ns % 1_000_000_000).unwrap_or(0),
    }
}

/// A Timestamp as unix ns; None before 1970.
pub fn timestamp_ns(t: &prost_types::Timestamp) -> Option<u64> {
    let seconds = u64::try_from(t.seconds).ok()?;
    let nanos = u64::try_from(t.nanos).ok()?;
    Some(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}
