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

    let (v4_pid, v4) = in_scope_child(&scope, Some(&ns), || {
        errno_of(TcpStream::connect_timeout(&SocketAddr::from((TARGET, 1500)), Duration::from_secs(2)))
    });
    assert_eq!(v4, 111, "an AF_INET connect to the denied address is refused");
    let (tcp6_pid, tcp6) = in_scope_child(&scope, Some(&ns), || {
        errno_of(TcpStream::connect_timeout(&mapped(1500), Duration::from_secs(2)))
    });
    assert_eq!(tcp6, 111, "a TCP connect to ::ffff:10.247.0.3 from an AF_INET6 socket is refused too");
    let (_, udp6) = in_scope_child(&scope, Some(&ns), || {
        UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).map_or(252, |s| errno_of(s.connect(mapped(1500))))
    });
    assert_eq!(udp6, 111, "a UDP connect to the mapped form is refused");
    let (_, bind6) = in_scope_child(&scope, Some(&ns), || errno_of(TcpListener::bind(mapped(2500))));
    assert_eq!(bind6, 13, "a bind to the mapped form of a denied local address is refused");
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "no connection reached the listener"
    );
    // Another address in its mapped form still connects: the rule is not
    // simply refusing every mapped address.
    let (_, other) = in_scope_child(&scope, Some(&ns), || {
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

/// One `IORING_OP_SENDMSG` through a ring of its own, with raw system
/// calls (as a program using io_uring sends): the errno of the send, 0
/// when it went out.
fn io_uring_sendmsg(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> i32 {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    #[derive(Default)]
    struct Params {
        sq_entries: u32,
        cq_entries: u32,
        flags: u32,
        sq_thread_cpu: u32,
        sq_thread_idle: u32,
        features: u32,
        wq_fd: u32,
        resv: [u32; 3],
        sq_off: [u32; 10], // head, tail, ring_mask, ring_entries, flags, dropped, array, resv1, user_addr (u64)
        cq_off: [u32; 10], // head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1, user_addr (u64)
    }
    const IORING_OFF_SQ_RING: i64 = 0;
    const IORING_OFF_CQ_RING: i64 = 0x8000000;
    const IORING_OFF_SQES: i64 = 0x10000000;
    const IORING_OP_SENDMSG: u8 = 9;
    const IORING_ENTER_GETEVENTS: u32 = 1;

    let mut params = Params::default();
    // SAFETY: raw io_uring set-up on memory this function owns; every
    // mapping is sized by the offsets the kernel returned and unmapped by
    // the process's exit (this runs in a child that exits right after).
    unsafe {
        let ring = libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut params as *mut Params) as i32;
        if ring < 0 {
            return 250;
        }
        let map = |len: usize, offset: i64| {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                ring,
                offset,
            )
            .cast::<u8>()
        };
        let sq = map(params.sq_off[6] as usize + 4 * params.sq_entries as usize, IORING_OFF_SQ_RING);
        let cq = map(params.cq_off[5] as usize + 16 * params.cq_entries as usize, IORING_OFF_CQ_RING);
        let sqes = map(64 * params.sq_entries as usize, IORING_OFF_SQES);
        if [sq, cq, sqes].iter().any(|p| *p as isize == -1) {
            return 249;
        }
        let (mut name, name_len): (libc::sockaddr_storage, u32) = (std::mem::zeroed(), 0);
        let name_len = match to {
            SocketAddr::V4(v4) => {
                let sin = &mut *(&mut name as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                std::mem::size_of::<libc::sockaddr_in>() as u32
            }
            SocketAddr::V6(v6) => {
                let sin6 = &mut *(&mut name as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                std::mem::size_of::<libc::sockaddr_in6>() as u32
            }
        }
        .max(name_len);
        let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = name_len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // The submission: opcode, fd, the msghdr's address; the rest zero.
        std::ptr::write_bytes(sqes, 0, 64);
        *sqes = IORING_OP_SENDMSG;
        *(sqes.add(4).cast::<i32>()) = socket.as_raw_fd();
        *(sqes.add(16).cast::<u64>()) = &msg as *const libc::msghdr as u64;
        *(sqes.add(24).cast::<u32>()) = 1;
        let mask = *(sq.add(params.sq_off[2] as usize).cast::<u32>());
        let tail = &*(sq.add(params.sq_off[1] as usize).cast::<std::sync::atomic::AtomicU32>());
        let at = tail.load(std::sync::atomic::Ordering::Acquire);
        *(sq.add(params.sq_off[6] as usize).cast::<u32>().add((at & mask) as usize)) = 0;
        tail.store(at.wrapping_add(1), std::sync::atomic::Ordering::Release);
        let entered = libc::syscall(libc::SYS_io_uring_enter, ring, 1u32, 1u32, IORING_ENTER_GETEVENTS, 0usize, 0usize);
        if entered < 0 {
            return 248;
        }
        let cq_head = *(cq.add(params.cq_off[0] as usize).cast::<u32>());
        let cq_mask = *(cq.add(params.cq_off[2] as usize).cast::<u32>());
        let cqe = cq.add(params.cq_off[5] as usize + 16 * (cq_head & cq_mask) as usize);
        let res = *(cqe.add(8).cast::<i32>());
        if res < 0 {
            -res
        } else {
            0
        }
    }
}

#[test]
fn unconnected_udp_sends_to_a_denied_cidr_are_refused_and_reported() {
    if !testing::privileged("runtime unconnected sends") {
        return;
    }
    let mut scope = scope("weir-rt-send");
    let (sensors, events) = sensors_with(&scope, true);
    let ns = add_netns(&mut scope, &["addr add 10.247.0.3/32 dev lo", "addr add fd00:247::3/128 dev lo nodad"]);
    install(
        &sensors,
        &policy(
            "no-udp-out",
            "  rules:\n  - {operations: [connect], action: deny, errno: EHOSTUNREACH, cidrs: [10.247.0.3/32, 'fd00:247::3/128'], ports: [{port: 1600}]}\n",
        ),
        false,
    );
    // Receivers of the test's own, outside the scope, on every address of the netns.
    let (denied, allowed) = netns::run_in(&ns, || {
        let denied = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 1600)).expect("dual-stack receiver");
        denied.set_nonblocking(true).expect("nonblocking");
        let allowed = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 1601)).expect("dual-stack receiver");
        allowed.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        (denied, allowed)
    })
    .expect("netns");
    let v4 = SocketAddr::from((TARGET, 1600));
    let v6 = SocketAddr::from(("fd00:247::3".parse::<Ipv6Addr>().expect("addr"), 1600));
    let send = |bind: SocketAddr, to: SocketAddr| {
        in_scope_child(&scope, Some(&ns), move || UdpSocket::bind(bind).map_or(252, |s| errno_of(s.send_to(b"x", to))))
    };
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
    let mut senders = Vec::new();
    for (what, bind, to) in
        [("IPv4 sendto", any4, v4), ("IPv6 sendto", any6, v6), ("sendto the mapped form", any6, mapped(1600))]
    {
        let (pid, errno) = send(bind, to);
        assert_eq!(errno, 113, "{what} {to} is refused with the rule's errno (EHOSTUNREACH)");
        senders.push(pid);
    }
    for (what, bind, to) in
        [("io_uring IPv4 sendmsg", any4, v4), ("io_uring sendmsg to the mapped form", any6, mapped(1600))]
    {
        let (pid, errno) = in_scope_child(&scope, Some(&ns), move || {
            UdpSocket::bind(bind).map_or(252, |s| io_uring_sendmsg(&s, to, b"u"))
        });
        assert_eq!(errno, 113, "{what} {to} is refused with the rule's errno");
        senders.push(pid);
    }
    // The same sends to a port the rule leaves alone arrive: the refusals
    // above are the rule's, not a broken setup.
    let (_, errno) = send(any4, SocketAddr::from((TARGET, 1601)));
    assert_eq!(errno, 0);
    let (_, errno) = in_scope_child(&scope, Some(&ns), move || {
        UdpSocket::bind(any6).map_or(252, |s| io_uring_sendmsg(&s, mapped(1601), b"u"))
    });
    assert_eq!(errno, 0);
    let mut buf = [0u8; 8];
    for _ in 0..2 {
        allowed.recv_from(&mut buf).expect("the allowed datagrams arrive");
    }
    assert_eq!(
        denied.recv_from(&mut buf).map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "no denied datagram arrived"
    );
    wait_for(&events, "a refusal event for every denied send", |evs| {
        senders.iter().all(|pid| {
            evs.iter().any(|e| {
                e.kind == EventKind::SendMsg
                    && e.pid == *pid
                    && e.action == Some(Action::Deny)
                    && e.errno == 113
                    && matches!(e.detail, EventDetail::Network { remote: (_, 1600), protocol: 17, .. })
            })
        })
    });
    assert!(
        !events.lock().expect("events").iter().any(|e| e.kind == EventKind::SendMsg && e.action.is_none()),
        "unmatched sends are not posted"
    );
}
