//! ClusterMesh in a real lab: two clusters (each with its own etcd and
//! agents) on one fabric. Pods reach pods of the other cluster natively
//! (routes each agent learns from the other cluster's etcd), with their own
//! addresses; no cluster's store holds a write of the other's; identities
//! carry the cluster id; bad meshes are refused by field; `lab down` of the
//! mesh leaves nothing.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use common::mesh::{ping, tcp_peer};
use common::{eventually, privileged, unique_name, weir, weir_ok};

/// Two clusters: `east` (id 1, pod path, two nodes) and `west` (id 2,
/// kernel routing, one node).
fn mesh_yaml(mesh: &str, east: &str, west: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: ClusterMesh
metadata:
  name: {mesh}
spec:
  clusters:
    - name: {east}
      id: 1
      spec:
        routing: weir
        nodes:
          - {{name: {east}-a, podCIDR: 10.244.0.0/24}}
          - {{name: {east}-b, podCIDR: 10.244.1.0/24}}
        namespaces: [{{name: shop}}]
        pods:
          - {{name: web, namespace: shop, node: {east}-a, labels: {{app: web}}}}
          - {{name: db, namespace: shop, node: {east}-b, labels: {{app: db}}}}
    - name: {west}
      id: 2
      spec:
        routing: kernel
        nodes:
          - {{name: {west}-a, podCIDR: 10.245.0.0/24}}
        namespaces: [{{name: shop}}]
        pods:
          - {{name: web, namespace: shop, node: {west}-a, labels: {{app: web}}}}
"#
    )
}

/// The mesh, taken down on drop, panic or not.
struct Mesh {
    name: String,
    file: std::path::PathBuf,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = weir(&["lab", "down", &self.name]);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Every key ever put in a cluster's etcd (its whole history, from revision
/// 1: the lab never compacts), read from inside the cluster's first node.
fn keys_ever_written(cluster: &str) -> Vec<String> {
    let plan = weir_lab::runtime::load_plan(cluster).expect("cluster record");
    let (netns, url) = weir_lab::runtime::etcd_endpoint(&plan).expect("a mesh's cluster has etcd");
    weir_host::netns::run_in(&netns, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut client = etcd_client::Client::connect([url.as_str()], None).await.expect("etcd");
            let now = client.get("weir/", None).await.expect("get").header().expect("header").revision();
            let options = etcd_client::WatchOptions::new().with_all_keys().with_start_revision(1);
            let mut stream = client.watch("", Some(options)).await.expect("watch");
            let mut keys = Vec::new();
            'history: while let Some(reply) = stream.message().await.expect("watch reply") {
                assert_eq!(reply.compact_revision(), 0, "the lab's etcd keeps its history");
                for event in reply.events() {
                    let kv = event.kv().expect("kv");
                    if event.event_type() == etcd_client::EventType::Put {
                        keys.push(kv.key_str().expect("utf-8 key").to_string());
                    }
                    if kv.mod_revision() >= now {
                        break 'history;
                    }
                }
            }
            keys
        })
    })
    .expect("netns")
}

/// What a cluster's own writers may have put in its store: nothing that
/// names the other cluster or its nodes, mesh keys only of its own
/// cluster, identity numbers only in its own range.
fn assert_only_own_writes(cluster: &str, id: u8, other: &str) {
    let keys = keys_ever_written(cluster);
    assert!(
        keys.iter().any(|k| k.starts_with(&format!("weir/clustermesh/v1/nodes/{cluster}/"))),
        "{cluster} publishes its nodes: {keys:?}"
    );
    let range = weir_policy::identity::cluster_range(id);
    for key in &keys {
        assert!(!key.contains(other), "{cluster}'s etcd holds a key naming {other}: {key}");
        if let Some(rest) = key.strip_prefix("weir/clustermesh/v1/nodes/") {
            assert!(rest.starts_with(&format!("{cluster}/")), "{cluster}'s etcd holds another cluster's node: {key}");
        }
        if let Some(number) = key.strip_prefix("weir/identities/v1/id/") {
            let number: u32 = number.parse().expect("an identity number");
            assert!(range.contains(&number), "{cluster}'s identity {number:#x} is outside its range {range:x?}");
        }
    }
}

