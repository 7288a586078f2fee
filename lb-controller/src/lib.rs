//! The xdplb controller.
//!
//! Layout:
//! - [`config`]: the metallb.io types, reading manifests, MetalLB's validation rules.
//! - [`ipam`]: the pure allocator; [`plan`]: a whole configuration's allocations.
//! - [`allocations`]: `status/allocations.yaml`, the standalone controller's answer to the
//!   agents.
//! - [`standalone`]: a directory of manifests in, `status/allocations.yaml` out.
//! - [`cluster`]: reflectors in, Service status and Events out, behind a leader Lease.
//! - [`webhook`]: the validating admission webhook every replica serves.
//!
//! Shared with the agent (which reads these, never the daemons above):
//! - [`sources`]: the reflectors over the metallb.io kinds, Services, Nodes and Secrets.
//! - [`configstate`]: MetalLB's ConfigurationState objects.
//! - [`metrics`]: MetalLB's metric names, `/metrics`, `/healthz`, `/readyz`.
//! - [`monitoring`]: the alerting rules as a PrometheusRule.

pub mod allocations;
pub mod cluster;
pub mod config;
pub mod configstate;
pub mod ipam;
pub mod metrics;
pub mod metrics_server;
pub mod monitoring;
pub mod plan;
pub mod sources;
pub mod standalone;
pub mod tls;
pub mod webhook;
