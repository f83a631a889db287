use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::compile::{port_prefixes, HOST_RULE};
use crate::identity::{IdentityLabels, LocalAllocator, HOST, REMOTE_NODE, WORLD};
use crate::rules::{NamedPort, TCP, UDP};
use crate::*;

fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: [u8; 4], node: &str) -> Pod {
    Pod {
        name: name.into(),
        labels: IdentityLabels {
            namespace: ns.into(),
            namespace_labels: BTreeMap::from([("team".to_string(), ns.to_string())]),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        },
        ip: Ipv4Addr::from(ip),
        ipv6: None,
        node: node.into(),
        ports: vec![NamedPort { name: "http".into(), container_port: 8080, protocol: "TCP".into() }],
    }
}

fn cluster() -> Cluster {
    let pods = vec![
        pod("front", "web", &[("app", "web")], [10, 0, 0, 2], "a"),
        pod("back", "api", &[("app", "api")], [10, 0, 1, 2], "b"),
        pod("back", "db", &[("app", "db")], [10, 0, 1, 3], "b"),
    ];
    let mut alloc = LocalAllocator::default();
    let identities = pods.iter().map(|p| (p.labels.clone(), alloc.allocate(&p.labels).expect("id"))).collect();
    Cluster {
        pods,
        identities,
        host_addresses: vec![Ipv4Addr::new(172, 30, 0, 2).into()],
        node_addresses6: vec![],
        nodes: BTreeMap::from([("a".into(), Ipv4Addr::new(172, 30, 0, 2)), ("b".into(), Ipv4Addr::new(172, 30, 0, 3))]),
        local_node: "a".into(),
    }
}

fn policies(yaml: &str) -> Vec<Policy> {
    weir_spec::split_documents(yaml)
        .expect("documents")
        .iter()
        .map(|d| parse(&d.kind, &d.text).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// Decides a packet from `src` to `dst` on both ends, as the two nodes would.
fn allowed(compiled: &Compiled, src: [u8; 4], dst: [u8; 4], proto: u8, port: u16) -> bool {
    let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
    // The datapath: the packet's identity, then the address's own identity
    // for the policy lookup when ipBlocks split it.
    let judged = |ip: Ipv4Addr| compiled.policy_identity(ip.into(), compiled.identity_of(ip.into()));
    let egress = compiled
        .endpoints
        .get(&src)
        .map_or(Decision::NotEnforced, |ep| decide(ep, Direction::Egress, judged(dst), proto, port));
    let ingress = compiled
        .endpoints
        .get(&dst)
        .map_or(Decision::NotEnforced, |ep| decide(ep, Direction::Ingress, judged(src), proto, port));
    egress.allows() && ingress.allows()
}

const WEB: [u8; 4] = [10, 0, 0, 2];
const API: [u8; 4] = [10, 0, 1, 2];
const DB: [u8; 4] = [10, 0, 1, 3];
const OUTSIDE: [u8; 4] = [192, 0, 2, 9];

#[test]
fn port_ranges_become_exact_prefixes() {
    assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
    assert_eq!(port_prefixes(8080, 8087), vec![(8080, 13)]);
    assert_eq!(port_prefixes(1, 65535).len(), 16);
    for (lo, hi) in [(1u16, 65535u16), (32000, 32768), (5, 6), (1000, 1999)] {
        let prefixes = port_prefixes(lo, hi);
        let covered: u32 = prefixes.iter().map(|(_, bits)| 1u32 << (16 - bits)).sum();
        assert_eq!(covered, u32::from(hi - lo) + 1, "{lo}-{hi}");
        for (value, bits) in prefixes {
            let mask = if bits == 0 { 0 } else { u16::MAX << (16 - bits) };
            assert_eq!(value & !mask, 0);
            assert!(value >= lo && (value | !mask) <= hi);
        }
    }
}

#[test]
fn default_deny_and_allow_by_namespace_and_label() {
    let ps = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: back}\nspec:\n  podSelector: {}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-to-api, namespace: back}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: front}}\n      podSelector: {matchLabels: {app: web}}\n    ports: [{port: 80}]\n",
    );
    let c = compile(&ps, &cluster(), &mut CidrIdentities::default());
    assert!(allowed(&c, WEB, API, TCP, 80));
    assert!(!allowed(&c, WEB, API, TCP, 81), "only port 80");
    assert!(!allowed(&c, WEB, API, UDP, 80), "only TCP");
    assert!(!allowed(&c, WEB, DB, TCP, 80), "db is only default-denied");
    assert!(!allowed(&c, DB, API, TCP, 80), "db is not web");
    assert!(allowed(&c, API, WEB, TCP, 80), "front has no policy");
    // The node reaches its pods whatever the policies say.
    let api = &c.endpoints[&Ipv4Addr::from(API)];
    assert_eq!(decide(api, Direction::Ingress, HOST, TCP, 1), Decision::Allowed { rule: HOST_RULE });
    assert_eq!(decide(api, Direction::Ingress, REMOTE_NODE, TCP, 1), Decision::DefaultDeny);
    assert_eq!(decide(api, Direction::Egress, WORLD, TCP, 1), Decision::NotEnforced);
    let Decision::Allowed { rule } = decide(api, Direction::Ingress, c.identity_of(WEB.into()), TCP, 80) else {
        panic!("allowed")
    };
    assert_eq!(c.rules[rule as usize].to_string(), "NetworkPolicy back/web-to-api spec.ingress[0]");
}

