//! Map fill on a real kernel: maps made here, filled with a known number of
//! entries across several batches, are counted as that number through
//! `BPF_MAP_LOOKUP_BATCH`, by the one-by-one fallback, and by the pinned
//! inspection the agent's metrics and `weir status` read.

use std::path::PathBuf;

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use weir_bpf::datapath::PinLayout;
use weir_bpf::map_fill::{self, Counting};
use weir_bpf::stats;
use weir_host::testing;

/// Removes the pin directory, even when the test panics.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn create(map_type: MapType, name: &str, key_size: u32, value_size: u32, max_entries: u32) -> MapHandle {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    MapHandle::create(map_type, Some(name), key_size, value_size, max_entries, &opts)
        .unwrap_or_else(|e| panic!("creating {name}: {e}"))
}

/// Asserts the map holds `expected` entries by every way of counting, the
/// batched one included.
fn assert_fill(map: &MapHandle, expected: u32, what: &str) {
    let fill = map_fill::fill(map);
    assert_eq!(fill.counting, Counting::Batched, "{what}: this kernel batches lookups of this kind");
    assert_eq!(fill.in_use, expected, "{what}: batched count");
    assert_eq!(map_fill::one_by_one(map).in_use, expected, "{what}: one-by-one count");
}

#[test]
fn maps_with_n_entries_are_counted_as_n_in_batches() {
    if !testing::privileged("maps_with_n_entries_are_counted_as_n_in_batches") {
        return;
    }
    let cpus = libbpf_rs::num_possible_cpus().expect("possible CPUs");
    // Larger than one batch, so the resume token is used.
    const SLOTS: u32 = 10_000;

    // An array: slots holding non-zero values count; a zero written counts not.
    let mut array = create(MapType::Array, "fill_array", 4, 8, SLOTS);
    let mut array_in_use = 0;
    for slot in (0..SLOTS).step_by(7) {
        let value: u64 = if slot % 2 == 0 { u64::from(slot) + 1 } else { 0 };
        array.update(&slot.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY).expect("array update");
        array_in_use += u32::from(value != 0);
    }
    assert_fill(&array, array_in_use, "array");

    // A per-CPU array of 12-byte values (rounded to 8 per CPU by the kernel):
    // a slot counts when any one CPU's value is non-zero, the last CPU's included.
    let mut percpu = create(MapType::PercpuArray, "fill_percpu", 4, 12, SLOTS);
    let mut percpu_in_use = 0;
    for slot in (3..SLOTS).step_by(11) {
        let mut values = vec![vec![0u8; 12]; cpus];
        values[cpus - 1][11] = 1;
        percpu.update_percpu(&slot.to_ne_bytes(), &values, MapFlags::ANY).expect("per-CPU array update");
        percpu_in_use += 1;
    }
    assert_fill(&percpu, percpu_in_use, "per-CPU array");

    // A hash map: every present key counts, zero values included.
    let mut hash = create(MapType::Hash, "fill_hash", 8, 4, 2 * SLOTS);
    let keys = 9_001u32;
    for key in 0..keys {
        let key = u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        hash.update(&key.to_ne_bytes(), &(key as u32 & 1).to_ne_bytes(), MapFlags::NO_EXIST).expect("hash update");
    }
    assert_fill(&hash, keys, "hash");

    // An LPM trie cannot be batched: it is counted one by one, still right.
    let mut trie_opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    trie_opts.map_flags = libbpf_sys::BPF_F_NO_PREALLOC;
    let mut trie =
        MapHandle::create(MapType::LpmTrie, Some("fill_trie"), 8, 4, 64, &trie_opts).expect("creating the trie");
    for net in 0..5u8 {
        let mut key = [0u8; 8];
        key[..4].copy_from_slice(&24u32.to_ne_bytes());
        key[4..].copy_from_slice(&[10, net, 0, 0]);
        trie.update(&key, &1u32.to_ne_bytes(), MapFlags::ANY).expect("trie update");
    }
    let fill = map_fill::fill(&trie);
    assert_eq!((fill.counting, fill.in_use), (Counting::OneByOne, 5), "LPM trie");

    // The pinned inspection behind metrics and `weir status` reads the same.
    let pins = Pins(PathBuf::from("/sys/fs/bpf").join(testing::unique_name("weir-fill-")));
    let layout = PinLayout::new(&pins.0);
    std::fs::create_dir_all(layout.maps()).expect("pin directory");
    for (name, map) in [("array", &mut array), ("percpu", &mut percpu), ("hash", &mut hash), ("trie", &mut trie)] {
        map.pin(layout.maps().join(name)).unwrap_or_else(|e| panic!("pinning {name}: {e}"));
    }
    let inspection = stats::inspect(&layout).expect("inspecting the pins");
    let in_use: Vec<(&str, u32)> = inspection.maps.iter().map(|m| (m.name.as_str(), m.in_use)).collect();
    assert_eq!(in_use, [("array", array_in_use), ("hash", keys), ("percpu", percpu_in_use), ("trie", 5)]);
}
