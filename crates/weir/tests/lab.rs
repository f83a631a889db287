//! The lab, end to end: real namespaces, veths, cgroups and traffic.

mod common;

use std::path::Path;

use common::*;

#[test]
fn pods_reach_their_node_and_other_nodes_pods_and_with_routing_none_only_their_node() {
    let test = "pods_reach_their_node_and_other_nodes_pods_and_with_routing_none_only_their_node";
    let Some(lab) = TestLab::for_test(test, false) else {
        return;
    };
    let plan = lab.plan();
    let web = plan.pod("frontend/web").expect("web pod");
    let api = plan.pod("backend/api").expect("api pod");
    let node_a = plan.node("node-a").expect("node-a");

    let ping = lab.exec("frontend/web", &["ping", "-c1", "-W2", &node_a.gateway.to_string()]);
    assert!(ping.status.success(), "ICMP pod -> own node: {}", String::from_utf8_lossy(&ping.stdout));
    let got = tcp_exchange(&web.netns, &node_a.netns, node_a.gateway, b"over tcp").expect("TCP pod -> own node");
    assert_eq!(got, b"over tcp");
    assert_eq!(
        udp_exchange(&web.netns, &node_a.netns, node_a.address, b"over udp").as_deref(),
        Some(&b"over udp"[..]),
        "UDP pod -> own node's fabric address"
    );
    let back = tcp_exchange(&node_a.netns, &web.netns, web.ip, b"node to pod").expect("TCP own node -> pod");
    assert_eq!(back, b"node to pod");
    // routing: kernel (the default): across nodes, pod to pod.
    let cross = tcp_exchange(&web.netns, &api.netns, api.ip, b"across nodes").expect("TCP pod -> other node's pod");
    assert_eq!(cross, b"across nodes");
    assert_eq!(
        udp_exchange(&api.netns, &web.netns, web.ip, b"back").as_deref(),
        Some(&b"back"[..]),
        "UDP pod -> other node's pod"
    );

    // routing: none: a pod reaches its own node only.
    let name = format!("{}n", lab.name);
    let spec = common::two_node_spec(&name).replace("routing: kernel", "routing: none");
    let isolated = TestLab::up(&name, &spec, false);
    let plan = isolated.plan();
    let (web, api) = (plan.pod("frontend/web").expect("web"), plan.pod("backend/api").expect("api"));
    let cross = isolated.exec("frontend/web", &["ping", "-c1", "-W1", &api.ip.to_string()]);
    assert!(!cross.status.success(), "with routing: none a pod must not reach another node's pod");
    assert_eq!(udp_exchange(&web.netns, &plan.nodes[1].netns, plan.nodes[1].address, b"x"), None);
}

