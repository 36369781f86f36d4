//! Test support (feature `testing`): an in-memory storage that injects faults and simulates
//! power loss, and a simulator that drives the real log over it and checks it against a model.
//!
//! Everything is deterministic given a seed (TigerBeetle's simulator is the model): a failure
//! prints its seed and replays exactly.

mod fuzz;
mod memory;
mod sim;
pub mod targets;

/// The seeded generator the simulator uses ([`crate::rng::SplitMix64`], not behind this feature).
pub use crate::rng::SplitMix64;
pub use fuzz::{apply_repairs, check_recovery, fix_checksums};
pub use memory::{DiskImage, Faults, MemSegment, MemStorage, MemSync, MEM_PAGE_BYTES};
pub use sim::{run_seed, Sim, SimFailure, SimOp, SimReport};
