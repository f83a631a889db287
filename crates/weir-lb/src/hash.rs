//! The flow hash of bpf/lib/xlb_hash.h, bit for bit: which ring slot a
//! packet takes, and the per-client part of the outer source address.
//!
//! The kernel reads addresses and ports in network order as native words,
//! so this does too (`from_ne_bytes` of the wire bytes).

use std::net::IpAddr;

use crate::RING_SIZE;

/// What the hash sees of a client's packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTuple {
    pub client: IpAddr,
    pub client_port: u16,
    pub vip_port: u16,
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    pub proto: u8,
}

/// Which parts of the tuple a VIP hashes (its flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashInput {
    /// The client's address and port (Katran's default).
    #[default]
    ClientAddressAndPort,
    /// The client's address only: one client, one real.
    ClientAddress,
    /// The VIP's port only: every client of a port, one real.
    DestinationPort,
}

/// murmur3's 64-bit finaliser, as `weir_mix64` in bpf/lib/mix.h.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The client's address folded to one word, as the kernel folds it.
fn folded_address(address: IpAddr) -> u32 {
    match address {
        IpAddr::V4(a) => u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => {
            let o = a.octets();
            o.chunks(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).fold(0, |acc, w| acc ^ w)
        }
    }
}

fn wire_port(port: u16) -> u64 {
    u64::from(u16::from_ne_bytes(port.to_be_bytes()))
}

/// The flow's hash under `input` (xlb_flow_hash).
pub fn flow_hash(tuple: &FlowTuple, input: HashInput) -> u32 {
    let (address, port) = match input {
        HashInput::ClientAddressAndPort => (folded_address(tuple.client), wire_port(tuple.client_port)),
        HashInput::ClientAddress => (folded_address(tuple.client), 0),
        HashInput::DestinationPort => (0, wire_port(tuple.vip_port)),
    };
    mix64((u64::from(address) << 32) | (port << 8) | u64::from(tuple.proto)) as u32
}

/// The ring slot the flow takes.
pub fn ring_slot(tuple: &FlowTuple, input: HashInput) -> usize {
    flow_hash(tuple, input) as usize % RING_SIZE
}

/// The per-client word of the outer source address (always the full
/// tuple, whatever the VIP hashes, so a real's receive queues spread).
pub fn rss_word(tuple: &FlowTuple) -> u32 {
    flow_hash(tuple, HashInput::ClientAddressAndPort)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(client: [u8; 4], port: u16) -> FlowTuple {
        FlowTuple { client: IpAddr::from(client), client_port: port, vip_port: 80, proto: 6 }
    }

    #[test]
    fn hash_inputs_ignore_what_they_say() {
        let a = tuple([192, 0, 2, 1], 40000);
        let b = tuple([192, 0, 2, 1], 40001);
        let c = tuple([192, 0, 2, 2], 40000);
        assert_ne!(flow_hash(&a, HashInput::ClientAddressAndPort), flow_hash(&b, HashInput::ClientAddressAndPort));
        assert_eq!(flow_hash(&a, HashInput::ClientAddress), flow_hash(&b, HashInput::ClientAddress));
        assert_ne!(flow_hash(&a, HashInput::ClientAddress), flow_hash(&c, HashInput::ClientAddress));
        assert_eq!(flow_hash(&a, HashInput::DestinationPort), flow_hash(&c, HashInput::DestinationPort));
        let other_port = FlowTuple { vip_port: 443, ..a };
        assert_ne!(flow_hash(&a, HashInput::DestinationPort), flow_hash(&other_port, HashInput::DestinationPort));
    }
}
