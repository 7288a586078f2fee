//! Address management, pure and deterministic: no I/O, no clock.
//!
//! Layout:
//! - [`space`]: the free space of one pool, with first-free lookups that cost the same for a
//!   /8 or a /64 as for a /24.
//! - [`allocator`]: requests over pools (annotations, sharing, dual-stack,
//!   `serviceAllocation`), MetalLB's rules in a numbered preference order.
//! - [`pool_for`]: MetalLB's `poolFor`, the pool holding all of a Service's addresses; what the
//!   agents announce is checked against it.
//! - [`service`]: the adapter from a Kubernetes Service to a [`allocator::Request`] (the one
//!   module here that reads Kubernetes types); [`crate::plan`] runs a whole configuration.

pub mod allocator;
pub mod pool_for;
pub mod service;
pub mod space;
