//! perf_event_open(2) for the software cpu-clock event, which exists even
//! where hardware counters do not (as in most VMs).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// How often a cpu-clock event fires.
#[derive(Debug, Clone, Copy)]
pub enum Sampling {
    /// Samples per second.
    Frequency(u64),
    /// Nanoseconds between samples.
    Period(u64),
}

/// The event a sampler counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Hardware CPU cycles: precise, where the CPU exposes counters.
    Cycles,
    /// The software cpu-clock timer: available everywhere, VMs included.
    CpuClock,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Cycles => "cycles (hardware)",
            Event::CpuClock => "cpu-clock (software)",
        }
    }
}

/// Opens a cpu-clock sampling event counting every task on `cpu`.
pub fn open_cpu_clock(cpu: u32, sampling: Sampling) -> io::Result<OwnedFd> {
    open(Event::CpuClock, cpu, sampling)
}

/// Opens the best sampling event this machine has on `cpu`: hardware cycles,
/// else the software cpu-clock (hardware counters are often absent in VMs).
pub fn open_best(cpu: u32, sampling: Sampling) -> io::Result<(OwnedFd, Event)> {
    match open(Event::Cycles, cpu, sampling) {
        Ok(fd) => Ok((fd, Event::Cycles)),
        Err(_) => open(Event::CpuClock, cpu, sampling).map(|fd| (fd, Event::CpuClock)),
    }
}

fn open(event: Event, cpu: u32, sampling: Sampling) -> io::Result<OwnedFd> {
    let (type_, config) = match event {
        Event::Cycles => (libbpf_sys::PERF_TYPE_HARDWARE, u64::from(libbpf_sys::PERF_COUNT_HW_CPU_CYCLES)),
        Event::CpuClock => (libbpf_sys::PERF_TYPE_SOFTWARE, u64::from(libbpf_sys::PERF_COUNT_SW_CPU_CLOCK)),
    };
    let mut attr = libbpf_sys::perf_event_attr {
        type_,
        size: std::mem::size_of::<libbpf_sys::perf_event_attr>() as u32,
        config,
        ..Default::default()
    };
    match sampling {
        Sampling::Frequency(hz) => {
            attr.__bindgen_anon_1.sample_freq = hz;
            attr.set_freq(1);
        }
        Sampling::Period(ns) => attr.__bindgen_anon_1.sample_period = ns,
    }
    // SAFETY: attr is a valid perf_event_attr; pid -1 with a cpu samples every task on it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const _,
            -1i32,
            cpu as i32,
            -1i32,
            libbpf_sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new perf event fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The online CPUs, from `/sys/devices/system/cpu/online` ("0-3,5").
pub fn online_cpus() -> io::Result<Vec<u32>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    parse_cpu_list(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad CPU list {text:?}")))
}

fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cpu_lists() {
        assert_eq!(super::parse_cpu_list("0-3,5\n"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(super::parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(super::parse_cpu_list("x"), None);
    }
}
