//! Runtime security's model, pure.
//!
//! - [`spec`]: the `RuntimePolicy` document and its validation.
//! - [`compile`]: policies plus the node's pods become kernel rules, ordered
//!   so a refusal always wins, with the pod selectors resolved to cgroups.
//! - [`cache`]: the process cache: what every live process is, its exec id
//!   and its ancestry, rebuilt from kernel events and seeded from /proc;
//!   bounded, with evictions counted.

pub mod cache;
pub mod compile;
pub mod spec;

pub use cache::{ProcessCache, ProcessInfo, ProgramMarks};
pub use compile::{compile, Backend, KernelPattern, KernelRule, RuleOrigin, Workload};
pub use spec::{Action, Operation, RuntimePolicy};
