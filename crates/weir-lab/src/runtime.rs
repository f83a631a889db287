//! Building, inspecting and tearing down labs on this machine.
//!
//! **Invariant: `down` needs nothing but the lab's name.** It removes what the
//! record lists and also everything the naming scheme can find (namespaces by
//! prefix, the lab's cgroup subtree, its pin directory), so a lab left half
//! built by a crash is removed as completely as a healthy one.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_host::{cgroup, iproute, mounts, netns, paths, process, Cgroup};

use crate::plan::{self, LabPlan, NodePlan, PodPlan, FABRIC_BRIDGE, UPLINK};
use crate::spec::{LabSpec, SpecError};

const RECORD: &str = "lab.json";
/// A mesh's record: its spec, in the mesh's own directory.
pub(crate) const MESH_RECORD: &str = "mesh.json";
const READY: &str = "ready";
/// An agent loads and verifies the node's programs before it is ready: a
/// second or two when the machine is idle, many times that when it is not.
/// Reached only when an agent fails to start.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid lab spec: {0}")]
    Spec(#[from] SpecError),
    #[error("lab {name} is already up with a different {what}; only pods and namespaces (their labels) can change while it runs (run `weir lab down {name}` first)")]
    Conflict { name: String, what: &'static str },
    #[error("no lab named {name} (see `weir lab list`)")]
    NotFound { name: String },
    #[error("no pod {pod} in lab {lab} (pods are named NAMESPACE/NAME; `weir lab status {lab}` lists them)")]
    NoSuchPod { lab: String, pod: String },
    #[error("no pod or host {target} in lab {lab} (pods are named NAMESPACE/NAME, external hosts and edge clients by their name; `weir lab status {lab}` lists them)")]
    NoSuchTarget { lab: String, target: String },
    #[error("{0}")]
    Ambiguous(String),
    #[error("letting {interface} take XDP frames: {message}")]
    Xdp { interface: String, message: String },
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Ip(#[from] iproute::IpError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("agent of node {node} {what}; last log lines:\n{log_tail}")]
    AgentNotReady { node: String, what: String, log_tail: String },
    #[error("reading lab record {path}: {message}")]
    Record { path: PathBuf, message: String },
    #[error("the agents of {nodes} in lab {lab} did not apply the new pods file within {waited:?}; their logs say why (`weir lab status {lab}` names them)")]
    AgentsBehind { lab: String, nodes: String, waited: Duration },
}

pub(crate) fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LabError + 'a {
    move |source| LabError::Io { what, path: path.to_path_buf(), source }
}

/// How to bring a lab up.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// The `weir` binary to run as each node's agent; `None` starts no agents.
    pub agent_exe: Option<PathBuf>,
    /// Extra arguments for every agent (e.g. `--log-level debug`).
    pub agent_args: Vec<String>,
}

/// What `up` did.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub name: String,
    /// False when the lab was already up and nothing needed building.
    pub built: bool,
    /// Agents (re)started by this call.
    pub agents_started: Vec<String>,
    /// Pods created and deleted in a lab that was up (NAMESPACE/NAME).
    pub pods_added: Vec<String>,
    pub pods_removed: Vec<String>,
    /// Namespaces added, removed or relabelled in a lab that was up.
    pub namespaces_changed: Vec<String>,
    /// How long the agents took to apply a change of the pods file (on the
    /// pod path, where they follow it into kernel tables).
    pub agents_applied_ms: Option<u128>,
    pub elapsed_ms: u128,
}

/// Filesystem roots the lab lives under, found once per command.
#[derive(Debug, Clone)]
pub struct Roots {
    pub cgroup2: PathBuf,
    pub bpffs: PathBuf,
}

impl Roots {
    /// Finds cgroup2 and bpffs, mounting them where absent.
    pub fn discover() -> Result<Self, LabError> {
        Ok(Self { cgroup2: mounts::ensure_cgroup2()?, bpffs: mounts::ensure_bpffs()? })
    }
}

/// Reads a lab's record.
pub fn load_plan(name: &str) -> Result<LabPlan, LabError> {
    let path = paths::lab_dir(name).join(RECORD);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LabError::NotFound { name: name.to_string() }),
        Err(source) => return Err(LabError::Io { what: "reading", path, source }),
    };
    serde_json::from_str(&text).map_err(|e| LabError::Record { path, message: e.to_string() })
}

/// Builds the lab `spec` describes, or, if it is already up with the same
/// spec, restarts any agent that is not running.
pub fn up(spec: &LabSpec, options: &UpOptions) -> Result<UpReport, LabError> {
    spec.validate()?;
    if paths::lab_dir(spec.name()).join(MESH_RECORD).exists() {
        return Err(LabError::Conflict { name: spec.name().to_string(), what: "kind (it is a ClusterMesh)" });
    }
    up_plan(LabPlan::resolve(spec, &paths::lab_dir(spec.name())), options)
}

/// Whether the lab `existing` records is up whole.
fn is_ready(existing: &LabPlan) -> bool {
    paths::lab_dir(&existing.name).join(READY).exists()
        && netns::exists(&existing.fabric_netns)
        && existing.all_netns().iter().all(|n| netns::exists(n))
}