#[test]
fn exec_passes_through_output_and_exit_status_and_runs_in_the_pods_cgroup() {
    let Some(lab) = TestLab::for_test("exec_passes_through_output_and_exit_status_and_runs_in_the_pods_cgroup", false)
    else {
        return;
    };
    let name = lab.name.clone();
    let out = lab.exec("backend/db", &["sh", "-c", "echo hello; cat /proc/self/cgroup; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "exit status passes through");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("hello\n"), "output passes through: {stdout}");
    assert!(
        stdout.contains(&format!("/weir/labs/{name}/node-b/pods/backend.db")),
        "runs in the pod's cgroup: {stdout}"
    );
    let ip = lab.exec("backend/db", &["ip", "-4", "-o", "addr", "show", "eth0"]);
    let pod_ip = lab.plan().pod("backend/db").expect("db").ip.to_string();
    assert!(String::from_utf8_lossy(&ip.stdout).contains(&pod_ip), "runs in the pod's network namespace");
    let missing = lab.exec("backend/nope", &["true"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no pod or host backend/nope"));
}

#[test]
fn up_is_idempotent_and_down_leaves_nothing_behind() {
    let Some(lab) = TestLab::for_test("up_is_idempotent_and_down_leaves_nothing_behind", true) else { return };
    let name = lab.name.clone();
    let plan = lab.plan();
    let agents: Vec<i32> = plan.nodes.iter().map(|n| weir_lab::runtime::agent_pid(n).expect("agent running")).collect();
    let again = weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    assert!(again.contains("already up"), "second up: {again}");
    assert_eq!(
        plan.nodes.iter().map(|n| weir_lab::runtime::agent_pid(n).expect("agent running")).collect::<Vec<_>>(),
        agents,
        "a second up keeps running agents"
    );

    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    weir_ok(&["lab", "down", &name]);
    assert!(weir_host::netns::list_with_prefix(&format!("weir.{name}.")).is_empty(), "no namespace left");
    assert!(!roots.cgroup2.join(&plan.cgroup).exists(), "no cgroup left");
    assert!(!roots.bpffs.join(&plan.pin_dir).exists(), "no pin left");
    assert!(!weir_host::paths::lab_dir(&name).exists(), "no record left");
    assert!(weir_host::process::wait_gone(&agents, std::time::Duration::from_secs(2)).is_empty(), "no agent left");
    let fabric_ports = weir_host::iproute::ip(None, &["-o", "link", "show"]).expect("ip link");
    assert!(!fabric_ports.contains(&plan.pods[0].host_interface), "no veth left in the root namespace");
}

#[test]
fn down_cleans_up_a_lab_whose_record_was_lost_in_a_crash() {
    let Some(lab) = TestLab::for_test("down_cleans_up_a_lab_whose_record_was_lost_in_a_crash", true) else { return };
    let name = lab.name.clone();
    let plan = lab.plan();
    // A straggler started by hand inside a node's namespace, outside any cgroup.
    let mut straggler = std::process::Command::new("ip")
        .args(["netns", "exec", &plan.nodes[0].netns, "sleep", "300"])
        .spawn()
        .expect("spawn");
    assert!(eventually(std::time::Duration::from_secs(2), || {
        let inode = weir_host::netns::inode(&plan.nodes[0].netns).expect("inode");
        weir_host::process::pids_in_netns(inode).len() >= 2
    }));
    std::fs::remove_dir_all(weir_host::paths::lab_dir(&name)).expect("simulate a lost record");
    let listed = weir_ok(&["lab", "list"]);
    assert!(listed.lines().any(|l| l.starts_with(&name) && l.contains("orphaned")), "list shows the remnant: {listed}");
    weir_ok(&["lab", "down", &name]);
    assert!(weir_host::netns::list_with_prefix(&format!("weir.{name}.")).is_empty());
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    assert!(!roots.cgroup2.join(&plan.cgroup).exists());
    assert!(!Path::new(&roots.bpffs.join(&plan.pin_dir)).exists());
    let status = straggler.wait().expect("straggler reaped");
    assert!(!status.success(), "the straggler was killed");
}

#[test]
fn bad_specs_are_rejected_naming_the_field_and_create_nothing() {
    if !privileged("bad_specs_are_rejected_naming_the_field_and_create_nothing") {
        return;
    }
    let name = unique_name("bad");
    let good = two_node_spec(&name);
    let cases = [
        (good.replace("podCIDR:", "podCidr:"), "spec.nodes[0].podCidr: unknown field"),
        (
            good.replace("10.244.1.0/24", "10.244.0.128/25"),
            "spec.nodes[1].podCIDR: 10.244.0.128/25 overlaps 10.244.0.0/24",
        ),
        (good.replacen("node: node-b", "node: node-z", 1), "spec.pods[1].node: node \"node-z\" is not declared"),
        (good.replace("name: db", "name: api"), "spec.pods[2].name: duplicate pod backend/api"),
        (good.replace("name: node-b", "name: node-a"), "spec.nodes[1].name: duplicate node name"),
    ];
    for (spec, expected) in cases {
        let path = std::env::temp_dir().join(format!("{name}.bad.yaml"));
        std::fs::write(&path, spec).expect("write");
        let out = weir(&["lab", "up", "-f", &path.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "must be rejected: {expected}");
        assert!(stderr.contains(expected), "error {stderr:?} should contain {expected:?}");
        assert!(
            weir_host::netns::list_with_prefix(&format!("weir.{name}.")).is_empty(),
            "nothing created for: {expected}"
        );
        assert!(!weir_host::paths::lab_dir(&name).exists(), "no record for: {expected}");
        let _ = std::fs::remove_file(&path);
    }
}

/// `weir ARGS` with no lab named in the environment: fails, and says `expected`.
fn refused_saying(args: &[&str], expected: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_LAB")
        .output()
        .expect("running weir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "weir {args:?} succeeded: {stderr}");
    for want in expected {
        assert!(stderr.contains(want), "weir {args:?} should say {want:?}: {stderr}");
    }
}

#[test]
fn agent_commands_name_the_labs_when_several_are_up_and_refuse_pods_that_do_not_exist() {
    if !privileged("agent_commands_name_the_labs_when_several_are_up_and_refuse_pods_that_do_not_exist") {
        return;
    }
    let names = [unique_name("sevra"), unique_name("sevrb")];
    let _labs: Vec<TestLab> = names.iter().map(|n| TestLab::up(n, &two_node_spec(n), false)).collect();
    let [a, b] = &names;
    for args in [
        &["status", "--sample", "0"][..],
        &["runtime", "list"],
        &["filter", "list"],
        &["profile", "--duration", "1s"],
        &["observe", "--last", "1"],
    ] {
        refused_saying(args, &["several labs are up (", a, b, "--lab"]);
    }
    // One convention for a pod that is not there: an error naming it and the lab.
    let missing = format!("no pod frontend/none in lab {a}");
    refused_saying(&["events", "--lab", a, "--pod", "frontend/none", "--timeout", "1s"], &[&missing]);
    refused_saying(&["profile", "--lab", a, "--pod", "frontend/none", "--duration", "1s"], &[&missing]);
    refused_saying(&["observe", "--lab", a, "--pod", "frontend/none", "--last", "1"], &[&missing]);
    refused_saying(
        &["observe", "--lab", a, "--to-pod", "nowhere", "--last", "1"],
        &[&format!("no pod in namespace nowhere in lab {a}")],
    );
    refused_saying(
        &["events", "--lab", a, "--node", "node-a", "--pod", "backend/api", "--timeout", "1s"],
        &[&format!("pod backend/api of lab {a} runs on node-b, not node-a")],
    );
}

/// A raw socket on `ifname` in `netns` that receives every IPv4 frame.
fn ipv4_capture(netns: &str, ifname: &str) -> std::os::fd::OwnedFd {
    let ifname = ifname.to_string();
    weir_host::netns::run_in(netns, move || {
        use std::os::fd::FromRawFd;
        let protocol = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket calls with valid arguments; the fd is owned below.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol));
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let name = std::ffi::CString::new(ifname).expect("name");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = protocol;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let bound = libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            fd
        }
    })
    .expect("netns")
}

fn mac_in(netns: &str, ifname: &str) -> [u8; 6] {
    // Not from /sys: that shows the namespace it was mounted in.
    let out = weir_host::iproute::ip(Some(netns), &["-o", "link", "show", ifname]).expect("ip link");
    let text = out.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).expect("a MAC address");
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex")).collect();
    bytes.try_into().expect("six bytes")
}

#[test]
fn the_fabric_carries_malformed_ipv4_to_nodes_as_a_wire_would() {
    let Some(lab) = TestLab::for_test("the_fabric_carries_malformed_ipv4_to_nodes_as_a_wire_would", false) else {
        return;
    };
    let plan = lab.plan();
    let (node, host) = (&plan.nodes[0], &plan.externals[0]);
    let capture = ipv4_capture(&node.netns, "eth0");
    let frame = |marker: &[u8]| {
        weir_packet::Packet::eth()
            .macs(mac_in(&host.netns, "eth0"), mac_in(&node.netns, "eth0"))
            .ipv4(host.address, node.address)
            .udp(40000, 9)
            .payload(marker)
            .build()
    };
    // A wrong header checksum, and a header length below the minimum.
    let mut bad_checksum = frame(b"weir-bad-checksum");
    bad_checksum[24] ^= 0xff;
    let mut short_header = frame(b"weir-short-header");
    short_header[14] = 0x44;
    let mut seen = [false; 2];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Sent again until seen: the capture socket may open while the link settles.
    while seen.contains(&false) && std::time::Instant::now() < deadline {
        send_frames(&host.netns, &[("eth0", bad_checksum.clone(), 1)]);
        send_frames(&host.netns, &[("eth0", short_header.clone(), 1)]);
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: recv into a buffer of the given length on an open socket.
            let n =
                unsafe { libc::recv(std::os::fd::AsRawFd::as_raw_fd(&capture), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            let got = &buf[..n as usize];
            for (i, marker) in [&b"weir-bad-checksum"[..], b"weir-short-header"].iter().enumerate() {
                if got.windows(marker.len()).any(|w| w == *marker) {
                    seen[i] = true;
                }
            }
        }
    }
    assert_eq!(
        seen,
        [true, true],
        "malformed IPv4 from {} reaches {}'s eth0 (bad checksum, short header)",
        host.name,
        node.name
    );
}
