//! The packet filter as the agent runs it: desired rules by origin, the
//! applied state with a journal, and the expression program in front.
//!
//! **Invariant: the state file is written before and after every change.**
//! Before the kernel's maps are touched, the wanted rules are recorded as
//! pending; after, the applied state replaces them. An agent killed in
//! between finishes the same change when it starts again (the writes are
//! idempotent), so the kernel and the record never part ways for long.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use weir_bpf::datapath::PinLayout;
use weir_bpf::filter::{self, FilterMaps};
use weir_filter::pcap::ClassicInsn;
use weir_filter::{plan::plan, Applied, RuleSpec, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("rule {name:?} already belongs to {owner}")]
    Conflict { name: String, owner: String },
    #[error("no rule named {0:?}")]
    NoSuchRule(String),
    #[error(transparent)]
    Bpf(#[from] weir_bpf::BpfError),
    #[error("filter state file {path}: {message}")]
    State { path: PathBuf, message: String },
}

/// A wanted rule and where it came from (a FilterPolicy's name, or "cli").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedRule {
    /// Shared by the origin's rules.
    pub origin: Arc<str>,
    /// Shared with the applied state (`AppliedRule::spec`).
    pub spec: Arc<RuleSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    /// What the kernel holds.
    applied: Applied,
    /// Wanted rules, in the order they were first added.
    desired: Vec<OwnedRule>,
    /// A change that may have been interrupted: the rules it was making live.
    #[serde(default)]
    pending: Option<Vec<OwnedRule>>,
}

/// What an update did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Rules written to a new slot: new ones and changed ones.
    pub added: Vec<String>,
    /// Rules whose slot was freed: removed ones and changed ones.
    pub removed: Vec<String>,
    /// Rules kept by name whose spec changed.
    pub changed: Vec<String>,
    pub unchanged: usize,
    pub apply_ns: u64,
    pub total: usize,
}

/// The filter of one agent.
#[derive(Debug)]
pub struct FilterState {
    pins: PinLayout,
    maps: FilterMaps,
    path: PathBuf,
    record: Record,
    /// (slot, expression) of the installed expression program, in rank order.
    installed: Vec<(u32, String)>,
    /// The datapath's attachments, shared with status: pods' veths gain
    /// and lose XDP with the filter's rules.
    attachments: crate::netpolicy::Attachments,
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

impl FilterState {
    /// Opens the pinned filter maps and the record; finishes an interrupted
    /// change; puts the expression program (if any) in front.
    /// `fresh_maps`: the datapath's maps were created empty (first start, or
    /// after a reboot emptied bpffs), so the record's applied state is void.
    pub fn open(
        pins: &PinLayout,
        state_dir: &Path,
        fresh_maps: bool,
        attachments: crate::netpolicy::Attachments,
    ) -> Result<Self, FilterError> {
        let path = state_dir.join("filter.json");
        let record: Record = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| FilterError::State { path: path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(e) => return Err(FilterError::State { path, message: e.to_string() }),
        };
        let mut record = record;
        share_specs(&mut record);
        let mut state = Self {
            pins: pins.clone(),
            maps: FilterMaps::open(pins)?,
            path,
            record,
            installed: Vec::new(),
            attachments,
        };
        if fresh_maps && !state.record.applied.rules.is_empty() {
            tracing::info!(
                rules = state.record.desired.len(),
                "the kernel's filter maps are new; applying the recorded rules again"
            );
            state.record.applied = Applied::default();
            state.record.pending = Some(state.record.desired.clone());
        }
        if let Some(pending) = state.record.pending.clone() {
            tracing::warn!(rules = pending.len(), "finishing a filter change interrupted by a restart");
            state.commit(pending)?;
        }
        state.refresh_expressions(true)?;
        Ok(state)
    }

    fn save(&self) -> Result<(), FilterError> {
        use std::io::Write as _;
        let err = |message: String| FilterError::State { path: self.path.clone(), message };
        let tmp = self.path.with_extension("json.tmp");
        // Streamed: 100k rules would otherwise need their whole JSON in memory at once.
        let file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        let mut out = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut out, &self.record).map_err(|e| err(e.to_string()))?;
        out.flush().map_err(|e| err(e.to_string()))?;
        drop(out);
        std::fs::rename(&tmp, &self.path).map_err(|e| err(e.to_string()))
    }

