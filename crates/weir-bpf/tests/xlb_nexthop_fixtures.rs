//! Fixtures of the XDP load balancer's next hops (xlb_nexthop.h) through
//! BPF_PROG_TEST_RUN: Gateway's MAC; Route run as if each packet came in on an
//! interface of a private network namespace whose routes and neighbours
//! decide: out of another interface (XDP_REDIRECT), out of the receiving
//! one (XDP_TX), to the stack while the neighbour is unresolved
//! (XDP_PASS), or dropped with the reason. Exact output bytes throughout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weir_bpf::api::{drop_reason, xlb_counter, xlb_next_hop};
use weir_bpf::testrun::{self, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use weir_bpf::xlb::{self, XlbMaps};
use weir_host::{iproute, netns, testing};
use weir_lb::hash::FlowTuple;
use weir_lb::spec::NextHop;
use weir_packet::{Packet, TCP_ACK, TCP_SYN};

mod xlb_common;
use xlb_common::{counter, dropped, outer_source4, outer_source6};

const CLIENT: [u8; 4] = [192, 0, 2, 7];
const CLIENT6: &str = "2001:db8:c::7";
/// The router in front, which sends the clients' packets.
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// The load balancer's interfaces: toward the router, toward the reals.
const FRONT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const BACK_MAC: [u8; 6] = [2, 0, 0, 0, 0x0b, 1];
const REAL_BACK_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
const REAL_FRONT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
const NAT_REAL_MAC: [u8; 6] = [2, 0, 0, 0, 2, 5];
const CLIENT_GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0xfe];
const REAL6_MAC: [u8; 6] = [2, 0, 0, 0, 6, 2];

const CONFIG: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: XdpLoadBalancer
metadata: {name: edge}
spec:
  nextHop: Route
  vips:
  - {name: out, address: 198.51.100.20, port: 80, protocol: TCP, reals: [{address: 10.99.2.2}]}
  - {name: same, address: 198.51.100.21, port: 80, protocol: TCP, reals: [{address: 10.99.1.2}]}
  - {name: unresolved, address: 198.51.100.22, port: 80, protocol: TCP, reals: [{address: 10.99.2.3}]}
  - {name: nowhere, address: 198.51.100.23, port: 80, protocol: TCP, reals: [{address: 10.99.3.3}]}
  - {name: big, address: 198.51.100.24, port: 80, protocol: TCP, reals: [{address: 10.99.4.2}]}
  - {name: nat, address: 198.51.100.25, port: 80, protocol: TCP, forwarding: NAT, reals: [{address: 10.99.2.5, port: 8080}]}
  - {name: out6, address: "2001:db8::20", port: 80, protocol: TCP, reals: [{address: "fd00:99:2::2"}]}
"#;

/// Deletes the namespace, even when the test panics.
struct Scratch(String);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = iproute::ip(None, &["netns", "del", &self.0]);
    }
}

/// The load balancer's interfaces in the namespace.
struct Interfaces {
    front: u32,
    back: u32,
}

