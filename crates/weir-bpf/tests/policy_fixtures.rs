//! Network policy in the node datapath through BPF_PROG_TEST_RUN: policies
//! compiled by weir-policy, installed by weir-bpf, and judged by the kernel
//! exactly as `weir_policy::decide` judges them; conntrack lets replies and
//! later packets through until the policy's revision changes; drops are
//! counted by reason and reported with both identities. Also run on 6.1 and
//! 6.12 under qemu.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use weir_bpf::api::drop_reason;
use weir_bpf::policy::{decode_flow, PolicyMaps};
use weir_bpf::skel::node::types;
use weir_bpf::testrun;
use weir_packet::{Packet, TCP_ACK, TCP_SYN};
use weir_policy::identity::IdentityLabels;
use weir_policy::{CidrIdentities, Cluster, Direction, Pod};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const API: [u8; 4] = [10, 244, 1, 2];
const WEB: [u8; 4] = [10, 244, 0, 2];
const DB: [u8; 4] = [10, 244, 0, 3];
const API_VETH: u32 = 4242;
const MACS: ([u8; 6], [u8; 6]) = ([0x02, 0, 0, 0, 0, 0x01], [0x02, 0, 0, 0, 0, 0x02]);

fn pod(ns: &str, name: &str, app: &str, ip: [u8; 4], node: &str) -> Pod {
    Pod {
        name: name.into(),
        labels: IdentityLabels {
            namespace: ns.into(),
            namespace_labels: BTreeMap::new(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        },
        ip: Ipv4Addr::from(ip),
        ipv6: None,
        node: node.into(),
        ports: Vec::new(),
    }
}

fn cluster() -> Cluster {
    let pods = vec![
        pod("front", "web", "web", WEB, "a"),
        pod("back", "db", "db", DB, "a"),
        pod("back", "api", "api", API, "b"),
    ];
    let identities = pods.iter().enumerate().map(|(i, p)| (p.labels.clone(), 256 + i as u32)).collect();
    Cluster {
        pods,
        identities,
        host_addresses: vec![],
        nodes: BTreeMap::new(),
        node_addresses6: vec![],
        local_node: "b".into(),
    }
}

fn policies(yaml: &str) -> Vec<weir_policy::Policy> {
    weir_spec::split_documents(yaml)
        .expect("documents")
        .iter()
        .map(|d| weir_policy::parse(&d.kind, &d.text).expect("policy"))
        .collect()
}

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api, namespace: back}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{namespaceSelector: {}}]\n    ports: [{port: 80}, {port: 5000, endPort: 5100, protocol: UDP}]\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: no-db, namespace: back}\nspec:\n  endpointSelector: {matchLabels: {app: api}}\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: db}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";

