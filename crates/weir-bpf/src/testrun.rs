//! The `BPF_PROG_TEST_RUN` fixture harness.
//!
//! A fixture is a table row: an input packet, the verdict the program must
//! return, and the packet it must leave behind. Every datapath capability
//! proves its parsing and rewriting with fixtures before it touches a real
//! interface, and `weir filter simulate`-style tooling reuses the runner.
//! Programs that rewrite packets run with repeat = 1: with more repeats the
//! kernel feeds the rewritten packet back in.

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::ProgramInput;

use crate::skel::node::{NodeSkel, NodeSkelBuilder};
use crate::BpfError;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The packet a fixture expects the program to leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedPacket {
    /// The program must not change a byte.
    Unchanged,
    /// The program must produce exactly these bytes.
    Bytes(Vec<u8>),
}

/// One row of a fixture table.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// What the row proves, in one sentence.
    pub name: String,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: ExpectedPacket,
}

impl Fixture {
    /// A row whose packet must come out unchanged with `verdict`.
    pub fn unchanged(name: impl Into<String>, input: Vec<u8>, verdict: u32) -> Self {
        Self { name: name.into(), input, verdict, output: ExpectedPacket::Unchanged }
    }
}

/// What one run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub verdict: u32,
    pub output: Vec<u8>,
    pub duration_ns: u64,
}

/// Makes `address` (IPv4 or IPv6) a local pod of a private node datapath
/// (fixtures, benchmarks).
pub fn set_endpoint(
    skel: &NodeSkel<'_>,
    address: impl Into<std::net::IpAddr>,
    endpoint: &crate::skel::node::types::weir_endpoint,
) -> Result<(), BpfError> {
    write_endpoint(&skel.maps.pod_endpoints, &skel.maps.pod_endpoints6, address.into(), endpoint)
}

/// [`set_endpoint`] for a node datapath loaded as a plain object (the
/// build without chaos, [`with_node_datapath_without_chaos`]).
pub fn set_object_endpoint(
    object: &libbpf_rs::Object,
    address: impl Into<std::net::IpAddr>,
    endpoint: &crate::skel::node::types::weir_endpoint,
) -> Result<(), BpfError> {
    let map = |name: &'static str| {
        object.maps().find(|m| libbpf_rs::MapCore::name(m) == std::ffi::OsStr::new(name)).ok_or_else(|| {
            BpfError::MapRead { map: name.to_string(), source: libbpf_rs::Error::from_raw_os_error(libc::ENOENT) }
        })
    };
    write_endpoint(&map("pod_endpoints")?, &map("pod_endpoints6")?, address.into(), endpoint)
}

fn write_endpoint<M: libbpf_rs::MapCore>(
    v4: &M,
    v6: &M,
    address: std::net::IpAddr,
    endpoint: &crate::skel::node::types::weir_endpoint,
) -> Result<(), BpfError> {
    let (map, key, name) = match address {
        std::net::IpAddr::V4(a) => (v4, a.octets().to_vec(), "pod_endpoints"),
        std::net::IpAddr::V6(a) => (v6, a.octets().to_vec(), "pod_endpoints6"),
    };
    map.update(&key, crate::api::bytes_of(endpoint), libbpf_rs::MapFlags::ANY).map_err(crate::error::map_error(name))
}

/// Runs `program` once over `packet`.
pub fn run_once(program: &libbpf_rs::ProgramMut<'_>, packet: &[u8]) -> Result<RunOutcome, BpfError> {
    run_repeated(program, packet, 1)
}

/// Runs `program` `repeat` times over `packet` and reports the mean duration.
/// Only for programs that do not rewrite the packet (see the module docs).
pub fn run_repeated(program: &libbpf_rs::ProgramMut<'_>, packet: &[u8], repeat: u32) -> Result<RunOutcome, BpfError> {
    run_on(program, packet, repeat, 0)
}

/// `struct __sk_buff` up to `ingress_ifindex` (bytes 36..40): the kernel
/// takes a shorter context and zero-fills the rest.
const SKB_CTX_INGRESS_IFINDEX: usize = 36;

/// A tc program run over `packet` as if it arrived on interface
/// `ingress_ifindex` (0: as BPF_PROG_TEST_RUN does by default).
pub fn run_on(
    program: &libbpf_rs::ProgramMut<'_>,
    packet: &[u8],
    repeat: u32,
    ingress_ifindex: u32,
) -> Result<RunOutcome, BpfError> {
    let mut ctx = [0u8; SKB_CTX_INGRESS_IFINDEX + 4];
    ctx[SKB_CTX_INGRESS_IFINDEX..].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    run_with_context(program, packet, repeat, (ingress_ifindex != 0).then_some(&mut ctx[..]))
}