#[test]
fn pods_of_two_clusters_reach_each_other_natively_and_no_cluster_writes_the_others_store() {
    if !privileged("clustermesh") {
        return;
    }
    let base = unique_name("cm");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let file = std::env::temp_dir().join(format!("{name}.mesh.yaml"));
    std::fs::write(&file, mesh_yaml(&name, &east, &west)).expect("writing the mesh");
    let mesh = Mesh { name: name.clone(), file };
    let up = weir_ok(&["lab", "up", "-f", &mesh.file.to_string_lossy()]);
    assert!(up.contains(&format!("cluster {east} built")) && up.contains(&format!("cluster {west} built")), "{up}");

    let east_plan = weir_lab::runtime::load_plan(&east).expect("east");
    let west_plan = weir_lab::runtime::load_plan(&west).expect("west");
    let (east_web, east_db) = (east_plan.pod("shop/web").expect("web"), east_plan.pod("shop/db").expect("db"));
    let west_web = west_plan.pod("shop/web").expect("west web");
    // Same pod name in both clusters: each cluster's own.
    assert_ne!(east_web.netns, west_web.netns);

    // Nothing but the agents' routes (learned from the other cluster's
    // etcd) joins the clusters: they come, then pods answer.
    assert!(
        eventually(Duration::from_secs(30), || ping(&east, "shop/web", west_web.ip)),
        "east's web never reached west's web {}",
        west_web.ip
    );
    assert!(
        eventually(Duration::from_secs(30), || ping(&west, "shop/web", east_db.ip)),
        "west's web never reached east's db {}",
        east_db.ip
    );
    // TCP both ways, with the pods' own addresses: native routing, no masquerade.
    let peer = tcp_peer(&east_web.netns, &west_web.netns, west_web.ip).expect("east web -> west web");
    assert_eq!(peer, IpAddr::V4(east_web.ip), "west sees east's pod itself");
    let peer = tcp_peer(&west_web.netns, &east_db.netns, east_db.ip).expect("west web -> east db");
    assert_eq!(peer, IpAddr::V4(west_web.ip), "east sees west's pod itself");

    // East's agents report what they learned of west.
    let status = std::fs::read_to_string(east_plan.nodes[0].agent.state_dir.join("clustermesh.json")).expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["remotes"][&west]["state"], "connected", "{status}");
    assert_eq!(status["remotes"][&west]["nodes"][0]["podCIDR"], "10.245.0.0/24", "{status}");
    let cli = weir_ok(&["clustermesh", "status", "--lab", &east]);
    assert!(cli.contains(&west) && cli.contains("connected"), "{cli}");

    // Each store holds only its own cluster's writes, although each
    // cluster's agents read the other's (the pings above needed it).
    assert_only_own_writes(&east, 1, &west);
    assert_only_own_writes(&west, 2, &east);
    // East is on the pod path: its pods have identities, in cluster 1's range.
    assert!(keys_ever_written(&east).iter().any(|k| k.starts_with("weir/identities/v1/id/")), "east numbered its pods");

    // One cluster down: the other and the fabric stay.
    let etcd_pids: Vec<i32> = [&east, &west]
        .iter()
        .map(|c| {
            let file = weir_host::paths::lab_dir(c).join("etcd.pid");
            std::fs::read_to_string(&file).expect("etcd pid").trim().parse().expect("pid")
        })
        .collect();
    weir_ok(&["lab", "down", &west]);
    assert!(weir_host::netns::exists(&format!("weir.{name}.fabric")), "the mesh's fabric stays");
    assert!(weir_host::netns::exists(&east_web.netns), "east stays");
    assert!(!weir_host::netns::exists(&west_web.netns), "west is gone");

    // The mesh down: nothing of it is left.
    weir_ok(&["lab", "down", &name]);
    let left: BTreeSet<String> =
        [&name, &east, &west].iter().flat_map(|n| weir_host::netns::list_with_prefix(&format!("weir.{n}."))).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    for pid in etcd_pids {
        assert!(
            eventually(Duration::from_secs(5), || !weir_host::process::alive(pid)),
            "etcd {pid} outlived its cluster"
        );
    }
    let bpffs = weir_host::mounts::ensure_bpffs().expect("bpffs");
    let cgroup2 = weir_host::mounts::ensure_cgroup2().expect("cgroup2");
    for lab in [&name, &east, &west] {
        assert!(!weir_host::paths::lab_pin_dir(&bpffs, lab).exists(), "pins of {lab} left");
        assert!(!weir_host::paths::lab_dir(lab).exists(), "state of {lab} left");
        let cgroup = cgroup2.join(weir_host::paths::CGROUP_SUBDIR).join("labs").join(lab);
        assert!(!cgroup.exists(), "cgroup of {lab} left");
    }
}

