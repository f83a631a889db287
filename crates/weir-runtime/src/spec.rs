//! `RuntimePolicy`: who (a process selector) and what (rules on operations).
//!
//! ```yaml
//! apiVersion: weir.dev/v1alpha1
//! kind: RuntimePolicy
//! metadata: {name: no-netcat}
//! spec:
//!   selector:                      # every field given must match
//!     binaries: [{glob: "/usr/bin/nc*"}]
//!     namespaces: [shop]
//!     podSelector: {matchLabels: {app: web}}
//!   rules:
//!   - operations: [exec]
//!     action: kill
//!   - operations: [connect]
//!     cidrs: [10.0.0.0/8]
//!     ports: [{port: 5432}]
//!     action: deny
//!     errno: ECONNREFUSED
//! ```

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weir_spec::{err, LabelSelector, SpecError};

pub const API_VERSION: &str = "weir.dev/v1alpha1";
pub const KIND: &str = "RuntimePolicy";
/// Longest pattern the kernel matches (bytes, wildcards included).
pub const PATTERN_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimePolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default)]
    pub selector: ProcessSelector,
    pub rules: Vec<RuleSpec>,
}

/// Which processes a policy is about. Every field given must match; within
/// a list, any entry may.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProcessSelector {
    /// The process's binary, as the kernel resolved it (`/bin/sh` on a
    /// merged-/usr system is `/usr/bin/sh`). For exec: the new program.
    /// An `exact` path is also its file: another link to the same inode
    /// (a hardlink) is the same binary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binaries: Vec<StringMatch>,
    /// The name the program was called by, which picks a multi-call
    /// binary's applet: argv[0]'s basename, or argv[1]'s when argv[0]
    /// starts with `busybox` or `toybox` (`busybox wget` and a `wget` link
    /// to busybox are both `wget`). argv[0] is the caller's choice: combine
    /// with `binaries` to name the multi-call binary. Exec rules only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applets: Vec<StringMatch>,
    /// Only programs run from no file of any mount (memfd_create, then
    /// execveat): their events carry `fileless` and the memfd's name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fileless: bool,
    /// The parent process's binary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_binaries: Vec<StringMatch>,
    /// Any one argument of the new program (exec rules only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uids: Vec<u32>,
    /// Pod namespaces (lab pods; on a host no process is in a pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

impl ProcessSelector {
    pub fn selects_pods(&self) -> bool {
        !self.namespaces.is_empty() || self.pod_selector.is_some()
    }
}

