//! The packet filter's maps: executing planned writes, reading counters,
//! switching the XDP entry between the node program and an expression
//! program, and simulating a packet on a private copy of the datapath.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};
use weir_filter::compile::{Key, RuleEntry, Shape};
use weir_filter::index::{AddrField, Prefix};
use weir_filter::plan::Op;

use crate::api::{bytes_of, Counter};
use crate::datapath::{read_counter_array, read_counters, PinLayout};
use crate::error::map_error;
use crate::skel::node::types;
use crate::skel::node::NodeSkelBuilder;
use crate::BpfError;

/// Maps that define the rules; a simulation copy shares these with the live
/// datapath. If any of them starts afresh (first start, reboot, a layout
/// change), the rules must be written again.
pub const RULE_MAPS: [&str; 12] = [
    "filter_config",
    "filter_shapes",
    "filter_keys",
    "filter_rules",
    "filter_src4_blocks",
    "filter_dst4_blocks",
    "filter_src4",
    "filter_src6",
    "filter_dst4",
    "filter_dst6",
    "filter_port_shapes",
    "filter_proto_shapes",
];

/// How long packets that read the old generation may still be walking rules.
const GRACE: Duration = Duration::from_millis(2);

/// The generated layout of a trace event.
pub type Event = types::weir_filter_event;

fn words(bytes: &[u8; 16]) -> [u32; 4] {
    // Addresses and masks are big-endian bytes in memory, as in the packet.
    std::array::from_fn(|i| u32::from_ne_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]))
}

fn be16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

fn shape_value(shape: &Shape, best_rank: u64) -> types::weir_filter_shape {
    let (src, dst) = shape.masks();
    types::weir_filter_shape {
        family: shape.family,
        fields: shape.fields,
        src_mask: words(&src),
        dst_mask: words(&dst),
        best_rank,
        ..Default::default()
    }
}

/// The key exactly as the datapath builds it from a packet.
pub(crate) fn key_value(shape: u32, key: &Key) -> types::weir_filter_key {
    types::weir_filter_key {
        shape,
        ifindex: key.ifindex,
        family: key.family,
        proto: key.proto,
        sport: be16(key.sport),
        dport: be16(key.dport),
        src: words(&key.src),
        dst: words(&key.dst),
        ..Default::default()
    }
}

fn rule_value(entry: &RuleEntry, generations: u8, next: u32) -> types::weir_filter_rule {
    let bytes = entry.bytes.map(|b| types::weir_filter_bytes {
        base: b.base,
        len: b.len,
        offset: b.offset,
        value: b.value,
        mask: b.mask,
    });
    types::weir_filter_rule {
        rank: entry.rank,
        next,
        generations,
        action: entry.action,
        per_source: u8::from(entry.per_source),
        fragment: entry.fragment,
        checks: entry.checks,
        tcp_flags_mask: entry.tcp_flags_mask,
        tcp_flags_value: entry.tcp_flags_value,
        sport_lo: entry.sport.0,
        sport_hi: entry.sport.1,
        dport_lo: entry.dport.0,
        dport_hi: entry.dport.1,
        len_min: entry.length.0,
        len_max: entry.length.1,
        icmp_type: entry.icmp_type,
        icmp_code: entry.icmp_code,
        ttl_min: entry.ttl.0,
        ttl_max: entry.ttl.1,
        ip_options: entry.ip_options,
        bytes,
        token_cost_ns: entry.token_cost_ns,
        bucket_ns: entry.bucket_ns,
        ..Default::default()
    }
}

/// An address index's key: prefix length, then the family's address bytes.
fn prefix_key(prefix: &Prefix) -> Vec<u8> {
    let bytes = if prefix.family == 4 { 4 } else { 16 };
    let mut key = u32::from(prefix.len).to_ne_bytes().to_vec();
    key.extend_from_slice(&prefix.addr[..bytes]);
    key
}