#[test]
fn bad_meshes_are_refused_naming_the_field_and_nothing_is_built() {
    let base = unique_name("cmb");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let good = mesh_yaml(&name, &east, &west);
    let cases = [
        (good.replace("id: 2", "id: 1"), "spec.clusters[1].id: duplicate cluster id 1"),
        (good.replace("id: 2", "id: 256"), "spec.clusters[1].id: 256 is out of range"),
        (
            good.replace(&format!("name: {west}\n"), &format!("name: {east}\n")),
            "spec.clusters[1].name: duplicate cluster name",
        ),
        (
            good.replace("10.245.0.0/24", "10.244.0.128/25"),
            "spec.clusters[1].spec.nodes[0].podCIDR: 10.244.0.128/25 overlaps 10.244.0.0/24",
        ),
        (good.replace("routing: kernel", "routing: vxlan"), "spec.clusters[1].spec.routing"),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let file = std::env::temp_dir().join(format!("{name}.{i}.mesh.yaml"));
        std::fs::write(&file, yaml).expect("writing");
        let out = weir(&["lab", "up", "-f", &file.to_string_lossy(), "--no-agents"]);
        let _ = std::fs::remove_file(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was accepted");
        assert!(stderr.contains(expected), "case {i}: {stderr:?} lacks {expected:?}");
        for lab in [&name, &east, &west] {
            assert!(!weir_host::paths::lab_dir(lab).exists(), "case {i} left a record of {lab}");
        }
    }
}

/// Two clusters on the pod path, one node each.
fn pod_path_mesh_yaml(mesh: &str, east: &str, west: &str) -> String {
    mesh_yaml(mesh, east, west)
        .replace("routing: kernel", "routing: weir")
        .replace(&format!("          - {{name: {east}-b, podCIDR: 10.244.1.0/24}}\n"), "")
        .replace(&format!("node: {east}-b"), &format!("node: {east}-a"))
}

fn apply(cluster: &str, yaml: &str) {
    let file = std::env::temp_dir().join(format!("{cluster}.policy.yaml"));
    std::fs::write(&file, yaml).expect("writing the policy");
    weir_ok(&["apply", "--lab", cluster, "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
}

fn db_from_web(extra_label: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-web
  namespace: shop
spec:
  podSelector:
    matchLabels: {{app: db}}
  ingress:
    - from:
        - podSelector:
            matchLabels: {{app: web{extra_label}}}
"#
    )
}

#[test]
fn a_remote_pod_has_its_own_clusters_identity_so_policies_select_it_and_can_exclude_its_cluster() {
    if !privileged("clustermesh policy") {
        return;
    }
    let base = unique_name("cmp");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let file = std::env::temp_dir().join(format!("{name}.mesh.yaml"));
    std::fs::write(&file, pod_path_mesh_yaml(&name, &east, &west)).expect("writing the mesh");
    let mesh = Mesh { name: name.clone(), file };
    weir_ok(&["lab", "up", "-f", &mesh.file.to_string_lossy()]);
    let east_plan = weir_lab::runtime::load_plan(&east).expect("east");
    let west_plan = weir_lab::runtime::load_plan(&west).expect("west");
    let (east_web, east_db) = (east_plan.pod("shop/web").expect("web"), east_plan.pod("shop/db").expect("db"));
    let west_web = west_plan.pod("shop/web").expect("west web");
    assert!(
        eventually(Duration::from_secs(30), || ping(&west, "shop/web", east_db.ip)),
        "west's web never reached east's db"
    );
    // Each cluster numbered its own pods in its own range.
    assert_only_own_writes(&east, 1, &west);
    assert_only_own_writes(&west, 2, &east);

    // db takes connections from web pods only. West's web is one: east
    // knows its identity from west's store (as `world` it would be refused).
    apply(&east, &db_from_web(""));
    let reaches = |from: &weir_lab::plan::PodPlan| tcp_peer(&from.netns, &east_db.netns, east_db.ip).is_ok();
    assert!(eventually(Duration::from_secs(30), || reaches(west_web)), "west's web is a web pod to east's policy");
    assert!(reaches(east_web), "east's web is allowed");
    // East's flows name west's pod with its cluster, as Hubble's do (the
    // agent reads its flow ring as it goes: wait for the connection's flows).
    let from_west = |lab: &str| -> Vec<serde_json::Value> {
        let out =
            weir_ok(&["observe", "--lab", lab, "--from-ip", &west_web.ip.to_string(), "--last", "200", "-o", "jsonpb"]);
        out.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect()
    };
    let cluster_label = format!("k8s:io.cilium.k8s.policy.cluster={west}");
    let named = |f: &serde_json::Value| {
        let source = &f["flow"]["source"];
        source["cluster_name"] == west.as_str()
            && source["labels"].as_array().is_some_and(|l| l.iter().any(|l| l.as_str() == Some(cluster_label.as_str())))
    };
    let mut last = Vec::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            last = from_west(&east);
            last.iter().any(named)
        }),
        "no flow from west's web names its cluster: {last:?}"
    );
    // The mesh's name addresses every cluster's agents: one view of the flows
    // of both clusters, merged in time order, as a relay across clusters.
    let mut nodes = BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            nodes =
                from_west(&name).iter().filter_map(|f| f["flow"]["node_name"].as_str().map(str::to_string)).collect();
            nodes.iter().any(|n| n.starts_with(east.as_str())) && nodes.iter().any(|n| n.starts_with(west.as_str()))
        }),
        "the mesh's flows come from one cluster only: {nodes:?}"
    );

    // The cluster label selects: web pods of east only.
    apply(&east, &db_from_web(&format!(", io.cilium.k8s.policy.cluster: {east}")));
    assert!(
        eventually(Duration::from_secs(30), || !reaches(west_web)),
        "west's web is refused once the policy names east's cluster"
    );
    assert!(reaches(east_web), "east's web is still allowed");
}

