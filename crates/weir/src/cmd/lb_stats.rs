//! `weir lb stats`: the XDP load balancer's rates, as Katran's CLI prints
//! them: each node's status read twice, `--interval` apart, and the
//! difference per second — packets and bits per VIP and per real, the
//! connection table's hit ratio, new connections the flood guard did not
//! remember, and drops by reason.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use weir_proto::agent::v1 as pb;

use super::client;
use super::target::AgentTarget;
use crate::output::Format;

fn per_second(after: u64, before: u64, seconds: f64) -> f64 {
    after.saturating_sub(before) as f64 / seconds
}

fn counters(s: &pb::LbStatusResponse) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for c in &s.counters {
        out.insert(c.name.clone(), (c.packets, c.bytes));
    }
    for c in &s.drops {
        out.insert(format!("drop:{}", c.name), (c.packets, c.bytes));
    }
    for v in &s.vips {
        out.insert(format!("vip:{}", v.name), (v.packets, v.bytes));
        for r in &v.reals {
            // By index: NAT reals may share an address, on other ports.
            out.insert(format!("real:{}", r.index), (r.packets, r.bytes));
        }
    }
    out
}

/// One node's rates: (what, packets/s, bits/s), in the order printed.
fn rates(before: &pb::LbStatusResponse, after: &pb::LbStatusResponse, seconds: f64) -> Vec<(String, f64, f64)> {
    let (old, new) = (counters(before), counters(after));
    let rate = |key: &str| {
        let (p0, b0) = old.get(key).copied().unwrap_or_default();
        let (p1, b1) = new.get(key).copied().unwrap_or_default();
        (per_second(p1, p0, seconds), per_second(b1, b0, seconds) * 8.0)
    };
    let mut out = Vec::new();
    for v in &after.vips {
        let (pps, bps) = rate(&format!("vip:{}", v.name));
        out.push((format!("vip {}", v.name), pps, bps));
        for r in &v.reals {
            let (pps, bps) = rate(&format!("real:{}", r.index));
            let at = if r.port == 0 { r.address.clone() } else { format!("{}:{}", r.address, r.port) };
            out.push((format!("  real {at}"), pps, bps));
        }
    }
    for name in ["lru_hit", "lru_miss", "ring", "flood_guard", "passed", "dropped"] {
        let (pps, bps) = rate(name);
        out.push((name.to_string(), pps, bps));
    }
    for key in new.keys().filter(|k| k.starts_with("drop:")) {
        let (pps, bps) = rate(key);
        out.push((format!("  {}", key.replace(':', " ")), pps, bps));
    }
    out
}

pub fn stats(target: &AgentTarget, interval: Duration, output: Format) -> anyhow::Result<ExitCode> {
    let ask =
        || target.ask_each(|mut c: client::LoadBalancer| async move { c.lb_status(pb::LbStatusRequest {}).await });
    let before = ask()?;
    let started = Instant::now();
    std::thread::sleep(interval);
    let after = ask()?;
    let seconds = started.elapsed().as_secs_f64();
    let mut json = Vec::new();
    for (node, now) in &after {
        if now.interface.is_empty() {
            continue;
        }
        let Some((_, then)) = before.iter().find(|(n, _)| n == node) else { continue };
        let rows = rates(then, now, seconds);
        let value = |name: &str| rows.iter().find(|r| r.0 == name).map_or(0.0, |r| r.1);
        let (hits, misses) = (value("lru_hit"), value("lru_miss"));
        let hit_ratio = if hits + misses > 0.0 { hits / (hits + misses) } else { 0.0 };
        if output == Format::Json {
            json.push(serde_json::json!({
                "node": node, "seconds": seconds, "lruHitRatio": hit_ratio,
                "rates": rows.iter().map(|(what, pps, bps)| serde_json::json!({
                    "what": what.trim(), "packetsPerSecond": pps, "bitsPerSecond": bps,
                })).collect::<Vec<_>>(),
            }));
            continue;
        }
        println!("{node}: over {seconds:.1} s, LRU hit ratio {:.1}%", hit_ratio * 100.0);
        println!("  {:<40} {:>14} {:>14}", "", "PACKETS/S", "BITS/S");
        for (what, pps, bps) in rows {
            println!("  {what:<40} {pps:>14.0} {bps:>14.0}");
        }
    }
    if output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(ExitCode::SUCCESS)
}