/// The filter's pinned maps.
#[derive(Debug)]
pub struct FilterMaps {
    config: MapHandle,
    shapes: MapHandle,
    keys: MapHandle,
    rules: MapHandle,
    src4_blocks: MapHandle,
    dst4_blocks: MapHandle,
    src4: MapHandle,
    src6: MapHandle,
    dst4: MapHandle,
    dst6: MapHandle,
    port_shapes: MapHandle,
    proto_shapes: MapHandle,
    counters: MapHandle,
    buckets: MapHandle,
    drops: MapHandle,
    events: MapHandle,
    events_lost: MapHandle,
}

impl FilterMaps {
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self {
            config: pins.open_map("filter_config")?,
            shapes: pins.open_map("filter_shapes")?,
            keys: pins.open_map("filter_keys")?,
            rules: pins.open_map("filter_rules")?,
            src4_blocks: pins.open_map("filter_src4_blocks")?,
            dst4_blocks: pins.open_map("filter_dst4_blocks")?,
            src4: pins.open_map("filter_src4")?,
            src6: pins.open_map("filter_src6")?,
            dst4: pins.open_map("filter_dst4")?,
            dst6: pins.open_map("filter_dst6")?,
            port_shapes: pins.open_map("filter_port_shapes")?,
            proto_shapes: pins.open_map("filter_proto_shapes")?,
            counters: pins.open_map("filter_counters")?,
            buckets: pins.open_map("filter_buckets")?,
            drops: pins.open_map("drops")?,
            events: pins.open_map("filter_events")?,
            events_lost: pins.open_map("filter_events_lost")?,
        })
    }

    /// The maps of a loaded (possibly private, unpinned) node datapath.
    pub fn from_skel(skel: &crate::skel::node::NodeSkel<'_>) -> Result<Self, BpfError> {
        let handle = |map: &libbpf_rs::MapMut<'_>| MapHandle::try_from(&**map).map_err(map_error("node datapath"));
        let maps = &skel.maps;
        Ok(Self {
            config: handle(&maps.filter_config)?,
            shapes: handle(&maps.filter_shapes)?,
            keys: handle(&maps.filter_keys)?,
            rules: handle(&maps.filter_rules)?,
            src4_blocks: handle(&maps.filter_src4_blocks)?,
            dst4_blocks: handle(&maps.filter_dst4_blocks)?,
            src4: handle(&maps.filter_src4)?,
            src6: handle(&maps.filter_src6)?,
            dst4: handle(&maps.filter_dst4)?,
            dst6: handle(&maps.filter_dst6)?,
            port_shapes: handle(&maps.filter_port_shapes)?,
            proto_shapes: handle(&maps.filter_proto_shapes)?,
            counters: handle(&maps.filter_counters)?,
            buckets: handle(&maps.filter_buckets)?,
            drops: handle(&maps.drops)?,
            events: handle(&maps.filter_events)?,
            events_lost: handle(&maps.filter_events_lost)?,
        })
    }

    fn config(&self) -> Result<types::weir_filter_config, BpfError> {
        let bytes = self
            .config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error("filter_config"))?
            .unwrap_or_default();
        let mut config = types::weir_filter_config::default();
        if bytes.len() >= std::mem::size_of::<types::weir_filter_config>() {
            // SAFETY: the buffer holds a whole config value of the generated layout.
            config = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        }
        Ok(config)
    }

    fn write_config(&self, config: &types::weir_filter_config) -> Result<(), BpfError> {
        self.config.update(&0u32.to_ne_bytes(), bytes_of(config), MapFlags::ANY).map_err(map_error("filter_config"))
    }

    /// The live generation, as the kernel holds it.
    pub fn active_generation(&self) -> Result<u8, BpfError> {
        Ok((self.config()?.active & 1) as u8)
    }

    /// Performs planned writes in order.
    pub fn execute(&self, ops: &[Op]) -> Result<(), BpfError> {
        let cpus = libbpf_rs::num_possible_cpus()
            .map_err(|source| BpfError::MapRead { map: "possible CPUs".into(), source })?;
        for op in ops {
            match op {
                Op::Shape { id, shape, best_rank } => self
                    .shapes
                    .update(&id.to_ne_bytes(), bytes_of(&shape_value(shape, *best_rank)), MapFlags::ANY)
                    .map_err(map_error("filter_shapes"))?,
                Op::ResetSlot { slot } => {
                    let zero = vec![vec![0u8; std::mem::size_of::<Counter>()]; cpus];
                    self.counters
                        .update_percpu(&slot.to_ne_bytes(), &zero, MapFlags::ANY)
                        .map_err(map_error("filter_counters"))?;
                    let bucket = types::weir_filter_bucket::default();
                    self.buckets
                        .update(&slot.to_ne_bytes(), bytes_of(&bucket), MapFlags::ANY)
                        .map_err(map_error("filter_buckets"))?;
                }
                Op::Rule { rule, generations, next } => self
                    .rules
                    .update(
                        &rule.slot.to_ne_bytes(),
                        bytes_of(&rule_value(&rule.compiled.entry, *generations, *next)),
                        MapFlags::ANY,
                    )
                    .map_err(map_error("filter_rules"))?,
                Op::Key { rule, head } => {
                    // The planner writes keys of map-backed rules only.
                    if let Some((shape, key)) = rule.map_key() {
                        self.keys
                            .update(bytes_of(&key_value(shape, &key)), &head.to_ne_bytes(), MapFlags::ANY)
                            .map_err(map_error("filter_keys"))?
                    }
                }
                Op::DeleteKey { rule } => {
                    if let Some((shape, key)) = rule.map_key() {
                        let _ = self.keys.delete(bytes_of(&key_value(shape, &key)));
                    }
                }
                Op::Config { active, shapes, open, rules } => {
                    let mut config = self.config()?;
                    config.active = u32::from(*active);
                    config.rules = *rules;
                    config.shapes = *shapes;
                    config.any_src = open.source;
                    config.any_dst = open.destination;
                    config.any_proto = open.protocol;
                    config.any_sport = open.source_port;
                    config.any_dport = open.destination_port;
                    self.write_config(&config)?;
                }
                Op::IndexPrefix { prefix, shapes } => {
                    let (map, name) = match (prefix.field, prefix.family) {
                        (AddrField::Source, 4) => (&self.src4, "filter_src4"),
                        (AddrField::Source, _) => (&self.src6, "filter_src6"),
                        (AddrField::Destination, 4) => (&self.dst4, "filter_dst4"),
                        (AddrField::Destination, _) => (&self.dst6, "filter_dst6"),
                    };
                    let key = prefix_key(prefix);
                    match shapes {
                        Some(shapes) => {
                            map.update(&key, &shapes.to_ne_bytes(), MapFlags::ANY).map_err(map_error(name))?
                        }
                        // Already gone is what was wanted.
                        None => {
                            let _ = map.delete(&key);
                        }
                    }
                }
                Op::IndexBlock { field, block, shapes } => {
                    let (map, name) = match field {
                        AddrField::Source => (&self.src4_blocks, "filter_src4_blocks"),
                        AddrField::Destination => (&self.dst4_blocks, "filter_dst4_blocks"),
                    };
                    map.update(&u32::from(*block).to_ne_bytes(), &shapes.to_ne_bytes(), MapFlags::ANY)
                        .map_err(map_error(name))?
                }
                Op::IndexPort { port, shapes } => {
                    let value = types::weir_filter_port_shapes { sport: shapes.0, dport: shapes.1 };
                    self.port_shapes
                        .update(&u32::from(*port).to_ne_bytes(), bytes_of(&value), MapFlags::ANY)
                        .map_err(map_error("filter_port_shapes"))?
                }
                Op::IndexProtocol { protocol, shapes } => self
                    .proto_shapes
                    .update(&u32::from(*protocol).to_ne_bytes(), &shapes.to_ne_bytes(), MapFlags::ANY)
                    .map_err(map_error("filter_proto_shapes"))?,
                Op::ClearRule { slot } => {
                    let empty = types::weir_filter_rule::default();
                    self.rules
                        .update(&slot.to_ne_bytes(), bytes_of(&empty), MapFlags::ANY)
                        .map_err(map_error("filter_rules"))?;
                }
                Op::Grace => std::thread::sleep(GRACE),
            }
        }
        Ok(())
    }

    /// Packets and bytes matched by each slot, summed over CPUs.
    pub fn counters(&self, slots: &[u32]) -> Result<Vec<Counter>, BpfError> {
        read_counters(&self.counters, slots.iter().copied())
    }

    /// Dropped packets by `api::drop_reason` code.
    pub fn drops(&self) -> Result<Vec<Counter>, BpfError> {
        read_counter_array(&self.drops, crate::api::drop_reason::COUNT)
    }

    /// Turns sampled trace events on (one packet in `every`) or off.
    pub fn set_trace(&self, on: bool, every: u32) -> Result<(), BpfError> {
        let mut config = self.config()?;
        config.trace = u32::from(on);
        config.trace_every = every.max(1);
        self.write_config(&config)
    }

    /// Trace events lost to a full ring buffer.
    pub fn events_lost(&self) -> Result<u64, BpfError> {
        crate::error::percpu_u64_sum(&self.events_lost, 0, "filter_events_lost")
    }

    /// Calls `on_event` for every trace event until `until` returns true.
    pub fn consume_events(
        &self,
        mut until: impl FnMut() -> bool,
        mut on_event: impl FnMut(&Event, &[u8]),
    ) -> Result<(), BpfError> {
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(&self.events, |raw: &[u8]| {
                if raw.len() >= std::mem::size_of::<Event>() {
                    // SAFETY: a whole event of the generated layout.
                    let event: Event = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
                    let captured = usize::from(event.captured).min(event.data.len());
                    let data: Vec<u8> = event.data[..captured].to_vec();
                    on_event(&event, &data);
                }
                0
            })
            .map_err(map_error("filter_events"))?;
        let ring = builder.build().map_err(map_error("filter_events"))?;
        while !until() {
            ring.poll(Duration::from_millis(100)).map_err(map_error("filter_events"))?;
        }
        Ok(())
    }
}

