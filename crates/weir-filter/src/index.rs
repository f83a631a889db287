//! The shape index: which shapes could hold a rule for a packet, field by
//! field (see `bpf/api/filter.h`). Pure.
//!
//! Each field maps a packet's value to a bit set of shape ids: an IPv4
//! address's /16 block (an array: a prefix of /16 or longer marks its block,
//! a shorter one every block it spans), a port, a protocol; then, only when
//! more than two shapes remain, an address prefix (longest-prefix match, so
//! an entry also carries the shapes of every shorter prefix in use above
//! it). The datapath ANDs the sets, each ORed with the shapes that leave that
//! field open, and looks up only the shapes that remain.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::compile::{Key, Shape, SHAPE_DPORT, SHAPE_PROTO, SHAPE_SPORT};

/// Which address a prefix entry indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrField {
    Source,
    Destination,
}

/// One entry of an address index: a family's prefix, its bytes masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub field: AddrField,
    /// 4 or 6.
    pub family: u8,
    /// 1 to 32 (IPv4) or 128 (IPv6): an open field has no entry.
    pub len: u8,
    /// Network bytes, IPv4 in the first four.
    pub addr: [u8; 16],
}

/// Every entry of the index a set of rules needs; values are shape bit sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapeIndex {
    pub prefixes: BTreeMap<Prefix, u32>,
    /// IPv4 addresses by their top 16 bits: shapes with a rule on a prefix
    /// that meets that /16 block.
    pub blocks: BTreeMap<(AddrField, u16), u32>,
    /// By port: (shapes with a rule on exactly this source port, destination port).
    pub ports: BTreeMap<u16, (u32, u32)>,
    pub protocols: BTreeMap<u8, u32>,
}

/// Shapes that leave a field open: its index cannot rule them out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenFields {
    pub source: u32,
    pub destination: u32,
    pub protocol: u32,
    pub source_port: u32,
    pub destination_port: u32,
}

impl OpenFields {
    /// The open fields of the shapes in `ids` (a bit set), as `shapes` defines them.
    pub fn of(ids: u32, shapes: &BTreeMap<u32, Shape>) -> Self {
        let mut open = Self::default();
        for (id, shape) in shapes.iter().filter(|(id, _)| **id < 32 && ids & (1 << **id) != 0) {
            let bit = 1u32 << id;
            let set = |mask: &mut u32, is_open: bool| {
                if is_open {
                    *mask |= bit;
                }
            };
            set(&mut open.source, shape.src_prefix == 0);
            set(&mut open.destination, shape.dst_prefix == 0);
            set(&mut open.protocol, shape.fields & SHAPE_PROTO == 0);
            set(&mut open.source_port, shape.fields & SHAPE_SPORT == 0);
            set(&mut open.destination_port, shape.fields & SHAPE_DPORT == 0);
        }
        open
    }
}

fn masked(addr: &[u8; 16], len: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let bits = usize::from(len).saturating_sub(i * 8).min(8);
        *byte = if bits == 0 { 0 } else { addr[i] & (0xFFu8 << (8 - bits)) };
    }
    out
}

impl ShapeIndex {
    /// The index of map-backed rules, each given as (shape id, shape, key).
    pub fn of<'a>(rules: impl IntoIterator<Item = (u32, &'a Shape, &'a Key)>) -> Self {
        let mut own: HashMap<Prefix, u32> = HashMap::new();
        let mut index = Self::default();
        for (id, shape, key) in rules {
            let bit = 1u32 << id;
            for (field, len, addr) in
                [(AddrField::Source, shape.src_prefix, &key.src), (AddrField::Destination, shape.dst_prefix, &key.dst)]
            {
                if len > 0 {
                    let prefix = Prefix { field, family: shape.family, len, addr: masked(addr, len) };
                    *own.entry(prefix).or_default() |= bit;
                }
            }
            if shape.fields & SHAPE_PROTO != 0 {
                *index.protocols.entry(key.proto).or_default() |= bit;
            }
            if shape.fields & SHAPE_SPORT != 0 {
                index.ports.entry(key.sport).or_default().0 |= bit;
            }
            if shape.fields & SHAPE_DPORT != 0 {
                index.ports.entry(key.dport).or_default().1 |= bit;
            }
        }
        // A trie answers with the longest prefix only: each entry carries the
        // shapes of the shorter prefixes in use that contain it.
        let mut lengths: BTreeMap<(AddrField, u8), BTreeSet<u8>> = BTreeMap::new();
        for prefix in own.keys() {
            lengths.entry((prefix.field, prefix.family)).or_default().insert(prefix.len);
        }
        for (prefix, shapes) in own.iter().filter(|(p, _)| p.family == 4) {
            let first = u16::from_be_bytes([prefix.addr[0], prefix.addr[1]]);
            let span = 1u32 << 16u8.saturating_sub(prefix.len);
            for block in u32::from(first)..u32::from(first) + span {
                *index.blocks.entry((prefix.field, block as u16)).or_default() |= shapes;
            }
        }
        for (prefix, shapes) in &own {
            let mut all = *shapes;
            for len in lengths[&(prefix.field, prefix.family)].range(..prefix.len) {
                let above = Prefix { len: *len, addr: masked(&prefix.addr, *len), ..*prefix };
                all |= own.get(&above).copied().unwrap_or(0);
            }
            index.prefixes.insert(*prefix, all);
        }
        index
    }

    /// The writes that turn the index `self` into `to`: entries added or
    /// changed, then entries `to` lacks (None: delete; ports and protocols,
    /// array slots, are written empty).
    pub fn changes_to(&self, to: &Self) -> IndexChanges {
        let mut changes = IndexChanges::default();
        for (prefix, shapes) in &to.prefixes {
            if self.prefixes.get(prefix) != Some(shapes) {
                changes.prefixes.push((*prefix, Some(*shapes)));
            }
        }
        changes.prefixes.extend(self.prefixes.keys().filter(|p| !to.prefixes.contains_key(p)).map(|p| (*p, None)));
        for (block, shapes) in &to.blocks {
            if self.blocks.get(block) != Some(shapes) {
                changes.blocks.push((*block, *shapes));
            }
        }
        changes.blocks.extend(self.blocks.keys().filter(|b| !to.blocks.contains_key(b)).map(|b| (*b, 0)));
        for (port, shapes) in &to.ports {
            if self.ports.get(port) != Some(shapes) {
                changes.ports.push((*port, *shapes));
            }
        }
        changes.ports.extend(self.ports.keys().filter(|p| !to.ports.contains_key(p)).map(|p| (*p, (0, 0))));
        for (proto, shapes) in &to.protocols {
            if self.protocols.get(proto) != Some(shapes) {
                changes.protocols.push((*proto, *shapes));
            }
        }
        changes.protocols.extend(self.protocols.keys().filter(|p| !to.protocols.contains_key(p)).map(|p| (*p, 0)));
        changes
    }
}

