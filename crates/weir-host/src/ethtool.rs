//! Interface offloads through the kernel's ethtool ioctl (`SIOCETHTOOL`),
//! so the lab needs no `ethtool` program: turning a host's transmit
//! checksum offload off makes it send complete checksums, as a NIC's wire
//! does, where XDP rewrites or encapsulates its packets.

use std::io;

/// `struct ethtool_value` of linux/ethtool.h: a command and its value.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// linux/ethtool.h: set transmit checksumming.
const ETHTOOL_STXCSUM: u32 = 0x17;
/// linux/sockios.h.
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// An offload this module switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// Transmit checksum offload.
    TxChecksum,
}

/// Turns `offload` on or off on `interface`, in the calling thread's
/// network namespace.
pub fn set(interface: &str, offload: Offload, on: bool) -> io::Result<()> {
    let cmd = match offload {
        Offload::TxChecksum => ETHTOOL_STXCSUM,
    };
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{interface:?} is not an interface name")));
    }
    let mut value = EthtoolValue { cmd, data: u32::from(on) };
    // SAFETY: an all-zero ifreq is valid; the name fits (checked above)
    // with its terminating zero, and ifr_data points at `value`, which
    // outlives the call.
    let rc = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
            *slot = *byte as libc::c_char;
        }
        request.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut request);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            Err(err)
        } else {
            Ok(())
        }
    };
    rc.map_err(|e| {
        io::Error::new(e.kind(), format!("{interface}: setting {offload:?} {}: {e}", if on { "on" } else { "off" }))
    })
}
