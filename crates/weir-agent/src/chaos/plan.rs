//! One chaos document planned on this node: the pods it picks (the same on
//! every node: the draws are seeded by its name and start time), the
//! address pairs, socket and service faults it becomes, and when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use weir_chaos::{Fault, PodRef, PodSelection};

use super::acts::connect_keys;
use super::{external, now_unix_ns, service_faults, ChaosError, ChaosState, Running};
use crate::pods::PodRecord;

pub(super) fn pick(
    what: &str,
    selection: &PodSelection,
    pods: &[PodRecord],
    random: &mut dyn FnMut(usize) -> usize,
) -> Result<Vec<PodRecord>, String> {
    let matching: Vec<PodRecord> = pods
        .iter()
        .filter(|p| {
            let pod = PodRef {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                node: p.node.clone(),
            };
            weir_chaos::matches(&selection.selector, &pod)
        })
        .cloned()
        .collect();
    let mut picked = weir_chaos::choose(selection.mode, &matching, random).map_err(|e| format!("{what}: {e}"))?;
    picked.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(picked)
}

pub(super) fn names(pods: &[PodRecord]) -> Vec<String> {
    pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect()
}

impl ChaosState {
    /// `doc` as this node runs it (its slot still to be given).
    pub(super) fn plan(
        &self,
        doc: &weir_spec::RawDocument,
        started_unix_ns: u64,
        pods: &[PodRecord],
        frontends: Result<&[weir_service::table::Frontend], String>,
    ) -> Result<(String, Running), ChaosError> {
        let experiment =
            weir_chaos::parse(&doc.kind, &doc.text).map_err(|e| ChaosError::Spec(doc.locate(e).to_string()))?;
        let key = format!("{}/{}", experiment.namespace, experiment.name);
        let kind = doc.kind.clone();
        let (doc_kind, doc_yaml) = (doc.kind.clone(), doc.text.clone());
        let mut random =
            weir_chaos::seeded(weir_chaos::seed_of(&experiment.namespace, &experiment.name, started_unix_ns));
        let at = |e: String| ChaosError::Spec(format!("{kind} {key}: {e}"));
        let service = match kind.as_str() {
            weir_chaos::service::KIND => Some(
                weir_chaos::service::ServiceChaos::parse_with_target(&doc.text)
                    .map_err(|e| ChaosError::Spec(doc.locate(e).to_string()))?
                    .1,
            ),
            _ => None,
        };
        let every_client = service.as_ref().is_some_and(|s| s.clients.is_none());
        let selected = if every_client {
            Vec::new()
        } else {
            pick("spec.selector", &experiment.selection, pods, &mut random).map_err(at)?
        };
        let service_keys = match &service {
            Some(target) => {
                let frontends = frontends
                    .clone()
                    .map_err(|why| at(format!("ServiceChaos needs the socket load balancer on this node: {why}")))?;
                service_faults::keys(target, (!every_client).then_some(&selected[..]), frontends).map_err(at)?
            }
            None => Vec::new(),
        };
        // pod-kill and pod-failure act on pods, with no peers.
        let on_pods = matches!(experiment.fault, Fault::PodKill { .. } | Fault::PodFailure);
        let once = matches!(experiment.fault, Fault::PodKill { .. } | Fault::TcpReset);
        let addrs = |p: &[PodRecord]| p.iter().map(|r| (r.ip, r.ipv6)).collect::<Vec<_>>();
        let (targets, pairs) = if let Some(target) = &service {
            (vec![target.to_string()], Vec::new())
        } else if on_pods {
            (Vec::new(), Vec::new())
        } else if matches!(experiment.fault, Fault::Dns(_)) {
            (Vec::new(), weir_chaos::dns::sources(&addrs(&selected)))
        } else {
            // NetworkChaos may name external targets, and then perhaps no target pods.
            let aims = match kind.as_str() {
                weir_chaos::spec::KIND => {
                    weir_chaos::NetworkChaos::parse_with_targets(&doc.text)
                        .map_err(|e| ChaosError::Spec(doc.locate(e).to_string()))?
                        .1
                }
                _ => weir_chaos::spec::Targets { pods: true, external: Vec::new() },
            };
            let targets = if aims.pods {
                pick("spec.target.selector", &experiment.target, pods, &mut random).map_err(at)?
            } else {
                Vec::new()
            };
            let mut pairs = weir_chaos::pairs(experiment.direction, &addrs(&selected), &addrs(&targets));
            let (external, external_pairs) = external::pairs(&aims.external, &selected).map_err(at)?;
            pairs.extend(external_pairs);
            pairs.sort();
            pairs.dedup();
            if pairs.is_empty() {
                return Err(at(
                    "no address pair to affect (the selected pods are the targets, or no target has an address of their family)".into()
                ));
            }
            let mut shown = names(&targets);
            shown.extend(external);
            (shown, pairs)
        };
        let end_unix_ns = match experiment.duration {
            Some(d) => {
                let end = started_unix_ns.saturating_add(d.as_nanos() as u64);
                if end <= now_unix_ns() {
                    return Err(at("its duration has already passed since it was started".into()));
                }
                Some(end)
            }
            None => None,
        };
        // pod-kill and pod-failure: this node's selected pods.
        let local_pods: Vec<PodRecord> = if on_pods {
            selected.iter().filter(|p| p.node == self.node).cloned().collect()
        } else if once {
            // tcp-reset: the pods of this node whose sockets it aborts.
            let senders: BTreeSet<IpAddr> = pairs.iter().map(|(src, _)| *src).collect();
            pods.iter().filter(|p| p.node == self.node && senders.contains(&IpAddr::V4(p.ip))).cloned().collect()
        } else {
            Vec::new()
        };
        let connects = match experiment.fault {
            Fault::ConnectError { .. } => connect_keys(&selected, &pairs),
            _ => Vec::new(),
        };
        let frozen = match experiment.fault {
            Fault::PodFailure => local_pods
                .iter()
                .map(|p| (format!("{}/{}", p.namespace, p.name), std::path::PathBuf::from(&p.cgroup)))
                .collect(),
            _ => Vec::new(),
        };
        Ok((
            key,
            Running {
                experiment,
                kind: doc_kind,
                yaml: doc_yaml,
                slot: 0,
                pods: if every_client { vec!["every client".into()] } else { names(&selected) },
                targets,
                pairs,
                buckets: BTreeMap::new(),
                connects,
                service_keys,
                local_pods,
                done: 0,
                frozen,
                thaw_helper: None,
                end_unix_ns,
                ended: once,
            },
        ))
    }
}
