//! The harness: namespaces, the lab segment, the real binaries as children, groups of agents.

pub mod agent;
pub mod cluster_agents;
pub mod fleet;
pub mod group;
pub mod lab;
pub mod netns;
pub mod prober;
pub mod scrape;
