//! `weir lb vip|real`, Katran's imperative commands, on the lab of
//! common::xlb: a VIP added, given reals, a real drained and deleted, the
//! VIP listed and deleted, each change a map update the clients see; bad
//! edits refused naming what is wrong, with nothing changed; the edited
//! document survives the agent's restart.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::xlb::{ask, lb_status, serve, Site};
use common::*;

const VIP: &str = "198.51.100.10";

fn lb(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["lb"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--socket", socket.to_str().expect("utf-8")]);
    weir(&all)
}

fn lb_ok(socket: &std::path::Path, args: &[&str]) -> String {
    let out = lb(socket, args);
    assert!(out.status.success(), "weir lb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Who answers `count` new connections to the VIP.
fn answers(site: &Site, count: usize) -> BTreeSet<String> {
    (0..count).filter_map(|_| ask(site, VIP)).collect()
}

fn weights(socket: &std::path::Path) -> Vec<(String, u64)> {
    let status = lb_status(socket);
    let vip = status["vips"].as_array().and_then(|v| v.first()).cloned().unwrap_or_default();
    let reals = vip["reals"].as_array().cloned().unwrap_or_default();
    reals.iter().map(|r| (r["address"].as_str().unwrap_or("").to_string(), r["weight"].as_u64().unwrap_or(0))).collect()
}

#[test]
fn vips_and_reals_are_added_drained_and_deleted_one_command_at_a_time() {
    if !privileged("vips_and_reals_are_added_drained_and_deleted_one_command_at_a_time") {
        return;
    }
    let site = Site::up("xlbc", &[VIP], &[]);
    serve(&site.ns("real1"), 80, "real1");
    serve(&site.ns("real2"), 80, "real2");
    let [(mut lb_agent, socket), _real1, _real2] = site.start_agents(&[]);

    let added = lb_ok(&socket, &["vip", "add", "web", "--address", VIP, "--port", "80", "--health-check", "tcp"]);
    assert!(added.contains("VIP web added"), "{added}");
    lb_ok(&socket, &["real", "add", "web", "10.2.1.2"]);
    assert!(eventually(Duration::from_secs(10), || answers(&site, 3) == BTreeSet::from(["real1".to_string()])));
    let reweighed = lb_ok(&socket, &["real", "add", "web", "10.2.2.2", "--weight", "3"]);
    assert!(reweighed.contains("real 10.2.2.2 added (weight 3)"), "{reweighed}");
    let both = BTreeSet::from(["real1".to_string(), "real2".to_string()]);
    assert!(eventually(Duration::from_secs(20), || answers(&site, 12) == both), "{}", lb_ok(&socket, &["status"]));

    let list = lb_ok(&socket, &["vip", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["from"], "document");
    assert_eq!(list[0]["reals"].as_array().map(Vec::len), Some(2));

    // Drained: new connections all reach real2; real1 keeps weight 0.
    lb_ok(&socket, &["real", "drain", "web", "10.2.1.2"]);
    assert_eq!(weights(&socket), [("10.2.1.2".to_string(), 0), ("10.2.2.2".to_string(), 3)]);
    assert!(eventually(Duration::from_secs(10), || answers(&site, 12) == BTreeSet::from(["real2".to_string()])));

    // Bad edits change nothing and say why.
    for (args, why) in [
        (vec!["real", "add", "nope", "10.2.1.2"], "no VIP named \"nope\""),
        (vec!["real", "add", "web", "10.2.2.2"], "give --weight"),
        (vec!["real", "del", "web", "10.9.9.9"], "not a real of VIP web"),
        (vec!["vip", "add", "web", "--address", VIP, "--port", "81"], "exists"),
        (vec!["vip", "add", "dup", "--address", VIP, "--port", "80"], "already VIP \"web\""),
        (
            vec![
                "vip",
                "add",
                "bad",
                "--address",
                VIP,
                "--port",
                "80",
                "--protocol",
                "UDP",
                "--health-check",
                "http:/x",
            ],
            "a UDP VIP is probed by DNS or UDP",
        ),
        (vec!["vip", "del", "shop/web:80/TCP"], "a Service's VIP"),
    ] {
        let out = lb(&socket, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "weir lb {args:?}: {stderr}");
    }
    assert_eq!(weights(&socket), [("10.2.1.2".to_string(), 0), ("10.2.2.2".to_string(), 3)]);

    // The edited document is what a restarted agent holds.
    let _ = lb_agent.0.kill();
    let _ = lb_agent.0.wait();
    let (_lb_agent, socket) = common::xlb::start_agent(&site, "lb", &["--interface", "mgmt0", "--lb-interface", "l0"]);
    assert_eq!(weights(&socket), [("10.2.1.2".to_string(), 0), ("10.2.2.2".to_string(), 3)]);

    lb_ok(&socket, &["real", "del", "web", "10.2.1.2"]);
    assert_eq!(weights(&socket), [("10.2.2.2".to_string(), 3)]);
    let deleted = lb_ok(&socket, &["vip", "del", "web"]);
    assert!(deleted.contains("VIP web deleted"), "{deleted}");
    assert_eq!(lb_status(&socket)["vips"].as_array().map(Vec::len), Some(0));
    assert!(eventually(Duration::from_secs(10), || ask(&site, VIP).is_none()), "the deleted VIP still answers");
}