#[test]
fn ip_blocks_except_named_ports_end_ports_and_egress() {
    let ps = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: front}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.0/29]}}]\n  - to: [{namespaceSelector: {}}]\n    ports: [{port: http}, {protocol: UDP, port: 5000, endPort: 5010}]\n",
    );
    let c = compile(&ps, &cluster(), &mut CidrIdentities::default());
    assert!(allowed(&c, WEB, OUTSIDE, TCP, 443), "inside the block, outside the except");
    assert!(!allowed(&c, WEB, [192, 0, 2, 5], TCP, 443), "in the except");
    assert!(!allowed(&c, WEB, [198, 51, 100, 1], TCP, 443), "outside the block");
    assert!(allowed(&c, WEB, API, TCP, 8080), "the named port resolves on the peer");
    assert!(!allowed(&c, WEB, API, TCP, 80));
    assert!(allowed(&c, WEB, DB, UDP, 5007) && allowed(&c, WEB, DB, UDP, 5010) && !allowed(&c, WEB, DB, UDP, 5011));
    assert!(allowed(&c, API, WEB, TCP, 1), "ingress is not in policyTypes");
}

#[test]
fn deny_wins_over_allow_even_when_narrower_allows() {
    let ps = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: api, namespace: back}\nspec:\n  endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - fromEntities: [cluster]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n  - fromEndpoints: [{matchLabels: {\"k8s:io.kubernetes.pod.namespace\": front}}]\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: db}}]\n  - fromEntities: [world]\n    toPorts: [{ports: [{port: \"0\", protocol: ANY}]}]\n",
    );
    let c = compile(&ps, &cluster(), &mut CidrIdentities::default());
    assert!(allowed(&c, WEB, API, TCP, 80));
    assert!(allowed(&c, WEB, API, UDP, 9), "every port from namespace front");
    assert!(!allowed(&c, DB, API, TCP, 80), "deny wins over the cluster-wide allow on 80");
    assert!(!allowed(&c, OUTSIDE, API, TCP, 80));
    let api = &c.endpoints[&Ipv4Addr::from(API)];
    let db = c.identity_of(DB.into());
    assert!(matches!(decide(api, Direction::Ingress, db, TCP, 80), Decision::Denied { .. }));
    assert!(!api.ingress_enforced || !api.egress_enforced, "egress untouched");
}

#[test]
fn ipcache_maps_pods_nodes_cidrs_and_world() {
    let ps = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: out, namespace: front}\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]\n",
    );
    let cl = cluster();
    let c = compile(&ps, &cl, &mut CidrIdentities::default());
    assert_eq!(c.identity_of(Ipv4Addr::new(172, 30, 0, 2).into()), HOST);
    assert_eq!(c.identity_of(Ipv4Addr::new(172, 30, 0, 3).into()), REMOTE_NODE);
    assert_eq!(c.identity_of(Ipv4Addr::new(8, 8, 8, 8).into()), WORLD);
    assert_eq!(c.identity_of(API.into()), cl.identity_of(&cl.pods[1]));
    let remote = c.ipcache.iter().find(|e| e.cidr.addr() == std::net::IpAddr::from(API)).expect("api");
    assert_eq!(remote.tunnel_endpoint, Some(Ipv4Addr::new(172, 30, 0, 3)));
    assert!(c.identity_of(OUTSIDE.into()) >= identity::FIRST_CIDR);
    assert!(allowed(&c, WEB, OUTSIDE, TCP, 1) && !allowed(&c, WEB, [192, 0, 2, 200], TCP, 1));
    assert!(!allowed(&c, WEB, API, TCP, 1), "egress default deny");
}

