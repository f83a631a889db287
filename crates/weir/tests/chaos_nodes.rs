//! Chaos Mesh's selector field `nodes` in a lab with the pod path: one
//! node's pods partitioned from the other node's, pods on one node untouched.

mod chaos_lab;
mod common;

use chaos_lab::*;
use common::*;

#[test]
fn a_partition_between_the_pods_of_two_nodes() {
    let Some(lab) = lab("chnod") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    // web is on node-a; api and db on node-b.
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let yaml = "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata: {name: split, namespace: frontend}
spec:
  action: partition
  mode: all
  selector: {namespaces: [frontend, backend], nodes: [node-a]}
  direction: both
  target:
    mode: all
    selector: {namespaces: [frontend, backend], nodes: [node-b]}
";
    let file = write(&lab, "split", yaml);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    for (from, to, ip) in [(&web, &api, api.ip), (&api, &web, web.ip), (&web, &db, db.ip), (&db, &web, web.ip)] {
        assert!(!udp_ok(&from.netns, &to.netns, ip), "UDP {} -> {} crossed the partition", from.name, to.name);
    }
    assert!(tcp_ok(&api.netns, &db.netns, db.ip), "api -> db, both on node-b, was cut");
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("frontend/web -> backend/api,backend/db"), "{listed}");
    weir_ok(&["delete", "--lab", &lab.name, "-f", &file]);
    assert!(udp_ok(&web.netns, &api.netns, api.ip), "healed");
}
