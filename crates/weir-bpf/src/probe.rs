//! `weir probe`: what this kernel really allows, learned by loading and
//! attaching tiny programs, never by reading version numbers.
//!
//! Attach probes run in a throwaway network namespace (veth pair) and a
//! throwaway cgroup, both removed before returning. [`assess`] then maps the
//! feature list to a verdict per Weir capability; it is pure and unit-tested.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, ProgramMut, TcHookBuilder, TracepointCategory, UprobeOpts, Xdp, XdpFlags, TC_EGRESS};
use serde::Serialize;
use weir_host::{iproute, mounts, netns, Cgroup};

use crate::skel::probe::ProbeSkelBuilder;

/// One kernel feature and whether it works here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Feature {
    /// Stable identifier, e.g. `xdp-native` or `helper-send-signal`.
    pub name: &'static str,
    /// `program`, `helper`, `map`, `kernel` or `filesystem`.
    pub group: &'static str,
    pub available: bool,
    /// Where it is, or why it is not (the kernel's error).
    pub detail: String,
}

/// How far a Weir capability can run on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Full,
    Fallback,
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapabilityVerdict {
    pub capability: &'static str,
    pub verdict: Verdict,
    /// The fallback in use, or what is missing.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub kernel: String,
    pub lockdown: Option<String>,
    pub features: Vec<Feature>,
    pub capabilities: Vec<CapabilityVerdict>,
}

/// A uprobe target inside this very binary.
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_probe_uprobe_target() -> u64 {
    std::hint::black_box(42)
}

fn first_line(err: impl std::fmt::Display) -> String {
    let text = format!("{err:#}");
    text.lines().next().unwrap_or_default().to_string()
}

/// Loads only program `name` of the probe object and hands it to `attach`.
fn probe_program(
    name: &str,
    attach: impl FnOnce(&ProgramMut<'_>, &crate::skel::probe::ProbeSkel<'_>) -> Result<String, String>,
) -> Result<String, String> {
    let mut storage = MaybeUninit::uninit();
    let mut open = ProbeSkelBuilder::default().open(&mut storage).map_err(|e| format!("open: {}", first_line(e)))?;
    for mut prog in open.open_object_mut().progs_mut() {
        let keep = prog.name() == name;
        prog.set_autoload(keep);
    }
    let skel = open.load().map_err(|e| format!("load: {}", first_line(e)))?;
    let prog = skel
        .object()
        .progs_mut()
        .find(|p| p.name() == name)
        .ok_or_else(|| format!("no program {name} in the probe object"))?;
    attach(&prog, &skel)
}

fn attached(link: Result<Link, libbpf_rs::Error>, what: &str) -> Result<String, String> {
    link.map(|_| what.to_string()).map_err(|e| format!("attach: {}", first_line(e)))
}

fn feature(name: &'static str, group: &'static str, result: Result<String, String>) -> Feature {
    match result {
        Ok(detail) => Feature { name, group, available: true, detail },
        Err(detail) => Feature { name, group, available: false, detail },
    }
}

/// A network namespace with a veth pair, removed on drop.
struct ScratchNetns(String);

impl ScratchNetns {
    fn create() -> Result<Self, String> {
        let name = format!("weir.probe.{}", std::process::id());
        let _ = iproute::ip(None, &["netns", "del", &name]);
        iproute::ip(None, &["netns", "add", &name]).map_err(first_line)?;
        let guard = Self(name);
        iproute::batch(
            Some(&guard.0),
            &[
                "link set lo up".into(),
                "link add wp0 type veth peer name wp1".into(),
                "link set wp0 up".into(),
                "link set wp1 up".into(),
            ],
        )
        .map_err(first_line)?;
        Ok(guard)
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = iproute::ip(None, &["netns", "del", &self.0]);
    }
}

fn ifindex(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: c is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) as i32 }
}

