//! Weir's own IPAM: addresses of the node's pod CIDR, one file per address
//! in a state dir, every change made under an exclusive file lock so
//! concurrent plugin runs never hand out an address twice.
//!
//! Layout of `<dataDir>/<network name>/`: `lock`; `last_reserved_ip` (the
//! next search starts after it, so a released address is not reused at
//! once; `last_reserved_ip6` likewise for IPv6); and `<address>` files
//! (IPv4 and, for dual-stack, IPv6) holding `containerID` and `ifname`, one per
//! line. The files survive reboots and agent restarts; DEL and GC remove them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::config::Pool6;

use crate::config::Attachment;
use crate::error::{CniError, ADDRESSES_EXHAUSTED, IO_FAILURE, TRY_AGAIN_LATER};

const LAST_RESERVED: &str = "last_reserved_ip";
const LAST_RESERVED6: &str = "last_reserved_ip6";

/// The host addresses of `subnet` a container may get, in search order:
/// after `last` (wrapping), skipping the network, broadcast and gateway.
pub fn candidates(subnet: Ipv4Net, gateway: Ipv4Addr, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    let end = u32::from(subnet.broadcast()); // exclusive
    let count = end - first;
    let start = match last {
        Some(last) if subnet.contains(&last) && (first..end).contains(&u32::from(last)) => u32::from(last) + 1 - first,
        _ => 0,
    };
    (0..count).map(move |i| Ipv4Addr::from(first + (start + i) % count)).filter(move |ip| *ip != gateway)
}

/// The IPv6 addresses of `pool` a container may get, in search order:
/// after `last` (wrapping), skipping the subnet-router anycast address (the
/// first) and the gateway. IPv6 has no broadcast address.
pub fn candidates6(pool: Pool6, last: Option<Ipv6Addr>) -> impl Iterator<Item = Ipv6Addr> {
    let first = u128::from(pool.subnet.network()) + 1;
    // Addresses after the first; a /1 has 2^127 (config refuses /0).
    let count = (1u128 << (128 - u32::from(pool.subnet.prefix_len()))) - 1;
    let start = match last.map(u128::from) {
        Some(last) if last >= first && last - first < count => last + 1 - first,
        _ => 0,
    };
    (0..count).map(move |i| Ipv6Addr::from(first + (start + i) % count)).filter(move |ip| *ip != pool.gateway)
}

/// How many containers `pool` has room for.
pub fn capacity6(pool: Pool6) -> u128 {
    // Every address but the first and the gateway.
    (1u128 << (128 - u32::from(pool.subnet.prefix_len()))) - 2
}

fn io_err(what: impl std::fmt::Display, path: &Path, e: io::Error) -> CniError {
    CniError::new(IO_FAILURE, format!("{what} {}", path.display())).with_details(e)
}

