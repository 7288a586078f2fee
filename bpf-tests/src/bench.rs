//! The sections of `cargo xtask bench` (`xdplb-bench SECTION`), each measuring its figures
//! and printing its rows beside their comparison.

pub mod agent;
pub mod bgp;
pub mod controller;
pub mod failover;
pub mod group_size;
pub mod ipam;
pub mod membership;
pub mod spread;
pub mod xdp;
