//! The bandwidth shaper: a veth pair in the node's namespace. The kernel
//! sends a shaped packet out of [`OUTSIDE`], whose egress qdisc (htb) puts
//! it in its sender's class, each class's leaf a tbf with the experiment's
//! parameters; out of the bucket it crosses to [`RETURN`], where
//! `weir_chaos_return` hands it back to its sender's veth.
//!
//! Why a qdisc and not a token bucket in BPF: tbf queues (up to `limit`
//! bytes) and paces what it holds, as Chaos Mesh's bandwidth does; a
//! bucket in BPF could only drop, which a TCP stream feels as loss, not as
//! a slower link. Why a veth and not the pods' own devices: Weir enters
//! nothing into pods, and packets between pods of one node never pass an
//! egress qdisc on the node (they are redirected into the peer).

use weir_bpf::datapath::PinLayout;
use weir_chaos::Shaping;
use weir_host::iproute::{ip, tc};

use super::ChaosError;

/// Where the buckets are.
pub const OUTSIDE: &str = "weir-shaper";
/// Where packets come back from them.
pub const RETURN: &str = "weir-shaper-rt";
/// htb's handle on [`OUTSIDE`]; classes are `1:minor`.
const ROOT_MAJOR: u32 = 1;
/// First class minor a bucket takes (1:1 is left to htb's own use).
pub const FIRST_MINOR: u16 = 2;
/// A class's own rate: far above anything a bucket lets through, so only
/// the tbf below it shapes.
const CLASS_RATE: &str = "10gbit";

fn failed(e: impl std::fmt::Display) -> ChaosError {
    ChaosError::Shaper(e.to_string())
}

fn exists(name: &str) -> bool {
    ip(None, &["link", "show", "dev", name]).is_ok()
}

fn ifindex(name: &str) -> Result<u32, ChaosError> {
    let json = ip(None, &["-j", "link", "show", "dev", name]).map_err(failed)?;
    let links: serde_json::Value = serde_json::from_str(&json).map_err(failed)?;
    links[0]["ifindex"].as_u64().map(|i| i as u32).ok_or_else(|| failed(format!("no ifindex for {name}")))
}

/// The tc handle of bucket `minor` (skb->priority for htb).
pub fn class_handle(minor: u16) -> u32 {
    (ROOT_MAJOR << 16) | u32::from(minor)
}

/// Makes the pair, its htb and the return program, if they are not there;
/// returns the ifindex packets are sent to.
pub fn ensure(pins: &PinLayout) -> Result<u32, ChaosError> {
    if !exists(OUTSIDE) {
        let _ = ip(None, &["link", "del", "dev", RETURN]);
        ip(None, &["link", "add", OUTSIDE, "type", "veth", "peer", "name", RETURN]).map_err(failed)?;
        for name in [OUTSIDE, RETURN] {
            // No IPv6 chatter of their own through the buckets.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
            ip(None, &["link", "set", "dev", name, "up"]).map_err(failed)?;
        }
    }
    let root = format!("{ROOT_MAJOR}:");
    let qdiscs = tc(&["-j", "qdisc", "show", "dev", OUTSIDE]).map_err(failed)?;
    let has_root = serde_json::from_str::<Vec<serde_json::Value>>(&qdiscs)
        .map_err(failed)?
        .iter()
        .any(|q| q["kind"] == "htb" && q["handle"] == root.as_str());
    if !has_root {
        // (htb cannot be changed in place: replace is for the first time only.)
        tc(&["qdisc", "replace", "dev", OUTSIDE, "root", "handle", &root, "htb"]).map_err(failed)?;
    }
    weir_bpf::chaos::attach_shaper_return(pins, ifindex(RETURN)?)?;
    ifindex(OUTSIDE)
}

/// Puts bucket `minor` in place with `shaping`'s parameters.
pub fn add_bucket(minor: u16, shaping: &Shaping) -> Result<(), ChaosError> {
    let class = format!("{ROOT_MAJOR}:{minor:x}");
    tc(&[
        "class",
        "replace",
        "dev",
        OUTSIDE,
        "parent",
        &format!("{ROOT_MAJOR}:"),
        "classid",
        &class,
        "htb",
        "rate",
        CLASS_RATE,
    ])
    .map_err(failed)?;
    let rate = format!("{}bps", shaping.rate);
    let (burst, limit) = (shaping.buffer.to_string(), shaping.limit.to_string());
    let handle = format!("{minor:x}:");
    let mut args = vec![
        "qdisc", "replace", "dev", OUTSIDE, "parent", &class, "handle", &handle, "tbf", "rate", &rate, "burst", &burst,
        "limit", &limit,
    ];
    let peak = shaping.peak.map(|(peak, minburst)| (format!("{peak}bps"), minburst.to_string()));
    if let Some((peakrate, minburst)) = &peak {
        args.extend(["peakrate", peakrate.as_str(), "minburst", minburst.as_str()]);
    }
    tc(&args).map_err(failed)?;
    Ok(())
}

/// Removes bucket `minor` (its tbf goes with its class); gone already is fine.
pub fn remove_bucket(minor: u16) {
    let _ = tc(&["class", "del", "dev", OUTSIDE, "classid", &format!("{ROOT_MAJOR}:{minor:x}")]);
}

/// Removes the pair, its buckets and the return link.
pub fn remove(pins: &PinLayout) -> Result<(), ChaosError> {
    weir_bpf::chaos::detach_shaper_return(pins)?;
    if exists(OUTSIDE) {
        ip(None, &["link", "del", "dev", OUTSIDE]).map_err(failed)?;
    }
    Ok(())
}

/// Packets each bucket's tbf dropped (its queue full), by minor.
pub fn queue_drops() -> std::collections::BTreeMap<u16, u64> {
    let mut drops = std::collections::BTreeMap::new();
    let Ok(json) = tc(&["-s", "-j", "qdisc", "show", "dev", OUTSIDE]) else { return drops };
    let Ok(qdiscs) = serde_json::from_str::<Vec<serde_json::Value>>(&json) else { return drops };
    for q in qdiscs.iter().filter(|q| q["kind"] == "tbf") {
        let minor =
            q["handle"].as_str().and_then(|h| h.strip_suffix(':')).and_then(|h| u16::from_str_radix(h, 16).ok());
        if let (Some(minor), Some(dropped)) = (minor, q["drops"].as_u64()) {
            drops.insert(minor, dropped);
        }
    }
    drops
}
