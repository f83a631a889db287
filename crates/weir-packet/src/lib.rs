//! A pure packet builder for datapath fixtures and crafted test traffic.
//!
//! ```
//! use weir_packet::Packet;
//! let frame = Packet::eth().ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(1234, 53).payload(b"hi").build();
//! assert_eq!(frame.len(), 14 + 20 + 8 + 2);
//! ```
//! Lengths and checksums are computed by `build()`; `truncate` and
//! `with_byte` make malformed packets from well-formed ones.

pub mod l7;
pub mod pcap;

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_IPV6: u16 = 0x86DD;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

#[derive(Debug, Clone)]
enum Layer {
    Vlan(u16),
    Ipv4 { src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, frag_off: u16, options: Vec<u8> },
    Ipv6 { src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8 },
    Ipv6Fragment { offset: u16, more: bool },
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Icmp { kind: u8, code: u8 },
    Raw { ethertype_or_proto: u16 },
}

/// A packet under construction, outermost layer first.
#[derive(Debug, Clone)]
pub struct Packet {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    layers: Vec<Layer>,
    payload: Vec<u8>,
}

impl Packet {
    /// Starts an Ethernet frame with locally administered MACs.
    pub fn eth() -> Self {
        Self { src_mac: [0x02, 0, 0, 0, 0, 1], dst_mac: [0x02, 0, 0, 0, 0, 2], layers: Vec::new(), payload: Vec::new() }
    }
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }
    pub fn vlan(mut self, id: u16) -> Self {
        self.layers.push(Layer::Vlan(id));
        self
    }
    pub fn ipv4(mut self, src: impl Into<Ipv4Addr>, dst: impl Into<Ipv4Addr>) -> Self {
        self.layers.push(Layer::Ipv4 { src: src.into(), dst: dst.into(), ttl: 64, frag_off: 0, options: Vec::new() });
        self
    }
    /// Sets the fragment offset (in 8-byte units) and More Fragments flag of the last IPv4 layer.
    pub fn ipv4_fragment(mut self, offset_units: u16, more: bool) -> Self {
        if let Some(Layer::Ipv4 { frag_off, .. }) =
            self.layers.iter_mut().rev().find(|l| matches!(l, Layer::Ipv4 { .. }))
        {
            *frag_off = (offset_units & 0x1FFF) | if more { 0x2000 } else { 0 };
        }
        self
    }
    /// Appends IPv4 options (padded to 4 bytes) to the last IPv4 layer.
    pub fn ipv4_options(mut self, bytes: &[u8]) -> Self {
        if let Some(Layer::Ipv4 { options, .. }) =
            self.layers.iter_mut().rev().find(|l| matches!(l, Layer::Ipv4 { .. }))
        {
            options.extend_from_slice(bytes);
            while options.len() % 4 != 0 {
                options.push(0);
            }
        }
        self
    }
    pub fn ttl(mut self, value: u8) -> Self {
        for layer in self.layers.iter_mut().rev() {
            match layer {
                Layer::Ipv4 { ttl, .. } => *ttl = value,
                Layer::Ipv6 { hop_limit, .. } => *hop_limit = value,
                _ => continue,
            }
            break;
        }
        self
    }
    pub fn ipv6(mut self, src: impl Into<Ipv6Addr>, dst: impl Into<Ipv6Addr>) -> Self {
        self.layers.push(Layer::Ipv6 { src: src.into(), dst: dst.into(), hop_limit: 64 });
        self
    }
    pub fn ipv6_fragment(mut self, offset_units: u16, more: bool) -> Self {
        self.layers.push(Layer::Ipv6Fragment { offset: offset_units, more });
        self
    }
    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        self.layers.push(Layer::Tcp { sport, dport, flags });
        self
    }
    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.layers.push(Layer::Udp { sport, dport });
        self
    }
    /// ICMP over IPv4 or ICMPv6 over IPv6, chosen by the enclosing layer.
    pub fn icmp(mut self, kind: u8, code: u8) -> Self {
        self.layers.push(Layer::Icmp { kind, code });
        self
    }
    /// Declares an ethertype (directly after Ethernet/VLAN) or an IP protocol
    /// number (after IP) whose header is supplied by `payload`.
    pub fn raw(mut self, ethertype_or_proto: u16) -> Self {
        self.layers.push(Layer::Raw { ethertype_or_proto });
        self
    }
    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload.extend_from_slice(bytes);
        self
    }

    /// Serialises the frame, computing lengths and checksums.
    pub fn build(&self) -> Vec<u8> {
        // Build from the innermost layer outwards so each knows its payload.
        let mut inner = self.payload.clone();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let enclosing_ip = self.layers[..i].iter().rev().find_map(|l| match l {
                Layer::Ipv4 { src, dst, .. } => Some(PseudoHeader::V4(*src, *dst)),
                Layer::Ipv6 { src, dst, .. } => Some(PseudoHeader::V6(*src, *dst)),
                _ => None,
            });
            let next = self.layers.get(i + 1);
            inner = match layer {
                Layer::Vlan(id) => {
                    let mut out = (id & 0x0FFF).to_be_bytes().to_vec();
                    out.extend_from_slice(&ethertype_of(next).to_be_bytes());
                    out.extend(inner);
                    out
                }
                Layer::Ipv4 { src, dst, ttl, frag_off, options } => {
                    let hlen = 20 + options.len();
                    let mut out = vec![0u8; hlen];
                    out[0] = 0x40 | (hlen / 4) as u8;
                    out[2..4].copy_from_slice(&((hlen + inner.len()) as u16).to_be_bytes());
                    out[6..8].copy_from_slice(&frag_off.to_be_bytes());
                    out[8] = *ttl;
                    out[9] = proto_of(next, false);
                    out[12..16].copy_from_slice(&src.octets());
                    out[16..20].copy_from_slice(&dst.octets());
                    out[20..].copy_from_slice(options);
                    let sum = checksum(&out, 0);
                    out[10..12].copy_from_slice(&sum.to_be_bytes());
                    out.extend(inner);
                    out
                }
                Layer::Ipv6 { src, dst, hop_limit } => {
                    let mut out = vec![0u8; 40];
                    out[0] = 0x60;
                    out[4..6].copy_from_slice(&(inner.len() as u16).to_be_bytes());
                    out[6] = proto_of(next, true);
                    out[7] = *hop_limit;
                    out[8..24].copy_from_slice(&src.octets());
                    out[24..40].copy_from_slice(&dst.octets());
                    out.extend(inner);
                    out
                }
                Layer::Ipv6Fragment { offset, more } => {
                    let mut out = vec![proto_of(next, true), 0];
                    out.extend_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
                    out.extend_from_slice(&[0, 0, 0, 1]);
                    out.extend(inner);
                    out
                }
                Layer::Tcp { sport, dport, flags } => {
                    let mut out = vec![0u8; 20];
                    out[0..2].copy_from_slice(&sport.to_be_bytes());
                    out[2..4].copy_from_slice(&dport.to_be_bytes());
                    out[4..8].copy_from_slice(&1u32.to_be_bytes());
                    out[12] = 5 << 4;
                    out[13] = *flags;
                    out[14..16].copy_from_slice(&65535u16.to_be_bytes());
                    out.extend(inner);
                    finish_l4(out, enclosing_ip.as_ref(), 6, 16)
                }
                Layer::Udp { sport, dport } => {
                    let mut out = vec![0u8; 8];
                    out[0..2].copy_from_slice(&sport.to_be_bytes());
                    out[2..4].copy_from_slice(&dport.to_be_bytes());
                    out[4..6].copy_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
                    out.extend(inner);
                    finish_l4(out, enclosing_ip.as_ref(), 17, 6)
                }
                Layer::Icmp { kind, code } => {
                    let mut out = vec![*kind, *code, 0, 0, 0, 0, 0, 0];
                    out.extend(inner);
                    match enclosing_ip {
                        Some(PseudoHeader::V6(..)) => finish_l4(out, enclosing_ip.as_ref(), 58, 2),
                        _ => finish_l4(out, None, 1, 2),
                    }
                }
                Layer::Raw { .. } => inner,
            };
        }
        let mut frame = Vec::with_capacity(14 + inner.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&ethertype_of(self.layers.first()).to_be_bytes());
        frame.extend(inner);
        frame
    }
}