    /// Makes `desired` the live rule set. Every rule set is held once: the
    /// wanted rules move into the record, the plan's result moves into it.
    fn commit(&mut self, desired: Vec<OwnedRule>) -> Result<Outcome, FilterError> {
        let weir_filter::Plan { ops, result, added, removed, changed, unchanged } =
            plan(&self.record.applied, desired.iter().map(|r| &r.spec), ifindex)?;
        let total = desired.len();
        self.record.pending = Some(desired);
        self.save()?;
        // Pods' veths carry the filter's XDP only while there are rules: on
        // before the first rule goes live, off after the last one went.
        let pods_xdp = self.pods_xdp(total > 0)?;
        // The change takes effect at the flip; what follows only tidies up.
        // The grace pause directly follows the flip.
        let flip = ops.iter().position(|op| matches!(op, weir_filter::plan::Op::Grace)).unwrap_or(ops.len());
        let start = Instant::now();
        self.maps.execute(&ops[..flip])?;
        self.record.applied = result;
        // New XDP links run the node program: the expression program goes in front of them too.
        self.refresh_expressions(pods_xdp)?;
        let apply_ns = start.elapsed().as_nanos() as u64;
        self.maps.execute(&ops[flip..])?;
        drop(ops);
        if total == 0 {
            self.pods_xdp(false)?;
        }
        if let Some(desired) = self.record.pending.take() {
            self.record.desired = desired;
        }
        self.save()?;
        crate::heap::release_free_memory();
        Ok(Outcome { added, removed, changed, unchanged, apply_ns, total })
    }

    /// Puts the filter's XDP on pods' veths (`on`) or takes it off, keeping
    /// the attachments status reports in step; true when XDP links were made.
    fn pods_xdp(&mut self, on: bool) -> Result<bool, FilterError> {
        let change = weir_bpf::datapath::set_pods_xdp(&self.pins, on)?;
        if change.attached.is_empty() && change.detached.is_empty() {
            return Ok(false);
        }
        tracing::info!(
            attached = ?change.attached.iter().map(|a| &a.interface).collect::<Vec<_>>(),
            detached = ?change.detached,
            "the filter's XDP on pods' veths follows its rules"
        );
        if let Ok(mut attachments) = self.attachments.lock() {
            let xdp_gone = |a: &weir_bpf::datapath::Attachment| {
                a.hook == weir_bpf::datapath::Hook::XdpIngress && change.detached.contains(&a.interface)
            };
            attachments.retain(|a| !xdp_gone(a));
            attachments.extend(change.attached.iter().cloned());
        }
        Ok(!change.attached.is_empty())
    }

    /// Installs a fresh expression program when the expression rules changed
    /// (or always, with `force`), or puts the node program back when none are left.
    fn refresh_expressions(&mut self, force: bool) -> Result<(), FilterError> {
        let wanted: Vec<(u32, String)> =
            self.record.applied.expressions().iter().map(|(r, e)| (r.slot, e.to_string())).collect();
        if wanted == self.installed && !force {
            return Ok(());
        }
        let report = filter::install_entry(&self.pins, &classic_programs(&wanted)?)?;
        for (interface, why) in &report.vlan_blind {
            tracing::debug!(interface, why, "the filter cannot see 802.1Q tags the kernel took out of frames here");
        }
        self.installed = wanted;
        Ok(())
    }

    /// Replaces the rules of `origin` with `rules`.
    pub fn replace_origin(&mut self, origin: &str, rules: Vec<RuleSpec>) -> Result<Outcome, FilterError> {
        let merged = replaced(&self.record.desired, origin, rules)?;
        tracing::debug!(visits = merged.visits, "rule sets merged");
        self.commit(merged.rules)
    }

    /// Adds rules, or changes rules of the same name and origin in place.
    pub fn add(&mut self, origin: &str, rules: Vec<RuleSpec>) -> Result<Outcome, FilterError> {
        let merged = added(&self.record.desired, origin, rules)?;
        tracing::debug!(visits = merged.visits, "rule sets merged");
        self.commit(merged.rules)
    }

    pub fn delete(&mut self, names: &[String]) -> Result<Outcome, FilterError> {
        let wanted: HashSet<&str> = self.record.desired.iter().map(|r| r.spec.name.as_str()).collect();
        if let Some(missing) = names.iter().find(|n| !wanted.contains(n.as_str())) {
            return Err(FilterError::NoSuchRule(missing.clone()));
        }
        let gone: HashSet<&str> = names.iter().map(String::as_str).collect();
        let desired = self.record.desired.iter().filter(|r| !gone.contains(r.spec.name.as_str())).cloned().collect();
        self.commit(desired)
    }