#[test]
fn the_kernel_decides_as_the_compiler_and_remembers_allowed_flows() {
    testrun::with_node_datapath(|skel| {
        let maps = PolicyMaps::of(skel).expect("maps");
        let cluster = cluster();
        let compiled = weir_policy::compile(&policies(POLICY), &cluster, &mut CidrIdentities::default());
        maps.set_ipcache(&compiled.ipcache).expect("ipcache");
        let api = &compiled.endpoints[&Ipv4Addr::from(API)];
        maps.install(Ipv4Addr::from(API), api, 1).expect("install");
        let endpoint = types::weir_endpoint { ifindex: API_VETH, pod_mac: [2; 6], node_mac: [3; 6], identity: api.identity, policy_revision: 1, pod_key: u32::from_ne_bytes(API), netnsid_plus_one: 0, flags: 0 };
        testrun::set_endpoint(skel, API, &endpoint).expect("endpoint");
        let prog = &skel.progs.weir_node_tc_ingress;
        let (a, b) = MACS;

        // Into api from the uplink: the kernel's verdict is the compiler's.
        let mut sport = 40000;
        for (src, proto, port) in [
            (WEB, 6u8, 80u16),
            (WEB, 6, 81),
            (DB, 6, 80),
            (DB, 6, 81),
            (WEB, 17, 5050),
            (DB, 17, 5100),
            (WEB, 17, 5101),
            (WEB, 17, 80),
        ] {
            sport += 1;
            let packet = Packet::eth().macs(a, b).ipv4(src, API).ttl(64);
            let packet = if proto == 6 { packet.tcp(sport, port, TCP_SYN) } else { packet.udp(sport, port) }.build();
            let out = testrun::run_on(prog, &packet, 1, 7).expect("run");
            let peer = compiled.identity_of(src.into());
            let decision = weir_policy::decide(api, Direction::Ingress, peer, proto, port);
            let want = if decision.allows() { TC_ACT_REDIRECT } else { TC_ACT_SHOT };
            assert_eq!(out.verdict, want, "{src:?} -> api {proto}/{port}: compiler says {decision:?}");
        }

        // A reply from api to web rides conntrack past api's egress default deny...
        let syn = Packet::eth().macs(a, b).ipv4(WEB, API).ttl(64).tcp(50000, 80, TCP_SYN).build();
        assert_eq!(testrun::run_on(prog, &syn, 1, 7).expect("run").verdict, TC_ACT_REDIRECT);
        let reply = Packet::eth().macs(a, b).ipv4(API, WEB).ttl(64).tcp(80, 50000, TCP_SYN | TCP_ACK).build();
        assert_ne!(testrun::run_on(prog, &reply, 1, API_VETH).expect("run").verdict, TC_ACT_SHOT, "the reply passes");
        // ...while a flow api opens itself is refused.
        let own = Packet::eth().macs(a, b).ipv4(API, WEB).ttl(64).tcp(41000, 9999, TCP_SYN).build();
        assert_eq!(testrun::run_on(prog, &own, 1, API_VETH).expect("run").verdict, TC_ACT_SHOT, "egress default deny");
        assert!(maps.conntrack_entries() >= 3, "allowed flows are remembered");

        // A new revision that refuses web judges the established flow again.
        let none = weir_policy::compile(
            &policies("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api, namespace: back}\nspec:\n  podSelector: {matchLabels: {app: api}}\n"),
            &cluster,
            &mut CidrIdentities::default(),
        );
        maps.install(Ipv4Addr::from(API), &none.endpoints[&Ipv4Addr::from(API)], 2).expect("install");
        let endpoint = types::weir_endpoint { policy_revision: 2, ..endpoint };
        testrun::set_endpoint(skel, API, &endpoint).expect("endpoint revision");
        let next = Packet::eth().macs(a, b).ipv4(WEB, API).ttl(64).tcp(50000, 80, TCP_ACK).build();
        assert_eq!(testrun::run_on(prog, &next, 1, 7).expect("run").verdict, TC_ACT_SHOT, "re-judged under revision 2");

        // Drops are counted by reason, and reported with both identities.
        let drops = maps.drops().expect("drops");
        let count = |code: u32| drops[code as usize].packets;
        assert_eq!(count(drop_reason::POLICY_DENY_RULE), 1, "db on 80: the deny rule");
        assert_eq!(
            count(drop_reason::POLICY_DENIED),
            6,
            "81 from web and db, 5101/UDP, 80/UDP, api's own flow and the re-judged ACK: no rule allows them"
        );
        let mut events = Vec::new();
        let mut ring = libbpf_rs::RingBufferBuilder::new();
        ring.add(&skel.maps.flow_ring, |raw: &[u8]| {
            events.extend(decode_flow(raw));
            0
        })
        .expect("ring");
        ring.build().expect("ring").consume().expect("consume");
        let deny = events.iter().find(|e| e.drop_reason == drop_reason::POLICY_DENY_RULE).expect("a deny-rule event");
        assert_eq!((deny.src, deny.dst, deny.dport), (DB.into(), API.into(), 80));
        assert_eq!((deny.src_identity, deny.dst_identity), (compiled.identity_of(DB.into()), api.identity));
        assert_eq!(compiled.rules[deny.rule as usize].to_string(), "CiliumNetworkPolicy back/no-db spec.ingressDeny[0]");
        assert!(events.iter().any(|e| e.verdict == 0 && e.src == std::net::IpAddr::from(WEB)), "new flows are reported");
    })
    .expect("node datapath loads");
}

#[test]
fn invalid_packets_from_a_pod_are_dropped_with_their_reason() {
    testrun::with_node_datapath(|skel| {
        let endpoint = types::weir_endpoint {
            ifindex: API_VETH,
            pod_mac: [2; 6],
            node_mac: [3; 6],
            identity: 300,
            policy_revision: 0,
            pod_key: u32::from_ne_bytes(API),
            netnsid_plus_one: 0,
            flags: 0,
        };
        testrun::set_endpoint(skel, API, &endpoint).expect("endpoint");
        let prog = &skel.progs.weir_node_tc_ingress;
        let (a, b) = MACS;
        // The IPv4 header says 40 bytes; the packet ends inside the TCP header.
        let whole = Packet::eth().macs(a, b).ipv4(API, WEB).ttl(64).tcp(1000, 80, TCP_SYN).build();
        let cut = &whole[..14 + 20 + 8];
        assert_eq!(testrun::run_on(prog, cut, 1, API_VETH).expect("run").verdict, TC_ACT_SHOT, "from the pod: dropped");
        let drops = PolicyMaps::of(skel).expect("maps").drops().expect("drops");
        let invalid: u64 = [drop_reason::TRUNCATED, drop_reason::BAD_IPV4_HEADER]
            .iter()
            .map(|code| drops[*code as usize].packets)
            .sum();
        assert_eq!(invalid, 1, "counted under its reason");
        // The same packet not from a pod is the stack's business.
        assert_ne!(testrun::run_on(prog, cut, 1, 7).expect("run").verdict, TC_ACT_SHOT);
    })
    .expect("node datapath loads");
}