#[test]
fn bad_documents_name_their_field() {
    let cases = [
        (
            "spec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        ("spec:\n  ingress: [{ports: [{port: 90, endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
        ("spec:\n  egress: [{ports: [{port: Not_A_Name}]}]", "spec.egress[0].ports[0].port"),
        ("spec:\n  egress: [{ports: [{protocol: ICMP}]}]", "spec.egress[0].ports[0].protocol"),
        ("spec:\n  ingress: [{from: [{}]}]", "spec.ingress[0].from[0]"),
        ("spec:\n  ingress: [{form: []}]", "spec.ingress[0].form"),
        (
            "spec:\n  egress: [{to: [{ipBlock: {cidr: 'fd00::/8', except: ['10.0.0.0/8']}}]}]",
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        ("spec:\n  policyTypes: [Sideways]", "spec.policyTypes[0]"),
    ];
    for (spec, field) in cases {
        let doc = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: x, namespace: y}}\n{spec}\n"
        );
        let e = parse("NetworkPolicy", &doc).expect_err(spec);
        assert_eq!(e.field, field, "{spec}: {e}");
    }
    let e = parse(
        "CiliumNetworkPolicy",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {}\n  egress: [{toFQDNs: [{matchName: a.b}]}]\n",
    )
    .expect_err("outside the subset");
    assert_eq!(e.field, "spec.egress[0].toFQDNs");
}

#[test]
fn dual_stack_pods_have_one_identity_and_ipv6_blocks_select_addresses() {
    let mut cl = cluster();
    for (i, pod) in cl.pods.iter_mut().enumerate() {
        pod.ipv6 = Some(std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, i as u16 + 2));
    }
    let ps = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: front}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:bad::/48']}}]\n  - to: [{namespaceSelector: {matchLabels: {team: back}}}]\n",
    );
    let c = compile(&ps, &cl, &mut CidrIdentities::default());
    let v6 = |s: &str| -> std::net::IpAddr { s.parse().expect("address") };
    let api6 = cl.pods[1].ipv6.expect("v6");
    assert_eq!(c.identity_of(api6.into()), c.identity_of(API.into()), "one identity, both families");
    assert_eq!(c.identity_of(v6("2001:db9::1")), WORLD);
    let web = &c.endpoints[&Ipv4Addr::from(WEB)];
    let decide6 = |dst: &str| decide(web, Direction::Egress, c.identity_of(v6(dst)), TCP, 443);
    assert!(decide6("2001:db8::1").allows());
    assert!(!decide6("2001:db8:bad::1").allows(), "in the except");
    assert!(!decide6("2001:db9::1").allows(), "outside the block");
    assert!(decide(web, Direction::Egress, c.identity_of(api6.into()), TCP, 1).allows(), "api by its namespace");
}

/// A second pod with api's labels: the same identity as api.
const API2: [u8; 4] = [10, 0, 1, 4];

fn cluster_with_api_twice() -> Cluster {
    let mut cl = cluster();
    let twin = pod("back", "api2", &[("app", "api")], API2, "b");
    cl.pods.push(twin);
    cl
}

#[test]
fn an_ip_block_matches_the_pods_it_covers_and_not_their_twins() {
    let cl = cluster_with_api_twice();
    assert_eq!(cl.identity_of(&cl.pods[1]), cl.identity_of(&cl.pods[3]), "api and api2 share an identity");
    // Upstream e2e: egress allowed to one pod's /32.
    let ps = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: to-api, namespace: front}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.1.2/32}}]\n",
    );
    let c = compile(&ps, &cl, &mut CidrIdentities::default());
    assert!(allowed(&c, WEB, API, TCP, 80), "the pod the /32 names");
    assert!(!allowed(&c, WEB, API2, TCP, 80), "its twin with the same labels is not in the block");
    assert!(!allowed(&c, WEB, DB, TCP, 80));
    let api = c.ipcache.iter().find(|e| e.cidr.addr() == std::net::IpAddr::from(API)).expect("api");
    assert_eq!(api.identity, cl.identity_of(&cl.pods[1]), "flows still see the label identity");
    assert!(api.address_identity.is_some_and(|a| a >= identity::FIRST_CIDR));
    // Upstream e2e: a wide CIDR with an except for one pod.
    let ps = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: not-api, namespace: front}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.2/32]}}]\n",
    );
    let c = compile(&ps, &cl, &mut CidrIdentities::default());
    assert!(!allowed(&c, WEB, API, TCP, 80), "the excepted pod");
    assert!(allowed(&c, WEB, API2, TCP, 80) && allowed(&c, WEB, DB, TCP, 80), "every other pod in the block");
    assert!(!allowed(&c, WEB, OUTSIDE, TCP, 80));
    // Ingress from a block: judged by the source address, whatever identity carries it.
    let ps = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-api, namespace: front}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.1.2/32}}]\n  - from: [{namespaceSelector: {matchLabels: {team: back}}, podSelector: {matchLabels: {app: api}}}]\n    ports: [{port: 9}]\n",
    );
    let c = compile(&ps, &cl, &mut CidrIdentities::default());
    assert!(allowed(&c, API, WEB, TCP, 80) && !allowed(&c, API2, WEB, TCP, 80));
    assert!(allowed(&c, API2, WEB, TCP, 9), "a label rule selects both twins, split or not");
    assert!(allowed(&c, API, WEB, TCP, 9));
}