/// Loads a generated expression program, bound to a datapath's expression
/// result map and tail-call array.
pub fn load_expressions(
    program: &weir_filter::expr::Program,
    result_map: BorrowedFd<'_>,
    tail_calls: BorrowedFd<'_>,
) -> Result<OwnedFd, BpfError> {
    load_expressions_on(program, result_map, tail_calls, None)
}

/// As `load_expressions`; with `device`, bound to that interface index, as
/// the device's metadata kfuncs require (such a program runs only there).
fn load_expressions_on(
    program: &weir_filter::expr::Program,
    result_map: BorrowedFd<'_>,
    tail_calls: BorrowedFd<'_>,
    device: Option<u32>,
) -> Result<OwnedFd, BpfError> {
    let mut instructions: Vec<libbpf_sys::bpf_insn> = program
        .insns
        .iter()
        .map(|i| {
            let mut out = libbpf_sys::bpf_insn { code: i.code, off: i.off, imm: i.imm, ..Default::default() };
            out.set_dst_reg(i.regs & 0x0f);
            out.set_src_reg(i.regs >> 4);
            out
        })
        .collect();
    for (at, which) in &program.maps {
        let fd = match which {
            weir_filter::expr::MapRef::Result => result_map.as_raw_fd(),
            weir_filter::expr::MapRef::TailCalls => tail_calls.as_raw_fd(),
        };
        if let Some(ins) = instructions.get_mut(*at) {
            ins.imm = fd;
        }
    }
    load_xdp_instructions(crate::datapath::EXPRESSION_PROGRAM, &instructions, device)
}

