//! Network operations judged by address: every spelling of an address is
//! judged as the address it is (IPv4-mapped IPv6 from an AF_INET6 socket),
//! whichever backend refuses.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use super::*;

const TARGET: Ipv4Addr = Ipv4Addr::new(10, 247, 0, 3);

fn mapped(port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(TARGET.to_ipv6_mapped(), port, 0, 0))
}

fn mapped_forms_are_judged_as_ipv4(lsm: bool) {
    let mut scope = scope(if lsm { "weir-rt-map6l" } else { "weir-rt-map6c" });
    let (sensors, events) = sensors_with(&scope, lsm);
    assert_eq!(sensors.report.lsm, lsm && weir_bpf::probe::bpf_lsm_allowed().is_ok());
    let ns = add_netns(&mut scope, &["addr add 10.247.0.3/32 dev lo"]);
    install(
        &sensors,
        &policy(
            "mapped",
            "  rules:\n  - {operations: [connect], action: deny, errno: ECONNREFUSED, cidrs: [10.247.0.3/32]}\n  - {operations: [bind], action: deny, errno: EACCES, cidrs: [10.247.0.0/24], ports: [{port: 2500}]}\n",
        ),
        false,
    );
    // The listener is the test's, outside the scope: only the child is judged.
    let listener = netns::run_in(&ns, || {
        let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 1500)).expect("dual-stack listener");
        l.set_nonblocking(true).expect("nonblocking");
        l
    })
    .expect("netns");

    let (v4_pid, v4) = in_scope_child(&scope, &ns, || {
        errno_of(TcpStream::connect_timeout(&SocketAddr::from((TARGET, 1500)), Duration::from_secs(2)))
    });
    assert_eq!(v4, 111, "an AF_INET connect to the denied address is refused");
    let (tcp6_pid, tcp6) =
        in_scope_child(&scope, &ns, || errno_of(TcpStream::connect_timeout(&mapped(1500), Duration::from_secs(2))));
    assert_eq!(tcp6, 111, "a TCP connect to ::ffff:10.247.0.3 from an AF_INET6 socket is refused too");
    let (_, udp6) = in_scope_child(&scope, &ns, || {
        UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).map_or(252, |s| errno_of(s.connect(mapped(1500))))
    });
    assert_eq!(udp6, 111, "a UDP connect to the mapped form is refused");
    let (_, bind6) = in_scope_child(&scope, &ns, || errno_of(TcpListener::bind(mapped(2500))));
    assert_eq!(bind6, 13, "a bind to the mapped form of a denied local address is refused");
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "no connection reached the listener"
    );
    // Another address in its mapped form still connects: the rule is not
    // simply refusing every mapped address.
    let (_, other) = in_scope_child(&scope, &ns, || {
        let loopback = SocketAddr::V6(SocketAddrV6::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 1500, 0, 0));
        errno_of(TcpStream::connect_timeout(&loopback, Duration::from_secs(2)))
    });
    assert_eq!(other, 0, "::ffff:127.0.0.1 is not denied");

    wait_for(&events, "the refusals of both spellings", |evs| {
        let refused = |pid: u32| {
            evs.iter().any(|e| {
                e.kind == EventKind::Connect && e.pid == pid && e.action == Some(Action::Deny) && e.errno == 111
            })
        };
        refused(v4_pid) && refused(tcp6_pid)
    });
    let evs = events.lock().expect("events").clone();
    let event = evs.iter().find(|e| e.kind == EventKind::Connect && e.pid == tcp6_pid).expect("mapped connect event");
    assert_eq!(event.flags & runtime::F_LSM != 0, sensors.report.lsm, "the backend that refused says so");
    let EventDetail::Network { remote, .. } = &event.detail else { panic!("a network event: {event:?}") };
    assert_eq!(*remote, (mapped(1500).ip(), 1500), "the event shows the address as the program gave it");
}

#[test]
fn ipv4_mapped_ipv6_addresses_are_judged_as_the_ipv4_they_stand_for() {
    if !testing::privileged("runtime mapped addresses") {
        return;
    }
    // The cgroup hooks alone (kernels without BPF LSM), then with BPF LSM
    // where this kernel allows it (its socket_connect hook refuses first).
    mapped_forms_are_judged_as_ipv4(false);
    mapped_forms_are_judged_as_ipv4(true);
}
