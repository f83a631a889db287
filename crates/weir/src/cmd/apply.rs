//! `weir apply -f` and `weir delete -f`: Kubernetes-shaped documents, sent to
//! every agent they concern. Services and EndpointSlices go to the socket
//! load balancer, NetworkPolicies and CiliumNetworkPolicies to network
//! policy, FilterPolicies to the packet filter, RuntimePolicies to runtime
//! security, Chaos Mesh NetworkChaos to chaos experiments.
//!
//! A lab with a cluster store (several nodes on the pod path) takes every
//! kind but NetworkChaos through the store instead: one etcd transaction,
//! which the agents follow (`cmd/store.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use weir_filter::FilterPolicy;
use weir_proto::agent::v1 as pb;

use super::client;
use super::target::AgentTarget;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// YAML files of Kubernetes `Service` (v1), `EndpointSlice`
    /// (discovery.k8s.io/v1), `NetworkPolicy` (networking.k8s.io/v1),
    /// `CiliumNetworkPolicy` (cilium.io/v2), Chaos Mesh `NetworkChaos`
    /// (chaos-mesh.org/v1alpha1), Weir `FilterPolicy`, `RuntimePolicy` and
    /// `XdpLoadBalancer` (weir.dev/v1alpha1) documents, `---`
    /// separated; `-` reads standard input. Every document is checked before
    /// any agent is touched, and each agent applies them all or none. A lab
    /// of several nodes on the pod path commits them to its etcd in one
    /// transaction, which every agent follows (see docs/store.md).
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

/// The documents of one file, Lists expanded; a file with none is an error,
/// as in kubectl ("no objects passed").
fn documents(file: &Path) -> anyhow::Result<Vec<weir_spec::RawDocument>> {
    let text = read(file)?;
    let docs = weir_spec::split_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if docs.is_empty() {
        anyhow::bail!("{}: no objects in it (an empty file, or a List with no items)", file.display());
    }
    Ok(docs)
}

/// The documents of all files, split by where they go.
struct Documents {
    /// Services and EndpointSlices, as one YAML stream.
    services: String,
    service_objects: Vec<weir_service::Object>,
    filters: Vec<FilterPolicy>,
    /// RuntimePolicies, as one YAML stream.
    runtime: String,
    /// NetworkPolicies and CiliumNetworkPolicies, as one YAML stream.
    netpolicy: String,
    /// NetworkChaos experiments, as one YAML stream.
    chaos: String,
    /// The XDP load balancer's configuration (one document at most).
    xlb: Option<String>,
    /// Every document but NetworkChaos, for the cluster's store: what it
    /// names, its YAML, and where it is in the files (for errors).
    stored: Vec<(weir_store::ObjectRef, String, String)>,
}

fn load(files: &[PathBuf]) -> anyhow::Result<Documents> {
    let mut docs = Documents {
        services: String::new(),
        service_objects: Vec::new(),
        filters: Vec::new(),
        runtime: String::new(),
        netpolicy: String::new(),
        chaos: String::new(),
        xlb: None,
        stored: Vec::new(),
    };
    for file in files {
        for doc in documents(file)? {
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
                    weir_runtime::RuntimePolicy::parse(&doc.text).map_err(at)?;
                    docs.runtime.push_str("---\n");
                    docs.runtime.push_str(&doc.text);
                }
                "NetworkPolicy" | "CiliumNetworkPolicy" => {
                    weir_policy::parse(&doc.kind, &doc.text).map_err(at)?;
                    docs.netpolicy.push_str("---\n");
                    docs.netpolicy.push_str(&doc.text);
                }
                "NetworkChaos" | "SocketChaos" | "PodChaos" | "DNSChaos" | "ServiceChaos" => {
                    weir_chaos::parse(&doc.kind, &doc.text).map_err(at)?;
                    docs.chaos.push_str("---\n");
                    docs.chaos.push_str(&doc.text);
                }
                "XdpLoadBalancer" => {
                    weir_lb::spec::parse(&doc.text).map_err(at)?;
                    if docs.xlb.replace(doc.text.clone()).is_some() {
                        anyhow::bail!(
                            "{}: {}: a second XdpLoadBalancer: one document holds a load balancer's whole configuration",
                            file.display(),
                            doc.position()
                        );
                    }
                }
                other => anyhow::bail!(
                    "{}: {}: kind {other:?} is not one weir applies (Service, EndpointSlice, NetworkPolicy, CiliumNetworkPolicy, NetworkChaos, PodChaos, SocketChaos, DNSChaos, ServiceChaos, FilterPolicy, RuntimePolicy, XdpLoadBalancer)",
                    file.display(),
                    doc.position()
                ),
            }
            if let Some(kind) = weir_store::Kind::of_document(&doc.kind) {
                let object = weir_store::ObjectRef::new(kind, doc.namespace.as_deref(), &doc.name)
                    .map_err(|e| anyhow::anyhow!("{}: {}: {e}", file.display(), doc.position()))?;
                let position = format!("{}: {}", file.display(), doc.position());
                // The last document naming an object wins, as in one kubectl apply.
                docs.stored.retain(|(o, _, _)| *o != object);
                docs.stored.push((object, doc.text.clone(), position));
            }
        }
    }
    Ok(docs)
}