/// A namespace where the load balancer has a front interface (10.99.1.1/24,
/// the clients' 192.0.2.0/24 behind a router at 10.99.1.254) and a back one
/// (10.99.2.1/24, fd00:99:2::1/64; 10.99.4.0/24 at MTU 576), forwarding on,
/// and permanent neighbours for some reals; the program, configured with
/// next hop Route, runs there.
fn with_routed_lb(work: impl FnOnce(&libbpf_rs::ProgramMut<'_>, &XlbMaps, &Interfaces) + Send) {
    let name = testing::unique_name("weir-xr");
    let _scratch = Scratch(name.clone());
    iproute::batch(None, &[format!("netns add {name}")]).expect("netns");
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let setup = [
        "link set lo up".to_string(),
        "link add front type veth peer name frontp".into(),
        "link add back type veth peer name backp".into(),
        format!("link set front address {}", mac(FRONT_MAC)),
        format!("link set back address {}", mac(BACK_MAC)),
        "link set front up".into(),
        "link set frontp up".into(),
        "link set back up".into(),
        "link set backp up".into(),
        "addr add 10.99.1.1/24 dev front".into(),
        "addr add 10.99.2.1/24 dev back".into(),
        "addr add fd00:99:2::1/64 dev back nodad".into(),
        format!("neigh add 10.99.2.2 lladdr {} dev back nud permanent", mac(REAL_BACK_MAC)),
        format!("neigh add 10.99.1.2 lladdr {} dev front nud permanent", mac(REAL_FRONT_MAC)),
        format!("neigh add 10.99.2.5 lladdr {} dev back nud permanent", mac(NAT_REAL_MAC)),
        format!("neigh add 10.99.1.254 lladdr {} dev front nud permanent", mac(CLIENT_GATEWAY_MAC)),
        format!("neigh add fd00:99:2::2 lladdr {} dev back nud permanent", mac(REAL6_MAC)),
        "route add 10.99.4.0/24 dev back mtu lock 576".into(),
        "route add 192.0.2.0/24 via 10.99.1.254 dev front".into(),
        "route add 2001:db8:c::/64 via fd00:99:2::fe dev back".into(),
    ];
    iproute::batch(Some(&name), &setup).expect("interfaces, routes and neighbours");
    let plan = weir_lb::plan::plan(&weir_lb::spec::parse(CONFIG).expect("valid configuration"), None);
    netns::run_in(&name, || {
        // This thread's namespace is the one the sysctls below name.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("IPv4 forwarding");
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").expect("IPv6 forwarding");
        let interfaces = Interfaces {
            front: weir_bpf::datapath::ifindex("front").expect("front"),
            back: weir_bpf::datapath::ifindex("back").expect("back"),
        };
        xlb::with_private(|skel, maps| {
            maps.apply(&weir_lb::plan::changes(None, &plan)).expect("plan applied");
            work(&skel.progs.weir_xlb, maps, &interfaces);
        })
        .expect("xlb loads");
    })
    .expect("the fixtures ran in the namespace");
}

fn run_on(prog: &libbpf_rs::ProgramMut<'_>, input: &[u8], ingress: u32) -> (u32, String) {
    let outcome = testrun::run_xdp_on(prog, input, ingress).expect("test run");
    (outcome.verdict, testrun::hex(&outcome.output))
}

fn tuple(client: IpAddr) -> FlowTuple {
    FlowTuple { client, client_port: 40000, vip_port: 80, proto: 6 }
}

/// The client's SYN to `vip` port 80, from the router to the front interface.
fn syn4(vip: Ipv4Addr) -> Packet {
    Packet::eth().macs(ROUTER_MAC, FRONT_MAC).ipv4(CLIENT, vip).tcp(40000, 80, TCP_SYN).payload(b"hello")
}

/// The SYN encapsulated (4in4) to `real`, with the MACs given.
fn ipip4(vip: Ipv4Addr, real: Ipv4Addr, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let t = tuple(CLIENT.into());
    Packet::eth()
        .macs(src, dst)
        .ipv4(outer_source4(&t), real)
        .ipv4(CLIENT, vip)
        .tcp(40000, 80, TCP_SYN)
        .payload(b"hello")
        .build()
}

#[test]
fn the_next_hop_codes_are_the_registrys() {
    assert_eq!(u32::from(NextHop::Sender.code()), xlb_next_hop::SENDER);
    assert_eq!(u32::from(NextHop::Gateway.code()), xlb_next_hop::GATEWAY);
    assert_eq!(u32::from(NextHop::Route.code()), xlb_next_hop::ROUTE);
}

#[test]
fn next_hop_gateway_transmits_to_the_gateways_mac_and_ignores_routes() {
    if !testing::privileged("xlb next hop fixtures") {
        return;
    }
    let gateway = [2, 0, 0, 0, 0x0a, 0x0b];
    let yaml = CONFIG.replace("nextHop: Route", "nextHop: Gateway\n  gatewayMac: \"02:00:00:00:0a:0b\"");
    let plan = weir_lb::plan::plan(&weir_lb::spec::parse(&yaml).expect("valid configuration"), None);
    assert_eq!(plan.config.next_hop, NextHop::Gateway);
    xlb::with_private(|skel, maps| {
        maps.apply(&weir_lb::plan::changes(None, &plan)).expect("plan applied");
        let vip = Ipv4Addr::new(198, 51, 100, 23);
        // No route anywhere (no interface given): the gateway's MAC all the same.
        let want = ipip4(vip, Ipv4Addr::new(10, 99, 3, 3), FRONT_MAC, gateway);
        let outcome = testrun::run_once(&skel.progs.weir_xlb, &syn4(vip).build()).expect("test run");
        assert_eq!((outcome.verdict, testrun::hex(&outcome.output)), (XDP_TX, testrun::hex(&want)));
        assert_eq!(counter(maps, xlb_counter::DROPPED), 0);
    })
    .expect("xlb loads");
}

#[test]
fn a_route_by_another_interface_redirects_there_to_the_neighbours_mac() {
    if !testing::privileged("xlb next hop fixtures") {
        return;
    }
    with_routed_lb(|prog, maps, interfaces| {
        let vip = Ipv4Addr::new(198, 51, 100, 20);
        let real = Ipv4Addr::new(10, 99, 2, 2);
        let want = ipip4(vip, real, BACK_MAC, REAL_BACK_MAC);
        assert_eq!(
            run_on(prog, &syn4(vip).build(), interfaces.front),
            (XDP_REDIRECT, testrun::hex(&want)),
            "4in4 out of the back interface"
        );
        assert_eq!(counter(maps, xlb_counter::ROUTE_REDIRECT), 1);

        // 6in6 the same way.
        let vip6: Ipv6Addr = "2001:db8::20".parse().expect("a");
        let real6: Ipv6Addr = "fd00:99:2::2".parse().expect("a");
        let client6: Ipv6Addr = CLIENT6.parse().expect("a");
        let syn6 = Packet::eth().macs(ROUTER_MAC, FRONT_MAC).ipv6(client6, vip6).tcp(40000, 80, TCP_SYN);
        let want6 = Packet::eth()
            .macs(BACK_MAC, REAL6_MAC)
            .ipv6(outer_source6(&tuple(IpAddr::V6(client6))), real6)
            .ipv6(client6, vip6)
            .tcp(40000, 80, TCP_SYN)
            .build();
        assert_eq!(
            run_on(prog, &syn6.build(), interfaces.front),
            (XDP_REDIRECT, testrun::hex(&want6)),
            "6in6 out of the back interface"
        );
        assert_eq!(counter(maps, xlb_counter::ROUTE_REDIRECT), 2);
    });
}

#[test]
fn nat_packets_and_their_replies_follow_the_route_both_ways() {
    if !testing::privileged("xlb next hop fixtures") {
        return;
    }
    with_routed_lb(|prog, maps, interfaces| {
        let vip = Ipv4Addr::new(198, 51, 100, 25);
        let real = Ipv4Addr::new(10, 99, 2, 5);
        let syn = Packet::eth().macs(ROUTER_MAC, FRONT_MAC).ipv4(CLIENT, vip).tcp(40000, 80, TCP_SYN);
        let want = Packet::eth().macs(BACK_MAC, NAT_REAL_MAC).ipv4(CLIENT, real).tcp(40000, 8080, TCP_SYN).build();
        assert_eq!(
            run_on(prog, &syn.build(), interfaces.front),
            (XDP_REDIRECT, testrun::hex(&want)),
            "to the real, out of the back interface"
        );
        // The reply comes in on the back interface and leaves by the front
        // one, to the router the client's route names.
        let reply = Packet::eth().macs(NAT_REAL_MAC, BACK_MAC).ipv4(real, CLIENT).tcp(8080, 40000, TCP_SYN | TCP_ACK);
        let want = Packet::eth()
            .macs(FRONT_MAC, CLIENT_GATEWAY_MAC)
            .ipv4(vip, CLIENT)
            .tcp(80, 40000, TCP_SYN | TCP_ACK)
            .build();
        assert_eq!(
            run_on(prog, &reply.build(), interfaces.back),
            (XDP_REDIRECT, testrun::hex(&want)),
            "the reply, back out of the front interface"
        );
        assert_eq!(counter(maps, xlb_counter::NAT_REPLY), 1);
        assert_eq!(counter(maps, xlb_counter::ROUTE_REDIRECT), 2);
    });
}

#[test]
fn a_route_by_the_receiving_interface_transmits_to_the_neighbours_mac() {
    if !testing::privileged("xlb next hop fixtures") {
        return;
    }
    with_routed_lb(|prog, maps, interfaces| {
        let vip = Ipv4Addr::new(198, 51, 100, 21);
        let want = ipip4(vip, Ipv4Addr::new(10, 99, 1, 2), FRONT_MAC, REAL_FRONT_MAC);
        assert_eq!(run_on(prog, &syn4(vip).build(), interfaces.front), (XDP_TX, testrun::hex(&want)));
        assert_eq!(counter(maps, xlb_counter::ROUTE_REDIRECT), 0);
    });
}

#[test]
fn an_unresolved_neighbour_hands_the_packet_to_the_stack_addressed_to_this_host() {
    if !testing::privileged("xlb next hop fixtures") {
        return;
    }
    with_routed_lb(|prog, maps, interfaces| {
        let vip = Ipv4Addr::new(198, 51, 100, 22);
        let want = ipip4(vip, Ipv4Addr::new(10, 99, 2, 3), FRONT_MAC, FRONT_MAC);
        assert_eq!(run_on(prog, &syn4(vip).build(), interfaces.front), (XDP_PASS, testrun::hex(&want)));
        assert_eq!(counter(maps, xlb_counter::ROUTE_NO_NEIGH), 1);
        assert_eq!(counter(maps, xlb_counter::DROPPED), 0);
    });
}

#[test]
fn no_route_and_too_big_for_the_route_are_dropped_with_their_reason() {
    if !testing::privileged("xlb next hop fixtures") {
        return;
    }
    with_routed_lb(|prog, maps, interfaces| {
        let nowhere = syn4(Ipv4Addr::new(198, 51, 100, 23)).build();
        assert_eq!(run_on(prog, &nowhere, interfaces.front).0, XDP_DROP, "no route to 10.99.3.3");
        assert_eq!(dropped(maps, drop_reason::XLB_NO_ROUTE), 1);

        // 10.99.4.0/24 takes 576 bytes: a 600-byte payload does not fit.
        let big = Packet::eth()
            .macs(ROUTER_MAC, FRONT_MAC)
            .ipv4(CLIENT, Ipv4Addr::new(198, 51, 100, 24))
            .tcp(40000, 80, TCP_ACK)
            .payload(&[0u8; 600])
            .build();
        assert_eq!(run_on(prog, &big, interfaces.front).0, XDP_DROP, "over the route's MTU");
        assert_eq!(dropped(maps, drop_reason::XLB_ROUTE_MTU), 1);
        // A small one to the same real fits, and finds no neighbour.
        let small = syn4(Ipv4Addr::new(198, 51, 100, 24)).build();
        assert_eq!(run_on(prog, &small, interfaces.front).0, XDP_PASS);
        assert_eq!(counter(maps, xlb_counter::DROPPED), 2);
    });
}