/// The BTF id of the kernel's `bpf_xdp_metadata_rx_vlan_tag` kfunc (Linux
/// 6.8 and later); None where the kernel lacks it.
pub fn rx_vlan_tag_kfunc() -> Option<u32> {
    // SAFETY: libbpf parses the kernel's BTF into an object freed below.
    let btf = unsafe { libbpf_sys::btf__load_vmlinux_btf() };
    if btf.is_null() {
        return None;
    }
    let name = c"bpf_xdp_metadata_rx_vlan_tag";
    // SAFETY: btf is valid until freed; name is NUL-terminated.
    let id = unsafe { libbpf_sys::btf__find_by_name_kind(btf, name.as_ptr(), libbpf_sys::BTF_KIND_FUNC) };
    // SAFETY: btf came from btf__load_vmlinux_btf and is not used again.
    unsafe { libbpf_sys::btf__free(btf) };
    u32::try_from(id).ok().filter(|id| *id > 0)
}

/// Loads raw instructions as an XDP program. Verification runs without a log
/// (logging slows it several times); a failure is retried with one, to report
/// the verifier's last words.
fn load_xdp_instructions(
    name: &str,
    instructions: &[libbpf_sys::bpf_insn],
    device: Option<u32>,
) -> Result<OwnedFd, BpfError> {
    let c_name = std::ffi::CString::new(name).unwrap_or_default();
    let license = c"GPL";
    let load = |log: &mut [u8], level: u32| {
        let mut opts = libbpf_sys::bpf_prog_load_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
            log_buf: if log.is_empty() { std::ptr::null_mut() } else { log.as_mut_ptr().cast() },
            log_size: log.len() as u32,
            log_level: level,
            // Tail calls need matching attach types; libbpf loads SEC("xdp") as BPF_XDP.
            expected_attach_type: libbpf_sys::BPF_XDP,
            prog_ifindex: device.unwrap_or(0),
            prog_flags: if device.is_some() { libbpf_sys::BPF_F_XDP_DEV_BOUND_ONLY } else { 0 },
            ..Default::default()
        };
        // SAFETY: instructions, name, license and the log buffer outlive the call.
        unsafe {
            libbpf_sys::bpf_prog_load(
                libbpf_sys::BPF_PROG_TYPE_XDP,
                c_name.as_ptr(),
                license.as_ptr(),
                instructions.as_ptr(),
                instructions.len() as _,
                &mut opts,
            )
        }
    };
    let mut fd = load(&mut [], 0);
    if fd < 0 {
        let mut log = vec![0u8; 1 << 20];
        fd = load(&mut log, 1);
        if fd < 0 {
            let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            return Err(BpfError::Query {
                what: format!(
                    "loading the expression program (verifier: {})",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
                source: std::io::Error::from_raw_os_error(-fd),
            });
        }
    }
    // SAFETY: a new program fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `install_entry` put in front of the node program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryReport {
    /// Interfaces whose entry program sees 802.1Q tags the kernel took out of frames.
    pub vlan_aware: Vec<String>,
    /// Interfaces where it could not, and why.
    pub vlan_blind: Vec<(String, String)>,
}

