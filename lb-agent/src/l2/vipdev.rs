//! `xdplb0`: the dummy interface that holds the VIPs this host owns, so traffic to them is
//! delivered locally (kube-proxy's IPVS mode does the same with `kube-ipvs0`).
//!
//! The VIP is never put on the announcing interface: the kernel would then answer ARP/NDP for it
//! itself, past the election and the data-path lease. On `xdplb0` it does not, provided the
//! host only answers ARP for addresses of the receiving interface (`arp_ignore=1`) and never uses
//! a VIP as the source of its own requests (`arp_announce=2`). These are set host-wide
//! (`net.ipv4.conf.all`), as kube-proxy's IPVS mode does: set only on the announcing interface,
//! the parent of a VLAN or macvlan interface still hears the same broadcast and answers with its
//! own MAC. IPv6 neighbour discovery only ever answers for addresses of the receiving interface,
//! so it needs nothing.
use std::{collections::BTreeSet, net::IpAddr, path::PathBuf};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, LinkDummy, LinkIfb,
    packet_route::address::{AddressAttribute, AddressFlags},
};

use super::L2Error;

/// Netlink requests in flight at once while syncing.
const IN_FLIGHT: usize = 64;

/// Name of the VIP device.
pub const VIP_DEVICE: &str = "xdplb0";

fn nl(e: rtnetlink::Error) -> L2Error {
    L2Error::Netlink(e.to_string())
}

/// A netlink handle whose connection runs on the current tokio runtime.
pub fn connect() -> Result<Handle, L2Error> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| L2Error::Netlink(e.to_string()))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn index(handle: &Handle) -> Result<Option<u32>, L2Error> {
    let mut links = handle
        .link()
        .get()
        .match_name(VIP_DEVICE.to_owned())
        .execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(e)),
    }
}

/// Creates `xdplb0` (up, ARP off) unless it exists; returns its index.
///
/// A dummy device where the kernel has one; kernels built without `CONFIG_DUMMY` get an IFB
/// device instead, which holds local addresses just as well (nothing is ever sent through it).
pub async fn ensure(handle: &Handle) -> Result<u32, L2Error> {
    if let Some(i) = index(handle).await? {
        return Ok(i);
    }
    let dummy = LinkDummy::new(VIP_DEVICE).arp(false).up().build();
    match handle.link().add(dummy).execute().await {
        Ok(()) => {}
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EOPNOTSUPP => {
            tracing::info!("kernel has no dummy interfaces; using an ifb device as {VIP_DEVICE}");
            let ifb = LinkIfb::new(VIP_DEVICE).arp(false).up().build();
            handle.link().add(ifb).execute().await.map_err(nl)?;
        }
        Err(e) => return Err(nl(e)),
    }
    index(handle)
        .await?
        .ok_or_else(|| L2Error::Netlink(format!("{VIP_DEVICE} vanished after creation")))
}

