//! Describes what the load balancer sent: the outer headers of a frame
//! (`weir lb simulate`), from the bytes alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::GUE_PORT;

fn port(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn v4(bytes: &[u8], at: usize) -> Option<IpAddr> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b).into())
}

fn v6(bytes: &[u8], at: usize) -> Option<IpAddr> {
    let b: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b).into())
}

/// "IPIP 4in4 172.16.1.2 -> 10.0.0.2", "GUE over IPv6 ...", or the
/// addresses and ports of a plain (NAT-rewritten) packet.
pub fn describe(frame: &[u8]) -> String {
    describe_inner(frame).unwrap_or_else(|| format!("{} bytes, not IP", frame.len()))
}

fn describe_inner(frame: &[u8]) -> Option<String> {
    let ethertype = port(frame, 12)?;
    let (outer_v6, proto, src, dst, l4) = match ethertype {
        0x0800 => {
            (false, *frame.get(14 + 9)?, v4(frame, 26)?, v4(frame, 30)?, 14 + usize::from(frame.get(14)? & 0x0F) * 4)
        }
        0x86DD => (true, *frame.get(14 + 6)?, v6(frame, 22)?, v6(frame, 38)?, 54),
        _ => return None,
    };
    let outer = if outer_v6 { "IPv6" } else { "IPv4" };
    let inner = |at: usize| match frame.get(at).map(|b| b >> 4) {
        Some(4) => "4",
        Some(6) => "6",
        _ => "?",
    };
    Some(match proto {
        4 | 41 => {
            format!("IPIP {}in{} {src} -> {dst}", if proto == 4 { "4" } else { "6" }, if outer_v6 { "6" } else { "4" })
        }
        17 if port(frame, l4 + 2) == Some(GUE_PORT) => format!(
            "GUE (IPv{} inside, UDP {} -> {GUE_PORT}) over {outer} {src} -> {dst}",
            inner(l4 + 8),
            port(frame, l4)?
        ),
        6 | 17 => format!(
            "{} {src}:{} -> {dst}:{} (not encapsulated)",
            if proto == 6 { "TCP" } else { "UDP" },
            port(frame, l4)?,
            port(frame, l4 + 2)?
        ),
        other => format!("{outer} protocol {other} {src} -> {dst}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_what_it_can_and_never_panics() {
        let mut frame = vec![0u8; 14 + 20 + 20];
        frame[12] = 0x08;
        frame[14] = 0x45;
        frame[14 + 9] = 4;
        frame[26..30].copy_from_slice(&[172, 16, 0, 1]);
        frame[30..34].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(describe(&frame), "IPIP 4in4 172.16.0.1 -> 10.0.0.2");
        for len in 0..frame.len() {
            let _ = describe(&frame[..len]);
        }
    }
}