/// Puts the expression program for `expressions` (slot, classic program, in
/// rank order) in front of every pinned XDP link, atomically per link.
///
/// On a link in native mode, where the kernel has the rx VLAN tag kfunc, the
/// program is loaded bound to the link's device and asks it for the frame's
/// offloaded tag; this happens even without expressions, so that field
/// rules weigh a tagged frame's wire length. Elsewhere (generic XDP, older
/// kernels, kernels that refuse a device-bound program's tail call) a plain
/// program runs, or the node program itself when there are no expressions.
pub fn install_entry(
    pins: &PinLayout,
    expressions: &[(u32, Vec<weir_filter::pcap::ClassicInsn>)],
) -> Result<EntryReport, BpfError> {
    let node = libbpf_rs::Program::fd_from_pinned_path(pins.progs().join("weir_node_ingress"))
        .map_err(|source| BpfError::OpenPinned { path: pins.progs(), source })?;
    set_tail_call_target(pins)?;
    let (result, tail_calls) = expression_map_fds(pins)?;
    let generate = |kfunc| {
        weir_filter::expr::generate(expressions, kfunc).map_err(|message| BpfError::Query {
            what: format!("generating the expression program: {message}"),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })
    };
    let plain = if expressions.is_empty() {
        None
    } else {
        Some(load_expressions_on(&generate(None)?, result.as_fd(), tail_calls.as_fd(), None)?)
    };
    let kfunc = rx_vlan_tag_kfunc();
    let tagged = match kfunc {
        Some(id) => Some(generate(Some(id))?),
        None => None,
    };
    let mut report = EntryReport::default();
    for link_path in std::fs::read_dir(pins.links())
        .map_err(|source| BpfError::PinDir { path: pins.links(), source })?
        .flatten()
        .map(|e| e.path())
    {
        let Some(interface) =
            link_path.file_name().and_then(|n| n.to_string_lossy().strip_prefix("xdp@").map(str::to_string))
        else {
            continue;
        };
        let link = Link::open(&link_path).map_err(|source| BpfError::OpenPinned { path: link_path.clone(), source })?;
        let ifindex = match libbpf_rs::query::LinkInfo::from_fd(link.as_fd()).map(|i| i.info) {
            Ok(libbpf_rs::query::LinkTypeInfo::Xdp(xdp)) => xdp.ifindex,
            _ => 0,
        };
        let mut bound = None;
        match (&tagged, ifindex) {
            (None, _) => report.vlan_blind.push((interface.clone(), "the kernel has no rx VLAN tag kfunc".into())),
            (Some(_), 0) => report.vlan_blind.push((interface.clone(), "its link has no interface".into())),
            (Some(_), index) if crate::datapath::xdp_mode(index) == crate::datapath::AttachMode::XdpGeneric => {
                report.vlan_blind.push((interface.clone(), "generic XDP has no device metadata".into()))
            }
            (Some(program), index) => {
                match load_expressions_on(program, result.as_fd(), tail_calls.as_fd(), Some(index)) {
                    Ok(fd) => bound = Some(fd),
                    Err(err) => report.vlan_blind.push((interface.clone(), format!("a device-bound program: {err}"))),
                }
            }
        }
        let target = match (&bound, &plain) {
            (Some(fd), _) | (None, Some(fd)) => fd.as_fd(),
            (None, None) => node.as_fd(),
        };
        // SAFETY: both fds are valid for the call; null opts means a plain update.
        let rc = unsafe { libbpf_sys::bpf_link_update(link.as_fd().as_raw_fd(), target.as_raw_fd(), std::ptr::null()) };
        if rc != 0 {
            return Err(BpfError::Query {
                what: format!("switching the XDP program of {}", link_path.display()),
                source: std::io::Error::from_raw_os_error(-rc),
            });
        }
        if bound.is_some() {
            report.vlan_aware.push(interface);
        }
    }
    Ok(report)
}

