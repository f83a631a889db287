//! DNS messages and HTTP/1.x heads read from the start of a payload, pure:
//! what the pod path copies for L7 flows (at most 512 bytes). A message
//! that cannot be read is an error naming why; nothing here panics on input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A name's labels and pointers followed at most: a message cannot make
/// the reader loop.
const MAX_NAME_STEPS: usize = 128;
/// DNS names have at most 255 bytes on the wire.
const MAX_NAME_BYTES: usize = 255;

/// Why a message was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unparsed {
    Truncated(&'static str),
    NameTooLong,
    BadPointer,
    BadLabel(u8),
    Questions(u16),
    NotHttp(&'static str),
}

/// A DNS message's parts Hubble reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub id: u16,
    pub response: bool,
    pub rcode: u8,
    /// Dotted, with the trailing dot (Hubble's "example.com.").
    pub query: String,
    pub qtype: u16,
    /// A and AAAA answers, in order.
    pub ips: Vec<IpAddr>,
    /// The lowest TTL of the address answers read.
    pub ttl: u32,
    pub cnames: Vec<String>,
    /// Every answer record's type, in order.
    pub rrtypes: Vec<u16>,
    /// Answers the header counts but the copy did not hold whole.
    pub answers_cut: u16,
}

impl std::fmt::Display for Unparsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated(what) => write!(f, "the message ends inside {what}"),
            Self::NameTooLong => f.write_str("a name is longer than 255 bytes"),
            Self::BadPointer => f.write_str("a name's compression pointer loops or points forward"),
            Self::BadLabel(b) => write!(f, "a label length byte {b:#04x} is neither a label nor a pointer"),
            Self::Questions(n) => write!(f, "not one question (qdcount {n})"),
            Self::NotHttp(what) => write!(f, "not an HTTP/1.x {what} line"),
        }
    }
}

impl std::error::Error for Unparsed {}

fn be16(data: &[u8], at: usize, what: &'static str) -> Result<u16, Unparsed> {
    data.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(Unparsed::Truncated(what))
}

/// The name at `at`, following compression pointers backwards only; the
/// name and the offset just past it where it sits.
fn name(data: &[u8], mut at: usize) -> Result<(String, usize), Unparsed> {
    let mut out = String::new();
    let mut wire = 0usize;
    let mut end = None;
    for _ in 0..MAX_NAME_STEPS {
        let len = *data.get(at).ok_or(Unparsed::Truncated("a name"))?;
        match len {
            0 => {
                if out.is_empty() {
                    out.push('.');
                }
                return Ok((out, end.unwrap_or(at + 1)));
            }
            1..=63 => {
                let label = data.get(at + 1..at + 1 + usize::from(len)).ok_or(Unparsed::Truncated("a label"))?;
                wire += usize::from(len) + 1;
                if wire > MAX_NAME_BYTES {
                    return Err(Unparsed::NameTooLong);
                }
                for &c in label {
                    match c {
                        b'.' => out.push_str("\\."),
                        0x21..=0x7e => out.push(char::from(c.to_ascii_lowercase())),
                        _ => out.push_str(&format!("\\{c:03}")),
                    }
                }
                out.push('.');
                at += 1 + usize::from(len);
            }
            0xc0..=0xff => {
                let target = usize::from(be16(data, at, "a pointer")? & 0x3fff);
                if target >= at {
                    return Err(Unparsed::BadPointer);
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            other => return Err(Unparsed::BadLabel(other)),
        }
    }
    Err(Unparsed::BadPointer)
}

/// A DNS message: header, its one question, and the answer section as far
/// as the copy holds whole records.
pub fn parse_dns(data: &[u8]) -> Result<Dns, Unparsed> {
    if data.len() < 12 {
        return Err(Unparsed::Truncated("the header"));
    }
    let id = be16(data, 0, "the header")?;
    let flags = be16(data, 2, "the header")?;
    let qdcount = be16(data, 4, "the header")?;
    let ancount = be16(data, 6, "the header")?;
    if qdcount != 1 {
        return Err(Unparsed::Questions(qdcount));
    }
    let (query, after) = name(data, 12)?;
    let qtype = be16(data, after, "the question")?;
    be16(data, after + 2, "the question")?;
    let mut dns =
        Dns { id, response: flags & 0x8000 != 0, rcode: (flags & 0xf) as u8, query, qtype, ..Default::default() };
    let mut at = after + 4;
    let mut ttl = None::<u32>;
    for read in 0..ancount {
        let record = (|| -> Result<(u16, u32, &[u8], usize, usize), Unparsed> {
            let (_, after) = name(data, at)?;
            let rtype = be16(data, after, "a record")?;
            let ttl = data
                .get(after + 4..after + 8)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(Unparsed::Truncated("a record"))?;
            let rdlen = usize::from(be16(data, after + 8, "a record")?);
            let rdata = data.get(after + 10..after + 10 + rdlen).ok_or(Unparsed::Truncated("a record"))?;
            Ok((rtype, ttl, rdata, after + 10, after + 10 + rdlen))
        })();
        let Ok((rtype, record_ttl, rdata, rdata_at, next)) = record else {
            // A cut copy (an answer past the bytes copied) ends the section.
            dns.answers_cut = ancount - read;
            break;
        };
        dns.rrtypes.push(rtype);
        match (rtype, rdata.len()) {
            (1, 4) => dns.ips.push(IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))),
            (28, 16) => {
                let octets: [u8; 16] = rdata.try_into().unwrap_or([0; 16]);
                dns.ips.push(IpAddr::V6(Ipv6Addr::from(octets)));
            }
            (5, _) => {
                if let Ok((cname, _)) = name(data, rdata_at) {
                    dns.cnames.push(cname);
                }
            }
            _ => {}
        }
        if matches!(rtype, 1 | 28) {
            ttl = Some(ttl.map_or(record_ttl, |t| t.min(record_ttl)));
        }
        at = next;
    }
    dns.ttl = ttl.unwrap_or(0);
    Ok(dns)
}

