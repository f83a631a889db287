//! `weir apply -f` and `weir delete -f`: Kubernetes-shaped documents, sent to
//! every agent they concern. Services and EndpointSlices go to the socket
//! load balancer, NetworkPolicies and CiliumNetworkPolicies to network
//! policy, FilterPolicies to the packet filter, RuntimePolicies to runtime
//! security.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use weir_agent::client::connect;
use weir_filter::FilterPolicy;
use weir_proto::agent::v1 as pb;

use super::target::AgentTarget;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// YAML files of Kubernetes `Service` (v1), `EndpointSlice`
    /// (discovery.k8s.io/v1), `NetworkPolicy` (networking.k8s.io/v1),
    /// `CiliumNetworkPolicy` (cilium.io/v2), Weir `FilterPolicy` and `RuntimePolicy` documents, `---`
    /// separated; `-` reads standard input. Every document is checked before
    /// any agent is touched, and each agent applies them all or none.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    target: AgentTarget,
}

fn read(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("reading standard input");
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// The documents of all files, split by where they go.
struct Documents {
    /// Services and EndpointSlices, as one YAML stream.
    services: String,
    service_objects: Vec<weir_service::Object>,
    filters: Vec<FilterPolicy>,
    /// RuntimePolicies, as one YAML stream, and their names.
    runtime: String,
    runtime_names: Vec<String>,
    /// NetworkPolicies and CiliumNetworkPolicies, as one YAML stream, and their names.
    netpolicy: String,
    netpolicy_names: Vec<pb::PolicyName>,
}

fn load(files: &[PathBuf]) -> anyhow::Result<Documents> {
    let mut docs = Documents {
        services: String::new(),
        service_objects: Vec::new(),
        filters: Vec::new(),
        runtime: String::new(),
        runtime_names: Vec::new(),
        netpolicy: String::new(),
        netpolicy_names: Vec::new(),
    };
    for file in files {
        let text = read(file)?;
        let split = weir_spec::split_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for doc in split {
            let at = |e: weir_spec::SpecError| anyhow::anyhow!("{}: {}", file.display(), doc.locate(e));
            match doc.kind.as_str() {
                "Service" | "EndpointSlice" => {
                    docs.service_objects
                        .push(weir_service::table::parse_object(&doc.api_version, &doc.kind, &doc.text).map_err(at)?);
                    docs.services.push_str("---\n");
                    docs.services.push_str(&doc.text);
                }
                "FilterPolicy" => docs.filters.push(FilterPolicy::parse(&doc.text).map_err(at)?),
                "RuntimePolicy" => {
                    let policy = weir_runtime::RuntimePolicy::parse(&doc.text).map_err(at)?;
                    docs.runtime_names.push(policy.metadata.name);
                    docs.runtime.push_str("---\n");
                    docs.runtime.push_str(&doc.text);
                }
                "NetworkPolicy" | "CiliumNetworkPolicy" => {
                    let policy = weir_policy::parse(&doc.kind, &doc.text).map_err(at)?;
                    docs.netpolicy_names.push(pb::PolicyName {
                        kind: doc.kind.clone(),
                        namespace: policy.key.namespace,
                        name: policy.key.name,
                    });
                    docs.netpolicy.push_str("---\n");
                    docs.netpolicy.push_str(&doc.text);
                }
                other => anyhow::bail!(
                    "{}: document {}: kind {other:?} is not one weir applies (Service, EndpointSlice, NetworkPolicy, CiliumNetworkPolicy, FilterPolicy, RuntimePolicy)",
                    file.display(),
                    doc.index
                ),
            }
        }
    }
    Ok(docs)
}

type Client = weir_proto::agent::v1::agent_client::AgentClient<tonic::transport::Channel>;

/// One call to the agent of `node`; its refusal is an error naming the node.
fn ask<T, F>(
    rt: &tokio::runtime::Runtime,
    node: &str,
    socket: &Path,
    call: impl FnOnce(Client) -> F,
) -> anyhow::Result<T>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    rt.block_on(async { anyhow::Ok(call(connect(socket.to_path_buf()).await?).await?.into_inner()) })
        .map_err(|e| anyhow::anyhow!("{node}: {}", super::status_message(&e)))
}

