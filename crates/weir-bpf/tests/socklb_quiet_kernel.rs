//! The socket load balancer's "nothing armed" flags on a real kernel: a
//! flag is set only while its map is empty, the very next call after an
//! opt-out or a fault is written honours it, removing the last entry sets
//! the flag again, and a restart derives the flags from what the pinned
//! maps hold. Everything runs in one test, because the whole test process
//! joins the cgroup.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use weir_bpf::chaos::{ConnectFault, ConnectFaults};
use weir_bpf::chaos_service::{ServiceAction, ServiceFault, ServiceFaultKey, ServiceFaults};
use weir_bpf::datapath::PinLayout;
use weir_bpf::socklb::{self, LbMaps};
use weir_bpf::socklb_quiet::{QuietFlags, Skippable};
use weir_host::{netns, testing};

mod socklb_common;
use socklb_common::Scratch;
use weir_service::{frontends, parse_stream, ClusterState, NodeContext};

const VIP: &str = "10.96.0.1:80";
const UDP_VIP: &str = "10.96.0.1:53";

fn services_yaml(tcp: u16, udp: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: t}}\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n  - {{name: http, port: 80}}\n  - {{name: dns, port: 53, protocol: UDP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-a, namespace: t, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, protocol: TCP, port: {tcp}}}, {{name: dns, protocol: UDP, port: {udp}}}]\nendpoints:\n- addresses: [127.0.0.1]\n"
    )
}

/// A connect to the service: Ok when it was translated to the backend
/// (which accepts it, and getpeername shows the service), else the error.
fn connect(listener: &TcpListener) -> std::io::Result<()> {
    let vip: SocketAddr = VIP.parse().expect("addr");
    let stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
    assert_eq!(stream.peer_addr()?, vip, "getpeername shows the service address");
    // A completed connect is in the backend's accept queue already.
    listener.accept().expect("the backend took the connection");
    Ok(())
}

/// A UDP send to the service: Ok when the backend received it, else the error.
fn send(backend: &UdpSocket) -> std::io::Result<()> {
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    client.send_to(b"ping", UDP_VIP)?;
    let mut buf = [0u8; 8];
    let (n, _) = backend.recv_from(&mut buf).expect("the backend receives the translated send");
    assert_eq!(&buf[..n], b"ping");
    Ok(())
}

fn errno(result: std::io::Result<()>, what: &str) -> i32 {
    match result {
        Ok(()) => panic!("{what}: the call was translated as if nothing were armed"),
        Err(e) => e.raw_os_error().unwrap_or_else(|| panic!("{what}: {e} has no errno")),
    }
}

fn quiet_set(quiet: &QuietFlags) -> BTreeSet<Skippable> {
    Skippable::ALL.into_iter().filter(|w| quiet.is_quiet(*w).expect("read lb_quiet")).collect()
}

