//! The `lb-agent` subcommands.
use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lb_common::{
    Counter, DEFAULT_BPFFS, LINK_PIN_PREFIX, SLOTS, VIP_FLAG_ACTIVE_ACTIVE, VIP_FLAG_LEASED,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::l2::{
    afpacket::PacketSocket,
    announce,
    iface::{self, Interface},
    maps::{VipEntry, VipMaps, monotonic_ns},
    responders::{Mode, Responders},
    vipdev,
};

#[derive(Debug, Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "xdplb node agent: announces load-balancer VIPs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Announce fixed VIPs on interfaces (static mode: no controller, no peers).
    Announce(AnnounceArgs),
    /// Print the pinned VIP maps, counters and links.
    Maps(MapsArgs),
    /// Run as a node of a group (standalone: a configuration directory and UDP heartbeats):
    /// announce the VIPs this node is elected for, take over when a peer dies.
    Run(Box<crate::run::RunArgs>),
}

#[derive(Debug, clap::Args)]
pub struct AnnounceArgs {
    /// Interface to answer on (repeat for several).
    #[arg(long = "interface", short = 'i', required = true)]
    pub interfaces: Vec<String>,
    /// VIPs to announce, IPv4 or IPv6, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub vip: Vec<IpAddr>,
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// bpffs directory for the pinned program, links and maps.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Do not put the VIPs on the local `xdplb0` device (when something else, such as
    /// kube-proxy, accepts their traffic).
    #[arg(long)]
    pub no_local_vip: bool,
}

#[derive(Debug, clap::Args)]
pub struct MapsArgs {
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Announce(args) => announce(args).await,
        Command::Run(args) => crate::run::run(*args).await,
        Command::Maps(args) => {
            print!("{}", render_maps(&args.bpffs)?);
            Ok(())
        }
    }
}

fn log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => 5,
        LevelFilter::DEBUG => 4,
        LevelFilter::INFO => 3,
        LevelFilter::WARN => 2,
        LevelFilter::ERROR => 1,
        _ => 0,
    }
}

fn entries_for(ifaces: &[Interface], vips: &[IpAddr]) -> Vec<VipEntry> {
    ifaces
        .iter()
        .flat_map(|i| {
            vips.iter().map(|addr| VipEntry {
                addr: *addr,
                ifindex: i.index,
                mac: i.mac,
                flags: 0,
            })
        })
        .collect()
}

/// Why `addr` cannot be announced with ARP/NDP, if it cannot.
fn unannounceable(addr: &IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_unicast_link_local() => {
            Some("link-local (it would be ambiguous across interfaces)")
        }
        _ => None,
    }
}

async fn announce(args: AnnounceArgs) -> anyhow::Result<()> {
    if let Some((vip, why)) = args
        .vip
        .iter()
        .find_map(|v| unannounceable(v).map(|why| (v, why)))
    {
        bail!("--vip {vip}: cannot be announced: it is {why}");
    }
    let mut ifaces: Vec<Interface> = Vec::new();
    for name in &args.interfaces {
        let iface = Interface::lookup(name)?;
        if iface.mac == [0; 6] {
            bail!(
                "--interface {name}: has no Ethernet address to answer with (loopback or a tunnel?)"
            );
        }
        if !ifaces.contains(&iface) {
            ifaces.push(iface);
        }
    }
    let vips: Vec<IpAddr> = {
        let set: BTreeSet<IpAddr> = args.vip.iter().copied().collect();
        set.into_iter().collect()
    };

    let mut responders =
        Responders::start(&args.bpffs, &ifaces, args.mode.into(), log_level(), false)
            .context("starting the ARP/NDP responders")?;
    if let Some(logger) = responders.take_logger() {
        spawn_log_reader(logger);
    }
    let entries = entries_for(&ifaces, &vips);
    let stats = responders.apply(&entries, &Default::default())?;
    info!(
        added = stats.added,
        updated = stats.updated,
        removed = stats.removed,
        "VIP maps updated"
    );

    let netlink = if args.no_local_vip {
        None
    } else {
        let handle = vipdev::connect()?;
        let index = vipdev::ensure(&handle).await?;
        vipdev::sync(&handle, index, &vips.iter().copied().collect()).await?;
        for iface in &ifaces {
            vipdev::quiet_arp(&iface.name)?;
        }
        Some(handle)
    };

    let sockets = ifaces
        .iter()
        .map(|i| Ok((i.index, PacketSocket::open(i, false)?)))
        .collect::<Result<Vec<_>, crate::l2::L2Error>>()?;
    let announcer = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut sent = 0;
        for at in announce::SCHEDULE {
            tokio::time::sleep_until(start + at).await;
            sent += announce::send_round(&sockets, &entries, |_| {});
        }
        info!(frames = sent, "announcements done");
    });
    info!(vips = ?vips, "announcing; SIGTERM or SIGINT withdraws");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    info!("withdrawing");
    announcer.abort();
    let af = responders.af.clone();
    let af_used = responders.modes.iter().any(|(_, m)| m == "afpacket");
    responders.shutdown(&ifaces)?;
    if let Some(handle) = netlink {
        let index = vipdev::ensure(&handle).await?;
        vipdev::sync(&handle, index, &BTreeSet::new()).await?;
        vipdev::remove_if_empty(&handle).await?;
    }
    if af_used {
        info!(
            requests =
                af.counters.get(Counter::ArpRequests) + af.counters.get(Counter::NdpSolicitations),
            replies =
                af.counters.get(Counter::ArpReplies) + af.counters.get(Counter::NdpAdvertisements),
            "AF_PACKET responder stopped"
        );
    }
    Ok(())
}

