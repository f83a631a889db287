//! How full a map is, read cheaply enough for every metrics scrape.
//!
//! Counting one element per syscall costs a second of agent CPU for the
//! node datapath's million array slots, so arrays and hash maps are read
//! with `BPF_MAP_LOOKUP_BATCH`: thousands of elements per syscall. A map the
//! kernel will not batch (LPM tries, maps of maps, a kernel before 5.6) is
//! counted one element at a time, with the same result.

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

/// Elements asked for per batch, at most; fewer when values are large.
const MAX_BATCH: usize = 4096;
/// Bytes of values one batch may read into.
const BATCH_VALUE_BYTES: usize = 1 << 20;
/// Elements per batch, at least: a hash batch must hold a whole bucket.
const MIN_BATCH: usize = 64;

/// How a count was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// `BPF_MAP_LOOKUP_BATCH`, many elements per syscall.
    Batched,
    /// One lookup or next-key per element.
    OneByOne,
}

/// Elements in use in a map, and how they were counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// Keys present for hash maps; slots holding anything non-zero (on any
    /// CPU) for arrays; keys the kernel iterates for any other kind.
    pub in_use: u32,
    pub counting: Counting,
}

/// What makes an element count.
#[derive(Clone, Copy)]
enum Counted {
    /// Every slot exists; a slot counts when its value is not all zeros.
    NonZeroSlots,
    /// A present key counts.
    PresentKeys,
}

fn counted(map_type: MapType) -> Option<Counted> {
    match map_type {
        MapType::Array | MapType::PercpuArray => Some(Counted::NonZeroSlots),
        MapType::Hash | MapType::LruHash | MapType::PercpuHash | MapType::LruPercpuHash => Some(Counted::PresentKeys),
        _ => None,
    }
}

/// Counts the elements in use, in batches where the kernel allows it.
pub fn fill(map: &MapHandle) -> Fill {
    if let Some(how) = counted(map.map_type()) {
        if let Some(in_use) = batched(map, how) {
            return Fill { in_use, counting: Counting::Batched };
        }
    }
    one_by_one(map)
}

/// Counts one element per syscall: what [`fill`] falls back to.
pub fn one_by_one(map: &MapHandle) -> Fill {
    let nonzero = |bytes: &[u8]| bytes.iter().any(|b| *b != 0);
    let in_use = match map.map_type() {
        MapType::Array => (0..map.max_entries())
            .filter(|slot| map.lookup(&slot.to_ne_bytes(), MapFlags::ANY).ok().flatten().is_some_and(|v| nonzero(&v)))
            .count(),
        MapType::PercpuArray => (0..map.max_entries())
            .filter(|slot| {
                map.lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
                    .ok()
                    .flatten()
                    .is_some_and(|cpus| cpus.iter().any(|v| nonzero(v)))
            })
            .count(),
        _ => map.keys().count(),
    };
    Fill { in_use: in_use as u32, counting: Counting::OneByOne }
}

/// Bytes one element's value takes in a lookup: per-CPU maps return a value
/// for every possible CPU, each rounded up to 8 bytes.
fn value_stride(map: &MapHandle) -> Option<usize> {
    let size = map.value_size() as usize;
    if map.map_type().is_percpu() {
        Some(size.div_ceil(8) * 8 * libbpf_rs::num_possible_cpus().ok()?)
    } else {
        Some(size)
    }
}

/// Counts through `BPF_MAP_LOOKUP_BATCH`; `None` when the kernel refuses
/// (the caller then counts one by one, from the start).
fn batched(map: &MapHandle, how: Counted) -> Option<u32> {
    let stride = value_stride(map)?.max(1);
    let key_size = map.key_size() as usize;
    let batch = (BATCH_VALUE_BYTES / stride).clamp(MIN_BATCH, MAX_BATCH).min(map.max_entries().max(1) as usize);
    let mut keys = vec![0u8; batch * key_size];
    let mut values = vec![0u8; batch * stride];
    // The resume token: an array's last key, a hash map's next bucket (u32).
    let token_size = key_size.max(8);
    let mut token_in = vec![0u8; token_size];
    let mut token_out = vec![0u8; token_size];
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        elem_flags: 0,
        flags: 0,
    };
    let zero = vec![0u8; stride];
    let fd = map.as_fd().as_raw_fd();
    let mut first = true;
    let mut in_use = 0u32;
    loop {
        let mut count = batch as u32;
        // SAFETY: keys and values hold `batch` elements of the map's key and
        // value (per-CPU) sizes, the tokens hold at least a key or a u32, and
        // count tells the kernel how many elements fit.
        let rc = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                fd,
                if first { std::ptr::null_mut() } else { token_in.as_mut_ptr().cast() },
                token_out.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        // ENOENT: the last batch, with `count` elements still valid. Anything
        // else (EINVAL or ENOTSUPP for a kind without batch operations,
        // ENOSPC for a hash bucket larger than the batch) leaves no count
        // to trust.
        if rc < 0 && -rc != libc::ENOENT {
            return None;
        }
        let got = (count as usize).min(batch);
        in_use += match how {
            Counted::PresentKeys => got as u32,
            // A slice comparison is one memcmp, fast in debug builds too.
            Counted::NonZeroSlots => {
                values[..got * stride].chunks_exact(stride).filter(|v| *v != &zero[..]).count() as u32
            }
        };
        if rc < 0 || got == 0 {
            return Some(in_use);
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}
