//! The CPU stack sampler: a perf_event program per CPU counting stacks into
//! double buffers (see `bpf/lib/profile.h`), drained without pausing sampling.
//!
//! A session runs in one blocking call ([`run_session`]) that hands each
//! drained batch to the caller, so the skeleton never outlives its stack frame.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapMut};

use crate::api::profile_loss;
use crate::error::map_error;
use crate::perf::{self, Sampling};
use crate::skel::profile::types::weir_stack_key;
use crate::skel::profile::ProfileSkelBuilder;
use crate::BpfError;

/// What to sample.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub frequency_hz: u64,
    /// Capacity of each buffer's stack and count maps; what does not fit is counted as lost.
    pub max_stacks: u32,
    /// Only tasks below this cgroup directory (a node's or a pod's).
    pub scope_cgroup: Option<PathBuf>,
    /// Only this process.
    pub scope_tgid: Option<u32>,
}

/// One distinct stack of one process and how often it was sampled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawSample {
    pub tgid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// Innermost first. None: no user stack (kernel thread, or the walk failed).
    pub user: Option<Vec<u64>>,
    /// Innermost first; empty when the sample hit user mode or an idle CPU.
    pub kernel: Vec<u64>,
    /// The words at the user stack pointer (sp, sp+8, …) that look like
    /// return addresses, else 0: where the sampled function had no frame yet,
    /// its caller is among them (see `bpf/lib/profile.h`).
    pub stack_top: Vec<u64>,
    pub count: u64,
}

/// What a session sampled, and what it could not.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// Samples lost or degraded, by `api::profile_loss` code.
    pub losses: Vec<u64>,
    /// The perf event sampled on every CPU.
    pub event: perf::Event,
}

/// Samples until `until` returns true, calling `on_batch` with each drained
/// buffer every `interval`; returns the loss counters and the event used.
pub fn run_session(
    config: &SamplerConfig,
    interval: Duration,
    mut until: impl FnMut() -> bool,
    mut on_batch: impl FnMut(Vec<RawSample>),
) -> Result<SessionReport, BpfError> {
    let mut storage = MaybeUninit::uninit();
    let mut open = ProfileSkelBuilder::default()
        .open(&mut storage)
        .map_err(|source| BpfError::Open { object: "profile", source })?;
    for map in [&mut open.maps.stacks_0, &mut open.maps.stacks_1, &mut open.maps.counts_0, &mut open.maps.counts_1] {
        map.set_max_entries(config.max_stacks.max(1)).map_err(|source| BpfError::Open { object: "profile", source })?;
    }
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata.scope_to_cgroup = u32::from(config.scope_cgroup.is_some());
        rodata.scope_tgid = config.scope_tgid.unwrap_or(0);
    }
    let mut skel = open.load().map_err(|source| BpfError::Load { object: "profile", source })?;

    if let Some(cgroup) = &config.scope_cgroup {
        let dir = std::fs::File::open(cgroup)
            .map_err(|source| BpfError::Query { what: format!("cgroup {}", cgroup.display()), source })?;
        let fd = dir.as_raw_fd() as u32;
        skel.maps
            .scope_cgroup
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error("scope_cgroup"))?;
    }

    let mut links = Vec::new();
    let mut event = perf::Event::CpuClock;
    let cpus = perf::online_cpus().map_err(|source| BpfError::Query { what: "online CPUs".into(), source })?;
    for cpu in cpus {
        let (fd, used) = perf::open_best(cpu, Sampling::Frequency(config.frequency_hz))
            .map_err(|source| BpfError::Query { what: format!("perf_event_open on CPU {cpu}"), source })?;
        event = used;
        let raw = fd.into_raw_fd();
        // On success the link owns the event fd and closes it on detach.
        match skel.progs.weir_profile_sample.attach_perf_event(raw) {
            Ok(link) => links.push(link),
            Err(source) => {
                // SAFETY: after a failed attach the fd is still ours alone.
                drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
                return Err(BpfError::Attach {
                    program: "weir_profile_sample".into(),
                    target: format!("cpu-clock on CPU {cpu}"),
                    source,
                });
            }
        }
    }

    let mut active = 0u32;
    let mut next_drain = Instant::now() + interval;
    loop {
        let done = until();
        if done || Instant::now() >= next_drain {
            if done {
                // Stop sampling first so the final drain is complete.
                links.clear();
            }
            let draining = active;
            active ^= 1;
            if let Some(bss) = skel.maps.bss_data.as_deref_mut() {
                // A plain store to the mmapped .bss that the program reads.
                bss.weir_profile_active = active;
            }
            // A sample that read the old index before the flip finishes within
            // microseconds; give it a moment before draining its buffer.
            std::thread::sleep(Duration::from_millis(2));
            let (stacks, counts) = if draining == 0 {
                (&skel.maps.stacks_0, &skel.maps.counts_0)
            } else {
                (&skel.maps.stacks_1, &skel.maps.counts_1)
            };
            on_batch(drain(stacks, counts)?);
            next_drain = Instant::now() + interval;
            if done {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20).min(interval));
    }

    let mut losses = vec![0u64; profile_loss::COUNT as usize];
    for (code, total) in losses.iter_mut().enumerate() {
        *total = crate::error::percpu_u64_sum(&skel.maps.profile_losses, code as u32, "profile_losses")?;
    }
    Ok(SessionReport { losses, event })
}

fn stack(stacks: &MapMut<'_>, id: i32) -> Result<Option<Vec<u64>>, BpfError> {
    if id < 0 {
        return Ok(None);
    }
    let bytes = stacks.lookup(&(id as u32).to_ne_bytes(), MapFlags::ANY).map_err(map_error("stacks"))?;
    Ok(bytes.map(|b| {
        b.chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
            .take_while(|ip| *ip != 0)
            .collect()
    }))
}

/// Reads and clears one buffer.
fn drain(stacks: &MapMut<'_>, counts: &MapMut<'_>) -> Result<Vec<RawSample>, BpfError> {
    let keys: Vec<Vec<u8>> = counts.keys().collect();
    let mut samples = Vec::with_capacity(keys.len());
    for raw_key in &keys {
        let Some(value) = counts.lookup(raw_key, MapFlags::ANY).map_err(map_error("counts"))? else { continue };
        if raw_key.len() < std::mem::size_of::<weir_stack_key>() || value.len() < 8 {
            continue;
        }
        // SAFETY: the buffer holds a whole weir_stack_key, a repr(C) struct of
        // integers generated from the program's BTF; read_unaligned allows any alignment.
        let key: weir_stack_key = unsafe { std::ptr::read_unaligned(raw_key.as_ptr().cast()) };
        let comm_bytes: Vec<u8> = key.comm.iter().map(|c| *c as u8).take_while(|c| *c != 0).collect();
        samples.push(RawSample {
            tgid: key.tgid,
            cgroup_id: key.cgroup_id,
            comm: String::from_utf8_lossy(&comm_bytes).into_owned(),
            user: stack(stacks, key.user_stack_id)?,
            kernel: stack(stacks, key.kernel_stack_id)?.unwrap_or_default(),
            stack_top: key.stack_top.to_vec(),
            count: u64::from_ne_bytes(value[..8].try_into().unwrap_or([0; 8])),
        });
    }
    for raw_key in keys {
        let _ = counts.delete(&raw_key);
    }
    let stack_ids: Vec<Vec<u8>> = stacks.keys().collect();
    for id in stack_ids {
        let _ = stacks.delete(&id);
    }
    Ok(samples)
}
