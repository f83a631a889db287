use std::net::IpAddr;

use super::*;
use crate::spec;

fn doc(vips: &str) -> String {
    format!("apiVersion: weir.dev/v1alpha1\nkind: XdpLoadBalancer\nmetadata: {{name: edge}}\nspec:\n  vips:\n{vips}")
}

fn reals(n: usize) -> String {
    (0..n).map(|i| format!("    - {{address: 10.1.{}.{}}}\n", i / 200, i % 200 + 2)).collect()
}

fn web(reals: &str) -> String {
    doc(&format!("  - name: web\n    address: 203.0.113.10\n    port: 80\n    protocol: TCP\n    reals:\n{reals}"))
}

/// 100k synthetic clients of one VIP.
fn flows() -> Vec<FlowTuple> {
    (0..100_000u32)
        .map(|i| FlowTuple {
            client: IpAddr::from([100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            client_port: 1024 + (i % 50_000) as u16,
            vip_port: 80,
            proto: 6,
        })
        .collect()
}

fn owners(plan: &Plan, flows: &[FlowTuple]) -> Vec<Option<RealKey>> {
    let vip: IpAddr = "203.0.113.10".parse().expect("address");
    flows.iter().map(|f| plan.choose(f, vip).and_then(|c| c.real).map(|r| r.1)).collect()
}

#[test]
fn removing_one_of_n_reals_moves_about_one_nth_of_flows() {
    let flows = flows();
    for n in [10usize, 50] {
        let before = plan(&spec::parse(&web(&reals(n))).expect("valid"), None);
        // Remove the real listed fourth.
        let fewer: String =
            reals(n).lines().enumerate().filter(|(i, _)| *i != 3).map(|(_, l)| format!("{l}\n")).collect();
        let after = plan(&spec::parse(&web(&fewer)).expect("valid"), Some(&before));
        let removed: IpAddr = "10.1.0.5".parse().expect("address");
        let (a, b) = (owners(&before, &flows), owners(&after, &flows));
        let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count() as f64 / flows.len() as f64;
        let of_removed = a.iter().filter(|x| x.map(|r| r.address) == Some(removed)).count() as f64 / flows.len() as f64;
        // Every flow of the removed real moves; Maglev moves few others
        // (the paper: 1.6% in all for 1 of 100, the minimum being 1%).
        assert!(b.iter().all(|x| x.map(|r| r.address) != Some(removed)));
        let ideal = 1.0 / n as f64;
        assert!((of_removed - ideal).abs() < ideal * 0.1, "n={n}: removed real had {of_removed}");
        assert!(moved < ideal * 1.6 + 0.005, "n={n}: {:.2}% moved, 1/N is {:.2}%", moved * 100.0, ideal * 100.0);
        // Indexes of the remaining reals did not change: their LRU entries stay right.
        for (i, key) in &after.reals {
            assert_eq!(before.reals.get(i), Some(key));
        }
    }
}

#[test]
fn the_ring_is_balanced_within_maglevs_bound_and_by_weight() {
    let plan1 = plan(&spec::parse(&web(&reals(100))).expect("valid"), None);
    let mut share = BTreeMap::new();
    for slot in &plan1.vips[0].ring {
        *share.entry(*slot).or_insert(0usize) += 1;
    }
    // Unweighted Maglev: every backend owns floor(M/N) or ceil(M/N) slots.
    assert_eq!(share.len(), 100);
    assert!(share.values().all(|&s| (655..=656).contains(&s)), "{share:?}");

    let weighted = web("    - {address: 10.1.0.2, weight: 1}\n    - {address: 10.1.0.3, weight: 3}\n    - {address: 10.1.0.4, weight: 0}\n");
    let plan2 = plan(&spec::parse(&weighted).expect("valid"), None);
    let count = |addr: &str| {
        let index = plan2.reals.iter().find(|(_, k)| k.address.to_string() == addr).map(|(i, _)| *i).expect("real");
        plan2.vips[0].ring.iter().filter(|&&r| r == index).count() as f64
    };
    assert!((count("10.1.0.3") / count("10.1.0.2") - 3.0).abs() < 0.01);
    assert_eq!(count("10.1.0.4"), 0.0, "weight 0: drained from the ring");
}

#[test]
fn indexes_stay_across_changes_and_changes_are_minimal() {
    let two = doc("  - {name: a, address: 198.51.100.1, protocol: TCP, reals: [{address: 10.0.0.1}]}\n  - {name: b, address: 198.51.100.2, protocol: UDP, port: 53, reals: [{address: 10.0.0.2}]}\n");
    let first = plan(&spec::parse(&two).expect("valid"), None);
    let all = changes(None, &first);
    assert_eq!((all.vips_written.len(), all.rings_written.len(), all.reals_written.len()), (2, 2, 2));
    assert!(all.config.is_some());
    // Remove a, change b's weight, add c: b keeps index 1, c takes a's 0.
    let next = doc("  - {name: b, address: 198.51.100.2, protocol: UDP, port: 53, reals: [{address: 10.0.0.2, weight: 2}, {address: 10.0.0.3}]}\n  - {name: c, address: \"2001:db8::1\", protocol: TCP, forwarding: GUE, hash: DestinationPort, reals: [{address: \"2001:db8::5\"}]}\n");
    let second = plan(&spec::parse(&next).expect("valid"), Some(&first));
    let by_name = |p: &Plan, n: &str| p.vips.iter().find(|v| v.vip.name == n).map(|v| v.index);
    assert_eq!(by_name(&second, "b"), Some(1));
    assert_eq!(by_name(&second, "c"), Some(0));
    let delta = changes(Some(&first), &second);
    assert!(delta.config.is_none());
    assert_eq!(delta.vips_deleted.len(), 1);
    assert_eq!(delta.rings_written.len(), 1, "c's ring is new: whole");
    assert_eq!(delta.ring_slots_written.len(), 1, "b's ring changed at its index: its changed slots");
    assert_eq!(delta.vips_written.len(), 1, "only c's entry: b's index, flags and forwarding are the same");
    assert_eq!(delta.vips_written[0].1.flags, F_DPORT_ONLY);
    assert_eq!(delta.reals_cleared, Vec::<u32>::new(), "10.0.0.1's index is reused by a new real");
    assert!(changes(Some(&second), &second) == Changes::default());
}

#[test]
fn documents_are_refused_by_field() {
    let cases = [
        (web("    - {address: 10.1.0.2, wieght: 2}\n"), "spec.vips[0].reals[0]"),
        (web("").replace("spec:\n", "spec:\n  newConnectionsPerSecondPerCore: 0\n"), "spec.newConnectionsPerSecondPerCore"),
        (web("    - {address: \"::ffff:10.1.0.2\"}\n"), "spec.vips[0].reals[0].address"),
        (web("    - {address: 10.1.0.2, port: 8080}\n"), "spec.vips[0].reals[0].port"),
        (web("    - {address: 10.1.0.2}\n    - {address: 10.1.0.2}\n"), "spec.vips[0].reals[1].address"),
        (web("    - {address: 10.1.0.2, weight: 70000}\n"), "spec.vips[0].reals[0].weight"),
        (doc("  - {name: a, address: \"2001:db8::1\", protocol: TCP, reals: [{address: 10.0.0.1}]}\n"), "spec.vips[0].reals[0].address"),
        (doc("  - {name: a, address: 198.51.100.1, protocol: SCTP}\n"), "spec.vips[0].protocol"),
        (doc("  - {name: a, address: 198.51.100.1, protocol: TCP, forwarding: DSR}\n"), "spec.vips[0].forwarding"),
        (doc("  - {name: a, address: 198.51.100.1, protocol: TCP, hash: Random}\n"), "spec.vips[0].hash"),
        (doc("  - {name: a, address: 198.51.100.1, protocol: TCP, local: true, reals: [{address: 10.0.0.1}]}\n"), "spec.vips[0].reals"),
        (doc("  - {name: a, address: 198.51.100.1, protocol: TCP}\n  - {name: b, address: 198.51.100.1, protocol: TCP}\n"), "spec.vips[1]"),
        (doc("  - {name: a, address: 198.51.100.1, protocol: TCP, forwarding: NAT, reals: [{address: \"fd00::1\"}]}\n"), "spec.vips[0].reals[0].address"),
    ];
    for (yaml, field) in cases {
        let error = spec::parse(&yaml).expect_err(&yaml);
        assert!(error.field.starts_with(field), "{yaml}\n=> {error}");
    }
    // A NAT real may name its port; an IPv6 real may serve an IPv4 VIP (4in6).
    let nat = doc("  - {name: a, address: 198.51.100.1, port: 80, protocol: TCP, forwarding: NAT, reals: [{address: 10.0.0.1, port: 8080}]}\n  - {name: b, address: 198.51.100.1, port: 443, protocol: TCP, reals: [{address: \"fd00::1\"}]}\n");
    let lb = spec::parse(&nat).expect("valid");
    let p = plan(&lb, None);
    assert!(p.config.nat_enabled);
    assert_eq!(p.vips[0].vip.reals[0].key.port, 8080);
}

#[test]
fn a_port_vip_wins_over_the_any_port_vip_and_local_vips_have_no_real() {
    let yaml = doc("  - {name: any, address: 198.51.100.1, protocol: TCP, reals: [{address: 10.0.0.1}]}\n  - {name: web, address: 198.51.100.1, port: 80, protocol: TCP, reals: [{address: 10.0.0.2}]}\n  - {name: here, address: 198.51.100.2, protocol: UDP, local: true}\n");
    let p = plan(&spec::parse(&yaml).expect("valid"), None);
    let vip: IpAddr = "198.51.100.1".parse().expect("address");
    let tuple =
        |port| FlowTuple { client: "192.0.2.1".parse().expect("a"), client_port: 999, vip_port: port, proto: 6 };
    assert_eq!(p.choose(&tuple(80), vip).map(|c| c.vip), Some("web".into()));
    assert_eq!(p.choose(&tuple(22), vip).map(|c| c.vip), Some("any".into()));
    let udp = FlowTuple { proto: 17, ..tuple(53) };
    let local = p.choose(&udp, "198.51.100.2".parse().expect("a")).expect("local VIP");
    assert_eq!((local.slot, local.real), (None, None));
    assert!(p.choose(&udp, vip).is_none(), "no UDP VIP on .1");
}

#[test]
fn after_a_restart_the_kernels_indexes_are_kept_and_strays_removed() {
    let yaml = doc("  - {name: a, address: 198.51.100.1, protocol: TCP, reals: [{address: 10.0.0.1}, {address: 10.0.0.2}]}\n  - {name: b, address: 198.51.100.2, protocol: TCP, reals: [{address: 10.0.0.3}]}\n");
    let lb = spec::parse(&yaml).expect("valid");
    // The kernel as a previous agent left it: b at index 5, a stray VIP at 0, 10.0.0.3 at 9, a stray real at 4.
    let mut kernel = KernelState::default();
    let b = lb.vips[1].key;
    kernel.vips.insert(b, VipEntry { index: 5, flags: 0, forwarding: 0 });
    let stray = VipKey { address: "198.51.100.9".parse().expect("a"), port: 0, proto: 6 };
    kernel.vips.insert(stray, VipEntry { index: 0, flags: 0, forwarding: 0 });
    kernel.reals.insert(9, RealKey { address: "10.0.0.3".parse().expect("a"), port: 0 });
    kernel.reals.insert(4, RealKey { address: "10.9.9.9".parse().expect("a"), port: 0 });
    let p = plan_over(&lb, &kernel);
    assert_eq!(p.vips.iter().find(|v| v.vip.key == b).map(|v| v.index), Some(5));
    assert_eq!(p.reals.get(&9).map(|k| k.address.to_string()), Some("10.0.0.3".into()));
    let delta = changes_from_kernel(&kernel, &p);
    assert_eq!(delta.vips_deleted, vec![stray]);
    assert_eq!(delta.rings_written.len(), 2, "rings are not read back: all written");
    assert_eq!(delta.vips_written.len(), 1, "b's entry is already right");
    assert!(!delta.reals_cleared.contains(&9));
    assert!(delta.reals_cleared.contains(&4) || p.reals.contains_key(&4));
}

#[test]
fn source_routes_send_a_prefix_to_its_real_longest_first_and_change_by_key() {
    let yaml = doc("  - name: web\n    address: 198.51.100.1\n    port: 80\n    protocol: TCP\n    reals: [{address: 10.0.0.1}, {address: 10.0.0.2}, {address: 10.0.0.3}]\n    sourceRoutes:\n    - {cidr: 192.0.2.0/24, real: 10.0.0.2}\n    - {cidr: 192.0.2.128/25, real: 10.0.0.3}\n");
    let p = plan(&spec::parse(&yaml).expect("valid"), None);
    assert_eq!(p.vips[0].flags & F_SOURCE_ROUTES, F_SOURCE_ROUTES);
    let vip: IpAddr = "198.51.100.1".parse().expect("a");
    let real_of = |client: &str, port| {
        let t = FlowTuple { client: client.parse().expect("a"), client_port: port, vip_port: 80, proto: 6 };
        p.choose(&t, vip).and_then(|c| c.real).map(|r| r.1.address.to_string()).expect("a real")
    };
    for port in 1000..1020 {
        assert_eq!(real_of("192.0.2.7", port), "10.0.0.2");
        assert_eq!(real_of("192.0.2.200", port), "10.0.0.3", "the longer prefix wins");
    }
    let elsewhere: std::collections::BTreeSet<String> = (1000..1100).map(|port| real_of("203.0.113.9", port)).collect();
    assert_eq!(elsewhere.len(), 3, "others take the ring");
    let all = changes(None, &p);
    assert_eq!(all.source_routes_written.len(), 2);
    // Dropping one route deletes exactly its key.
    let fewer = yaml.replace("    - {cidr: 192.0.2.128/25, real: 10.0.0.3}\n", "");
    let q = plan(&spec::parse(&fewer).expect("valid"), Some(&p));
    let delta = changes(Some(&p), &q);
    assert_eq!(delta.source_routes_deleted, vec![(p.vips[0].index, "192.0.2.128".parse().expect("a"), 25)]);
    assert!(delta.source_routes_written.is_empty());
    // Refused by field.
    for (bad, field) in [
        ("{cidr: 192.0.2.1/24, real: 10.0.0.2}", "cidr"),
        ("{cidr: \"2001:db8::/32\", real: 10.0.0.2}", "cidr"),
        ("{cidr: 192.0.2.0/24, real: 10.0.0.9}", "real"),
        ("{cidr: 192.0.2.0/33, real: 10.0.0.2}", "cidr"),
    ] {
        let yaml = yaml.replace("{cidr: 192.0.2.0/24, real: 10.0.0.2}", bad);
        let error = spec::parse(&yaml).expect_err(bad);
        assert_eq!(error.field, format!("spec.vips[0].sourceRoutes[0].{field}"), "{error}");
    }
}

#[test]
fn quic_server_ids_map_to_reals_and_are_refused_where_they_mean_nothing() {
    let yaml = doc("  - name: h3\n    address: 198.51.100.1\n    port: 443\n    protocol: UDP\n    quic: true\n    reals: [{address: 10.0.0.1, quicServerId: 7}, {address: 10.0.0.2, quicServerId: 9}]\n");
    let p = plan(&spec::parse(&yaml).expect("valid"), None);
    assert_eq!(p.vips[0].flags & F_QUIC, F_QUIC);
    let index = |a: &str| p.reals.iter().find(|(_, k)| k.address.to_string() == a).map(|(i, _)| *i).expect("i");
    assert_eq!(p.quic_servers, BTreeMap::from([(7, index("10.0.0.1")), (9, index("10.0.0.2"))]));
    assert_eq!(changes(None, &p).quic_written.len(), 2);
    let fewer = yaml.replace(", quicServerId: 9", "");
    let q = plan(&spec::parse(&fewer).expect("valid"), Some(&p));
    assert_eq!(changes(Some(&p), &q).quic_deleted, vec![9]);
    for (bad, field) in [
        (yaml.replace("quicServerId: 9", "quicServerId: 7"), "spec.vips[0].reals[1].quicServerId"),
        (yaml.replace("quicServerId: 9", "quicServerId: 0"), "spec.vips[0].reals[1].quicServerId"),
        (yaml.replace("    quic: true\n", ""), "spec.vips[0].reals[0].quicServerId"),
        (yaml.replace("protocol: UDP", "protocol: TCP"), "spec.vips[0].quic"),
    ] {
        let error = spec::parse(&bad).expect_err(&bad);
        assert_eq!(error.field, field, "{error}");
    }
}

#[test]
fn a_real_in_rewrites_only_the_ring_slots_that_moved() {
    let reals = |n: u32| (1..=n).map(|i| format!("{{address: 10.0.1.{i}}}")).collect::<Vec<_>>().join(", ");
    let vip = |n: u32| doc(&format!("  - {{name: a, address: 198.51.100.1, protocol: TCP, reals: [{}]}}\n", reals(n)));
    let first = plan(&spec::parse(&vip(10)).expect("valid"), None);
    let second = plan(&spec::parse(&vip(11)).expect("valid"), Some(&first));
    let delta = changes(Some(&first), &second);
    assert!(delta.rings_written.is_empty(), "the VIP keeps its index: no whole ring");
    let [(index, slots)] = delta.ring_slots_written.as_slice() else { panic!("one ring's slots: {delta:?}") };
    assert_eq!(*index, second.vips[0].index);
    // Maglev moves about 1/11 of the slots to the new real, and little else.
    assert!(!slots.is_empty() && slots.len() < RING_SIZE / 5, "{} slots rewritten", slots.len());
    let mut ring = first.vips[0].ring.clone();
    for (slot, real) in slots {
        ring[*slot as usize] = *real;
    }
    assert_eq!(ring, second.vips[0].ring, "the old ring with the slots written is the new ring");
}

#[test]
fn the_next_hop_follows_the_document_and_a_gateway_mac_must_agree_with_it() {
    let with = |fields: &str| web("    - {address: 10.1.0.2}\n").replace("spec:\n", &format!("spec:\n{fields}"));
    let next_hop = |fields: &str| {
        let p = plan(&spec::parse(&with(fields)).expect("valid"), None);
        (p.config.next_hop, p.config.gateway_mac)
    };
    let mac = [2, 0, 0, 0, 0, 9];
    assert_eq!(next_hop(""), (spec::NextHop::Sender, [0; 6]));
    assert_eq!(next_hop("  gatewayMac: \"02:00:00:00:00:09\"\n"), (spec::NextHop::Gateway, mac));
    assert_eq!(next_hop("  nextHop: Gateway\n  gatewayMac: \"02:00:00:00:00:09\"\n"), (spec::NextHop::Gateway, mac));
    assert_eq!(next_hop("  nextHop: Sender\n"), (spec::NextHop::Sender, [0; 6]));
    assert_eq!(next_hop("  nextHop: Route\n"), (spec::NextHop::Route, [0; 6]));
    let refused = [
        ("  nextHop: route\n", "spec.nextHop", "must be Sender, Gateway or Route"),
        ("  nextHop: Gateway\n", "spec.gatewayMac", "needs the gateway's MAC"),
        ("  nextHop: Route\n  gatewayMac: \"02:00:00:00:00:09\"\n", "spec.gatewayMac", "nextHop is Route"),
        ("  nextHop: Sender\n  gatewayMac: \"02:00:00:00:00:09\"\n", "spec.gatewayMac", "nextHop is Sender"),
        ("  gatewayMac: \"00:00:00:00:00:00\"\n", "spec.gatewayMac", "all zero"),
        ("  gatewayMac: \"02:00:00:00:09\"\n", "spec.gatewayMac", "not a MAC address"),
    ];
    for (fields, field, why) in refused {
        let error = spec::parse(&with(fields)).expect_err(fields);
        assert_eq!(error.field, field, "{fields}=> {error}");
        assert!(error.to_string().contains(why), "{fields}=> {error}");
    }
}

#[test]
fn the_kernel_looks_any_port_vips_up_only_while_one_exists() {
    let ports = spec::parse(&doc(
        "  - {name: web, address: 198.51.100.1, port: 80, protocol: TCP, reals: [{address: 10.0.0.1}]}\n",
    ))
    .expect("valid");
    let before = plan(&ports, None);
    assert!(!before.config.any_port_vips, "no VIP takes any port: the kernel skips the port-0 lookup");
    let any = spec::parse(&doc("  - {name: web, address: 198.51.100.1, port: 80, protocol: TCP, reals: [{address: 10.0.0.1}]}\n  - {name: all, address: 198.51.100.2, protocol: UDP, reals: [{address: 10.0.0.2}]}\n")).expect("valid");
    let after = plan(&any, Some(&before));
    assert!(after.config.any_port_vips);
    // The configuration is written before the VIP (Changes' order), so the
    // new any-port VIP is looked up from its first packet.
    assert_eq!(changes(Some(&before), &after).config.map(|c| c.any_port_vips), Some(true));
    assert_eq!(changes(Some(&after), &plan(&ports, Some(&after))).config.map(|c| c.any_port_vips), Some(false));
}
