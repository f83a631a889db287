//! Chaos Mesh's `PodChaos` (`chaos-mesh.org/v1alpha1`):
//!
//! - `pod-kill`: every process of the selected pods is killed (in a lab, a
//!   pod is its processes; nothing restarts them);
//! - `pod-failure`: the selected pods are unavailable for `duration` (until
//!   stopped when left out): Weir freezes every process of each (cgroup v2's
//!   freezer) and thaws them at the end.
//!
//! ```yaml
//! apiVersion: chaos-mesh.org/v1alpha1
//! kind: PodChaos
//! metadata: {name: kill-web, namespace: shop}
//! spec:
//!   action: pod-kill
//!   mode: one
//!   selector: {labelSelectors: {app: web}}
//!   gracePeriod: 0          # seconds between SIGTERM and SIGKILL
//! ```
//!
//! `container-kill`, and fields Weir cannot honour (`containerNames`,
//! `remoteCluster`, and each action's fields on the other), are refused by
//! path.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use weir_spec::{err, SpecError};

use crate::spec::{mode, selector, Direction, Experiment, Fault, PodSelection, PodSelectorSpec};

pub const KIND: &str = "PodChaos";

pub type PodChaos = crate::spec::ChaosDocument<PodChaosSpec>;

/// Chaos Mesh's `PodChaosSpec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodChaosSpec {
    pub action: String,
    pub mode: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub selector: PodSelectorSpec,
    #[serde(default)]
    pub grace_period: Option<i64>,
    #[serde(default)]
    pub duration: Option<Value>,
    #[serde(default)]
    pub container_names: Option<Value>,
    #[serde(default)]
    pub remote_cluster: Option<Value>,
}

impl PodChaos {
    pub fn parse(yaml: &str) -> Result<Experiment, SpecError> {
        let doc: PodChaos = weir_spec::parse_yaml(yaml)?;
        doc.validate()
    }

    pub fn validate(&self) -> Result<Experiment, SpecError> {
        self.check_header(crate::spec::API_VERSION, KIND)?;
        let spec = &self.spec;
        let refused =
            [("containerNames", spec.container_names.is_some()), ("remoteCluster", spec.remote_cluster.is_some())];
        if let Some((field, _)) = refused.iter().find(|(_, present)| *present) {
            return Err(err(format!("spec.{field}"), "not supported by Weir (it acts on whole pods)"));
        }
        let (fault, duration) = match spec.action.as_str() {
            "pod-kill" => {
                if spec.duration.is_some() {
                    return Err(err("spec.duration", "not used by pod-kill, which acts once"));
                }
                let grace = match spec.grace_period {
                    None | Some(0) => Duration::ZERO,
                    Some(seconds) if (1..=3600).contains(&seconds) => Duration::from_secs(seconds as u64),
                    Some(other) => return Err(err("spec.gracePeriod", format!("{other}: seconds from 0 to 3600"))),
                };
                (Fault::PodKill { grace }, None)
            }
            "pod-failure" => {
                if spec.grace_period.is_some() {
                    return Err(err("spec.gracePeriod", "used by pod-kill only"));
                }
                let text = match &spec.duration {
                    None | Some(Value::Null) => None,
                    Some(Value::String(text)) => Some(text.as_str()),
                    Some(other) => {
                        return Err(err("spec.duration", format!("{other}: a Go duration string (\"30s\")")))
                    }
                };
                (Fault::PodFailure, crate::spec::duration_of("spec.duration", text)?)
            }
            "container-kill" => {
                return Err(err("spec.action", "\"container-kill\" is not supported by Weir (pod-kill, pod-failure)"))
            }
            other => {
                return Err(err(
                    "spec.action",
                    format!("{other:?} is not a PodChaos action (pod-kill, pod-failure, container-kill)"),
                ))
            }
        };
        let namespace = self.metadata.namespace.clone();
        let selection = PodSelection {
            selector: selector("spec.selector", &spec.selector, &namespace)?,
            mode: mode("spec", &spec.mode, spec.value.as_deref())?,
        };
        Ok(Experiment {
            name: self.metadata.name.clone(),
            namespace,
            fault,
            // No peers: the selection stands in as its own target.
            target: selection.clone(),
            selection,
            direction: Direction::To,
            duration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(spec: &str) -> String {
        format!("apiVersion: chaos-mesh.org/v1alpha1\nkind: PodChaos\nmetadata: {{name: kill, namespace: shop}}\nspec:\n{spec}")
    }

    #[test]
    fn pod_kill_as_chaos_mesh_writes_it() {
        let exp = PodChaos::parse(&doc(
            "  action: pod-kill\n  mode: one\n  selector: {labelSelectors: {app: web}}\n  gracePeriod: 5\n",
        ))
        .expect("valid");
        assert_eq!(exp.fault, Fault::PodKill { grace: Duration::from_secs(5) });
        assert_eq!(exp.selection.selector.namespaces, vec!["shop".to_string()]);
        let field = |spec: &str| PodChaos::parse(&doc(spec)).expect_err("refused").field;
        assert_eq!(field("  action: container-kill\n  mode: one\n"), "spec.action");
        assert_eq!(field("  action: pod-kill\n  mode: one\n  duration: 30s\n"), "spec.duration");
        assert_eq!(field("  action: pod-kill\n  mode: one\n  gracePeriod: -1\n"), "spec.gracePeriod");
        assert_eq!(field("  action: pod-kill\n  mode: one\n  containerNames: [app]\n"), "spec.containerNames");
        assert_eq!(field("  action: pod-kill\n  mode: sometimes\n"), "spec.mode");
    }

    #[test]
    fn pod_failure_for_its_duration_or_until_stopped() {
        let exp = PodChaos::parse(&doc(
            "  action: pod-failure\n  mode: all\n  selector: {labelSelectors: {app: web}}\n  duration: 1m30s\n",
        ))
        .expect("valid");
        assert_eq!((exp.fault, exp.duration), (Fault::PodFailure, Some(Duration::from_secs(90))));
        let open = PodChaos::parse(&doc("  action: pod-failure\n  mode: one\n")).expect("valid");
        assert_eq!(open.duration, None, "until stopped");
        let field = |spec: &str| PodChaos::parse(&doc(spec)).expect_err("refused").field;
        assert_eq!(field("  action: pod-failure\n  mode: one\n  gracePeriod: 0\n"), "spec.gracePeriod");
        assert_eq!(field("  action: pod-failure\n  mode: one\n  duration: soon\n"), "spec.duration");
        assert_eq!(field("  action: pod-failure\n  mode: one\n  duration: 30\n"), "spec.duration");
        assert_eq!(field("  action: pod-failure\n  mode: one\n  containerNames: [app]\n"), "spec.containerNames");
    }
}
