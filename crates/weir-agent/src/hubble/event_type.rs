//! Cilium's monitor event types, which Hubble's flows carry
//! (`Flow.event_type`) and its filters select (`FlowFilter.event_type`,
//! `hubble observe --type`): the numbers and names of Cilium's
//! `pkg/monitor/api`, what each of Weir's flows is among them, and the
//! filter's judgement.
//!
//! Weir's flow events are policy's verdict on a new flow (Hubble's
//! PolicyVerdict, as `weir observe` prints them: `policy-verdict:...
//! ALLOWED`), drops with their reason (Drop, its sub-type the reason's
//! code, as Hubble's), a packet a chaos fault changed and let through
//! (Trace, at the endpoint it left or reached) and L7 messages (Hubble's
//! access log). Pure: no I/O.

use weir_proto::flow;

pub const DROP: i32 = 1;
pub const DEBUG: i32 = 2;
pub const CAPTURE: i32 = 3;
pub const TRACE: i32 = 4;
pub const POLICY_VERDICT: i32 = 5;
/// The socket load balancer's traces (Cilium's `trace_sock_notify`).
pub const TRACE_SOCK: i32 = 7;
/// L7 flows (Hubble's monitor's access-log messages).
pub const ACCESS_LOG: i32 = 129;
pub const AGENT: i32 = 130;

/// Cilium's trace sub-types (observation points) Weir's traces use.
pub const TRACE_TO_ENDPOINT: i32 = 0;
pub const TRACE_FROM_ENDPOINT: i32 = 5;

/// `hubble observe --type`'s names of event types.
pub const TYPE_NAMES: &[(&str, i32)] = &[
    ("drop", DROP),
    ("debug", DEBUG),
    ("capture", CAPTURE),
    ("trace", TRACE),
    ("policy-verdict", POLICY_VERDICT),
    ("trace-sock", TRACE_SOCK),
    ("l7", ACCESS_LOG),
    ("agent", AGENT),
];

/// Cilium's trace observation points by sub-type, as `--type trace:NAME`
/// names them.
pub const TRACE_POINTS: &[(&str, i32)] = &[
    ("to-endpoint", TRACE_TO_ENDPOINT),
    ("to-proxy", 1),
    ("to-host", 2),
    ("to-stack", 3),
    ("to-overlay", 4),
    ("from-endpoint", TRACE_FROM_ENDPOINT),
    ("from-proxy", 6),
    ("from-host", 7),
    ("from-stack", 8),
    ("from-overlay", 9),
    ("from-network", 10),
    ("to-network", 11),
    ("from-crypto", 12),
    ("to-crypto", 13),
];

