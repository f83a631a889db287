//! From the rules the kernel holds to the rules wanted, as map writes. Pure.
//!
//! An update runs in three phases (see `bpf/api/filter.h`):
//! 1. prepare: write new rules live only in the inactive generation, link
//!    them at the front of their key's chain, clear the inactive bit of
//!    removed rules, grow the shape index to cover both generations, publish
//!    the inactive generation's shape set;
//! 2. flip: one write of the config makes the prepared generation live;
//! 3. settle: after a grace period, give surviving rules both bits, relink
//!    chains in rank order, shrink the shape index to the new generation's
//!    rules and delete what was removed.
//!
//! Every phase writes only what changed, so adding one rule to ten thousand
//! costs a handful of map writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::compile::{compile, CompiledRule, Key, Shape};
use crate::index::{AddrField, OpenFields, Prefix, ShapeIndex};
use crate::spec::{RuleSpec, SpecError};

pub const MAX_RULES: u32 = 131_072;
pub const MAX_SHAPES: u32 = 16;
pub const MAX_CHAIN: usize = 8;

/// A rule as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRule {
    pub slot: u32,
    /// Shared with the wanted rule it came from: 100k rules are held once.
    pub spec: Arc<RuleSpec>,
    pub compiled: CompiledRule,
    pub shape_id: Option<u32>,
}

/// Everything the kernel holds, as the agent records it in its state dir.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The live generation.
    pub active: u8,
    /// Rules added so far; the low half of each new rank.
    pub next_order: u32,
    /// Shared between the plan's before and after: a rule a change keeps
    /// is not copied (100k rules would be held twice).
    pub rules: BTreeMap<String, Arc<AppliedRule>>,
    pub shapes: BTreeMap<u32, Shape>,
}

/// One map write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A shape and the lowest rank any of its rules may have (the datapath
    /// skips a shape's lookup once its best rule so far ranks at or below it).
    Shape {
        id: u32,
        shape: Shape,
        best_rank: u64,
    },
    /// Zero a slot's counters and token bucket before it is used.
    ResetSlot {
        slot: u32,
    },
    /// The rule's entry at its slot. The rule is shared with the applied
    /// state, not copied: the first apply of 100k rules plans 200k rule and
    /// key writes, and a copied entry made each write 88 bytes.
    Rule {
        rule: Arc<AppliedRule>,
        generations: u8,
        next: u32,
    },
    /// The rule's key (`AppliedRule::map_key`), heading a chain at `head`.
    Key {
        rule: Arc<AppliedRule>,
        head: u32,
    },
    /// Deletes the key of a removed rule (`AppliedRule::map_key`).
    DeleteKey {
        rule: Arc<AppliedRule>,
    },
    Config {
        active: u8,
        shapes: [u32; 2],
        /// Of the shapes of both generations.
        open: OpenFields,
        /// Rules live in generation `active`.
        rules: u32,
    },
    /// Sets (Some) or deletes (None) an address index entry.
    IndexPrefix {
        prefix: Prefix,
        shapes: Option<u32>,
    },
    /// Sets the IPv4 /16 block index of `field` at `block` (its top 16 bits).
    IndexBlock {
        field: AddrField,
        block: u16,
        shapes: u32,
    },
    /// Sets the port index at `port`: (source port shapes, destination port shapes).
    IndexPort {
        port: u16,
        shapes: (u32, u32),
    },
    IndexProtocol {
        protocol: u8,
        shapes: u32,
    },
    ClearRule {
        slot: u32,
    },
    /// Wait for packets that started under the old generation to finish.
    Grace,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub result: Applied,
    /// Rules written to a new slot: new rules, and changed ones.
    pub added: Vec<String>,
    /// Rules whose slot is freed: removed rules, and changed ones.
    pub removed: Vec<String>,
    /// Rules kept by name whose spec changed (each in `added` and `removed`).
    pub changed: Vec<String>,
    pub unchanged: usize,
}

impl AppliedRule {
    /// Its shape and key in the shape's key map, if it is a map-backed rule.
    pub fn map_key(&self) -> Option<(u32, Key)> {
        self.shape_id.zip(self.compiled.key)
    }
}