#[derive(Debug, Clone)]
enum PseudoHeader {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

fn ethertype_of(layer: Option<&Layer>) -> u16 {
    match layer {
        Some(Layer::Vlan(_)) => ETH_P_8021Q,
        Some(Layer::Ipv4 { .. }) => ETH_P_IP,
        Some(Layer::Ipv6 { .. }) => ETH_P_IPV6,
        Some(Layer::Raw { ethertype_or_proto }) => *ethertype_or_proto,
        _ => 0x88B5, // IEEE local experimental: "nothing declared"
    }
}

fn proto_of(layer: Option<&Layer>, v6: bool) -> u8 {
    match layer {
        Some(Layer::Tcp { .. }) => 6,
        Some(Layer::Udp { .. }) => 17,
        Some(Layer::Icmp { .. }) => {
            if v6 {
                58
            } else {
                1
            }
        }
        Some(Layer::Ipv6Fragment { .. }) => 44,
        // IP in IP: IPIP (4) and IPv6 encapsulation (41).
        Some(Layer::Ipv4 { .. }) => 4,
        Some(Layer::Ipv6 { .. }) => 41,
        Some(Layer::Raw { ethertype_or_proto }) => *ethertype_or_proto as u8,
        _ => 59, // IPv6 "no next header"; also unassigned-harmless for IPv4
    }
}

/// Fills in a transport checksum at `offset`, over a pseudo-header when given.
fn finish_l4(mut segment: Vec<u8>, pseudo: Option<&PseudoHeader>, proto: u8, offset: usize) -> Vec<u8> {
    let len = segment.len() as u32;
    let initial = match pseudo {
        Some(PseudoHeader::V4(src, dst)) => {
            let mut p = Vec::with_capacity(12);
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            sum_words(&p)
        }
        Some(PseudoHeader::V6(src, dst)) => {
            let mut p = Vec::with_capacity(40);
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
            sum_words(&p)
        }
        None => 0,
    };
    let mut sum = checksum(&segment, initial);
    if sum == 0 && proto == 17 {
        sum = 0xFFFF; // a UDP checksum of zero means "none"
    }
    segment[offset..offset + 2].copy_from_slice(&sum.to_be_bytes());
    segment
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// The Internet checksum (RFC 1071) of `bytes`, starting from a partial sum.
pub fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial) + u64::from(sum_words(bytes));
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// Malformations applied to a built frame.
pub trait Mangle {
    /// Cuts the frame to `len` bytes.
    fn truncate_to(self, len: usize) -> Vec<u8>;
    /// Overwrites one byte.
    fn with_byte(self, offset: usize, value: u8) -> Vec<u8>;
}

impl Mangle for Vec<u8> {
    fn truncate_to(mut self, len: usize) -> Vec<u8> {
        self.truncate(len);
        self
    }
    fn with_byte(mut self, offset: usize, value: u8) -> Vec<u8> {
        if let Some(b) = self.get_mut(offset) {
            *b = value;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        let frame = Packet::eth().ipv4([10, 0, 0, 1], [10, 0, 0, 2]).tcp(1, 2, TCP_SYN).build();
        assert_eq!(checksum(&frame[14..34], 0), 0);
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 40);
    }

