//! Policies plus this node's pods become the kernel's rule bank.
//!
//! Each kernel rule holds one value per selector (one binary pattern, one
//! uid, one CIDR, one port range...), so a policy with lists expands into
//! their product. Rules that refuse (kill, deny) come before rules that
//! audit: the kernel stops at the first match, so a refusal always wins.

use std::collections::BTreeMap;

use ipnet::IpNet;
use weir_spec::{err, SpecError};

use crate::spec::{Action, Operation, RuleSpec, RuntimePolicy, StringMatch};

/// Rules in one kernel bank (WEIR_RT_MAX_RULES).
pub const MAX_RULES: usize = 256;
/// Pod cgroups all rules together may name (WEIR_RT_MAX_RULE_CGROUPS).
pub const MAX_RULE_CGROUPS: usize = 65536;
const ANY_RUN: u8 = 0x01;
const ANY_ONE: u8 = 0x02;

/// A pod on this node, as pod selectors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cgroup_id: u64,
}

/// What this node's kernel enforces with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// BPF LSM hooks are loaded: exec and file open can be refused with an errno.
    pub lsm: bool,
}

impl Backend {
    pub fn name(self) -> &'static str {
        if self.lsm {
            "bpf-lsm"
        } else {
            "tracepoint"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPattern {
    /// Empty: matches everything.
    pub text: Vec<u8>,
    /// Leading literal bytes, at most 8: the kernel compares them before any glob step.
    pub head: u8,
    /// No wildcards: the subject must be exactly `text`.
    pub literal: bool,
}

impl KernelPattern {
    /// The first `head` bytes as the kernel compares them: one
    /// native-endian load of the subject's first 8 bytes, masked.
    pub fn head_bits_and_mask(&self) -> (u64, u64) {
        let mut bits = [0u8; 8];
        let mut mask = [0u8; 8];
        for i in 0..usize::from(self.head) {
            bits[i] = self.text[i];
            mask[i] = 0xff;
        }
        (u64::from_ne_bytes(bits), u64::from_ne_bytes(mask))
    }
}

impl KernelPattern {
    fn new(text: Vec<u8>) -> Self {
        let head = text.iter().take(8).take_while(|b| **b != ANY_RUN && **b != ANY_ONE).count() as u8;
        let literal = !text.iter().any(|b| *b == ANY_RUN || *b == ANY_ONE);
        Self { text, head, literal }
    }
}

/// Which policy rule a kernel rule came from, for events and listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOrigin {
    pub policy: String,
    pub rule: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub operations: Vec<Operation>,
    pub action: Action,
    pub errno: i32,
    pub uid: Option<u32>,
    /// 4, 6, or an AF_* number (socket rules).
    pub family: Option<u8>,
    pub cidr: Option<IpNet>,
    pub ports: Option<(u16, u16)>,
    /// 0: unlimited.
    pub rate_per_sec: u32,
    /// An exec deny the BPF LSM hook refuses with errno (else: a kill at exec).
    pub lsm_exec: bool,
    pub binary: KernelPattern,
    pub parent: KernelPattern,
    pub args: KernelPattern,
    pub file: KernelPattern,
    /// A multi-call binary's applet (exec only).
    pub applet: KernelPattern,
    /// Only programs run from no file (memfd).
    pub fileless: bool,
    /// Pod cgroups the rule is limited to; None: every process.
    pub cgroups: Option<Vec<u64>>,
    pub origin: RuleOrigin,
}

fn patterns(list: &[StringMatch], field: &str) -> Result<Vec<KernelPattern>, SpecError> {
    if list.is_empty() {
        return Ok(vec![KernelPattern::default()]);
    }
    list.iter().enumerate().map(|(i, m)| Ok(KernelPattern::new(m.pattern(&format!("{field}[{i}]"))?))).collect()
}

fn or_any<T: Clone>(list: &[T]) -> Vec<Option<T>> {
    if list.is_empty() {
        vec![None]
    } else {
        list.iter().cloned().map(Some).collect()
    }
}

/// The kernel rules of every policy, refusals first, checked against what
/// `backend` can enforce and the kernel's limits.
pub fn compile(
    policies: &[RuntimePolicy],
    workloads: &[Workload],
    backend: Backend,
) -> Result<Vec<KernelRule>, SpecError> {
    let mut rules = Vec::new();
    for policy in policies {
        policy.validate()?;
        let at = |field: String| format!("RuntimePolicy {}: {field}", policy.metadata.name);
        let sel = &policy.spec.selector;
        let cgroups = sel.selects_pods().then(|| {
            workloads
                .iter()
                .filter(|w| sel.namespaces.is_empty() || sel.namespaces.contains(&w.namespace))
                .filter(|w| sel.pod_selector.as_ref().is_none_or(|s| s.matches(&w.labels)))
                .map(|w| w.cgroup_id)
                .collect::<Vec<u64>>()
        });
        let binaries = patterns(&sel.binaries, "spec.selector.binaries").map_err(|e| err(at(e.field), e.message))?;
        let parents =
            patterns(&sel.parent_binaries, "spec.selector.parentBinaries").map_err(|e| err(at(e.field), e.message))?;
        let args = patterns(&sel.args, "spec.selector.args").map_err(|e| err(at(e.field), e.message))?;
        let applets = patterns(&sel.applets, "spec.selector.applets").map_err(|e| err(at(e.field), e.message))?;
        for (index, spec) in policy.spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{index}]");
            if let Some(i) = spec.operations.iter().position(|o| *o == Operation::FileOpen) {
                if !backend.lsm {
                    return Err(err(
                        at(format!("{field}.operations[{i}]")),
                        "fileOpen needs the BPF LSM backend; this node's kernel refuses BPF LSM, so it runs the tracepoint backend (see `weir probe`)",
                    ));
                }
            }
            let errno = spec.errno_value(&at(format!("{field}.errno")))?;
            let files = patterns(&spec.files, &format!("{field}.files")).map_err(|e| err(at(e.field), e.message))?;
            let origin = RuleOrigin { policy: policy.metadata.name.clone(), rule: index };
            let before = rules.len();
            expand(spec, &binaries, &parents, &args, &files, &sel.uids, |rule| {
                for applet in &applets {
                    let mut rule = rule.clone();
                    rule.applet = applet.clone();
                    rule.fileless = sel.fileless;
                    rule.errno = errno;
                    rule.cgroups.clone_from(&cgroups);
                    rule.origin = origin.clone();
                    // The LSM exec hook runs before the arguments exist.
                    rule.lsm_exec = backend.lsm
                        && rule.action == Action::Deny
                        && rule.operations.contains(&Operation::Exec)
                        && rule.args.text.is_empty()
                        && rule.applet.text.is_empty();
                    rules.push(rule);
                }
            });
            if rules.len() > MAX_RULES {
                return Err(err(
                    at(field),
                    format!(
                        "expands to {} kernel rules (one per combination of binaries, parents, args, applets, uids, cidrs, ports, families and files); with the policies before it that passes the kernel's {MAX_RULES}",
                        rules.len() - before
                    ),
                ));
            }
        }
    }
    let cgroups: usize = rules.iter().filter_map(|r| r.cgroups.as_ref().map(Vec::len)).sum();
    if cgroups > MAX_RULE_CGROUPS {
        return Err(err(
            "",
            format!("the rules name {cgroups} pod cgroups in all; the kernel holds {MAX_RULE_CGROUPS}"),
        ));
    }
    // Stable: within a rank, policies keep their order.
    rules.sort_by_key(|r| r.action == Action::Audit);
    Ok(rules)
}

