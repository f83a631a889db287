//! `weir policy explain`: which rule decides traffic between two pods or
//! addresses, judged by the same `decide` the kernel's fixtures check.

use super::*;

impl NetPolicyState {
    pub(super) fn pod_name(&self, ip: Ipv4Addr) -> Option<String> {
        self.records.iter().find(|r| r.ip == ip).map(|r| format!("{}/{}", r.namespace, r.name))
    }

    /// An address from NAMESPACE/POD (its IPv4 address, or its IPv6 one
    /// when the other side is IPv6) or an IP address.
    fn resolve(&self, field: &str, what: &str, v6: bool) -> Result<IpAddr, NetPolicyError> {
        if let Ok(ip) = what.parse() {
            return Ok(ip);
        }
        let (ns, name) = what
            .split_once('/')
            .ok_or_else(|| weir_spec::err(field, format!("{what:?}: give NAMESPACE/POD or an IPv4 or IPv6 address")))?;
        let pod = self
            .records
            .iter()
            .find(|r| r.namespace == ns && r.name == name)
            .ok_or_else(|| weir_spec::err(field, format!("no pod {what}")))?;
        match (v6, pod.ipv6) {
            (false, _) => Ok(IpAddr::V4(pod.ip)),
            (true, Some(v6)) => Ok(IpAddr::V6(v6)),
            (true, None) => Err(weir_spec::err(field, format!("pod {what} has no IPv6 address")).into()),
        }
    }

    /// `endpoint`'s verdict in `direction`, with how its CIDR rules treat `peer`.
    fn verdict(&self, decision: Decision, endpoint: Ipv4Addr, direction: Direction, peer: IpAddr) -> pb::PolicyVerdict {
        let (name, rule) = match decision {
            Decision::NotEnforced => ("not-enforced", None),
            Decision::Allowed { rule } => ("allowed", Some(rule)),
            Decision::Denied { rule } => ("denied", Some(rule)),
            Decision::DefaultDeny => ("default-deny", None),
        };
        pb::PolicyVerdict {
            decision: name.into(),
            rule: rule.and_then(|r| self.compiled.rules.get(r as usize)).map(ToString::to_string).unwrap_or_default(),
            endpoint: self.pod_name(endpoint).unwrap_or_else(|| endpoint.to_string()),
            cidr_notes: self.cidr_notes(endpoint, direction, peer),
        }
    }

    fn cidr_notes(&self, endpoint: Ipv4Addr, direction: Direction, peer: IpAddr) -> Vec<String> {
        let Some(subject) = self.cluster.pod_by_ip(endpoint.into()) else { return Vec::new() };
        let owner = match self.cluster.pod_by_ip(peer) {
            Some(pod) => Some(format!("pod {}/{}", pod.labels.namespace, pod.name)),
            None => match self.compiled.identity_of(peer) {
                weir_policy::identity::HOST => Some("this node".to_string()),
                weir_policy::identity::REMOTE_NODE => Some("a node".to_string()),
                _ => None,
            },
        };
        weir_policy::ipblock::explain(&self.policy_list(), &subject.labels, direction, peer, owner.as_deref())
    }

    /// The decision on traffic from `source` to `destination`, as the two
    /// pods' policy maps reach it (the same evaluation the kernel makes).
    pub fn explain(&self, request: &pb::PolicyExplainRequest) -> Result<pb::PolicyExplainResponse, NetPolicyError> {
        let v6 = [&request.source, &request.destination].iter().any(|a| a.parse::<Ipv6Addr>().is_ok());
        let src = self.resolve("source", &request.source, v6)?;
        let dst = self.resolve("destination", &request.destination, v6)?;
        // A pod's policy is keyed by its IPv4 address, whichever family a packet has.
        let pod_key = |ip: IpAddr| self.cluster.pod_by_ip(ip).map(|p| p.ip);
        let protocol = match request.protocol.to_ascii_uppercase().as_str() {
            "TCP" | "" => 6,
            "UDP" => 17,
            "SCTP" => 132,
            "ICMP" => 1,
            other => return Err(weir_spec::err("protocol", format!("{other:?}: TCP, UDP, SCTP or ICMP")).into()),
        };
        let port = u16::try_from(request.port).map_err(|_| weir_spec::err("port", "is not a port (0-65535)"))?;
        let (src_id, dst_id) = (self.compiled.identity_of(src), self.compiled.identity_of(dst));
        // As the datapath: the packet's identity, keyed by the address's own
        // identity when ipBlocks split it.
        let (src_judged, dst_judged) =
            (self.compiled.policy_identity(src, src_id), self.compiled.policy_identity(dst, dst_id));
        let egress = pod_key(src).and_then(|k| Some((self.compiled.endpoints.get(&k)?, k))).map(|(ep, k)| {
            let decision = weir_policy::decide(ep, Direction::Egress, dst_judged, protocol, port);
            self.verdict(decision, k, Direction::Egress, dst)
        });
        let ingress = pod_key(dst).and_then(|k| Some((self.compiled.endpoints.get(&k)?, k))).map(|(ep, k)| {
            let decision = weir_policy::decide(ep, Direction::Ingress, src_judged, protocol, port);
            self.verdict(decision, k, Direction::Ingress, src)
        });
        let allows = |v: &Option<pb::PolicyVerdict>| {
            v.as_ref().is_none_or(|v| matches!(v.decision.as_str(), "allowed" | "not-enforced"))
        };
        let allowed = allows(&egress) && allows(&ingress);
        let ctx = FlowContext { pods: pods_by_address(&self.records), ..Default::default() };
        Ok(pb::PolicyExplainResponse {
            source: Some(self.shared.endpoint(&ctx, src, src_id)),
            destination: Some(self.shared.endpoint(&ctx, dst, dst_id)),
            egress,
            ingress,
            allowed,
        })
    }
}
