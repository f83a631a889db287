//! HTTPS without a proxy: loads `tls.bpf.c`, attaches its uprobes to
//! OpenSSL's `SSL_write`, `SSL_read`, `SSL_write_ex` and `SSL_read_ex` in
//! each libssl found on the host (a probe on a library file fires in every
//! process that maps it, in any mount namespace sharing the file), on
//! `SSL_set_fd` (a connection's socket, where the program names it) and
//! `SSL_free` (the object's socket forgotten: a freed object's address
//! reused for a new connection names no old socket), and its
//! system-call tracepoints, for the tasks of one scope cgroup; then hands
//! every plaintext HTTP/1.x head to a callback on a thread of its own.
//!
//! Like runtime security's sensors the probes are not pinned: they live
//! as long as the agent, which alone reads their ring.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, UprobeOpts};

use crate::api::{address_of_words, read_pod, tls_outcome};
use crate::error::{map_error, percpu_u64_sum};
use crate::skel::tls::types::weir_tls_event;
use crate::skel::tls::TlsSkelBuilder;
use crate::BpfError;

const OBJECT: &str = "tls";
/// How often the ring is read, and the reader's tick: the most an event
/// waits before it is seen.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The libssl sonames Weir probes (OpenSSL 3 and 1.1; libssl3.so is NSS's).
const SONAMES: &[&str] = &["libssl.so.3", "libssl.so.1.1"];
/// Where distributions put them when `ldconfig -p` says nothing.
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
    "/usr/local/lib64",
    "/usr/local/lib",
];

#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Only tasks below this cgroup are followed.
    pub scope_cgroup: PathBuf,
    /// The libraries to probe; [`find_libssl`] gives the host's.
    pub libraries: Vec<PathBuf>,
}

/// What was attached, and what could not be.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TlsReport {
    /// (library, functions probed in it).
    pub attached: Vec<(PathBuf, Vec<&'static str>)>,
    /// (what, why) for probes that could not be attached.
    pub missing: Vec<(String, String)>,
}

/// One plaintext HTTP/1.x head a process wrote or read through OpenSSL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsEvent {
    /// CLOCK_BOOTTIME nanoseconds of the call's return, the flows' clock
    /// ([`crate::clock`]).
    pub time_ns: u64,
    /// The SSL object (one per connection in its process).
    pub ssl: u64,
    /// The process: pid (thread group), its start (CLOCK_MONOTONIC ns),
    /// the calling thread, uid, command and program file name.
    pub pid: u32,
    pub start_ns: u64,
    pub tid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    pub fd: i32,
    /// The socket's own address and its peer's.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// SSL_write (else SSL_read).
    pub write: bool,
    /// What the call moved; `data` holds at most `WEIR_TLS_PAYLOAD_BYTES` of it.
    pub bytes: u32,
    pub data: Vec<u8>,
}

/// The libssl files of this host, each once (by device and inode): those
/// `ldconfig -p` lists, else those of the usual directories.
pub fn find_libssl() -> Vec<PathBuf> {
    let listed = std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .ok()
        .map(|o| libssl_in_ldconfig(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    let candidates: Vec<PathBuf> = if listed.is_empty() {
        LIBRARY_DIRS.iter().flat_map(|dir| SONAMES.iter().map(move |name| Path::new(dir).join(name))).collect()
    } else {
        listed
    };
    let mut seen = std::collections::HashSet::new();
    candidates
        .into_iter()
        .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && seen.insert((m.dev(), m.ino()))))
        .collect()
}

/// The paths of the probed sonames in `ldconfig -p`'s output
/// (`\tlibssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3`).
pub fn libssl_in_ldconfig(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let (left, path) = line.split_once("=>")?;
            let name = left.split_whitespace().next()?;
            SONAMES.contains(&name).then(|| PathBuf::from(path.trim()))
        })
        .collect()
}