/// An XDP program run once over `packet` as if it arrived on interface
/// `ingress_ifindex` of the calling thread's network namespace (its queue
/// 0): helpers that ask the kernel about the receiving interface (the FIB
/// lookup's routes and neighbours) answer for that interface.
pub fn run_xdp_on(
    program: &libbpf_rs::ProgramMut<'_>,
    packet: &[u8],
    ingress_ifindex: u32,
) -> Result<RunOutcome, BpfError> {
    let mut ctx = [0u8; XDP_MD_LEN];
    ctx[XDP_MD_DATA_END..XDP_MD_DATA_END + 4].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
    ctx[XDP_MD_INGRESS_IFINDEX..XDP_MD_INGRESS_IFINDEX + 4].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    run_with_context(program, packet, 1, Some(&mut ctx[..]))
}

/// `struct xdp_md`: data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex (the kernel wants data_end to be the
/// packet's length, data 0).
const XDP_MD_LEN: usize = 24;
const XDP_MD_DATA_END: usize = 4;
const XDP_MD_INGRESS_IFINDEX: usize = 12;

/// `struct __sk_buff`'s `mark` (bytes 8..12).
const SKB_CTX_MARK: usize = 8;

/// A tc program run once over `packet` carrying socket mark `mark`.
pub fn run_marked(program: &libbpf_rs::ProgramMut<'_>, packet: &[u8], mark: u32) -> Result<RunOutcome, BpfError> {
    let mut ctx = [0u8; SKB_CTX_MARK + 4];
    ctx[SKB_CTX_MARK..].copy_from_slice(&mark.to_ne_bytes());
    run_with_context(program, packet, 1, Some(&mut ctx[..]))
}

fn run_with_context(
    program: &libbpf_rs::ProgramMut<'_>,
    packet: &[u8],
    repeat: u32,
    context_in: Option<&mut [u8]>,
) -> Result<RunOutcome, BpfError> {
    // Room for programs that grow the packet (encapsulation adds headers).
    let mut out = vec![0u8; packet.len() + 256];
    let input =
        ProgramInput { data_in: Some(packet), data_out: Some(&mut out), context_in, repeat, ..Default::default() };
    let result = program
        .test_run(input)
        .map_err(|source| BpfError::TestRun { program: program.name().to_string_lossy().into_owned(), source })?;
    let verdict = result.return_value;
    let duration_ns = result.duration.as_nanos() as u64;
    let output = result.data.map(|d| d.to_vec()).unwrap_or_default();
    Ok(RunOutcome { verdict, output, duration_ns })
}

/// Median nanoseconds per packet over `rounds` runs of `repeat` repetitions,
/// from wall time: the kernel's own figure is rounded to whole nanoseconds,
/// too coarse at this scale. For benchmarks of programs that do not rewrite.
pub fn ns_per_packet(
    program: &libbpf_rs::ProgramMut<'_>,
    packet: &[u8],
    repeat: u32,
    rounds: usize,
) -> Result<f64, BpfError> {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let start = std::time::Instant::now();
        run_repeated(program, packet, repeat)?;
        samples.push(start.elapsed().as_nanos() as f64 / f64::from(repeat.max(1)));
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Runs every fixture and returns one message per failing row (empty: all passed).
pub fn check(program: &libbpf_rs::ProgramMut<'_>, fixtures: &[Fixture]) -> Result<Vec<String>, BpfError> {
    let mut failures = Vec::new();
    for fixture in fixtures {
        let got = run_once(program, &fixture.input)?;
        if got.verdict != fixture.verdict {
            failures.push(format!(
                "{}: verdict {} (want {})",
                fixture.name,
                verdict_name(got.verdict),
                verdict_name(fixture.verdict)
            ));
            continue;
        }
        let want = match &fixture.output {
            ExpectedPacket::Unchanged => &fixture.input,
            ExpectedPacket::Bytes(bytes) => bytes,
        };
        if &got.output != want {
            failures.push(format!(
                "{}: output packet differs\n  got  {}\n  want {}",
                fixture.name,
                hex(&got.output),
                hex(want)
            ));
        }
    }
    Ok(failures)
}

/// The XDP name of a verdict, for messages.
pub fn verdict_name(verdict: u32) -> String {
    match verdict {
        XDP_ABORTED => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        other => format!("verdict {other}"),
    }
}

/// Bytes as lowercase hex, for readable packet comparisons in assertions.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads a private copy of the node datapath (nothing pinned or attached) and
/// hands it to `work`, for fixture runs and their counter checks.
pub fn with_node_datapath<T>(work: impl FnOnce(&NodeSkel<'_>) -> T) -> Result<T, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let open =
        NodeSkelBuilder::default().open(&mut storage).map_err(|source| BpfError::Open { object: "node", source })?;
    let skel = open.load().map_err(|source| BpfError::Load { object: "node", source })?;
    Ok(work(&skel))
}

/// The node datapath compiled with `-DWEIR_NO_CHAOS` (build.rs): the
/// baseline of the chaos cost benchmark. Nothing else loads it.
const NODE_WITHOUT_CHAOS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/node_nochaos.bpf.o"));

/// Loads a private copy of the node datapath built without chaos (nothing
/// pinned or attached; no chaos maps, no chaos programs, no `chaos_check`
/// on the pod path) and hands it to `work`. Its programs and maps have the
/// names of [`with_node_datapath`]'s.
pub fn with_node_datapath_without_chaos<T>(work: impl FnOnce(&libbpf_rs::Object) -> T) -> Result<T, BpfError> {
    let open = libbpf_rs::ObjectBuilder::default()
        .open_memory(NODE_WITHOUT_CHAOS)
        .map_err(|source| BpfError::Open { object: "node without chaos", source })?;
    let object = open.load().map_err(|source| BpfError::Load { object: "node without chaos", source })?;
    Ok(work(&object))
}

/// The program called `name` of a plain object.
pub fn object_program<'obj>(object: &'obj libbpf_rs::Object, name: &str) -> Option<libbpf_rs::ProgramMut<'obj>> {
    object.progs_mut().find(|p| p.name() == std::ffi::OsStr::new(name))
}