#[test]
fn nothing_armed_flags_skip_only_empty_maps() {
    if !testing::privileged("socket load balancer") {
        return;
    }
    let scratch = Scratch::new("weir-slbq");
    let name = scratch.netns.clone();
    let cgroup_id = scratch.cgroup.id().expect("cgroup id");
    let pins = PinLayout::new(&scratch.pins);
    socklb::establish(&pins, scratch.cgroup.path()).expect("socket LB attaches");
    let maps = LbMaps::open(&pins).expect("maps");
    let quiet = QuietFlags::open(&pins).expect("lb_quiet");
    let all: BTreeSet<Skippable> = Skippable::ALL.into_iter().collect();
    assert_eq!(quiet_set(&quiet), all, "fresh maps are empty: every lookup is skipped");
    std::fs::write(scratch.cgroup.path().join("cgroup.procs"), std::process::id().to_string()).expect("join cgroup");

    netns::run_in(&name, || {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
        let backend = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp backend");
        backend.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let yaml =
            services_yaml(listener.local_addr().expect("addr").port(), backend.local_addr().expect("addr").port());
        let (state, _) = ClusterState::default().apply(parse_stream(&yaml).expect("valid")).expect("applies");
        let state: ClusterState = state;
        let (ops, tables) = weir_service::plan::plan(
            &Default::default(),
            &frontends(&state, &NodeContext::default()),
            &BTreeSet::new(),
        )
        .expect("plan");
        maps.execute(&ops).expect("map writes");
        let web_id = tables.frontends.iter().find(|(k, _)| k.port == 80).expect("web").1.meta.service_id;

        // Nothing armed: translated.
        connect(&listener).expect("translated with nothing armed");
        send(&backend).expect("UDP translated with nothing armed");
        assert_eq!(maps.service_counters(web_id).expect("counters").connects, 1);

        // An opt-out: the flag is cleared with the write, and the very next
        // call is left alone (no route to the service address here).
        maps.set_opt_outs(&BTreeSet::from([cgroup_id])).expect("opt out");
        assert!(!quiet.is_quiet(Skippable::OptOut).expect("flag"), "the opt-out flag stayed set over an entry");
        assert_eq!(errno(connect(&listener), "connect after the opt-out"), libc::ENETUNREACH);
        assert_eq!(errno(send(&backend), "send after the opt-out"), libc::ENETUNREACH);
        assert_eq!(maps.service_counters(web_id).expect("counters").connects, 1, "the opted-out call was counted");
        maps.set_opt_outs(&BTreeSet::new()).expect("opt back in");
        assert_eq!(quiet_set(&quiet), all, "the last opt-out is gone: its flag is set again");
        connect(&listener).expect("translated again after opting back in");

        // A service fault on both the TCP and the UDP frontend of this pod.
        let service_faults = ServiceFaults::open(&pins).expect("service faults");
        let refuse = ServiceFault {
            action: ServiceAction::Refuse(libc::EHOSTUNREACH as u32),
            probability: u32::MAX,
            end_ns: u64::MAX,
            experiment: 1,
        };
        for (port, proto) in [(80, 6), (53, 17)] {
            let key = ServiceFaultKey { cgroup: cgroup_id, address: Ipv4Addr::new(10, 96, 0, 1).into(), port, proto };
            service_faults.insert(&key, &refuse).expect("service fault");
        }
        assert!(!quiet.is_quiet(Skippable::ServiceFaults).expect("flag"), "the service fault flag stayed set");
        assert_eq!(errno(connect(&listener), "connect under a service fault"), libc::EHOSTUNREACH);
        assert_eq!(errno(send(&backend), "send under a service fault"), libc::EHOSTUNREACH);
        assert_eq!(service_faults.remove(|_| true).expect("remove"), 2);
        assert_eq!(quiet_set(&quiet), all, "the last service fault is gone: its flag is set again");
        connect(&listener).expect("translated again after the service fault");
        send(&backend).expect("UDP translated again after the service fault");

        // A connect fault, judged on the backend the call was translated to.
        let connect_faults = ConnectFaults::open(&pins).expect("connect faults");
        let fail =
            ConnectFault { error: libc::EHOSTDOWN as u32, probability: u32::MAX, end_ns: u64::MAX, experiment: 2 };
        connect_faults.insert(cgroup_id, Ipv4Addr::LOCALHOST.into(), &fail).expect("connect fault");
        assert!(!quiet.is_quiet(Skippable::ConnectFaults).expect("flag"), "the connect fault flag stayed set");
        assert_eq!(errno(connect(&listener), "connect under a connect fault"), libc::EHOSTDOWN);

        // A restart onto pins without lb_quiet (an agent before it): the
        // new map is derived from the maps' contents, so the fault held in
        // chaos_connects still fails the next connect.
        std::fs::remove_file(pins.maps().join("lb_quiet")).expect("drop the lb_quiet pin");
        let attached = socklb::establish(&pins, scratch.cgroup.path()).expect("socket LB re-established");
        assert!(attached.iter().all(|a| a.adopted), "{attached:?}");
        let quiet = QuietFlags::open(&pins).expect("the new lb_quiet");
        assert_eq!(
            quiet_set(&quiet),
            BTreeSet::from([Skippable::OptOut, Skippable::ServiceFaults]),
            "derived from the pinned maps"
        );
        assert_eq!(errno(connect(&listener), "connect under a connect fault after a restart"), libc::EHOSTDOWN);
        let connect_faults = ConnectFaults::open(&pins).expect("connect faults");
        assert_eq!(connect_faults.remove(|_| true).expect("remove"), 1);
        assert_eq!(quiet_set(&quiet), all, "the last connect fault is gone: its flag is set again");
        connect(&listener).expect("translated again after the connect fault");
        assert_eq!(maps.service_counters(web_id).expect("counters").connects, 6, "every translated connect counted");
    })
    .expect("netns");
    drop(scratch);
}