fn network_probes() -> Vec<Feature> {
    let names = ["xdp-native", "xdp-generic", "tcx", "clsact"];
    let scratch = match ScratchNetns::create() {
        Ok(s) => s,
        Err(e) => {
            return names.iter().map(|n| feature(n, "program", Err(format!("no scratch namespace: {e}")))).collect()
        }
    };
    let in_netns = netns::run_in(&scratch.0, || {
        let xdp_mode = |flags: XdpFlags, what: &str| {
            probe_program("probe_xdp", |prog, _| {
                let index = ifindex("wp0");
                let xdp = Xdp::new(prog.as_fd());
                xdp.attach(index, XdpFlags::from_bits_retain(flags.bits()))
                    .map_err(|e| format!("attach: {}", first_line(e)))?;
                let _ = xdp.detach(index, flags);
                Ok(what.to_string())
            })
        };
        vec![
            feature("xdp-native", "program", xdp_mode(XdpFlags::DRV_MODE, "driver mode on veth")),
            feature("xdp-generic", "program", xdp_mode(XdpFlags::SKB_MODE, "skb mode")),
            feature(
                "tcx",
                "program",
                probe_program("probe_tcx", |prog, _| {
                    crate::datapath::attach_tcx(prog, ifindex("wp0") as u32)
                        .map(|_link| "tcx link".to_string())
                        .map_err(|e| format!("attach: {e}"))
                }),
            ),
            feature(
                "clsact",
                "program",
                probe_program("probe_tc", |prog, _| {
                    let mut hook = TcHookBuilder::new(prog.as_fd())
                        .ifindex(ifindex("wp0"))
                        .replace(true)
                        .handle(1)
                        .priority(1)
                        .hook(TC_EGRESS);
                    hook.create().map_err(|e| format!("qdisc: {}", first_line(e)))?;
                    hook.attach().map_err(|e| format!("attach: {}", first_line(e)))?;
                    let _ = hook.destroy();
                    Ok("clsact qdisc filter".into())
                }),
            ),
        ]
    });
    in_netns.unwrap_or_else(|e| names.iter().map(|n| feature(n, "program", Err(first_line(&e)))).collect())
}

fn cgroup_probes() -> Vec<Feature> {
    const PROBES: [(&str, &str); 8] = [
        ("cgroup-connect4", "probe_connect4"),
        ("cgroup-sendmsg4", "probe_sendmsg4"),
        ("cgroup-recvmsg4", "probe_recvmsg4"),
        ("cgroup-getpeername4", "probe_getpeername4"),
        ("cgroup-sock-create", "probe_sock_create"),
        ("cgroup-dev", "probe_dev"),
        ("cgroup-sysctl", "probe_sysctl"),
        ("sockops", "probe_sockops"),
    ];
    let cgroup = match mounts::ensure_cgroup2() {
        Ok(root) => {
            Cgroup::new(root.join(weir_host::paths::CGROUP_SUBDIR).join(format!("probe-{}", std::process::id())))
        }
        Err(e) => return PROBES.iter().map(|(n, _)| feature(n, "program", Err(first_line(&e)))).collect(),
    };
    let dir = cgroup.create().map_err(first_line).and_then(|()| std::fs::File::open(cgroup.path()).map_err(first_line));
    let features = PROBES
        .iter()
        .map(|(name, prog)| {
            let result = match &dir {
                Ok(dir) => probe_program(prog, |p, _| attached(p.attach_cgroup(dir.as_raw_fd()), "cgroup v2 link")),
                Err(e) => Err(format!("no scratch cgroup: {e}")),
            };
            feature(name, "program", result)
        })
        .collect();
    drop(dir);
    let _ = cgroup.destroy();
    features
}

