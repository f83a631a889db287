//! The XDP L4 load balancer (`weir lb`), pure: the `XdpLoadBalancer`
//! document ([`spec`], with each VIP's probe in [`health`]), the tables the kernel holds for it — VIPs, reals,
//! one weighted Maglev ring per VIP, with indexes kept stable across
//! changes so every change is a map update ([`plan`]) — and the flow hash
//! the datapath computes, for simulation and fixtures ([`hash`]); one
//! imperative change to the document (`weir lb vip|real`, [`edit`]); the VIPs
//! of Services of `loadBalancerClass: weir.dev/xdp` ([`services`]).
//!
//! The sizes here are bpf/api/xlb.h's; weir-bpf's tests check that they
//! agree with the compiled program's maps.

pub mod edit;
pub mod frame;
pub mod hash;
pub mod health;
pub mod plan;
pub mod services;
pub mod spec;

#[cfg(test)]
mod services_tests;

/// Slots of each VIP's Maglev ring (WEIR_XLB_RING_SIZE).
pub const RING_SIZE: usize = 65537;
/// VIPs one load balancer holds (WEIR_XLB_MAX_VIPS).
pub const MAX_VIPS: usize = 64;
/// Reals one load balancer holds, index 0 being "no real" (WEIR_XLB_MAX_REALS).
pub const MAX_REALS: usize = 4096;
/// GUE's UDP destination port (WEIR_XLB_GUE_PORT).
pub const GUE_PORT: u16 = 6080;
