//! ClusterMesh global services in a real lab: two clusters, the same
//! Service annotated `service.cilium.io/global: "true"` in both, a backend
//! pod in each. A client pod of one cluster reaches the backends of both
//! through the socket load balancer; `affinity: local` keeps it on its own
//! cluster's until none is left (out of its slice, or its server dead and
//! quarantined), then fails over to the other's; the other
//! cluster's etcd gone, the last known remote backends stay.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::mesh::{
    answers, apply, backend, global_service, mesh_up, mesh_yaml, only, remote_state, shared_keys, Mesh,
};
use common::{eventually, privileged, unique_name, weir, weir_ok};

#[test]
fn a_global_service_balances_over_both_clusters_prefers_its_own_with_local_affinity_and_fails_over() {
    if !privileged("clustermesh global services") {
        return;
    }
    let base = unique_name("cmg");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let mesh = mesh_up(&name, &mesh_yaml(&name, &east, &west));
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
    // Its node still answers: away, not lost.
    assert!(
        eventually(Duration::from_secs(30), || remote_state(&east, &west).is_some_and(|r| r["state"] == "etcd-away")),
        "east never noticed west's etcd was gone: {:?}",
        remote_state(&east, &west)
    );
    let kept = answers(&east, 20);
    assert!(only(&kept, &west), "east lost west's backends with west's etcd: {kept:?}");
    drop(east_server);
    drop(mesh);
}

/// Whether `cluster`'s `shop/api` holds a backend at `ip` (`weir service get`).
fn holds_backend(cluster: &str, ip: Ipv4Addr) -> bool {
    let get = weir_ok(&["service", "get", "--lab", cluster, "shop/api", "-o", "json"]);
    get.contains(&format!("\"{ip}\""))
}

/// A remote cluster whose etcd alone is gone keeps its backends for the
/// mesh's stale time, then loses them; one lost entirely (etcd and nodes)
/// loses them within seconds; each comes back when it is reached again.
#[test]
fn a_lost_cluster_leaves_the_tables_at_once_and_one_whose_etcd_alone_is_gone_is_dropped_after_the_stale_time() {
    if !privileged("clustermesh lost clusters") {
        return;
    }
    let base = unique_name("cml");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let file = std::env::temp_dir().join(format!("{name}.mesh.yaml"));
    let yaml =
        mesh_yaml(&name, &east, &west).replace("spec:\n  clusters:", "spec:\n  remoteStaleAfter: 6s\n  clusters:");
    std::fs::write(&file, &yaml).expect("writing the mesh");
    let mesh = Mesh(name.clone());
    let up = weir(&["lab", "up", "-f", &file.to_string_lossy()]);
    assert!(up.status.success(), "{up:?}");
    let east_plan = weir_lab::runtime::load_plan(&east).expect("east");
    let west_plan = weir_lab::runtime::load_plan(&west).expect("west");
    let east_api = east_plan.pod("shop/api").expect("east api");
    let west_api = west_plan.pod("shop/api").expect("west api");
    let _east_server = backend(&east_api.netns, east_api.ip, &east);
    let west_server = backend(&west_api.netns, west_api.ip, &west);
    apply(&west, &global_service(&[], &[(west_api.ip, &format!("{west}-a"))]));
    apply(&east, &global_service(&[], &[(east_api.ip, &format!("{east}-a"))]));
    let mut last = BTreeMap::new();
    let both = |last: &mut BTreeMap<String, u64>| {
        *last = answers(&east, 20);
        last.contains_key(&east) && last.contains_key(&west)
    };
    assert!(eventually(Duration::from_secs(60), || both(&mut last)), "east never reached both clusters: {last:?}");
    let status = remote_state(&east, &west).expect("east's view of west");
    assert_eq!(
        (&status["state"], &status["nodes"], &status["globalServices"], &status["backends"], &status["synced"]),
        (&"connected".into(), &1.into(), &1.into(), &1.into(), &true.into()),
        "{status}"
    );
    // `weir clustermesh status` exits 0 while every cluster is connected.
    assert!(weir(&["clustermesh", "status", "--lab", &east]).status.success());

    // West's etcd alone is gone: its node answers, so west is away and kept...
    let etcd_pid = || -> i32 {
        std::fs::read_to_string(weir_host::paths::lab_dir(&west).join("etcd.pid"))
            .expect("west's etcd pid")
            .trim()
            .parse()
            .expect("pid")
    };
    let pid = etcd_pid();
    weir_host::process::kill(pid, libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(20), || remote_state(&east, &west).is_some_and(|r| r["state"] == "etcd-away")),
        "east never noticed west's etcd was gone: {:?}",
        remote_state(&east, &west)
    );
    assert!(holds_backend(&east, west_api.ip), "west's backend left with its etcd alone");
    assert!(!weir(&["clustermesh", "status", "--lab", &east]).status.success(), "a cluster away is not healthy");
    // ...until the mesh's stale time (6 s) has passed: then its backends leave.
    assert!(
        eventually(Duration::from_secs(30), || remote_state(&east, &west).is_some_and(|r| r["state"] == "stale")),
        "west was never dropped as stale: {:?}",
        remote_state(&east, &west)
    );
    assert!(!holds_backend(&east, west_api.ip), "a stale cluster's backend stayed");
    let stale = answers(&east, 20);
    assert!(only(&stale, &east), "{stale:?}");

    // West's etcd back (`weir lab up` starts it again): connected, its backend back.
    weir_ok(&["lab", "up", "-f", &file.to_string_lossy()]);
    assert!(
        eventually(Duration::from_secs(30), || remote_state(&east, &west).is_some_and(|r| r["state"] == "connected")),
        "east did not reconnect to west: {:?}",
        remote_state(&east, &west)
    );
    assert!(eventually(Duration::from_secs(30), || both(&mut last)), "west's backend did not come back: {last:?}");

    // West lost entirely (its etcd, node and agent gone): lost within seconds,
    // its backend out of east's tables, every connection answered by east.
    drop(west_server);
    let down = weir(&["lab", "down", &west]);
    assert!(down.status.success(), "{down:?}");
    let lost_at = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || remote_state(&east, &west).is_some_and(|r| r["state"] == "lost")),
        "west was never found lost: {:?}",
        remote_state(&east, &west)
    );
    eprintln!("west found lost {:?} after it went down", lost_at.elapsed());
    assert!(!holds_backend(&east, west_api.ip), "a lost cluster's backend stayed");
    let after = answers(&east, 50);
    assert!(only(&after, &east), "{after:?}");

    // West back, its service applied again: both answer.
    weir_ok(&["lab", "up", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    let west_plan = weir_lab::runtime::load_plan(&west).expect("west");
    let west_api = west_plan.pod("shop/api").expect("west api");
    let _west_server = backend(&west_api.netns, west_api.ip, &west);
    apply(&west, &global_service(&[], &[(west_api.ip, &format!("{west}-a"))]));
    assert!(eventually(Duration::from_secs(60), || both(&mut last)), "west did not answer again: {last:?}");
    drop(mesh);
}
