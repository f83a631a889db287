//! The `bandwidth` capability: a container's rates, as a token bucket
//! (`tbf` qdisc) on each side of its veth. Traffic to the container is
//! shaped on the host side (its egress is the container's ingress);
//! traffic from it on the container side, in its namespace. Pure: the
//! config and the qdisc's netlink options.

use serde_json::Value;

use crate::error::{CniError, INVALID_NETWORK_CONFIG};

/// How long a packet may wait in the bucket's queue (the reference
/// `bandwidth` plugin's latency): the queue holds this much at the rate,
/// plus the burst.
const QUEUE_LATENCY_MS: u64 = 25;

/// One direction's token bucket, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bytes per second.
    pub rate: u64,
    /// The bucket's size: what may pass at once.
    pub burst: u32,
    /// The queue's size.
    pub limit: u32,
}

/// A container's rates; None leaves a direction alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth {
    /// To the container (the host side's egress).
    pub ingress: Option<Shape>,
    /// From the container (its own interface's egress).
    pub egress: Option<Shape>,
}

/// `runtimeConfig.bandwidth` as the capability writes it: `ingressRate`,
/// `egressRate` in bits per second and `ingressBurst`, `egressBurst` in
/// bits; a rate needs its burst and the other way round.
pub fn parse(runtime_config: Option<&Value>) -> Result<Bandwidth, CniError> {
    let Some(value) = runtime_config.and_then(|r| r.get("bandwidth")) else { return Ok(Bandwidth::default()) };
    let invalid = |why: String| CniError::new(INVALID_NETWORK_CONFIG, format!("runtimeConfig.bandwidth: {why}"));
    let fields = value.as_object().ok_or_else(|| invalid(format!("{value} is not an object")))?;
    const KNOWN: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];
    if let Some(key) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(format!("unknown field {key:?} (known: {})", KNOWN.join(", "))));
    }
    let number = |key: &str| -> Result<u64, CniError> {
        match fields.get(key) {
            None => Ok(0),
            Some(v) => v.as_u64().ok_or_else(|| invalid(format!("{key} {v}: not a whole number of bits"))),
        }
    };
    let direction = |rate_key: &str, burst_key: &str| -> Result<Option<Shape>, CniError> {
        let (rate_bits, burst_bits) = (number(rate_key)?, number(burst_key)?);
        match (rate_bits, burst_bits) {
            (0, 0) => Ok(None),
            (0, _) | (_, 0) => Err(invalid(format!("{rate_key} and {burst_key} go together: set both or neither"))),
            (rate_bits, _) if rate_bits < 8 => {
                Err(invalid(format!("{rate_key} {rate_bits}: under one byte per second")))
            }
            (rate_bits, burst_bits) => {
                let burst = u32::try_from(burst_bits / 8)
                    .ok()
                    .filter(|b| *b > 0)
                    .ok_or_else(|| invalid(format!("{burst_key} {burst_bits}: 8 bits to 32 Gibit")))?;
                let rate = rate_bits / 8;
                let queued = rate.saturating_mul(QUEUE_LATENCY_MS) / 1000;
                let limit = u32::try_from(queued.saturating_add(burst.into())).unwrap_or(u32::MAX);
                Ok(Some(Shape { rate, burst, limit }))
            }
        }
    };
    Ok(Bandwidth {
        ingress: direction("ingressRate", "ingressBurst")?,
        egress: direction("egressRate", "egressBurst")?,
    })
}

/// linux/pkt_sched.h: TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_TBF_BURST.
pub const TCA_TBF_PARMS: u16 = 1;
pub const TCA_TBF_RATE64: u16 = 4;
pub const TCA_TBF_BURST: u16 = 6;
const TC_LINKLAYER_ETHERNET: u8 = 1;

