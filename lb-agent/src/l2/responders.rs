//! An agent's responders behind one interface: the XDP program on every interface where it
//! attaches, the userspace AF_PACKET responder on the others (`--mode auto`), or only one of
//! them. `apply` sends each entry to the responder of its interface.
//!
//! In a group (`lb-agent run`) entries carry the data-path lease, renewed by the main loop;
//! static `announce` has no lease. The AF_PACKET responder's threads check the same kind of
//! lease (an atomic deadline beside their table): they live in the agent's process, but a main
//! loop that is stuck must not leave them answering for VIPs its peers have taken over.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use lb_common::{SlotBits, VIP_FLAG_ACTIVE_ACTIVE, VIP_FLAG_LEASED};
use tracing::{info, warn};

use super::{
    L2Error,
    afpacket::{self, Table},
    datapath::{Datapath, XdpModes, any_link_pinned},
    groups::{self, Groups},
    iface::Interface,
    maps::{ApplyStats, Client, VipEntry, VipMaps, monotonic_ns},
};
use crate::election::Announcement;

/// How ARP/NDP is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// XDP (native, then generic), else the AF_PACKET responder.
    Auto,
    /// XDP, native then generic; fail if neither attaches.
    Xdp,
    /// XDP in driver mode only.
    XdpNative,
    /// XDP in generic (SKB) mode only.
    XdpGeneric,
    /// The userspace AF_PACKET responder.
    Afpacket,
}

impl From<Mode> for Choice {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Auto => Choice::Auto,
            Mode::Afpacket => Choice::AfPacket,
            Mode::Xdp => Choice::Xdp(XdpModes::NativeThenGeneric),
            Mode::XdpNative => Choice::Xdp(XdpModes::NativeOnly),
            Mode::XdpGeneric => Choice::Xdp(XdpModes::GenericOnly),
        }
    }
}

/// The map entries that answer for `announced` on `ifaces`: one per VIP and interface it is
/// announced on; the VIPs in `active_active` are flagged so.
/// Whether `a` is answered on `iface`: on every interface of the agent when its
/// advertisements name none, else on those they name.
fn answers_on(a: &Announcement, iface: &Interface) -> bool {
    a.interfaces.is_empty() || a.interfaces.contains(&iface.name)
}

/// The announcements that no interface of `ifaces` can answer (the interfaces their
/// advertisements name are not among them, or none could take a responder).
pub fn without_interface<'a>(
    announced: impl IntoIterator<Item = &'a Announcement>,
    ifaces: &[Interface],
) -> Vec<&'a Announcement> {
    announced
        .into_iter()
        .filter(|a| !ifaces.iter().any(|i| answers_on(a, i)))
        .collect()
}

pub fn entries<'a>(
    announced: impl IntoIterator<Item = &'a Announcement>,
    ifaces: &[Interface],
    active_active: &BTreeMap<IpAddr, SlotBits>,
) -> Vec<VipEntry> {
    announced
        .into_iter()
        .flat_map(|a| {
            let flags = if active_active.contains_key(&a.vip) {
                VIP_FLAG_ACTIVE_ACTIVE
            } else {
                0
            };
            ifaces
                .iter()
                .filter(|i| answers_on(a, i))
                .map(move |i| VipEntry {
                    addr: a.vip,
                    ifindex: i.index,
                    mac: i.mac,
                    flags,
                })
        })
        .collect()
}

/// Which responders to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// XDP in these modes; an interface where it cannot attach is an error.
    Xdp(XdpModes),
    /// XDP (native, then generic) where it attaches, AF_PACKET elsewhere.
    Auto,
    /// AF_PACKET everywhere.
    AfPacket,
}

/// The clients recorded by both responders, readable off the agent's loop.
#[derive(Clone)]
pub struct ClientsSource {
    bpffs: Option<PathBuf>,
    af: Arc<afpacket::Shared>,
}

