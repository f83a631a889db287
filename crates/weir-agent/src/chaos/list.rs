//! `weir chaos list`: each experiment as this node runs it, with what it did.

use std::collections::{BTreeMap, BTreeSet};

use weir_chaos::{Direction, Fault};
use weir_proto::agent::v1 as pb;

use super::{shaper, ChaosError, ChaosState};

impl ChaosState {
    pub fn list(&mut self) -> Result<pb::ChaosListResponse, ChaosError> {
        self.sweep()?;
        let mut experiments = Vec::new();
        let queue_drops =
            if self.running.values().any(|r| !r.buckets.is_empty()) { shaper::queue_drops() } else { BTreeMap::new() };
        for (key, run) in &self.running {
            let share = |v: u32| (v as f64 / 4294967296.0 * 1e6).round() / 1e4;
            let shaping = match run.experiment.fault {
                Fault::Bandwidth(shaping) => Some(shaping),
                _ => None,
            };
            let minors: BTreeSet<u16> = run.buckets.values().copied().collect();
            let mut queue_dropped: u64 = minors.iter().filter_map(|m| queue_drops.get(m)).sum();
            let delay = match super::dns::delay_model(&run.experiment.fault) {
                Some(model) => {
                    queue_dropped += self.delay_line.as_ref().map_or(0, |line| line.overflow(run.slot));
                    Some(model)
                }
                None => None,
            };
            let (action, percent, correlation, checksum) = match run.experiment.fault {
                Fault::Bandwidth(_) => ("bandwidth", 0.0, 0.0, ""),
                Fault::Delay(model) => ("delay", 0.0, share(model.correlation), ""),
                Fault::ConnectError { probability, .. } => ("connect-error", share(probability), 0.0, ""),
                Fault::PodKill { .. } => ("pod-kill", 0.0, 0.0, ""),
                Fault::PodFailure => ("pod-failure", 0.0, 0.0, ""),
                Fault::TcpReset => ("tcp-reset", 0.0, 0.0, ""),
                Fault::Dns(dns) => (super::dns::action(&dns), share(dns.probability), 0.0, ""),
                Fault::ServiceRefuse { probability, .. } => ("refuse", share(probability), 0.0, ""),
                Fault::ServiceBlackhole { probability } => ("blackhole", share(probability), 0.0, ""),
                Fault::Partition => ("partition", 0.0, 0.0, ""),
                Fault::Loss { probability, correlation } => ("loss", share(probability), share(correlation), ""),
                Fault::Duplicate { probability, correlation } => {
                    ("duplicate", share(probability), share(correlation), "")
                }
                Fault::Corrupt { probability, correlation, fix_checksum } => {
                    let checksum = if fix_checksum { "fixed" } else { "left-wrong" };
                    ("corrupt", share(probability), share(correlation), checksum)
                }
            };
            let direction = match run.experiment.direction {
                Direction::To => "to",
                Direction::From => "from",
                Direction::Both => "both",
            };
            experiments.push(pb::ChaosExperiment {
                name: key.clone(),
                action: action.into(),
                percent,
                correlation_percent: correlation,
                direction: direction.into(),
                pods: run.pods.clone(),
                targets: run.targets.clone(),
                pairs: run.pairs.len() as u64,
                packets_affected: match run.experiment.fault {
                    Fault::PodKill { .. } | Fault::PodFailure | Fault::TcpReset => run.done,
                    _ => self.maps.affected(run.slot)?.packets,
                },
                end_unix_ns: run.end_unix_ns.unwrap_or(0),
                checksum: checksum.into(),
                rate_bytes: shaping.map_or(0, |s| s.rate),
                limit: shaping.map_or(0, |s| s.limit),
                buffer: shaping.map_or(0, |s| s.buffer),
                peakrate: shaping.and_then(|s| s.peak).map_or(0, |p| p.0),
                minburst: shaping.and_then(|s| s.peak).map_or(0, |p| p.1),
                queue_dropped,
                latency_ns: delay.map_or(0, |d| d.latency.as_nanos() as u64),
                jitter_ns: delay.map_or(0, |d| d.jitter.as_nanos() as u64),
                reorder_percent: delay.and_then(|d| d.reorder).map_or(0.0, |r| share(r.probability)),
                reorder_correlation_percent: delay.and_then(|d| d.reorder).map_or(0.0, |r| share(r.correlation)),
                reorder_gap: delay.and_then(|d| d.reorder).map_or(0, |r| r.gap),
                errno: match run.experiment.fault {
                    Fault::ConnectError { errno, .. } => errno,
                    Fault::ServiceRefuse { errno, .. } => errno,
                    _ => 0,
                },
                frozen: if run.ended { Vec::new() } else { super::freeze::frozen_now(&run.frozen) },
                dns_patterns: match run.experiment.fault {
                    Fault::Dns(dns) => dns.patterns.texts(),
                    _ => Vec::new(),
                },
            });
        }
        Ok(pb::ChaosListResponse { experiments, problem: String::new() })
    }
}