/// One call to the agent of `node`, on the service `call` takes a client
/// of; its refusal is an error naming the node.
pub(super) fn ask<C, T, F>(
    rt: &tokio::runtime::Runtime,
    node: &str,
    socket: &Path,
    call: impl FnOnce(C) -> F,
) -> anyhow::Result<T>
where
    C: client::ServiceClient,
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    rt.block_on(async { anyhow::Ok(call(client::connect(socket.to_path_buf()).await?).await?.into_inner()) })
        .map_err(|e| anyhow::anyhow!("{node}: {}", client::status_message(&e)))
}

pub fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let docs = load(&args.files)?;
    // The same consistency checks the agents make, before any of them is asked.
    weir_service::ClusterState::default().apply(docs.service_objects.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(plan) = args.target.lab_plan()? {
        let network = lab_network(&plan);
        for object in &docs.service_objects {
            if let weir_service::Object::Service(service) = object {
                network.check(service).map_err(|e| anyhow::anyhow!("Service {}: {e}", object.key()))?;
            }
        }
    }
    // NetworkChaos and XdpLoadBalancers alone go to each node, store or not.
    if !docs.stored.is_empty() {
        if let Some(store) = args.target.cluster_store()? {
            if !docs.chaos.is_empty() {
                anyhow::bail!(
                    "chaos experiments (NetworkChaos, PodChaos, SocketChaos, DNSChaos, ServiceChaos) are started on each node, not kept in the cluster's store: apply them in a file of their own"
                );
            }
            if docs.xlb.is_some() {
                anyhow::bail!(
                    "an XdpLoadBalancer is applied to the agents that run the load balancer, not kept in the cluster's store: apply it in a file of its own"
                );
            }
            return super::store::apply(&store, &args.target, &docs.stored);
        }
    }
    let agents = args.target.agents()?;
    let rt = client::runtime()?;
    if !docs.services.is_empty() {
        for (node, socket) in &agents {
            let request = pb::ServiceApplyRequest { yaml: docs.services.clone() };
            let reply =
                ask(&rt, node, socket, |mut c: client::Services| async move { c.service_apply(request).await })?;
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
            let reply =
                ask(&rt, node, socket, |mut c: client::NetworkPolicy| async move { c.policy_apply(request).await })?;
            println!("{node}: {}", policy_change_line(&reply));
        }
    }
    if !docs.runtime.is_empty() {
        for (node, socket) in &agents {
            let request = pb::RuntimeApplyRequest { yaml: docs.runtime.clone() };
            let reply = ask(&rt, node, socket, |mut c: client::Runtime| async move { c.runtime_apply(request).await })?;
            println!("{node}: {}", runtime_change_line(&reply));
        }
    }
    if !docs.chaos.is_empty() {
        // One start for every node: each picks the same pods from it, and
        // ends the experiments at the same time.
        let started_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        for (node, socket) in &agents {
            let request = pb::ChaosApplyRequest { yaml: docs.chaos.clone(), started_unix_ns };
            let reply = ask(&rt, node, socket, |mut c: client::Chaos| async move { c.chaos_apply(request).await })?;
            println!("{node}: started chaos experiments {}", reply.started.join(", "));
        }
    }
    if let Some(yaml) = &docs.xlb {
        // Only the agents that run the load balancer take it.
        for (node, socket, interface) in super::lb_edit::balancers(&rt, &agents)? {
            let request = pb::LbApplyRequest { yaml: yaml.clone() };
            let reply =
                ask(&rt, &node, &socket, |mut c: client::LoadBalancer| async move { c.lb_apply(request).await })?;
            println!("{node}: XdpLoadBalancer on {interface}: {}", reply.changes.join("; "));
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

/// The addresses a lab's cluster IPs may not take: its pod CIDRs, nodes and
/// pods. Node ports are left to the agents, which know their range.
fn lab_network(plan: &weir_lab::LabPlan) -> weir_service::ClusterNetwork {
    let mut network = weir_service::ClusterNetwork { node_port_range: 1..=u16::MAX, ..Default::default() };
    for node in &plan.nodes {
        let holder = format!("node {}'s address", node.name);
        network.reserve_address(node.address.into(), holder.clone());
        if let Some(v6) = node.address6 {
            network.reserve_address(v6.into(), holder);
        }
    }
    for pod in &plan.pods {
        let holder = format!("pod {}/{}'s address", pod.namespace, pod.name);
        network.reserve_address(pod.ip.into(), holder.clone());
        if let Some(v6) = pod.ipv6 {
            network.reserve_address(v6.into(), holder);
        }
    }
    for node in &plan.nodes {
        let holder = format!("the pod CIDR of node {}", node.name);
        network.reserve(node.pod_cidr.into(), holder.clone());
        if let Some(prefix) = node.pod_prefix6 {
            if let Ok(net) = ipnet::Ipv6Net::new(prefix, 64) {
                network.reserve(net.into(), holder);
            }
        }
    }
    network
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
    /// CiliumNetworkPolicies, NetworkChaos and RuntimePolicies to remove: only kind,
    /// metadata.name and metadata.namespace are read, so the files given to
    /// `weir apply` (or `kubectl get -o yaml` output) do. A lab with a
    /// cluster store deletes them all in one transaction, or none.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// An object that is not there is no error (kubectl's flag).
    #[arg(long)]
    ignore_not_found: bool,
    #[command(flatten)]
    target: AgentTarget,
}

/// One object to remove, as named by a document.
struct Named {
    kind: String,
    namespace: String,
    name: String,
    /// Where it is named, for errors.
    file: String,
}

impl Named {
    /// kubectl's name for the resource, as in its NotFound errors.
    fn resource(&self) -> &'static str {
        match self.kind.as_str() {
            "Service" => "services",
            "EndpointSlice" => "endpointslices.discovery.k8s.io",
            "NetworkPolicy" => "networkpolicies.networking.k8s.io",
            "CiliumNetworkPolicy" => "ciliumnetworkpolicies.cilium.io",
            "NetworkChaos" => "networkchaos.chaos-mesh.org",
            "FilterPolicy" => "filterpolicies.weir.dev",
            "SocketChaos" => "socketchaos.chaos.weir.dev",
            "ServiceChaos" => "servicechaos.chaos.weir.dev",
            "PodChaos" => "podchaos.chaos-mesh.org",
            "DNSChaos" => "dnschaos.chaos-mesh.org",
            _ => "runtimepolicies.weir.dev",
        }
    }
}

/// What the documents of `files` name: kind, namespace and name, nothing else read.
fn load_names(files: &[PathBuf]) -> anyhow::Result<Vec<Named>> {
    let mut out = Vec::new();
    for file in files {
        for doc in documents(file)? {
            let at = |field: &str, message: String| {
                anyhow::anyhow!("{}: {}: {field}: {message}", file.display(), doc.position())
            };
            match doc.kind.as_str() {
                "Service" | "EndpointSlice" | "NetworkPolicy" | "CiliumNetworkPolicy" | "RuntimePolicy"
                | "NetworkChaos" | "SocketChaos" | "PodChaos" | "DNSChaos" | "ServiceChaos" | "FilterPolicy" => {}
                other => return Err(at("kind", format!("{other:?} is not one weir deletes (Service, EndpointSlice, NetworkPolicy, CiliumNetworkPolicy, NetworkChaos, PodChaos, SocketChaos, DNSChaos, ServiceChaos, RuntimePolicy, FilterPolicy)"))),
            }
            if doc.name.is_empty() {
                return Err(at("metadata.name", "required: it names what to delete".into()));
            }
            let namespace = doc.namespace.clone().unwrap_or_else(|| "default".into());
            let file = format!("{}: {}", file.display(), doc.position());
            out.push(Named { kind: doc.kind.clone(), namespace, name: doc.name.clone(), file });
        }
    }
    Ok(out)
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let names = load_names(&args.files)?;
    let stored: Vec<weir_store::ObjectRef> = names
        .iter()
        .filter_map(|n| {
            let kind = weir_store::Kind::of_document(&n.kind)?;
            Some(weir_store::ObjectRef::new(kind, Some(&n.namespace), &n.name))
        })
        .collect::<Result<_, _>>()?;
    // NetworkChaos alone is stopped on each node, store or not.
    if !stored.is_empty() {
        if let Some(store) = args.target.cluster_store()? {
            if stored.len() != names.len() {
                anyhow::bail!(
                    "chaos experiments (NetworkChaos, PodChaos, SocketChaos, DNSChaos, ServiceChaos) are stopped on each node, not kept in the cluster's store: delete them in a file of their own"
                );
            }
            return super::store::delete(&store, &args.target, &stored, args.ignore_not_found);
        }
    }
    if let Some(filter) = names.iter().find(|n| n.kind == "FilterPolicy") {
        anyhow::bail!(
            "{}: FilterPolicy {}: weir delete removes FilterPolicies only from a cluster's store; remove filter rules with `weir filter del`",
            filter.file,
            filter.name
        );
    }
    let rt = client::runtime()?;
    let mut failed = 0;
    for (node, socket) in args.target.agents()? {
        for named in &names {
            let outcome = rt.block_on(delete_one(&socket, named));
            match outcome {
                Ok(line) => println!("{node}: {line}"),
                Err(status) if status.code() == tonic::Code::NotFound => {
                    if !args.ignore_not_found {
                        failed += 1;
                        eprintln!(
                            "Error from server (NotFound): {} {:?} not found (namespace {}, on {node})",
                            named.resource(),
                            named.name,
                            named.namespace
                        );
                    }
                }
                Err(status) => {
                    failed += 1;
                    eprintln!(
                        "{node}: deleting {} {}/{}: {}",
                        named.kind,
                        named.namespace,
                        named.name,
                        status.message()
                    );
                }
            }
        }
    }
    if failed > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A client of one of the agent's services, an agent away being Unavailable.
async fn reach<C: client::ServiceClient>(socket: &Path) -> Result<C, tonic::Status> {
    client::connect(socket.to_path_buf()).await.map_err(|e| tonic::Status::unavailable(format!("{e:#}")))
}

/// Deletes one object on one agent: what changed, or the agent's refusal
/// (NotFound when it has no such object).
async fn delete_one(socket: &Path, named: &Named) -> Result<String, tonic::Status> {
    Ok(match named.kind.as_str() {
        "Service" | "EndpointSlice" => {
            let request = pb::ServiceDeleteRequest {
                kind: named.kind.clone(),
                namespace: named.namespace.clone(),
                name: named.name.clone(),
            };
            let reply = reach::<client::Services>(socket).await?.service_delete(request).await?.into_inner();
            format!("deleted {} ({} map writes)", reply.deleted.join(", "), reply.map_writes)
        }
        "NetworkChaos" | "SocketChaos" | "PodChaos" | "DNSChaos" | "ServiceChaos" => {
            let request =
                pb::ChaosStopRequest { names: vec![format!("{}/{}", named.namespace, named.name)], all: false };
            let reply = reach::<client::Chaos>(socket).await?.chaos_stop(request).await?.into_inner();
            format!("stopped {} {}", named.kind, reply.stopped.join(", "))
        }
        "RuntimePolicy" => {
            let request = pb::RuntimeDeleteRequest { names: vec![named.name.clone()] };
            runtime_change_line(&reach::<client::Runtime>(socket).await?.runtime_delete(request).await?.into_inner())
        }
        _ => {
            let request = pb::PolicyDeleteRequest {
                names: vec![pb::PolicyName {
                    kind: named.kind.clone(),
                    namespace: named.namespace.clone(),
                    name: named.name.clone(),
                }],
            };
            policy_change_line(
                &reach::<client::NetworkPolicy>(socket).await?.policy_delete(request).await?.into_inner(),
            )
        }
    })
}