/// Hubble's names of record types (the ones it prints; others as numbers).
pub fn rr_type_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        41 => "OPT".into(),
        65 => "HTTPS".into(),
        255 => "ANY".into(),
        other => other.to_string(),
    }
}

/// An HTTP/1.x head's first line and Host header, as far as the copy
/// holds, borrowed from the copy (read on every message: no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Http<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub path: &'a str,
    pub host: &'a str,
    pub protocol: &'a str,
    pub code: u32,
}

fn first_line<'a>(data: &'a [u8], what: &'static str) -> Result<&'a str, Unparsed> {
    let end = data.windows(2).position(|w| w == b"\r\n").ok_or(Unparsed::Truncated(what))?;
    std::str::from_utf8(&data[..end]).map_err(|_| Unparsed::NotHttp(what))
}

/// A request: `METHOD target HTTP/1.x`, and the Host header when the copy
/// holds it.
pub fn parse_http_request(data: &[u8]) -> Result<Http<'_>, Unparsed> {
    let line = first_line(data, "request")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(protocol), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Unparsed::NotHttp("request"));
    };
    if method.is_empty() || !method.bytes().all(|c| c.is_ascii_uppercase()) || !protocol.starts_with("HTTP/1.") {
        return Err(Unparsed::NotHttp("request"));
    }
    let host = data
        .split(|&c| c == b'\n')
        .skip(1)
        .filter_map(|l| std::str::from_utf8(l).ok())
        .map(|l| l.trim_end_matches('\r'))
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("host")).map(|(_, v)| v.trim()))
        .unwrap_or_default();
    Ok(Http { method, path, host, protocol, code: 0 })
}

/// A response: `HTTP/1.x code reason`.
pub fn parse_http_response(data: &[u8]) -> Result<Http<'_>, Unparsed> {
    let line = first_line(data, "status")?;
    let mut parts = line.splitn(3, ' ');
    let (Some(protocol), Some(code)) = (parts.next(), parts.next()) else {
        return Err(Unparsed::NotHttp("status"));
    };
    let code: u32 = code.parse().ok().filter(|c| (100..1000).contains(c)).ok_or(Unparsed::NotHttp("status"))?;
    if !protocol.starts_with("HTTP/1.") {
        return Err(Unparsed::NotHttp("status"));
    }
    Ok(Http { protocol, code, ..Default::default() })
}