/// Points the expression program's tail call at the pinned node program.
pub fn set_tail_call_target(pins: &PinLayout) -> Result<(), BpfError> {
    let node = libbpf_rs::Program::fd_from_pinned_path(pins.progs().join("weir_node_ingress"))
        .map_err(|source| BpfError::OpenPinned { path: pins.progs(), source })?;
    let progs = pins.open_map("filter_progs")?;
    progs.update(&0u32.to_ne_bytes(), &node.as_raw_fd().to_ne_bytes(), MapFlags::ANY).map_err(map_error("filter_progs"))
}

/// The fds an expression program refers to: (expression result map, tail-call array).
pub fn expression_map_fds(pins: &PinLayout) -> Result<(MapHandle, MapHandle), BpfError> {
    Ok((pins.open_map("filter_expr_result")?, pins.open_map("filter_progs")?))
}

/// Loads an expression program bound to a datapath's (expression result map, tail-call array).
pub type ExpressionLoader<'a> = &'a dyn Fn(BorrowedFd<'_>, BorrowedFd<'_>) -> Result<OwnedFd, BpfError>;

/// The outcome of a simulated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// XDP verdict.
    pub verdict: u32,
    /// The deciding rule's slot; None when no rule matched.
    pub slot: Option<u32>,
}

/// The outcomes of packets run through one private copy of the datapath.
#[derive(Debug)]
pub struct Simulation {
    /// The kernel's id of the node program copy every packet ran through:
    /// one load and one verification for all of them.
    pub program_id: u32,
    /// One per packet, in order; a packet the kernel refused to run has its error.
    pub decisions: Vec<Result<Decision, BpfError>>,
}

