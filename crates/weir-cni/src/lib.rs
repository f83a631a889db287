//! Weir's CNI plugin (`weir cni`, or `weir` run as `weir-cni`): the CNI 1.1
//! commands on a veth per container, addresses from Weir's own file-locked
//! IPAM or a delegated IPAM plugin, links made over rtnetlink.

pub mod bandwidth;
pub mod chained;
pub mod config;
pub mod delegate;
pub mod error;
pub mod handoff;
pub mod ipam;
pub mod link;
pub mod plugin;

pub use error::CniError;
pub use handoff::AgentLink;
pub use plugin::{run, Env};
