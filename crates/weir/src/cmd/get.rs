//! `weir get KIND [NAME]`: what the cluster's store holds. The kinds
//! `weir apply` stores come back as the YAML they were applied as; the pods
//! and nodes the agents publish, as Kubernetes-shaped Pod and Node documents
//! of what they published.

use std::collections::BTreeMap;

use weir_store::ObjectRef;

use super::store::ClusterStore;

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// What to show: a kind as kubectl names it (service, svc, endpointslices,
    /// networkpolicy, netpol, cnp, runtimepolicy, filterpolicy), or the pods
    /// and nodes the agents publish (pods, po, nodes, no).
    kind: String,
    /// One object by name [default: every object of the kind].
    name: Option<String>,
    /// The namespace [default: default]; cluster-wide kinds have none.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// The lab whose store to read. Left out: the only lab that is up.
    #[arg(long, env = "WEIR_LAB")]
    lab: Option<String>,
}

/// What the agents publish, beside what `weir apply` stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    Pods,
    Nodes,
}

const PODS: &str = "weir/endpoints/v1/";
const NODES: &str = "weir/nodes/v1/";

/// `weir get KIND [NAME]`: what the cluster's store holds, as applied.
pub fn run(args: GetArgs) -> anyhow::Result<std::process::ExitCode> {
    let published = match args.kind.to_ascii_lowercase().as_str() {
        "pod" | "pods" | "po" => Some(Published::Pods),
        "node" | "nodes" | "no" => Some(Published::Nodes),
        _ => None,
    };
    let kind = match published {
        Some(_) => None,
        None => Some(weir_store::Kind::lookup(&args.kind).map_err(|e| anyhow::anyhow!("{e}, or pods, nodes"))?),
    };
    let plan = match super::target::implied_lab(args.lab.as_deref())? {
        Some(lab) => Some(weir_lab::runtime::load_plan(&lab)?),
        None => None,
    };
    let Some(store) = plan.as_ref().and_then(ClusterStore::of_plan) else {
        anyhow::bail!(
            "no cluster store here: only a lab of several nodes on the pod path (routing: weir or vxlan) keeps one; a single agent's state is shown by `weir service list`, `weir policy list`, `weir runtime list` and `weir filter list`"
        );
    };
    if args.all_namespaces && args.name.is_some() {
        anyhow::bail!("a name and --all-namespaces together: name the namespace with -n instead");
    }
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let Some(kind) = kind else {
        let (documents, resource, namespaced) = match published {
            Some(Published::Nodes) => (nodes(&store, args.name.as_deref())?, "nodes", false),
            _ => {
                let within = (!args.all_namespaces).then_some(namespace);
                (pods(&store, args.name.as_deref(), within)?, "pods", true)
            }
        };
        return Ok(print(documents, resource, &args, namespace, namespaced));
    };
    let prefix = match (&args.name, kind.namespaced() && !args.all_namespaces) {
        (Some(name), _) => ObjectRef::new(kind, Some(namespace), name)?.key(),
        (None, true) => format!("{}{namespace}/", kind.prefix()),
        (None, false) => kind.prefix(),
    };
    let snapshot = store.read(&prefix)?;
    let found: Vec<(&String, &String)> =
        snapshot.objects.iter().filter(|(key, _)| args.name.is_none() || **key == prefix).collect();
    if found.is_empty() {
        if let Some(name) = &args.name {
            let within = if kind.namespaced() { format!(" in namespace {namespace}") } else { String::new() };
            eprintln!("Error from server (NotFound): {} {name:?} not found{within}", kind.api_resource());
            return Ok(std::process::ExitCode::FAILURE);
        }
        let within = if kind.namespaced() && !args.all_namespaces {
            format!(" in {namespace} namespace")
        } else {
            String::new()
        };
        eprintln!("No resources found{within}.");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for (i, (key, value)) in found.into_iter().enumerate() {
        let stored = weir_store::Stored::decode(key, value.as_bytes())?;
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(stored.yaml.trim_end());
        out.push('\n');
    }
    print!("{out}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// Prints `documents` as a YAML stream, or kubectl's words for none.
fn print(
    documents: Vec<serde_json::Value>,
    resource: &str,
    args: &GetArgs,
    namespace: &str,
    namespaced: bool,
) -> std::process::ExitCode {
    if documents.is_empty() {
        if let Some(name) = &args.name {
            let within = if namespaced { format!(" in namespace {namespace}") } else { String::new() };
            eprintln!("Error from server (NotFound): {resource} {name:?} not found{within}");
            return std::process::ExitCode::FAILURE;
        }
        let within =
            if namespaced && !args.all_namespaces { format!(" in {namespace} namespace") } else { String::new() };
        eprintln!("No resources found{within}.");
        return std::process::ExitCode::SUCCESS;
    }
    let texts: Vec<String> = documents.iter().map(|d| serde_yaml::to_string(d).unwrap_or_default()).collect();
    print!("{}", texts.join("---\n"));
    std::process::ExitCode::SUCCESS
}

/// The pods every node published (`weir/endpoints/v1/<node>/<namespace>/<pod>`),
/// as Pod documents: name, namespace, labels, node, addresses.
fn pods(store: &ClusterStore, name: Option<&str>, namespace: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
    let snapshot = store.read(PODS)?;
    let mut out = Vec::new();
    for (key, value) in &snapshot.objects {
        let record: serde_json::Value =
            serde_json::from_str(value).map_err(|e| anyhow::anyhow!("{key}: not a pod weir published: {e}"))?;
        let field = |f: &str| record[f].as_str().unwrap_or_default().to_string();
        let (pod_namespace, pod_name, node) = (field("namespace"), field("name"), field("node"));
        if name.is_some_and(|n| n != pod_name) || namespace.is_some_and(|n| n != pod_namespace) {
            continue;
        }
        let ips: Vec<serde_json::Value> =
            ["ip", "ipv6"].iter().filter_map(|f| record[*f].as_str()).map(|ip| serde_json::json!({"ip": ip})).collect();
        out.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": pod_namespace, "labels": record["labels"]},
            "spec": {"nodeName": node},
            "status": {"podIP": record["ip"], "podIPs": ips},
        }));
    }
    Ok(out)
}

/// The nodes that published their pods (`weir/nodes/v1/<node>`), as Node
/// documents carrying the digest of the pods file they published from.
fn nodes(store: &ClusterStore, name: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
    let snapshot = store.read(NODES)?;
    let found: BTreeMap<&str, &String> =
        snapshot.objects.iter().filter_map(|(k, v)| Some((k.strip_prefix(NODES)?, v))).collect();
    Ok(found
        .into_iter()
        .filter(|(node, _)| name.is_none_or(|n| n == *node))
        .map(|(node, digest)| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "annotations": {"weir.dev/pods-file-digest": digest}},
            })
        })
        .collect())
}