/// Hubble's URL of a request: `SCHEME://host/path` (the host is the Host
/// header's, else the server's address; "https" for TLS connections).
pub fn url_with(scheme: &str, host: &str, path: &str) -> String {
    if path.starts_with('/') {
        // Sized once: this runs for every request read.
        let mut url = String::with_capacity(scheme.len() + 3 + host.len() + path.len());
        for part in [scheme, "://", host, path] {
            url.push_str(part);
        }
        url
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    fn answer(rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut a = vec![0xc0, 12];
        a.extend_from_slice(&rtype.to_be_bytes());
        a.extend_from_slice(&[0, 1]);
        a.extend_from_slice(&ttl.to_be_bytes());
        a.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        a.extend_from_slice(rdata);
        a
    }

    fn response(rcode: u8, answers: &[Vec<u8>]) -> Vec<u8> {
        let mut m = vec![0xab, 0xcd, 0x81, 0x80 | rcode, 0, 1, 0, answers.len() as u8, 0, 0, 0, 0];
        m.extend(question("Web.Example.com", 1));
        for a in answers {
            m.extend_from_slice(a);
        }
        m
    }

    #[test]
    fn a_query_and_its_answers_with_compressed_names_read_whole() {
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend(question("example.com", 28));
        let q = parse_dns(&query).expect("reads");
        assert_eq!((q.id, q.response, q.query.as_str(), q.qtype), (0x1234, false, "example.com.", 28));

        // A CNAME whose target points back into the question, then two A.
        let cname = answer(5, 60, &[3, b'w', b'w', b'w', 0xc0, 16]);
        let m = response(0, &[cname, answer(1, 30, &[10, 0, 0, 1]), answer(1, 20, &[10, 0, 0, 2])]);
        let d = parse_dns(&m).expect("reads");
        assert!(d.response);
        assert_eq!(d.query, "web.example.com.");
        assert_eq!(d.cnames, vec!["www.example.com.".to_string()]);
        assert_eq!(d.ips, vec!["10.0.0.1".parse::<IpAddr>().expect("reads"), "10.0.0.2".parse().expect("reads")]);
        assert_eq!((d.ttl, d.rrtypes.clone(), d.answers_cut), (20, vec![5, 1, 1], 0));
        let aaaa = answer(28, 5, &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            parse_dns(&response(0, &[aaaa])).expect("reads").ips,
            vec!["2001:db8::1".parse::<IpAddr>().expect("reads")]
        );
        assert_eq!(parse_dns(&response(3, &[])).expect("reads").rcode, 3);
    }

    #[test]
    fn malformed_messages_are_refused_by_cause_and_cut_answers_counted() {
        let m = response(0, &[answer(1, 30, &[10, 0, 0, 1]), answer(1, 30, &[10, 0, 0, 2])]);
        // Cut inside the second answer: the first is read, one is counted cut.
        let d = parse_dns(&m[..m.len() - 2]).expect("reads");
        assert_eq!((d.ips.len(), d.answers_cut), (1, 1));
        assert_eq!(parse_dns(&m[..10]), Err(Unparsed::Truncated("the header")));
        assert_eq!(parse_dns(&m[..20]), Err(Unparsed::Truncated("a label")));
        // A pointer to itself in the question.
        let mut looped = m[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_dns(&looped), Err(Unparsed::BadPointer));
        // A label of 64 and more is neither a label nor a pointer.
        let mut huge = m[..12].to_vec();
        huge.push(0x50);
        huge.extend_from_slice(&[b'a'; 80]);
        assert_eq!(parse_dns(&huge), Err(Unparsed::BadLabel(0x50)));
        // Five labels of 63: past 255 bytes.
        let mut long = m[..12].to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse_dns(&long), Err(Unparsed::NameTooLong));
        let mut two = m.clone();
        two[5] = 2;
        assert_eq!(parse_dns(&two), Err(Unparsed::Questions(2)));
    }

    #[test]
    fn http_request_and_status_lines() {
        let r = parse_http_request(b"GET /index.html?x=1 HTTP/1.1\r\nUser-Agent: w\r\nhost: web:8080\r\n\r\n")
            .expect("reads");
        assert_eq!((r.method, r.path, r.host), ("GET", "/index.html?x=1", "web:8080"));
        assert_eq!(url_with("http", r.host, r.path), "http://web:8080/index.html?x=1");
        assert_eq!(parse_http_response(b"HTTP/1.0 404 Not Found\r\n").expect("reads").code, 404);
        assert_eq!(parse_http_request(b"GET /a HTTP/1.1"), Err(Unparsed::Truncated("request")));
        assert_eq!(parse_http_request(b"GET /a b HTTP/1.1\r\n"), Err(Unparsed::NotHttp("request")));
        assert_eq!(parse_http_request(b"PRI * HTTP/2.0\r\n"), Err(Unparsed::NotHttp("request")));
        assert_eq!(parse_http_response(b"HTTP/1.1 2000 OK\r\n"), Err(Unparsed::NotHttp("status")));
    }
}
