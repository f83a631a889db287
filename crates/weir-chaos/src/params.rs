//! The parameters of NetworkChaos's delay and bandwidth actions, checked
//! as netem and tbf would.

use std::time::Duration;

use weir_spec::{err, SpecError};

use crate::spec::{percent_fraction, BandwidthSpec, DelaySpec, Shaping};

/// The delay line's model from Chaos Mesh's fields.
pub(crate) fn delay_model(spec: &DelaySpec) -> Result<crate::delay::DelayModel, SpecError> {
    let duration = |field: &str, text: &str| crate::duration::parse(text).map_err(|e| err(field, e));
    let latency = duration("spec.delay.latency", &spec.latency)?;
    let jitter = match &spec.jitter {
        Some(text) => duration("spec.delay.jitter", text)?,
        None => Duration::ZERO,
    };
    if latency > Duration::from_secs(60) || jitter > Duration::from_secs(60) {
        return Err(err("spec.delay", "latency and jitter of at most 60s each (the agent holds the packets)"));
    }
    let correlation = match &spec.correlation {
        Some(text) => percent_fraction("spec.delay.correlation", text)?,
        None => 0,
    };
    let reorder = match &spec.reorder {
        None => None,
        Some(r) => {
            let probability = percent_fraction("spec.delay.reorder.reorder", &r.reorder)?;
            let correlation = match &r.correlation {
                Some(text) => percent_fraction("spec.delay.reorder.correlation", text)?,
                None => 0,
            };
            let gap = r.gap.unwrap_or(0);
            if !(0..=i64::from(u32::MAX)).contains(&gap) {
                return Err(err("spec.delay.reorder.gap", format!("{gap}: must be 0 or more")));
            }
            // tc's rule: reordering with no gap means a gap of 1.
            (probability > 0).then_some(crate::delay::Reorder { probability, correlation, gap: (gap as u32).max(1) })
        }
    };
    if reorder.is_some() && latency.is_zero() {
        return Err(err("spec.delay.reorder", "reordering needs a latency (as in netem)"));
    }
    Ok(crate::delay::DelayModel { latency, jitter, correlation, reorder })
}

/// tbf's parameters, checked as tbf would.
pub(crate) fn shaping(spec: &BandwidthSpec) -> Result<Shaping, SpecError> {
    let rate = rate_bytes("spec.bandwidth.rate", &spec.rate)?;
    if spec.limit == 0 {
        return Err(err("spec.bandwidth.limit", "must be at least 1 byte"));
    }
    if spec.buffer == 0 {
        return Err(err("spec.bandwidth.buffer", "must be at least 1 byte"));
    }
    let peak = match (spec.peakrate, spec.minburst) {
        (None, None) => None,
        (Some(peak), Some(minburst)) => {
            if peak <= rate {
                return Err(err(
                    "spec.bandwidth.peakrate",
                    format!("{peak} bytes/s: must be above the rate ({rate} bytes/s)"),
                ));
            }
            if minburst == 0 {
                return Err(err("spec.bandwidth.minburst", "must be at least 1 byte (the MTU, for accuracy)"));
            }
            Some((peak, minburst))
        }
        (Some(_), None) => return Err(err("spec.bandwidth.minburst", "peakrate needs minburst")),
        (None, Some(_)) => return Err(err("spec.bandwidth.peakrate", "minburst needs peakrate")),
    };
    Ok(Shaping { rate, limit: spec.limit, buffer: spec.buffer, peak })
}

/// A rate as Chaos Mesh writes it, in bytes per second: a whole number
/// with `bps`, `kbps`, `mbps`, `gbps` or `tbps` (bytes, each step 1024, as
/// Chaos Mesh converts them), or with tc's `bit`, `kbit`, `mbit`, `gbit`,
/// `tbit` (bits, each step 1000); any case.
pub fn rate_bytes(field: &str, text: &str) -> Result<u64, SpecError> {
    let lower = text.trim().to_ascii_lowercase();
    let units: [(&str, u64, u64); 10] = [
        ("tbps", 1 << 40, 1),
        ("gbps", 1 << 30, 1),
        ("mbps", 1 << 20, 1),
        ("kbps", 1 << 10, 1),
        ("bps", 1, 1),
        ("tbit", 1_000_000_000_000, 8),
        ("gbit", 1_000_000_000, 8),
        ("mbit", 1_000_000, 8),
        ("kbit", 1_000, 8),
        ("bit", 1, 8),
    ];
    let bad = || {
        err(
            field,
            format!("{text:?}: a whole number with bps, kbps, mbps, gbps, tbps (bytes) or bit, kbit, mbit, gbit, tbit"),
        )
    };
    let (number, multiple, divisor) = units
        .iter()
        .find_map(|(unit, multiple, divisor)| lower.strip_suffix(unit).map(|n| (n.trim(), *multiple, *divisor)))
        .ok_or_else(bad)?;
    let n: u64 = number.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(multiple).ok_or_else(|| err(field, format!("{text:?} is too large")))? / divisor;
    if bytes == 0 {
        return Err(err(field, format!("{text:?}: must be at least one byte per second")));
    }
    Ok(bytes)
}
