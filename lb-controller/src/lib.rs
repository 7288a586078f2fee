//! The xdplb controller.
//!
//! Layout:
//! - [`config`]: the metallb.io types, reading manifests, MetalLB's validation rules.
//! - [`ipam`]: the pure allocator; [`plan`]: a whole configuration's allocations.
//! - [`standalone`]: a directory of manifests in, `status/allocations.yaml` out.
//! - [`cluster`]: reflectors in, Service status and Events out, behind a leader Lease.
//! - [`metrics`]: MetalLB's metric names, `/metrics`, `/healthz`, `/readyz`.

pub mod cluster;
pub mod config;
pub mod ipam;
pub mod metrics;
pub mod plan;
pub mod standalone;