/// Refuses what `up_plan` would refuse of a lab that is up: another mesh
/// membership, or a change beyond its pods and namespaces. A mesh checks
/// every cluster first, so a refused one leaves the others unchanged.
pub(crate) fn check_change(plan: &LabPlan) -> Result<(), LabError> {
    let Ok(existing) = load_plan(&plan.name) else { return Ok(()) };
    let name = plan.name.clone();
    if existing.mesh != plan.mesh {
        return Err(LabError::Conflict { name, what: "mesh membership (a lab and a mesh's cluster share the name)" });
    }
    let spec = &plan.spec;
    if existing.spec != *spec && is_ready(&existing) {
        let mut same = existing.spec.clone();
        same.spec.pods = spec.spec.pods.clone();
        same.spec.namespaces = spec.spec.namespaces.clone();
        if same != *spec {
            return Err(LabError::Conflict { name, what: differing_part(&existing.spec, spec) });
        }
    }
    Ok(())
}

/// Builds the lab `plan` resolves (a lab of its own or a cluster of a
/// mesh whose fabric is up), or brings one that is up to it.
pub(crate) fn up_plan(plan: LabPlan, options: &UpOptions) -> Result<UpReport, LabError> {
    let start = Instant::now();
    let roots = Roots::discover()?;
    let spec = &plan.spec.clone();
    let name = spec.name().to_string();
    let dir = paths::lab_dir(&name);

    check_change(&plan)?;
    match load_plan(&name) {
        Ok(existing) if existing.spec != *spec && is_ready(&existing) => {
            let plan = keep_addresses(plan, &existing);
            let (pods_added, pods_removed) = change_pods(&existing, &plan, &roots)?;
            let agents_started = ensure_agents(&plan, &roots, options)?;
            let agents_applied_ms = wait_for_agents(&plan, options)?;
            return Ok(UpReport {
                name,
                built: false,
                agents_started,
                pods_added,
                pods_removed,
                namespaces_changed: changed_namespaces(&existing.spec, spec),
                agents_applied_ms,
                elapsed_ms: start.elapsed().as_millis(),
            });
        }
        Ok(existing) if existing.spec == *spec && is_ready(&existing) => {
            let agents_started = ensure_agents(&plan, &roots, options)?;
            // An earlier `up` may have given up waiting: wait again.
            let agents_applied_ms = wait_for_agents(&existing, options)?;
            return Ok(UpReport {
                name,
                built: false,
                agents_started,
                pods_added: Vec::new(),
                pods_removed: Vec::new(),
                namespaces_changed: Vec::new(),
                agents_applied_ms,
                elapsed_ms: start.elapsed().as_millis(),
            });
        }
        // Half built (a crash mid-`up`), or leftovers without a record: start clean.
        _ => {
            down(&name)?;
        }
    }

    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let record = dir.join(RECORD);
    let json = serde_json::to_string_pretty(&plan)
        .map_err(|e| LabError::Record { path: record.clone(), message: e.to_string() })?;
    fs::write(&record, json).map_err(io_err("writing", &record))?;

    build_network(&plan)?;
    for pod in &plan.pods {
        Cgroup::new(roots.cgroup2.join(&pod.cgroup)).create()?;
    }
    write_pods(&plan, &roots, &dir)?;
    let agents_started = ensure_agents(&plan, &roots, options)?;
    fs::write(dir.join(READY), b"").map_err(io_err("writing", &dir))?;
    Ok(UpReport {
        name,
        built: true,
        agents_started,
        pods_added: plan.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect(),
        pods_removed: Vec::new(),
        namespaces_changed: Vec::new(),
        agents_applied_ms: None,
        elapsed_ms: start.elapsed().as_millis(),
    })
}

/// On the pod path, with agents: waits until they have applied the pods
/// file as it is now, and says how long that took.
fn wait_for_agents(plan: &LabPlan, options: &UpOptions) -> Result<Option<u128>, LabError> {
    if options.agent_exe.is_none() || !crate::follow::agents_apply_pods(plan) {
        return Ok(None);
    }
    let digest = crate::follow::current_digest(&paths::lab_dir(&plan.name).join(PODS))?;
    let waited = crate::follow::wait_applied(plan, &digest, crate::follow::APPLY_TIMEOUT)?;
    Ok(Some(waited.as_millis()))
}