impl Applied {
    /// The rules, in name order.
    pub fn rule_values(&self) -> impl Iterator<Item = &AppliedRule> + '_ {
        self.rules.values().map(|rule| &**rule)
    }

    fn mask(&self) -> u32 {
        self.shapes.keys().fold(0, |m, id| m | (1 << id))
    }

    /// Rules of each of `keys`, in rank order (the order chains are kept in).
    /// Only the keys a change touches: the chains of 100k rules would take
    /// 30 MB to change one of them.
    fn chains(&self, keys: &BTreeSet<(u32, Key)>) -> BTreeMap<(u32, Key), Vec<&Arc<AppliedRule>>> {
        let mut chains: BTreeMap<(u32, Key), Vec<&Arc<AppliedRule>>> = BTreeMap::new();
        if keys.is_empty() {
            return chains;
        }
        for rule in self.rules.values() {
            if let Some(key) = rule.map_key().filter(|key| keys.contains(key)) {
                chains.entry(key).or_default().push(rule);
            }
        }
        for chain in chains.values_mut() {
            chain.sort_by_key(|r| r.compiled.entry.rank);
        }
        chains
    }

    /// The shape index its map-backed rules need.
    pub fn index(&self) -> ShapeIndex {
        ShapeIndex::of(indexed(self.rule_values(), &self.shapes))
    }

    /// Expression rules in rank order, as the expression program must test them.
    pub fn expressions(&self) -> Vec<(&AppliedRule, &str)> {
        let mut rules: Vec<(&AppliedRule, &str)> =
            self.rule_values().filter_map(|r| r.compiled.expression.as_deref().map(|e| (r, e))).collect();
        rules.sort_by_key(|(r, _)| r.compiled.entry.rank);
        rules
    }
}

/// A wanted rule as `plan` takes it: borrowed (the applied state gets a
/// copy) or shared (the applied state shares it).
pub trait WantedRule {
    fn spec(&self) -> &RuleSpec;
    fn shared(&self) -> Arc<RuleSpec>;
    /// Whether `spec` is this very rule (not only an equal one).
    fn is(&self, spec: &Arc<RuleSpec>) -> bool;
}

impl WantedRule for &RuleSpec {
    fn spec(&self) -> &RuleSpec {
        self
    }
    fn shared(&self) -> Arc<RuleSpec> {
        Arc::new((*self).clone())
    }
    fn is(&self, _: &Arc<RuleSpec>) -> bool {
        false
    }
}

impl WantedRule for &Arc<RuleSpec> {
    fn spec(&self) -> &RuleSpec {
        self
    }
    fn shared(&self) -> Arc<RuleSpec> {
        Arc::clone(self)
    }
    fn is(&self, spec: &Arc<RuleSpec>) -> bool {
        Arc::ptr_eq(self, spec)
    }
}

/// Map-backed rules as the index takes them: (shape id, shape, key).
fn indexed<'a>(
    rules: impl Iterator<Item = &'a AppliedRule> + 'a,
    shapes: &'a BTreeMap<u32, Shape>,
) -> impl Iterator<Item = (u32, &'a Shape, &'a Key)> + 'a {
    rules.filter_map(move |r| Some((r.shape_id?, shapes.get(&r.shape_id?)?, r.compiled.key.as_ref()?)))
}

fn index_ops(from: &ShapeIndex, to: &ShapeIndex, ops: &mut Vec<Op>) {
    let changes = from.changes_to(to);
    ops.extend(changes.prefixes.into_iter().map(|(prefix, shapes)| Op::IndexPrefix { prefix, shapes }));
    ops.extend(changes.blocks.into_iter().map(|((field, block), shapes)| Op::IndexBlock { field, block, shapes }));
    ops.extend(changes.ports.into_iter().map(|(port, shapes)| Op::IndexPort { port, shapes }));
    ops.extend(changes.protocols.into_iter().map(|(protocol, shapes)| Op::IndexProtocol { protocol, shapes }));
}

/// The lowest rank of each shape's rules.
fn best_ranks<'a>(rules: impl Iterator<Item = &'a AppliedRule>) -> BTreeMap<u32, u64> {
    let mut best = BTreeMap::new();
    for rule in rules {
        if let Some(id) = rule.shape_id {
            let rank = best.entry(id).or_insert(u64::MAX);
            *rank = rule.compiled.entry.rank.min(*rank);
        }
    }
    best
}

fn next_of(chain: &[u32], i: usize) -> u32 {
    chain.get(i + 1).map_or(0, |slot| slot + 1)
}