    /// Rules with their counters, in the order they were added.
    pub fn list(&self) -> Result<Vec<(&OwnedRule, u32, weir_bpf::api::Counter)>, FilterError> {
        let slots: Vec<u32> = self
            .record
            .desired
            .iter()
            .map(|r| self.record.applied.rules.get(&r.spec.name).map_or(0, |a| a.slot))
            .collect();
        let counters = self.maps.counters(&slots)?;
        Ok(self.record.desired.iter().zip(slots).zip(counters).map(|((r, s), c)| (r, s, c)).collect())
    }

    pub fn drops(&self) -> Result<Vec<(&'static str, u64)>, FilterError> {
        let drops = self.maps.drops()?;
        Ok(weir_bpf::api::drop_reason::ALL
            .iter()
            .filter(|(c, _, _)| *c != weir_bpf::api::drop_reason::NONE)
            .map(|(c, name, _)| (*name, drops.get(*c as usize).map_or(0, |d| d.packets)))
            .collect())
    }

    pub fn events_lost(&self) -> Result<u64, FilterError> {
        Ok(self.maps.events_lost()?)
    }

    pub fn has_expression_program(&self) -> bool {
        !self.installed.is_empty()
    }

    /// The rule in `slot`.
    pub fn rule_name(&self, slot: u32) -> Option<String> {
        self.record.applied.rules.values().find(|r| r.slot == slot).map(|r| r.spec.name.clone())
    }

    /// Runs `packets` through one private copy of the datapath, loaded once
    /// for all of them. A frame shorter than an Ethernet header is not run.
    pub fn simulate(&self, packets: &[Vec<u8>]) -> Result<SimulationReport, FilterError> {
        const ETH_HLEN: usize = 14;
        let runnable: Vec<Vec<u8>> = packets.iter().filter(|p| p.len() >= ETH_HLEN).cloned().collect();
        let simulation = match expression_program(&self.installed)? {
            Some(program) => {
                let loader = |result: BorrowedFd<'_>, tail_calls: BorrowedFd<'_>| {
                    filter::load_expressions(&program, result, tail_calls)
                };
                filter::simulate(&self.pins, &runnable, Some(&loader))?
            }
            None => filter::simulate(&self.pins, &runnable, None)?,
        };
        let by_slot: HashMap<u32, &weir_filter::plan::AppliedRule> =
            self.record.applied.rule_values().map(|r| (r.slot, r)).collect();
        let mut decisions = simulation.decisions.into_iter();
        let packets = packets
            .iter()
            .map(|packet| {
                if packet.len() < ETH_HLEN {
                    return Err(format!("{} bytes is shorter than an Ethernet header", packet.len()));
                }
                let decision = decisions.next().ok_or("the simulation ended early")?;
                let decision = decision.map_err(|e| error_chain(&e))?;
                let rule = decision.slot.and_then(|slot| by_slot.get(&slot).copied());
                Ok(SimulatedPacket {
                    verdict: decision.verdict,
                    rule: rule.map(|r| r.spec.name.clone()),
                    action: rule.map(|r| r.compiled.entry.action),
                })
            })
            .collect();
        Ok(SimulationReport { program_id: simulation.program_id, packets })
    }
}

/// An error and its causes on one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// What decided one simulated packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedPacket {
    /// XDP verdict.
    pub verdict: u32,
    /// The deciding rule; None when none matched (the packet passes).
    pub rule: Option<String>,
    /// The rule's action, as the datapath codes it (`api::filter_action`).
    pub action: Option<u8>,
}

/// The packets of one simulation, each decided or refused by the kernel.
#[derive(Debug)]
pub struct SimulationReport {
    /// The kernel's id of the one datapath copy every packet ran through.
    pub program_id: u32,
    pub packets: Vec<Result<SimulatedPacket, String>>,
}

/// The classic programs of `expressions` (slot, tcpdump text), in order.
fn classic_programs(expressions: &[(u32, String)]) -> Result<Vec<(u32, Vec<ClassicInsn>)>, SpecError> {
    expressions
        .iter()
        .map(|(slot, text)| {
            weir_filter::pcap::compile(text)
                .map(|c| (*slot, c))
                .map_err(|e| SpecError { field: "expression".into(), message: format!("{text:?}: {e}") })
        })
        .collect()
}

