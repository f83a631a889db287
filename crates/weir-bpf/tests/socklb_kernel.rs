//! The socket load balancer on a real kernel: real sockets in a private
//! network namespace, from a process inside a cgroup the balancer is
//! attached to. Services come from Kubernetes documents through the same
//! planner the agent uses. Everything runs in one test, because the whole
//! test process joins the cgroup.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use weir_bpf::datapath::PinLayout;
use weir_bpf::socklb::{self, LbMaps};
use weir_host::{netns, testing};

mod socklb_common;
use socklb_common::Scratch;
use weir_service::{frontends, parse_stream, ClusterState, NodeContext};

fn services_yaml(tcp: &[u16], udp: u16) -> String {
    let mut yaml = String::new();
    // One slice per backend port: an endpoint is an address, and ours differ by port.
    let service = |name: &str, ip: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: t\n{extra}spec:\n  clusterIP: {ip}\n  ports:\n  - {{name: http, port: 80}}\n  - {{name: dns, port: 53, protocol: UDP}}\n---\n"
        )
    };
    let slice = |service: &str, n: usize, port: u16, proto: &str, name: &str, terminating: bool| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{n}\n  namespace: t\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{name: {name}, protocol: {proto}, port: {port}}}]\nendpoints:\n- addresses: [127.0.0.1]\n  conditions: {{ready: {}, terminating: {terminating}}}\n---\n",
            !terminating
        )
    };
    yaml += &service("web", "10.96.0.1", "");
    yaml += &service("empty", "10.96.0.2", "");
    yaml += &service("sticky", "10.96.0.3", "");
    yaml = yaml.replace(
        "  name: sticky\n  namespace: t\nspec:\n",
        "  name: sticky\n  namespace: t\nspec:\n  sessionAffinity: ClientIP\n",
    );
    yaml += &service("ring", "10.96.0.4", "  annotations: {weir.dev/lb-algorithm: maglev}\n");
    for (i, port) in tcp.iter().enumerate() {
        let terminating = i == tcp.len() - 1;
        for svc in ["web", "sticky", "ring"] {
            yaml += &slice(svc, i, *port, "TCP", "http", terminating);
        }
    }
    yaml += &slice("web", 99, udp, "UDP", "dns", false);
    yaml
}

/// Accepts whatever is pending on each listener; returns the count per listener.
fn drain(listeners: &[TcpListener], counts: &mut [usize]) {
    for (i, listener) in listeners.iter().enumerate() {
        while listener.accept().is_ok() {
            counts[i] += 1;
        }
    }
}

fn connect_and_check(vip: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
    // The application sees the service address, not the backend's.
    assert_eq!(stream.peer_addr()?, vip, "getpeername shows the service address");
    Ok(stream)
}

