//! Hubble's JSON of a flow (`weir observe -o jsonpb`, the flow exporter): a GetFlowsResponse
//! rendered as protobuf's canonical JSON mapping with proto field names, as
//! `hubble observe -o jsonpb` prints it. Default values are left out, enums
//! are their value names, 64-bit integers strings, timestamps RFC 3339 in
//! UTC, wrappers their plain value.

use serde_json::{Map, Value};
use weir_proto::flow;

/// Leaves out what protobuf's JSON leaves out: defaults.
struct Object(Map<String, Value>);

impl Object {
    fn new() -> Self {
        Self(Map::new())
    }

    fn put(mut self, key: &str, value: Value) -> Self {
        let default = match &value {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(_) => false,
        };
        if !default {
            self.0.insert(key.to_string(), value);
        }
        self
    }

    /// A field with presence (a message or wrapper): kept even at its default.
    fn put_present(mut self, key: &str, value: Option<Value>) -> Self {
        if let Some(value) = value {
            self.0.insert(key.to_string(), value);
        }
        self
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// Days since 1970-01-01 as (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as protobuf's JSON writes it.
pub fn timestamp(t: &prost_types::Timestamp) -> String {
    let (days, secs) = (t.seconds.div_euclid(86_400), t.seconds.rem_euclid(86_400));
    let (y, m, d) = civil(days);
    let base = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60);
    let nanos = t.nanos.max(0);
    let fraction = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    format!("{base}{fraction}Z")
}

fn ports(source: u32, destination: u32) -> Value {
    Object::new().put("source_port", source.into()).put("destination_port", destination.into()).done()
}

fn tcp_flags(f: &flow::TcpFlags) -> Value {
    [("FIN", f.fin), ("SYN", f.syn), ("RST", f.rst), ("PSH", f.psh), ("ACK", f.ack)]
        .into_iter()
        .chain([("URG", f.urg), ("ECE", f.ece), ("CWR", f.cwr), ("NS", f.ns)])
        .fold(Object::new(), |o, (k, v)| o.put(k, v.into()))
        .done()
}

fn layer4(l4: &flow::Layer4) -> Value {
    use flow::layer4::Protocol as P;
    let icmp = |t: u32, c: u32| Object::new().put("type", t.into()).put("code", c.into()).done();
    let (key, value) = match &l4.protocol {
        Some(P::Tcp(t)) => (
            "TCP",
            Object::new()
                .put("source_port", t.source_port.into())
                .put("destination_port", t.destination_port.into())
                .put_present("flags", t.flags.as_ref().map(tcp_flags))
                .done(),
        ),
        Some(P::Udp(u)) => ("UDP", ports(u.source_port, u.destination_port)),
        Some(P::Sctp(s)) => ("SCTP", ports(s.source_port, s.destination_port)),
        Some(P::IcmPv4(i)) => ("ICMPv4", icmp(i.r#type, i.code)),
        Some(P::IcmPv6(i)) => ("ICMPv6", icmp(i.r#type, i.code)),
        None => return Object::new().done(),
    };
    Object::new().put_present(key, Some(value)).done()
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.clone())).collect())
}

fn endpoint(e: &flow::Endpoint) -> Value {
    let workloads: Vec<Value> = e
        .workloads
        .iter()
        .map(|w| Object::new().put("name", w.name.clone().into()).put("kind", w.kind.clone().into()).done())
        .collect();
    Object::new()
        .put("ID", e.id.into())
        .put("identity", e.identity.into())
        .put("cluster_name", e.cluster_name.clone().into())
        .put("namespace", e.namespace.clone().into())
        .put("labels", strings(&e.labels))
        .put("pod_name", e.pod_name.clone().into())
        .put("workloads", Value::Array(workloads))
        .done()
}

fn policies(list: &[flow::Policy]) -> Value {
    Value::Array(
        list.iter()
            .map(|p| {
                Object::new()
                    .put("name", p.name.clone().into())
                    .put("namespace", p.namespace.clone().into())
                    .put("labels", strings(&p.labels))
                    .put("revision", if p.revision == 0 { Value::Null } else { p.revision.to_string().into() })
                    .put("kind", p.kind.clone().into())
                    .done()
            })
            .collect(),
    )
}

/// An enum value's name, or its number when this build does not know it.
fn name<E: TryFrom<i32>>(value: i32, as_name: fn(&E) -> &'static str) -> Value {
    if value == 0 {
        return Value::Null;
    }
    E::try_from(value).map_or_else(|_| value.into(), |e| as_name(&e).into())
}

#[allow(deprecated, reason = "Hubble's JSON still carries drop_reason")]
pub fn flow(f: &flow::Flow) -> Value {
    Object::new()
        .put_present("time", f.time.as_ref().map(|t| timestamp(t).into()))
        .put("verdict", name(f.verdict, flow::Verdict::as_str_name))
        .put("drop_reason", f.drop_reason.into())
        .put_present(
            "IP",
            f.ip.as_ref().map(|ip| {
                Object::new()
                    .put("source", ip.source.clone().into())
                    .put("destination", ip.destination.clone().into())
                    .put("ipVersion", name(ip.ip_version, flow::IpVersion::as_str_name))
                    .put("encrypted", ip.encrypted.into())
                    .done()
            }),
        )
        .put_present("l4", f.l4.as_ref().map(layer4))
        .put_present("source", f.source.as_ref().map(endpoint))
        .put_present("destination", f.destination.as_ref().map(endpoint))
        .put("Type", name(f.r#type, flow::FlowType::as_str_name))
        .put("node_name", f.node_name.clone().into())
        .put("traffic_direction", name(f.traffic_direction, flow::TrafficDirection::as_str_name))
        .put("drop_reason_desc", name(f.drop_reason_desc, flow::DropReason::as_str_name))
        .put_present("l7", f.l7.as_ref().map(layer7))
        .put_present(
            "event_type",
            f.event_type
                .as_ref()
                .map(|e| Object::new().put("type", e.r#type.into()).put("sub_type", e.sub_type.into()).done()),
        )
        .put_present("is_reply", f.is_reply.map(Value::Bool))
        .put("egress_allowed_by", policies(&f.egress_allowed_by))
        .put("ingress_allowed_by", policies(&f.ingress_allowed_by))
        .put("egress_denied_by", policies(&f.egress_denied_by))
        .put("ingress_denied_by", policies(&f.ingress_denied_by))
        .put_present("weir", f.weir.as_ref().map(weir))
        .done()
}

fn layer7(l: &flow::Layer7) -> Value {
    use flow::layer7::Record;
    let record = match &l.record {
        Some(Record::Dns(d)) => Some((
            "dns",
            Object::new()
                .put("query", d.query.clone().into())
                .put("ips", strings(&d.ips))
                .put("ttl", d.ttl.into())
                .put("cnames", strings(&d.cnames))
                .put("observation_source", d.observation_source.clone().into())
                .put("rcode", d.rcode.into())
                .put("qtypes", strings(&d.qtypes))
                .put("rrtypes", strings(&d.rrtypes))
                .done(),
        )),
        Some(Record::Http(h)) => Some((
            "http",
            Object::new()
                .put("code", h.code.into())
                .put("method", h.method.clone().into())
                .put("url", h.url.clone().into())
                .put("protocol", h.protocol.clone().into())
                .done(),
        )),
        None => None,
    };
    let out = Object::new()
        .put("type", name(l.r#type, flow::L7FlowType::as_str_name))
        // uint64 is a string in protobuf's JSON.
        .put("latency_ns", if l.latency_ns == 0 { Value::Null } else { l.latency_ns.to_string().into() });
    match record {
        Some((key, value)) => out.put_present(key, Some(value)).done(),
        None => out.done(),
    }
}

/// Weir's extension of the flow (field 50000).
fn weir(w: &flow::WeirFlow) -> Value {
    Object::new()
        .put("drop_reason", w.drop_reason.clone().into())
        .put("drop_reason_code", w.drop_reason_code.into())
        .put("rule", w.rule.clone().into())
        .put("match", w.r#match.clone().into())
        .put("chaos", w.chaos.clone().into())
        .put_present("source_process", w.source_process.as_ref().map(process))
        .put_present("destination_process", w.destination_process.as_ref().map(process))
        .done()
}

fn process(p: &flow::WeirProcess) -> Value {
    Object::new()
        .put("pid", p.pid.into())
        .put("binary", p.binary.clone().into())
        .put("exec_id", p.exec_id.clone().into())
        .put("uid", p.uid.into())
        .put("namespace", p.namespace.clone().into())
        .put("pod_name", p.pod_name.clone().into())
        .done()
}

/// A flow as Hubble's GetFlowsResponse prints: the flow, its node and time.
pub fn response(f: &flow::Flow) -> Value {
    Object::new()
        .put_present("flow", Some(flow(f)))
        .put("node_name", f.node_name.clone().into())
        .put_present("time", f.time.as_ref().map(|t| timestamp(t).into()))
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_in_utc_with_protobufs_fraction_digits() {
        let t = |seconds, nanos| timestamp(&prost_types::Timestamp { seconds, nanos });
        assert_eq!(t(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400, 5_000_000), "2000-02-29T00:00:00.005Z");
        assert_eq!(t(1_796_529_600, 123_456_000), "2026-12-06T04:00:00.123456Z");
        assert_eq!(t(4_102_444_799, 1), "2099-12-31T23:59:59.000000001Z");
    }

    #[test]
    fn defaults_are_left_out_and_presence_kept() {
        let f = flow::Flow {
            verdict: flow::Verdict::Dropped as i32,
            is_reply: Some(false),
            l4: Some(flow::Layer4 {
                protocol: Some(flow::layer4::Protocol::Tcp(flow::Tcp {
                    source_port: 0,
                    destination_port: 80,
                    flags: Some(flow::TcpFlags { syn: true, ..Default::default() }),
                })),
            }),
            drop_reason_desc: flow::DropReason::PolicyDenied as i32,
            ..Default::default()
        };
        assert_eq!(
            flow(&f),
            serde_json::json!({"verdict": "DROPPED", "is_reply": false, "drop_reason_desc": "POLICY_DENIED",
                "l4": {"TCP": {"destination_port": 80, "flags": {"SYN": true}}}})
        );
    }
}
