//! Which agents a command talks to: every node of a lab, one node, or a socket.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct AgentTarget {
    /// The lab whose agents to use; may be left out when exactly one lab is up.
    /// With no lab up, the host agent is used.
    #[arg(long, env = "WEIR_LAB")]
    pub lab: Option<String>,
    /// Only this lab node [default: every node of the lab].
    #[arg(long)]
    pub node: Option<String>,
    /// The agent on this socket instead.
    #[arg(long, conflicts_with_all = ["lab", "node"])]
    pub socket: Option<PathBuf>,
}

impl AgentTarget {
    /// (node name, socket) of every agent addressed.
    pub fn agents(&self) -> anyhow::Result<Vec<(String, PathBuf)>> {
        if let Some(socket) = &self.socket {
            return Ok(vec![("agent".into(), socket.clone())]);
        }
        let lab = match (&self.lab, &self.node) {
            (Some(lab), _) => lab.clone(),
            (None, node) => match weir_lab::runtime::resolve_lab(None) {
                Ok(lab) => lab,
                Err(_) if node.is_none() => {
                    return Ok(vec![("host".into(), PathBuf::from(weir_host::paths::HOST_AGENT_SOCKET))])
                }
                Err(e) => return Err(e.into()),
            },
        };
        let plan = weir_lab::runtime::load_plan(&lab)?;
        let nodes: Vec<(String, PathBuf)> = plan
            .nodes
            .iter()
            .filter(|n| self.node.as_deref().is_none_or(|want| want == n.name))
            .map(|n| (n.name.clone(), n.agent.socket.clone()))
            .collect();
        if nodes.is_empty() {
            anyhow::bail!("lab {lab} has no node {}", self.node.as_deref().unwrap_or_default());
        }
        Ok(nodes)
    }

    /// The lab addressed, if any (None for a socket or the host agent).
    pub fn lab_plan(&self) -> anyhow::Result<Option<weir_lab::LabPlan>> {
        if self.socket.is_some() {
            return Ok(None);
        }
        let lab = match &self.lab {
            Some(lab) => lab.clone(),
            None => match weir_lab::runtime::resolve_lab(None) {
                Ok(lab) => lab,
                Err(_) => return Ok(None),
            },
        };
        Ok(Some(weir_lab::runtime::load_plan(&lab)?))
    }

    /// One call to every agent addressed, in order: (node, reply).
    pub fn ask_each<T, F, Fut>(&self, call: F) -> anyhow::Result<Vec<(String, T)>>
    where
        F: Fn(super::follow::Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let rt = super::filter::runtime()?;
        self.agents()?
            .into_iter()
            .map(|(node, socket)| {
                let reply = rt
                    .block_on(async {
                        anyhow::Ok(call(weir_agent::client::connect(socket).await?).await?.into_inner())
                    })
                    .map_err(|e| anyhow::anyhow!("{node}: {}", super::status_message(&e)))?;
                Ok((node, reply))
            })
            .collect()
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