fn perf_event_probe() -> Result<String, String> {
    let fd = crate::perf::open_cpu_clock(0, crate::perf::Sampling::Period(1_000_000))
        .map_err(|e| format!("perf_event_open(cpu-clock): {e}"))?;
    let raw = fd.into_raw_fd();
    let result =
        probe_program("probe_perf_event", |p, _| attached(p.attach_perf_event(raw), "software cpu-clock event"));
    // A perf link owns the event fd and closed it on detach; on failure it is still ours.
    if result.is_err() {
        // SAFETY: raw is a perf event fd that nothing else owns after a failed attach.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    result
}

fn tracing_probes() -> Vec<Feature> {
    let tracefs = mounts::ensure_tracefs().map(|p| p.display().to_string()).map_err(first_line);
    weir_probe_uprobe_target();
    vec![
        feature(
            "tracepoint",
            "program",
            match &tracefs {
                Ok(_) => probe_program("probe_tracepoint", |p, _| {
                    attached(
                        p.attach_tracepoint(TracepointCategory::Sched, "sched_process_exec"),
                        "sched/sched_process_exec",
                    )
                }),
                Err(e) => Err(format!("tracefs: {e}")),
            },
        ),
        feature(
            "raw-tracepoint",
            "program",
            probe_program("probe_raw_tp", |p, _| {
                attached(p.attach_raw_tracepoint("sched_process_exec"), "sched_process_exec")
            }),
        ),
        feature("tp-btf", "program", probe_program("probe_tp_btf", |p, _| attached(p.attach(), "sched_process_exec"))),
        feature("perf-event", "program", perf_event_probe()),
        feature(
            "uprobe",
            "program",
            probe_program("probe_uprobe", |p, _| {
                let opts = UprobeOpts { func_name: Some("weir_probe_uprobe_target".into()), ..Default::default() };
                attached(p.attach_uprobe_with_opts(0, "/proc/self/exe", 0, opts), "on a function of this binary")
            }),
        ),
        feature(
            "kprobe",
            "program",
            probe_program("probe_kprobe", |p, _| attached(p.attach_kprobe(false, "do_sys_openat2"), "do_sys_openat2")),
        ),
        feature(
            "fentry",
            "program",
            probe_program("probe_fentry", |p, _| attached(p.attach_trace(), "do_sys_openat2")),
        ),
        feature("bpf-lsm", "program", bpf_lsm_allowed()),
        feature("sock-destroy", "program", sock_destroy()),
        feature(
            "sk-msg",
            "program",
            probe_program("probe_sk_msg", |p, skel| {
                p.attach_sockmap(skel.maps.probe_sock_hash.as_fd().as_raw_fd())
                    .map(|()| "on a sockhash".to_string())
                    .map_err(|e| format!("attach: {}", first_line(e)))
            }),
        ),
    ]
}

fn helper(
    name: &'static str,
    prog_type: libbpf_sys::bpf_prog_type,
    id: libbpf_sys::bpf_func_id,
    context: &str,
) -> Feature {
    // SAFETY: plain values and a null opts pointer.
    let rc = unsafe { libbpf_sys::libbpf_probe_bpf_helper(prog_type, id, std::ptr::null()) };
    let result = match rc {
        1 => Ok(format!("from {context} programs")),
        0 => Err(format!("the verifier rejects it in {context} programs")),
        err => Err(format!("probe failed: {}", std::io::Error::from_raw_os_error(-err))),
    };
    feature(name, "helper", result)
}

fn map_type(name: &'static str, ty: libbpf_sys::bpf_map_type) -> Feature {
    // SAFETY: a plain value and a null opts pointer.
    let rc = unsafe { libbpf_sys::libbpf_probe_bpf_map_type(ty, std::ptr::null()) };
    let result = match rc {
        1 => Ok("created".to_string()),
        0 => Err("unsupported".to_string()),
        err => Err(format!("probe failed: {}", std::io::Error::from_raw_os_error(-err))),
    };
    feature(name, "map", result)
}

/// Whether an iter/udp program may end sockets with bpf_sock_destroy: the
/// socket load balancer's way to move connected UDP sockets off a removed
/// backend. Loads, attaches and runs the probe iterator.
pub fn sock_destroy() -> Result<String, String> {
    let previous = libbpf_rs::set_print(None);
    let answer = probe_program("probe_sock_destroy", |p, _| {
        let link = p
            .attach_iter_with_opts(libbpf_rs::IterOpts::None)
            .map_err(|e| format!("attach iter/udp: {}", first_line(e)))?;
        let mut iter = libbpf_rs::Iter::new(&link).map_err(|e| format!("iter/udp: {}", first_line(e)))?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut iter, &mut out).map_err(|e| format!("iter/udp: {e}"))?;
        if out.contains(&b'1') {
            Ok("bpf_sock_destroy from iter/udp".to_string())
        } else {
            Err("no bpf_sock_destroy kfunc (Linux 6.5+)".to_string())
        }
    });
    libbpf_rs::set_print(previous);
    answer
}