/// Running probes. Dropping them stops the reader and detaches every probe.
#[derive(Debug)]
pub struct TlsProbes {
    pub report: TlsReport,
    outcomes: MapHandle,
    calls: MapHandle,
    sockets: MapHandle,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsProbes {
    /// The kernel's outcome counters by registry name (summed over CPUs).
    pub fn outcomes(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        tls_outcome::ALL
            .iter()
            .map(|(code, name, _)| Ok((*name, percpu_u64_sum(&self.outcomes, *code, "tls_outcomes")?)))
            .collect()
    }

    /// Threads of the scope inside a probed OpenSSL call now.
    pub fn calls_in_progress(&self) -> usize {
        self.calls.keys().count()
    }

    /// The descriptors of the sockets remembered for process `pid`'s SSL
    /// objects (for calls that make no system call), sorted.
    pub fn remembered_sockets(&self, pid: u32) -> Vec<i32> {
        let mut fds: Vec<i32> = self
            .sockets
            .keys()
            // struct tls_socket_key: the object (u64), then the tgid (u32).
            .filter(|key| key.get(8..12).is_some_and(|tgid| tgid == pid.to_ne_bytes()))
            .filter_map(|key| self.sockets.lookup(&key, MapFlags::ANY).ok().flatten())
            .filter_map(|fd| Some(i32::from_ne_bytes(fd.get(..4)?.try_into().ok()?)))
            .collect();
        fds.sort_unstable();
        fds
    }
}

impl Drop for TlsProbes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Loads and attaches the probes, then reads their ring on a thread of its
/// own: `on_event` for every event, `on_tick` after every read of the ring
/// (at least every 20 ms), until the returned value drops. Fails when no
/// library could be probed at all.
pub fn start(
    options: TlsOptions,
    on_event: impl FnMut(TlsEvent) + Send + 'static,
    mut on_tick: impl FnMut() + Send + 'static,
) -> Result<TlsProbes, BpfError> {
    if options.libraries.is_empty() {
        return Err(BpfError::Tls("no libssl found (ldconfig -p, then the usual directories)".into()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    type Ready = Result<(TlsReport, [MapHandle; 3]), BpfError>;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("weir-tls".into())
        .spawn(move || {
            let mut storage = MaybeUninit::uninit();
            let (skel, _links, report) = match load(&options, &mut storage) {
                Ok(parts) => parts,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let handle = |map, name| MapHandle::try_from(map).map_err(map_error(name));
            let handles = (|| {
                Ok::<_, BpfError>([
                    handle(&skel.maps.tls_outcomes, "tls_outcomes")?,
                    handle(&skel.maps.tls_calls, "tls_calls")?,
                    handle(&skel.maps.tls_sockets, "tls_sockets")?,
                ])
            })();
            let handles = match handles {
                Ok(m) => m,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let ring = match crate::error::decoding_ring(&skel.maps.tls_ring, "tls_ring", decode, on_event) {
                Ok(ring) => ring,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok((report, handles)));
            while !thread_stop.load(Ordering::Relaxed) {
                if let Err(e) = ring.poll(POLL_INTERVAL).and_then(|()| ring.consume()) {
                    tracing::warn!(error = %e, "reading TLS events");
                    std::thread::sleep(Duration::from_millis(100));
                }
                on_tick();
            }
        })
        .map_err(|source| BpfError::Query { what: "starting the TLS probe thread".into(), source })?;
    match ready_rx.recv() {
        Ok(Ok((report, [outcomes, calls, sockets]))) => {
            Ok(TlsProbes { report, outcomes, calls, sockets, stop, thread: Some(thread) })
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(BpfError::Query {
                what: "the TLS probe thread".into(),
                source: std::io::Error::other("stopped before it was ready"),
            })
        }
    }
}

type Loaded<'obj> = (crate::skel::tls::TlsSkel<'obj>, Vec<Link>, TlsReport);

fn load<'obj>(
    options: &TlsOptions,
    storage: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
) -> Result<Loaded<'obj>, BpfError> {
    let open = TlsSkelBuilder::default().open(storage).map_err(|source| BpfError::Open { object: OBJECT, source })?;
    let mut skel = open.load().map_err(|source| BpfError::Load { object: OBJECT, source })?;
    let scope = std::fs::File::open(&options.scope_cgroup)
        .map_err(|source| BpfError::Query { what: format!("cgroup {}", options.scope_cgroup.display()), source })?;
    let fd = scope.as_raw_fd() as u32;
    skel.maps
        .tls_scope
        .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
        .map_err(map_error("tls_scope"))?;
    let mut report = TlsReport::default();
    let mut links = Vec::new();
    // The system calls first: a probe that fired before them would not
    // know its socket.
    for prog in skel.object_mut().progs_mut() {
        let section = prog.section().to_string_lossy().into_owned();
        if !section.starts_with("tp/") {
            continue;
        }
        let name = prog.name().to_string_lossy().into_owned();
        links.push(prog.attach().map_err(|source| BpfError::Attach { program: name, target: section, source })?);
    }
    let progs = &skel.progs;
    let entries = [
        (&progs.weir_tls_write, "SSL_write"),
        (&progs.weir_tls_write_ex, "SSL_write_ex"),
        (&progs.weir_tls_read, "SSL_read"),
        (&progs.weir_tls_read_ex, "SSL_read_ex"),
    ];
    let ret = &progs.weir_tls_return;
    // Entry only: no return to wait for.
    let bookkeeping = [(&progs.weir_tls_set_fd, "SSL_set_fd"), (&progs.weir_tls_forget, "SSL_free")];
    for library in &options.libraries {
        let mut probed = Vec::new();
        for (program, function) in bookkeeping {
            let opts = UprobeOpts { func_name: Some(function.to_string()), ..Default::default() };
            match program.attach_uprobe_with_opts(-1, library, 0, opts) {
                Ok(link) => {
                    links.push(link);
                    probed.push(function);
                }
                Err(e) => report.missing.push((format!("{function} in {}", library.display()), e.to_string())),
            }
        }
        for (entry_prog, function) in entries {
            let attach = |program: &libbpf_rs::ProgramMut<'_>, retprobe: bool| {
                let opts = UprobeOpts { retprobe, func_name: Some(function.to_string()), ..Default::default() };
                program.attach_uprobe_with_opts(-1, library, 0, opts)
            };
            // The return probe first: an entry without its return would
            // leave the thread marked as inside a call.
            match attach(ret, true).and_then(|r| attach(entry_prog, false).map(|e| (r, e))) {
                Ok((r, e)) => {
                    links.push(r);
                    links.push(e);
                    probed.push(function);
                }
                Err(e) => report.missing.push((format!("{function} in {}", library.display()), e.to_string())),
            }
        }
        if !probed.is_empty() {
            report.attached.push((library.clone(), probed));
        }
    }
    let reads_or_writes = |functions: &Vec<&str>| functions.iter().any(|f| entries.iter().any(|(_, e)| e == f));
    if !report.attached.iter().any(|(_, functions)| reads_or_writes(functions)) {
        let why = report.missing.iter().map(|(what, why)| format!("{what}: {why}")).collect::<Vec<_>>().join("; ");
        return Err(BpfError::Tls(format!("no OpenSSL function could be probed ({why})")));
    }
    Ok((skel, links, report))
}

fn text(raw: &[i8]) -> String {
    let bytes: Vec<u8> = raw.iter().map(|c| *c as u8).take_while(|c| *c != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A ring record as an event; None when it is not one.
pub fn decode(raw: &[u8]) -> Option<TlsEvent> {
    let e: weir_tls_event = read_pod(raw)?;
    let addr = |words: [u32; 4], port: u16| SocketAddr::new(address_of_words(e.family, words), port);
    let len = usize::from(e.len).min(e.data.len());
    if !matches!(e.family, 4 | 6) {
        return None;
    }
    let local = addr(e.local, e.local_port);
    Some(TlsEvent {
        time_ns: e.time_ns,
        ssl: e.ssl,
        pid: e.tgid,
        start_ns: e.start_ns,
        tid: e.tid,
        uid: e.uid,
        comm: text(&e.comm),
        exe: text(&e.exe),
        fd: e.fd,
        local,
        remote: addr(e.remote, e.remote_port),
        write: e.write != 0,
        bytes: e.bytes,
        data: e.data[..len].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldconfig_names_openssl_libraries_only() {
        let text = "1234 libs found in cache `/etc/ld.so.cache'\n\
            \tlibssl3.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl3.so\n\
            \tlibssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3\n\
            \tlibssl.so.1.1 (libc6,x86-64) => /usr/lib/libssl.so.1.1\n\
            \tlibssl.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so\n\
            \tlibcrypto.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libcrypto.so.3\n";
        assert_eq!(
            libssl_in_ldconfig(text),
            vec![PathBuf::from("/lib/x86_64-linux-gnu/libssl.so.3"), PathBuf::from("/usr/lib/libssl.so.1.1")]
        );
        assert!(libssl_in_ldconfig("garbage\n=>\n").is_empty());
    }
}
