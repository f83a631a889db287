//! Weir's `ServiceChaos` (`chaos.weir.dev/v1alpha1`): a share of a
//! Service's new connections refused or sent to a black hole, a
//! backend-failure drill that touches no backend:
//!
//! ```yaml
//! apiVersion: chaos.weir.dev/v1alpha1
//! kind: ServiceChaos
//! metadata: {name: api-refused, namespace: shop}
//! spec:
//!   action: refuse                 # or blackhole
//!   service: {name: api, namespace: backend, port: 80}
//!   refuse: {errno: ECONNREFUSED, percent: "30"}
//!   mode: all                      # with selector: the clients judged
//!   selector: {labelSelectors: {app: web}}
//!   duration: 1m
//! ```
//!
//! `service.namespace` defaults to the experiment's; `service.port` (a
//! number or a port's name) to every port. Without `selector` (and `mode`)
//! every client's calls are judged. `blackhole: {percent: "30"}` for
//! `action: blackhole`; `percent` left out means every call.

use serde::Deserialize;
use serde_json::Value;
use weir_spec::{err, SpecError};

use crate::socket::errno;
use crate::spec::{
    mode, percent_fraction, selector, Direction, Experiment, Fault, Mode, PodSelection, PodSelectorSpec, Selector,
};

pub const KIND: &str = "ServiceChaos";

pub type ServiceChaos = crate::spec::ChaosDocument<ServiceChaosSpec>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceChaosSpec {
    pub action: String,
    pub service: ServiceRefSpec,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub selector: Option<PodSelectorSpec>,
    #[serde(default)]
    pub refuse: Option<RefuseSpec>,
    #[serde(default)]
    pub blackhole: Option<BlackholeSpec>,
    #[serde(default)]
    pub duration: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRefSpec {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// A number or a port's name.
    #[serde(default)]
    pub port: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RefuseSpec {
    /// A name (`ECONNREFUSED`, the default) or a number.
    #[serde(default)]
    pub errno: Option<String>,
    #[serde(default)]
    pub percent: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlackholeSpec {
    #[serde(default)]
    pub percent: Option<String>,
}

/// A Service port, as the document names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServicePort {
    Number(u16),
    Name(String),
}

/// The Service an experiment judges calls to, and whose calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub namespace: String,
    pub name: String,
    /// None: every port.
    pub port: Option<ServicePort>,
    /// None: every client (every process the socket load balancer serves).
    pub clients: Option<PodSelection>,
}

impl std::fmt::Display for ServiceTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service {}/{}", self.namespace, self.name)?;
        match &self.port {
            Some(ServicePort::Number(n)) => write!(f, ":{n}"),
            Some(ServicePort::Name(n)) => write!(f, ":{n}"),
            None => Ok(()),
        }
    }
}

impl ServiceChaos {
    pub fn parse(yaml: &str) -> Result<Experiment, SpecError> {
        Self::parse_with_target(yaml).map(|(experiment, _)| experiment)
    }

    /// The experiment and the Service it names.
    pub fn parse_with_target(yaml: &str) -> Result<(Experiment, ServiceTarget), SpecError> {
        let doc: ServiceChaos = weir_spec::parse_yaml(yaml)?;
        doc.validate()
    }

