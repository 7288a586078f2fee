//! Active-active Layer 2: which node answers which requesters of a VIP. Pure, and the same on
//! every node: each agent computes the whole table from the VIP's candidates, keeps its own
//! slots in the XDP program's map, and knows which slots it gains when the candidates change.
//!
//! Each of the [`SLOTS`] slots goes to the candidate with the highest weight
//! `fmix64(sha256(node) ^ fmix64(slot))` (rendezvous hashing). A node leaving moves exactly
//! its own slots, each to the node that was second for it; a node joining takes only the slots
//! it now wins. Maglev's table would be a little more even but moves some slots between the
//! nodes that stay, and a client whose slot moves between two live nodes changes MAC for
//! nothing. With 4096 slots each node's share is within a few percent of 1/n.
use std::collections::BTreeMap;

use lb_common::{SLOTS, SlotBits, fmix64};
use sha2::{Digest, Sha256};

/// The owner of every slot of a VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotTable {
    /// The candidates, sorted and deduplicated.
    nodes: Vec<String>,
    /// Index into `nodes` per slot.
    owners: Vec<u16>,
}

fn node_seed(node: &str) -> u64 {
    let digest = Sha256::digest(node.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

impl SlotTable {
    /// The table over `candidates` (order and repeats do not matter). At most 65,535 nodes
    /// take part; more are ignored (the table still covers every slot).
    pub fn new<S: AsRef<str>>(candidates: &[S]) -> Self {
        let mut nodes: Vec<String> = candidates.iter().map(|c| c.as_ref().to_owned()).collect();
        nodes.sort();
        nodes.dedup();
        nodes.truncate(usize::from(u16::MAX));
        let seeds: Vec<u64> = nodes.iter().map(|n| node_seed(n)).collect();
        let owners = if nodes.is_empty() {
            Vec::new()
        } else {
            (0..u64::from(SLOTS))
                .map(|slot| {
                    let mixed = fmix64(slot.wrapping_add(0x9e37_79b9_7f4a_7c15));
                    // Ties (equal weights) go to the first name: every agent breaks them alike.
                    let mut best = (0u64, 0u16);
                    for (i, seed) in seeds.iter().enumerate() {
                        let w = fmix64(seed ^ mixed);
                        if i == 0 || w > best.0 {
                            best = (w, i as u16);
                        }
                    }
                    best.1
                })
                .collect()
        };
        Self { nodes, owners }
    }

    /// The candidates, sorted.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The node answering the requesters of `slot`; none when there are no candidates.
    pub fn owner(&self, slot: u32) -> Option<&str> {
        let i = *self.owners.get(slot as usize)?;
        self.nodes.get(usize::from(i)).map(String::as_str)
    }

    /// The slots `node` answers, in the XDP program's form.
    pub fn bits(&self, node: &str) -> SlotBits {
        let mut bits = SlotBits::EMPTY;
        if let Ok(me) = self.nodes.binary_search_by(|n| n.as_str().cmp(node)) {
            for (slot, owner) in self.owners.iter().enumerate() {
                if usize::from(*owner) == me {
                    bits.insert(slot as u32);
                }
            }
        }
        bits
    }

    /// Slots per node.
    pub fn shares(&self) -> BTreeMap<&str, u32> {
        let mut out: BTreeMap<&str, u32> = self.nodes.iter().map(|n| (n.as_str(), 0)).collect();
        for o in &self.owners {
            if let Some(n) = out.get_mut(self.nodes[usize::from(*o)].as_str()) {
                *n += 1;
            }
        }
        out
    }
}

/// The slots set in `now` and not in `before`: what a node gained.
pub fn gained(before: &SlotBits, now: &SlotBits) -> SlotBits {
    let mut out = SlotBits::EMPTY;
    for (o, (b, n)) in out
        .words
        .iter_mut()
        .zip(before.words.iter().zip(&now.words))
    {
        *o = n & !b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn every_node_computes_the_same_table_whatever_the_input_order() {
        let mut shuffled = names(5);
        shuffled.reverse();
        shuffled.push("node-3".into());
        assert_eq!(SlotTable::new(&names(5)), SlotTable::new(&shuffled));
    }

    #[test]
    fn the_nodes_bits_partition_the_slots() {
        let table = SlotTable::new(&names(3));
        let bits: Vec<SlotBits> = table.nodes().iter().map(|n| table.bits(n)).collect();
        for slot in 0..SLOTS {
            let holders = bits.iter().filter(|b| b.contains(slot)).count();
            assert_eq!(holders, 1, "slot {slot} has {holders} holders");
        }
        assert_eq!(table.bits("node-9"), SlotBits::EMPTY);
    }

    #[test]
    fn shares_are_close_to_even() {
        for n in [2usize, 3, 5, 8] {
            let table = SlotTable::new(&names(n));
            let fair = SLOTS as f64 / n as f64;
            for (node, share) in table.shares() {
                let off = (f64::from(share) - fair).abs() / fair;
                assert!(
                    off < 0.08,
                    "{n} nodes: {node} holds {share}, fair is {fair:.0}"
                );
            }
        }
    }

    #[test]
    fn a_node_leaving_moves_exactly_its_slots_and_joining_takes_only_what_it_wins() {
        let all = SlotTable::new(&names(5));
        let without = SlotTable::new(&["node-1", "node-2", "node-4", "node-5"]);
        let mut moved = 0;
        for slot in 0..SLOTS {
            let (before, after) = (all.owner(slot), without.owner(slot));
            if before == Some("node-3") {
                moved += 1;
                assert_ne!(after, Some("node-3"));
            } else {
                assert_eq!(before, after, "slot {slot} moved between nodes that stayed");
            }
        }
        assert_eq!(moved, all.shares()["node-3"]);
        // Joining is the same change seen the other way.
        let gained_by_3 = gained(&without.bits("node-3"), &all.bits("node-3"));
        assert_eq!(gained_by_3.count(), moved);
        for other in ["node-1", "node-2", "node-4", "node-5"] {
            assert_eq!(
                gained(&without.bits(other), &all.bits(other)).count(),
                0,
                "{other} gained slots when node-3 joined"
            );
        }
    }

    #[test]
    fn one_candidate_holds_everything_and_none_holds_nothing() {
        let one = SlotTable::new(&["solo"]);
        assert_eq!(one.bits("solo").count(), SLOTS);
        let none = SlotTable::new::<&str>(&[]);
        assert_eq!(none.owner(0), None);
        assert!(none.shares().is_empty());
    }
}