/// Loads the baseline every cost is measured against, an XDP program that
/// only returns XDP_PASS, and hands it to `work`.
pub fn with_trivial_xdp<T>(work: impl FnOnce(&libbpf_rs::ProgramMut<'_>) -> T) -> Result<T, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let mut open = crate::skel::probe::ProbeSkelBuilder::default()
        .open(&mut storage)
        .map_err(|source| BpfError::Open { object: "probe", source })?;
    for mut prog in open.open_object_mut().progs_mut() {
        let keep = prog.name() == "probe_xdp";
        prog.set_autoload(keep);
    }
    let skel = open.load().map_err(|source| BpfError::Load { object: "probe", source })?;
    Ok(work(&skel.progs.probe_xdp))
}

/// Sends `frame` out of interface `ifindex` (of the calling thread's network
/// namespace) `count` times as XDP frames, via BPF_PROG_TEST_RUN in
/// live-frames mode; returns how long it took. For benchmarks and chaos.
pub fn send_live_frames(ifindex: u32, frame: &[u8], count: u32) -> Result<std::time::Duration, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let mut open = crate::skel::trafficgen::TrafficgenSkelBuilder::default()
        .open(&mut storage)
        .map_err(|source| BpfError::Open { object: "trafficgen", source })?;
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata.weir_trafficgen_ifindex = ifindex;
    }
    let skel = open.load().map_err(|source| BpfError::Load { object: "trafficgen", source })?;
    let mut ctx = libbpf_sys::xdp_md { data_end: frame.len() as u32, ..Default::default() };
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: frame.as_ptr().cast(),
        data_size_in: frame.len() as u32,
        ctx_in: (&mut ctx as *mut libbpf_sys::xdp_md).cast(),
        ctx_size_in: std::mem::size_of::<libbpf_sys::xdp_md>() as u32,
        repeat: i32::try_from(count).unwrap_or(i32::MAX),
        flags: libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    use std::os::fd::{AsFd, AsRawFd};
    let start = std::time::Instant::now();
    // SAFETY: frame, ctx and opts outlive the call; sizes are given.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(skel.progs.weir_trafficgen.as_fd().as_raw_fd(), &mut opts) };
    if rc != 0 {
        return Err(BpfError::TestRun {
            program: "weir_trafficgen".into(),
            source: libbpf_rs::Error::from_raw_os_error(-rc),
        });
    }
    Ok(start.elapsed())
}

/// Loads the filter benchmark's baselines (`bpf/progs/bench.bpf.c`): a
/// trivial XDP_PASS program and the floor program, which parses and makes
/// one hash lookup in `bench_keys`, and hands them to `work`.
pub fn with_bench_programs<T>(work: impl FnOnce(&crate::skel::bench::BenchSkel<'_>) -> T) -> Result<T, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let open = crate::skel::bench::BenchSkelBuilder::default()
        .open(&mut storage)
        .map_err(|source| BpfError::Open { object: "bench", source })?;
    let skel = open.load().map_err(|source| BpfError::Load { object: "bench", source })?;
    Ok(work(&skel))
}

/// Puts `key` into the floor program's map, as the filter would store it
/// under shape 0 (ports in host order, as `weir_filter::compile::Key` has them),
/// with XDP_DROP as its value: a packet the floor finds is dropped, so a
/// benchmark can tell that its hit really hit.
pub fn insert_floor_key(
    skel: &crate::skel::bench::BenchSkel<'_>,
    key: &weir_filter::compile::Key,
) -> Result<(), BpfError> {
    use libbpf_rs::MapCore;
    let value = crate::filter::key_value(0, key);
    skel.maps
        .bench_keys
        .update(crate::api::bytes_of(&value), &XDP_DROP.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        .map_err(crate::error::map_error("bench_keys"))
}
