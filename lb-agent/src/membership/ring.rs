//! Who heartbeats whom. Up to [`MESH_UP_TO`] members every node heartbeats every other (a
//! full mesh: each hears everyone first-hand). Past it, the members stand on a ring in name
//! order and each node's [`MONITORS`] nearest successors that are alive are its monitors,
//! which alone judge it ([`super::verdicts`]); a node heartbeats only its monitors and the
//! members it monitors. Every node computes the same
//! assignment from the same member list and the same view of who is alive, so a node knows
//! whom to heartbeat and whose heartbeats to expect without asking anyone.
use std::collections::BTreeSet;

/// The largest group that runs a full mesh: up to here one datagram per peer and interval is
/// cheap, and every node judges every other first-hand.
pub const MESH_UP_TO: usize = 16;
/// Monitors per node past [`MESH_UP_TO`]: a failure needs two of them to agree, and one more
/// lets that still happen while one of them is down.
pub const MONITORS: usize = 3;

/// The members in ring order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    nodes: Vec<String>,
}

impl Ring {
    /// The ring of `members` (deduplicated, in name order).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(members: I) -> Self {
        let set: BTreeSet<String> = members.into_iter().map(Into::into).collect();
        Self {
            nodes: set.into_iter().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn contains(&self, node: &str) -> bool {
        self.index(node).is_some()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(String::as_str)
    }

    fn index(&self, node: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.as_str().cmp(node)).ok()
    }

    /// Whether every node heartbeats every other.
    pub fn mesh(&self) -> bool {
        self.nodes.len() <= MESH_UP_TO
    }

    /// The monitors of `node` when `dead` are not alive: every other member in a mesh, else
    /// its [`MONITORS`] nearest successors not in `dead` (fewer when fewer are left).
    pub fn monitors_of<'a>(&'a self, node: &str, dead: &BTreeSet<String>) -> Vec<&'a str> {
        let Some(at) = self.index(node) else {
            return Vec::new();
        };
        let n = self.nodes.len();
        let others = (1..n).map(|step| self.nodes[(at + step) % n].as_str());
        if self.mesh() {
            return others.collect();
        }
        others
            .filter(|m| !dead.contains(*m))
            .take(MONITORS)
            .collect()
    }

    /// The members `me` judges (whose heartbeats it expects): those it is a monitor of.
    pub fn watched_by<'a>(&'a self, me: &str, dead: &BTreeSet<String>) -> Vec<&'a str> {
        if self.mesh() {
            return self.nodes().filter(|n| *n != me).collect();
        }
        // Only the nearest predecessors can have `me` among their first alive successors:
        // walking back, every alive node passed pushes `me` one place further from the rest.
        // Dead ones are still judged (their return must be seen).
        let Some(at) = self.index(me).filter(|_| !dead.contains(me)) else {
            return Vec::new();
        };
        let n = self.nodes.len();
        let mut out = Vec::new();
        for step in 1..n {
            if out.iter().filter(|x| !dead.contains(**x)).count() >= MONITORS {
                break;
            }
            out.push(self.nodes[(at + n - step) % n].as_str());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:04}")).collect()
    }

    #[test]
    fn a_small_group_is_a_full_mesh() {
        let ring = Ring::new(names(5));
        let none = BTreeSet::new();
        assert!(ring.mesh());
        assert_eq!(ring.monitors_of("node-0002", &none).len(), 4);
        assert_eq!(ring.watched_by("node-0002", &none).len(), 4);
    }

    #[test]
    fn past_the_mesh_each_node_has_its_alive_successors_as_monitors() {
        let ring = Ring::new(names(40));
        let none = BTreeSet::new();
        assert!(!ring.mesh());
        assert_eq!(
            ring.monitors_of("node-0038", &none),
            ["node-0039", "node-0000", "node-0001"],
            "the ring wraps"
        );
        let dead: BTreeSet<String> = ["node-0039".to_owned()].into();
        assert_eq!(
            ring.monitors_of("node-0038", &dead),
            ["node-0000", "node-0001", "node-0002"],
            "a dead monitor is replaced by the next alive successor"
        );
    }

    #[test]
    fn who_watches_whom_is_the_same_relation_seen_from_both_ends() {
        let ring = Ring::new(names(40));
        for dead in [
            BTreeSet::new(),
            ["node-0005", "node-0006", "node-0007", "node-0020"]
                .map(String::from)
                .into(),
        ] {
            for me in ring.nodes() {
                let watched: BTreeSet<&str> = ring.watched_by(me, &dead).into_iter().collect();
                let expected: BTreeSet<&str> = ring
                    .nodes()
                    .filter(|x| ring.monitors_of(x, &dead).contains(&me))
                    .collect();
                assert_eq!(watched, expected, "{me} with {dead:?} dead");
            }
        }
    }

    #[test]
    fn heartbeats_per_node_stay_bounded_as_the_group_grows() {
        let none = BTreeSet::new();
        for n in [17, 30, 100, 1000] {
            let ring = Ring::new(names(n));
            let most = ring
                .nodes()
                .map(|x| ring.watched_by(x, &none).len())
                .max()
                .unwrap_or(0);
            assert_eq!(most, MONITORS, "{n} nodes");
        }
    }
}
