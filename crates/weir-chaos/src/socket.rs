//! Weir's `SocketChaos` (`chaos.weir.dev/v1alpha1`): faults in the system
//! call, for which Chaos Mesh has no document. Selection and duration are
//! NetworkChaos's:
//!
//! ```yaml
//! apiVersion: chaos.weir.dev/v1alpha1
//! kind: SocketChaos
//! metadata: {name: web-api-refused, namespace: shop}
//! spec:
//!   action: connect-error
//!   mode: all
//!   selector: {labelSelectors: {app: web}}
//!   target:
//!     mode: all
//!     selector: {labelSelectors: {app: api}}
//!   connectError: {errno: ECONNREFUSED, percent: "30"}
//!   duration: 1m
//! ```
//!
//! `action: tcp-reset` aborts, once, the established TCP connections
//! between the selected pods and the targets (`direction` as NetworkChaos's:
//! whose sockets are aborted); the peers get a RST.

use serde::Deserialize;
use weir_spec::{err, SpecError};

use crate::spec::{
    mode, percent_fraction, selector, Direction, Experiment, Fault, PodSelection, PodSelectorSpec, PodSelectorWithMode,
};

pub const API_VERSION: &str = "chaos.weir.dev/v1alpha1";
pub const KIND: &str = "SocketChaos";

/// The errnos a connect() fault may return, by name.
const ERRNOS: &[(&str, u32)] = &[
    ("EPERM", 1),
    ("EINTR", 4),
    ("EAGAIN", 11),
    ("EACCES", 13),
    ("ENETDOWN", 100),
    ("ENETUNREACH", 101),
    ("ECONNABORTED", 103),
    ("ECONNRESET", 104),
    ("ENOBUFS", 105),
    ("ETIMEDOUT", 110),
    ("ECONNREFUSED", 111),
    ("EHOSTDOWN", 112),
    ("EHOSTUNREACH", 113),
    ("EADDRNOTAVAIL", 99),
    ("EADDRINUSE", 98),
];