#[test]
fn connect_sendmsg_recvmsg_and_getpeername_are_translated_in_the_kernel() {
    if !testing::privileged("socket load balancer") {
        return;
    }
    let scratch = Scratch::new("weir-slb");
    let name = scratch.netns.clone();
    let pins = PinLayout::new(&scratch.pins);
    let attached = socklb::establish(&pins, scratch.cgroup.path()).expect("socket LB attaches");
    assert_eq!(attached.len(), 9, "{attached:?}");
    let maps = LbMaps::open(&pins).expect("maps");
    std::fs::write(scratch.cgroup.path().join("cgroup.procs"), std::process::id().to_string()).expect("join cgroup");

    netns::run_in(&name, || {
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect();
        let udp_backend = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp backend");
        let udp_port = udp_backend.local_addr().expect("addr").port();

        let objects = parse_stream(&services_yaml(&ports, udp_port)).expect("documents are valid");
        let (state, _) = ClusterState::default().apply(objects).expect("applies");
        let state: ClusterState = state;
        let desired = frontends(&state, &NodeContext::default());
        let (ops, tables) = weir_service::plan::plan(&Default::default(), &desired, &BTreeSet::new()).expect("plan");
        maps.execute(&ops).expect("map writes");
        assert_eq!(maps.read_tables().expect("read back").frontends, tables.frontends, "the kernel holds the plan");

        // Random choice spreads over the active backends; the terminating one gets nothing new.
        let web: SocketAddr = "10.96.0.1:80".parse().expect("addr");
        let mut counts = vec![0usize; 3];
        for _ in 0..60 {
            connect_and_check(web).expect("connect to the service");
            drain(&listeners, &mut counts);
        }
        assert_eq!(counts[2], 0, "terminating backend took new connections: {counts:?}");
        assert!(counts[0] >= 10 && counts[1] >= 10, "uneven: {counts:?}");
        let web_id = tables
            .frontends
            .iter()
            .find(|(k, _)| k.port == 80 && k.address == web.ip())
            .expect("web")
            .1
            .meta
            .service_id;
        assert_eq!(maps.service_counters(web_id).expect("counters").connects, 60);

        // No backend: refused at once, not a timeout.
        let started = std::time::Instant::now();
        let err = TcpStream::connect_timeout(&"10.96.0.2:80".parse().expect("addr"), Duration::from_secs(3))
            .expect_err("no backend");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));

        // ClientIP affinity: every connection from this client lands on one backend.
        let mut sticky = vec![0usize; 3];
        for _ in 0..20 {
            connect_and_check("10.96.0.3:80".parse().expect("addr")).expect("sticky connect");
            drain(&listeners, &mut sticky);
        }
        assert_eq!(sticky.iter().filter(|c| **c > 0).count(), 1, "affinity broken: {sticky:?}");

        // Maglev: connections reach active backends only.
        let mut ring = vec![0usize; 3];
        for _ in 0..20 {
            connect_and_check("10.96.0.4:80".parse().expect("addr")).expect("maglev connect");
            drain(&listeners, &mut ring);
        }
        assert_eq!(ring.iter().sum::<usize>(), 20);
        assert_eq!(ring[2], 0, "{ring:?}");

        // UDP, unconnected: sendto the service, the reply appears to come from it.
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp client");
        client.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        udp_backend.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        client.send_to(b"ping", "10.96.0.1:53").expect("sendto the service");
        let mut buf = [0u8; 16];
        let (n, from) = udp_backend.recv_from(&mut buf).expect("backend receives");
        assert_eq!(&buf[..n], b"ping");
        udp_backend.send_to(b"pong", from).expect("reply");
        let (n, from) = client.recv_from(&mut buf).expect("client receives");
        assert_eq!((&buf[..n], from), (&b"pong"[..], "10.96.0.1:53".parse::<SocketAddr>().expect("addr")));
        // UDP, connected: getpeername shows the service.
        let connected = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp client");
        connected.connect("10.96.0.1:53").expect("connect");
        assert_eq!(connected.peer_addr().expect("peer").to_string(), "10.96.0.1:53");

        // An AF_INET6 socket names the IPv4 service by its mapped form
        // (::ffff:10.96.0.1): connect6 and getpeername6 translate it, and
        // an unconnected reply on recvmsg6 comes from the mapped service.
        let mapped_web: SocketAddr = "[::ffff:10.96.0.1]:80".parse().expect("addr");
        let before: usize = counts.iter().sum();
        let stream = TcpStream::connect_timeout(&mapped_web, Duration::from_secs(2)).expect("connect6 to the mapped service");
        assert_eq!(stream.peer_addr().expect("peer"), mapped_web, "getpeername6 shows the mapped service address");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while counts.iter().sum::<usize>() == before && std::time::Instant::now() < deadline {
            drain(&listeners, &mut counts);
        }
        assert_eq!(counts.iter().sum::<usize>(), before + 1, "a backend took the mapped connection: {counts:?}");
        assert_eq!(counts[2], 0, "not the terminating backend: {counts:?}");
        let client6 = UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)).expect("dual-stack udp client");
        client6.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        client6.send_to(b"ping6", "[::ffff:10.96.0.1]:53").expect("sendto the mapped service");
        let (n, from) = udp_backend.recv_from(&mut buf).expect("backend receives");
        assert_eq!(&buf[..n], b"ping6");
        udp_backend.send_to(b"pong6", from).expect("reply");
        let (n, from) = client6.recv_from(&mut buf).expect("client receives");
        assert_eq!(
            (&buf[..n], from),
            (&b"pong6"[..], "[::ffff:10.96.0.1]:53".parse::<SocketAddr>().expect("addr")),
            "the reply comes from the mapped service address"
        );

        // IPv6: connect6 and getpeername6, to a backend on ::1.
        let v6_listener = std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).expect("listen on ::1");
        let v6_port = v6_listener.local_addr().expect("addr").port();
        let v6_yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: six, namespace: t}}\nspec:\n  clusterIP: fd00:96::1\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: six-a, namespace: t, labels: {{kubernetes.io/service-name: six}}}}\naddressType: IPv6\nports: [{{name: http, protocol: TCP, port: {v6_port}}}]\nendpoints:\n- addresses: ['::1']\n"
        );
        let mut with_v6 = state.clone();
        with_v6.apply_in_place(parse_stream(&v6_yaml).expect("valid")).expect("applies");
        let (ops, v6_tables) = weir_service::plan::plan(&tables, &frontends(&with_v6, &NodeContext::default()), &BTreeSet::new())
            .expect("plan");
        maps.execute(&ops).expect("map writes");
        let six: SocketAddr = "[fd00:96::1]:80".parse().expect("addr");
        let stream = TcpStream::connect_timeout(&six, Duration::from_secs(2)).expect("connect6 to the service");
        assert_eq!(stream.peer_addr().expect("peer"), six, "getpeername6 shows the service address");
        assert!(v6_listener.accept().is_ok(), "the IPv6 backend took the connection");
        let tables = v6_tables;

        // Passive health: a backend that refuses a connection is marked
        // suspect at once, and new connections avoid it.
        let dead_port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind").local_addr().expect("addr").port();
        let flaky_yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: flaky, namespace: t}}\nspec:\n  clusterIP: 10.96.0.5\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: flaky-a, namespace: t, labels: {{kubernetes.io/service-name: flaky}}}}\naddressType: IPv4\nports: [{{name: http, protocol: TCP, port: {}}}]\nendpoints:\n- addresses: [127.0.0.1]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: flaky-b, namespace: t, labels: {{kubernetes.io/service-name: flaky}}}}\naddressType: IPv4\nports: [{{name: http, protocol: TCP, port: {dead_port}}}]\nendpoints:\n- addresses: [127.0.0.1]\n",
            ports[0]
        );
        let mut with_flaky = with_v6.clone();
        with_flaky.apply_in_place(parse_stream(&flaky_yaml).expect("valid")).expect("applies");
        let (ops, tables) =
            weir_service::plan::plan(&tables, &frontends(&with_flaky, &NodeContext::default()), &BTreeSet::new())
                .expect("plan");
        maps.execute(&ops).expect("map writes");
        let flaky: SocketAddr = "10.96.0.5:80".parse().expect("addr");
        let mut refused = 0;
        let mut served = vec![0usize; 3];
        for _ in 0..30 {
            match TcpStream::connect_timeout(&flaky, Duration::from_secs(2)) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
                Err(e) => panic!("flaky: {e}"),
            }
            drain(&listeners, &mut served);
        }
        assert!(refused <= 1, "{refused} of 30 connections refused: the dead backend was not avoided");
        assert_eq!(served[0] + refused, 30, "every other connection reached the live backend: {served:?}");
        let dead = weir_service::plan::BackendKey {
            address: Ipv4Addr::LOCALHOST.into(),
            port: dead_port,
            proto: weir_service::plan::IPPROTO_TCP,
        };
        if refused == 1 {
            let suspects = maps.suspects().expect("suspects");
            assert_eq!(suspects.get(&dead).map(|s| s.1), Some(1), "{suspects:?}");
            // A probe that started before the failure clears nothing; one after it clears the mark.
            assert!(!maps.clear_suspect(&dead, 0).expect("clear"), "a stale probe cleared a fresh mark");
            assert!(maps.clear_suspect(&dead, u64::MAX).expect("clear"), "the mark was not cleared");
            assert!(maps.suspects().expect("suspects").is_empty());
        }

        // Removing everything leaves the maps empty.
        let (ops, _) = weir_service::plan::plan(&tables, &[], &BTreeSet::new()).expect("plan");
        maps.execute(&ops).expect("removal");
        let left = maps.read_tables().expect("read back");
        assert!(left.frontends.is_empty() && left.backends.is_empty() && left.maglev.is_empty(), "{left:?}");

        // The connected UDP socket's backend is gone: the socket is ended
        // (6.5+), or found and reported where bpf_sock_destroy is missing.
        let gone = weir_service::plan::udp_departures(&ops);
        assert_eq!(gone.len(), 1, "the UDP backend departed: {gone:?}");
        let here = std::fs::File::open("/proc/thread-self/ns/net").expect("this namespace");
        let ending = maps.end_udp_sockets(&gone, &[here]).expect("iterator runs");
        match weir_bpf::probe::sock_destroy() {
            Ok(_) => {
                assert_eq!((ending.ended, ending.kept), (1, 0), "{ending:?}");
                let err = connected.send(b"after").expect_err("the ended socket is disconnected");
                assert_eq!(err.raw_os_error(), Some(libc::EDESTADDRREQ), "{err}");
            }
            Err(why) => {
                eprintln!("no socket termination here ({why}): the socket is found, not ended");
                assert_eq!((ending.ended, ending.kept), (0, 1), "{ending:?}");
                connected.send(b"after").expect("the socket is left as it was");
            }
        }
    })
    .expect("netns");
    drop(scratch);
}