/// Runs every probe. Needs root; takes well under a second.
/// Whether this kernel lets a BPF LSM program load and attach; the error is why not.
pub fn bpf_lsm_allowed() -> Result<String, String> {
    // A refusal is the answer, not a problem worth libbpf's warnings.
    let previous = libbpf_rs::set_print(None);
    let answer = probe_program("probe_lsm", |p, _| attached(p.attach_lsm(), "bprm_check_security"));
    libbpf_rs::set_print(previous);
    answer
}

pub fn run() -> ProbeReport {
    // The failures are the answers; libbpf's own warnings about them are noise.
    let previous = libbpf_rs::set_print(None);
    let mut features = Vec::new();
    features.extend(network_probes());
    features.extend(cgroup_probes());
    features.extend(tracing_probes());
    use libbpf_sys as s;
    features.push(helper("helper-redirect-peer", s::BPF_PROG_TYPE_SCHED_CLS, s::BPF_FUNC_redirect_peer, "tc"));
    features.push(helper("helper-redirect-neigh", s::BPF_PROG_TYPE_SCHED_CLS, s::BPF_FUNC_redirect_neigh, "tc"));
    features.push(helper("helper-send-signal", s::BPF_PROG_TYPE_TRACEPOINT, s::BPF_FUNC_send_signal, "tracepoint"));
    features.push(helper(
        "helper-set-retval",
        s::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        s::BPF_FUNC_set_retval,
        "cgroup sock_addr",
    ));
    features.push(map_type("ringbuf", s::BPF_MAP_TYPE_RINGBUF));
    features.push(map_type("stack-trace-map", s::BPF_MAP_TYPE_STACK_TRACE));
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    features.push(feature(
        "btf",
        "kernel",
        if btf.exists() {
            Ok(btf.display().to_string())
        } else {
            Err("no /sys/kernel/btf/vmlinux: CO-RE programs cannot load".into())
        },
    ));
    features.push(feature(
        "run-time-stats",
        "kernel",
        crate::stats::enable_run_time_stats().map(|_| "BPF_ENABLE_STATS".to_string()).map_err(first_line),
    ));
    features.push(feature(
        "bpffs",
        "filesystem",
        mounts::ensure_bpffs().map(|p| p.display().to_string()).map_err(first_line),
    ));
    features.push(feature(
        "cgroup2",
        "filesystem",
        mounts::ensure_cgroup2().map(|p| p.display().to_string()).map_err(first_line),
    ));
    features.push(feature(
        "tracefs",
        "filesystem",
        mounts::ensure_tracefs().map(|p| p.display().to_string()).map_err(first_line),
    ));
    libbpf_rs::set_print(previous);

    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    let lockdown = mounts::lockdown_mode().ok().flatten();
    let capabilities = assess(&features);
    ProbeReport { kernel, lockdown, features, capabilities }
}

