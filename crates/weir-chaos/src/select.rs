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
}

/// Every field given must match: a namespace listed, the labels, and when
/// `pods` lists names for the pod's namespace, one of them.
pub fn matches(selector: &Selector, pod: &PodRef) -> bool {
    let in_namespaces = selector.namespaces.is_empty() || selector.namespaces.contains(&pod.namespace);
    let by_name =
        selector.pods.is_empty() || selector.pods.get(&pod.namespace).is_some_and(|names| names.contains(&pod.name));
    in_namespaces && by_name && selector.label_selector.matches(&pod.labels)
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
        PodRef { namespace: ns.into(), name: name.into(), labels: [("app".to_string(), app.to_string())].into() }
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
        Selector { namespaces: namespaces.iter().map(|s| s.to_string()).collect(), label_selector, pods: by_ns }
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
