//! The socket load balancer's "nothing armed" flags (`lb_quiet`, see
//! `weir_lb_quiet` in bpf/api/service.h): a set flag says a map the
//! connect and sendmsg programs would look up on every translated call
//! (`lb_opt_out`, `chaos_services`, `chaos_connects`) is empty, so they
//! skip it.
//!
//! The flag must never be set while its map holds an entry. Every writer of
//! those maps goes through here: an insert clears the flag first and writes
//! its entry while holding [`LOCK`]; after a removal the flag is set again
//! only if the map is found empty under the same lock, so no insert can
//! slip between the check and the flag. A crash between the steps leaves a
//! flag clear over an empty map (the lookups are done, nothing is missed),
//! and [`derive`] on the next start settles every flag from the maps' own
//! contents. The lock is per process: the agent is the only writer.

use std::sync::{Mutex, MutexGuard};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::api::{bytes_of, lb_quiet, read_pod};
use crate::datapath::PinLayout;
use crate::error::map_error;
use crate::skel::socklb::types::weir_lb_quiet;
use crate::BpfError;

const MAP: &str = "lb_quiet";

/// A map the socket load balancer may skip while it is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skippable {
    /// `lb_opt_out`: cgroups of pods not translated.
    OptOut,
    /// `chaos_services`: ServiceChaos's faults.
    ServiceFaults,
    /// `chaos_connects`: SocketChaos's connect faults.
    ConnectFaults,
}

impl Skippable {
    pub const ALL: [Skippable; 3] = [Skippable::OptOut, Skippable::ServiceFaults, Skippable::ConnectFaults];

    fn flag(self) -> u32 {
        match self {
            Skippable::OptOut => lb_quiet::OPT_OUT,
            Skippable::ServiceFaults => lb_quiet::SERVICE_FAULTS,
            Skippable::ConnectFaults => lb_quiet::CONNECT_FAULTS,
        }
    }

    /// The pinned map the flag covers.
    pub fn map_name(self) -> &'static str {
        match self {
            Skippable::OptOut => "lb_opt_out",
            Skippable::ServiceFaults => "chaos_services",
            Skippable::ConnectFaults => "chaos_connects",
        }
    }
}

/// Held while a flag changes and while an entry is written to a map a flag
/// covers: a flag's read-modify-write and a map's emptiness check never
/// interleave with an insert.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    // The state it guards lives in the kernel; a panic elsewhere leaves it whole.
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `lb_quiet` map of one socket load balancer.
#[derive(Debug)]
pub struct QuietFlags {
    map: MapHandle,
}

impl QuietFlags {
    /// Fails when the socket load balancer has not been established.
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self { map: pins.open_map(MAP)? })
    }

    /// The map of a private copy of the socket load balancer (tests).
    pub fn of(skel: &crate::skel::socklb::SocklbSkel<'_>) -> Result<Self, BpfError> {
        Ok(Self { map: MapHandle::try_from(&skel.maps.lb_quiet).map_err(map_error(MAP))? })
    }

    fn flags(&self) -> Result<u32, BpfError> {
        let value = self.map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).map_err(map_error(MAP))?;
        Ok(value.and_then(|v| read_pod::<weir_lb_quiet>(&v)).map_or(0, |v| v.flags))
    }

    fn write(&self, flags: u32) -> Result<(), BpfError> {
        let value = weir_lb_quiet { flags };
        self.map.update(&0u32.to_ne_bytes(), bytes_of(&value), MapFlags::ANY).map_err(map_error(MAP))
    }

    /// True when the programs skip `which` (the agent found its map empty).
    pub fn is_quiet(&self, which: Skippable) -> Result<bool, BpfError> {
        Ok(self.flags()? & which.flag() != 0)
    }

    /// Runs `insert`, which writes entries to the map of `which`, after its
    /// flag is cleared, under the lock.
    pub(crate) fn arming<T>(
        &self,
        which: Skippable,
        insert: impl FnOnce() -> Result<T, BpfError>,
    ) -> Result<T, BpfError> {
        let _held = lock();
        let flags = self.flags()?;
        if flags & which.flag() != 0 {
            self.write(flags & !which.flag())?;
        }
        insert()
    }

    /// After a removal: sets `which`'s flag if `map` (its map) is empty.
    /// True when it is.
    pub(crate) fn settle(&self, which: Skippable, map: &MapHandle) -> Result<bool, BpfError> {
        let _held = lock();
        let empty = map.keys().next().is_none();
        if empty {
            let flags = self.flags()?;
            if flags & which.flag() == 0 {
                self.write(flags | which.flag())?;
            }
        }
        Ok(empty)
    }
}

/// Sets every flag from its map's contents: set over an empty map, clear
/// over one with an entry. Run when the socket load balancer is
/// established, so a restarted agent skips what is empty and a flag left
/// set over an entry (never by this agent) does not hide it.
pub(crate) fn derive(pins: &PinLayout) -> Result<(), BpfError> {
    let quiet = QuietFlags::open(pins)?;
    let _held = lock();
    let mut flags = 0;
    for which in Skippable::ALL {
        if pins.open_map(which.map_name())?.keys().next().is_none() {
            flags |= which.flag();
        }
    }
    quiet.write(flags)
}