/// Maps features to a verdict per Weir capability. Pure.
pub fn assess(features: &[Feature]) -> Vec<CapabilityVerdict> {
    let has = |name: &str| features.iter().any(|f| f.name == name && f.available);
    let missing = |names: &[&str]| names.iter().filter(|n| !has(n)).map(|n| n.to_string()).collect::<Vec<_>>();
    let verdict = |capability: &'static str, required: &[&str], full_extras: &[(&str, &str)]| -> CapabilityVerdict {
        let absent = missing(required);
        if !absent.is_empty() {
            return CapabilityVerdict {
                capability,
                verdict: Verdict::Unavailable,
                detail: format!("needs {}", absent.join(", ")),
            };
        }
        let fallbacks: Vec<&str> =
            full_extras.iter().filter(|(feature, _)| !has(feature)).map(|(_, fallback)| *fallback).collect();
        if fallbacks.is_empty() {
            CapabilityVerdict { capability, verdict: Verdict::Full, detail: String::new() }
        } else {
            CapabilityVerdict { capability, verdict: Verdict::Fallback, detail: fallbacks.join("; ") }
        }
    };
    let tc = if has("tcx") { "tcx" } else { "clsact" };
    let exec_hook = ["tp-btf", "raw-tracepoint", "tracepoint"].into_iter().find(|f| has(f)).unwrap_or("tp-btf");
    vec![
        if has("xdp-native") {
            verdict("packet-filter", &["xdp-native"], &[])
        } else {
            verdict("packet-filter", &["xdp-generic"], &[("xdp-native", "generic XDP (correct, slower)")])
        },
        {
            let mut runtime = verdict(
                "runtime-security",
                &[exec_hook, "ringbuf", "helper-send-signal", "cgroup-connect4", "cgroup-sock-create", "helper-set-retval"],
                &[("bpf-lsm", "backend tracepoint (no BPF LSM): exec refused by bpf_send_signal at sched_process_exec, network operations with cgroup hooks; no fileOpen rules")],
            );
            if runtime.verdict == Verdict::Full {
                runtime.detail = "backend bpf-lsm: exec, file open and connect refused with an errno".into();
            }
            runtime
        },
        verdict(
            "service-lb",
            &["cgroup-connect4", "cgroup-sendmsg4", "cgroup-recvmsg4", "cgroup-getpeername4", tc],
            &[
                ("tcx", "NodePort via a clsact filter"),
                ("sock-destroy", "connected UDP sockets keep a removed backend until the application reconnects (no bpf_sock_destroy)"),
            ],
        ),
        verdict(
            "pod-networking",
            &[tc],
            &[
                ("tcx", "tc via a clsact filter"),
                ("helper-redirect-peer", "ingress through the host stack (no bpf_redirect_peer)"),
                ("helper-redirect-neigh", "egress through the host stack (no bpf_redirect_neigh)"),
            ],
        ),
        verdict("flow-visibility", &["ringbuf", tc], &[("tcx", "tc via a clsact filter")]),
        verdict(
            "multi-cluster",
            &["cgroup-connect4", tc],
            &[("tcx", "tc via a clsact filter"), ("helper-redirect-peer", "ingress through the host stack")],
        ),
        verdict("profiling", &["perf-event", "stack-trace-map"], &[]),
        verdict("chaos", &[tc, "cgroup-connect4", "helper-set-retval"], &[("tcx", "tc via a clsact filter")]),
        verdict("mesh-acceleration", &["sockops", "sk-msg"], &[]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(available: &[&'static str]) -> Vec<Feature> {
        available
            .iter()
            .map(|n| Feature { name: n, group: "program", available: true, detail: String::new() })
            .collect()
    }

    fn verdict_of(report: &[CapabilityVerdict], capability: &str) -> Verdict {
        report.iter().find(|c| c.capability == capability).map(|c| c.verdict).expect("capability assessed")
    }

    #[test]
    fn without_lsm_runtime_security_falls_back_to_signals_and_cgroup_hooks() {
        let report = assess(&features(&[
            "tp-btf",
            "ringbuf",
            "helper-send-signal",
            "cgroup-connect4",
            "cgroup-sock-create",
            "helper-set-retval",
        ]));
        let runtime = report.iter().find(|c| c.capability == "runtime-security").expect("assessed");
        assert_eq!(runtime.verdict, Verdict::Fallback);
        assert!(runtime.detail.contains("bpf_send_signal"));
    }

    #[test]
    fn generic_xdp_alone_is_a_fallback_and_no_xdp_is_unavailable() {
        assert_eq!(verdict_of(&assess(&features(&["xdp-generic"])), "packet-filter"), Verdict::Fallback);
        assert_eq!(verdict_of(&assess(&features(&["xdp-native"])), "packet-filter"), Verdict::Full);
        let none = assess(&[]);
        assert_eq!(verdict_of(&none, "packet-filter"), Verdict::Unavailable);
        assert!(none.iter().all(|c| c.verdict == Verdict::Unavailable));
    }

    #[test]
    fn clsact_stands_in_for_tcx() {
        let report = assess(&features(&["clsact", "helper-redirect-peer", "helper-redirect-neigh"]));
        let pods = report.iter().find(|c| c.capability == "pod-networking").expect("assessed");
        assert_eq!(pods.verdict, Verdict::Fallback);
        assert!(pods.detail.contains("clsact"));
    }
}
