//! Kubernetes-shaped documents (apiVersion, kind, metadata, spec), shared by
//! every kind Weir reads: parsing whose errors name the offending field, the
//! DNS-label rule for names, and the error type. Pure.

mod duration;
mod k8s;
pub use duration::{parse_duration, parse_duration_or_zero};
pub use k8s::{IntOrString, ObjectMeta, OwnerReference};

use std::fmt;

use serde::de::DeserializeOwned;

/// Input that cannot be used, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// Path of the field, e.g. `spec.pods[2].node`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A [`SpecError`] for `field`.
pub fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

/// Deserializes YAML; an unknown field, a wrong type or a bad value is an
/// error naming the field's full path, e.g. `spec.nodes[0].podCidr`.
pub fn parse_yaml<T: DeserializeOwned>(yaml: &str) -> Result<T, SpecError> {
    let deserializer = serde_yaml::Deserializer::from_str(yaml);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner().to_string();
        // serde_yaml prefixes its own, shorter path ("spec.nodes[0]: "); ours names the field itself.
        let message = match inner.split_once(": ") {
            Some((own, rest)) if !own.contains(' ') && path.starts_with(own) => rest.to_string(),
            _ => inner,
        };
        err(path, message)
    })
}

/// One document of a multi-document YAML stream, by kind.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDocument {
    /// Position in the stream, from 0; errors name it.
    pub index: usize,
    /// Position among the `items` of a `List` document, when it came from one.
    pub item: Option<usize>,
    pub api_version: String,
    pub kind: String,
    /// The document alone, re-serialized, for [`parse_yaml`] into its kind's type.
    pub text: String,
    /// `metadata.name`, when the document has one.
    pub name: String,
    /// `metadata.namespace`, when the document has one.
    pub namespace: Option<String>,
}

impl RawDocument {
    /// `err` (about a field of this document) prefixed with which document it is:
    /// `document 2 (Service web): spec.ports[0].port`, or
    /// `document 0 items[3] (Service web): ...` for an item of a List.
    pub fn locate(&self, err: SpecError) -> SpecError {
        SpecError { field: format!("{}{}", self.position(), Self::suffix(&err.field)), message: err.message }
    }

    /// `document 2 (Service web)`, `document 0 items[3] (Service web)`.
    pub fn position(&self) -> String {
        let item = self.item.map(|i| format!(" items[{i}]")).unwrap_or_default();
        let name = if self.name.is_empty() { String::new() } else { format!(" {}", self.name) };
        format!("document {}{item} ({}{name})", self.index, self.kind)
    }

    fn suffix(field: &str) -> String {
        if field.is_empty() {
            String::new()
        } else {
            format!(": {field}")
        }
    }
}

/// Splits a YAML stream (`---` separated) into documents and reads each one's
/// apiVersion and kind. Empty documents are skipped. A `List` (what
/// `kubectl get -o yaml` prints) and a typed list (`ServiceList`,
/// `EndpointSliceList`, ...) become their items, in order; an item of a
/// typed list may leave out its apiVersion and kind, which the list's give.
pub fn split_documents(yaml: &str) -> Result<Vec<RawDocument>, SpecError> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|e| err(format!("document {index}"), e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let at = format!("document {index}");
        let api_version = string_field(&value, "apiVersion", &at)?;
        let kind = string_field(&value, "kind", &at)?;
        let Some(item_kind) = kind.strip_suffix("List") else {
            out.push(raw(index, None, api_version, kind, value)?);
            continue;
        };
        let items = match value.get("items") {
            Some(serde_yaml::Value::Sequence(items)) => items.clone(),
            None | Some(serde_yaml::Value::Null) => Vec::new(),
            Some(_) => return Err(err(format!("{at} ({kind}): items"), "must be a list of objects")),
        };
        for (i, mut item) in items.into_iter().enumerate() {
            let at = format!("{at} items[{i}]");
            let Some(map) = item.as_mapping_mut() else {
                return Err(err(at, "must be an object"));
            };
            // A typed list names its items' kind; a plain List's items name their own.
            if !item_kind.is_empty() {
                map.entry("kind".into()).or_insert_with(|| item_kind.into());
                map.entry("apiVersion".into()).or_insert_with(|| api_version.clone().into());
            }
            let item_api_version = string_field(&item, "apiVersion", &at)?;
            let item_kind = string_field(&item, "kind", &at)?;
            if item_kind.ends_with("List") {
                return Err(err(format!("{at}: kind"), format!("{item_kind:?}: a list inside a list")));
            }
            out.push(raw(index, Some(i), item_api_version, item_kind, item)?);
        }
    }
    Ok(out)
}

