//! Which agents a command talks to: every node of a lab, one node, or a socket.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::client;

/// Which agents to talk to. With neither --lab nor --socket: the lab that is
/// up when exactly one is; the host agent when none is; an error naming them
/// when several are.
#[derive(Debug, Clone, Args)]
pub struct AgentTarget {
    /// The lab whose agents to use. Left out: the only lab that is up; with
    /// none up, the host agent; with several up, an error naming them.
    #[arg(long, env = "WEIR_LAB")]
    pub lab: Option<String>,
    /// Only this lab node [default: every node of the lab].
    #[arg(long)]
    pub node: Option<String>,
    /// The agent on this socket instead (the host agent's is /run/weir/agent.sock).
    #[arg(long, conflicts_with_all = ["lab", "node"])]
    pub socket: Option<PathBuf>,
}

/// The rule every agent command follows when no lab is named: the only lab
/// up, or none (then the host agent). Pure, given the labs that are up.
pub fn choose_lab(named: Option<&str>, up: &[String]) -> anyhow::Result<Option<String>> {
    if let Some(lab) = named {
        return Ok(Some(lab.to_string()));
    }
    match up {
        [] => Ok(None),
        [only] => Ok(Some(only.clone())),
        many => anyhow::bail!(
            "several labs are up ({}): choose one with --lab (or WEIR_LAB), or the host agent with --socket {}",
            many.join(", "),
            weir_host::paths::HOST_AGENT_SOCKET
        ),
    }
}

/// [`choose_lab`] among the labs that are up on this machine.
pub fn implied_lab(named: Option<&str>) -> anyhow::Result<Option<String>> {
    if named.is_some() {
        return choose_lab(named, &[]);
    }
    choose_lab(None, &weir_lab::runtime::ready_labs())
}

impl AgentTarget {
    /// The lab addressed; None for the host agent or --socket.
    pub fn lab(&self) -> anyhow::Result<Option<String>> {
        if self.socket.is_some() {
            return Ok(None);
        }
        match (implied_lab(self.lab.as_deref())?, &self.node) {
            (None, Some(node)) => anyhow::bail!("--node {node}: no lab is up"),
            (lab, _) => Ok(lab),
        }
    }

    /// (node name, socket) of every agent addressed.
    pub fn agents(&self) -> anyhow::Result<Vec<(String, PathBuf)>> {
        if let Some(socket) = &self.socket {
            return Ok(vec![("agent".into(), socket.clone())]);
        }
        let Some(lab) = self.lab()? else {
            return Ok(vec![("host".into(), PathBuf::from(weir_host::paths::HOST_AGENT_SOCKET))]);
        };
        // A ClusterMesh: the agents of every cluster (node names are unique across them).
        let clusters = weir_lab::mesh_runtime::clusters_of(&lab);
        let plans = if clusters.is_empty() {
            vec![weir_lab::runtime::load_plan(&lab)?]
        } else {
            clusters.iter().map(|c| weir_lab::runtime::load_plan(c)).collect::<Result<Vec<_>, _>>()?
        };
        // The nodes', then the edge's load balancers' (`spec.edge`).
        let balancers = plans.iter().flat_map(|plan| plan.edge.iter().flat_map(|e| &e.load_balancers));
        let nodes: Vec<(String, PathBuf)> = plans
            .iter()
            .flat_map(|plan| &plan.nodes)
            .map(|n| (&n.name, &n.agent))
            .chain(balancers.map(|b| (&b.name, &b.agent)))
            .filter(|(name, _)| self.node.as_deref().is_none_or(|want| want == name.as_str()))
            .map(|(name, agent)| (name.clone(), agent.socket.clone()))
            .collect();
        if nodes.is_empty() {
            anyhow::bail!("lab {lab} has no node {}", self.node.as_deref().unwrap_or_default());
        }
        Ok(nodes)
    }

    /// The plan of the lab addressed, if any (None for a socket or the host agent).
    pub fn lab_plan(&self) -> anyhow::Result<Option<weir_lab::LabPlan>> {
        let Some(lab) = self.lab()? else { return Ok(None) };
        Ok(Some(one_cluster(&lab)?))
    }

