//! The cluster's desired state in its etcd, pure: the key layout, what a
//! value holds, and what an agent must change to hold what the store holds.
//!
//! # Key layout
//! Everything `weir apply` stores lives under [`PREFIX`] (`weir/state/v1/`),
//! one key per object:
//! - namespaced kinds: `weir/state/v1/<resource>/<namespace>/<name>`
//!   (`services`, `endpointslices`, `networkpolicies`,
//!   `ciliumnetworkpolicies`);
//! - cluster-wide kinds: `weir/state/v1/<resource>/<name>`
//!   (`runtimepolicies`, `filterpolicies`).
//!
//! A value is JSON: `{"yaml": <the document as applied>, "appliedUnixNs": <when>}`
//! ([`Stored`]). NetworkChaos experiments are not kept here: they are
//! actions started on each node, not desired state.
//! The pods and nodes agents publish live beside it (`weir/endpoints/v1/`,
//! `weir/nodes/v1/`, `weir/identities/v1/`; see `weir-agent`'s `kvstore`
//! and `identities`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Where the desired state lives in etcd.
pub const PREFIX: &str = "weir/state/v1/";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{0:?} is not a kind the store holds (one of: {list})", list = Kind::names())]
    UnknownKind(String),
    #[error("{field}: {message}")]
    Name { field: &'static str, message: String },
    #[error("{key}: the stored value is not what weir writes: {message}")]
    Value { key: String, message: String },
}

/// The kinds of document the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    NetworkPolicy,
    CiliumNetworkPolicy,
    RuntimePolicy,
    FilterPolicy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::CiliumNetworkPolicy,
        Kind::RuntimePolicy,
        Kind::FilterPolicy,
    ];

    /// The document's `kind`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Kind::RuntimePolicy => "RuntimePolicy",
            Kind::FilterPolicy => "FilterPolicy",
        }
    }

    /// The resource name in keys (kubectl's plural).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::CiliumNetworkPolicy => "ciliumnetworkpolicies",
            Kind::RuntimePolicy => "runtimepolicies",
            Kind::FilterPolicy => "filterpolicies",
        }
    }

    /// The resource with its API group, as kubectl names it in errors
    /// (`endpointslices.discovery.k8s.io`).
    pub fn api_resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices.discovery.k8s.io",
            Kind::NetworkPolicy => "networkpolicies.networking.k8s.io",
            Kind::CiliumNetworkPolicy => "ciliumnetworkpolicies.cilium.io",
            Kind::RuntimePolicy => "runtimepolicies.weir.dev",
            Kind::FilterPolicy => "filterpolicies.weir.dev",
        }
    }

    /// kubectl's short names, where Kubernetes or Cilium define one.
    fn short(self) -> &'static [&'static str] {
        match self {
            Kind::Service => &["svc"],
            Kind::NetworkPolicy => &["netpol"],
            Kind::CiliumNetworkPolicy => &["cnp", "ciliumnp"],
            _ => &[],
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::RuntimePolicy | Kind::FilterPolicy)
    }

    /// The kind of a document's exact `kind` field.
    pub fn of_document(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }

    /// A kind as a user names it on the command line, as kubectl takes it:
    /// the kind in any case, its plural, its singular or a short name.
    pub fn lookup(word: &str) -> Result<Kind, StoreError> {
        let lower = word.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| {
                k.name().to_ascii_lowercase() == lower
                    || k.resource() == lower
                    || k.resource().strip_suffix('s') == Some(lower.as_str())
                    || k.resource().strip_suffix("ies").map(|s| format!("{s}y")).as_deref() == Some(lower.as_str())
                    || k.short().contains(&lower.as_str())
            })
            .ok_or_else(|| StoreError::UnknownKind(word.to_string()))
    }

    fn names() -> String {
        Kind::ALL.map(Kind::name).join(", ")
    }

    /// The prefix under which every object of the kind lives.
    pub fn prefix(self) -> String {
        format!("{PREFIX}{}/", self.resource())
    }
}

/// One object of the store: its kind, namespace (namespaced kinds only) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

/// A name or namespace may not be empty or hold a `/`, which would make the
/// key mean something else (the specs' DNS-label checks refuse them too).
fn check_segment(field: &'static str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::Name { field, message: "required".into() });
    }
    if value.contains('/') || value == "." || value == ".." {
        return Err(StoreError::Name { field, message: format!("{value:?} may not hold '/' or be . or ..") });
    }
    Ok(())
}

