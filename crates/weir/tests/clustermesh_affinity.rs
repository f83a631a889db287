//! ClusterMesh global services in a real lab, the annotations beyond
//! `global`: `affinity: remote` sends a cluster's clients to the other
//! cluster's backends and back to its own when those are gone;
//! `shared: "false"` takes the other cluster's backends and gives none
//! (nothing published in its etcd, the other's clients never reach it);
//! `affinity: local` with two local backends killed one by one stays local
//! while one lives, then spills over to the remote one.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::mesh::{
    answers, apply, backend, global_service, mesh_up, only, remote_state, shared_keys, two_clusters, Backend,
};
use common::{eventually, privileged, unique_name};

/// Two clusters of one node each. East: a client and two api pods; west: a
/// client and one api pod.
fn mesh_yaml(mesh: &str, east: &str, west: &str) -> String {
    two_clusters(mesh, east, &["client", "api", "api2"], west, &["client", "api"])
}

/// A mesh that is up, and what the tests use of it.
struct Lab {
    east: String,
    west: String,
    east_api: weir_lab::plan::PodPlan,
    east_api2: weir_lab::plan::PodPlan,
    west_api: weir_lab::plan::PodPlan,
    _mesh: common::mesh::Mesh,
}

impl Lab {
    fn up(prefix: &str) -> Self {
        let base = unique_name(prefix);
        let (east, west) = (format!("{base}e"), format!("{base}w"));
        let mesh = mesh_up(&base, &mesh_yaml(&base, &east, &west));
        let east_plan = weir_lab::runtime::load_plan(&east).expect("east");
        let west_plan = weir_lab::runtime::load_plan(&west).expect("west");
        Self {
            east_api: east_plan.pod("shop/api").expect("east api").clone(),
            east_api2: east_plan.pod("shop/api2").expect("east api2").clone(),
            west_api: west_plan.pod("shop/api").expect("west api").clone(),
            east,
            west,
            _mesh: mesh,
        }
    }

    /// A server on `pod`, answering with its name.
    fn serve(&self, pod: &weir_lab::plan::PodPlan, name: &str) -> Backend {
        backend(&pod.netns, pod.ip, name)
    }

    fn east_node(&self) -> String {
        format!("{}-a", self.east)
    }

    fn west_node(&self) -> String {
        format!("{}-a", self.west)
    }
}

/// Waits (with a deadline) until `cluster`'s client's connections all go to
/// `name`; panics with the last tally and `what` otherwise.
fn all_go_to(cluster: &str, name: &str, what: &str) {
    let mut last = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            last = answers(cluster, 20);
            only(&last, name)
        }),
        "{what}: {cluster}'s client did not go to {name} alone: {last:?}"
    );
}

#[test]
fn remote_affinity_prefers_the_other_clusters_backends_and_falls_back_to_its_own_when_they_are_gone() {
    if !privileged("clustermesh remote affinity") {
        return;
    }
    let lab = Lab::up("cmr");
    let (east, west) = (lab.east.as_str(), lab.west.as_str());
    let _east_server = lab.serve(&lab.east_api, "east");
    let mut west_server = lab.serve(&lab.west_api, "west");
    let (east_node, west_node) = (lab.east_node(), lab.west_node());
    let west_backend = [(lab.west_api.ip, west_node.as_str())];
    apply(west, &global_service(&[], &west_backend));
    apply(east, &global_service(&[("affinity", "remote")], &[(lab.east_api.ip, &east_node)]));

    // Remote affinity: west's backend alone while it is there.
    all_go_to(east, "west", "remote affinity");

    // West's backend leaves its slice: east falls back to its own.
    apply(west, &global_service(&[], &[]));
    all_go_to(east, "east", "west's backend left its slice");
    assert_eq!(answers(west, 10).get("east"), Some(&10), "west's client, with no backend of its own, goes to east's");

    // Back in west's slice: remote again.
    apply(west, &global_service(&[], &west_backend));
    all_go_to(east, "west", "west's backend back in its slice");

    // West's server dies: east's probe quarantines the remote backend, and
    // east's own serves; it returns when the server does.
    west_server.stop();
    all_go_to(east, "east", "west's server died");
    west_server = lab.serve(&lab.west_api, "west");
    all_go_to(east, "west", "west's server came back");
    drop(west_server);
}

