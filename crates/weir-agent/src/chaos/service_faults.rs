//! ServiceChaos on this node: a Service's frontends as the socket load
//! balancer holds them, each paired with the clients whose calls are
//! judged (each selected pod's cgroup, or 0 for every client).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use weir_bpf::chaos_service::{ServiceAction, ServiceFaultKey, ServiceFaults};
use weir_chaos::service::{ServicePort, ServiceTarget};
use weir_chaos::Fault;
use weir_service::table::{Frontend, FrontendKind};

use crate::pods::PodRecord;

/// ServiceChaos's faults.
pub(super) fn is_service(fault: &Fault) -> bool {
    service_action(fault).is_some()
}

/// A ServiceChaos fault's kernel action and share of calls.
pub(super) fn service_action(fault: &Fault) -> Option<(ServiceAction, u32)> {
    match *fault {
        Fault::ServiceRefuse { errno, probability } => Some((ServiceAction::Refuse(errno), probability)),
        Fault::ServiceBlackhole { probability } => Some((ServiceAction::Blackhole, probability)),
        _ => None,
    }
}

/// The kernel keys of `target` for `clients` (None: every client), from
/// this node's frontends. An error names a Service or port this node does
/// not know.
pub(super) fn keys(
    target: &ServiceTarget,
    clients: Option<&[PodRecord]>,
    frontends: &[Frontend],
) -> Result<Vec<ServiceFaultKey>, String> {
    let of_service: Vec<&Frontend> = frontends
        .iter()
        .filter(|f| f.kind != FrontendKind::HostPort)
        .filter(|f| f.service.namespace == target.namespace && f.service.name == target.name)
        .collect();
    if of_service.is_empty() {
        return Err(format!(
            "Service {}/{} has no frontend on this node (not applied, or headless)",
            target.namespace, target.name
        ));
    }
    // The service's ports the document names, by name and protocol (a
    // NodePort frontend carries the node port, the others the service's).
    let ports: BTreeSet<(&str, u8)> = of_service
        .iter()
        .filter(|f| match &target.port {
            None => true,
            Some(ServicePort::Name(name)) => f.service.port_name == *name,
            Some(ServicePort::Number(n)) => f.kind != FrontendKind::NodePort && f.port == *n,
        })
        .map(|f| (f.service.port_name.as_str(), weir_service::plan::proto_number(f.service.protocol)))
        .collect();
    if ports.is_empty() {
        return Err(format!("{target}: the Service has no such port"));
    }
    let cgroups: Vec<u64> = match clients {
        None => vec![0],
        // A pod's calls are judged by its own node's hooks only, so an
        // entry for another node's pod never matches here.
        Some(pods) => pods.iter().filter_map(|p| std::fs::metadata(&p.cgroup).ok()).map(|m| m.ino()).collect(),
    };
    let mut keys = Vec::new();
    for fe in of_service {
        let proto = weir_service::plan::proto_number(fe.service.protocol);
        if !ports.contains(&(fe.service.port_name.as_str(), proto)) {
            continue;
        }
        for cgroup in &cgroups {
            keys.push(ServiceFaultKey { cgroup: *cgroup, address: fe.address, port: fe.port, proto });
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

impl super::ChaosState {
    /// Opens the socket load balancer's service fault map when `planned`
    /// has ServiceChaos, and refuses a (client, frontend) already under a
    /// live experiment other than those `replaced`, or twice in the batch.
    pub(super) fn prepare_service_faults(
        &mut self,
        planned: &[(String, super::Running)],
        replaced: &BTreeSet<String>,
    ) -> Result<(), super::ChaosError> {
        if planned.iter().all(|(_, run)| run.service_keys.is_empty()) {
            return Ok(());
        }
        if self.service_faults.is_none() {
            self.service_faults = Some(ServiceFaults::open(&self.pins).map_err(|e| {
                super::ChaosError::Spec(format!(
                    "ServiceChaos needs the socket load balancer on this node, which judges it: {e}"
                ))
            })?);
        }
        let live: std::collections::BTreeMap<u32, &String> = self
            .running
            .iter()
            .filter(|(key, run)| !run.ended && !replaced.contains(*key))
            .map(|(key, run)| (run.slot, key))
            .collect();
        let mut owner: std::collections::BTreeMap<ServiceFaultKey, &String> = std::collections::BTreeMap::new();
        for (key, slot) in self.service_faults.as_ref().map(|f| f.entries()).unwrap_or_default() {
            if let Some(name) = live.get(&slot) {
                owner.insert(key, name);
            }
        }
        for (name, run) in planned {
            for key in &run.service_keys {
                if let Some(other) = owner.insert(*key, name) {
                    let client =
                        if key.cgroup == 0 { "every client".to_string() } else { format!("cgroup {}", key.cgroup) };
                    return Err(super::ChaosError::Spec(format!(
                        "{name}: calls from {client} to {}:{} are already under experiment {other}",
                        key.address, key.port
                    )));
                }
            }
        }
        Ok(())
    }
}