/// What one of Weir's L3/L4 flow events is among Cilium's event types:
/// a drop (sub-type: Hubble's drop reason code), a changed packet let
/// through (a trace where it was seen), or policy's verdict on a new flow.
pub fn of_flow_event(dropped: bool, chaos: bool, ingress: bool, reason: flow::DropReason) -> flow::CiliumEventType {
    let (r#type, sub_type) = match (dropped, chaos) {
        (true, _) => (DROP, reason as i32),
        (false, true) => (TRACE, if ingress { TRACE_TO_ENDPOINT } else { TRACE_FROM_ENDPOINT }),
        (false, false) => (POLICY_VERDICT, 0),
    };
    flow::CiliumEventType { r#type, sub_type }
}

/// One `--type` value of `hubble observe`: a type's name or number, with
/// an optional `:SUB-TYPE` (a trace's observation point by name, or any
/// sub-type by number: `drop:133`).
pub fn parse_flag(text: &str) -> Result<flow::EventTypeFilter, String> {
    let (name, sub) = match text.split_once(':') {
        Some((name, sub)) => (name, Some(sub)),
        None => (text, None),
    };
    let known = || TYPE_NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    let r#type = match TYPE_NAMES.iter().find(|(n, _)| *n == name) {
        Some((_, t)) => *t,
        None => name
            .parse::<u8>()
            .map(i32::from)
            .map_err(|_| format!("{name:?} is not an event type; known: {}, or a number", known()))?,
    };
    let Some(sub) = sub else {
        return Ok(flow::EventTypeFilter { r#type, match_sub_type: false, sub_type: 0 });
    };
    let named = (r#type == TRACE).then(|| TRACE_POINTS.iter().find(|(n, _)| *n == sub).map(|(_, s)| *s)).flatten();
    let sub_type = match named {
        Some(s) => s,
        None => sub.parse::<u16>().map(i32::from).map_err(|_| {
            if r#type == TRACE {
                let points = TRACE_POINTS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
                format!("{sub:?} is not a trace observation point; known: {points}, or a number")
            } else {
                format!("{sub:?} is not a sub-type of {name:?} (a number, e.g. a drop reason: drop:133)")
            }
        })?,
    };
    Ok(flow::EventTypeFilter { r#type, match_sub_type: true, sub_type })
}

/// Hubble's judgement: the flow's event type is one of the filter's (type
/// 0 any type; the sub-type too when the filter asks); a flow without an
/// event type matches none.
pub fn matches(filters: &[flow::EventTypeFilter], f: &flow::Flow) -> bool {
    let Some(event) = f.event_type.as_ref() else { return false };
    filters.iter().any(|want| {
        (want.r#type == 0 || want.r#type == event.r#type) && (!want.match_sub_type || want.sub_type == event.sub_type)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(r#type: i32, sub_type: i32) -> flow::Flow {
        flow::Flow { event_type: Some(flow::CiliumEventType { r#type, sub_type }), ..Default::default() }
    }

    #[test]
    fn each_flow_event_has_its_cilium_type() {
        let denied = flow::DropReason::PolicyDenied;
        let none = flow::DropReason::Unknown;
        assert_eq!(of_flow_event(true, false, true, denied), flow::CiliumEventType { r#type: 1, sub_type: 133 });
        assert_eq!(of_flow_event(true, true, false, none), flow::CiliumEventType { r#type: 1, sub_type: 0 });
        assert_eq!(of_flow_event(false, false, true, none), flow::CiliumEventType { r#type: 5, sub_type: 0 });
        assert_eq!(of_flow_event(false, true, false, none), flow::CiliumEventType { r#type: 4, sub_type: 5 });
        assert_eq!(of_flow_event(false, true, true, none), flow::CiliumEventType { r#type: 4, sub_type: 0 });
    }

    #[test]
    fn hubble_type_flags_parse_as_its_cli_does() {
        let f = |t, m, s| flow::EventTypeFilter { r#type: t, match_sub_type: m, sub_type: s };
        assert_eq!(parse_flag("drop"), Ok(f(1, false, 0)));
        assert_eq!(parse_flag("l7"), Ok(f(129, false, 0)));
        assert_eq!(parse_flag("policy-verdict"), Ok(f(5, false, 0)));
        assert_eq!(parse_flag("trace-sock"), Ok(f(7, false, 0)));
        assert_eq!(parse_flag("trace:to-endpoint"), Ok(f(4, true, 0)));
        assert_eq!(parse_flag("trace:from-endpoint"), Ok(f(4, true, 5)));
        assert_eq!(parse_flag("drop:133"), Ok(f(1, true, 133)));
        assert_eq!(parse_flag("4:5"), Ok(f(4, true, 5)));
        let e = parse_flag("drops").expect_err("unknown");
        assert!(e.contains("\"drops\"") && e.contains("policy-verdict"), "{e}");
        let e = parse_flag("trace:to-moon").expect_err("unknown point");
        assert!(e.contains("\"to-moon\"") && e.contains("to-endpoint"), "{e}");
        let e = parse_flag("drop:policy").expect_err("not a number");
        assert!(e.contains("\"policy\""), "{e}");
    }

    #[test]
    fn filters_match_type_and_sub_type_as_hubble() {
        let f = |t, m, s| flow::EventTypeFilter { r#type: t, match_sub_type: m, sub_type: s };
        let drop = typed(1, 133);
        assert!(matches(&[f(1, false, 0)], &drop));
        assert!(matches(&[f(1, true, 133)], &drop));
        assert!(!matches(&[f(1, true, 181)], &drop), "another reason");
        assert!(!matches(&[f(4, false, 0)], &drop));
        assert!(matches(&[f(4, false, 0), f(1, false, 0)], &drop), "any of them");
        assert!(matches(&[f(0, false, 0)], &drop), "type 0: any type");
        assert!(matches(&[f(0, true, 133)], &drop), "any type of this sub-type");
        assert!(!matches(&[f(0, false, 0)], &flow::Flow::default()), "no event type");
        assert!(matches(&[f(4, true, 0)], &typed(4, 0)));
        assert!(!matches(&[f(4, true, 0)], &typed(4, 5)), "from-endpoint is not to-endpoint");
    }
}