#[test]
fn over_vxlan_pods_of_two_clusters_reach_each_other_through_tunnels_learned_from_the_other_store() {
    if !privileged("clustermesh vxlan") {
        return;
    }
    let base = unique_name("cmv");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let file = std::env::temp_dir().join(format!("{name}.mesh.yaml"));
    std::fs::write(&file, pod_path_mesh_yaml(&name, &east, &west).replace("routing: weir", "routing: vxlan"))
        .expect("writing the mesh");
    let mesh = Mesh { name: name.clone(), file };
    weir_ok(&["lab", "up", "-f", &mesh.file.to_string_lossy()]);
    let east_plan = weir_lab::runtime::load_plan(&east).expect("east");
    let west_plan = weir_lab::runtime::load_plan(&west).expect("west");
    let east_web = east_plan.pod("shop/web").expect("web");
    let west_web = west_plan.pod("shop/web").expect("west web");
    assert!(
        eventually(Duration::from_secs(30), || ping(&east, "shop/web", west_web.ip)),
        "east's web never reached west's web over the overlay"
    );
    let peer = tcp_peer(&west_web.netns, &east_web.netns, east_web.ip).expect("west web -> east web");
    assert_eq!(peer, IpAddr::V4(west_web.ip), "east sees west's pod itself");
    // The fabric carries no route to the other cluster's pods: the tunnel does.
    let routes = std::process::Command::new("ip")
        .args(["-n", &east_plan.nodes[0].netns, "route", "show", "10.245.0.0/24"])
        .output()
        .expect("ip route");
    assert!(routes.stdout.is_empty(), "no route to west's pods: {}", String::from_utf8_lossy(&routes.stdout));
    assert_only_own_writes(&east, 1, &west);
    assert_only_own_writes(&west, 2, &east);
}

#[test]
fn a_mesh_that_is_up_takes_pod_changes_and_a_refused_change_in_one_cluster_changes_no_cluster() {
    if !privileged("clustermesh changes") {
        return;
    }
    let base = unique_name("cmc");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let file = std::env::temp_dir().join(format!("{name}.mesh.yaml"));
    let yaml = mesh_yaml(&name, &east, &west);
    std::fs::write(&file, &yaml).expect("writing the mesh");
    let mesh = Mesh { name: name.clone(), file };
    let path = mesh.file.to_string_lossy().into_owned();
    weir_ok(&["lab", "up", "-f", &path, "--no-agents"]);
    let new_pod_netns = format!("weir.{east}.pod.shop.api");
    let with_api = yaml.replace(
        &format!("          - {{name: db, namespace: shop, node: {east}-b, labels: {{app: db}}}}\n"),
        &format!(
            "          - {{name: db, namespace: shop, node: {east}-b, labels: {{app: db}}}}\n          - {{name: api, namespace: shop, node: {east}-b}}\n"
        ),
    );
    assert_ne!(with_api, yaml);

    // A new pod in east, and a node changed in west: refused, naming west;
    // east did not take its pod either.
    let refused = with_api.replace("podCIDR: 10.245.0.0/24", "podCIDR: 10.246.0.0/24");
    std::fs::write(&mesh.file, &refused).expect("writing");
    let out = weir(&["lab", "up", "-f", &path, "--no-agents"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node change in a running cluster is refused");
    assert!(stderr.contains(&format!("lab {west} is already up with a different node list")), "{stderr}");
    assert!(!weir_host::netns::exists(&new_pod_netns), "east took no pod while west was refused");

    // The pod alone: taken, the rest stays.
    std::fs::write(&mesh.file, &with_api).expect("writing");
    let out = weir_ok(&["lab", "up", "-f", &path, "--no-agents"]);
    assert!(out.contains(&format!("cluster {east} already up")), "{out}");
    assert!(weir_host::netns::exists(&new_pod_netns), "east's new pod exists");
    let east_plan = weir_lab::runtime::load_plan(&east).expect("east");
    assert!(east_plan.pod("shop/api").is_some(), "east's record has its new pod");
    // And again: nothing to do.
    let out = weir_ok(&["lab", "up", "-f", &path, "--no-agents"]);
    assert!(out.contains(&format!("mesh {name} already up")), "{out}");
}