/// Index writes, as `ShapeIndex::changes_to` plans them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexChanges {
    pub prefixes: Vec<(Prefix, Option<u32>)>,
    pub blocks: Vec<((AddrField, u16), u32)>,
    pub ports: Vec<(u16, (u32, u32))>,
    pub protocols: Vec<(u8, u32)>,
}

impl IndexChanges {
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.blocks.is_empty() && self.ports.is_empty() && self.protocols.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn key(src: [u8; 4], proto: u8, dport: u16) -> Key {
        Key { ifindex: 0, family: 4, proto, sport: 0, dport, src: v4(src), dst: [0; 16] }
    }

    fn shape(src_prefix: u8, fields: u8) -> Shape {
        Shape { family: 4, fields, src_prefix, dst_prefix: 0 }
    }

    #[test]
    fn a_longer_prefix_carries_the_shapes_of_the_shorter_ones_above_it() {
        let (wide, narrow, other) = (shape(8, SHAPE_PROTO), shape(24, SHAPE_PROTO | SHAPE_DPORT), shape(16, 0));
        let (k8, k24, k16) = (key([10, 0, 0, 0], 17, 0), key([10, 1, 2, 0], 17, 53), key([192, 168, 0, 0], 0, 0));
        let index = ShapeIndex::of([(0, &wide, &k8), (1, &narrow, &k24), (2, &other, &k16)]);
        let at = |addr: [u8; 4], len: u8| {
            index.prefixes.get(&Prefix { field: AddrField::Source, family: 4, len, addr: v4(addr) }).copied()
        };
        assert_eq!(at([10, 0, 0, 0], 8), Some(0b001));
        assert_eq!(at([10, 1, 2, 0], 24), Some(0b011), "the /24 also answers for the /8 above it");
        assert_eq!(at([192, 168, 0, 0], 16), Some(0b100), "a prefix outside the /8 carries only its own");
        assert_eq!(index.protocols.get(&17), Some(&0b011));
        let block = |a: u8, b: u8| index.blocks.get(&(AddrField::Source, u16::from_be_bytes([a, b]))).copied();
        assert_eq!(block(10, 1), Some(0b011), "the /24's block, and the /8 spans it");
        assert_eq!(block(10, 255), Some(0b001), "a /8 marks each of its 256 blocks");
        assert_eq!((block(192, 168), block(192, 169)), (Some(0b100), None));
        assert_eq!(index.ports.get(&53), Some(&(0, 0b010)));
    }

    #[test]
    fn open_fields_are_the_shapes_that_do_not_constrain_them() {
        let shapes: BTreeMap<u32, Shape> = [(0, shape(8, SHAPE_PROTO)), (3, shape(0, SHAPE_DPORT))].into();
        let open = OpenFields::of(0b1001, &shapes);
        assert_eq!((open.source, open.destination, open.protocol), (0b1000, 0b1001, 0b1000));
        assert_eq!((open.source_port, open.destination_port), (0b1001, 0b0001));
        assert_eq!(OpenFields::of(0b0001, &shapes).source, 0, "only the shapes asked for");
    }

    #[test]
    fn changes_write_what_differs_and_empty_what_is_gone() {
        let (s, k) = (shape(24, SHAPE_PROTO | SHAPE_DPORT), key([10, 1, 2, 0], 17, 53));
        let k2 = key([10, 1, 3, 0], 17, 54);
        let one = ShapeIndex::of([(0, &s, &k)]);
        let two = ShapeIndex::of([(0, &s, &k), (0, &s, &k2)]);
        let grow = one.changes_to(&two);
        assert_eq!((grow.prefixes.len(), grow.ports, grow.protocols.len()), (1, vec![(54, (0, 1))], 0));
        assert!(grow.blocks.is_empty(), "both /24s are in the block 10.1/16");
        let shrink = two.changes_to(&one);
        assert_eq!(shrink.prefixes.len(), 1);
        assert_eq!(shrink.prefixes[0].1, None, "a prefix no rule has is deleted");
        assert_eq!(shrink.ports, vec![(54, (0, 0))]);
        assert!(one.changes_to(&one).is_empty());
    }
}