/// Forwards the XDP program's aya-log records to tracing for the agent's lifetime.
fn spawn_log_reader(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer fd and keeps it open for as long as the
        // AsyncFd owns the logger.
        let Ok(mut fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// `lb-agent maps`: the pinned maps in human form.
pub fn render_maps(bpffs: &Path) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    if !bpffs.exists() {
        bail!(
            "nothing pinned under {} (is an agent running? see --bpffs)",
            bpffs.display()
        );
    }
    let maps = VipMaps::open_pinned(bpffs)?;
    let mut out = String::new();
    let entries = maps.entries();
    writeln!(out, "{:<40} {:<20} {:<18} FLAGS", "VIP", "INTERFACE", "MAC")?;
    for e in &entries {
        let ifname = iface::name_of(e.ifindex).unwrap_or_else(|| "?".to_owned());
        let named: Vec<&str> = [
            (VIP_FLAG_LEASED, "leased"),
            (VIP_FLAG_ACTIVE_ACTIVE, "shared"),
        ]
        .into_iter()
        .filter(|(bit, _)| e.flags & bit != 0)
        .map(|(_, name)| name)
        .collect();
        let flags = if named.is_empty() {
            "-".to_owned()
        } else {
            named.join(",")
        };
        writeln!(
            out,
            "{:<40} {:<20} {:<18} {}",
            e.addr.to_string(),
            format!("{ifname} ({})", e.ifindex),
            iface::fmt_mac(&e.mac),
            flags
        )?;
    }
    if entries.is_empty() {
        writeln!(out, "(no VIPs)")?;
    }
    let lease = maps.lease()?;
    let now = monotonic_ns();
    let lease = if lease == 0 {
        "never set".to_owned()
    } else if lease > now {
        format!("valid for {:?}", Duration::from_nanos(lease - now))
    } else {
        format!("expired {:?} ago", Duration::from_nanos(now - lease))
    };
    writeln!(out, "\nlease: {lease}")?;
    let mut links: Vec<String> = std::fs::read_dir(bpffs)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix(LINK_PIN_PREFIX)
                .map(str::to_owned)
        })
        .collect();
    links.sort();
    writeln!(
        out,
        "links: {}",
        if links.is_empty() {
            "(none)".to_owned()
        } else {
            links.join(", ")
        }
    )?;
    writeln!(out, "\ncounters (all CPUs):")?;
    let counters = maps.counters()?;
    for c in Counter::ALL {
        writeln!(out, "  {:<20} {}", c.name(), counters.get(c))?;
    }
    let tables = maps.slot_tables();
    if !tables.is_empty() {
        let clients = maps.clients();
        writeln!(
            out,
            "\nshared VIPs (active-active; {SLOTS} slots each, requesters hashed to a slot):"
        )?;
        for (vip, bits) in &tables {
            let held = bits.count();
            let seen: Vec<_> = clients.iter().filter(|c| c.vip == *vip).collect();
            let here = seen.iter().filter(|c| bits.contains(c.slot())).count();
            writeln!(
                out,
                "  {vip}: this node answers {held} slots ({:.1}%), {here} of the {} clients recorded",
                f64::from(held) * 100.0 / f64::from(SLOTS),
                seen.len()
            )?;
        }
        if !clients.is_empty() {
            writeln!(
                out,
                "\n  {:<40} {:<40} {:<18} {:<12} {:>5} HERE",
                "VIP", "CLIENT", "MAC", "INTERFACE", "SLOT"
            )?;
            for c in &clients {
                let here = tables.get(&c.vip).is_some_and(|b| b.contains(c.slot()));
                writeln!(
                    out,
                    "  {:<40} {:<40} {:<18} {:<12} {:>5} {}",
                    c.vip.to_string(),
                    c.addr.to_string(),
                    iface::fmt_mac(&c.mac),
                    iface::name_of(c.ifindex).unwrap_or_else(|| c.ifindex.to_string()),
                    c.slot(),
                    if here { "yes" } else { "no" }
                )?;
            }
        }
    }
    let per_vip = maps.vip_totals();
    if !per_vip.is_empty() {
        writeln!(out, "\nper VIP (all CPUs):")?;
        writeln!(out, "  {:<40} {:>12} {:>12}", "VIP", "REQUESTS", "REPLIES")?;
        for (vip, t) in &per_vip {
            writeln!(
                out,
                "  {:<40} {:>12} {:>12}",
                vip.to_string(),
                t.requests,
                t.responses
            )?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_cannot_be_announced_are_named() {
        for (addr, why) in [
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("127.0.0.5", "loopback"),
            ("::", "unspecified"),
            ("ff02::1", "multicast"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
        ] {
            let addr: IpAddr = addr.parse().expect("test address");
            let got = unannounceable(&addr).unwrap_or("accepted");
            assert!(got.contains(why), "{addr}: {got}");
        }
        for ok in ["10.0.0.1", "192.0.2.10", "2001:db8::10", "fd00::1"] {
            let addr: IpAddr = ok.parse().expect("test address");
            assert_eq!(unannounceable(&addr), None, "{addr}");
        }
    }
}