impl ObjectRef {
    /// The object a document names. A namespaced kind without a namespace is
    /// in `default`, as in Kubernetes; a cluster-wide kind has none.
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> Result<Self, StoreError> {
        check_segment("metadata.name", name)?;
        let namespace = if kind.namespaced() {
            let namespace = namespace.unwrap_or("default");
            check_segment("metadata.namespace", namespace)?;
            Some(namespace.to_string())
        } else {
            None
        };
        Ok(Self { kind, namespace, name: name.to_string() })
    }

    /// Its key in etcd.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{}{namespace}/{}", self.kind.prefix(), self.name),
            None => format!("{}{}", self.kind.prefix(), self.name),
        }
    }

    /// The object a key names; None for a key outside the layout.
    pub fn parse_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(PREFIX)?;
        let (resource, rest) = rest.split_once('/')?;
        let kind = Kind::ALL.into_iter().find(|k| k.resource() == resource)?;
        let (namespace, name) = if kind.namespaced() {
            let (namespace, name) = rest.split_once('/')?;
            (Some(namespace), name)
        } else {
            (None, rest)
        };
        let object = Self::new(kind, namespace, name).ok()?;
        (object.key() == key).then_some(object)
    }

    /// `namespace/name`, or the name of a cluster-wide object.
    pub fn qualified_name(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{namespace}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.qualified_name())
    }
}

/// A stored value: the document as applied, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stored {
    pub yaml: String,
    pub applied_unix_ns: u64,
}

impl Stored {
    pub fn encode(&self) -> String {
        // A struct of a string and a number always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(key: &str, value: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(value).map_err(|e| StoreError::Value { key: key.to_string(), message: e.to_string() })
    }
}

/// What an agent has applied from the store, kept in its state dir: the
/// revision it has seen, every object's value as applied, and the keys of a
/// change begun but not finished (a crash mid-change leaves them there, and
/// they are applied or removed again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub revision: i64,
    pub objects: BTreeMap<String, String>,
    #[serde(default)]
    pub pending: BTreeSet<String>,
}

/// One change an agent makes to hold what the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Apply the object (new, changed, or touched by an unfinished change).
    Put { object: ObjectRef, value: String, stored: Stored },
    /// Remove the object (gone from the store, or touched by an unfinished
    /// change and not in the store): one the agent no longer has is no error.
    Remove { object: ObjectRef },
}

impl Step {
    pub fn object(&self) -> &ObjectRef {
        match self {
            Step::Put { object, .. } | Step::Remove { object } => object,
        }
    }
}

/// What the store holds now and what was applied differ by: the steps, in
/// key order, and the keys that cannot be applied (outside the layout, or a
/// value weir did not write), with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub refused: Vec<(String, StoreError)>,
}

