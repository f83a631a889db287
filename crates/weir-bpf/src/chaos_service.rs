//! ServiceChaos's faults, held by the socket load balancer
//! (`chaos_services`, pinned with it): calls from a pod's cgroup (or from
//! every client) to a service's frontend refused with an errno or sent to
//! the black hole, each with its end time; counted in `chaos_counters`.

use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::api::{address_of_words as address, bytes_of, chaos_service_action, read_pod, words_of_address as words};
use crate::chaos::MAX_EXPERIMENTS;
use crate::datapath::PinLayout;
use crate::error::map_error;
use crate::skel::socklb::types::{weir_chaos_service, weir_chaos_service_key};
use crate::socklb_quiet::{QuietFlags, Skippable};
use crate::BpfError;

/// What a hit call suffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    /// The call fails with this errno.
    Refuse(u32),
    /// The call goes to the black hole address; the pod path drops it.
    Blackhole,
}

/// One fault, as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceFault {
    pub action: ServiceAction,
    /// Of 2^32: the share of calls hit; u32::MAX: all.
    pub probability: u32,
    /// CLOCK_MONOTONIC ns; from then on the fault does nothing.
    pub end_ns: u64,
    /// Slot of the experiment's counter.
    pub experiment: u32,
}

/// Which calls: from `cgroup` (0: every client) to a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceFaultKey {
    pub cgroup: u64,
    pub address: IpAddr,
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
}

#[derive(Debug)]
pub struct ServiceFaults {
    map: MapHandle,
    /// Its "nothing armed" flag: cleared before the first entry, set when the last is gone.
    quiet: QuietFlags,
}

fn kernel_key(key: &ServiceFaultKey) -> weir_chaos_service_key {
    weir_chaos_service_key {
        cgroup: key.cgroup,
        addr: words(key.address),
        port: key.port.to_be(),
        proto: key.proto,
        family: if key.address.is_ipv6() { 6 } else { 4 },
        ..Default::default()
    }
}

impl ServiceFaults {
    /// Fails when the socket load balancer has not been established.
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self { map: pins.open_map("chaos_services")?, quiet: QuietFlags::open(pins)? })
    }

    /// The map of a private copy of the socket load balancer (tests).
    pub fn of(skel: &crate::skel::socklb::SocklbSkel<'_>) -> Result<Self, BpfError> {
        Ok(Self {
            map: MapHandle::try_from(&skel.maps.chaos_services).map_err(map_error("chaos_services"))?,
            quiet: QuietFlags::of(skel)?,
        })
    }

    pub fn insert(&self, key: &ServiceFaultKey, fault: &ServiceFault) -> Result<(), BpfError> {
        if fault.experiment >= MAX_EXPERIMENTS {
            return Err(BpfError::Chaos(format!("chaos experiment slot {} is out of range", fault.experiment)));
        }
        let (action, error) = match fault.action {
            ServiceAction::Refuse(errno) => (chaos_service_action::REFUSE, errno),
            ServiceAction::Blackhole => (chaos_service_action::BLACKHOLE, 0),
        };
        let value = weir_chaos_service {
            end_ns: fault.end_ns,
            action,
            error,
            probability: fault.probability,
            experiment: fault.experiment,
        };
        self.quiet.arming(Skippable::ServiceFaults, || {
            self.map
                .update(bytes_of(&kernel_key(key)), bytes_of(&value), MapFlags::ANY)
                .map_err(map_error("chaos_services"))
        })
    }

    /// Every fault's key with its experiment's slot, ended ones included.
    pub fn entries(&self) -> Vec<(ServiceFaultKey, u32)> {
        self.map
            .keys()
            .filter_map(|raw| {
                let key = read_pod::<weir_chaos_service_key>(&raw)?;
                let value = read_pod::<weir_chaos_service>(&self.map.lookup(&raw, MapFlags::ANY).ok()??)?;
                let key = ServiceFaultKey {
                    cgroup: key.cgroup,
                    address: address(key.family, key.addr),
                    port: u16::from_be(key.port),
                    proto: key.proto,
                };
                Some((key, value.experiment))
            })
            .collect()
    }

    /// Removes every fault whose experiment slot `which` picks; returns how many.
    pub fn remove(&self, which: impl Fn(u32) -> bool) -> Result<usize, BpfError> {
        let mut removed = 0;
        for raw in self.map.keys().collect::<Vec<_>>() {
            let Some(value) = self.map.lookup(&raw, MapFlags::ANY).ok().flatten() else { continue };
            let Some(value) = read_pod::<weir_chaos_service>(&value) else { continue };
            if which(value.experiment) {
                self.map.delete(&raw).map_err(map_error("chaos_services"))?;
                removed += 1;
            }
        }
        self.quiet.settle(Skippable::ServiceFaults, &self.map)?;
        Ok(removed)
    }
}
