//! When the VIPs this node answers change: the step from what the election says now
//! ([`super::Layer2`]) to what goes into the maps. Pure, with time passed in; the agent's
//! driver calls [`Handover::step`] after every change of membership or configuration, and once
//! per tick while a VIP lingers.
//!
//! The rules:
//! - **Make before break at start.** Until its first decision an agent says it is joining
//!   ([`Handover::phase`]), so its peers keep answering; its first step puts its VIPs in the
//!   maps, and only the heartbeat after that says it is active, upon which the peers let go.
//! - **A VIP lost to a configuration change lingers one failure timeout**: the new owner may
//!   read the change a moment later than this agent, and the VIP must not be left without an
//!   answer meanwhile. A VIP lost to a membership change goes at once: either its new owner is
//!   a peer that announces already (it said active), or this node is the one that left.
//! - **Slots gained are told.** For an active-active VIP, the slots this node answers now and
//!   did not before are the requesters to tell ([`Step::took_slots`]); after a partition
//!   heals (a peer heard again in the same run it was lost in) every slot is, since the peer
//!   may have told this node's clients to go to it.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::SlotBits;

use super::{
    Announcement, Layer2,
    slots::{self, SlotTable},
};
use crate::membership::heartbeat::Phase;

/// What this node answers, between steps.
#[derive(Debug)]
pub struct Handover {
    node: String,
    /// How long a VIP lost to a configuration change is still answered (the failure timeout).
    linger: Duration,
    phase: Phase,
    /// Whether the first decision was taken.
    decided: bool,
    announced: BTreeSet<Announcement>,
    /// This node's slots of each active-active VIP it announces.
    bits: BTreeMap<IpAddr, SlotBits>,
    /// VIPs lost to a configuration change, answered until the deadline.
    lingering: BTreeMap<Announcement, Instant>,
}

/// What one step changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// This was the first decision of the run (nothing is a takeover yet).
    pub first: bool,
    /// Whether the maps must change (always on the first step).
    pub changed: bool,
    /// Everything answered now, lingering VIPs included.
    pub announced: BTreeSet<Announcement>,
    /// This node's slots of each active-active VIP among them.
    pub bits: BTreeMap<IpAddr, SlotBits>,
    pub gained: BTreeSet<Announcement>,
    pub lost: BTreeSet<Announcement>,
    /// VIPs newly answered for every requester: what gratuitous ARP / unsolicited NA announce.
    pub fresh: BTreeSet<Announcement>,
    /// Per active-active VIP, the slots whose recorded requesters must be told.
    pub took_slots: BTreeMap<IpAddr, SlotBits>,
}

impl Handover {
    /// `adopted`: the maps hold a previous agent's entries that are still being answered; the
    /// agent says it is active from the start so the peers do not take them meanwhile.
    pub fn new(node: impl Into<String>, linger: Duration, adopted: bool) -> Self {
        Self {
            node: node.into(),
            linger,
            phase: if adopted {
                Phase::Active
            } else {
                Phase::Joining
            },
            decided: false,
            announced: BTreeSet::new(),
            bits: BTreeMap::new(),
            lingering: BTreeMap::new(),
        }
    }

    /// What this node's heartbeats say.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the first decision was taken.
    pub fn decided(&self) -> bool {
        self.decided
    }

    /// Whether a step is due even without a change: a lingering VIP's deadline may pass.
    pub fn lingers(&self) -> bool {
        !self.lingering.is_empty()
    }

    pub fn announced(&self) -> &BTreeSet<Announcement> {
        &self.announced
    }

    /// From what the election says now (`wanted`) to what is answered. `membership_changed`:
    /// the alive set differs from the last step's; `rejoined`: a peer came back in the run it
    /// was lost in (a healed partition).
    pub fn step(
        &mut self,
        wanted: Layer2,
        membership_changed: bool,
        rejoined: bool,
        now: Instant,
    ) -> Step {
        let Layer2 {
            announcements: wanted,
            active_active,
            ..
        } = wanted;
        let expired: BTreeSet<Announcement> = self
            .lingering
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(a, _)| a.clone())
            .collect();
        self.lingering
            .retain(|a, until| *until > now && !wanted.contains(a));
        if self.decided && !membership_changed {
            for a in self.announced.difference(&wanted) {
                if !expired.contains(a) {
                    self.lingering.entry(a.clone()).or_insert(now + self.linger);
                }
            }
        }
        let mut next = wanted;
        next.extend(self.lingering.keys().cloned());
        let mut next_bits = bits_of(&self.node, &active_active);
        for a in self.lingering.keys() {
            if let Some(bits) = self.bits.get(&a.vip) {
                next_bits.entry(a.vip).or_insert(*bits);
            }
        }
        let first = !self.decided;
        self.decided = true;
        self.phase = Phase::Active;
        let changed = first || next != self.announced || next_bits != self.bits;
        let gained: BTreeSet<Announcement> = next.difference(&self.announced).cloned().collect();
        let lost: BTreeSet<Announcement> = self.announced.difference(&next).cloned().collect();
        let fresh = gained
            .iter()
            .filter(|a| !next_bits.contains_key(&a.vip))
            .cloned()
            .collect();
        let took_slots = if !changed {
            BTreeMap::new()
        } else if rejoined {
            next_bits.clone()
        } else {
            gained_slots(&self.bits, &self.announced, &next_bits)
        };
        self.announced.clone_from(&next);
        self.bits.clone_from(&next_bits);
        Step {
            first,
            changed,
            announced: next,
            bits: next_bits,
            gained,
            lost,
            fresh,
            took_slots,
        }
    }
}

