//! The agents' membership key as MetalLB stores it: a Secret in the installation's namespace.
//! The controller creates it ([`crate::cluster::memberlist`]); the agents read it.

/// The Secret's name.
pub const SECRET: &str = "memberlist";
/// The key of the Secret's data that holds the key material.
pub const KEY: &str = "secretkey";