/// What `filter_decision` holds before a packet runs: no decision yet.
const UNDECIDED: u64 = u64::MAX;

/// Runs each of `packets` through one private copy of the node datapath
/// that shares the live rule maps but counts nothing live; the copy is
/// loaded (and verified) once for all of them. `expression` builds the
/// expression program for the copy, given its (result map, tail-call array).
pub fn simulate(
    pins: &PinLayout,
    packets: &[Vec<u8>],
    expression: Option<ExpressionLoader<'_>>,
) -> Result<Simulation, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let mut open_skel =
        NodeSkelBuilder::default().open(&mut storage).map_err(|source| BpfError::Open { object: "node", source })?;
    for mut map in open_skel.open_object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if RULE_MAPS.contains(&name.as_str()) {
            let path = pins.maps().join(&name);
            map.reuse_pinned_map(&path).map_err(|source| BpfError::OpenPinned { path, source })?;
        }
    }
    if let Some(rodata) = open_skel.maps.rodata_data.as_deref_mut() {
        rodata.weir_filter_record_decision = 1;
    }
    let skel = open_skel.load().map_err(|source| BpfError::Load { object: "node (simulation copy)", source })?;
    let node_fd = skel.progs.weir_node_ingress.as_fd();
    let program_id = program_id(node_fd)?;
    let expression_program = match expression {
        Some(build) => {
            skel.maps
                .filter_progs
                .update(&0u32.to_ne_bytes(), &node_fd.as_raw_fd().to_ne_bytes(), MapFlags::ANY)
                .map_err(map_error("filter_progs"))?;
            Some(build(skel.maps.filter_expr_result.as_fd(), skel.maps.filter_progs.as_fd())?)
        }
        None => None,
    };
    let entry = expression_program.as_ref().map_or(node_fd, |fd| fd.as_fd());
    let decision_map = &skel.maps.filter_decision;
    let zero = 0u32.to_ne_bytes();
    let decisions = packets
        .iter()
        .map(|packet| {
            // A packet the node program never judges must not inherit the last one's decision.
            decision_map
                .update(&zero, &UNDECIDED.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_error("filter_decision"))?;
            let verdict = test_run_fd(entry, packet)?;
            let raw = decision_map
                .lookup(&zero, MapFlags::ANY)
                .map_err(map_error("filter_decision"))?
                .and_then(|b| b.get(..8).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0xff; 8]))))
                .unwrap_or(UNDECIDED);
            let slot = if raw == UNDECIDED { weir_filter::compile::NO_RULE } else { (raw >> 32) as u32 };
            Ok(Decision { verdict, slot: (slot != weir_filter::compile::NO_RULE).then_some(slot) })
        })
        .collect();
    Ok(Simulation { program_id, decisions })
}

/// The kernel's id of a loaded program.
fn program_id(program: BorrowedFd<'_>) -> Result<u32, BpfError> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: info and len are valid for writes and len is info's size.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(program.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(BpfError::Query {
            what: "the simulation copy's program id".into(),
            source: std::io::Error::from_raw_os_error(-rc),
        });
    }
    Ok(info.id)
}

/// Runs one packet through a program given by fd; returns its verdict.
pub fn run_program_once(program: BorrowedFd<'_>, packet: &[u8]) -> Result<u32, BpfError> {
    test_run_fd(program, packet)
}

fn test_run_fd(program: BorrowedFd<'_>, packet: &[u8]) -> Result<u32, BpfError> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: packet.as_ptr().cast(),
        data_size_in: packet.len() as u32,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: out.len() as u32,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: the buffers outlive the call and their sizes are given.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(program.as_raw_fd(), &mut opts) };
    if rc != 0 {
        return Err(BpfError::Query {
            what: format!("BPF_PROG_TEST_RUN of a {}-byte packet", packet.len()),
            source: std::io::Error::from_raw_os_error(-rc),
        });
    }
    Ok(opts.retval)
}