/// The `tbf` qdisc's options (kind, value) for `shape`: `struct
/// tc_tbf_qopt` (rate, no peak rate, the queue's limit; the buffer comes
/// from TCA_TBF_BURST, which the kernel turns into time at the rate), the
/// 64-bit rate when it does not fit 32 bits, and the burst.
pub fn tbf_options(shape: &Shape) -> Vec<(u16, Vec<u8>)> {
    let mut parms = Vec::with_capacity(36);
    // struct tc_ratespec rate: cell_log, linklayer, overhead, cell_align, mpu, rate.
    parms.extend_from_slice(&[0, TC_LINKLAYER_ETHERNET]);
    parms.extend_from_slice(&0u16.to_ne_bytes());
    parms.extend_from_slice(&0i16.to_ne_bytes());
    parms.extend_from_slice(&0u16.to_ne_bytes());
    parms.extend_from_slice(&u32::try_from(shape.rate).unwrap_or(u32::MAX).to_ne_bytes());
    // struct tc_ratespec peakrate: none.
    parms.extend_from_slice(&[0; 12]);
    parms.extend_from_slice(&shape.limit.to_ne_bytes());
    // buffer (ticks) and mtu: from the burst, and no peak rate.
    parms.extend_from_slice(&0u32.to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes());
    let mut options = vec![(TCA_TBF_PARMS, parms)];
    if shape.rate > u64::from(u32::MAX) {
        options.push((TCA_TBF_RATE64, shape.rate.to_ne_bytes().to_vec()));
    }
    options.push((TCA_TBF_BURST, shape.burst.to_ne_bytes().to_vec()));
    options
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rates_and_bursts_in_bits_become_byte_buckets() {
        let got = parse(Some(&json!({"bandwidth": {
            "ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 800_000_000_000u64, "egressBurst": 8_000_000
        }})))
        .expect("valid");
        assert_eq!(got.ingress, Some(Shape { rate: 1_000_000, burst: 10_000, limit: 25_000 + 10_000 }));
        let egress = got.egress.expect("egress");
        assert_eq!((egress.rate, egress.burst), (100_000_000_000, 1_000_000));
        assert_eq!(parse(Some(&json!({}))).expect("valid"), Bandwidth::default());
        assert_eq!(
            parse(Some(&json!({"bandwidth": {"egressRate": 8000, "egressBurst": 800}}))).expect("valid").ingress,
            None
        );
    }

    #[test]
    fn bad_bandwidth_is_named() {
        for (bad, named) in [
            (json!({"bandwidth": 5}), "not an object"),
            (json!({"bandwidth": {"ingressRate": 8000}}), "go together"),
            (json!({"bandwidth": {"egressBurst": 8000}}), "go together"),
            (json!({"bandwidth": {"ingressRate": -1, "ingressBurst": 8}}), "ingressRate -1"),
            (json!({"bandwidth": {"ingressRate": 4, "ingressBurst": 8}}), "under one byte"),
            (json!({"bandwidth": {"ingressRate": 8000, "ingressBurst": 4}}), "ingressBurst 4"),
            (json!({"bandwidth": {"ingressRate": 8000, "ingressBurst": 8, "rate": 1}}), "\"rate\""),
        ] {
            let err = parse(Some(&bad)).expect_err("an error");
            assert_eq!(err.code, INVALID_NETWORK_CONFIG);
            assert!(err.msg.starts_with("runtimeConfig.bandwidth") && err.msg.contains(named), "{}", err.msg);
        }
    }

    #[test]
    fn tbf_options_are_the_kernels_layout() {
        let small = tbf_options(&Shape { rate: 1_000_000, burst: 10_000, limit: 35_000 });
        assert_eq!(small.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [TCA_TBF_PARMS, TCA_TBF_BURST]);
        let parms = &small[0].1;
        assert_eq!(parms.len(), 36, "sizeof(struct tc_tbf_qopt)");
        assert_eq!(parms[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(&parms[8..12], &1_000_000u32.to_ne_bytes(), "rate.rate");
        assert_eq!(&parms[24..28], &35_000u32.to_ne_bytes(), "limit");
        assert_eq!(small[1].1, 10_000u32.to_ne_bytes());
        let big = tbf_options(&Shape { rate: 100_000_000_000, burst: 1, limit: 1 });
        assert_eq!(&big[0].1[8..12], &u32::MAX.to_ne_bytes());
        assert_eq!(big[1], (TCA_TBF_RATE64, 100_000_000_000u64.to_ne_bytes().to_vec()));
    }
}
