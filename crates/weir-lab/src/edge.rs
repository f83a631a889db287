//! The edge of a lab (`spec.edge`): XDP load-balancer nodes on the fabric,
//! a router in front of them holding one equal-cost route per load
//! balancer for the VIP prefix, and clients behind the router. The nodes
//! decapsulate what the load balancers send them and answer the clients
//! straight through the router (direct server return).

use std::fs;
use std::path::Path;
use std::process::Command;

use weir_host::ethtool::{self, Offload};
use weir_host::{iproute, netns};

use crate::plan::{EdgePlan, LabPlan, BALANCER_MGMT, FABRIC_BRIDGE, UPLINK};
use crate::runtime::{io_err, LabError, MemberStatus, Roots};

/// The bridge on the router that the client links hang off.
const CLIENT_BRIDGE: &str = "clients0";

/// Routes every node needs: replies to the clients go through the router.
pub(crate) fn node_routes(plan: &LabPlan) -> Vec<String> {
    plan.edge.iter().map(|e| format!("route add {} via {} dev {UPLINK}", e.client_cidr, e.router_address)).collect()
}

/// The nodes' agent flags: each node strips what the load balancers
/// encapsulate, in front of its datapath on the fabric link; its node
/// datapath then serves the flow as a LoadBalancer Service's.
pub(crate) fn node_args(plan: &LabPlan) -> Vec<String> {
    match plan.edge {
        Some(_) => vec!["--lb-decap-interface".into(), UPLINK.into()],
        None => Vec::new(),
    }
}

fn sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<(), LabError> {
    netns::run_in(ns, || {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs::write(&path, value)?;
        }
        Ok::<(), std::io::Error>(())
    })?
    .map_err(io_err("setting sysctls in", Path::new(ns)))
}

fn offload(ns: &str, interface: &str, what: Offload, on: bool) -> Result<(), LabError> {
    netns::run_in(ns, || ethtool::set(interface, what, on))?.map_err(io_err("switching an offload in", Path::new(ns)))
}

/// Creates the router, the load balancers and the clients (their
/// namespaces exist: `build_network` made every namespace of the plan).
pub(crate) fn build(plan: &LabPlan, edge: &EdgePlan) -> Result<(), LabError> {
    let fabric = plan.fabric_netns.as_str();
    let prefix = plan.fabric_cidr.prefix_len();
    let router = edge.router_netns.as_str();

    let mut cmds = vec![
        "link set lo up".to_string(),
        format!("link add {UPLINK} type veth peer name {} netns {fabric}", edge.router_fabric_port),
        format!("addr add {}/{prefix} dev {UPLINK}", edge.router_address),
        format!("link set {UPLINK} up"),
        format!("link add {CLIENT_BRIDGE} type bridge"),
        format!("addr add {}/{} dev {CLIENT_BRIDGE}", edge.client_gateway, edge.client_cidr.prefix_len()),
        format!("link set {CLIENT_BRIDGE} up"),
    ];
    for client in &edge.clients {
        cmds.push(format!("link add {} type veth peer name {UPLINK} netns {}", client.router_port, client.netns));
        cmds.push(format!("link set {} master {CLIENT_BRIDGE}", client.router_port));
        cmds.push(format!("link set {} up", client.router_port));
    }
    // One equal-cost path per load balancer; flows are hashed by their
    // addresses and ports (fib_multipath_hash_policy 1, below).
    let hops: Vec<String> =
        edge.load_balancers.iter().map(|b| format!("nexthop via {} dev {UPLINK} weight 1", b.address)).collect();
    cmds.push(format!("route add {} {}", edge.vip_cidr, hops.join(" ")));
    iproute::batch(Some(router), &cmds)?;
    sysctls(
        router,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            // The load balancers send back out of the link they received
            // on: hairpinning is their design, not a route to correct.
            ("net.ipv4.conf.all.send_redirects", "0"),
            (&format!("net.ipv4.conf.{UPLINK}.send_redirects"), "0"),
        ],
    )?;

    for client in &edge.clients {
        iproute::batch(
            Some(&client.netns),
            &[
                "link set lo up".to_string(),
                format!("addr add {}/{} dev {UPLINK}", client.address, edge.client_cidr.prefix_len()),
                format!("link set {UPLINK} up"),
                format!("route add default via {}", edge.client_gateway),
            ],
        )?;
        // A NIC puts complete checksums on the wire; a veth would hand the
        // client's unfinished ones on, which the nodes refuse once the
        // load balancer's encapsulation has been stripped.
        offload(&client.netns, UPLINK, Offload::TxChecksum, false)?;
    }

    let mut ports = vec![edge.router_fabric_port.clone()];
    for balancer in &edge.load_balancers {
        iproute::batch(
            Some(&balancer.netns),
            &[
                "link set lo up".to_string(),
                format!("link add {UPLINK} type veth peer name {} netns {fabric}", balancer.fabric_port),
                format!("addr add {}/{prefix} dev {UPLINK}", balancer.address),
                format!("link set {UPLINK} up"),
                format!("route add {} via {} dev {UPLINK}", edge.client_cidr, edge.router_address),
                // Health probes connect to the VIPs out of the fabric link,
                // where tc encapsulates each to the real it names.
                format!("route add {} via {} dev {UPLINK}", edge.vip_cidr, edge.router_address),
                // The node datapath's interface: the fabric link holds the
                // load balancer's XDP program.
                format!("link add {BALANCER_MGMT} type veth peer name {BALANCER_MGMT}p"),
                format!("link set {BALANCER_MGMT} up"),
                format!("link set {BALANCER_MGMT}p up"),
            ],
        )?;
        ports.push(balancer.fabric_port.clone());
    }
    let mut cmds = Vec::new();
    for port in &ports {
        cmds.push(format!("link set {port} master {FABRIC_BRIDGE}"));
        cmds.push(format!("link set {port} up"));
    }
    iproute::batch(Some(fabric), &cmds)?;
    // XDP_TX out of a load balancer's veth reaches the bridge only if the
    // fabric's end runs NAPI: an XDP program of its own gives it that.
    for balancer in &edge.load_balancers {
        let port = balancer.fabric_port.clone();
        netns::run_in(fabric, || {
            let name = std::ffi::CString::new(port.as_str()).unwrap_or_default();
            // SAFETY: a valid NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            weir_bpf::xdp_peer::accept_xdp_frames(index, &port)
        })?
        .map_err(|e| LabError::Xdp { interface: balancer.fabric_port.clone(), message: e.to_string() })?;
    }
    Ok(())
}

