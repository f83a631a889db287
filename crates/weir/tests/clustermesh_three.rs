//! ClusterMesh of three clusters of two nodes each, on the pod path, in a
//! real lab: every cluster's pods reach every other cluster's pods on both
//! of its nodes, unmasqueraded; a pod's identity number is the same in
//! every cluster's view (`weir policy list`: its own cluster's endpoints,
//! the others' ipcache); and a policy of cluster 2 naming cluster 1 in its selector
//! admits cluster 1's frontends alone, not cluster 3's with the same labels
//! nor its own.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::mesh::{ping, tcp_peer};
use common::{eventually, privileged, unique_name, weir, weir_ok};

/// Cluster `k` (0, 1, 2) of the mesh: id k+1, nodes `<cluster>-a` and
/// `<cluster>-b` with pod CIDRs 10.(244+k).0.0/24 and 10.(244+k).1.0/24, a
/// frontend pod on the first node and a backend pod on the second.
fn cluster_yaml(cluster: &str, k: u8, routing: &str) -> String {
    let (id, octet) = (k + 1, 244 + k);
    format!(
        r#"    - name: {cluster}
      id: {id}
      spec:
        routing: {routing}
        nodes:
          - {{name: {cluster}-a, podCIDR: 10.{octet}.0.0/24}}
          - {{name: {cluster}-b, podCIDR: 10.{octet}.1.0/24}}
        namespaces: [{{name: shop}}]
        pods:
          - {{name: frontend, namespace: shop, node: {cluster}-a, labels: {{app: frontend}}}}
          - {{name: backend, namespace: shop, node: {cluster}-b, labels: {{app: backend}}}}
"#
    )
}

fn mesh_yaml(mesh: &str, clusters: &[String; 3], routing: &str) -> String {
    let mut yaml =
        format!("apiVersion: weir.dev/v1alpha1\nkind: ClusterMesh\nmetadata:\n  name: {mesh}\nspec:\n  clusters:\n");
    for (k, cluster) in clusters.iter().enumerate() {
        yaml.push_str(&cluster_yaml(cluster, k as u8, routing));
    }
    yaml
}

/// The mesh, taken down on drop, panic or not.
struct Mesh(String);

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = weir(&["lab", "down", &self.0]);
    }
}

const PODS: [&str; 2] = ["shop/frontend", "shop/backend"];

/// `weir policy list --lab <cluster> -o json`: one object per node.
fn policy_list(cluster: &str) -> Vec<serde_json::Value> {
    let out = weir_ok(&["policy", "list", "--lab", cluster, "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&out).expect("json").as_array().expect("nodes").clone()
}

/// The identity a cluster's own nodes give each of its pods (by IP), as
/// `weir policy list` shows its endpoints; None until every pod has one.
fn own_identities(cluster: &str, ips: &[Ipv4Addr]) -> Option<BTreeMap<Ipv4Addr, u64>> {
    let mut found = BTreeMap::new();
    for node in policy_list(cluster) {
        for e in node["endpoints"].as_array().into_iter().flatten() {
            let (Some(ip), Some(id)) = (e["ip"].as_str(), e["identity"].as_u64()) else { continue };
            if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                found.insert(ip, id);
            }
        }
    }
    ips.iter().all(|ip| found.contains_key(ip)).then_some(found)
}

/// Whether every node of `cluster` maps each of `expected`'s addresses to
/// its number in its ipcache (what `weir policy list` shows).
fn ipcache_agrees(cluster: &str, expected: &BTreeMap<Ipv4Addr, u64>) -> Result<(), String> {
    for node in policy_list(cluster) {
        let ipcache: BTreeMap<String, u64> = node["ipcache"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["cidr"].as_str()?.to_string(), e["identity"].as_u64()?)))
            .collect();
        for (ip, id) in expected {
            let seen = ipcache.get(&format!("{ip}/32")).or_else(|| ipcache.get(&ip.to_string()));
            if seen != Some(id) {
                return Err(format!("{} of {cluster} maps {ip} to {seen:?}, not {id}", node["node"]));
            }
        }
    }
    Ok(())
}

