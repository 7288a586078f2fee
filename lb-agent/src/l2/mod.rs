//! The Layer 2 data path.

pub mod afpacket;
pub mod announce;
pub mod datapath;
pub mod error;
pub mod exclude;
pub mod groups;
pub mod iface;
pub mod links;
pub mod maps;
pub mod requesters;
pub mod responder;
pub mod responders;
pub mod vipdev;

pub use error::L2Error;