impl ClientsSource {
    /// Every recorded client, sorted. A dump of the XDP program's map: call it on a thread
    /// that may block.
    pub fn clients(&self) -> Vec<Client> {
        let mut out = self
            .bpffs
            .as_deref()
            .and_then(|p| VipMaps::open_pinned(p).ok())
            .map(|m| m.clients())
            .unwrap_or_default();
        if let Ok(r) = self.af.requesters.lock() {
            out.extend(r.clients());
        }
        out.sort();
        out
    }
}

/// An AF_PACKET responder's thread, stopped on its own when its interface goes.
struct AfThread {
    iface: Interface,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl AfThread {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

/// The data-path lease, renewable from another thread (the membership thread renews it with
/// each heartbeat): the AF_PACKET responders' deadline and the XDP program's lease array.
#[derive(Clone)]
pub struct Lease {
    af: Arc<std::sync::atomic::AtomicU64>,
    xdp: Arc<std::sync::Mutex<Option<aya::maps::Array<aya::maps::MapData, u64>>>>,
}

impl Lease {
    /// Renews the lease until `deadline_ns` (`CLOCK_MONOTONIC`).
    pub fn renew(&self, deadline_ns: u64) -> Result<(), L2Error> {
        self.af.store(deadline_ns, Ordering::Relaxed);
        let mut xdp = self.xdp.lock().unwrap_or_else(|e| e.into_inner());
        match xdp.as_mut() {
            Some(lease) => super::maps::set_lease(lease, deadline_ns),
            None => Ok(()),
        }
    }
}

/// The responders of one agent.
pub struct Responders {
    bpffs: PathBuf,
    choice: Choice,
    /// The loaded (or adopted) XDP program, when XDP is used at all.
    datapath: Option<Datapath>,
    /// Mark XDP entries leased (a group member renews the lease; static mode has none).
    leased: bool,
    maps: Option<VipMaps>,
    lease: Lease,
    xdp: BTreeSet<u32>,
    /// How each interface is answered, for logs and metrics: `xdp native`, `xdp generic`,
    /// `afpacket`.
    pub modes: Vec<(String, String)>,
    threads: Vec<AfThread>,
    /// The AF_PACKET responders' table, counters and recorded requesters.
    pub af: Arc<afpacket::Shared>,
    /// The solicited-node groups of the IPv6 VIPs answered, joined on their interfaces.
    groups: Groups,
    /// The memberships whose join failed at the last apply (logged when they first fail).
    join_failed: BTreeSet<groups::Membership>,
}

impl Responders {
    /// Loads (or adopts) the XDP program at `log_level` and attaches it, and starts the
    /// AF_PACKET responder where XDP is not used.
    pub fn start(
        bpffs: &Path,
        ifaces: &[Interface],
        choice: Choice,
        log_level: u8,
        leased: bool,
    ) -> Result<Self, L2Error> {
        let mut datapath = None;
        if choice != Choice::AfPacket {
            match Datapath::load(bpffs, log_level) {
                Ok(d) => datapath = Some(d),
                Err(e) if choice == Choice::Auto => {
                    warn!(error = %e, "XDP unavailable; answering from the AF_PACKET responder");
                }
                Err(e) => return Err(e),
            }
        }
        let af = Arc::new(afpacket::Shared::default());
        let lease = Lease {
            af: af.lease.clone(),
            xdp: Arc::default(),
        };
        let mut responders = Self {
            bpffs: bpffs.to_owned(),
            choice,
            datapath,
            leased,
            maps: None,
            lease,
            xdp: BTreeSet::new(),
            modes: Vec::new(),
            threads: Vec::new(),
            af,
            groups: Groups::new(),
            join_failed: BTreeSet::new(),
        };
        for iface in ifaces {
            responders.add(iface)?;
        }
        Ok(responders)
    }

    /// Answers on `iface` too (XDP, or AF_PACKET where XDP cannot attach under `auto`); the
    /// next [`Self::apply`] gives it its entries.
    pub fn add(&mut self, iface: &Interface) -> Result<(), L2Error> {
        if let Some(d) = self.datapath.as_mut() {
            let want = match self.choice {
                Choice::Xdp(m) => m,
                _ => XdpModes::NativeThenGeneric,
            };
            match d.attach_l2(&iface.name, want) {
                Ok(how) => {
                    info!(iface = %iface.name, mode = %how, "XDP responder attached");
                    self.modes.push((iface.name.clone(), how.to_string()));
                    self.xdp.insert(iface.index);
                    if self.maps.is_none() {
                        self.maps = Some(VipMaps::open_pinned(d.bpffs())?);
                        let lease = super::maps::open_lease(d.bpffs())?;
                        *self.lease.xdp.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                    }
                    return Ok(());
                }
                Err(e) if self.choice == Choice::Auto => {
                    warn!(iface = %iface.name, error = %e, "XDP cannot attach; using the AF_PACKET responder");
                }
                Err(e) => return Err(e),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handle = afpacket::spawn_responder(iface.clone(), self.af.clone(), stop.clone())?;
        info!(iface = %iface.name, "AF_PACKET responder running");
        self.modes.push((iface.name.clone(), "afpacket".to_owned()));
        self.threads.push(AfThread {
            iface: iface.clone(),
            stop,
            handle,
        });
        Ok(())
    }

    /// Stops answering on `iface` (gone, or no longer chosen). Its entries go with the next
    /// [`Self::apply`], which no longer lists them.
    pub fn remove(&mut self, iface: &Interface) -> Result<(), L2Error> {
        if self.xdp.remove(&iface.index) {
            Datapath::detach(&self.bpffs, &iface.name)?;
        }
        let (gone, kept) = std::mem::take(&mut self.threads)
            .into_iter()
            .partition(|t| t.iface == *iface);
        self.threads = kept;
        for t in gone {
            t.stop();
        }
        self.modes.retain(|(name, _)| *name != iface.name);
        Ok(())
    }

    /// The XDP program's aya-log reader (once), to forward its records.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.datapath.as_mut().and_then(Datapath::take_logger)
    }

    /// Whether the XDP maps hold entries of a previous agent whose lease still runs: they are
    /// being answered right now.
    pub fn adopted_live(&self) -> Result<bool, L2Error> {
        match &self.maps {
            Some(m) => Ok(!m.entries().is_empty() && m.lease()? > monotonic_ns()),
            None => Ok(false),
        }
    }

    /// Where the recorded clients can be read from another thread (the pinned maps are opened
    /// again there).
    pub fn clients_source(&self) -> ClientsSource {
        ClientsSource {
            bpffs: self.maps.as_ref().map(|_| self.bpffs.clone()),
            af: self.af.clone(),
        }
    }

    /// Renews the data-path lease until `deadline_ns` (`CLOCK_MONOTONIC`).
    pub fn renew(&mut self, deadline_ns: u64) -> Result<(), L2Error> {
        self.lease.renew(deadline_ns)
    }

    /// The lease, to renew from another thread.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// Answers for exactly `entries` (make before break in the maps), with `slots` as the
    /// tables of the active-active VIPs among them; returns what changed in the XDP maps.
    /// The IPv6 VIPs' solicited-node groups are joined before they are answered and left
    /// after they are not.
    pub fn apply(
        &mut self,
        entries: &[VipEntry],
        slots: &BTreeMap<IpAddr, SlotBits>,
    ) -> Result<ApplyStats, L2Error> {
        let groups = groups::wanted(entries);
        // A join that fails is tried again at every apply, and logged once.
        let failed: BTreeSet<groups::Membership> = self
            .groups
            .join(&groups)
            .into_iter()
            .map(|f| {
                if !self.join_failed.contains(&f.membership) {
                    warn!(ifindex = f.membership.0, group = %f.membership.1, error = %f.error,
                        "cannot join the solicited-node group: switches that snoop MLD may not forward solicitations for its VIPs");
                }
                f.membership
            })
            .collect();
        self.join_failed = failed;
        let stats = self.apply_entries(entries, slots)?;
        for f in self.groups.leave_except(&groups) {
            // The kernel dropped the memberships of an interface that went away.
            if super::iface::name_of(f.membership.0).is_some() {
                warn!(ifindex = f.membership.0, group = %f.membership.1, error = %f.error,
                    "cannot leave the solicited-node group");
            }
        }
        Ok(stats)
    }

    fn apply_entries(
        &mut self,
        entries: &[VipEntry],
        slots: &BTreeMap<IpAddr, SlotBits>,
    ) -> Result<ApplyStats, L2Error> {
        let (xdp, af): (Vec<VipEntry>, Vec<VipEntry>) =
            entries.iter().partition(|e| self.xdp.contains(&e.ifindex));
        let mut stats = ApplyStats::default();
        if let Some(m) = &mut self.maps {
            let lease = if self.leased { VIP_FLAG_LEASED } else { 0 };
            let xdp: Vec<VipEntry> = xdp
                .into_iter()
                .map(|e| VipEntry {
                    flags: e.flags | lease,
                    ..e
                })
                .collect();
            stats = m.apply(&xdp, slots)?;
        }
        let lease = if self.leased { VIP_FLAG_LEASED } else { 0 };
        let af: Vec<VipEntry> = af
            .into_iter()
            .filter(|e| self.threads.iter().any(|t| t.iface.index == e.ifindex))
            .map(|e| VipEntry {
                flags: e.flags | lease,
                ..e
            })
            .collect();
        let next = Table::from_entries(&af, slots).with_lease(self.af.lease.clone());
        if let Ok(mut t) = self.af.table.write() {
            *t = next;
        }
        Ok(stats)
    }

    /// Stops answering, detaches XDP from this agent's interfaces and, when nothing else is
    /// left in them (no entry, no other link), removes the pins.
    pub fn shutdown(mut self, ifaces: &[Interface]) -> Result<(), L2Error> {
        self.apply(&[], &BTreeMap::new())?;
        for t in self.threads.drain(..) {
            t.stop();
        }
        for iface in ifaces.iter().filter(|i| self.xdp.contains(&i.index)) {
            Datapath::detach(&self.bpffs, &iface.name)?;
        }
        let empty = self.maps.as_ref().is_none_or(|m| m.entries().is_empty());
        if self.datapath.is_some() && empty && !any_link_pinned(&self.bpffs) {
            Datapath::unpin_all(&self.bpffs)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn iface(name: &str, index: u32) -> Interface {
        Interface {
            name: name.into(),
            index,
            mac: [2, 0, 0, 0, 0, index as u8],
        }
    }

    fn announcement(vip: &str, interfaces: &[&str]) -> Announcement {
        Announcement {
            vip: vip.parse().unwrap_or_else(|e| panic!("{e}")),
            service: format!("default/{vip}"),
            interfaces: interfaces
                .iter()
                .map(|i| (*i).to_owned())
                .collect::<BTreeSet<_>>(),
        }
    }

    #[test]
    fn an_announcement_is_stuck_when_no_interface_of_the_agent_answers_it() {
        let ifaces = [iface("eth0", 2), iface("eth1", 3)];
        let all = announcement("10.0.0.1", &[]);
        let named = announcement("10.0.0.2", &["eth1"]);
        let elsewhere = announcement("10.0.0.3", &["eth9"]);
        let announced = [all.clone(), named.clone(), elsewhere.clone()];
        assert_eq!(without_interface(&announced, &ifaces), vec![&elsewhere]);
        assert_eq!(entries(&announced, &ifaces, &BTreeMap::new()).len(), 3);
        // No interface took a responder: everything is stuck.
        assert_eq!(without_interface(&announced, &[]).len(), 3);
    }
}