fn apply(cluster: &str, yaml: &str) {
    let file = std::env::temp_dir().join(format!("{cluster}.policy.yaml"));
    std::fs::write(&file, yaml).expect("writing the policy");
    weir_ok(&["apply", "--lab", cluster, "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
}

/// Backends take connections only from frontends (of `cluster`, if named).
fn backend_from_frontends(cluster: Option<&str>) -> String {
    let cluster = cluster.map(|c| format!(", io.cilium.k8s.policy.cluster: {c}")).unwrap_or_default();
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: backend-from-frontends
  namespace: shop
spec:
  endpointSelector:
    matchLabels: {{app: backend}}
  ingress:
    - fromEndpoints:
        - matchLabels: {{app: frontend{cluster}}}
"#
    )
}

/// Three clusters of two nodes with `routing`, up; taken down when the
/// [`Mesh`] drops.
fn three_clusters_up(prefix: &str, routing: &str) -> (Mesh, [String; 3], Vec<weir_lab::LabPlan>) {
    let base = unique_name(prefix);
    let clusters = [format!("{base}a"), format!("{base}b"), format!("{base}c")];
    let file = std::env::temp_dir().join(format!("{base}.mesh.yaml"));
    std::fs::write(&file, mesh_yaml(&base, &clusters, routing)).expect("writing the mesh");
    let mesh = Mesh(base.clone());
    let up = weir(&["lab", "up", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    assert!(up.status.success(), "{up:?}");
    let plans = clusters.iter().map(|c| weir_lab::runtime::load_plan(c).expect("cluster record")).collect();
    (mesh, clusters, plans)
}

/// Every pod (so every node) of every cluster reaches both pods (one on
/// each node) of every other cluster, with its own address: on the pod path
/// a remote pod CIDR is one of the cluster CIDRs, never masqueraded.
fn every_pod_reaches_every_other_clusters_pods(clusters: &[String; 3], plans: &[weir_lab::LabPlan]) {
    let pod = |k: usize, name: &str| plans[k].pod(name).expect("pod").clone();
    for (from, from_cluster) in clusters.iter().enumerate() {
        for client_name in PODS {
            let client = pod(from, client_name);
            for to in (0..3).filter(|&to| to != from) {
                for name in PODS {
                    let target = pod(to, name);
                    assert!(
                        eventually(Duration::from_secs(60), || ping(from_cluster, client_name, target.ip)),
                        "{from_cluster}'s {client_name} never reached {}'s {name} at {}",
                        clusters[to],
                        target.ip
                    );
                    let peer = tcp_peer(&client.netns, &target.netns, target.ip)
                        .unwrap_or_else(|e| panic!("{from_cluster} {client_name} -> {} {name}: {e}", clusters[to]));
                    assert_eq!(
                        peer,
                        IpAddr::V4(client.ip),
                        "{}'s {name} saw {from_cluster}'s {client_name} at another address: masqueraded, so node {} \
                         routes {}'s pod CIDRs without holding them among its cluster CIDRs",
                        clusters[to],
                        client.node,
                        clusters[to]
                    );
                }
            }
        }
    }
}

#[test]
fn three_clusters_reach_each_other_agree_on_identities_and_a_policy_admits_one_clusters_frontends() {
    if !privileged("clustermesh three") {
        return;
    }
    let started = Instant::now();
    let (mesh, clusters, plans) = three_clusters_up("cm3", "weir");
    eprintln!("three clusters of two nodes up in {:?}", started.elapsed());
    let pod = |k: usize, name: &str| plans[k].pod(name).expect("pod").clone();

    every_pod_reaches_every_other_clusters_pods(&clusters, &plans);
    eprintln!("all pods reached across clusters at {:?}", started.elapsed());

    // Each pod's number, as its own cluster gives it, carries its cluster's
    // id, and every node of the other clusters maps the pod to that number.
    let mut numbers: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    for (k, cluster) in clusters.iter().enumerate() {
        let ips: Vec<Ipv4Addr> = PODS.iter().map(|p| pod(k, p).ip).collect();
        let mut own = None;
        assert!(
            eventually(Duration::from_secs(30), || {
                own = own_identities(cluster, &ips);
                own.is_some()
            }),
            "{cluster}'s nodes never numbered its pods"
        );
        let own = own.expect("numbers");
        for ip in &ips {
            let id = own[ip];
            assert_eq!(id >> 16, k as u64 + 1, "{cluster}'s pod {ip} has {id:#x}, outside cluster {}'s range", k + 1);
            numbers.insert(*ip, id);
        }
    }
    eprintln!("identities by pod address: {numbers:x?}");
    let frontend_ids: std::collections::BTreeSet<u64> = (0..3).map(|k| numbers[&pod(k, "shop/frontend").ip]).collect();
    assert_eq!(frontend_ids.len(), 3, "the same labels in three clusters are three identities: {numbers:?}");
    for (k, cluster) in clusters.iter().enumerate() {
        let remote: BTreeMap<Ipv4Addr, u64> = (0..3)
            .filter(|&other| other != k)
            .flat_map(|other| PODS.map(|p| pod(other, p).ip))
            .map(|ip| (ip, numbers[&ip]))
            .collect();
        let mut why = String::new();
        assert!(
            eventually(Duration::from_secs(30), || match ipcache_agrees(cluster, &remote) {
                Ok(()) => true,
                Err(e) => {
                    why = e;
                    false
                }
            }),
            "{why}"
        );
    }

    // Cluster 2's backend: first from frontends of any cluster (cluster 3's
    // frontend is known to cluster 2 by its number, not `world`), then from
    // cluster 1's frontends alone.
    let backend = pod(1, "shop/backend");
    let frontends: Vec<_> = (0..3).map(|k| pod(k, "shop/frontend")).collect();
    let reaches = |k: usize| tcp_peer(&frontends[k].netns, &backend.netns, backend.ip).is_ok();
    apply(&clusters[1], &backend_from_frontends(None));
    for k in 0..3 {
        assert!(
            eventually(Duration::from_secs(30), || reaches(k)),
            "{}'s frontend is a frontend to {}'s policy",
            clusters[k],
            clusters[1]
        );
    }
    apply(&clusters[1], &backend_from_frontends(Some(&clusters[0])));
    assert!(
        eventually(Duration::from_secs(30), || !reaches(1)),
        "{}'s own frontend is still admitted once the policy names {}",
        clusters[1],
        clusters[0]
    );
    assert!(
        eventually(Duration::from_secs(30), || !reaches(2)),
        "{}'s frontend is still admitted once the policy names {}",
        clusters[2],
        clusters[0]
    );
    assert!(reaches(0), "{}'s frontend is admitted by the policy naming its cluster", clusters[0]);
    assert!(!reaches(1) && !reaches(2), "only {}'s frontend is admitted", clusters[0]);
    eprintln!("policy checked at {:?}", started.elapsed());
    drop(mesh);
}

#[test]
fn over_vxlan_three_clusters_reach_each_other_through_the_tunnels_each_learned() {
    if !privileged("clustermesh three vxlan") {
        return;
    }
    let (mesh, clusters, plans) = three_clusters_up("cm3v", "vxlan");
    every_pod_reaches_every_other_clusters_pods(&clusters, &plans);
    drop(mesh);
}
