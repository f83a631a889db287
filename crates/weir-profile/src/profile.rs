//! Folded stacks: the common currency of profiles. Pure.

use std::collections::HashMap;

/// Shown where frame-pointer unwinding left the program's code: the frames
/// beyond it would be wrong, so they are cut and the stack is marked.
pub const UNWIND_STOPPED: &str = "[unwind stopped: no frame pointer?]";
/// Shown for a process whose user stack is missing.
pub const NO_USER_STACK: &str = "[user stack unavailable]";

/// Frames that say something about a stack rather than name a function.
fn is_marker(frame: &str) -> bool {
    frame == UNWIND_STOPPED || frame == NO_USER_STACK
}

/// Stacks (outermost frame first) and how often each was sampled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub stacks: HashMap<Vec<String>, u64>,
}

/// One row of a top-N table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopEntry {
    pub function: String,
    /// Samples with this function innermost.
    pub self_samples: u64,
    /// Samples with this function anywhere on the stack.
    pub total_samples: u64,
}

impl Profile {
    pub fn add(&mut self, frames: Vec<String>, count: u64) {
        if count > 0 {
            *self.stacks.entry(frames).or_default() += count;
        }
    }

    pub fn merge(&mut self, other: Profile) {
        for (frames, count) in other.stacks {
            self.add(frames, count);
        }
    }

    pub fn samples(&self) -> u64 {
        self.stacks.values().sum()
    }

    /// `frame;frame;frame COUNT` lines, sorted, as flamegraph tools read them.
    pub fn folded(&self) -> String {
        let mut lines: Vec<String> =
            self.stacks.iter().map(|(frames, count)| format!("{} {count}", frames.join(";"))).collect();
        lines.sort();
        lines.join("\n") + if lines.is_empty() { "" } else { "\n" }
    }

    /// Parses folded text; lines that are not `stack count` are errors naming the line.
    pub fn parse_folded(text: &str) -> Result<Self, String> {
        let mut profile = Self::default();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let (stack, count) = line.rsplit_once(' ').ok_or_else(|| format!("line {}: no count", i + 1))?;
            let count = count.trim().parse().map_err(|_| format!("line {}: bad count {count:?}", i + 1))?;
            profile.add(stack.split(';').map(str::to_string).collect(), count);
        }
        Ok(profile)
    }

    /// The `n` functions with the most self samples, skipping the first `skip_roots` frames
    /// of every stack (node, pod and process frames are not functions).
    pub fn top(&self, n: usize, skip_roots: usize) -> Vec<TopEntry> {
        let mut by_function: HashMap<&str, (u64, u64)> = HashMap::new();
        for (frames, count) in &self.stacks {
            let functions: Vec<&String> =
                frames.get(skip_roots..).unwrap_or_default().iter().filter(|f| !is_marker(f)).collect();
            if let Some(leaf) = functions.last() {
                by_function.entry(leaf).or_default().0 += count;
            }
            let mut seen: Vec<&str> = Vec::new();
            for f in &functions {
                if !seen.contains(&f.as_str()) {
                    seen.push(f);
                    by_function.entry(f).or_default().1 += count;
                }
            }
        }
        let mut rows: Vec<TopEntry> = by_function
            .into_iter()
            .map(|(f, (s, t))| TopEntry { function: f.to_string(), self_samples: s, total_samples: t })
            .collect();
        rows.sort_by(|a, b| {
            b.self_samples
                .cmp(&a.self_samples)
                .then(b.total_samples.cmp(&a.total_samples))
                .then(a.function.cmp(&b.function))
        });
        rows.truncate(n);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(s: &str) -> Vec<String> {
        s.split(';').map(str::to_string).collect()
    }

    #[test]
    fn folded_round_trips_and_merges() {
        let mut p = Profile::default();
        p.add(frames("node-a;web;main;outer;inner"), 7);
        p.add(frames("node-a;web;main;outer"), 2);
        let mut q = Profile::parse_folded(&p.folded()).expect("parses");
        assert_eq!(q, p);
        q.merge(p.clone());
        assert_eq!(q.samples(), 18);
        assert!(Profile::parse_folded("a;b x").is_err());
    }

    #[test]
    fn top_counts_self_and_total_once_per_stack() {
        let mut p = Profile::default();
        p.add(frames("n;pod;main;f;f;g"), 5);
        p.add(frames("n;pod;main;f"), 3);
        p.add(frames(&format!("n;pod;{UNWIND_STOPPED};g")), 1);
        let top = p.top(10, 2);
        assert_eq!(top[0], TopEntry { function: "g".into(), self_samples: 6, total_samples: 6 });
        assert!(top.iter().all(|t| t.function != UNWIND_STOPPED), "markers are not functions");
        let f = top.iter().find(|t| t.function == "f").expect("f");
        assert_eq!((f.self_samples, f.total_samples), (3, 8), "recursion counts once in total");
        assert!(top.iter().all(|t| t.function != "n" && t.function != "pod"), "roots skipped");
    }
}
