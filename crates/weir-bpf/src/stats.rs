//! Introspection of a pinned datapath: programs with the kernel's run-time
//! statistics, maps with their fill, links with what they attach.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use libbpf_rs::query::{LinkInfo, LinkTypeInfo};
use libbpf_rs::{Link, MapCore, MapHandle, Program};
use serde::{Deserialize, Serialize};

use crate::datapath::PinLayout;
use crate::BpfError;

/// Turns on the kernel's per-program run count and run time accounting
/// (`BPF_ENABLE_STATS`). Accounting stays on while the returned fd is open,
/// and ends with it, so a crashed agent leaves no global cost behind.
pub fn enable_run_time_stats() -> Result<OwnedFd, BpfError> {
    // SAFETY: bpf_enable_stats takes a plain enum value.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(BpfError::Query {
            what: "BPF_ENABLE_STATS".into(),
            source: std::io::Error::from_raw_os_error(-fd),
        });
    }
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One loaded program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStats {
    pub name: String,
    pub id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
}

impl ProgramStats {
    /// Average nanoseconds per run, when it has run.
    pub fn avg_ns(&self) -> Option<u64> {
        self.run_time_ns.checked_div(self.run_count)
    }
}

/// One map and how full it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStats {
    pub name: String,
    pub id: u32,
    pub map_type: String,
    pub max_entries: u32,
    /// Keys present for hash maps; slots holding anything non-zero for arrays.
    pub in_use: u32,
}

/// One pinned link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    pub pin: String,
    pub id: u32,
    pub program_id: u32,
    /// Interface the link is attached to; 0 when the interface is gone (defunct).
    pub ifindex: u32,
}

/// Everything pinned below one agent's pin directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    pub programs: Vec<ProgramStats>,
    pub maps: Vec<MapStats>,
    pub links: Vec<LinkStats>,
}

fn sorted_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    paths.sort();
    paths
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn prog_info(fd: BorrowedFd<'_>) -> std::io::Result<libbpf_sys::bpf_prog_info> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: info and len are valid for writes and len is info's size.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok(info)
}

fn program_stats(path: &Path) -> Result<ProgramStats, BpfError> {
    let fd = Program::fd_from_pinned_path(path)
        .map_err(|source| BpfError::OpenPinned { path: path.to_path_buf(), source })?;
    let info = prog_info(fd.as_fd())
        .map_err(|source| BpfError::Query { what: format!("program {}", path.display()), source })?;
    Ok(ProgramStats { name: file_name(path), id: info.id, run_count: info.run_cnt, run_time_ns: info.run_time_ns })
}

/// One pinned map's type, capacity and fill ([`crate::map_fill`]).
fn map_stats(path: &Path) -> Result<MapStats, BpfError> {
    let map = MapHandle::from_pinned_path(path)
        .map_err(|source| BpfError::OpenPinned { path: path.to_path_buf(), source })?;
    let info = map.info().map_err(|source| BpfError::MapRead { map: file_name(path), source })?;
    Ok(MapStats {
        name: file_name(path),
        id: info.info.id,
        map_type: format!("{:?}", map.map_type()),
        max_entries: map.max_entries(),
        in_use: crate::map_fill::fill(&map).in_use,
    })
}

fn link_stats(path: &Path) -> Result<LinkStats, BpfError> {
    let link = Link::open(path).map_err(|source| BpfError::OpenPinned { path: path.to_path_buf(), source })?;
    let info =
        LinkInfo::from_fd(link.as_fd()).map_err(|source| BpfError::OpenPinned { path: path.to_path_buf(), source })?;
    let ifindex = match &info.info {
        LinkTypeInfo::Xdp(xdp) => xdp.ifindex,
        LinkTypeInfo::Tcx(tcx) => tcx.ifindex,
        _ => 0,
    };
    Ok(LinkStats { pin: file_name(path), id: info.id, program_id: info.prog_id, ifindex })
}

/// A program a link runs that is not pinned (the filter's entry program in
/// front of the node program), named `KERNEL_NAME@INTERFACE` after its link.
fn attached_program_stats(link: &LinkStats) -> Result<ProgramStats, BpfError> {
    let what = || format!("program {} of link {}", link.program_id, link.pin);
    // SAFETY: takes a plain id; a non-negative return is a new fd that nothing else owns.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(link.program_id) };
    if fd < 0 {
        return Err(BpfError::Query { what: what(), source: std::io::Error::from_raw_os_error(-fd) });
    }
    // SAFETY: see above.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let info = prog_info(fd.as_fd()).map_err(|source| BpfError::Query { what: what(), source })?;
    let kernel_name: String = info.name.iter().take_while(|c| **c != 0).map(|c| char::from(*c as u8)).collect();
    let interface = link.pin.split_once('@').map_or(link.pin.as_str(), |(_, i)| i);
    Ok(ProgramStats {
        name: format!("{kernel_name}@{interface}"),
        id: info.id,
        run_count: info.run_cnt,
        run_time_ns: info.run_time_ns,
    })
}

/// Inspects every program, map and link pinned below `pins`, and the
/// programs links run that are not pinned. A program reached by a tail
/// call is counted by the kernel in its caller's runs, never its own.
pub fn inspect(pins: &PinLayout) -> Result<Inspection, BpfError> {
    let mut programs: Vec<ProgramStats> =
        sorted_entries(&pins.progs()).iter().map(|p| program_stats(p)).collect::<Result<_, _>>()?;
    let links: Vec<LinkStats> =
        sorted_entries(&pins.links()).iter().map(|p| link_stats(p)).collect::<Result<_, _>>()?;
    for link in &links {
        if link.program_id != 0 && !programs.iter().any(|p| p.id == link.program_id) {
            programs.push(attached_program_stats(link)?);
        }
    }
    Ok(Inspection {
        programs,
        maps: sorted_entries(&pins.maps()).iter().map(|p| map_stats(p)).collect::<Result<_, _>>()?,
        links,
    })
}