/// Exactly one of the four.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `*` matches any run of characters ('/' included), `?` any one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    Exec,
    Connect,
    Bind,
    Listen,
    Accept,
    Socket,
    FileOpen,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Connect => "connect",
            Self::Bind => "bind",
            Self::Listen => "listen",
            Self::Accept => "accept",
            Self::Socket => "socket",
            Self::FileOpen => "fileOpen",
        }
    }

    /// The actions the kernel can take at this operation's hook.
    fn actions(self) -> &'static [Action] {
        match self {
            Self::Exec => &[Action::Audit, Action::Kill, Action::Deny],
            Self::Connect | Self::Bind | Self::Socket | Self::FileOpen => &[Action::Audit, Action::Deny],
            Self::Listen | Self::Accept => &[Action::Audit],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Post the event; the operation goes ahead.
    Audit,
    /// SIGKILL at exec, before the new program runs an instruction.
    Kill,
    /// The operation fails with `errno` (exec without BPF LSM: a kill).
    Deny,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Kill => "kill",
            Self::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Family {
    Ipv4,
    Ipv6,
    Unix,
    Netlink,
    Packet,
}

impl Family {
    /// The kernel's code: 4 or 6 for IP, else the AF_* number.
    pub fn code(self) -> u8 {
        match self {
            Self::Ipv4 => 4,
            Self::Ipv6 => 6,
            Self::Unix => 1,
            Self::Netlink => 16,
            Self::Packet => 17,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRange {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Errno {
    Number(i32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    pub operations: Vec<Operation>,
    pub action: Action,
    /// For `deny`: a name (`ECONNREFUSED`) or a number; default EPERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<Errno>,
    /// At most this many of the rule's events are posted per second (the
    /// action still applies to every one). Not for exec: every exec is posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// connect: the destination; bind: the local address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<Family>,
    /// fileOpen: the file's path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<StringMatch>,
}

/// Errno names a rule may give, with their Linux numbers.
pub const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", 1),
    ("ENOENT", 2),
    ("EIO", 5),
    ("EACCES", 13),
    ("EBUSY", 16),
    ("EINVAL", 22),
    ("ENOSPC", 28),
    ("EROFS", 30),
    ("EAFNOSUPPORT", 97),
    ("EADDRINUSE", 98),
    ("EADDRNOTAVAIL", 99),
    ("ENETDOWN", 100),
    ("ENETUNREACH", 101),
    ("ECONNRESET", 104),
    ("ETIMEDOUT", 110),
    ("ECONNREFUSED", 111),
    ("EHOSTUNREACH", 113),
];

impl Errno {
    fn resolve(&self, field: &str) -> Result<i32, SpecError> {
        match self {
            Self::Number(n) if (1..4096).contains(n) => Ok(*n),
            Self::Number(n) => Err(err(field, format!("{n} is not an errno (1..4095)"))),
            Self::Name(name) => ERRNOS.iter().find(|(n, _)| n == name).map(|(_, v)| *v).ok_or_else(|| {
                let known: Vec<&str> = ERRNOS.iter().map(|(n, _)| *n).collect();
                err(field, format!("unknown errno {name:?}; use a number or one of {}", known.join(", ")))
            }),
        }
    }
}

impl StringMatch {
    /// The kernel pattern: WEIR_RT_ANY_RUN (0x01) and WEIR_RT_ANY_ONE (0x02)
    /// for the wildcards, everything else literal.
    pub fn pattern(&self, field: &str) -> Result<Vec<u8>, SpecError> {
        const ANY_RUN: u8 = 0x01;
        const ANY_ONE: u8 = 0x02;
        let given: Vec<(&str, &String)> =
            [("exact", &self.exact), ("prefix", &self.prefix), ("glob", &self.glob), ("contains", &self.contains)]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
                .collect();
        let [(kind, text)] = given[..] else {
            return Err(err(field, "give exactly one of exact, prefix, glob, contains"));
        };
        if text.is_empty() {
            return Err(err(format!("{field}.{kind}"), "must not be empty"));
        }
        if text.bytes().any(|b| b < 0x20) {
            return Err(err(format!("{field}.{kind}"), "control characters cannot be matched"));
        }
        let literal = text.as_bytes().to_vec();
        let pattern = match kind {
            "exact" => literal,
            "prefix" => [literal, vec![ANY_RUN]].concat(),
            "contains" => [vec![ANY_RUN], literal, vec![ANY_RUN]].concat(),
            _ => text
                .bytes()
                .map(|b| match b {
                    b'*' => ANY_RUN,
                    b'?' => ANY_ONE,
                    b => b,
                })
                .collect(),
        };
        if pattern.len() > PATTERN_MAX {
            return Err(err(format!("{field}.{kind}"), format!("longer than the kernel's {PATTERN_MAX} bytes")));
        }
        Ok(pattern)
    }
}

impl RuntimePolicy {
    pub fn parse(yaml: &str) -> Result<Self, SpecError> {
        let policy: Self = weir_spec::parse_yaml(yaml)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Everything that does not depend on the node (its pods, its backend).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.api_version != API_VERSION {
            return Err(err("apiVersion", format!("must be {API_VERSION}")));
        }
        if self.kind != KIND {
            return Err(err("kind", format!("must be {KIND}")));
        }
        weir_spec::check_dns_label("metadata.name", &self.metadata.name, 63)?;
        let sel = &self.spec.selector;
        for (name, list) in [
            ("binaries", &sel.binaries),
            ("parentBinaries", &sel.parent_binaries),
            ("args", &sel.args),
            ("applets", &sel.applets),
        ] {
            for (i, m) in list.iter().enumerate() {
                m.pattern(&format!("spec.selector.{name}[{i}]"))?;
            }
        }
        if let Some(pods) = &sel.pod_selector {
            pods.validate("spec.selector.podSelector")?;
        }
        if self.spec.rules.is_empty() {
            return Err(err("spec.rules", "needs at least one rule"));
        }
        for (i, rule) in self.spec.rules.iter().enumerate() {
            rule.validate(&format!("spec.rules[{i}]"), sel)?;
        }
        Ok(())
    }
}

impl RuleSpec {
    fn validate(&self, at: &str, selector: &ProcessSelector) -> Result<(), SpecError> {
        if self.operations.is_empty() {
            return Err(err(format!("{at}.operations"), "needs at least one operation"));
        }
        for (i, op) in self.operations.iter().enumerate() {
            if !op.actions().contains(&self.action) {
                let can: Vec<&str> = op.actions().iter().map(|a| a.name()).collect();
                return Err(err(
                    format!("{at}.operations[{i}]"),
                    format!("{} cannot {}: its hook can only {}", op.name(), self.action.name(), can.join(" or ")),
                ));
            }
        }
        let ops = |allowed: &[Operation]| self.operations.iter().all(|o| allowed.contains(o));
        let net = [Operation::Connect, Operation::Bind, Operation::Listen, Operation::Accept];
        if !self.cidrs.is_empty() && !ops(&net) {
            return Err(err(format!("{at}.cidrs"), "only for connect, bind, listen and accept"));
        }
        if !self.ports.is_empty() && !ops(&net) {
            return Err(err(format!("{at}.ports"), "only for connect, bind, listen and accept"));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.port == 0 {
                return Err(err(format!("{at}.ports[{i}].port"), "must be 1..65535"));
            }
            if p.end_port.is_some_and(|end| end < p.port) {
                return Err(err(format!("{at}.ports[{i}].endPort"), "must not be below port"));
            }
        }
        let mut with_socket = net.to_vec();
        with_socket.push(Operation::Socket);
        if !self.families.is_empty() && !ops(&with_socket) {
            return Err(err(format!("{at}.families"), "only for socket, connect, bind, listen and accept"));
        }
        if self.families.iter().any(|f| !matches!(f, Family::Ipv4 | Family::Ipv6)) && !ops(&[Operation::Socket]) {
            return Err(err(format!("{at}.families"), "unix, netlink and packet apply to socket only"));
        }
        if !self.files.is_empty() && !ops(&[Operation::FileOpen]) {
            return Err(err(format!("{at}.files"), "only for fileOpen"));
        }
        for (i, m) in self.files.iter().enumerate() {
            m.pattern(&format!("{at}.files[{i}]"))?;
        }
        if !selector.args.is_empty() && !ops(&[Operation::Exec]) {
            return Err(err(
                format!("{at}.operations"),
                "spec.selector.args is known only at exec: a policy that selects on arguments can only have exec rules",
            ));
        }
        if !selector.applets.is_empty() && !ops(&[Operation::Exec]) {
            return Err(err(
                format!("{at}.operations"),
                "spec.selector.applets is known only at exec: a policy that selects on applets can only have exec rules",
            ));
        }
        if let Some(errno) = &self.errno {
            if self.action != Action::Deny {
                return Err(err(format!("{at}.errno"), "only with action deny"));
            }
            errno.resolve(&format!("{at}.errno"))?;
        }
        if let Some(rate) = self.rate_limit {
            if self.operations.contains(&Operation::Exec) {
                return Err(err(
                    format!("{at}.rateLimit"),
                    "exec events are never rate-limited: the process cache needs every one",
                ));
            }
            if rate == 0 {
                return Err(err(format!("{at}.rateLimit"), "must be at least 1 event per second"));
            }
        }
        Ok(())
    }

    pub(crate) fn errno_value(&self, at: &str) -> Result<i32, SpecError> {
        self.errno.as_ref().map_or(Ok(1), |e| e.resolve(at))
    }
}
