//! Weir's own IPAM: addresses of the node's pod CIDR, one file per address
//! in a state dir, every change made under an exclusive file lock so
//! concurrent plugin runs never hand out an address twice.
//!
//! Layout of `<dataDir>/<network name>/`: `lock`; `last_reserved_ip` (the
//! next search starts after it, so a released address is not reused at
//! once); and `<address>` files holding `containerID` and `ifname`, one per
//! line. The files survive reboots and agent restarts; DEL and GC remove them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::config::Attachment;
use crate::error::{CniError, ADDRESSES_EXHAUSTED, IO_FAILURE, TRY_AGAIN_LATER};

const LAST_RESERVED: &str = "last_reserved_ip";

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

    /// Every recorded allocation.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, Attachment)>, CniError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err("reading", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("reading", &self.dir, e))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
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

    /// Releases the attachment's address; `None` when it held none.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, CniError> {
        let Some(ip) = self.find(container_id, ifname)? else { return Ok(None) };
        self.release_address(ip)?;
        Ok(Some(ip))
    }

    /// Removes one address's record.
    pub fn release_address(&self, ip: Ipv4Addr) -> Result<(), CniError> {
        let path = self.dir.join(ip.to_string());
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
}