/// Namespaces that appear, disappear or carry other labels in `new`.
fn changed_namespaces(old: &LabSpec, new: &LabSpec) -> Vec<String> {
    let (a, b) = (&old.spec.namespaces, &new.spec.namespaces);
    let mut names: Vec<String> = a
        .iter()
        .filter(|n| !b.contains(n))
        .chain(b.iter().filter(|n| !a.contains(n)))
        .map(|n| n.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What, besides pods, differs between two specs of one lab.
fn differing_part(old: &LabSpec, new: &LabSpec) -> &'static str {
    let (a, b) = (&old.spec, &new.spec);
    if a.routing != b.routing {
        "routing"
    } else if a.fabric != b.fabric {
        "fabric"
    } else if a.nodes != b.nodes {
        "node list"
    } else if a.namespaces != b.namespaces {
        "namespace list"
    } else if a.external_hosts != b.external_hosts {
        "external host list"
    } else if a.edge != b.edge {
        "edge"
    } else {
        "spec"
    }
}

/// A pod that stays keeps its address: the new plan's assignment in order
/// would move the pods after a removed one.
fn keep_addresses(mut plan: LabPlan, existing: &LabPlan) -> LabPlan {
    let kept: Vec<(String, String, String, std::net::Ipv4Addr)> =
        existing.pods.iter().map(|p| (p.namespace.clone(), p.name.clone(), p.node.clone(), p.ip)).collect();
    let explicit: std::collections::BTreeSet<std::net::Ipv4Addr> =
        plan.spec.spec.pods.iter().filter_map(|p| p.ip).collect();
    for pod in &mut plan.pods {
        if let Some((.., ip)) =
            kept.iter().find(|(ns, n, node, _)| *ns == pod.namespace && *n == pod.name && *node == pod.node)
        {
            pod.ip = *ip;
        }
    }
    // A new pod takes the lowest address no other pod holds.
    let nodes = plan.nodes.clone();
    let mut taken: std::collections::BTreeSet<std::net::Ipv4Addr> = explicit;
    let mut fresh = Vec::new();
    for (i, pod) in plan.pods.iter().enumerate() {
        let stays = kept.iter().any(|(ns, n, node, _)| *ns == pod.namespace && *n == pod.name && *node == pod.node);
        if stays
            || plan.spec.spec.pods.iter().any(|p| p.namespace == pod.namespace && p.name == pod.name && p.ip.is_some())
        {
            taken.insert(pod.ip);
        } else {
            fresh.push(i);
        }
    }
    for i in fresh {
        let node = nodes.iter().find(|n| n.name == plan.pods[i].node).expect("validated: the pod's node exists");
        if let Some(ip) = node.pod_cidr.hosts().find(|a| *a != node.gateway && !taken.contains(a)) {
            taken.insert(ip);
            plan.pods[i].ip = ip;
        }
    }
    for pod in &mut plan.pods {
        let prefix = nodes.iter().find(|n| n.name == pod.node).and_then(|n| n.pod_prefix6);
        pod.ipv6 = prefix.map(|p| plan::pod6(p, pod.ip));
    }
    plan
}

/// Deletes the pods the new plan drops and creates those it adds, while
/// the rest of the lab runs; then records the plan and rewrites the pods
/// file, which the agents follow.
fn change_pods(old: &LabPlan, new: &LabPlan, roots: &Roots) -> Result<(Vec<String>, Vec<String>), LabError> {
    let key = |p: &PodPlan| (p.namespace.clone(), p.name.clone(), p.node.clone(), p.ip);
    let gone: Vec<&PodPlan> = old.pods.iter().filter(|p| !new.pods.iter().any(|q| key(q) == key(p))).collect();
    let added: Vec<&PodPlan> = new.pods.iter().filter(|p| !old.pods.iter().any(|q| key(q) == key(p))).collect();
    let dir = paths::lab_dir(&new.name);
    for pod in &gone {
        if let Ok(inode) = netns::inode(&pod.netns) {
            let pids = process::pids_in_netns(inode);
            for pid in &pids {
                process::kill(*pid, libc::SIGKILL);
            }
            process::wait_gone(&pids, Duration::from_secs(5));
        }
        let cgroup = Cgroup::new(roots.cgroup2.join(&pod.cgroup));
        cgroup.kill_all(Cgroup::KILL_DEADLINE)?;
        // Deleting the namespace deletes the pod's veth and its node-side end.
        iproute::batch(None, &[format!("netns del {}", pod.netns)])?;
        cgroup.destroy()?;
    }
    if !added.is_empty() {
        iproute::batch(None, &added.iter().map(|p| format!("netns add {}", p.netns)).collect::<Vec<_>>())?;
    }
    for pod in &added {
        let node = new.node(&pod.node).expect("planned pods have planned nodes");
        iproute::batch(Some(&node.netns), &node_side_of_pod(node, pod))?;
        iproute::batch(Some(&pod.netns), &pod_side(new, pod))?;
        Cgroup::new(roots.cgroup2.join(&pod.cgroup)).create()?;
    }
    let record = dir.join(RECORD);
    let json = serde_json::to_string_pretty(new)
        .map_err(|e| LabError::Record { path: record.clone(), message: e.to_string() })?;
    fs::write(&record, json).map_err(io_err("writing", &record))?;
    write_pods(new, roots, &dir)?;
    let name = |p: &&PodPlan| format!("{}/{}", p.namespace, p.name);
    Ok((added.iter().map(name).collect(), gone.iter().map(name).collect()))
}

/// The node's end of a pod's veth: the node's pod-side address and a route to the pod.
fn node_side_of_pod(node: &NodePlan, pod: &PodPlan) -> Vec<String> {
    let host_if = &pod.host_interface;
    let mut cmds = vec![
        format!("link add {host_if} type veth peer name {UPLINK} netns {}", pod.netns),
        format!("addr add {}/32 dev {host_if}", node.gateway),
        format!("link set {host_if} up"),
        format!("route add {}/32 dev {host_if} scope link", pod.ip),
    ];
    if let (Some(gateway6), Some(ipv6)) = (node.gateway6, pod.ipv6) {
        cmds.push(format!("addr add {gateway6}/128 dev {host_if} nodad"));
        cmds.push(format!("route add {ipv6}/128 dev {host_if}"));
    }
    cmds
}

/// The pod's end: its address, and the node as its gateway. Over the
/// overlay a pod's packets grow by VXLAN's 50 bytes: its MTU leaves room for
/// them, or every full-size packet would be fragmented.
fn pod_side(plan: &LabPlan, pod: &PodPlan) -> Vec<String> {
    let gateway = plan.node(&pod.node).map(|n| n.gateway).expect("planned pods have planned nodes");
    let mtu = if plan.spec.spec.routing == crate::spec::Routing::Vxlan { OVERLAY_POD_MTU } else { 1500 };
    let mut cmds = vec![
        "link set lo up".to_string(),
        format!("addr add {}/32 dev {UPLINK}", pod.ip),
        format!("link set {UPLINK} mtu {mtu} up"),
        format!("route add {gateway}/32 dev {UPLINK} scope link"),
        format!("route add default via {gateway} dev {UPLINK}"),
    ];
    let gateway6 = plan.node(&pod.node).and_then(|n| n.gateway6);
    if let (Some(gateway6), Some(ipv6)) = (gateway6, pod.ipv6) {
        cmds.push(format!("addr add {ipv6}/128 dev {UPLINK} nodad"));
        cmds.push(format!("route add {gateway6}/128 dev {UPLINK}"));
        cmds.push(format!("route add default via {gateway6} dev {UPLINK}"));
    }
    cmds
}

/// The netfilter hooks br_netfilter (where the kernel has it) puts on bridges,
/// per network namespace, on by default.
const BRIDGE_NETFILTER_SYSCTLS: [&str; 3] =
    ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"];

/// Turns br_netfilter off in the fabric's namespace, so its bridge forwards
/// frames as a switch would: with it on, the bridge validates bridged IPv4
/// headers and drops malformed packets (bad checksum, header length, total
/// length) before any node's datapath could see and count them.
fn fabric_is_a_wire(fabric: &str) -> Result<(), LabError> {
    netns::run_in(fabric, || {
        for name in BRIDGE_NETFILTER_SYSCTLS {
            match fs::write(Path::new("/proc/sys/net/bridge").join(name), b"0") {
                // Without br_netfilter there is nothing to turn off.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    })?
    .map_err(io_err("turning br_netfilter off in", Path::new(fabric)))
}

/// The fabric's bridge, in its namespace (which exists).
pub(crate) fn build_fabric(fabric: &str) -> Result<(), LabError> {
    iproute::batch(
        Some(fabric),
        &[
            "link set lo up".into(),
            format!("link add {FABRIC_BRIDGE} type bridge"),
            format!("link set {FABRIC_BRIDGE} up"),
        ],
    )?;
    fabric_is_a_wire(fabric)
}

/// Creates namespaces, the fabric bridge and every veth, with one `ip`
/// process per namespace.
fn build_network(plan: &LabPlan) -> Result<(), LabError> {
    let fabric = plan.fabric_netns.as_str();
    let prefix = plan.fabric_cidr.prefix_len();
    iproute::batch(None, &plan.all_netns().iter().map(|n| format!("netns add {n}")).collect::<Vec<_>>())?;
    if plan.own_fabric() {
        build_fabric(fabric)?;
    }

    let mut fabric_ports = Vec::new();
    for node in &plan.nodes {
        let mut cmds = vec![
            "link set lo up".to_string(),
            format!("link add {UPLINK} type veth peer name {} netns {fabric}", node.fabric_port),
            format!("addr add {}/{prefix} dev {UPLINK}", node.address),
            format!("link set {UPLINK} up"),
        ];
        if let Some(address6) = node.address6 {
            cmds.push(format!("addr add {address6}/64 dev {UPLINK} nodad"));
        }
        if plan.spec.spec.routing.routes() {
            for other in plan.nodes.iter().filter(|o| o.name != node.name) {
                cmds.push(format!("route add {} via {} dev {UPLINK}", other.pod_cidr, other.address));
                if let (Some(prefix), Some(via)) = (other.pod_prefix6, other.address6) {
                    cmds.push(format!("route add {prefix}/64 via {via} dev {UPLINK}"));
                }
            }
        }
        for pod in plan.pods.iter().filter(|p| p.node == node.name) {
            cmds.extend(node_side_of_pod(node, pod));
        }
        cmds.extend(crate::edge::node_routes(plan));
        iproute::batch(Some(&node.netns), &cmds)?;
        if plan.spec.spec.routing == crate::spec::Routing::Vxlan {
            // Collect-metadata mode: the datapath names each packet's remote node.
            iproute::batch(
                Some(&node.netns),
                &[
                    format!("link add {OVERLAY} type vxlan dstport {OVERLAY_PORT} external"),
                    format!("link set {OVERLAY} up"),
                ],
            )?;
        }
        // Written either way: a new namespace inherits IPv4 forwarding from
        // the host's, so `routing: none` must switch it off itself.
        let forwards = plan.spec.spec.routing.routes() || plan.spec.spec.routing.pod_path();
        netns::run_in(&node.netns, || fs::write("/proc/sys/net/ipv4/ip_forward", if forwards { b"1" } else { b"0" }))?
            .map_err(io_err("setting forwarding in", Path::new(&node.netns)))?;
        if forwards && node.address6.is_some() {
            netns::run_in(&node.netns, || fs::write("/proc/sys/net/ipv6/conf/all/forwarding", b"1"))?
                .map_err(io_err("enabling IPv6 forwarding in", Path::new(&node.netns)))?;
        }
        fabric_ports.push(&node.fabric_port);
    }
    for ext in &plan.externals {
        let mut cmds = vec![
            "link set lo up".to_string(),
            format!("link add {UPLINK} type veth peer name {} netns {fabric}", ext.fabric_port),
            format!("addr add {}/{prefix} dev {UPLINK}", ext.address),
            format!("link set {UPLINK} up"),
        ];
        if let Some(address6) = ext.address6 {
            cmds.push(format!("addr add {address6}/64 dev {UPLINK} nodad"));
        }
        iproute::batch(Some(&ext.netns), &cmds)?;
        fabric_ports.push(&ext.fabric_port);
    }
    let mut cmds = Vec::new();
    for port in fabric_ports {
        cmds.push(format!("link set {port} master {FABRIC_BRIDGE}"));
        cmds.push(format!("link set {port} up"));
    }
    iproute::batch(Some(fabric), &cmds)?;

    for pod in &plan.pods {
        iproute::batch(Some(&pod.netns), &pod_side(plan, pod))?;
    }
    if let Some(edge) = &plan.edge {
        crate::edge::build(plan, edge)?;
    }
    Ok(())
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The pid of the node's agent, if it is running.
pub fn agent_pid(node: &NodePlan) -> Option<i32> {
    running_agent(&node.agent)
}

/// The pid of the agent whose files are `agent`, if it is running.
pub(crate) fn running_agent(agent: &plan::AgentPaths) -> Option<i32> {
    read_pid(&agent.pid_file).filter(|pid| process::alive(*pid))
}

/// Every pod with its labels and cgroup, for the agents: events name the
/// pod a process runs in, and runtime policies select pods by label.
const PODS: &str = "pods.json";

fn write_pods(plan: &LabPlan, roots: &Roots, dir: &Path) -> Result<(), LabError> {
    let pods: Vec<serde_json::Value> = plan
        .pods
        .iter()
        .map(|p| {
            serde_json::json!({
                "namespace": p.namespace,
                "name": p.name,
                "labels": p.labels,
                "cgroup": roots.cgroup2.join(&p.cgroup),
                "ip": p.ip,
                "ipv6": p.ipv6,
                "hostInterface": p.host_interface,
                "netns": p.netns,
                "node": p.node,
                "namespaceLabels": p.namespace_labels,
                "ports": p.ports,
                "generateName": p.generate_name,
                "ownerReferences": p.owner_references,
            })
        })
        .collect();
    let path = dir.join(PODS);
    let json = serde_json::to_string_pretty(&pods)
        .map_err(|e| LabError::Record { path: path.clone(), message: e.to_string() })?;
    // Agents follow this file: they must never read half of it.
    let tmp = dir.join(format!("{PODS}.tmp"));
    fs::write(&tmp, json).map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("writing", &path))
}

/// The overlay device of `routing: vxlan`, and its UDP port (Linux's VXLAN default).
const OVERLAY: &str = "weirvx0";
const OVERLAY_PORT: u16 = 8472;
/// 1500 less VXLAN's outer Ethernet, IPv4, UDP and VXLAN headers.
const OVERLAY_POD_MTU: u32 = 1450;

/// The agent flags of the pod path: every node's pod CIDR and address
/// (never masqueraded: a reply to a NodePort flow another node translated
/// must keep the pod's address) and, with an overlay, the device and where
/// each other node's pods are.
fn pod_path_args(plan: &LabPlan, node: &NodePlan) -> Vec<String> {
    let routing = plan.spec.spec.routing;
    if !routing.pod_path() {
        return Vec::new();
    }
    let mut args = vec!["--pod-routing".to_string()];
    for n in &plan.nodes {
        args.extend(["--cluster-cidr".to_string(), n.pod_cidr.to_string()]);
        args.extend(["--cluster-cidr".to_string(), format!("{}/32", n.address)]);
        let v6 = n.address6.map(|a| format!(",{a}")).unwrap_or_default();
        args.extend(["--cluster-node".to_string(), format!("{}={}{v6}", n.name, n.address)]);
    }
    if routing == crate::spec::Routing::Vxlan {
        args.extend(["--overlay-device".to_string(), OVERLAY.to_string()]);
        args.extend(["--pod-interface".to_string(), OVERLAY.to_string()]);
        for other in plan.nodes.iter().filter(|o| o.name != node.name) {
            args.extend(["--pod-tunnel".to_string(), format!("{}={}", other.pod_cidr, other.address)]);
        }
    }
    args
}

/// The store's flags: the cluster's etcd, and in a mesh the cluster's name
/// and id and every other cluster's etcd (read, never written).
fn store_args(plan: &LabPlan, node: &NodePlan) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(url) = etcd_url(plan) {
        args.extend(["--etcd".to_string(), url]);
    }
    if let Some(mesh) = &plan.mesh {
        args.extend(["--cluster-name".to_string(), plan.name.clone()]);
        args.extend(["--cluster-id".to_string(), mesh.cluster_id.to_string()]);
        args.extend(["--node-address".to_string(), node.address.to_string()]);
        args.extend(["--node-pod-cidr".to_string(), node.pod_cidr.to_string()]);
        for (cluster, url) in &mesh.peers {
            args.extend(["--clustermesh".to_string(), format!("{cluster}={url}")]);
        }
        if let Some(after) = &mesh.stale_after {
            args.extend(["--clustermesh-stale-after".to_string(), after.clone()]);
        }
    }
    args
}

/// A lab of several nodes on the pod path shares identities through etcd,
/// which runs in the first node's namespace on its fabric address.
/// A cluster of a mesh always runs one: it publishes there what the other
/// clusters read.
fn etcd_node(plan: &LabPlan) -> Option<&NodePlan> {
    let wanted =
        plan.mesh.is_some() || plan.edge.is_some() || (plan.spec.spec.routing.pod_path() && plan.nodes.len() > 1);
    wanted.then(|| plan.nodes.first()).flatten()
}

/// The client URL of an etcd on a node's fabric address.
pub fn etcd_client_url(address: std::net::Ipv4Addr) -> String {
    format!("http://{address}:{ETCD_CLIENT_PORT}")
}

const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) fn etcd_url(plan: &LabPlan) -> Option<String> {
    etcd_node(plan).map(|n| etcd_client_url(n.address))
}

/// The lab's etcd, where it has one: the network namespace to reach it from
/// and its client URL. It holds the cluster's state (see `weir-store`).
pub fn etcd_endpoint(plan: &LabPlan) -> Option<(String, String)> {
    Some((etcd_node(plan)?.netns.clone(), etcd_url(plan)?))
}

/// Starts the lab's etcd unless it runs; waits until it takes connections.
fn ensure_etcd(plan: &LabPlan, roots: &Roots) -> Result<(), LabError> {
    let Some(node) = etcd_node(plan) else { return Ok(()) };
    let dir = paths::lab_dir(&plan.name);
    let pid_file = dir.join("etcd.pid");
    if read_pid(&pid_file).is_some_and(process::alive) {
        return Ok(());
    }
    let data = dir.join("etcd");
    let log_path = dir.join("etcd.log");
    let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_err("opening", &log_path))?;
    let log_err = log.try_clone().map_err(io_err("opening", &log_path))?;
    let cgroup = Cgroup::new(roots.cgroup2.join(&node.cgroup).join("etcd"));
    cgroup.create()?;
    let client = format!("http://{}:{ETCD_CLIENT_PORT}", node.address);
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", "weir-lab"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-cluster", "weir-lab=http://127.0.0.1:2380"])
        // `weir apply` commits a whole file in one transaction: one
        // operation per document (etcd's default allows 128).
        .args(["--max-txn-ops", "16384"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    netns::confine_command(&mut cmd, Some(netns::open(&node.netns)?), Some(cgroup.procs_for_join()?));
    let child = cmd.spawn().map_err(io_err("starting etcd (Debian's etcd-server package)", Path::new("etcd")))?;
    let pid = child.id() as i32;
    fs::write(&pid_file, pid.to_string()).map_err(io_err("writing", &pid_file))?;
    let addr = std::net::SocketAddr::from((node.address, ETCD_CLIENT_PORT));
    let start = Instant::now();
    while start.elapsed() < ETCD_START_TIMEOUT {
        let up = netns::run_in(&node.netns, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        if up {
            return Ok(());
        }
        if !process::alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    Err(LabError::AgentNotReady {
        node: format!("{} (etcd)", node.name),
        what: format!("etcd did not take connections on {addr} within {ETCD_START_TIMEOUT:?}"),
        log_tail: log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

/// Starts the agent of every node whose agent is not running.
fn ensure_agents(plan: &LabPlan, roots: &Roots, options: &UpOptions) -> Result<Vec<String>, LabError> {
    let Some(exe) = &options.agent_exe else { return Ok(Vec::new()) };
    ensure_etcd(plan, roots)?;
    let mut started = Vec::new();
    let mut waiting = Vec::new();
    for node in &plan.nodes {
        if agent_pid(node).is_some() {
            continue;
        }
        let pid = spawn_agent(plan, node, roots, exe, &options.agent_args)?;
        waiting.push((node, pid));
        started.push(node.name.clone());
    }
    let balancers = crate::edge::spawn_agents(plan, roots, exe, &options.agent_args)?;
    // Agents start in parallel; wait for all of them together.
    for (node, pid) in waiting {
        wait_ready(&node.name, &node.agent, pid)?;
    }
    for (balancer, pid) in balancers {
        wait_ready(&balancer.name, &balancer.agent, pid)?;
        started.push(balancer.name.clone());
    }
    Ok(started)
}

fn spawn_agent(plan: &LabPlan, node: &NodePlan, roots: &Roots, exe: &Path, extra: &[String]) -> Result<i32, LabError> {
    let mut cmd = Command::new(exe);
    cmd.arg("agent").args(["--node", &node.name, "--interface", UPLINK]);
    // Each pod's node-side veth too: where the pod's traffic enters the node.
    for pod in plan.pods.iter().filter(|p| p.node == node.name) {
        cmd.args(["--pod-interface", &pod.host_interface]);
        if pod.labels.get(crate::spec::SOCKET_LB_LABEL).map(String::as_str) == Some("disabled") {
            cmd.arg("--socket-lb-opt-out").arg(roots.cgroup2.join(&pod.cgroup));
        }
    }
    cmd.arg("--pods-file")
        .arg(paths::lab_dir(&plan.name).join(PODS))
        .args(pod_path_args(plan, node))
        .args(store_args(plan, node))
        .args(crate::edge::node_args(plan));
    spawn_lab_agent(cmd, &plan.name, &node.netns, &roots.cgroup2.join(&node.cgroup), &node.agent, roots, extra)
}

/// Starts `cmd` (an agent with its job's flags) as the lab agent whose
/// files are `agent`, in `netns` and in the `agent` cgroup below
/// `cgroup`, which becomes its node cgroup; returns its pid.
pub(crate) fn spawn_lab_agent(
    mut cmd: Command,
    lab: &str,
    netns_name: &str,
    cgroup: &Path,
    agent: &plan::AgentPaths,
    roots: &Roots,
    extra: &[String],
) -> Result<i32, LabError> {
    let node_dir = agent.socket.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(node_dir).map_err(io_err("creating", node_dir))?;
    let _ = fs::remove_file(&agent.socket);
    let log =
        fs::OpenOptions::new().create(true).append(true).open(&agent.log).map_err(io_err("opening", &agent.log))?;
    let log_err = log.try_clone().map_err(io_err("opening", &agent.log))?;
    let agent_cgroup = Cgroup::new(cgroup.join("agent"));
    agent_cgroup.create()?;
    cmd.arg("--pin-dir")
        .arg(roots.bpffs.join(&agent.pin_dir))
        .arg("--state-dir")
        .arg(&agent.state_dir)
        .arg("--socket")
        .arg(&agent.socket)
        .args(["--metrics-addr", &agent.metrics_addr])
        .args(["--lab", lab])
        .arg("--node-cgroup")
        .arg(cgroup)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    netns::confine_command(&mut cmd, Some(netns::open(netns_name)?), Some(agent_cgroup.procs_for_join()?));
    let exe = PathBuf::from(cmd.get_program());
    let child = cmd.spawn().map_err(io_err("starting agent", &exe))?;
    let pid = child.id() as i32;
    // The agent outlives this command: it is reaped by init once we exit.
    drop(child);
    fs::write(&agent.pid_file, pid.to_string()).map_err(io_err("writing", &agent.pid_file))?;
    Ok(pid)
}

fn wait_ready(name: &str, agent: &plan::AgentPaths, pid: i32) -> Result<(), LabError> {
    let start = Instant::now();
    let mut what = format!("did not become ready within {AGENT_START_TIMEOUT:?}");
    while start.elapsed() < AGENT_START_TIMEOUT {
        if std::os::unix::net::UnixStream::connect(&agent.socket).is_ok() {
            return Ok(());
        }
        if !process::alive(pid) {
            what = format!("exited after {} ms", start.elapsed().as_millis());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = fs::read_to_string(&agent.log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    Err(LabError::AgentNotReady {
        node: name.to_string(),
        what,
        log_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

/// What `down` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub name: String,
    pub netns_removed: usize,
    pub processes_killed: usize,
    pub cgroups_removed: bool,
    pub pins_removed: bool,
    pub elapsed_ms: u128,
}

/// Removes every trace of lab `name`, whether or not its record survives.
/// A mesh's clusters go first, then its fabric.
pub fn down(name: &str) -> Result<DownReport, LabError> {
    let start = Instant::now();
    crate::spec::check_dns_label("lab name", name, crate::spec::MAX_LAB_NAME)?;
    let mut clusters = DownReport::default();
    for cluster in crate::mesh_runtime::clusters_of(name) {
        let report = down_one(&cluster)?;
        clusters.netns_removed += report.netns_removed;
        clusters.processes_killed += report.processes_killed;
        clusters.cgroups_removed |= report.cgroups_removed;
        clusters.pins_removed |= report.pins_removed;
    }
    let mut report = down_one(name)?;
    report.netns_removed += clusters.netns_removed;
    report.processes_killed += clusters.processes_killed;
    report.cgroups_removed |= clusters.cgroups_removed;
    report.pins_removed |= clusters.pins_removed;
    report.elapsed_ms = start.elapsed().as_millis();
    Ok(report)
}

fn down_one(name: &str) -> Result<DownReport, LabError> {
    let start = Instant::now();
    let roots = Roots::discover()?;
    let mut report = DownReport { name: name.to_string(), ..Default::default() };

    // 1. Processes: the lab's cgroup subtree (agents, `lab exec` commands),
    //    then anything else still inside one of its namespaces.
    let lab_cgroup = Cgroup::new(roots.cgroup2.join(paths::CGROUP_SUBDIR).join("labs").join(name));
    let mut victims = lab_cgroup.pids_recursive();
    lab_cgroup.kill_all(Cgroup::KILL_DEADLINE)?;
    let namespaces = netns::list_with_prefix(&plan::netns_prefix(name));
    for ns in &namespaces {
        if let Ok(inode) = netns::inode(ns) {
            for pid in process::pids_in_netns(inode) {
                process::kill(pid, libc::SIGKILL);
                victims.push(pid);
            }
        }
    }
    victims.sort_unstable();
    victims.dedup();
    process::wait_gone(&victims, Duration::from_secs(5));
    report.processes_killed = victims.len();

    // 2. Namespaces: deleting one destroys its veths and the bridge.
    if !namespaces.is_empty() {
        iproute::batch(None, &namespaces.iter().map(|n| format!("netns del {n}")).collect::<Vec<_>>())?;
    }
    report.netns_removed = namespaces.len();

    // 3. cgroups, pins, the record.
    report.cgroups_removed = lab_cgroup.path().exists();
    lab_cgroup.destroy()?;
    let pins = paths::lab_pin_dir(&roots.bpffs, name);
    report.pins_removed = pins.exists();
    if pins.exists() {
        fs::remove_dir_all(&pins).map_err(io_err("removing pins", &pins))?;
    }
    let dir = paths::lab_dir(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
    }
    report.elapsed_ms = start.elapsed().as_millis();
    Ok(report)
}

/// One lab as `list` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct LabSummary {
    pub name: String,
    /// `ready`, `incomplete` (a record without the ready mark) or `orphaned`
    /// (namespaces without a record: run `weir lab down NAME`).
    pub state: String,
    pub nodes: usize,
    pub pods: usize,
    pub agents_running: usize,
}

/// Every lab on this machine, including remnants of crashed ones.
pub fn list() -> Vec<LabSummary> {
    let mut labs: Vec<LabSummary> = fs::read_dir(paths::labs_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| match load_plan(&name) {
            Err(_) if crate::mesh_runtime::is_mesh(&name) => crate::mesh_runtime::summary(name),
            Ok(plan) => LabSummary {
                state: if paths::lab_dir(&name).join(READY).exists() { "ready" } else { "incomplete" }.into(),
                nodes: plan.nodes.len(),
                pods: plan.pods.len(),
                agents_running: plan.nodes.iter().filter(|n| agent_pid(n).is_some()).count(),
                name,
            },
            Err(_) => LabSummary { name, state: "incomplete".into(), nodes: 0, pods: 0, agents_running: 0 },
        })
        .collect();
    for ns in netns::list_with_prefix("weir.") {
        if let Some(lab) = ns.strip_prefix("weir.").and_then(|rest| rest.split('.').next()) {
            if !labs.iter().any(|l| l.name == lab) {
                labs.push(LabSummary {
                    name: lab.to_string(),
                    state: "orphaned".into(),
                    nodes: 0,
                    pods: 0,
                    agents_running: 0,
                });
            }
        }
    }
    labs.sort_by(|a, b| a.name.cmp(&b.name));
    labs
}

/// Health of one lab member.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub kind: &'static str,
    pub name: String,
    pub address: String,
    pub netns: String,
    pub netns_present: bool,
    /// For nodes: the agent's pid when running.
    pub agent_pid: Option<i32>,
    pub detail: String,
}

/// The lab's members and whether each is really there.
pub fn status(name: &str) -> Result<(LabPlan, Vec<MemberStatus>), LabError> {
    let plan = load_plan(name)?;
    let mut members = Vec::new();
    for n in &plan.nodes {
        members.push(MemberStatus {
            kind: "node",
            name: n.name.clone(),
            address: n.address.to_string(),
            netns: n.netns.clone(),
            netns_present: netns::exists(&n.netns),
            agent_pid: agent_pid(n),
            detail: format!("podCIDR {}", n.pod_cidr),
        });
    }
    for p in &plan.pods {
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        members.push(MemberStatus {
            kind: "pod",
            name: format!("{}/{}", p.namespace, p.name),
            address: p.ip.to_string(),
            netns: p.netns.clone(),
            netns_present: netns::exists(&p.netns),
            agent_pid: None,
            detail: format!("on {} {}", p.node, labels.join(",")),
        });
    }
    for e in &plan.externals {
        members.push(MemberStatus {
            kind: "external",
            name: e.name.clone(),
            address: e.address.to_string(),
            netns: e.netns.clone(),
            netns_present: netns::exists(&e.netns),
            agent_pid: None,
            detail: String::new(),
        });
    }
    if let Some(edge) = &plan.edge {
        members.extend(crate::edge::members(edge));
    }
    Ok((plan, members))
}

/// The labs on this machine that are up.
pub fn ready_labs() -> Vec<String> {
    list().into_iter().filter(|l| l.state == "ready").map(|l| l.name).collect()
}

/// Picks the lab to act on: the named one, or the only one that exists.
pub fn resolve_lab(name: Option<&str>) -> Result<String, LabError> {
    if let Some(name) = name {
        return Ok(name.to_string());
    }
    match ready_labs().as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(LabError::Ambiguous("no lab is up; start one with `weir lab up -f examples/lab.yaml`".into())),
        many => Err(LabError::Ambiguous(format!("several labs are up ({}); choose one with --lab", many.join(", ")))),
    }
}

/// Runs `argv` inside pod `NAMESPACE/NAME`'s network namespace and cgroup,
/// with this process's stdio, and returns its exit status.
pub fn exec(lab: &str, target: &str, argv: &[String]) -> Result<std::process::ExitStatus, LabError> {
    let plan = load_plan(lab)?;
    // A pod (NAMESPACE/NAME) in its own cgroup, or a host off the cluster
    // (an external host, an edge client) in one of the lab's.
    let (netns_name, cgroup) = match (plan.pod(target), plan.host_netns(target)) {
        (Some(pod), _) => (pod.netns.clone(), pod.cgroup.clone()),
        (None, Some(netns_name)) => (netns_name.to_string(), plan.cgroup.join("hosts").join(target)),
        (None, None) => return Err(LabError::NoSuchTarget { lab: lab.to_string(), target: target.to_string() }),
    };
    let roots = Roots::discover()?;
    let (program, args) = argv.split_first().ok_or_else(|| LabError::Ambiguous("no command given after --".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    let cgroup = Cgroup::new(roots.cgroup2.join(&cgroup));
    cgroup.create()?;
    netns::confine_command(&mut cmd, Some(netns::open(&netns_name)?), Some(cgroup.procs_for_join()?));
    cmd.status().map_err(io_err("running", Path::new(program)))
}