/// Plans the move from `current` to exactly `desired`.
pub fn plan(
    current: &Applied,
    desired: impl IntoIterator<Item = impl WantedRule>,
    ifindex: impl Fn(&str) -> Option<u32>,
) -> Result<Plan, SpecError> {
    let active = current.active & 1;
    let next_gen = 1 - active;
    let field = |name: &str, inner: SpecError| SpecError {
        field: format!("rules[{name}].{}", inner.field).trim_end_matches('.').to_string(),
        message: inner.message,
    };

    let mut result = Applied { active: next_gen, next_order: current.next_order, ..Default::default() };
    let mut used: BTreeSet<u32> = current.rule_values().map(|r| r.slot).collect();
    let mut cursor = 0u32;
    let mut added = Vec::new();
    let mut unchanged = 0;
    for wanted in desired {
        let spec = wanted.spec();
        if result.rules.contains_key(&spec.name) {
            return Err(SpecError {
                field: format!("rules[{}].name", spec.name),
                message: "duplicate rule name".into(),
            });
        }
        if let Some(cur) = current.rules.get(&spec.name).filter(|cur| *cur.spec == *spec) {
            // The wanted rule's spec, not an old copy: the old one is freed with `current`.
            let kept = if wanted.is(&cur.spec) {
                Arc::clone(cur)
            } else {
                Arc::new(AppliedRule {
                    slot: cur.slot,
                    spec: wanted.shared(),
                    compiled: cur.compiled.clone(),
                    shape_id: cur.shape_id,
                })
            };
            result.rules.insert(spec.name.clone(), kept);
            unchanged += 1;
            continue;
        }
        spec.validate("").map_err(|e| field(&spec.name, e))?;
        let mut compiled = compile(spec, &ifindex).map_err(|e| field(&spec.name, e))?;
        compiled.entry.rank = (u64::from(spec.priority) << 32) | u64::from(result.next_order);
        result.next_order = result.next_order.wrapping_add(1);
        while used.contains(&cursor) {
            cursor += 1;
        }
        if cursor >= MAX_RULES {
            return Err(SpecError {
                field: format!("rules[{}]", spec.name),
                message: format!("more than {MAX_RULES} rules"),
            });
        }
        used.insert(cursor);
        result.rules.insert(
            spec.name.clone(),
            Arc::new(AppliedRule { slot: cursor, spec: wanted.shared(), compiled, shape_id: None }),
        );
        added.push(spec.name.clone());
    }
    let removed_rules: Vec<&Arc<AppliedRule>> = current
        .rules
        .values()
        .filter(|cur| result.rules.get(&cur.spec.name).is_none_or(|r| r.slot != cur.slot))
        .collect();

    // Shapes: keep ids of shapes in use; new shapes take ids free in both generations.
    let mut ids: BTreeMap<Shape, u32> = current.shapes.iter().map(|(id, s)| (*s, *id)).collect();
    for name in &added {
        // Just made, so not shared: make_mut does not copy it.
        let rule = Arc::make_mut(result.rules.get_mut(name).expect("just inserted"));
        let Some(shape) = rule.compiled.shape else { continue };
        let id = match ids.get(&shape) {
            Some(id) => *id,
            None => {
                let taken: BTreeSet<u32> = ids.values().copied().collect();
                let id = (0..MAX_SHAPES).find(|id| !taken.contains(id)).ok_or_else(|| SpecError {
                    field: format!("rules[{name}].match"),
                    message: format!("rules need more than {MAX_SHAPES} distinct shapes (combinations of address family, prefix lengths and exact interface, protocol and ports); use fewer distinct prefix lengths"),
                })?;
                ids.insert(shape, id);
                id
            }
        };
        rule.shape_id = Some(id);
    }
    let shape_of: BTreeMap<u32, Shape> = ids.iter().map(|(s, id)| (*id, *s)).collect();
    result.shapes = result.rule_values().filter_map(|r| r.shape_id).map(|id| (id, shape_of[&id])).collect();
    let mut masks = [0u32; 2];
    masks[usize::from(active)] = current.mask();
    masks[usize::from(next_gen)] = result.mask();
    let open_both = OpenFields::of(masks[0] | masks[1], &shape_of);
    let open_final = OpenFields::of(masks[usize::from(next_gen)], &shape_of);
    // The index grows to cover both generations before the flip and shrinks
    // to the new one's after it: it never lacks a shape a live rule needs.
    // Each index is built only when it can differ from one already built.
    let changes = !added.is_empty() || !removed_rules.is_empty();
    let index_final = if changes { result.index() } else { ShapeIndex::default() };
    let index_now = if changes && !current.rules.is_empty() { current.index() } else { ShapeIndex::default() };
    let index_union = (changes && !current.rules.is_empty()).then(|| {
        ShapeIndex::of(
            indexed(current.rule_values(), &current.shapes).chain(indexed(result.rule_values(), &result.shapes)),
        )
    });
    let index_both = index_union.as_ref().unwrap_or(&index_final);

    // Nothing is live (no rule in either generation): the live generation
    // has no shapes, so nothing looks a key up before the flip, and new
    // field rules go in with both generations' bits, written once; the
    // settle phase then has no rule or key of theirs to write again.
    let nothing_live = current.rules.is_empty();
    let new_generations = if nothing_live { 0b11 } else { 1 << next_gen };
    let added_set: BTreeSet<&str> = added.iter().map(String::as_str).collect();
    // A shape's best rank goes down before the flip, to cover rules of both
    // generations, and up after it, to the new generation's.
    let (best_now, best_both, best_final) = if changes {
        (
            best_ranks(current.rule_values()),
            best_ranks(current.rule_values().chain(result.rule_values())),
            best_ranks(result.rule_values()),
        )
    } else {
        Default::default()
    };
    let mut ops: Vec<Op> = best_both
        .iter()
        .filter(|(id, rank)| best_now.get(id).is_none_or(|now| *rank < now))
        .map(|(id, rank)| Op::Shape { id: *id, shape: shape_of[id], best_rank: *rank })
        .collect();

    // Phase 1: prepare, invisible to the live generation.
    let mut transition: BTreeMap<(u32, Key), Vec<u32>> = BTreeMap::new();
    // Added rules by key and rank, as one sorted list: a map of 100k
    // one-rule chains would cost an allocation each.
    let mut added_by_key: Vec<((u32, Key), &Arc<AppliedRule>)> = Vec::new();
    for name in &added {
        let rule = &result.rules[name];
        ops.push(Op::ResetSlot { slot: rule.slot });
        match (rule.shape_id, rule.compiled.key) {
            (Some(shape), Some(key)) => added_by_key.push(((shape, key), rule)),
            _ => ops.push(Op::Rule { rule: Arc::clone(rule), generations: 1 << next_gen, next: 0 }),
        }
    }
    added_by_key.sort_by_key(|(key, rule)| (*key, rule.compiled.entry.rank));
    let touched_now: BTreeSet<(u32, Key)> = removed_rules
        .iter()
        .filter_map(|r| r.shape_id.zip(r.compiled.key))
        .chain(added_by_key.iter().map(|(key, _)| *key))
        .collect();
    let current_chains = current.chains(&touched_now);
    drop(touched_now);
    for group in added_by_key.chunk_by(|a, b| a.0 == b.0) {
        let key = group[0].0;
        let fresh: Vec<&Arc<AppliedRule>> = group.iter().map(|(_, rule)| *rule).collect();
        let chain: Vec<u32> = fresh
            .iter()
            .map(|r| r.slot)
            .chain(current_chains.get(&key).into_iter().flatten().map(|r| r.slot))
            .collect();
        if chain.len() > MAX_CHAIN {
            return Err(SpecError {
                field: format!("rules[{}].match", fresh[0].spec.name),
                message: format!("more than {MAX_CHAIN} rules would share the same interface, protocol, ports and addresses; merge some of them"),
            });
        }
        for (i, rule) in fresh.iter().enumerate() {
            ops.push(Op::Rule { rule: Arc::clone(rule), generations: new_generations, next: next_of(&chain, i) });
        }
        ops.push(Op::Key { rule: Arc::clone(fresh[0]), head: chain[0] + 1 });
        if !removed_rules.is_empty() {
            transition.insert(key, chain);
        }
    }
    for rule in &removed_rules {
        let next = match (rule.shape_id, rule.compiled.key) {
            (Some(shape), Some(key)) => {
                let chain: Vec<u32> = transition
                    .get(&(shape, key))
                    .cloned()
                    .unwrap_or_else(|| current_chains[&(shape, key)].iter().map(|r| r.slot).collect());
                let i = chain.iter().position(|s| *s == rule.slot).unwrap_or(chain.len());
                next_of(&chain, i)
            }
            _ => 0,
        };
        ops.push(Op::Rule { rule: Arc::clone(rule), generations: 1 << active, next });
    }
    index_ops(&index_now, index_both, &mut ops);
    let (rules_now, rules_next) = (current.rules.len() as u32, result.rules.len() as u32);
    ops.push(Op::Config { active, shapes: masks, open: open_both, rules: rules_now });

    // Phase 2: flip.
    ops.push(Op::Config { active: next_gen, shapes: masks, open: open_both, rules: rules_next });
    ops.push(Op::Grace);

    // Phase 3: settle.
    let mut touched: BTreeSet<(u32, Key)> = BTreeSet::new();
    for rule in removed_rules.iter().copied().chain(added.iter().map(|n| &result.rules[n])) {
        if let (Some(shape), Some(key)) = (rule.shape_id, rule.compiled.key) {
            if !nothing_live {
                touched.insert((shape, key));
            }
        } else if added_set.contains(rule.spec.name.as_str())
            && result.rules.get(&rule.spec.name).is_some_and(|r| r.slot == rule.slot)
        {
            ops.push(Op::Rule { rule: Arc::clone(rule), generations: 0b11, next: 0 });
        }
    }
    // Built only now: the chains of 100k rules are not held beside phase 1's.
    let final_chains = result.chains(&touched);
    let removed_keys: BTreeMap<(u32, Key), &Arc<AppliedRule>> =
        removed_rules.iter().filter_map(|rule| Some((rule.map_key()?, *rule))).collect();
    for key in &touched {
        match final_chains.get(key) {
            Some(chain) => {
                let slots: Vec<u32> = chain.iter().map(|r| r.slot).collect();
                for (i, rule) in chain.iter().enumerate() {
                    ops.push(Op::Rule { rule: Arc::clone(rule), generations: 0b11, next: next_of(&slots, i) });
                }
                ops.push(Op::Key { rule: Arc::clone(chain[0]), head: slots[0] + 1 });
            }
            // No rule of the new set has the key, so a removed rule had it.
            None => {
                if let Some(rule) = removed_keys.get(key) {
                    ops.push(Op::DeleteKey { rule: Arc::clone(rule) });
                }
            }
        }
    }
    index_ops(index_both, &index_final, &mut ops);
    ops.extend(
        best_final
            .iter()
            .filter(|(id, rank)| best_both.get(id).is_some_and(|both| *rank > both))
            .map(|(id, rank)| Op::Shape { id: *id, shape: shape_of[id], best_rank: *rank }),
    );
    for rule in &removed_rules {
        ops.push(Op::ClearRule { slot: rule.slot });
    }
    ops.push(Op::Config {
        active: next_gen,
        shapes: [masks[usize::from(next_gen)]; 2],
        open: open_final,
        rules: rules_next,
    });

    let removed: Vec<String> = removed_rules.iter().map(|r| r.spec.name.clone()).collect();
    let changed = added.iter().filter(|name| current.rules.contains_key(*name)).cloned().collect();
    Ok(Plan { ops, result, added, removed, changed, unchanged })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Action, MatchSpec, PortRange, Protocol};

    fn drop_port(name: &str, port: u16, priority: u32) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            priority,
            matches: MatchSpec {
                protocol: Some(Protocol::UDP),
                destination_port: Some(PortRange { low: port, high: port }),
                source: Some("10.0.0.0/8".parse().expect("net")),
                ..Default::default()
            },
            expression: None,
            action: Action::Drop,
            rate_limit: None,
        }
    }

    fn apply(current: &Applied, desired: &[RuleSpec]) -> Plan {
        plan(current, desired, |_| None).expect("plans")
    }

    #[test]
    fn adding_one_rule_to_many_writes_only_that_rule() {
        let many: Vec<RuleSpec> = (0..1000).map(|i| drop_port(&format!("r{i}"), 1000 + i, 100)).collect();
        let first = apply(&Applied::default(), &many);
        assert_eq!(first.result.shapes.len(), 1, "one shape for a thousand CIDR+port rules");
        let mut more = many.clone();
        more.push(drop_port("extra", 53, 5));
        let second = apply(&first.result, &more);
        assert_eq!((second.added.len(), second.removed.len(), second.unchanged), (1, 0, 1000));
        // One more than the rule's own: its priority lowers its shape's best rank.
        assert!(second.ops.len() <= 11, "a handful of writes, not a rebuild: {:?}", second.ops);
    }

    /// The best rank the plan last wrote for each shape, up to `upto` ops.
    fn written_best(ops: &[Op], upto: usize) -> BTreeMap<u32, u64> {
        ops[..upto]
            .iter()
            .filter_map(|op| match op {
                Op::Shape { id, best_rank, .. } => Some((*id, *best_rank)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_shapes_best_rank_never_exceeds_a_live_rules_and_follows_the_rules_after_the_flip() {
        let rank = |p: &Plan, name: &str| p.result.rules[name].compiled.entry.rank;
        let first = apply(&Applied::default(), &[drop_port("a", 53, 100), drop_port("b", 54, 100)]);
        let grace = |p: &Plan| p.ops.iter().position(|op| *op == Op::Grace).expect("a grace");
        assert_eq!(written_best(&first.ops, grace(&first)), BTreeMap::from([(0, rank(&first, "a"))]));

        // A better rule: the shape's best rank is lowered before the flip makes it live.
        let second = apply(&first.result, &[drop_port("a", 53, 100), drop_port("b", 54, 100), drop_port("c", 55, 5)]);
        assert_eq!(written_best(&second.ops, grace(&second)), BTreeMap::from([(0, rank(&second, "c"))]));
        assert_eq!(written_best(&second.ops, second.ops.len()), BTreeMap::from([(0, rank(&second, "c"))]));

        // The best rule goes: its rank covers the shape until after the flip,
        // then the shape's best rank rises to the best remaining rule's.
        let third = apply(&second.result, &[drop_port("b", 54, 100)]);
        let at_flip = written_best(&third.ops, grace(&third));
        assert!(at_flip.is_empty(), "nothing raised before the flip: {at_flip:?}");
        assert_eq!(written_best(&third.ops, third.ops.len()), BTreeMap::from([(0, rank(&third, "b"))]));

        // Nothing changed: nothing written.
        let same = apply(&third.result, &[drop_port("b", 54, 100)]);
        assert!(written_best(&same.ops, same.ops.len()).is_empty());
    }

    #[test]
    fn changing_one_of_100k_rules_writes_only_that_rule() {
        // Distinct /32 sources spread the rules over keys, never more than a chain each.
        let rule = |i: u32, port: u16| {
            let mut r = drop_port(&format!("r{i}"), port, 100);
            r.matches.source = Some(format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000 + i)).parse().expect("net"));
            r
        };
        let many: Vec<RuleSpec> = (0..100_000).map(|i| rule(i, 53)).collect();
        let first = apply(&Applied::default(), &many);
        let mut changed = many.clone();
        changed[50_000] = rule(50_000, 54);
        let second = apply(&first.result, &changed);
        assert_eq!((second.added.len(), second.removed.len(), second.unchanged), (1, 1, 99_999));
        // One more than before the shape index: port 54 enters the port index.
        assert!(second.ops.len() <= 13, "a handful of writes, not a rebuild: {:?}", second.ops);
    }

    #[test]
    fn new_rules_are_invisible_until_the_flip_and_removed_ones_stay_visible_until_it() {
        let first = apply(&Applied::default(), &[drop_port("a", 53, 10)]);
        let second = apply(&first.result, &[drop_port("b", 53, 20)]);
        let (old, new) = (first.result.active, second.result.active);
        assert_ne!(old, new, "an update flips the generation");
        let flip =
            second.ops.iter().position(|op| matches!(op, Op::Config { active, .. } if *active == new)).expect("flip");
        let before: Vec<&Op> = second.ops[..flip].iter().collect();
        let slot_b = second.result.rules["b"].slot;
        let slot_a = first.result.rules["a"].slot;
        assert!(
            before.iter().any(
                |op| matches!(op, Op::Rule { rule, generations, .. } if rule.slot == slot_b && *generations == 1 << new)
            ),
            "b is written live in the new generation only"
        );
        assert!(
            before.iter().any(
                |op| matches!(op, Op::Rule { rule, generations, .. } if rule.slot == slot_a && *generations == 1 << old)
            ),
            "a keeps only the old generation before the flip"
        );
        assert!(
            second.ops[flip..].iter().any(|op| matches!(op, Op::ClearRule { slot } if *slot == slot_a)),
            "a is cleared after the flip"
        );
        assert!(second.ops[flip..].iter().any(|op| matches!(op, Op::Grace)));
    }

    #[test]
    fn with_nothing_live_each_field_rule_and_key_is_written_once_with_both_generations() {
        let rules = [drop_port("a", 53, 20), drop_port("b", 53, 10), drop_port("c", 54, 10)];
        let first = apply(&Applied::default(), &rules);
        let grace = first.ops.iter().position(|op| *op == Op::Grace).expect("a grace");
        let writes = |from: usize, to: usize| {
            first.ops[from..to]
                .iter()
                .filter_map(|op| match op {
                    Op::Rule { rule, generations, next } => Some((rule.slot, *generations, *next)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let slot = |name: &str| first.result.rules[name].slot;
        let mut before = writes(0, grace);
        before.sort_unstable();
        // a and b share a key: b (priority 10) heads the chain, a follows.
        let mut want = vec![(slot("a"), 0b11, 0), (slot("b"), 0b11, slot("a") + 1), (slot("c"), 0b11, 0)];
        want.sort_unstable();
        assert_eq!(before, want);
        assert_eq!(writes(grace, first.ops.len()), vec![], "nothing written again after the flip");
        let keys = first.ops.iter().filter(|op| matches!(op, Op::Key { .. })).count();
        assert_eq!(keys, 2, "each key once: {:?}", first.ops);

        // Once rules are live, new ones wait for the flip again.
        let second = apply(&first.result, &[drop_port("a", 53, 20), drop_port("d", 55, 10)]);
        let new = 1u8 << second.result.active;
        let d = second.result.rules["d"].slot;
        let grace = second.ops.iter().position(|op| *op == Op::Grace).expect("a grace");
        assert!(second.ops[..grace]
            .iter()
            .any(|op| matches!(op, Op::Rule { rule, generations, .. } if rule.slot == d && *generations == new)));
    }

    #[test]
    fn rules_sharing_a_key_are_chained_in_rank_order_and_ties_go_to_the_first_added() {
        let first = apply(&Applied::default(), &[drop_port("late", 53, 10), drop_port("early", 53, 10)]);
        let ranks: Vec<u64> = ["late", "early"].iter().map(|n| first.result.rules[*n].compiled.entry.rank).collect();
        assert!(ranks[0] < ranks[1], "equal priority: the first listed ranks first");
        let head = first
            .ops
            .iter()
            .rev()
            .find_map(|op| if let Op::Key { head, .. } = op { Some(*head) } else { None })
            .expect("key");
        assert_eq!(head, first.result.rules["late"].slot + 1);
    }

    #[test]
    fn too_many_rules_on_one_key_and_too_many_shapes_are_refused() {
        let same: Vec<RuleSpec> = (0..9).map(|i| drop_port(&format!("s{i}"), 53, i)).collect();
        assert!(plan(&Applied::default(), &same, |_| None).expect_err("chain").message.contains("share the same"));
        let shapes: Vec<RuleSpec> = (0..17u8)
            .map(|i| {
                let mut r = drop_port(&format!("p{i}"), 53, 1);
                r.matches.source = Some(format!("10.0.0.0/{}", 8 + i).parse::<ipnet::IpNet>().expect("net").trunc());
                r
            })
            .collect();
        assert!(plan(&Applied::default(), &shapes, |_| None).expect_err("shapes").message.contains("distinct shapes"));
    }

    #[test]
    fn a_changed_rule_moves_to_a_new_slot_and_its_old_slot_is_freed() {
        let first = apply(&Applied::default(), &[drop_port("a", 53, 10)]);
        let second = apply(&first.result, &[drop_port("a", 54, 10)]);
        assert_eq!((second.added.clone(), second.removed.clone()), (vec!["a".to_string()], vec!["a".to_string()]));
        assert_eq!(second.changed, ["a"], "reported as changed, not as removed and added");
        let fourth = apply(&second.result, &[drop_port("a", 54, 10), drop_port("b", 55, 10)]);
        assert_eq!((fourth.added, fourth.changed, fourth.unchanged), (vec!["b".to_string()], vec![], 1));
        assert_ne!(second.result.rules["a"].slot, first.result.rules["a"].slot);
        let third = apply(&second.result, &[]);
        assert!(third.result.rules.is_empty() && third.result.shapes.is_empty());
        assert!(third.ops.iter().any(|op| matches!(op, Op::DeleteKey { .. })));
    }
}
