//! Which pods an experiment picks: the pods its selector matches, then as
//! many of them as its mode says, chosen at random (Chaos Mesh's rules).

use std::collections::BTreeMap;

use crate::spec::{Mode, Selector};

/// What selection needs to know of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The node the pod runs on.
    pub node: String,
}

/// Every field given must match: a namespace listed, the labels, when
/// `pods` lists names for the pod's namespace, one of them, and when
/// `nodes` lists nodes, the pod's.
pub fn matches(selector: &Selector, pod: &PodRef) -> bool {
    let in_namespaces = selector.namespaces.is_empty() || selector.namespaces.contains(&pod.namespace);
    let by_name =
        selector.pods.is_empty() || selector.pods.get(&pod.namespace).is_some_and(|names| names.contains(&pod.name));
    let on_nodes = selector.nodes.is_empty() || selector.nodes.contains(&pod.node);
    in_namespaces && by_name && on_nodes && selector.label_selector.matches(&pod.labels)
}

/// Picks from `matching` as `mode` says; `random(n)` returns a number in
/// `0..n`. An error when the selector matched no pod (Chaos Mesh's "no pod
/// is selected") or the mode picks none.
pub fn choose<T: Clone>(mode: Mode, matching: &[T], random: &mut dyn FnMut(usize) -> usize) -> Result<Vec<T>, String> {
    if matching.is_empty() {
        return Err("no pod matches the selector".into());
    }
    let len = matching.len();
    let count = match mode {
        Mode::One => 1,
        Mode::All => len,
        Mode::Fixed(n) => n.min(len),
        Mode::FixedPercent(p) => len * p as usize / 100,
        Mode::RandomMaxPercent(max) => len * random(max as usize + 1) / 100,
    };
    if count == 0 {
        return Err(format!("the mode picks none of the {len} matching pods"));
    }
    // A partial Fisher–Yates shuffle: `count` distinct pods, each equally likely.
    let mut pool: Vec<T> = matching.to_vec();
    for i in 0..count {
        let j = i + random(len - i);
        pool.swap(i, j);
    }
    pool.truncate(count);
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, app: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            node: "node-a".into(),
        }
    }

    fn selector(namespaces: &[&str], app: Option<&str>, pods: &[(&str, &str)]) -> Selector {
        let mut label_selector = weir_spec::LabelSelector::default();
        if let Some(app) = app {
            label_selector.match_labels.insert("app".into(), app.into());
        }
        let mut by_ns: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (ns, name) in pods {
            by_ns.entry(ns.to_string()).or_default().push(name.to_string());
        }
        Selector {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            label_selector,
            pods: by_ns,
            nodes: Vec::new(),
        }
    }

    #[test]
    fn every_field_must_match() {
        let web = pod("shop", "web-0", "web");
        assert!(matches(&selector(&["shop"], Some("web"), &[]), &web));
        assert!(!matches(&selector(&["other"], Some("web"), &[]), &web));
        assert!(!matches(&selector(&["shop"], Some("db"), &[]), &web));
        assert!(matches(&selector(&[], None, &[("shop", "web-0")]), &web));
        assert!(!matches(&selector(&[], None, &[("shop", "web-1")]), &web));
        assert!(!matches(&selector(&[], None, &[("other", "web-0")]), &web));
    }

    #[test]
    fn nodes_pick_the_pods_on_them() {
        let on = |node: &str| PodRef { node: node.into(), ..pod("shop", "web-0", "web") };
        let mut one_node = selector(&["shop"], None, &[]);
        one_node.nodes = vec!["node-b".into()];
        assert!(matches(&one_node, &on("node-b")));
        assert!(!matches(&one_node, &on("node-a")));
        one_node.nodes.push("node-a".into());
        assert!(matches(&one_node, &on("node-a")), "any node listed");
        // With the other fields: all must match.
        let mut web_on_b = selector(&["shop"], Some("db"), &[]);
        web_on_b.nodes = vec!["node-b".into()];
        assert!(!matches(&web_on_b, &on("node-b")), "the labels still count");
        // Parsed from a document: the experiment's namespace stays the default.
        let spec: crate::spec::PodSelectorSpec =
            serde_json::from_value(serde_json::json!({"nodes": ["node-b"]})).expect("spec");
        let parsed = crate::spec::selector("spec.selector", &spec, "shop").expect("valid");
        assert_eq!((parsed.namespaces, parsed.nodes), (vec!["shop".to_string()], vec!["node-b".to_string()]));
        let none: crate::spec::PodSelectorSpec =
            serde_json::from_value(serde_json::json!({"nodes": []})).expect("spec");
        assert_eq!(
            crate::spec::selector("spec.selector", &none, "shop").expect_err("refused").field,
            "spec.selector.nodes"
        );
        let bad: crate::spec::PodSelectorSpec =
            serde_json::from_value(serde_json::json!({"nodes": ["Node_B"]})).expect("spec");
        assert_eq!(
            crate::spec::selector("spec.selector", &bad, "shop").expect_err("refused").field,
            "spec.selector.nodes[0]"
        );
    }

    #[test]
    fn modes_pick_counts() {
        let pods: Vec<u32> = (0..10).collect();
        let mut first = |_n: usize| 0;
        assert_eq!(choose(Mode::One, &pods, &mut first).expect("picks").len(), 1);
        assert_eq!(choose(Mode::All, &pods, &mut first).expect("picks").len(), 10);
        assert_eq!(choose(Mode::Fixed(3), &pods, &mut first).expect("picks").len(), 3);
        assert_eq!(choose(Mode::Fixed(30), &pods, &mut first).expect("picks").len(), 10);
        assert_eq!(choose(Mode::FixedPercent(25), &pods, &mut first).expect("picks").len(), 2);
        let mut most = |n: usize| n - 1;
        assert_eq!(choose(Mode::RandomMaxPercent(50), &pods, &mut most).expect("picks").len(), 5);
        assert!(choose(Mode::RandomMaxPercent(50), &pods, &mut first).is_err());
        assert!(choose(Mode::FixedPercent(5), &pods, &mut first).is_err());
        assert!(choose::<u32>(Mode::All, &[], &mut first).is_err());
    }

    #[test]
    fn picks_are_distinct_and_follow_the_draws() {
        let pods: Vec<u32> = (0..5).collect();
        let mut last = |n: usize| n - 1;
        let picked = choose(Mode::Fixed(3), &pods, &mut last).expect("valid");
        assert_eq!(picked, vec![4, 0, 1]);
        let mut unique = picked.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 3);
    }
}

