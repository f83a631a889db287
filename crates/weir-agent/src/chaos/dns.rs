//! DNS faults (DNSChaos) in the agent: each selected pod's addresses get
//! one kernel entry (`chaos_dns`) with the experiment's patterns, answer
//! and end time; a delayed answer's queries go through the delay line,
//! whose routes hold the pod's address paired with the unspecified
//! address (any server).

use std::net::IpAddr;

use weir_bpf::chaos_dns::DnsEntry;
use weir_chaos::dns::{DnsAnswer, DnsFault};
use weir_chaos::{DelayModel, Fault};

use super::Running;

/// The DNS fault of an experiment, if it is one.
pub(super) fn dns_fault(run: &Running) -> Option<DnsFault> {
    match run.experiment.fault {
        Fault::Dns(fault) => Some(fault),
        _ => None,
    }
}

/// The delay line's model of an experiment's packets: a NetworkChaos delay,
/// or a DNSChaos delaying its queries.
pub(super) fn delay_model(fault: &Fault) -> Option<DelayModel> {
    match fault {
        Fault::Delay(model) => Some(*model),
        Fault::Dns(DnsFault { answer: DnsAnswer::Delay(model), .. }) => Some(*model),
        _ => None,
    }
}

/// The kernel's entry for the experiment's sending pods.
pub(super) fn entry(fault: &DnsFault, end_ns: u64, slot: u32) -> DnsEntry {
    DnsEntry {
        rcode: match fault.answer {
            DnsAnswer::Rcode(rcode) => rcode,
            DnsAnswer::Delay(_) => 0,
        },
        probability: fault.probability,
        patterns: fault.patterns.iter().map(|p| (p.text[..p.len as usize].to_vec(), p.wildcard)).collect(),
        end_ns,
        experiment: slot,
    }
}

/// Writes the experiment's entries, one per sending address (its pairs'
/// senders; their other end is the unspecified address).
pub(super) fn insert(
    faults: &weir_bpf::chaos_dns::DnsFaults,
    run: &Running,
    end_ns: u64,
) -> Result<(), weir_bpf::BpfError> {
    let Some(fault) = dns_fault(run) else { return Ok(()) };
    let entry = entry(&fault, end_ns, run.slot);
    let senders: std::collections::BTreeSet<IpAddr> = run.pairs.iter().map(|(src, _)| *src).collect();
    senders.iter().try_for_each(|src| faults.insert(*src, &entry))
}

/// `weir chaos list`'s action and share for a DNS fault.
pub(super) fn action(fault: &DnsFault) -> &'static str {
    match fault.answer {
        DnsAnswer::Rcode(weir_chaos::dns::RCODE_NXDOMAIN) => "dns-nxdomain",
        DnsAnswer::Rcode(_) => "dns-servfail",
        DnsAnswer::Delay(_) => "dns-delay",
    }
}