/// The kernel judges an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the
/// IPv4 address it stands for, so a block written in that form becomes the
/// IPv4 block it covers.
pub fn ipv4_form(cidr: IpNet) -> IpNet {
    match cidr {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(cidr, IpNet::V4),
            None => cidr,
        },
        other => other,
    }
}

fn expand(
    spec: &RuleSpec,
    binaries: &[KernelPattern],
    parents: &[KernelPattern],
    args: &[KernelPattern],
    files: &[KernelPattern],
    uids: &[u32],
    mut push: impl FnMut(KernelRule),
) {
    let ports: Vec<Option<(u16, u16)>> =
        or_any(&spec.ports).into_iter().map(|p| p.map(|p| (p.port, p.end_port.unwrap_or(p.port)))).collect();
    let families: Vec<Option<u8>> = or_any(&spec.families).into_iter().map(|f| f.map(|f| f.code())).collect();
    let cidrs: Vec<IpNet> = spec.cidrs.iter().copied().map(ipv4_form).collect();
    for binary in binaries {
        for parent in parents {
            for arg in args {
                for file in files {
                    for uid in or_any(uids) {
                        for cidr in or_any(&cidrs) {
                            for family in &families {
                                let cidr_family = cidr.map(|c| if c.addr().is_ipv4() { 4 } else { 6 });
                                // A CIDR fixes the family; other families cannot also match.
                                if cidr_family.is_some() && family.is_some() && cidr_family != *family {
                                    continue;
                                }
                                for ports in &ports {
                                    push(KernelRule {
                                        operations: spec.operations.clone(),
                                        action: spec.action,
                                        errno: 0,
                                        uid,
                                        family: family.or(cidr_family),
                                        cidr,
                                        ports: *ports,
                                        rate_per_sec: spec.rate_limit.unwrap_or(0),
                                        lsm_exec: false,
                                        binary: binary.clone(),
                                        parent: parent.clone(),
                                        args: arg.clone(),
                                        file: file.clone(),
                                        applet: KernelPattern::default(),
                                        fileless: false,
                                        cgroups: None,
                                        origin: RuleOrigin { policy: String::new(), rule: 0 },
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPOINT: Backend = Backend { lsm: false };
    const LSM: Backend = Backend { lsm: true };

    fn policy(name: &str, spec: &str) -> RuntimePolicy {
        RuntimePolicy::parse(&format!(
            "apiVersion: weir.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}"
        ))
        .expect("valid policy")
    }

    fn parse_err(spec: &str) -> SpecError {
        RuntimePolicy::parse(&format!(
            "apiVersion: weir.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {{name: p}}\nspec:\n{spec}"
        ))
        .expect_err("invalid policy")
    }

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], cgroup_id: u64) -> Workload {
        Workload {
            namespace: ns.into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cgroup_id,
        }
    }

    #[test]
    fn patterns_encode_every_kind() {
        let p = policy(
            "p",
            "  selector:\n    binaries: [{exact: /usr/bin/nc}, {prefix: /tmp/}, {glob: '/usr/bin/*ca?'}, {contains: evil}]\n  rules: [{operations: [exec], action: kill}]\n",
        );
        let rules = compile(&[p], &[], TRACEPOINT).expect("compiles");
        let texts: Vec<&[u8]> = rules.iter().map(|r| r.binary.text.as_slice()).collect();
        assert_eq!(texts, [&b"/usr/bin/nc"[..], b"/tmp/\x01", b"/usr/bin/\x01ca\x02", b"\x01evil\x01"]);
        assert_eq!((rules[0].binary.head, rules[0].binary.literal), (8, true));
        assert_eq!((rules[1].binary.head, rules[1].binary.literal), (5, false));
        assert_eq!((rules[3].binary.head, rules[3].binary.literal), (0, false));
    }

    #[test]
    fn refusals_come_before_audits_and_lists_expand() {
        let audit = policy(
            "a-audit",
            "  rules: [{operations: [connect], action: audit, cidrs: [10.0.0.0/8, 'fd00::/8'], ports: [{port: 80}, {port: 8000, endPort: 8080}]}]\n",
        );
        let deny = policy(
            "b-deny",
            "  selector: {uids: [0, 1000]}\n  rules: [{operations: [connect], action: deny, errno: ECONNREFUSED}]\n",
        );
        let rules = compile(&[audit, deny], &[], TRACEPOINT).expect("compiles");
        assert_eq!(rules.len(), 2 + 4);
        assert!(rules[..2].iter().all(|r| r.action == Action::Deny && r.errno == 111));
        assert_eq!(rules[..2].iter().map(|r| r.uid).collect::<Vec<_>>(), [Some(0), Some(1000)]);
        assert_eq!(rules[2].family, Some(4));
        assert_eq!(rules[3].ports, Some((8000, 8080)));
        assert_eq!(rules[5].family, Some(6));
        assert_eq!(rules[5].origin, RuleOrigin { policy: "a-audit".into(), rule: 0 });
    }

    #[test]
    fn pod_selectors_become_cgroup_sets() {
        let p = policy(
            "p",
            "  selector:\n    namespaces: [shop]\n    podSelector: {matchLabels: {app: web}}\n  rules: [{operations: [exec], action: audit}]\n",
        );
        let pods = [
            pod("shop", "web-1", &[("app", "web")], 11),
            pod("shop", "db", &[("app", "db")], 12),
            pod("other", "web-2", &[("app", "web")], 13),
        ];
        let rules = compile(&[p], &pods, TRACEPOINT).expect("compiles");
        assert_eq!(rules[0].cgroups, Some(vec![11]));
        let everyone = policy("q", "  rules: [{operations: [exec], action: audit}]\n");
        assert_eq!(compile(&[everyone], &pods, TRACEPOINT).expect("compiles")[0].cgroups, None);
    }

    #[test]
    fn the_backend_decides_how_exec_is_refused_and_whether_files_can_be() {
        let p = policy("p", "  rules: [{operations: [exec], action: deny, errno: EACCES}]\n");
        assert!(!compile(std::slice::from_ref(&p), &[], TRACEPOINT).expect("compiles")[0].lsm_exec);
        assert!(compile(std::slice::from_ref(&p), &[], LSM).expect("compiles")[0].lsm_exec);
        let on_args =
            policy("p", "  selector: {args: [{contains: '-e'}]}\n  rules: [{operations: [exec], action: deny}]\n");
        assert!(!compile(&[on_args], &[], LSM).expect("compiles")[0].lsm_exec, "the LSM hook cannot see arguments");
        let files = policy("f", "  rules: [{operations: [fileOpen], action: deny, files: [{prefix: /etc/}]}]\n");
        let e = compile(std::slice::from_ref(&files), &[], TRACEPOINT).expect_err("no LSM");
        assert_eq!(e.field, "RuntimePolicy f: spec.rules[0].operations[0]");
        assert!(e.message.contains("BPF LSM"), "{}", e.message);
        assert_eq!(compile(&[files], &[], LSM).expect("LSM").len(), 1);
    }

    #[test]
    fn bad_policies_name_the_field() {
        let cases = [
            ("  rules: [{operations: [exec], action: deny, errno: EWHAT}]\n", "spec.rules[0].errno"),
            ("  rules: [{operations: [listen], action: deny}]\n", "spec.rules[0].operations[0]"),
            ("  rules: [{operations: [connect], action: kill}]\n", "spec.rules[0].operations[0]"),
            ("  rules: [{operations: [exec], action: audit, rateLimit: 5}]\n", "spec.rules[0].rateLimit"),
            ("  rules: [{operations: [exec], action: audit, cidrs: [10.0.0.0/8]}]\n", "spec.rules[0].cidrs"),
            (
                "  rules: [{operations: [connect], action: audit, ports: [{port: 9, endPort: 8}]}]\n",
                "spec.rules[0].ports[0].endPort",
            ),
            (
                "  selector: {binaries: [{exact: a, prefix: b}]}\n  rules: [{operations: [exec], action: kill}]\n",
                "spec.selector.binaries[0]",
            ),
            (
                "  selector: {args: [{contains: x}]}\n  rules: [{operations: [connect], action: deny}]\n",
                "spec.rules[0].operations",
            ),
            ("  selector: {binaryz: []}\n  rules: [{operations: [exec], action: kill}]\n", "spec.selector.binaryz"),
            ("  rules: []\n", "spec.rules"),
            (
                "  selector: {applets: [{exact: wget}]}\n  rules: [{operations: [connect], action: deny}]\n",
                "spec.rules[0].operations",
            ),
            (
                "  selector: {applets: [{exact: ''}]}\n  rules: [{operations: [exec], action: kill}]\n",
                "spec.selector.applets[0].exact",
            ),
            ("  rules: [{operations: [exec], action: audit, errno: EPERM}]\n", "spec.rules[0].errno"),
            ("  rules: [{operations: [connect], action: deny, families: [unix]}]\n", "spec.rules[0].families"),
        ];
        for (spec, field) in cases {
            let e = parse_err(spec);
            assert_eq!(e.field, field, "{spec}: {e}");
        }
    }

    #[test]
    fn ipv4_mapped_blocks_become_ipv4_blocks() {
        let p = policy(
            "p",
            "  rules: [{operations: [connect], action: deny, cidrs: ['::ffff:10.247.0.0/120', '::ffff:0:0/96', 'fd00::/8', '::/0']}]\n",
        );
        let rules = compile(&[p], &[], TRACEPOINT).expect("compiles");
        let cidrs: Vec<String> = rules.iter().map(|r| r.cidr.expect("cidr").to_string()).collect();
        assert_eq!(cidrs, ["10.247.0.0/24", "0.0.0.0/0", "fd00::/8", "::/0"]);
        assert_eq!(rules.iter().map(|r| r.family).collect::<Vec<_>>(), [Some(4), Some(4), Some(6), Some(6)]);
    }

    #[test]
    fn the_kernel_limit_is_checked() {
        let uids: Vec<String> = (0..300).map(|u| u.to_string()).collect();
        let p = policy(
            "big",
            &format!("  selector: {{uids: [{}]}}\n  rules: [{{operations: [exec], action: kill}}]\n", uids.join(",")),
        );
        let e = compile(&[p], &[], TRACEPOINT).expect_err("too many");
        assert_eq!(e.field, "RuntimePolicy big: spec.rules[0]");
    }
}