/// The expression program testing `expressions` (slot, tcpdump text) in order; None for none.
fn expression_program(expressions: &[(u32, String)]) -> Result<Option<weir_filter::expr::Program>, SpecError> {
    if expressions.is_empty() {
        return Ok(None);
    }
    weir_filter::expr::generate(&classic_programs(expressions)?, None)
        .map(Some)
        .map_err(|message| SpecError { field: "expression".into(), message })
}
/// Points each applied rule at its wanted rule's spec where they are equal,
/// and the rules of one origin at one name: read back from the state file
/// they are copies.
fn share_specs(record: &mut Record) {
    let mut origins: HashSet<Arc<str>> = HashSet::new();
    for rule in &mut record.desired {
        match origins.get(&rule.origin) {
            Some(shared) => rule.origin = Arc::clone(shared),
            None => {
                origins.insert(Arc::clone(&rule.origin));
            }
        }
    }
    let wanted: HashMap<&str, &Arc<RuleSpec>> =
        record.desired.iter().map(|r| (r.spec.name.as_str(), &r.spec)).collect();
    for rule in record.applied.rules.values_mut() {
        if let Some(spec) = wanted.get(rule.spec.name.as_str()).filter(|spec| ***spec == rule.spec) {
            // Read back from the file, so not shared: make_mut does not copy it.
            Arc::make_mut(rule).spec = Arc::clone(spec);
        }
    }
}

/// A new wanted rule set, and how many rules were looked at to make it.
#[derive(Debug)]
struct Merged {
    rules: Vec<OwnedRule>,
    /// Rule records visited or looked up by name: linear in the rules, never pairwise.
    visits: usize,
}

/// `desired` with the rules of `origin` replaced by `rules` (kept in place
/// where a name stays, new ones at the end). Rules are matched by name
/// through a hash, so replacing 100k rules with 100k costs 100k lookups.
/// A rule that stays as it was keeps its spec: re-applying 100k rules
/// holds them once, not twice.
fn replaced(desired: &[OwnedRule], origin: &str, rules: Vec<RuleSpec>) -> Result<Merged, FilterError> {
    let mut visits = 0;
    let owners: HashMap<&str, &OwnedRule> =
        desired.iter().inspect(|_| visits += 1).map(|r| (r.spec.name.as_str(), r)).collect();
    for rule in &rules {
        visits += 1;
        if let Some(owner) = owners.get(rule.name.as_str()).filter(|owner| &*owner.origin != origin) {
            return Err(FilterError::Conflict { name: rule.name.clone(), owner: owner.origin.to_string() });
        }
    }
    let origin = shared_origin(desired, origin);
    let mut merged: Vec<OwnedRule> = desired.iter().filter(|r| r.origin != origin).cloned().collect();
    visits += desired.len();
    merged.extend(rules.into_iter().map(|spec| {
        let spec = match owners.get(spec.name.as_str()) {
            Some(existing) if *existing.spec == spec => Arc::clone(&existing.spec),
            _ => Arc::new(spec),
        };
        OwnedRule { origin: Arc::clone(&origin), spec }
    }));
    Ok(Merged { rules: merged, visits })
}

/// `origin` as the desired rules already share it, or new.
fn shared_origin(desired: &[OwnedRule], origin: &str) -> Arc<str> {
    desired.iter().find(|r| &*r.origin == origin).map_or_else(|| Arc::from(origin), |r| Arc::clone(&r.origin))
}

/// `desired` with `rules` added, or changed in place where `origin` already has them.
fn added(desired: &[OwnedRule], origin: &str, rules: Vec<RuleSpec>) -> Result<Merged, FilterError> {
    let mut merged = desired.to_vec();
    let mut visits = desired.len();
    let origin = shared_origin(desired, origin);
    let mut index: HashMap<String, usize> = merged.iter().enumerate().map(|(i, r)| (r.spec.name.clone(), i)).collect();
    for spec in rules {
        visits += 1;
        match index.get(&spec.name).map(|i| &mut merged[*i]) {
            Some(existing) if existing.origin != origin => {
                return Err(FilterError::Conflict { name: spec.name, owner: existing.origin.to_string() })
            }
            // An unchanged rule keeps the spec already held.
            Some(existing) if *existing.spec == spec => {}
            Some(existing) => existing.spec = Arc::new(spec),
            None => {
                index.insert(spec.name.clone(), merged.len());
                merged.push(OwnedRule { origin: Arc::clone(&origin), spec: Arc::new(spec) });
            }
        }
    }
    Ok(Merged { rules: merged, visits })
}

