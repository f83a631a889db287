//! What a fault does to a packet it lets through, in a word or two for the
//! flow events it makes (`weir observe`: "FORWARDED (delayed 100ms) by
//! frontend/web-api-delay"). Dropping faults need none: their drop reason
//! says it.

use std::time::Duration;

use crate::spec::Fault;

/// A duration as Go prints its short forms: `100ms`, `1.5s`, `250µs`.
fn short(d: Duration) -> String {
    let ns = d.as_nanos();
    let trim = |value: f64, unit: &str| {
        let text = format!("{value:.3}");
        format!("{}{unit}", text.trim_end_matches('0').trim_end_matches('.'))
    };
    match ns {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => trim(n as f64 / 1e3, "µs"),
        n if n < 1_000_000_000 => trim(n as f64 / 1e6, "ms"),
        n => trim(n as f64 / 1e9, "s"),
    }
}

impl Fault {
    /// The word for a packet this fault let through changed; None for the
    /// faults that drop or touch no packet.
    pub fn effect(&self) -> Option<String> {
        Some(match self {
            Fault::Duplicate { .. } => "duplicated".into(),
            Fault::Corrupt { .. } => "corrupted".into(),
            Fault::Bandwidth(shaping) => format!("shaped {} B/s", shaping.rate),
            Fault::Delay(model)
            | Fault::Dns(crate::dns::DnsFault { answer: crate::dns::DnsAnswer::Delay(model), .. }) => {
                if model.jitter.is_zero() {
                    format!("delayed {}", short(model.latency))
                } else {
                    format!("delayed {} ±{}", short(model.latency), short(model.jitter))
                }
            }
            // An answered query is dropped on its way: its drop reason says it.
            Fault::Dns(_) => return None,
            Fault::Partition
            | Fault::Loss { .. }
            | Fault::ConnectError { .. }
            | Fault::PodKill { .. }
            | Fault::PodFailure
            | Fault::TcpReset
            | Fault::ServiceRefuse { .. }
            | Fault::ServiceBlackhole { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DelayModel, Shaping};

    #[test]
    fn each_passing_fault_has_its_word() {
        let delay = |latency_ms, jitter_ms| {
            Fault::Delay(DelayModel {
                latency: Duration::from_millis(latency_ms),
                jitter: Duration::from_millis(jitter_ms),
                correlation: 0,
                reorder: None,
            })
        };
        assert_eq!(delay(100, 0).effect().as_deref(), Some("delayed 100ms"));
        assert_eq!(delay(1500, 10).effect().as_deref(), Some("delayed 1.5s ±10ms"));
        assert_eq!(Fault::Duplicate { probability: 1, correlation: 0 }.effect().as_deref(), Some("duplicated"));
        let corrupt = Fault::Corrupt { probability: 1, correlation: 0, fix_checksum: true };
        assert_eq!(corrupt.effect().as_deref(), Some("corrupted"));
        let shaping = Shaping { rate: 131072, limit: 1, buffer: 1, peak: None };
        assert_eq!(Fault::Bandwidth(shaping).effect().as_deref(), Some("shaped 131072 B/s"));
        assert_eq!(Fault::Partition.effect(), None);
        assert_eq!(short(Duration::from_micros(250)), "250µs");
    }
}