/// One network's allocations, locked for as long as the value lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Takes the network's lock, waiting at most `wait` (then CNI code 11).
    pub fn open(data_dir: &Path, network: &str, wait: Duration) -> Result<Store, CniError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating IPAM directory", &dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("opening IPAM lock", &lock_path, e))?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a descriptor `lock` keeps open.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err("locking", &lock_path, err));
            }
            if Instant::now() >= deadline {
                return Err(CniError::new(TRY_AGAIN_LATER, format!("IPAM lock {} stayed held", lock_path.display())));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Store { dir, _lock: lock })
    }

    /// Every recorded IPv4 allocation.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, Attachment)>, CniError> {
        self.records()
    }

    /// Every recorded IPv6 allocation.
    pub fn allocations6(&self) -> Result<Vec<(Ipv6Addr, Attachment)>, CniError> {
        self.records()
    }

    fn records<A: std::str::FromStr + Ord + Copy>(&self) -> Result<Vec<(A, Attachment)>, CniError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err("reading", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("reading", &self.dir, e))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<A>().ok()) else {
                continue;
            };
            let text = fs::read_to_string(entry.path()).map_err(|e| io_err("reading", &entry.path(), e))?;
            let mut lines = text.lines();
            let attachment = Attachment {
                container_id: lines.next().unwrap_or_default().to_string(),
                ifname: lines.next().unwrap_or_default().to_string(),
            };
            out.push((ip, attachment));
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// The address an attachment holds, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, CniError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, a)| a.container_id == container_id && a.ifname == ifname)
            .map(|(ip, _)| ip))
    }

    /// The IPv6 address an attachment holds, if any.
    pub fn find6(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv6Addr>, CniError> {
        Ok(self
            .allocations6()?
            .into_iter()
            .find(|(_, a)| a.container_id == container_id && a.ifname == ifname)
            .map(|(ip, _)| ip))
    }

    /// The attachment's IPv6 address: the one it already holds, or a free
    /// one of `pool` (`true` when newly allocated).
    pub fn allocate6(&self, pool: Pool6, container_id: &str, ifname: &str) -> Result<(Ipv6Addr, bool), CniError> {
        if let Some(ip) = self.find6(container_id, ifname)? {
            return Ok((ip, false));
        }
        let last_path = self.dir.join(LAST_RESERVED6);
        let last = fs::read_to_string(&last_path).ok().and_then(|s| s.trim().parse().ok());
        // A pool as big as a /64 is never searched through: the search stops at the first free address.
        for ip in candidates6(pool, last) {
            let path = self.dir.join(ip.to_string());
            if path.exists() {
                continue;
            }
            write_atomically(&path, format!("{container_id}\n{ifname}\n").as_bytes())?;
            write_atomically(&last_path, ip.to_string().as_bytes())?;
            return Ok((ip, true));
        }
        Err(CniError::new(ADDRESSES_EXHAUSTED, format!("no free address left in {}", pool.subnet)))
    }

    /// The attachment's address: the one it already holds, or a free one
    /// (`true` when newly allocated).
    pub fn allocate(
        &self,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        container_id: &str,
        ifname: &str,
    ) -> Result<(Ipv4Addr, bool), CniError> {
        if let Some(ip) = self.find(container_id, ifname)? {
            return Ok((ip, false));
        }
        let last_path = self.dir.join(LAST_RESERVED);
        let last = fs::read_to_string(&last_path).ok().and_then(|s| s.trim().parse().ok());
        for ip in candidates(subnet, gateway, last) {
            let path = self.dir.join(ip.to_string());
            if path.exists() {
                continue;
            }
            write_atomically(&path, format!("{container_id}\n{ifname}\n").as_bytes())?;
            write_atomically(&last_path, ip.to_string().as_bytes())?;
            return Ok((ip, true));
        }
        Err(CniError::new(ADDRESSES_EXHAUSTED, format!("no free address left in {subnet}")))
    }

    /// Releases the attachment's addresses (IPv4 and IPv6); its IPv4
    /// address, `None` when it held none.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, CniError> {
        if let Some(ip6) = self.find6(container_id, ifname)? {
            self.release_address(ip6)?;
        }
        let Some(ip) = self.find(container_id, ifname)? else { return Ok(None) };
        self.release_address(ip)?;
        Ok(Some(ip))
    }

    /// Removes one address's record.
    pub fn release_address(&self, ip: impl Into<IpAddr>) -> Result<(), CniError> {
        let path = self.dir.join(ip.into().to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path, e)),
        }
    }
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), CniError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("record");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| io_err("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("renaming into", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_skip_network_broadcast_and_gateway_and_wrap_after_last() {
        let subnet: Ipv4Net = "10.0.0.0/29".parse().expect("valid");
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let all: Vec<_> = candidates(subnet, gw, None).map(|ip| ip.octets()[3]).collect();
        assert_eq!(all, vec![2, 3, 4, 5, 6]);
        let after: Vec<_> = candidates(subnet, gw, Some(Ipv4Addr::new(10, 0, 0, 4))).map(|ip| ip.octets()[3]).collect();
        assert_eq!(after, vec![5, 6, 2, 3, 4]);
        let outside: Vec<_> =
            candidates(subnet, gw, Some(Ipv4Addr::new(10, 9, 0, 4))).map(|ip| ip.octets()[3]).collect();
        assert_eq!(outside, all);
    }

    #[test]
    fn ipv6_candidates_skip_the_anycast_address_and_gateway_and_wrap_after_last() {
        let pool = Pool6 { subnet: "fd00::/125".parse().expect("valid"), gateway: "fd00::1".parse().expect("valid") };
        let last = |ip: Ipv6Addr| ip.segments()[7];
        let all: Vec<_> = candidates6(pool, None).map(last).collect();
        assert_eq!(all, vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(capacity6(pool), 6);
        let after: Vec<_> = candidates6(pool, Some("fd00::4".parse().expect("valid"))).map(last).collect();
        assert_eq!(after, vec![5, 6, 7, 2, 3, 4]);
        let outside: Vec<_> = candidates6(pool, Some("fd01::4".parse().expect("valid"))).map(last).collect();
        assert_eq!(outside, all);
        let wide = Pool6 { subnet: "fd00::/64".parse().expect("valid"), gateway: "fd00::1".parse().expect("valid") };
        let from_last = candidates6(wide, Some("fd00::ffff:ffff:ffff:ffff".parse().expect("valid"))).next();
        assert_eq!(from_last, Some("fd00::2".parse().expect("valid")), "wraps past the end of a /64");
        assert_eq!(capacity6(wide), (1 << 64) - 2);
    }
}
