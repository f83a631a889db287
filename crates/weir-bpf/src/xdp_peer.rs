//! Makes a veth take the frames its peer sends at XDP (`XDP_TX` and
//! `XDP_REDIRECT`): the kernel hands such frames only to a veth that runs
//! NAPI, and an XDP program of its own is the sure way to give it that (a
//! NIC needs nothing: its driver transmits them). The program is
//! `probe.bpf.c`'s `probe_xdp`, which passes every packet; it stays
//! attached, in driver mode, for the life of the interface.

use std::os::fd::AsFd;

use libbpf_rs::{Xdp, XdpFlags};

use crate::BpfError;

/// Attaches the pass-everything XDP program to interface `ifindex` of the
/// calling thread's network namespace, replacing none: an interface that
/// already runs an XDP program is left as it is (that program gives NAPI).
pub fn accept_xdp_frames(ifindex: i32, name: &str) -> Result<(), BpfError> {
    crate::testrun::with_trivial_xdp(|prog| {
        let xdp = Xdp::new(prog.as_fd());
        match xdp.attach(ifindex, XdpFlags::DRV_MODE | XdpFlags::UPDATE_IF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(BpfError::Attach { program: "probe_xdp".into(), target: name.to_string(), source }),
        }
    })?
}
