//! Containers the plugin handed to the host agent reach the outside
//! masqueraded as the node, and each other with their own addresses: a host
//! namespace with its agent, an "outside" namespace on its uplink that has
//! no route back to the containers' subnet.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::cni_host::*;
use common::*;
use serde_json::{json, Value};

const SUBNET: &str = "10.79.0.0/24";
const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

#[test]
fn containers_reach_the_outside_masqueraded_as_the_node_and_each_other_unmasqueraded() {
    if !privileged("containers_reach_the_outside_masqueraded_as_the_node_and_each_other_unmasqueraded") {
        return;
    }
    let host = CniHost::new("cnimasq", SUBNET);
    // The outside: the far end of the host's uplink, the host's default
    // gateway, with no route to the containers' subnet.
    let outside = unique_name("cniout");
    weir_host::iproute::ip(None, &["netns", "add", &outside]).expect("netns");
    host.forget_later(&outside);
    weir_host::iproute::ip(Some(&host.netns), &["link", "set", "peer0", "netns", &outside]).expect("move peer0");
    weir_host::iproute::batch(
        Some(&outside),
        &["link set lo up".into(), "addr add 192.0.2.1/24 dev peer0".into(), "link set peer0 up".into()],
    )
    .expect("outside network");
    let _agent = host.start_agent();
    let dir = host.dir.clone();

    let conf = |masq: Option<bool>, agent: bool| {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "weirnet",
            "type": "weir-cni",
            "subnet": SUBNET,
            "dataDir": dir.join("ipam"),
        });
        if agent {
            conf["agentSocket"] = json!(host.socket);
        } else {
            conf["agent"] = json!(false);
        }
        if let Some(masq) = masq {
            conf["ipMasq"] = json!(masq);
        }
        conf
    };
    let run = |command: &str, id: &str, ns: &str, conf: &Value| {
        let netns = format!("/run/netns/{ns}");
        let env = [("CNI_CONTAINERID", id), ("CNI_NETNS", netns.as_str()), ("CNI_IFNAME", "eth0")];
        run_plugin(&host.netns, &dir, command, &env, conf)
    };

    // The contradictions are refused, with nothing made.
    for (masq, agent, why) in [(false, true, "the agent masquerades"), (true, false, "only the agent masquerades")] {
        let ns = host.container_netns("cnimasq");
        let (ok, result, _) = run("ADD", "refused", &ns, &conf(Some(masq), agent));
        assert!(!ok, "ipMasq {masq} with agent {agent} is refused ({why}): {result}");
        assert_eq!(result["code"], 2, "unsupported field: {result}");
        assert!(result["msg"].as_str().is_some_and(|m| m.contains("ipMasq")), "names the field: {result}");
        let links = weir_host::iproute::ip(Some(&ns), &["-o", "link", "show"]).expect("links");
        assert_eq!(links.lines().count(), 1, "only lo in the refused container: {links}");
    }

    let add = |id: &str, masq: Option<bool>| -> (String, Ipv4Addr) {
        let ns = host.container_netns("cnimasq");
        let (ok, result, stderr) = run("ADD", id, &ns, &conf(masq, true));
        assert!(ok, "ADD {id}: {result} {stderr}");
        let address = result["ips"][0]["address"].as_str().expect("address");
        (ns, address.trim_end_matches("/32").parse().expect("ip"))
    };
    let (web, web_ip) = add("web", Some(true));
    let (db, db_ip) = add("db", None);

    let far = listen(&outside, OUTSIDE);
    for (ns, ip) in [(&web, web_ip), (&db, db_ip)] {
        let seen = reaches(ns, OUTSIDE, &far);
        assert_eq!(seen, Some(IpAddr::V4(NODE)), "{ip} reaches the outside as the node");
    }
    // Inside the cluster CIDR, a container keeps its own address.
    let near = listen(&db, db_ip);
    assert_eq!(reaches(&web, db_ip, &near), Some(IpAddr::V4(web_ip)), "container to container: unmasqueraded");

    for (id, ns) in [("web", &web), ("db", &db)] {
        let (ok, result, stderr) = run("DEL", id, ns, &conf(None, true));
        assert!(ok, "DEL {id}: {result} {stderr}");
    }
}
