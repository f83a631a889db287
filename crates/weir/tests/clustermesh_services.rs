//! ClusterMesh global services in a real lab: two clusters, the same
//! Service annotated `service.cilium.io/global: "true"` in both, a backend
//! pod in each. A client pod of one cluster reaches the backends of both
//! through the socket load balancer; `affinity: local` keeps it on its own
//! cluster's until none is left (out of its slice, or its server dead and
//! quarantined), then fails over to the other's; the other
//! cluster's etcd gone, the last known remote backends stay.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::mesh::{answers, apply, backend, global_service, only, shared_keys, Mesh};
use common::{eventually, privileged, unique_name, weir, weir_ok};

/// Two clusters of one node each; east has a client and an api pod, west an api pod.
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
        routing: kernel
        nodes:
          - {{name: {east}-a, podCIDR: 10.244.0.0/24}}
        namespaces: [{{name: shop}}]
        pods:
          - {{name: client, namespace: shop, node: {east}-a}}
          - {{name: api, namespace: shop, node: {east}-a}}
    - name: {west}
      id: 2
      spec:
        routing: kernel
        nodes:
          - {{name: {west}-a, podCIDR: 10.245.0.0/24}}
        namespaces: [{{name: shop}}]
        pods:
          - {{name: api, namespace: shop, node: {west}-a}}
"#
    )
}

#[test]
fn a_global_service_balances_over_both_clusters_prefers_its_own_with_local_affinity_and_fails_over() {
    if !privileged("clustermesh global services") {
        return;
    }
    let base = unique_name("cmg");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let file = std::env::temp_dir().join(format!("{name}.mesh.yaml"));
    std::fs::write(&file, mesh_yaml(&name, &east, &west)).expect("writing the mesh");
    let mesh = Mesh(name.clone());
    let up = weir(&["lab", "up", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    assert!(up.status.success(), "{up:?}");
    let east_plan = weir_lab::runtime::load_plan(&east).expect("east");
    let west_plan = weir_lab::runtime::load_plan(&west).expect("west");
    let east_api = east_plan.pod("shop/api").expect("east api");
    let west_api = west_plan.pod("shop/api").expect("west api");
    let mut east_server = backend(&east_api.netns, east_api.ip, &east);
    let _west_server = backend(&west_api.netns, west_api.ip, &west);

    // The same global Service in both clusters, each with its own backend.
    apply(&west, &global_service(&[], &[(west_api.ip, &format!("{west}-a"))]));
    apply(&east, &global_service(&[], &[(east_api.ip, &format!("{east}-a"))]));
    let mut last = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(60), || {
            last = answers(&east, 20);
            last.contains_key(&east) && last.contains_key(&west)
        }),
        "east's client never reached both clusters' backends: {last:?}"
    );
    // Each cluster shares its own service in its own etcd, and nothing of the other's.
    assert_eq!(shared_keys(&east), [format!("weir/clustermesh/v1/services/{east}/shop/api")]);
    assert_eq!(shared_keys(&west), [format!("weir/clustermesh/v1/services/{west}/shop/api")]);
    // `weir service get` names the remote backend's cluster.
    let get = weir_ok(&["service", "get", "--lab", &east, "shop/api", "-o", "json"]);
    assert!(get.contains(&format!("\"{west}\"")) && get.contains(&west_api.ip.to_string()), "{get}");

    // Local affinity: east's own backend alone while it is there.
    apply(&east, &global_service(&[("affinity", "local")], &[(east_api.ip, &format!("{east}-a"))]));
    assert!(
        eventually(Duration::from_secs(30), || {
            last = answers(&east, 20);
            only(&last, &east)
        }),
        "with local affinity east's client still reached other backends: {last:?}"
    );
    // West's backend stands by, in the kernel's table behind the active slots.
    let get = weir_ok(&["service", "get", "--lab", &east, "shop/api", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&get).expect("json");
    // An array of frontends, each with its backends.
    let backends: Vec<&serde_json::Value> =
        json.as_array().expect("frontends").iter().filter_map(|fe| fe["backends"].as_array()).flatten().collect();
    assert!(
        backends.iter().any(|b| b["cluster"] == west.as_str() && b["state"] == "standby"),
        "west's backend is not standing by: {get}"
    );

    // East's server dies: its health check quarantines it, and with no
    // local backend serving every connection fails over to west's.
    east_server.stop();
    assert!(
        eventually(Duration::from_secs(30), || {
            last = answers(&east, 20);
            only(&last, &west)
        }),
        "east's client did not fail over to west's backend when east's server died: {last:?}"
    );
    // Back: east's own again once its probe passes.
    east_server = backend(&east_api.netns, east_api.ip, &east);
    assert!(
        eventually(Duration::from_secs(30), || {
            last = answers(&east, 20);
            only(&last, &east)
        }),
        "east's client did not come back to east's backend: {last:?}"
    );

    // East's backend leaves its slice: every connection fails over to west's.
    apply(&east, &global_service(&[("affinity", "local")], &[]));
    assert!(
        eventually(Duration::from_secs(30), || {
            last = answers(&east, 20);
            only(&last, &west)
        }),
        "east's client did not fail over to west's backend: {last:?}"
    );

    // West's etcd gone: east keeps the remote backends it last knew.
    let etcd_pid: i32 = std::fs::read_to_string(weir_host::paths::lab_dir(&west).join("etcd.pid"))
        .expect("west's etcd pid")
        .trim()
        .parse()
        .expect("pid");
    weir_host::process::kill(etcd_pid, libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(10), || !weir_host::process::alive(etcd_pid)),
        "west's etcd outlived SIGKILL"
    );
    let status_file = east_plan.nodes[0].agent.state_dir.join("clustermesh.json");
    assert!(
        eventually(Duration::from_secs(30), || {
            let status = std::fs::read_to_string(&status_file).unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&status).is_ok_and(|s| s[&west]["connected"] == false)
        }),
        "east never noticed west's etcd was gone"
    );
    let kept = answers(&east, 20);
    assert!(only(&kept, &west), "east lost west's backends with west's etcd: {kept:?}");
    drop(east_server);
    drop(mesh);
}
