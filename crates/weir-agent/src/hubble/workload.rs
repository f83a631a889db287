//! A pod's workload as Hubble names it (`Endpoint.workloads`), derived as
//! Cilium derives it from the pod (its `GetWorkloadMetaFromPod`): only a
//! pod whose name was generated (`metadata.generateName`) and that has a
//! controlling owner has one. A ReplicaSet whose name ends in the pod's
//! `pod-template-hash` label is its Deployment's; a Job named
//! `NAME-<8 to 10 digits>` is its CronJob's; an OpenShift
//! ReplicationController with a `deploymentconfig` label is that
//! DeploymentConfig's; any other owner (StatefulSet, DaemonSet, Job,
//! ReplicaSet) is itself. Hubble's workload filters and `hubble observe
//! --workload`'s syntax are here too. Pure: no I/O.

use std::collections::BTreeMap;

use weir_proto::flow;
use weir_spec::OwnerReference;

/// The workload of a pod with these `generateName`, labels and owners;
/// none for a pod without a generated name or a controller.
pub fn of_pod(
    generate_name: Option<&str>,
    labels: &BTreeMap<String, String>,
    owners: &[OwnerReference],
) -> Vec<flow::Workload> {
    if generate_name.is_none_or(str::is_empty) {
        return Vec::new();
    }
    let Some(controller) = owners.iter().find(|o| o.controller == Some(true)) else { return Vec::new() };
    let label = |key: &str| labels.get(key).map(String::as_str).filter(|v| !v.is_empty());
    let (kind, name) = match (controller.kind.as_str(), label("pod-template-hash")) {
        ("ReplicaSet", Some(hash)) if controller.name.ends_with(hash) => {
            let name = controller.name.strip_suffix(&format!("-{hash}")).unwrap_or(&controller.name);
            ("Deployment", name.to_string())
        }
        ("ReplicationController", _) if label("deploymentconfig").is_some() => {
            ("DeploymentConfig", label("deploymentconfig").unwrap_or_default().to_string())
        }
        ("Job", _) => match cron_job_name(&controller.name) {
            Some(cron) => ("CronJob", cron.to_string()),
            None => ("Job", controller.name.clone()),
        },
        (kind, _) => (kind, controller.name.clone()),
    };
    vec![flow::Workload { name, kind: kind.to_string() }]
}

/// A CronJob's Job is named `CRONJOB-<scheduled time in minutes>`: the
/// CronJob's name when `name` ends in `-` and 8 to 10 digits.
fn cron_job_name(name: &str) -> Option<&str> {
    let (prefix, digits) = name.rsplit_once('-')?;
    let timestamp = (8..=10).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    (timestamp && !prefix.is_empty()).then_some(prefix)
}

/// Hubble's workload filter: some workload of the endpoint has the
/// filter's name and kind (an empty one matches any).
pub fn matches(filters: &[flow::Workload], endpoint: &flow::Endpoint) -> bool {
    endpoint.workloads.iter().any(|w| {
        filters.iter().any(|f| (f.name.is_empty() || f.name == w.name) && (f.kind.is_empty() || f.kind == w.kind))
    })
}

/// `hubble observe --workload`'s value: `NAME`, `KIND/NAME` or `KIND/`.
pub fn parse_flag(text: &str) -> flow::Workload {
    match text.split_once('/') {
        Some((kind, name)) => flow::Workload { name: name.to_string(), kind: kind.to_string() },
        None => flow::Workload { name: text.to_string(), kind: String::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: None,
            controller: controller.then_some(true),
            block_owner_deletion: None,
        }
    }

    fn workload(kind: &str, name: &str) -> Vec<flow::Workload> {
        vec![flow::Workload { name: name.into(), kind: kind.into() }]
    }

    #[test]
    fn owners_become_workloads_as_in_cilium() {
        let hash: BTreeMap<String, String> = [("pod-template-hash".to_string(), "5d8f7c9b4".to_string())].into();
        let none = BTreeMap::new();
        let of = |labels: &BTreeMap<String, String>, o: OwnerReference| of_pod(Some("x-"), labels, &[o]);
        assert_eq!(of(&hash, owner("ReplicaSet", "web-5d8f7c9b4", true)), workload("Deployment", "web"));
        assert_eq!(of(&none, owner("ReplicaSet", "web-5d8f7c9b4", true)), workload("ReplicaSet", "web-5d8f7c9b4"));
        assert_eq!(of(&hash, owner("ReplicaSet", "web-other", true)), workload("ReplicaSet", "web-other"));
        assert_eq!(of(&none, owner("StatefulSet", "db", true)), workload("StatefulSet", "db"));
        assert_eq!(of(&none, owner("DaemonSet", "agent", true)), workload("DaemonSet", "agent"));
        assert_eq!(of(&none, owner("Job", "backup-28915200", true)), workload("CronJob", "backup"));
        assert_eq!(of(&none, owner("Job", "migrate", true)), workload("Job", "migrate"));
        assert_eq!(of(&none, owner("Job", "migrate-1234", true)), workload("Job", "migrate-1234"), "too few digits");
        let dc: BTreeMap<String, String> = [("deploymentconfig".to_string(), "shop".to_string())].into();
        assert_eq!(of(&dc, owner("ReplicationController", "shop-3", true)), workload("DeploymentConfig", "shop"));
        assert_eq!(of(&none, owner("ReplicationController", "rc", true)), workload("ReplicationController", "rc"));
    }

    #[test]
    fn a_pod_without_a_generated_name_or_a_controller_has_no_workload() {
        let none = BTreeMap::new();
        assert!(of_pod(None, &none, &[owner("StatefulSet", "db", true)]).is_empty(), "not generated");
        assert!(of_pod(Some(""), &none, &[owner("StatefulSet", "db", true)]).is_empty());
        assert!(of_pod(Some("db-"), &none, &[owner("StatefulSet", "db", false)]).is_empty(), "no controller");
        assert!(of_pod(Some("db-"), &none, &[]).is_empty());
        let owners = [owner("Node", "n1", false), owner("StatefulSet", "db", true)];
        assert_eq!(of_pod(Some("db-"), &none, &owners), workload("StatefulSet", "db"), "the controller");
    }

    #[test]
    fn filters_take_a_name_a_kind_or_both() {
        let e = flow::Endpoint { workloads: workload("Deployment", "web"), ..Default::default() };
        let f = |text: &str| vec![parse_flag(text)];
        assert!(matches(&f("web"), &e));
        assert!(matches(&f("Deployment/web"), &e));
        assert!(matches(&f("Deployment/"), &e));
        assert!(!matches(&f("StatefulSet/web"), &e));
        assert!(!matches(&f("api"), &e));
        assert!(matches(&[parse_flag("api"), parse_flag("web")], &e), "any of them");
        assert!(!matches(&f("Deployment/"), &flow::Endpoint::default()), "no workload");
        assert_eq!(parse_flag("Deployment/"), flow::Workload { name: String::new(), kind: "Deployment".into() });
    }
}
