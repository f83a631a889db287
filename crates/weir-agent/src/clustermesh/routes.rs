//! Routes (or tunnels) to every remote node's pod CIDR, and the pod path's
//! cluster CIDRs, following what the remote clusters publish.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;

use super::status::write_status;
use super::{Learned, MeshContext};

/// Makes the node's routes (and, on the pod path, its cluster CIDRs) follow
/// every remote node learned.
pub(super) async fn apply(context: &Arc<MeshContext>, learned: &Arc<Mutex<Learned>>) {
    // One remote cluster's follower at a time: each writes whole tables, so
    // two interleaved would leave the older view installed.
    let Ok(turn) = learned.lock().map(|l| l.routes_turn.clone()) else { return };
    let _turn = turn.lock().await;
    let (wanted, installed) = {
        let Ok(l) = learned.lock() else { return };
        let wanted: BTreeSet<(Ipv4Net, Ipv4Addr)> =
            l.clusters.values().flat_map(|nodes| nodes.values()).map(|n| (n.pod_cidr, n.address)).collect();
        (wanted, l.routes.clone())
    };
    if wanted == installed {
        write_status(context, learned);
        return;
    }
    let (context2, wanted2) = (context.clone(), wanted.clone());
    let done = tokio::task::spawn_blocking(move || install(&context2, &installed, &wanted2)).await;
    match done {
        Ok(Ok(())) => {
            if let Ok(mut l) = learned.lock() {
                l.routes = wanted;
            }
            tracing::info!(routes = routes_installed(learned), "routes to the mesh's remote pods updated");
        }
        Ok(Err(e)) => {
            // Part may be in place: what is installed is at most both, so
            // the next change removes whatever is no longer wanted.
            if let Ok(mut l) = learned.lock() {
                l.routes = l.routes.union(&wanted).copied().collect();
            }
            tracing::warn!(error = e, "routing the mesh's remote pods failed; retried on the next change")
        }
        Err(e) => tracing::warn!(error = %e, "routing the mesh's remote pods failed"),
    }
    write_status(context, learned);
}

fn routes_installed(learned: &Mutex<Learned>) -> usize {
    learned.lock().map_or(0, |l| l.routes.len())
}

/// Routes to `wanted` (and no longer to the rest of `installed`), with the
/// pod path's tables holding both while the routes change, so no remote pod
/// CIDR is ever routed without being one of the cluster CIDRs (its pods'
/// traffic would be masqueraded meanwhile).
fn install(
    context: &MeshContext,
    installed: &BTreeSet<(Ipv4Net, Ipv4Addr)>,
    wanted: &BTreeSet<(Ipv4Net, Ipv4Addr)>,
) -> Result<(), String> {
    let both: BTreeSet<(Ipv4Net, Ipv4Addr)> = installed.union(wanted).copied().collect();
    write_tables(context, &both)?;
    if context.overlay.is_none() {
        let uplink = &context.uplink;
        let mut commands: Vec<String> =
            wanted.iter().map(|(cidr, via)| format!("route replace {cidr} via {via} dev {uplink}")).collect();
        let kept: BTreeSet<Ipv4Net> = wanted.iter().map(|(cidr, _)| *cidr).collect();
        commands.extend(
            installed.iter().filter(|(cidr, _)| !kept.contains(cidr)).map(|(cidr, _)| format!("route del {cidr}")),
        );
        // The agent runs in the node's network namespace: `ip` inherits it.
        weir_host::iproute::batch(None, &commands).map_err(|e| e.to_string())?;
    }
    if &both != wanted {
        write_tables(context, wanted)?;
    }
    Ok(())
}

/// On the pod path: the cluster CIDRs (this cluster's and `remote`'s pod
/// CIDRs and node addresses) and, with an overlay, the tunnels to `remote`.
fn write_tables(context: &MeshContext, remote: &BTreeSet<(Ipv4Net, Ipv4Addr)>) -> Result<(), String> {
    let Some(pins) = &context.pod_path else { return Ok(()) };
    let mut cidrs: Vec<(Ipv4Addr, u8)> = context.own_cidrs.iter().map(|c| (c.network(), c.prefix_len())).collect();
    for (cidr, via) in remote {
        cidrs.push((cidr.network(), cidr.prefix_len()));
        cidrs.push((*via, 32));
    }
    let table = weir_bpf::pods::PodEndpoints::open(pins).map_err(|e| e.to_string())?;
    table.set_pod_cidrs(&cidrs).map_err(|e| e.to_string())?;
    if let Some(overlay) = &context.overlay {
        let index = crate::pods::ifindex(&overlay.device);
        if index == 0 {
            return Err(format!("no overlay device {}", overlay.device));
        }
        let mut tunnels = overlay.tunnels.clone();
        tunnels.extend(remote.iter().map(|(cidr, via)| ((cidr.network(), cidr.prefix_len()), *via)));
        table.set_overlay(index, &tunnels).map_err(|e| e.to_string())?;
    }
    Ok(())
}