/// The same draws on every agent for the same seed (an experiment's name
/// and start time), so every node picks the same pods: SplitMix64.
pub fn seeded(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |n: usize| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if n == 0 {
            0
        } else {
            (z % n as u64) as usize
        }
    }
}

/// An experiment's seed: its namespace, name and start time (FNV-1a).
pub fn seed_of(namespace: &str, name: &str, started_unix_ns: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain([b'/']).chain(name.bytes()).chain(started_unix_ns.to_le_bytes()) {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The (sender, receiver) address pairs an experiment affects: from the
/// selected pods to the targets (`to`), back (`from`) or both; a pod is
/// never paired with itself; IPv6 pairs where both ends have IPv6.
pub fn pairs(
    direction: crate::spec::Direction,
    selected: &[(std::net::Ipv4Addr, Option<std::net::Ipv6Addr>)],
    targets: &[(std::net::Ipv4Addr, Option<std::net::Ipv6Addr>)],
) -> Vec<(std::net::IpAddr, std::net::IpAddr)> {
    use crate::spec::Direction;
    let mut out = std::collections::BTreeSet::new();
    for s in selected {
        for t in targets {
            if s.0 == t.0 {
                continue;
            }
            let mut both = vec![(s.0.into(), t.0.into())];
            if let (Some(s6), Some(t6)) = (s.1, t.1) {
                both.push((s6.into(), t6.into()));
            }
            for (a, b) in both {
                if matches!(direction, Direction::To | Direction::Both) {
                    out.insert((a, b));
                }
                if matches!(direction, Direction::From | Direction::Both) {
                    out.insert((b, a));
                }
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod seeded_tests {
    use super::*;
    use crate::spec::Direction;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn the_same_seed_picks_the_same_pods() {
        let pods: Vec<u32> = (0..20).collect();
        let seed = seed_of("shop", "cut", 1);
        let a = choose(Mode::Fixed(5), &pods, &mut seeded(seed)).expect("picks");
        let b = choose(Mode::Fixed(5), &pods, &mut seeded(seed)).expect("picks");
        assert_eq!(a, b);
        let c = choose(Mode::Fixed(5), &pods, &mut seeded(seed_of("shop", "cut", 2))).expect("picks");
        assert_ne!(a, c, "another start, another draw");
    }

    #[test]
    fn pairs_follow_the_direction() {
        let a = (Ipv4Addr::new(10, 0, 0, 1), None);
        let b = (Ipv4Addr::new(10, 0, 0, 2), None);
        let ip = |x: (Ipv4Addr, _)| IpAddr::from(x.0);
        assert_eq!(pairs(Direction::To, &[a], &[a, b]), vec![(ip(a), ip(b))]);
        assert_eq!(pairs(Direction::From, &[a], &[b]), vec![(ip(b), ip(a))]);
        assert_eq!(pairs(Direction::Both, &[a], &[b]).len(), 2);
    }
}