async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>, L2Error> {
    let mut out = Vec::new();
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = stream.try_next().await.map_err(nl)? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(addr) = attr {
                out.push((*addr, msg.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// Makes `xdplb0` hold exactly `vips` (as /32 and /128, without DAD), adding before removing.
pub async fn sync(handle: &Handle, index: u32, vips: &BTreeSet<IpAddr>) -> Result<(), L2Error> {
    let current = addresses(handle, index).await?;
    let have: BTreeSet<IpAddr> = current.iter().map(|(a, _)| *a).collect();
    // Many requests in flight at once: one at a time, 10,000 addresses take seconds.
    let adds: Vec<_> = vips
        .difference(&have)
        .map(|vip| {
            let prefix = if vip.is_ipv4() { 32 } else { 128 };
            let mut req = handle.address().add(index, *vip, prefix);
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            req.execute()
        })
        .collect();
    futures::stream::iter(adds)
        .buffer_unordered(IN_FLIGHT)
        .map_err(nl)
        .try_collect::<Vec<()>>()
        .await?;
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut stale = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(nl)? {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(addr) => Some(*addr),
            _ => None,
        });
        if addr.is_some_and(|a| !vips.contains(&a)) {
            stale.push(msg);
        }
    }
    let dels: Vec<_> = stale
        .into_iter()
        .map(|msg| handle.address().del(msg).execute())
        .collect();
    futures::stream::iter(dels)
        .buffer_unordered(IN_FLIGHT)
        .map_err(nl)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Removes `xdplb0` if it holds no address any more.
pub async fn remove_if_empty(handle: &Handle) -> Result<(), L2Error> {
    let Some(i) = index(handle).await? else {
        return Ok(());
    };
    if addresses(handle, i).await?.is_empty() {
        handle.link().del(i).execute().await.map_err(nl)?;
    }
    Ok(())
}

/// Keeps the kernel from answering ARP for addresses the receiving interface does not carry,
/// host-wide and on `iface` (the kernel takes the larger of the two values).
pub fn quiet_arp(iface: &str) -> Result<(), L2Error> {
    for scope in ["all", iface] {
        for (name, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
            let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{scope}/{name}"));
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current.trim() != value {
                std::fs::write(&path, value).map_err(|source| L2Error::Sysctl {
                    path: path.clone(),
                    source,
                })?;
                tracing::info!(sysctl = %path.display(), value, "set so only xdplb answers ARP for VIPs");
            }
        }
    }
    Ok(())
}

/// kube-proxy in IPVS mode puts every Service address on `kube-ipvs0`; unless its `strictARP`
/// is on (which sets `arp_ignore` 1 and `arp_announce` 2 host-wide), every node's kernel then
/// answers ARP for every VIP beside the node xdplb elected, and clients reach random nodes.
/// Returns what is wrong, read under `root` (`/` on a host).
pub fn strict_arp_problem(root: &std::path::Path) -> Option<String> {
    if !root.join("sys/class/net/kube-ipvs0").exists() {
        return None;
    }
    let conf = root.join("proc/sys/net/ipv4/conf/all");
    let value = |name: &str| -> i64 {
        std::fs::read_to_string(conf.join(name))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let (ignore, announce) = (value("arp_ignore"), value("arp_announce"));
    (ignore < 1 || announce < 2).then(|| {
        format!(
            "kube-proxy runs in IPVS mode without strictARP (arp_ignore {ignore}, arp_announce {announce}): every node answers ARP for every VIP; set `ipvs: {{strictARP: true}}` in kube-proxy's configuration"
        )
    })
}

/// `xdplb0` while the agent runs: it holds what this node answers for, so the host accepts
/// the VIPs' traffic. A task of its own keeps the addresses: with thousands of VIPs a sync
/// takes long enough to delay heartbeats, and only the latest wanted set matters.
pub struct Local {
    handle: Handle,
    index: u32,
    wanted: tokio::sync::watch::Sender<BTreeSet<IpAddr>>,
}

impl Local {
    /// Creates `xdplb0` if needed, and stops `ifaces` answering ARP for it.
    pub async fn start(ifaces: &[super::iface::Interface]) -> Result<Self, L2Error> {
        let handle = connect()?;
        let index = ensure(&handle).await?;
        for iface in ifaces {
            quiet_arp(&iface.name)?;
        }
        let (wanted, mut rx) = tokio::sync::watch::channel(BTreeSet::<IpAddr>::new());
        let task = handle.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let vips = rx.borrow_and_update().clone();
                if let Err(e) = sync(&task, index, &vips).await {
                    tracing::warn!(error = %e, "cannot update xdplb0");
                }
                crate::heap::trim_heap();
            }
        });
        Ok(Self {
            handle,
            index,
            wanted,
        })
    }

    /// Makes `xdplb0` hold exactly `vips` (soon).
    pub fn hold(&self, vips: BTreeSet<IpAddr>) {
        self.wanted.send_if_modified(|current| {
            let changed = *current != vips;
            *current = vips;
            changed
        });
    }

    /// Takes every address off `xdplb0`, and the device away when nothing else uses it.
    pub async fn remove(self) -> Result<(), L2Error> {
        drop(self.wanted);
        sync(&self.handle, self.index, &BTreeSet::new()).await?;
        remove_if_empty(&self.handle).await
    }
}

#[cfg(test)]
mod strict_arp_tests {
    use super::*;

    #[test]
    fn ipvs_without_strict_arp_is_reported() {
        let root = std::env::temp_dir().join(format!("xdplb-strictarp-{}", std::process::id()));
        let conf = root.join("proc/sys/net/ipv4/conf/all");
        std::fs::create_dir_all(&conf).expect("dir");
        std::fs::write(conf.join("arp_ignore"), "0\n").expect("write");
        std::fs::write(conf.join("arp_announce"), "0\n").expect("write");
        assert_eq!(strict_arp_problem(&root), None, "no kube-ipvs0: no IPVS");
        std::fs::create_dir_all(root.join("sys/class/net/kube-ipvs0")).expect("dir");
        let p = strict_arp_problem(&root).expect("reported");
        assert!(p.contains("strictARP"), "{p}");
        std::fs::write(conf.join("arp_ignore"), "1\n").expect("write");
        std::fs::write(conf.join("arp_announce"), "2\n").expect("write");
        assert_eq!(strict_arp_problem(&root), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
