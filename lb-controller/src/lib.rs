//! The xdplb controller.
//!
//! Layout:
//! - [`config`]: the metallb.io types, reading manifests, MetalLB's validation rules.
//!
//! Still to come (see the issues): IPAM, `plan`, the standalone and Kubernetes sources, status.

pub mod config;
pub mod ipam;
pub mod metrics;
pub mod plan;
pub mod standalone;