pub fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let docs = load(&args.files)?;
    // The same consistency checks the agents make, before any of them is asked.
    weir_service::ClusterState::default().apply(docs.service_objects.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let agents = args.target.agents()?;
    let rt = super::filter::runtime()?;
    if !docs.services.is_empty() {
        for (node, socket) in &agents {
            let request = pb::ServiceApplyRequest { yaml: docs.services.clone() };
            let reply = ask(&rt, node, socket, |mut c| async move { c.service_apply(request).await })?;
            let what = verbs(
                "",
                [
                    ("created", &reply.created),
                    ("configured", &reply.configured),
                    ("unchanged", &reply.unchanged),
                    ("deleted", &[]),
                ],
            );
            println!(
                "{node}: {what} ({} map writes in {:.3} ms; {:.3} ms in the agent)",
                reply.map_writes,
                reply.apply_ns as f64 / 1e6,
                reply.total_ns as f64 / 1e6
            );
        }
    }
    if !docs.netpolicy.is_empty() {
        for (node, socket) in &agents {
            let request = pb::PolicyApplyRequest { yaml: docs.netpolicy.clone() };
            let reply = ask(&rt, node, socket, |mut c| async move { c.policy_apply(request).await })?;
            println!("{node}: {}", policy_change_line(&reply));
        }
    }
    if !docs.runtime.is_empty() {
        for (node, socket) in &agents {
            let request = pb::RuntimeApplyRequest { yaml: docs.runtime.clone() };
            let reply = ask(&rt, node, socket, |mut c| async move { c.runtime_apply(request).await })?;
            println!("{node}: {}", runtime_change_line(&reply));
        }
    }
    for policy in docs.filters {
        let request = pb::FilterUpdateRequest {
            mode: pb::filter_update_request::Mode::ReplaceOrigin.into(),
            rules_json: serde_json::to_string(&policy.spec.rules)?,
            delete: Vec::new(),
            origin: format!("FilterPolicy/{}", policy.metadata.name),
        };
        rt.block_on(super::filter::update_all(&args.target, request))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// "created A, B; configured C" for the lists that are not empty.
fn verbs(kind: &str, lists: [(&str, &[String]); 4]) -> String {
    lists
        .iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(verb, list)| format!("{verb} {kind}{}", list.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn policy_change_line(reply: &pb::PolicyChangeResponse) -> String {
    format!(
        "{} (revision {}: {} pods' policy maps swapped in {:.3} ms)",
        verbs(
            "",
            [
                ("created", &reply.created),
                ("configured", &reply.configured),
                ("unchanged", &reply.unchanged),
                ("deleted", &reply.deleted)
            ]
        ),
        reply.revision,
        reply.endpoints_updated,
        reply.apply_ns as f64 / 1e6
    )
}

fn runtime_change_line(reply: &pb::RuntimeChangeResponse) -> String {
    format!(
        "{} ({} kernel rules live, generation {}; {} map writes in {:.3} ms)",
        verbs(
            "RuntimePolicy ",
            [
                ("created", &reply.created),
                ("configured", &reply.configured),
                ("unchanged", &reply.unchanged),
                ("deleted", &reply.deleted)
            ]
        ),
        reply.kernel_rules,
        reply.generation,
        reply.map_writes,
        reply.apply_ns as f64 / 1e6
    )
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// YAML files naming the Services, EndpointSlices, NetworkPolicies,
    /// CiliumNetworkPolicies (by kind, namespace and name) and RuntimePolicies
    /// (by name) to remove, as given to `weir apply`.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    target: AgentTarget,
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let docs = load(&args.files)?;
    if !docs.filters.is_empty() {
        anyhow::bail!("weir delete removes Services, EndpointSlices, network policies and RuntimePolicies; remove filter rules with `weir filter del`");
    }
    let rt = super::filter::runtime()?;
    for (node, socket) in args.target.agents()? {
        if !docs.netpolicy_names.is_empty() {
            let request = pb::PolicyDeleteRequest { names: docs.netpolicy_names.clone() };
            match ask(&rt, &node, &socket, |mut c| async move { c.policy_delete(request).await }) {
                Ok(reply) => println!("{node}: {}", policy_change_line(&reply)),
                Err(e) => println!("{e}"),
            }
        }
        if !docs.runtime_names.is_empty() {
            let request = pb::RuntimeDeleteRequest { names: docs.runtime_names.clone() };
            match ask(&rt, &node, &socket, |mut c| async move { c.runtime_delete(request).await }) {
                Ok(reply) => println!("{node}: {}", runtime_change_line(&reply)),
                Err(e) => println!("{e}"),
            }
        }
        for object in &docs.service_objects {
            let key = object.key();
            let request = pb::ServiceDeleteRequest {
                kind: object.kind().to_string(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            };
            match ask(&rt, &node, &socket, |mut c| async move { c.service_delete(request).await }) {
                Ok(reply) => println!("{node}: deleted {} ({} map writes)", reply.deleted.join(", "), reply.map_writes),
                Err(e) => println!("{e}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