#[test]
fn an_unshared_global_service_takes_the_other_clusters_backends_and_publishes_none_of_its_own() {
    if !privileged("clustermesh unshared") {
        return;
    }
    let lab = Lab::up("cmu");
    let (east, west) = (lab.east.as_str(), lab.west.as_str());
    let _east_server = lab.serve(&lab.east_api, "east");
    let _west_server = lab.serve(&lab.west_api, "west");
    let (east_node, west_node) = (lab.east_node(), lab.west_node());
    let east_backend = [(lab.east_api.ip, east_node.as_str())];
    let west_backend = [(lab.west_api.ip, west_node.as_str())];
    apply(east, &global_service(&[], &east_backend));
    apply(west, &global_service(&[("shared", "false")], &west_backend));

    // West takes east's backend beside its own.
    let mut last = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(60), || {
            last = answers(west, 20);
            last.contains_key("east") && last.contains_key("west")
        }),
        "west's client never reached both clusters' backends: {last:?}"
    );
    // West publishes nothing; east publishes its own.
    let east_key = format!("weir/clustermesh/v1/services/{east}/shop/api");
    let west_key = format!("weir/clustermesh/v1/services/{west}/shop/api");
    assert_eq!(shared_keys(west), Vec::<String>::new(), "an unshared service is published");
    assert_eq!(shared_keys(east), [east_key]);
    // East reads west's store (it is connected and learned west's node),
    // and its client reaches east's backend alone.
    assert!(
        eventually(Duration::from_secs(30), || {
            remote_state(east, west).is_some_and(|r| r["state"] == "connected" && r["nodes"].as_u64() >= Some(1))
        }),
        "east never read west's store"
    );
    let counts = answers(east, 40);
    assert!(only(&counts, "east"), "east's client reached the backend west does not share: {counts:?}");

    // Shared: east takes west's backend (what the check above would see).
    apply(west, &global_service(&[("shared", "true")], &west_backend));
    assert!(
        eventually(Duration::from_secs(30), || {
            last = answers(east, 20);
            last.contains_key("west")
        }),
        "east never reached west's backend once west shares it: {last:?}"
    );
    assert_eq!(shared_keys(west), [west_key]);

    // Unshared again: west's key goes, and east's client stops reaching west.
    apply(west, &global_service(&[("shared", "false")], &west_backend));
    assert!(
        eventually(Duration::from_secs(30), || shared_keys(west).is_empty()),
        "west's key stays once it no longer shares: {:?}",
        shared_keys(west)
    );
    all_go_to(east, "east", "west stopped sharing");
    // West still takes east's.
    assert!(
        eventually(Duration::from_secs(30), || {
            last = answers(west, 20);
            last.contains_key("east") && last.contains_key("west")
        }),
        "west's client no longer reaches both clusters' backends: {last:?}"
    );
}

#[test]
fn with_local_affinity_local_backends_killed_one_by_one_spill_over_to_the_remote_one_when_none_is_left() {
    if !privileged("clustermesh local spill-over") {
        return;
    }
    let lab = Lab::up("cml");
    let (east, west) = (lab.east.as_str(), lab.west.as_str());
    let mut first = lab.serve(&lab.east_api, "east-1");
    let mut second = lab.serve(&lab.east_api2, "east-2");
    let _west_server = lab.serve(&lab.west_api, "west");
    let (east_node, west_node) = (lab.east_node(), lab.west_node());
    apply(west, &global_service(&[], &[(lab.west_api.ip, west_node.as_str())]));
    apply(
        east,
        &global_service(
            &[("affinity", "local")],
            &[(lab.east_api.ip, east_node.as_str()), (lab.east_api2.ip, east_node.as_str())],
        ),
    );

    // Both local backends serve, the remote one stands by. (West's backend
    // is known to east first: the slices' revisions only move forward.)
    let mut last = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(60), || {
            let get = common::weir_ok(&["service", "get", "--lab", east, "shop/api", "-o", "json"]);
            get.contains(&format!("\"{west}\""))
        }),
        "east never learned west's backend"
    );
    assert!(
        eventually(Duration::from_secs(30), || {
            last = answers(east, 30);
            last.contains_key("east-1") && last.contains_key("east-2") && last.len() == 2
        }),
        "east's client did not balance over its two local backends alone: {last:?}"
    );

    // One local backend dies: all go to the other local one.
    first.stop();
    all_go_to(east, "east-2", "one of two local backends died");
    // The last local one dies: all go to the remote one.
    second.stop();
    all_go_to(east, "west", "both local backends died");
    // One local comes back: all go local again.
    first = lab.serve(&lab.east_api, "east-1");
    all_go_to(east, "east-1", "a local backend came back");
    drop(first);
}