/// Parses the rules of an update request.
pub fn parse_rules(json: &str) -> Result<Vec<RuleSpec>, SpecError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let rules: Vec<RuleSpec> =
        serde_json::from_str(json).map_err(|e| SpecError { field: "rules".into(), message: e.to_string() })?;
    let mut names = std::collections::BTreeSet::new();
    for rule in &rules {
        rule.validate(&format!("rules[{}]", rule.name))?;
        if !names.insert(rule.name.clone()) {
            return Err(SpecError {
                field: format!("rules[{}].name", rule.name),
                message: "duplicate rule name".into(),
            });
        }
    }
    Ok(rules)
}

/// Counters by rule name, for metrics.
pub fn counters_by_rule(state: &FilterState) -> BTreeMap<String, weir_bpf::api::Counter> {
    state.list().map(|rows| rows.into_iter().map(|(r, _, c)| (r.spec.name.clone(), c)).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_filter::spec::{Action, MatchSpec, PortRange, Protocol};

    fn rule(name: &str, port: u16) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            priority: 1000,
            matches: MatchSpec {
                protocol: Some(Protocol::UDP),
                destination_port: Some(PortRange { low: port, high: port }),
                ..Default::default()
            },
            expression: None,
            action: Action::Drop,
            rate_limit: None,
        }
    }

    #[test]
    fn replacing_100k_rules_with_100k_is_linear_not_pairwise() {
        const N: usize = 100_000;
        let policy: Vec<RuleSpec> = (0..N).map(|i| rule(&format!("r{i}"), (i % 60_000) as u16 + 1)).collect();
        let mut desired: Vec<OwnedRule> =
            policy.iter().map(|spec| OwnedRule { origin: "policy".into(), spec: Arc::new(spec.clone()) }).collect();
        desired.push(OwnedRule { origin: "cli".into(), spec: Arc::new(rule("mine", 7)) });
        let mut changed = policy.clone();
        changed[N / 2] = rule(&format!("r{}", N / 2), 9);
        let merged = replaced(&desired, "policy", changed.clone()).expect("merges");
        assert_eq!(merged.rules.len(), N + 1);
        assert_eq!(merged.rules[0].spec.name, "mine", "the other origin's rule stays");
        assert_eq!(*merged.rules[1 + N / 2].spec, changed[N / 2]);
        assert!(merged.visits <= 4 * (N + 1), "{} visits for {N} rules: pairwise matching", merged.visits);

        let merged = added(&desired, "policy", changed).expect("merges");
        assert_eq!(merged.rules.len(), N + 1);
        assert_eq!(merged.rules[N / 2].spec.matches.destination_port.map(|p| p.low), Some(9));
        assert!(merged.visits <= 4 * (N + 1), "{} visits for {N} rules: pairwise matching", merged.visits);

        let conflict = replaced(&desired, "other", vec![rule("mine", 8)]).expect_err("a conflict");
        assert!(matches!(conflict, FilterError::Conflict { owner, .. } if owner == "cli"));
    }

    /// Re-applying a policy holds its unchanged rules once: the merged rules
    /// and then the plan's applied state point at the specs already held.
    #[test]
    fn reapplied_rules_share_what_is_held() {
        let policy: Vec<RuleSpec> = (0..100).map(|i| rule(&format!("r{i}"), i + 1)).collect();
        let first = replaced(&[], "FilterPolicy/p", policy.clone()).expect("merges").rules;
        assert!(first.windows(2).all(|w| Arc::ptr_eq(&w[0].origin, &w[1].origin)), "one origin name for all");
        let applied = plan(&Applied::default(), first.iter().map(|r| &r.spec), |_| None).expect("plans").result;

        let mut changed = policy;
        changed[7] = rule("r7", 999);
        let second = replaced(&first, "FilterPolicy/p", changed).expect("merges").rules;
        for (before, after) in first.iter().zip(&second) {
            assert_eq!(Arc::ptr_eq(&before.spec, &after.spec), before.spec.name != "r7", "{}", before.spec.name);
            assert!(Arc::ptr_eq(&before.origin, &after.origin));
        }
        let next = plan(&applied, second.iter().map(|r| &r.spec), |_| None).expect("plans").result;
        for (name, rule) in &next.rules {
            assert_eq!(Arc::ptr_eq(rule, &applied.rules[name]), name != "r7", "{name}: kept rules are not copied");
        }
    }
}
