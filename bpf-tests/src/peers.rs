//! Real BGP peers in a namespace: FRR, BIRD, GoBGP.

pub mod bird;
pub mod frr;
pub mod gobgp;