#[test]
fn an_ip_block_covering_an_identity_alike_needs_no_address_identity_and_nodes_count() {
    let cl = cluster_with_api_twice();
    let ps = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: back, namespace: front}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.1.0/24}}, {ipBlock: {cidr: 172.30.0.3/32}}]\n",
    );
    let c = compile(&ps, &cl, &mut CidrIdentities::default());
    assert!(c.ipcache.iter().all(|e| e.address_identity.is_none()), "{:?}", c.ipcache);
    assert!(allowed(&c, WEB, API, TCP, 1) && allowed(&c, WEB, API2, TCP, 1) && allowed(&c, WEB, DB, TCP, 1));
    let web = &c.endpoints[&Ipv4Addr::from(WEB)];
    assert!(decide(web, Direction::Egress, REMOTE_NODE, TCP, 22).allows(), "the one other node is in a block");
}

#[test]
fn cilium_cidr_rules_keep_cilium_meaning_and_mapped_cidrs_are_ipv4() {
    let cl = cluster_with_api_twice();
    let ps = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: out, namespace: front}\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.1.2/32, '::ffff:192.0.2.0/120']\n",
    );
    let c = compile(&ps, &cl, &mut CidrIdentities::default());
    assert!(!allowed(&c, WEB, API, TCP, 80), "a Cilium CIDR does not select a pod");
    assert!(allowed(&c, WEB, OUTSIDE, TCP, 80), "::ffff:192.0.2.0/120 is 192.0.2.0/24");
    let notes = crate::ipblock::explain(
        &ps,
        &cl.pods[0].labels,
        Direction::Egress,
        Ipv4Addr::from(API).into(),
        Some("pod back/api"),
    );
    assert!(notes.iter().any(|n| n.contains("Cilium's CIDR rules select only addresses outside")), "{notes:?}");
    let ps = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: not-api, namespace: front}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.2/32]}}]\n",
    );
    let notes = |ip: [u8; 4]| {
        crate::ipblock::explain(&ps, &cl.pods[0].labels, Direction::Egress, Ipv4Addr::from(ip).into(), Some("a pod"))
    };
    assert_eq!(
        notes(API),
        ["NetworkPolicy front/not-api spec.egress[0].to[0].ipBlock 10.0.0.0/16 does not match 10.0.1.2: it is inside except 10.0.1.2/32"]
    );
    assert!(
        notes(DB)[0].ends_with("matches 10.0.1.3 (a pod: an ipBlock covers pods and nodes too)"),
        "{:?}",
        notes(DB)
    );
    assert!(notes(OUTSIDE)[0].ends_with("does not match 192.0.2.9: outside 10.0.0.0/16"));
}

#[test]
fn address_identities_keep_their_numbers_across_compiles() {
    let cl = cluster_with_api_twice();
    let ps = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: to-api, namespace: front}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.1.2/32}}]\n",
    );
    let mut numbers = CidrIdentities::default();
    let first = compile(&ps, &cl, &mut numbers).ipcache;
    let again = compile(&ps, &cl, &mut numbers).ipcache;
    assert_eq!(first, again);
    let ids: BTreeSet<u32> = first.iter().flat_map(|e| [Some(e.identity), e.address_identity]).flatten().collect();
    assert_eq!(ids.len(), first.iter().map(|e| e.identity).collect::<BTreeSet<_>>().len() + 1, "one new number");
}
