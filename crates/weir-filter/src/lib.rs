//! The packet filter's rules, with no I/O (libpcap is used as a compiler only).
//!
//! # Layout
//! - [`spec`]: the `FilterPolicy` document and single rules, parsed and
//!   validated: a bad CIDR, contradictory fields or an unknown key is an error
//!   naming the field.
//! - [`compile`]: a rule to what the datapath stores: its shape (which fields
//!   are exact, the prefix lengths), its masked key, and its residual checks.
//! - [`index`]: the shape index, per field, that tells the datapath which
//!   shapes could hold a rule for a packet.
//! - [`pcap`]: tcpdump expressions compiled by libpcap into classic BPF.
//! - [`expr`]: classic BPF into one eBPF XDP program testing every
//!   expression rule in rank order, every packet load bounds-checked.
//! - [`plan`]: from the rules the kernel holds to the rules wanted, as the
//!   few map writes of a generation flip (see `bpf/api/filter.h`).

pub mod compile;
pub mod expr;
pub mod index;
pub mod pcap;
pub mod plan;
pub mod spec;

pub use compile::{compile, CompiledRule, Key, RuleEntry, Shape};
pub use plan::{Applied, Plan};
pub use spec::{FilterPolicy, RuleSpec, SpecError};
