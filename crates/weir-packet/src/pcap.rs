//! The classic pcap file format (what tcpdump -w writes), Ethernet only. Pure.

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;
const LINKTYPE_ETHERNET: u32 = 1;

/// The global header of a capture with `snaplen` and microsecond timestamps.
pub fn file_header(snaplen: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&MAGIC_US.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&snaplen.to_le_bytes());
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    out
}

/// One record: `data` captured of a packet `original_len` long, at `unix_ns`.
pub fn record(unix_ns: u64, data: &[u8], original_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&((unix_ns / 1_000_000_000) as u32).to_le_bytes());
    out.extend_from_slice(&((unix_ns % 1_000_000_000 / 1000) as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&original_len.max(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The packets of a capture, in order.
pub fn read(file: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if file.len() < 24 {
        return Err("not a pcap file: shorter than its header".into());
    }
    let word = |b: &[u8], big: bool| {
        let a: [u8; 4] = [b[0], b[1], b[2], b[3]];
        if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let big = match (
        u32::from_le_bytes([file[0], file[1], file[2], file[3]]),
        u32::from_be_bytes([file[0], file[1], file[2], file[3]]),
    ) {
        (MAGIC_US | MAGIC_NS, _) => false,
        (_, MAGIC_US | MAGIC_NS) => true,
        _ => return Err("not a pcap file (pcapng is not supported; convert with `editcap -F pcap`)".into()),
    };
    if word(&file[20..24], big) != LINKTYPE_ETHERNET {
        return Err("only Ethernet captures are supported".into());
    }
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let caplen = word(&file[at + 8..at + 12], big) as usize;
        let start = at + 16;
        let data =
            file.get(start..start + caplen).ok_or_else(|| format!("record {} is cut short", packets.len() + 1))?;
        packets.push(data.to_vec());
        at = start + caplen;
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_what_it_reads() {
        let mut file = super::file_header(128);
        file.extend(super::record(1_700_000_000_123_456_789, &[1, 2, 3], 60));
        file.extend(super::record(1_700_000_001_000_000_000, &[4; 14], 14));
        assert_eq!(super::read(&file).expect("reads"), vec![vec![1, 2, 3], vec![4; 14]]);
        assert!(super::read(&file[..10]).is_err());
        let mut cut = file.clone();
        cut.truncate(file.len() - 1);
        assert!(super::read(&cut).is_err());
    }
}