    #[test]
    fn udp_checksum_verifies_over_the_pseudo_header() {
        let frame = Packet::eth().ipv4([192, 0, 2, 1], [192, 0, 2, 2]).udp(1000, 53).payload(b"abc").build();
        let udp = &frame[34..];
        let mut pseudo = vec![192, 0, 2, 1, 192, 0, 2, 2, 0, 17];
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        assert_eq!(checksum(udp, sum_words(&pseudo)), 0);
    }

    #[test]
    fn vlan_and_ipv6_fragment_chain_their_next_headers() {
        let frame = Packet::eth()
            .vlan(7)
            .ipv6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST)
            .ipv6_fragment(0, true)
            .udp(1, 2)
            .build();
        assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), ETH_P_8021Q);
        assert_eq!(u16::from_be_bytes([frame[14], frame[15]]), 7);
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), ETH_P_IPV6);
        assert_eq!(frame[18 + 6], 44, "IPv6 next header is the fragment header");
        assert_eq!(frame[18 + 40], 17, "fragment header's next header is UDP");
        assert_eq!(frame.len(), 18 + 40 + 8 + 8);
    }

    #[test]
    fn ipv4_options_extend_the_header_length() {
        let frame = Packet::eth().ipv4([1, 1, 1, 1], [2, 2, 2, 2]).ipv4_options(&[1, 1, 1]).udp(1, 2).build();
        assert_eq!(frame[14] & 0x0F, 6);
    }
}