    pub fn validate(&self) -> Result<(Experiment, ServiceTarget), SpecError> {
        self.check_header(crate::socket::API_VERSION, KIND)?;
        let namespace = self.metadata.namespace.clone();
        let spec = &self.spec;
        let share = |field: &str, percent: &Option<String>| match percent {
            Some(text) => percent_fraction(field, text),
            None => Ok(u32::MAX),
        };
        let fault = match spec.action.as_str() {
            "refuse" => {
                if spec.blackhole.is_some() {
                    return Err(err("spec.blackhole", "only with action blackhole"));
                }
                let refuse = spec.refuse.clone().unwrap_or(RefuseSpec { errno: None, percent: None });
                let errno = match &refuse.errno {
                    Some(text) => errno("spec.refuse.errno", text)?,
                    None => 111,
                };
                Fault::ServiceRefuse { errno, probability: share("spec.refuse.percent", &refuse.percent)? }
            }
            "blackhole" => {
                if spec.refuse.is_some() {
                    return Err(err("spec.refuse", "only with action refuse"));
                }
                let percent = spec.blackhole.as_ref().and_then(|b| b.percent.clone());
                Fault::ServiceBlackhole { probability: share("spec.blackhole.percent", &percent)? }
            }
            other => return Err(err("spec.action", format!("{other:?}: must be refuse or blackhole"))),
        };
        let service = &spec.service;
        weir_spec::check_dns_label("spec.service.name", &service.name, 63)?;
        let service_namespace = service.namespace.clone().unwrap_or_else(|| namespace.clone());
        weir_spec::check_dns_label("spec.service.namespace", &service_namespace, 63)?;
        let port = match &service.port {
            None => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(p @ 1..=65535) => Some(ServicePort::Number(p as u16)),
                _ => return Err(err("spec.service.port", format!("{n}: a port from 1 to 65535"))),
            },
            Some(Value::String(name)) if !name.is_empty() => match name.parse::<u16>() {
                Ok(0) => return Err(err("spec.service.port", "a port from 1 to 65535")),
                Ok(p) => Some(ServicePort::Number(p)),
                Err(_) => {
                    weir_spec::check_dns_label("spec.service.port", name, 15)?;
                    Some(ServicePort::Name(name.clone()))
                }
            },
            Some(other) => return Err(err("spec.service.port", format!("{other}: a port number or a port's name"))),
        };
        let clients = match (&spec.selector, &spec.mode) {
            (Some(sel), Some(m)) => Some(PodSelection {
                selector: selector("spec.selector", sel, &namespace)?,
                mode: mode("spec", m, spec.value.as_deref())?,
            }),
            (None, None) if spec.value.is_none() => None,
            (None, _) => {
                return Err(err(
                    "spec.selector",
                    "mode and value pick clients: they need a selector (left out, every client is judged)",
                ))
            }
            (Some(_), None) => return Err(err("spec.mode", "required with a selector")),
        };
        let every = PodSelection {
            selector: Selector {
                namespaces: Vec::new(),
                label_selector: weir_spec::LabelSelector::default(),
                pods: Default::default(),
                nodes: Vec::new(),
            },
            mode: Mode::All,
        };
        let selection = clients.clone().unwrap_or(every);
        let duration = crate::spec::duration_of("spec.duration", spec.duration.as_deref())?;
        let experiment = Experiment {
            name: self.metadata.name.clone(),
            namespace,
            fault,
            target: selection.clone(),
            selection,
            direction: Direction::To,
            duration,
        };
        let target = ServiceTarget { namespace: service_namespace, name: service.name.clone(), port, clients };
        Ok((experiment, target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(spec: &str) -> String {
        format!("apiVersion: chaos.weir.dev/v1alpha1\nkind: ServiceChaos\nmetadata: {{name: api-down, namespace: shop}}\nspec:\n{spec}")
    }

    #[test]
    fn refuse_and_blackhole_with_their_defaults() {
        let (exp, target) = ServiceChaos::parse_with_target(&doc(
            "  action: refuse\n  service: {name: api, namespace: backend, port: 80}\n  refuse: {percent: \"50\"}\n  duration: 30s\n",
        ))
        .expect("valid");
        assert_eq!(exp.fault, Fault::ServiceRefuse { errno: 111, probability: 1 << 31 });
        assert_eq!(exp.duration, Some(std::time::Duration::from_secs(30)));
        assert_eq!(target.to_string(), "service backend/api:80");
        assert_eq!(target.clients, None);

        let (exp, target) = ServiceChaos::parse_with_target(&doc(
            "  action: blackhole\n  service: {name: api, port: http}\n  mode: one\n  selector: {labelSelectors: {app: web}}\n",
        ))
        .expect("valid");
        assert_eq!(exp.fault, Fault::ServiceBlackhole { probability: u32::MAX });
        assert_eq!((target.namespace.as_str(), target.port), ("shop", Some(ServicePort::Name("http".into()))));
        assert_eq!(target.clients.map(|c| c.mode), Some(Mode::One));

        let (exp, _) = ServiceChaos::parse_with_target(&doc(
            "  action: refuse\n  service: {name: api}\n  refuse: {errno: ETIMEDOUT}\n",
        ))
        .expect("valid");
        assert_eq!(exp.fault, Fault::ServiceRefuse { errno: 110, probability: u32::MAX });
    }

    #[test]
    fn bad_documents_are_refused_by_path() {
        let field = |spec: &str| ServiceChaos::parse(&doc(spec)).expect_err("refused").field;
        assert_eq!(field("  action: drop\n  service: {name: api}\n"), "spec.action");
        let missing = ServiceChaos::parse(&doc("  action: refuse\n")).expect_err("refused");
        assert!(missing.to_string().contains("service"), "{missing}");
        assert_eq!(field("  action: refuse\n  service: {name: Api_1}\n"), "spec.service.name");
        assert_eq!(field("  action: refuse\n  service: {name: api, port: 0}\n"), "spec.service.port");
        assert_eq!(field("  action: refuse\n  service: {name: api, port: 70000}\n"), "spec.service.port");
        assert_eq!(field("  action: refuse\n  service: {name: api, port: [80]}\n"), "spec.service.port");
        assert_eq!(field("  action: refuse\n  service: {name: api, ports: 80}\n"), "spec.service.ports");
        assert_eq!(field("  action: refuse\n  service: {name: api}\n  refuse: {errno: EWHAT}\n"), "spec.refuse.errno");
        assert_eq!(
            field("  action: refuse\n  service: {name: api}\n  refuse: {percent: \"130\"}\n"),
            "spec.refuse.percent"
        );
        assert_eq!(field("  action: refuse\n  service: {name: api}\n  blackhole: {}\n"), "spec.blackhole");
        assert_eq!(field("  action: blackhole\n  service: {name: api}\n  refuse: {}\n"), "spec.refuse");
        assert_eq!(field("  action: refuse\n  service: {name: api}\n  mode: all\n"), "spec.selector");
        assert_eq!(field("  action: refuse\n  service: {name: api}\n  selector: {}\n"), "spec.mode");
        assert_eq!(field("  action: refuse\n  service: {name: api}\n  duration: 0s\n"), "spec.duration");
        assert_eq!(field("  action: refuse\n  service: {name: api}\n  target: {mode: all}\n"), "spec.target");
    }
}
