use std::io;
use std::path::PathBuf;

/// An error from loading, attaching, pinning or inspecting eBPF objects.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("opening BPF object {object}")]
    Open {
        object: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("loading BPF object {object} (the verifier log is in the agent's debug output)")]
    Load {
        object: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("attaching {program} to {target}")]
    Attach {
        program: String,
        target: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("pinning {what} at {path}")]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("opening pinned object {path}")]
    OpenPinned {
        path: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("reading map {map}")]
    MapRead {
        map: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("querying {what}")]
    Query {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("interface {name} does not exist in this network namespace")]
    NoSuchInterface { name: String },
    #[error("preparing pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("chaos: {0}")]
    Chaos(String),
    #[error("HTTPS probes: {0}")]
    Tls(String),
    #[error("XDP load balancer: {0}")]
    Xlb(String),
    #[error("running {program} with BPF_PROG_TEST_RUN")]
    TestRun {
        program: String,
        #[source]
        source: libbpf_rs::Error,
    },
}

/// Wraps a libbpf error from an operation on map `map`.
pub(crate) fn map_error(map: &str) -> impl FnOnce(libbpf_rs::Error) -> BpfError + '_ {
    move |source| BpfError::MapRead { map: map.to_string(), source }
}

/// The u64 counter at `key` of a per-CPU map, summed over CPUs.
pub(crate) fn percpu_u64_sum<M: libbpf_rs::MapCore>(map: &M, key: u32, name: &str) -> Result<u64, BpfError> {
    let per_cpu = map.lookup_percpu(&key.to_ne_bytes(), libbpf_rs::MapFlags::ANY).map_err(map_error(name))?;
    Ok(per_cpu
        .unwrap_or_default()
        .iter()
        .filter_map(|b| b.get(..8))
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
        .sum())
}

/// A ring buffer over `map` (named `name` in errors) whose records are
/// decoded by `decode` and handed to `on_event`; records it cannot read
/// are skipped.
pub(crate) fn decoding_ring<'a, E: 'a>(
    map: &'a dyn libbpf_rs::MapCore,
    name: &str,
    decode: fn(&[u8]) -> Option<E>,
    mut on_event: impl FnMut(E) + 'a,
) -> Result<libbpf_rs::RingBuffer<'a>, BpfError> {
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    builder
        .add(map, move |raw: &[u8]| {
            if let Some(event) = decode(raw) {
                on_event(event);
            }
            0
        })
        .map(|_| ())
        .and_then(|()| builder.build())
        .map_err(map_error(name))
}