/// This node's slots of each active-active VIP, one table per distinct set of nodes.
fn bits_of(node: &str, shared: &BTreeMap<IpAddr, Arc<[String]>>) -> BTreeMap<IpAddr, SlotBits> {
    let mut tables: BTreeMap<&[String], SlotBits> = BTreeMap::new();
    shared
        .iter()
        .map(|(vip, nodes)| {
            let bits = *tables
                .entry(&nodes[..])
                .or_insert_with(|| SlotTable::new(nodes).bits(node));
            (*vip, bits)
        })
        .collect()
}

/// The slots of each active-active VIP that this node answers now and did not before:
/// `before` holds the previous slots, and a VIP announced before without a table was answered
/// for every requester.
fn gained_slots(
    before: &BTreeMap<IpAddr, SlotBits>,
    announced_before: &BTreeSet<Announcement>,
    now: &BTreeMap<IpAddr, SlotBits>,
) -> BTreeMap<IpAddr, SlotBits> {
    let whole: BTreeSet<IpAddr> = announced_before.iter().map(|a| a.vip).collect();
    now.iter()
        .filter_map(|(vip, bits)| {
            let old = match before.get(vip) {
                Some(b) => *b,
                None if whole.contains(vip) => SlotBits::FULL,
                None => SlotBits::EMPTY,
            };
            let gained = slots::gained(&old, bits);
            (gained.count() > 0).then_some((*vip, gained))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(180);

    fn vip(ip: &str, service: &str) -> Announcement {
        Announcement {
            vip: ip.parse().unwrap_or_else(|e| panic!("{e}")),
            service: service.into(),
            interfaces: BTreeSet::new(),
        }
    }

    fn owning(vips: &[&Announcement]) -> Layer2 {
        Layer2 {
            announcements: vips.iter().map(|a| (*a).clone()).collect(),
            active_active: BTreeMap::new(),
            claims: BTreeSet::new(),
        }
    }

    fn sharing(vips: &[&Announcement], nodes: &[&str]) -> Layer2 {
        let nodes: Arc<[String]> = nodes.iter().map(|n| (*n).to_owned()).collect();
        Layer2 {
            announcements: vips.iter().map(|a| (*a).clone()).collect(),
            active_active: vips.iter().map(|a| (a.vip, nodes.clone())).collect(),
            claims: BTreeSet::new(),
        }
    }

    #[test]
    fn a_vip_lost_to_a_configuration_change_is_answered_one_more_failure_timeout() {
        let t0 = Instant::now();
        let web = vip("10.0.0.1", "default/web");
        let mut h = Handover::new("a", TIMEOUT, false);
        h.step(owning(&[&web]), true, false, t0);

        // The configuration moves the VIP away; the membership is the same.
        let step = h.step(owning(&[]), false, false, t0);
        assert!(!step.changed, "{step:?}");
        assert!(step.announced.contains(&web));
        assert!(h.lingers());

        let almost = h.step(
            owning(&[]),
            false,
            false,
            t0 + TIMEOUT - Duration::from_millis(1),
        );
        assert!(almost.announced.contains(&web));
        let after = h.step(owning(&[]), false, false, t0 + TIMEOUT);
        assert!(after.changed);
        assert_eq!(after.lost, BTreeSet::from([web]));
        assert!(after.announced.is_empty());
        assert!(!h.lingers());
    }

    #[test]
    fn a_vip_that_comes_back_while_lingering_stops_lingering() {
        let t0 = Instant::now();
        let web = vip("10.0.0.1", "default/web");
        let mut h = Handover::new("a", TIMEOUT, false);
        h.step(owning(&[&web]), true, false, t0);
        h.step(owning(&[]), false, false, t0);
        let back = h.step(
            owning(&[&web]),
            false,
            false,
            t0 + Duration::from_millis(10),
        );
        assert!(!back.changed && back.gained.is_empty());
        assert!(!h.lingers());
        // Lost again later: a fresh linger, not the old deadline.
        let t1 = t0 + Duration::from_secs(1);
        assert!(
            h.step(owning(&[]), false, false, t1)
                .announced
                .contains(&web)
        );
    }

    #[test]
    fn a_vip_lost_to_a_membership_change_goes_at_once() {
        let t0 = Instant::now();
        let web = vip("10.0.0.1", "default/web");
        let mut h = Handover::new("b", TIMEOUT, false);
        h.step(owning(&[&web]), true, false, t0);
        // The peer that owns it by the hash said it is active: it answers already.
        let step = h.step(owning(&[]), true, false, t0);
        assert!(step.changed);
        assert_eq!(step.lost, BTreeSet::from([web]));
        assert!(step.announced.is_empty() && !h.lingers());
    }

    #[test]
    fn a_restarted_owner_takes_its_vips_back_make_before_break() {
        let t0 = Instant::now();
        let web = vip("10.0.0.1", "default/web");
        // The restarted owner says it is joining, so the node holding its VIP keeps it.
        let mut owner = Handover::new("a", TIMEOUT, false);
        assert_eq!(owner.phase(), Phase::Joining);
        let mut holder = Handover::new("b", TIMEOUT, false);
        holder.step(owning(&[&web]), true, false, t0);
        // Its first decision puts the VIP in its maps, and only then does it say active.
        let first = owner.step(owning(&[&web]), true, false, t0);
        assert!(first.first && first.changed);
        assert_eq!(first.announced, BTreeSet::from([web.clone()]));
        assert!(first.fresh.contains(&web), "announced with gratuitous ARP");
        assert_eq!(owner.phase(), Phase::Active);
        // The holder, seeing it active, lets go: both answered in between, never neither.
        let released = holder.step(owning(&[]), true, false, t0 + Duration::from_millis(50));
        assert_eq!(released.lost, BTreeSet::from([web]));
    }

    #[test]
    fn an_agent_adopting_live_entries_says_active_from_the_start() {
        let h = Handover::new("a", TIMEOUT, true);
        assert_eq!(h.phase(), Phase::Active);
        assert!(!h.decided());
    }

    #[test]
    fn the_first_step_changes_the_maps_even_with_nothing_to_announce() {
        let mut h = Handover::new("a", TIMEOUT, false);
        let step = h.step(owning(&[]), false, false, Instant::now());
        assert!(step.first && step.changed && step.announced.is_empty());
        let again = h.step(owning(&[]), false, false, Instant::now());
        assert!(!again.first && !again.changed);
    }

    #[test]
    fn slots_gained_are_told_and_a_healed_partition_tells_every_slot() {
        let t0 = Instant::now();
        let web = vip("10.0.0.1", "default/web");
        let mut h = Handover::new("a", TIMEOUT, false);
        let both = h.step(sharing(&[&web], &["a", "b"]), true, false, t0);
        let mine = SlotTable::new(&["a", "b"]).bits("a");
        assert_eq!(both.bits.get(&web.vip), Some(&mine));
        assert!(both.fresh.is_empty(), "shared VIPs get no gratuitous ARP");
        assert_eq!(both.took_slots.get(&web.vip), Some(&mine));

        // b dies: a gains b's slots, and only those are told.
        let alone = h.step(sharing(&[&web], &["a"]), true, false, t0);
        let theirs = slots::gained(&mine, &SlotBits::FULL);
        assert_eq!(alone.took_slots.get(&web.vip), Some(&theirs));

        // b comes back in the same run: a keeps its half, and tells all of it.
        let healed = h.step(sharing(&[&web], &["a", "b"]), true, true, t0);
        assert_eq!(healed.took_slots.get(&web.vip), Some(&mine));
    }

    #[test]
    fn a_vip_turning_active_active_keeps_the_slots_it_had_as_owner() {
        let t0 = Instant::now();
        let web = vip("10.0.0.1", "default/web");
        let mut h = Handover::new("a", TIMEOUT, false);
        h.step(owning(&[&web]), true, false, t0);
        // Answered for every requester before: no slot is new.
        let step = h.step(sharing(&[&web], &["a", "b"]), false, false, t0);
        assert!(step.changed);
        assert!(step.took_slots.is_empty(), "{:?}", step.took_slots);
        assert!(step.gained.is_empty() && step.fresh.is_empty());
    }
}
