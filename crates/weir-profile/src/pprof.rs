//! The pprof protobuf encoding (`profile.proto`), gzipped as pprof tools expect. Pure.

use std::collections::HashMap;
use std::io::Write;

use prost::Message;

use crate::profile::Profile;

#[allow(clippy::all, missing_debug_implementations, reason = "generated code")]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Self { table: vec![String::new()], index: HashMap::from([(String::new(), 0)]) }
    }
    fn get(&mut self, s: &str) -> i64 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// Encodes a CPU profile sampled every `period_ns`: each sample carries a
/// sample count and CPU nanoseconds. Every frame becomes a function and a
/// location, so pprof's views (top, tree, flame) work on it.
pub fn encode(profile: &Profile, period_ns: i64, duration_ns: i64, time_nanos: i64) -> proto::Profile {
    let mut strings = Strings::new();
    let mut functions: HashMap<String, u64> = HashMap::new();
    let mut out = proto::Profile {
        sample_type: vec![
            proto::ValueType { r#type: strings.get("samples"), unit: strings.get("count") },
            proto::ValueType { r#type: strings.get("cpu"), unit: strings.get("nanoseconds") },
        ],
        period_type: Some(proto::ValueType { r#type: strings.get("cpu"), unit: strings.get("nanoseconds") }),
        period: period_ns,
        duration_nanos: duration_ns,
        time_nanos,
        ..Default::default()
    };
    let mut stacks: Vec<(&Vec<String>, &u64)> = profile.stacks.iter().collect();
    stacks.sort();
    for (frames, count) in stacks {
        // pprof lists the leaf first.
        let location_id = frames
            .iter()
            .rev()
            .map(|frame| {
                let next = functions.len() as u64 + 1;
                *functions.entry(frame.clone()).or_insert_with(|| {
                    let name = strings.get(frame);
                    out.function.push(proto::Function { id: next, name, system_name: name, ..Default::default() });
                    out.location.push(proto::Location {
                        id: next,
                        line: vec![proto::Line { function_id: next, line: 0 }],
                        ..Default::default()
                    });
                    next
                })
            })
            .collect();
        let count = *count as i64;
        out.sample.push(proto::Sample { location_id, value: vec![count, count * period_ns], label: Vec::new() });
    }
    out.string_table = strings.table;
    out
}

/// Encodes and gzips, ready for `go tool pprof`.
pub fn encode_gzip(profile: &Profile, period_ns: i64, duration_ns: i64, time_nanos: i64) -> std::io::Result<Vec<u8>> {
    let bytes = encode(profile, period_ns, duration_ns, time_nanos).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_leaf_first_with_a_shared_string_table() {
        let mut p = Profile::default();
        p.add(vec!["main".into(), "outer".into(), "inner".into()], 4);
        p.add(vec!["main".into(), "outer".into()], 1);
        let pb = encode(&p, 10_000_000, 1_000_000_000, 0);
        assert_eq!(pb.string_table[0], "");
        assert_eq!(pb.function.len(), 3, "one function per distinct frame");
        let deep = pb.sample.iter().find(|s| s.location_id.len() == 3).expect("deep sample");
        let leaf = pb.function.iter().find(|f| f.id == deep.location_id[0]).expect("leaf function");
        assert_eq!(pb.string_table[leaf.name as usize], "inner");
        assert_eq!(deep.value, vec![4, 40_000_000]);
        let decoded = proto::Profile::decode(pb.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, pb);
    }
}