fn string_field(value: &serde_yaml::Value, name: &str, at: &str) -> Result<String, SpecError> {
    match value.get(name) {
        Some(serde_yaml::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(err(format!("{at}: {name}"), "must be a string")),
        None => Err(err(format!("{at}: {name}"), "missing")),
    }
}

fn raw(
    index: usize,
    item: Option<usize>,
    api_version: String,
    kind: String,
    value: serde_yaml::Value,
) -> Result<RawDocument, SpecError> {
    let text = serde_yaml::to_string(&value).map_err(|e| err(format!("document {index}"), e.to_string()))?;
    let metadata = value.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or_default().to_string();
    let namespace = metadata.and_then(|m| m.get("namespace")).and_then(|n| n.as_str()).map(str::to_string);
    Ok(RawDocument { index, item, api_version, kind, text, name, namespace })
}

/// Checks a Kubernetes-style DNS label: at most `max` lowercase letters,
/// digits and '-', starting and ending with a letter or digit.
pub fn check_dns_label(field: &str, value: &str, max: usize) -> Result<(), SpecError> {
    let ok_chars = value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && value.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if value.is_empty() || value.len() > max || !ok_chars || !ok_ends {
        return Err(err(field, format!("{value:?} is not a valid name: use at most {max} lowercase letters, digits and '-', starting and ending with a letter or digit")));
    }
    Ok(())
}

/// Whether a label can be a Kubernetes label, as CNI arguments must be:
/// a key of 1 to 317 characters (a 253-character prefix, '/', a
/// 63-character name) and a value of at most 63, neither with spaces or
/// control characters. A runtime's own labels may not be (containerd's and
/// podman's take long values); those are left out.
pub fn kubernetes_label(key: &str, value: &str) -> bool {
    let bad = |s: &str| s.bytes().any(|b| b.is_ascii_control() || b == b' ');
    !key.is_empty() && key.len() <= 317 && !bad(key) && value.len() <= 63 && !bad(value)
}

/// A named port: an IANA service name, as Kubernetes checks a container's
/// port name, a Service's `targetPort` and a NetworkPolicy's `port`.
pub fn check_port_name(field: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{name:?} is not a port name: at most 15 lowercase letters, digits and single '-', with a letter"),
        ))
    }
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`), as
/// pod and namespace selectors use it. An empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Kubernetes' rules: `In` and `NotIn` need values, `Exists` and
    /// `DoesNotExist` take none.
    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        for (i, req) in self.match_expressions.iter().enumerate() {
            let needs_values = matches!(req.operator, SelectorOperator::In | SelectorOperator::NotIn);
            if needs_values == req.values.is_empty() {
                let what = if needs_values { "needs values" } else { "takes no values" };
                return Err(err(format!("{field}.matchExpressions[{i}].values"), format!("{:?} {what}", req.operator)));
            }
        }
        Ok(())
    }

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator {
                    SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                    SelectorOperator::NotIn => !value.is_some_and(|v| req.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_labels_kubernetes_would_take_are_kubernetes_labels() {
        assert!(kubernetes_label("app", "web"));
        assert!(kubernetes_label("io.containerd.image.config.stop-signal", "SIGTERM"));
        assert!(kubernetes_label("empty", ""));
        assert!(!kubernetes_label("note", &"x".repeat(64)));
        assert!(!kubernetes_label("a b", "x"));
        assert!(!kubernetes_label("k", "line\nbreak"));
        assert!(!kubernetes_label("", "x"));
        assert!(!kubernetes_label(&"k".repeat(318), "x"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct Doc {
        spec: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct Inner {
        items: Vec<u16>,
    }

    #[test]
    fn errors_name_the_field_path() {
        let e = parse_yaml::<Doc>("spec:\n  items: [1, 70000]\n").expect_err("out of range");
        assert_eq!(e.field, "spec.items[1]");
        let e = parse_yaml::<Doc>("spec:\n  itemz: []\n").expect_err("unknown");
        assert_eq!(e.field, "spec.itemz");
        assert!(e.message.starts_with("unknown field `itemz`"), "{}", e.message);
    }

    #[test]
    fn streams_split_into_documents_by_kind() {
        let docs = split_documents("apiVersion: v1\nkind: Service\n---\n---\napiVersion: x/v1\nkind: Y\nspec: 1\n")
            .expect("two documents");
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].index, docs[0].kind.as_str()), (0, "Service"));
        assert_eq!((docs[1].index, docs[1].api_version.as_str()), (2, "x/v1"));
        let e = split_documents("apiVersion: v1\n---\nkind: 3\n").expect_err("no kind");
        assert_eq!(e.field, "document 0: kind");
    }

    #[test]
    fn lists_become_their_items() {
        let yaml = "apiVersion: v1\nkind: List\nmetadata: {resourceVersion: \"\"}\nitems:\n\
- {apiVersion: v1, kind: Service, metadata: {name: a, namespace: x}}\n\
- {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: b}}\n\
---\napiVersion: v1\nkind: ServiceList\nitems:\n- {metadata: {name: c}}\n\
---\napiVersion: v1\nkind: List\nitems: []\n";
        let docs = split_documents(yaml).expect("lists");
        let seen: Vec<(usize, Option<usize>, &str, &str, &str)> =
            docs.iter().map(|d| (d.index, d.item, d.api_version.as_str(), d.kind.as_str(), d.name.as_str())).collect();
        assert_eq!(
            seen,
            [
                (0, Some(0), "v1", "Service", "a"),
                (0, Some(1), "discovery.k8s.io/v1", "EndpointSlice", "b"),
                (1, Some(0), "v1", "Service", "c"),
            ]
        );
        assert_eq!(docs[0].namespace.as_deref(), Some("x"));
        assert!(docs[2].text.contains("kind: Service"), "{}", docs[2].text);
        assert_eq!(docs[1].locate(err("spec", "bad")).field, "document 0 items[1] (EndpointSlice b): spec");
        let e = split_documents("apiVersion: v1\nkind: List\nitems:\n- {metadata: {name: a}}\n").expect_err("kind");
        assert_eq!(e.field, "document 0 items[0]: apiVersion");
    }

    #[test]
    fn label_selectors_follow_kubernetes() {
        let sel: LabelSelector = parse_yaml(
            "matchLabels: {app: web}\nmatchExpressions:\n- {key: tier, operator: NotIn, values: [db]}\n- {key: gone, operator: DoesNotExist}\n",
        )
        .expect("selector");
        sel.validate("s").expect("valid");
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(sel.matches(&labels(&[("app", "web")])));
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("gone", "x")])));
        assert!(!sel.matches(&labels(&[("app", "api")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
        let bad: LabelSelector = parse_yaml("matchExpressions: [{key: a, operator: In}]").expect("parses");
        assert_eq!(bad.validate("s").expect_err("no values").field, "s.matchExpressions[0].values");
    }

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("n", "node-a1", 63).is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b"] {
            assert!(check_dns_label("n", bad, 63).is_err(), "{bad:?}");
        }
        assert!(check_dns_label("n", "abc", 2).is_err());
    }
}
