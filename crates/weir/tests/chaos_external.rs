//! NetworkChaos's `externalTargets` in a lab with the pod path: a fault
//! from the selected pods to an address outside the cluster (the lab's
//! external host), other pods untouched; names resolved by the agents.

mod chaos_lab;
mod common;

use std::time::Duration;

use chaos_lab::*;
use common::*;

#[test]
fn external_targets_cut_the_selected_pods_from_an_outside_address_only() {
    let Some(lab) = lab("chext") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let ext = plan.externals[0].clone();
    assert!(
        eventually(Duration::from_secs(20), || tcp_ok(&web.netns, &ext.netns, ext.address)
            && tcp_ok(&db.netns, &ext.netns, ext.address)),
        "pods do not reach the external host before any chaos"
    );
    let yaml = format!(
        "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata: {{name: web-offline, namespace: frontend}}
spec:
  action: partition
  mode: all
  selector: {{labelSelectors: {{app: web}}}}
  direction: to
  externalTargets: [\"{}\"]
  duration: 10m
",
        ext.address
    );
    // Refused by path: another direction, too wide a CIDR; nothing applied.
    for (bad, path) in [
        (yaml.replace("direction: to", "direction: both"), "spec.direction"),
        (yaml.replace(&format!("\"{}\"", ext.address), "\"172.16.0.0/12\""), "spec.externalTargets[0]"),
    ] {
        let out = weir(&["apply", "--lab", &lab.name, "-f", &write(&lab, "bad", &bad)]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(path), "{out:?}");
    }
    // A name no resolver knows: the nodes refuse it.
    let unknown = yaml.replace(&format!("\"{}\"", ext.address), "no-such-host.invalid");
    let out = weir(&["apply", "--lab", &lab.name, "-f", &write(&lab, "unknown", &unknown)]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no-such-host.invalid"), "{out:?}");
    assert_eq!(running(&lab).0, Vec::<String>::new(), "a refusal applied something");

    let file = write(&lab, "offline", &yaml);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    assert!(!tcp_ok(&web.netns, &ext.netns, ext.address), "TCP web -> external host crossed the partition");
    assert!(!udp_ok(&web.netns, &ext.netns, ext.address), "UDP web -> external host crossed the partition");
    assert!(tcp_ok(&db.netns, &ext.netns, ext.address), "db -> external host was cut");
    assert!(tcp_ok(&web.netns, &api.netns, api.ip), "web -> api was cut");
    assert!(running(&lab).1 > 0, "drops are counted for the experiment");
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains(&format!("-> {}", ext.address)), "{listed}");

    weir_ok(&["delete", "--lab", &lab.name, "-f", &file]);
    assert!(tcp_ok(&web.netns, &ext.netns, ext.address), "web -> external host after delete");

    // A name, resolved by each agent when the experiment starts.
    let named = yaml.replace(&format!("\"{}\"", ext.address), "localhost");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "named", &named)]);
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("localhost (127.0.0.1"), "{listed}");
    assert!(tcp_ok(&web.netns, &ext.netns, ext.address), "only the name's addresses are targets");
}