pub type SocketChaos = crate::spec::ChaosDocument<SocketChaosSpec>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SocketChaosSpec {
    pub action: String,
    pub mode: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub selector: PodSelectorSpec,
    #[serde(default)]
    pub target: Option<PodSelectorWithMode>,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub connect_error: Option<ConnectErrorSpec>,
    #[serde(default)]
    pub duration: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectErrorSpec {
    /// A name (`ECONNREFUSED`) or a number.
    pub errno: String,
    /// The share of calls that fail; all when left out.
    #[serde(default)]
    pub percent: Option<String>,
}

/// An errno by name (one of [`ERRNOS`]) or number (1 to 4095).
pub(crate) fn errno(field: &str, text: &str) -> Result<u32, SpecError> {
    let text = text.trim();
    if let Some((_, number)) = ERRNOS.iter().find(|(name, _)| name.eq_ignore_ascii_case(text)) {
        return Ok(*number);
    }
    match text.parse::<u32>() {
        Ok(n) if (1..4096).contains(&n) => Ok(n),
        _ => {
            let names: Vec<&str> = ERRNOS.iter().map(|(name, _)| *name).collect();
            Err(err(field, format!("{text:?}: a number from 1 to 4095 or one of {}", names.join(", "))))
        }
    }
}

impl SocketChaos {
    pub fn parse(yaml: &str) -> Result<Experiment, SpecError> {
        let doc: SocketChaos = weir_spec::parse_yaml(yaml)?;
        doc.validate()
    }

    pub fn validate(&self) -> Result<Experiment, SpecError> {
        self.check_header(API_VERSION, KIND)?;
        let namespace = self.metadata.namespace.clone();
        let spec = &self.spec;
        let (fault, direction) = match spec.action.as_str() {
            "connect-error" => {
                if spec.direction.is_some() {
                    return Err(err(
                        "spec.direction",
                        "only with action tcp-reset (connect-error fails the selected pods' calls)",
                    ));
                }
                let connect = spec
                    .connect_error
                    .as_ref()
                    .ok_or_else(|| err("spec.connectError", "action connect-error needs connectError.errno"))?;
                let errno = errno("spec.connectError.errno", &connect.errno)?;
                let probability = match &connect.percent {
                    Some(text) => percent_fraction("spec.connectError.percent", text)?,
                    None => u32::MAX,
                };
                (Fault::ConnectError { errno, probability }, Direction::To)
            }
            "tcp-reset" => {
                if spec.connect_error.is_some() {
                    return Err(err("spec.connectError", "only with action connect-error"));
                }
                if spec.duration.is_some() {
                    return Err(err("spec.duration", "tcp-reset acts once, when applied"));
                }
                let direction = match spec.direction.as_deref() {
                    None | Some("to") => Direction::To,
                    Some("from") => Direction::From,
                    Some("both") => Direction::Both,
                    Some(other) => return Err(err("spec.direction", format!("{other:?}: must be to, from or both"))),
                };
                (Fault::TcpReset, direction)
            }
            other => return Err(err("spec.action", format!("{other:?}: must be connect-error or tcp-reset"))),
        };
        let selection = PodSelection {
            selector: selector("spec.selector", &spec.selector, &namespace)?,
            mode: mode("spec", &spec.mode, spec.value.as_deref())?,
        };
        let target = spec
            .target
            .as_ref()
            .ok_or_else(|| err("spec.target", "required: the pods whose addresses the calls fail to reach"))?;
        let target = PodSelection {
            selector: selector("spec.target.selector", &target.selector, &namespace)?,
            mode: mode("spec.target", &target.mode, target.value.as_deref())?,
        };
        let duration = crate::spec::duration_of("spec.duration", spec.duration.as_deref())?;
        Ok(Experiment { name: self.metadata.name.clone(), namespace, fault, selection, direction, target, duration })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(spec: &str) -> String {
        format!("apiVersion: chaos.weir.dev/v1alpha1\nkind: SocketChaos\nmetadata: {{name: refused, namespace: shop}}\nspec:\n{spec}")
    }

    const BASE: &str = "  action: connect-error\n  mode: all\n  selector: {labelSelectors: {app: web}}\n  target: {mode: all, selector: {labelSelectors: {app: api}}}\n";

    #[test]
    fn connect_errors_by_name_or_number() {
        let exp = SocketChaos::parse(&doc(&format!(
            "{BASE}  connectError: {{errno: ECONNREFUSED, percent: \"50\"}}\n  duration: 30s\n"
        )))
        .expect("valid");
        assert_eq!(exp.fault, Fault::ConnectError { errno: 111, probability: 1 << 31 });
        assert_eq!(exp.direction, Direction::To);
        assert_eq!(exp.duration, Some(std::time::Duration::from_secs(30)));
        let exp = SocketChaos::parse(&doc(&format!("{BASE}  connectError: {{errno: \"110\"}}\n"))).expect("valid");
        assert_eq!(exp.fault, Fault::ConnectError { errno: 110, probability: u32::MAX });
    }

    #[test]
    fn bad_documents_are_refused_by_path() {
        let field = |spec: String| SocketChaos::parse(&doc(&spec)).expect_err("refused").field;
        assert_eq!(field(format!("{BASE}  connectError: {{errno: EWHATEVER}}\n")), "spec.connectError.errno");
        assert_eq!(field(format!("{BASE}  connectError: {{errno: \"0\"}}\n")), "spec.connectError.errno");
        assert_eq!(
            field(format!("{BASE}  connectError: {{errno: EPERM, percent: \"101\"}}\n")),
            "spec.connectError.percent"
        );
        assert_eq!(field(BASE.to_string()), "spec.connectError");
        assert_eq!(field(BASE.replace("connect-error", "accept-error")), "spec.action");
        assert_eq!(field(format!("{BASE}  connectError: {{errno: EPERM}}\n  direction: both\n")), "spec.direction");
        let reset = BASE.replace("connect-error", "tcp-reset");
        let exp = SocketChaos::parse(&doc(&format!("{reset}  direction: both\n"))).expect("valid");
        assert_eq!((exp.fault, exp.direction), (Fault::TcpReset, Direction::Both));
        assert_eq!(field(format!("{reset}  duration: 1m\n")), "spec.duration");
        assert_eq!(field(format!("{reset}  direction: sideways\n")), "spec.direction");
        let no_target = BASE.split("  target:").next().expect("target").to_string();
        assert_eq!(field(format!("{no_target}  connectError: {{errno: EPERM}}\n")), "spec.target");
    }
}
