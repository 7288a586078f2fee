//! Address management, pure and deterministic: no I/O, no clock, no Kubernetes types.
//!
//! Layout:
//! - [`space`]: the free space of one pool, with first-free lookups that cost the same for a
//!   /8 or a /64 as for a /24.
//!
//! Still to come (see the issue): the allocator over pools (requests, annotations, sharing,
//! dual-stack, serviceAllocation), and `plan`.

pub mod allocator;
pub mod service;
pub mod space;