/// Starts the agent of every load balancer whose agent is not running;
/// returns those started, with their pids.
pub(crate) fn spawn_agents<'a>(
    plan: &'a LabPlan,
    roots: &Roots,
    exe: &Path,
    extra: &[String],
) -> Result<Vec<(&'a crate::plan::BalancerPlan, i32)>, LabError> {
    let Some(edge) = &plan.edge else { return Ok(Vec::new()) };
    let mut started = Vec::new();
    for balancer in &edge.load_balancers {
        if crate::runtime::running_agent(&balancer.agent).is_some() {
            continue;
        }
        let mut cmd = Command::new(exe);
        cmd.arg("agent").args(["--node", &balancer.name, "--interface", BALANCER_MGMT, "--lb-interface", UPLINK]);
        if let Some(url) = crate::runtime::etcd_url(plan) {
            cmd.args(["--etcd", &url]);
        }
        // Where each node is: a LoadBalancer Service's reals are the nodes
        // its ready endpoints run on.
        for node in &plan.nodes {
            cmd.args(["--cluster-node", &format!("{}={}", node.name, node.address)]);
        }
        let cgroup = roots.cgroup2.join(&balancer.cgroup);
        let pid =
            crate::runtime::spawn_lab_agent(cmd, &plan.name, &balancer.netns, &cgroup, &balancer.agent, roots, extra)?;
        started.push((balancer, pid));
    }
    Ok(started)
}

/// The edge's members for `weir lab status`.
pub(crate) fn members(edge: &EdgePlan) -> Vec<MemberStatus> {
    let mut members = vec![MemberStatus {
        kind: "router",
        name: "router".into(),
        address: edge.router_address.to_string(),
        netns: edge.router_netns.clone(),
        netns_present: netns::exists(&edge.router_netns),
        agent_pid: None,
        detail: format!("{} to every load balancer (ECMP); clients on {}", edge.vip_cidr, edge.client_cidr),
    }];
    for b in &edge.load_balancers {
        members.push(MemberStatus {
            kind: "loadbalancer",
            name: b.name.clone(),
            address: b.address.to_string(),
            netns: b.netns.clone(),
            netns_present: netns::exists(&b.netns),
            agent_pid: crate::runtime::running_agent(&b.agent),
            detail: format!("XDP on {UPLINK}"),
        });
    }
    for c in &edge.clients {
        members.push(MemberStatus {
            kind: "client",
            name: c.name.clone(),
            address: c.address.to_string(),
            netns: c.netns.clone(),
            netns_present: netns::exists(&c.netns),
            agent_pid: None,
            detail: format!("behind the router ({})", edge.client_gateway),
        });
    }
    members
}