/// The steps that take an agent from `applied` to `store` (key → value).
pub fn plan(applied: &Applied, store: &BTreeMap<String, String>) -> Plan {
    let mut out = Plan::default();
    for (key, value) in store {
        if applied.objects.get(key) == Some(value) && !applied.pending.contains(key) {
            continue;
        }
        let Some(object) = ObjectRef::parse_key(key) else {
            out.refused.push((
                key.clone(),
                StoreError::Value { key: key.clone(), message: "the key is outside weir's layout".into() },
            ));
            continue;
        };
        match Stored::decode(key, value.as_bytes()) {
            Ok(stored) => out.steps.push(Step::Put { object, value: value.clone(), stored }),
            Err(e) => out.refused.push((key.clone(), e)),
        }
    }
    let gone = applied.objects.keys().chain(&applied.pending).filter(|k| !store.contains_key(*k));
    for key in gone.collect::<BTreeSet<_>>() {
        if let Some(object) = ObjectRef::parse_key(key) {
            out.steps.push(Step::Remove { object });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(yaml: &str) -> String {
        Stored { yaml: yaml.into(), applied_unix_ns: 1 }.encode()
    }

    #[test]
    fn keys_follow_the_layout_and_parse_back() {
        let svc = ObjectRef::new(Kind::Service, None, "web").expect("valid");
        assert_eq!(svc.key(), "weir/state/v1/services/default/web");
        let rp = ObjectRef::new(Kind::RuntimePolicy, Some("ignored"), "no-netcat").expect("valid");
        assert_eq!(rp.key(), "weir/state/v1/runtimepolicies/no-netcat");
        for object in [svc, rp] {
            assert_eq!(ObjectRef::parse_key(&object.key()), Some(object.clone()));
        }
        assert_eq!(ObjectRef::parse_key("weir/state/v1/services/web"), None, "a namespaced kind needs a namespace");
        assert_eq!(ObjectRef::parse_key("weir/state/v1/services/a/b/c"), None);
        assert_eq!(ObjectRef::parse_key("weir/state/v1/pods/a/b"), None);
        assert_eq!(ObjectRef::parse_key("weir/endpoints/v1/a/b"), None);
    }

    #[test]
    fn names_that_would_change_the_key_are_refused() {
        let err = ObjectRef::new(Kind::Service, Some("a/b"), "web").expect_err("slash");
        assert_eq!(err.to_string(), "metadata.namespace: \"a/b\" may not hold '/' or be . or ..");
        assert!(ObjectRef::new(Kind::FilterPolicy, None, "").is_err());
        assert!(ObjectRef::new(Kind::FilterPolicy, None, "..").is_err());
    }

    #[test]
    fn kinds_are_named_as_kubectl_names_them() {
        for (word, kind) in [
            ("Service", Kind::Service),
            ("svc", Kind::Service),
            ("services", Kind::Service),
            ("endpointslice", Kind::EndpointSlice),
            ("NetworkPolicies", Kind::NetworkPolicy),
            ("netpol", Kind::NetworkPolicy),
            ("cnp", Kind::CiliumNetworkPolicy),
            ("runtimepolicy", Kind::RuntimePolicy),
            ("filterpolicies", Kind::FilterPolicy),
        ] {
            assert_eq!(Kind::lookup(word), Ok(kind), "{word}");
        }
        assert!(Kind::lookup("networkchaos").is_err(), "experiments are not desired state");
        let err = Kind::lookup("pods").expect_err("not stored by apply");
        assert!(err.to_string().starts_with("\"pods\" is not a kind the store holds (one of: Service, "), "{err}");
    }

    #[test]
    fn plan_puts_what_changed_and_removes_what_left() {
        let key = |name: &str| ObjectRef::new(Kind::Service, None, name).expect("valid").key();
        let applied = Applied {
            revision: 5,
            objects: [(key("same"), value("a")), (key("changed"), value("old")), (key("gone"), value("x"))].into(),
            pending: BTreeSet::new(),
        };
        let store: BTreeMap<String, String> =
            [(key("same"), value("a")), (key("changed"), value("new")), (key("new"), value("n"))].into();
        let plan = plan(&applied, &store);
        let names: Vec<String> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Put { object, stored, .. } => format!("put {} {}", object.name, stored.yaml),
                Step::Remove { object } => format!("remove {}", object.name),
            })
            .collect();
        assert_eq!(names, ["put changed new", "put new n", "remove gone"]);
        assert!(plan.refused.is_empty());
    }

    #[test]
    fn an_unfinished_change_is_made_again() {
        let key = |name: &str| ObjectRef::new(Kind::NetworkPolicy, Some("x"), name).expect("valid").key();
        // "kept" was being re-applied and "dropped" removed when the agent died.
        let applied = Applied {
            revision: 9,
            objects: [(key("kept"), value("k"))].into(),
            pending: [key("kept"), key("dropped")].into(),
        };
        let store: BTreeMap<String, String> = [(key("kept"), value("k"))].into();
        let plan = plan(&applied, &store);
        assert_eq!(plan.steps.len(), 2);
        assert!(matches!(&plan.steps[0], Step::Put { object, .. } if object.name == "kept"));
        assert!(matches!(&plan.steps[1], Step::Remove { object } if object.name == "dropped"));
    }

    #[test]
    fn values_weir_did_not_write_are_refused_not_applied() {
        let store: BTreeMap<String, String> = [
            ("weir/state/v1/services/default/web".to_string(), "kind: Service".to_string()),
            ("weir/state/v1/widgets/x".to_string(), value("w")),
        ]
        .into();
        let plan = plan(&Applied::default(), &store);
        assert!(plan.steps.is_empty());
        assert_eq!(plan.refused.len(), 2);
        assert!(plan.refused[0].1.to_string().starts_with("weir/state/v1/services/default/web: the stored value"));
    }
}