    /// Refuses a `flag` naming a pod (NAMESPACE/NAME) that the lab addressed
    /// does not have, or that runs on another node than --node; with
    /// `namespace_ok`, a bare NAMESPACE must have a pod in the lab. Where no
    /// lab is addressed (host agent, --socket) the agent is the judge.
    pub fn check_pod(&self, flag: &str, selector: &str, namespace_ok: bool) -> anyhow::Result<()> {
        let Some(lab) = self.lab()? else { return Ok(()) };
        let plan = one_cluster(&lab)?;
        check_pod_in(&plan, &lab, self.node.as_deref(), flag, selector, namespace_ok)
    }
    /// One call to every agent addressed, in order: (node, reply).
    /// The service is the one `call` takes a client of.
    pub fn ask_each<C, T, F, Fut>(&self, call: F) -> anyhow::Result<Vec<(String, T)>>
    where
        C: client::ServiceClient,
        F: Fn(C) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let rt = client::runtime()?;
        self.agents()?
            .into_iter()
            .map(|(node, socket)| {
                let reply = rt
                    .block_on(async { anyhow::Ok(call(client::connect(socket).await?).await?.into_inner()) })
                    .map_err(|e| anyhow::anyhow!("{node}: {}", client::status_message(&e)))?;
                Ok((node, reply))
            })
            .collect()
    }

    /// The cluster's store of the lab addressed, where it has one (several
    /// nodes on the pod path). The store holds the state of every node, so
    /// --node cannot narrow a change to one of them.
    pub fn cluster_store(&self) -> anyhow::Result<Option<super::store::ClusterStore>> {
        let Some(plan) = self.lab_plan()? else { return Ok(None) };
        let Some(store) = super::store::ClusterStore::of_plan(&plan) else { return Ok(None) };
        if let Some(node) = &self.node {
            anyhow::bail!(
                "--node {node}: lab {} keeps its state in the cluster's store (etcd at {}), which every node follows; leave --node out",
                plan.name,
                store.url()
            );
        }
        Ok(Some(store))
    }

    /// Exactly one agent, for commands that read one node's state.
    pub fn one(&self) -> anyhow::Result<(String, PathBuf)> {
        let mut agents = self.agents()?;
        if agents.len() > 1 {
            let names: Vec<&str> = agents.iter().map(|a| a.0.as_str()).collect();
            anyhow::bail!("this needs one agent; choose a node with --node ({})", names.join(", "));
        }
        agents.pop().context("no agent")
    }
}

/// [`AgentTarget::check_pod`] against a lab's plan. Pure.
pub fn check_pod_in(
    plan: &weir_lab::LabPlan,
    lab: &str,
    node: Option<&str>,
    flag: &str,
    selector: &str,
    namespace_ok: bool,
) -> anyhow::Result<()> {
    if selector.contains('/') || !namespace_ok {
        let pod = plan.pod(selector).with_context(|| {
            let missing = weir_lab::LabError::NoSuchPod { lab: lab.to_string(), pod: selector.to_string() };
            format!("{flag} {selector}: {missing}")
        })?;
        if let Some(node) = node.filter(|n| *n != pod.node) {
            anyhow::bail!("{flag} {selector}: pod {selector} of lab {lab} runs on {}, not {node}", pod.node);
        }
        return Ok(());
    }
    check_namespace_in(plan, lab, node, flag, selector)
}

/// Refuses a `flag` naming a namespace in which the lab has no pod (on --node). Pure.
pub fn check_namespace_in(
    plan: &weir_lab::LabPlan,
    lab: &str,
    node: Option<&str>,
    flag: &str,
    namespace: &str,
) -> anyhow::Result<()> {
    if !plan.pods.iter().any(|p| p.namespace == namespace && node.is_none_or(|n| n == p.node)) {
        let on = node.map(|n| format!(" on {n}")).unwrap_or_default();
        anyhow::bail!("{flag} {namespace}: no pod in namespace {namespace} in lab {lab}{on}");
    }
    Ok(())
}

/// The plan of lab `lab`; a ClusterMesh is refused by name, with its clusters
/// (what needs one cluster's plan, its pods or its store, needs a cluster).
fn one_cluster(lab: &str) -> anyhow::Result<weir_lab::LabPlan> {
    let clusters = weir_lab::mesh_runtime::clusters_of(lab);
    if !clusters.is_empty() {
        anyhow::bail!("{lab} is a ClusterMesh of {}: name one of its clusters with --lab", clusters.join(", "));
    }
    Ok(weir_lab::runtime::load_plan(lab)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_lab_named_means_the_only_lab_up_or_the_host_agent() {
        let up = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(choose_lab(None, &up(&[])).expect("host"), None);
        assert_eq!(choose_lab(None, &up(&["demo"])).expect("one"), Some("demo".into()));
        assert_eq!(choose_lab(Some("x"), &up(&["a", "b"])).expect("named"), Some("x".into()));
        let several = choose_lab(None, &up(&["a", "b"])).expect_err("several");
        assert!(several.to_string().contains("several labs are up (a, b)"), "{several}");
    }
}
