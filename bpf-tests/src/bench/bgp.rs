//! BGP at scale, for the bench: how long FRR takes to hold 10,000 VIP routes from our speaker
//! (the real `lb-agent run` on a lab node, 10,000 Services allocated by the real controller),
//! beside the same 10,000 routes from GoBGP (`gobgpd` in the same node namespace, the routes
//! loaded from an MRT dump before the session exists), in the same run. Both are timed the
//! same way from FRR's side: from the first look that sees the session Established until
//! FRR's received-prefix count reaches 10,000.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::{
    PinDir, harness::agent::Agent, harness::group::allocate, harness::lab::Lab, peers::frr::Frr,
    peers::gobgp::GoBgp, unique,
};

pub const ROUTES: usize = 10_000;
const LIMIT: Duration = Duration::from_secs(120);

pub struct BgpFigures {
    /// From FRR enabling the session: ours and gobgpd's.
    pub ours: Fill,
    pub gobgp: Fill,
    pub rss_kb: u64,
    /// Agent start → all four peers hold every route, and the agent's RSS then.
    pub four_peers: Duration,
    pub four_peers_rss_kb: u64,
    /// BFD at 100 ms × 3: link cut → the route gone at FRR, and → the agent's BFD down.
    pub bfd_router: Vec<Duration>,
    pub bfd_agent: Vec<Duration>,
}

/// Link cuts timed for BFD.
const BFD_RUNS: usize = 5;
/// The BFD profile of the bench: 100 ms intervals, multiplier 3.
const BFD_DETECT: Duration = Duration::from_millis(300);

fn frr_conf(node: &str) -> String {
    format!(
        "frr defaults datacenter\nhostname bench\n!\nrouter bgp 65000\n bgp router-id 10.210.0.1\n \
         no bgp ebgp-requires-policy\n neighbor {node} remote-as 64512\n neighbor {node} timers connect 1\n!\n"
    )
}

/// (Established seen, prefixes received) for `node` at FRR.
fn at_frr(frr: &Frr, node: &str) -> (bool, u64) {
    let v = frr.json("show bgp ipv4 unicast summary json");
    let p = &v["peers"][node];
    (
        p["state"].as_str() == Some("Established"),
        p["pfxRcd"].as_u64().unwrap_or(0),
    )
}

/// How a session filled up, as FRR was seen by polling.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fill {
    /// From the trigger until first seen Established.
    pub up: Duration,
    /// From the trigger until first seen holding every route.
    pub full: Duration,
    /// The longest gap between two looks: the figures' resolution.
    pub poll: Duration,
}

/// Polls FRR until `node`'s session is up and has sent `ROUTES` prefixes.
fn time_to_full(frr: &Frr, node: &str, start: Instant) -> Result<Fill, String> {
    let mut up: Option<Duration> = None;
    let mut last = Duration::ZERO;
    let mut poll = Duration::ZERO;
    loop {
        let (established, received) = at_frr(frr, node);
        let now = start.elapsed();
        poll = poll.max(now - last);
        last = now;
        if established && up.is_none() {
            up = Some(now);
        }
        if let Some(t) = up
            && received as usize >= ROUTES
        {
            return Ok(Fill {
                up: t,
                full: now,
                poll,
            });
        }
        if now > LIMIT {
            return Err(format!("FRR holds {received} routes after {LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// FRR's configuration with the node's session administratively shut, so that both speakers
/// are measured from the same trigger: FRR enabling it (and connecting out at once).
fn frr_conf_shut(node: &str) -> String {
    frr_conf(node).replace(
        &format!(" neighbor {node} timers connect 1\n"),
        &format!(" neighbor {node} timers connect 1\n neighbor {node} shutdown\n"),
    )
}

/// `no neighbor NODE shutdown`; returns the instant it was given.
fn enable(frr: &Frr, node: &str) -> Instant {
    let at = Instant::now();
    frr.configure(&["router bgp 65000", &format!("no neighbor {node} shutdown")]);
    at
}

/// `services` Services in a BGP pool, advertised to a BGPPeer at each of `peers` (with
/// `peer_extra` in its spec).
fn config(lab: &Lab, peers: &[&str], peer_extra: &str, services: usize) -> String {
    let mut y = format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: scale, namespace: metallb-system}}\n\
         spec: {{addresses: [10.230.0.0/18]}}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {{name: scale, namespace: metallb-system}}\nspec: {{}}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata: {{name: fast, namespace: metallb-system}}\n\
         spec: {{receiveInterval: 100, transmitInterval: 100, detectMultiplier: 3}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-1}}\nstatus: {{addresses: [{{type: InternalIP, address: \"{}\"}}]}}\n",
        lab.nodes[0].ipv4
    );
    for (i, p) in peers.iter().enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: router{i}, namespace: metallb-system}}\n\
             spec: {{myASN: 64512, peerASN: 65000, peerAddress: {p}{peer_extra}}}\n"
        );
    }
    for i in 0..services {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n"
        );
    }
    y
}

/// An MRT TABLE_DUMP_V2 file (RFC 6396) of `/32` routes from AS `asn` via `next_hop`, the
/// form `gobgp mrt inject global` loads in bulk.
fn mrt(routes: impl Iterator<Item = Ipv4Addr>, next_hop: Ipv4Addr, asn: u32) -> Vec<u8> {
    fn record(out: &mut Vec<u8>, subtype: u16, body: &[u8]) {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&13u16.to_be_bytes());
        out.extend_from_slice(&subtype.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut out = Vec::new();
    // PEER_INDEX_TABLE: collector id, empty view name, one peer (IPv4, 4-octet AS).
    let mut peers = Vec::new();
    peers.extend_from_slice(&next_hop.octets());
    peers.extend_from_slice(&0u16.to_be_bytes());
    peers.extend_from_slice(&1u16.to_be_bytes());
    peers.push(0x02);
    peers.extend_from_slice(&next_hop.octets());
    peers.extend_from_slice(&next_hop.octets());
    peers.extend_from_slice(&asn.to_be_bytes());
    record(&mut out, 1, &peers);
    // ORIGIN IGP, AS_PATH [asn] (4-octet in TABLE_DUMP_V2), NEXT_HOP.
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 1];
    attrs.extend_from_slice(&asn.to_be_bytes());
    attrs.extend_from_slice(&[0x40, 3, 4]);
    attrs.extend_from_slice(&next_hop.octets());
    for (seq, ip) in routes.enumerate() {
        let mut rib = Vec::new();
        rib.extend_from_slice(&(seq as u32).to_be_bytes());
        rib.push(32);
        rib.extend_from_slice(&ip.octets());
        rib.extend_from_slice(&1u16.to_be_bytes());
        rib.extend_from_slice(&0u16.to_be_bytes());
        rib.extend_from_slice(&0u32.to_be_bytes());
        rib.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        rib.extend_from_slice(&attrs);
        record(&mut out, 2, &rib);
    }
    out
}

/// A configuration directory with the controller's allocations.
fn config_dir(yaml: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(unique("xdplb-bgp-bench"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("config.yaml"), yaml).map_err(|e| e.to_string())?;
    crate::write_secret(&dir.join("secret"), "bench-secret-0123456789abcdef\n")
        .map_err(|e| e.to_string())?;
    allocate(&dir);
    Ok(dir)
}

fn start_agent(lab: &Lab, dir: &std::path::Path, pins: &PinDir) -> Result<Agent, String> {
    Ok(Agent::run_node(
        &lab.nodes[0].ns,
        "node-1",
        dir,
        pins.path(),
        &[],
    ))
}

use crate::harness::agent::METRICS;

pub fn run() -> Result<BgpFigures, String> {
    let lab = Lab::new("bgb", 1);
    let node = lab.nodes[0].ipv4.clone();
    let node_ip: Ipv4Addr = node.parse().map_err(|e| format!("{e}"))?;

    // Ours.
    let dir = config_dir(&config(&lab, &["10.210.0.1"], "", ROUTES))?;
    let frr = Frr::start(&lab.client.ns, &frr_conf_shut(&node), false);
    let pins = PinDir::new("bgbpins");
    let mut agent = start_agent(&lab, &dir, &pins)?;
    // Ready: the plan is loaded and every route waits for the session.
    let loaded = Instant::now();
    let pending = || -> Option<f64> {
        let (_, body) =
            crate::harness::scrape::get(&lab.nodes[0].ns, METRICS.parse().ok()?, "/metrics")
                .ok()?;
        crate::harness::scrape::sample(
            &body,
            "metallb_bgp_pending_prefixes_total",
            &[("peer", "10.210.0.1:179")],
        )
    };
    while pending() != Some(ROUTES as f64) && loaded.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let timed = time_to_full(&frr, &node, enable(&frr, &node));
    let rss = crate::rss_kb(agent.child.id());
    agent.signal(libc::SIGTERM);
    let _ = agent.child.wait();
    let log = agent.log_text();
    let _ = std::fs::remove_dir_all(&dir);
    let ours = timed.map_err(|e| format!("xdplb: {e}\n{log}"))?;
    let rss_kb = rss?;
    drop(frr);

    // GoBGP, the same routes from the same namespace to a fresh FRR.
    let gconf = format!("[global.config]\n  as = 64512\n  router-id = \"{node}\"\n");
    let gobgp = GoBgp::start(&lab.nodes[0].ns, &gconf);
    // `gobgp mrt inject` exits before the tail of its stream is taken in (a few hundred of
    // 10,000 routes are lost each time), so the routes go in twice, forward and backward: the
    // second pass's lost tail is the first pass's head.
    let base = u32::from(Ipv4Addr::new(10, 230, 0, 0));
    let full = format!("Destination: {ROUTES},");
    let mut loaded = String::new();
    for backward in [false, true] {
        let dump = std::env::temp_dir().join(unique("gobgp-mrt"));
        let ips: Vec<Ipv4Addr> = (0..ROUTES as u32)
            .map(|i| Ipv4Addr::from(base + i))
            .collect();
        let order: Box<dyn Iterator<Item = Ipv4Addr>> = if backward {
            Box::new(ips.into_iter().rev())
        } else {
            Box::new(ips.into_iter())
        };
        std::fs::write(&dump, mrt(order, node_ip, 64512)).map_err(|e| e.to_string())?;
        gobgp.cli(&[
            "mrt",
            "inject",
            "global",
            dump.to_str().ok_or("utf-8 path")?,
        ]);
        let _ = std::fs::remove_file(&dump);
        std::thread::sleep(Duration::from_millis(500));
        loaded = gobgp.cli(&["global", "rib", "summary", "-a", "ipv4"]);
    }
    if !loaded.contains(&full) {
        return Err(format!("gobgp did not load the MRT dump: {loaded}"));
    }
    let frr = Frr::start(&lab.client.ns, &frr_conf_shut(&node), false);
    gobgp.cli(&["neighbor", "add", "10.210.0.1", "as", "65000"]);
    std::thread::sleep(Duration::from_secs(1));
    let theirs =
        time_to_full(&frr, &node, enable(&frr, &node)).map_err(|e| format!("gobgp: {e}"))?;
    drop(frr);
    drop(gobgp);
    let (four_peers, four_peers_rss_kb) = four_peers(&lab)?;
    let (bfd_router, bfd_agent) = bfd(&lab)?;
    Ok(BgpFigures {
        ours,
        gobgp: theirs,
        rss_kb,
        four_peers,
        four_peers_rss_kb,
        bfd_router,
        bfd_agent,
    })
}

/// The same 10,000 routes to four peers (four bgpd on 10.210.0.1-4 in the client namespace):
/// from the agent's start until every peer holds them all, and the agent's RSS then.
fn four_peers(lab: &Lab) -> Result<(Duration, u64), String> {
    let node = lab.nodes[0].ipv4.clone();
    let addrs = ["10.210.0.1", "10.210.0.2", "10.210.0.3", "10.210.0.4"];
    for a in &addrs[1..] {
        lab.client
            .ns
            .ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
    let routers: Vec<Frr> = addrs
        .iter()
        .map(|a| {
            let conf = frr_conf(&node)
                .replace("bgp router-id 10.210.0.1", &format!("bgp router-id {a}"))
                .replace(
                    &format!(" neighbor {node} timers connect 1\n"),
                    &format!(
                        " neighbor {node} timers connect 1\n neighbor {node} update-source {a}\n"
                    ),
                );
            Frr::bgpd_only(&lab.client.ns, &conf, a)
        })
        .collect();
    let dir = config_dir(&config(lab, &addrs, "", ROUTES))?;
    let pins = PinDir::new("bgb4pins");
    let started = Instant::now();
    let mut agent = start_agent(lab, &dir, &pins)?;
    let mut result = Ok(());
    for r in &routers {
        if let Err(e) = time_to_full(r, &node, started) {
            result = Err(e);
            break;
        }
    }
    let took = started.elapsed();
    let rss = crate::rss_kb(agent.child.id());
    agent.signal(libc::SIGTERM);
    let _ = agent.child.wait();
    let log = agent.log_text();
    let _ = std::fs::remove_dir_all(&dir);
    for a in &addrs[1..] {
        lab.client
            .ns
            .ip(&["addr", "del", &format!("{a}/24"), "dev", "eth0"]);
    }
    result.map_err(|e| format!("four peers: {e}\n{log}"))?;
    Ok((took, rss?))
}

/// BFD at 100 ms × 3 with FRR's bfdd: the node's link is cut `BFD_RUNS` times; each time, how
/// long until FRR has dropped the route, and until the agent reports its BFD session down.
fn bfd(lab: &Lab) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let node = lab.nodes[0].ipv4.clone();
    let conf = frr_conf(&node).replace(
        &format!(" neighbor {node} timers connect 1\n"),
        &format!(" neighbor {node} timers connect 1\n neighbor {node} bfd profile fast\n"),
    ) + "bfd\n profile fast\n  transmit-interval 100\n  receive-interval 100\n !\n!\n";
    let frr = Frr::start(&lab.client.ns, &conf, true);
    let dir = config_dir(&config(lab, &["10.210.0.1"], ", bfdProfile: fast", 1))?;
    let pins = PinDir::new("bgbfpins");
    let mut agent = start_agent(lab, &dir, &pins)?;
    let vip = "10.230.0.0/32";
    let routes = |f: &Frr| -> usize { f.paths("ipv4", vip).len() };
    let agent_bfd_up = || -> Option<bool> {
        let addr = METRICS.parse().ok()?;
        let (_, body) = crate::harness::scrape::get(&lab.nodes[0].ns, addr, "/metrics").ok()?;
        crate::harness::scrape::sample(&body, "metallb_bfd_session_up", &[("peer", "10.210.0.1")])
            .map(|v| v == 1.0)
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool, within: Duration| -> Result<(), String> {
        let start = Instant::now();
        while !ok() {
            if start.elapsed() > within {
                return Err(format!("BFD bench: {what} not within {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    let (mut router, mut ours) = (Vec::new(), Vec::new());
    let mut result = Ok(());
    for _ in 0..BFD_RUNS {
        let ready = wait(
            "BFD and the route up",
            &|| routes(&frr) == 1 && agent_bfd_up() == Some(true),
            Duration::from_secs(30),
        );
        if let Err(e) = ready {
            result = Err(e);
            break;
        }
        lab.segment.ip(&["link", "set", "p1", "down"]);
        let cut = Instant::now();
        let (mut gone, mut down) = (None, None);
        while (gone.is_none() || down.is_none()) && cut.elapsed() < Duration::from_secs(10) {
            if gone.is_none() && routes(&frr) == 0 {
                gone = Some(cut.elapsed());
            }
            if down.is_none() && agent_bfd_up() == Some(false) {
                down = Some(cut.elapsed());
            }
        }
        lab.segment.ip(&["link", "set", "p1", "up"]);
        match (gone, down) {
            (Some(g), Some(d)) => {
                router.push(g);
                ours.push(d);
            }
            _ => {
                result = Err("BFD bench: the cut was not detected within 10 s".to_owned());
                break;
            }
        }
    }
    agent.signal(libc::SIGTERM);
    let _ = agent.child.wait();
    let log = agent.log_text();
    let _ = std::fs::remove_dir_all(&dir);
    drop(frr);
    result.map_err(|e| format!("{e}\n{log}"))?;
    Ok((router, ours))
}

impl BgpFigures {
    pub fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (o, g) = (&self.ours, &self.gobgp);
        let resolution = ms(o.poll.max(g.poll));
        let fill = |f: &Fill| ms(f.full - f.up);
        println!(
            "| BGP: FRR enables the session → Established (ms) | {:.0} | gobgpd {:.0} | — | — |",
            ms(o.up),
            ms(g.up)
        );
        println!(
            "| BGP: Established → FRR holds {ROUTES} routes (ms; looks every ≤ {resolution:.0} ms) | {:.0} | gobgpd {:.0} | ≥ {:.1}× faster | faster than GoBGP |",
            fill(o),
            fill(g),
            fill(g) / fill(o).max(resolution)
        );
        println!(
            "| BGP: FRR enables the session → holds {ROUTES} routes (ms) | {:.0} | gobgpd {:.0} | {:.2}× | — |",
            ms(o.full),
            ms(g.full),
            ms(g.full) / ms(o.full).max(1e-9)
        );
        println!(
            "| BGP: agent RSS advertising {ROUTES} prefixes to 1 peer (MiB) | {:.1} | — | — | — |",
            self.rss_kb as f64 / 1024.0
        );
        println!(
            "| BGP: agent start → 4 peers hold {ROUTES} routes each (ms); RSS then (MiB) | {:.0}; {:.1} | — | — | — |",
            ms(self.four_peers),
            self.four_peers_rss_kb as f64 / 1024.0
        );
        let stats = |v: &[Duration]| {
            let mut v: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
            v.sort_by(f64::total_cmp);
            let at = |q: f64| {
                v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                    .copied()
                    .unwrap_or(0.0)
            };
            (at(0.5), at(1.0))
        };
        let (r50, rmax) = stats(&self.bfd_router);
        let (a50, amax) = stats(&self.bfd_agent);
        println!(
            "| BFD 100 ms × 3: link cut → route gone at FRR (ms, p50 / max of {BFD_RUNS}) | {r50:.0} / {rmax:.0} | configured detection {:.0} | {:.2}× | ≈ 1× |",
            ms(BFD_DETECT),
            r50 / ms(BFD_DETECT)
        );
        println!(
            "| BFD 100 ms × 3: link cut → agent's session down (ms, p50 / max) | {a50:.0} / {amax:.0} | configured detection {:.0} | {:.2}× | ≈ 1× |",
            ms(BFD_DETECT),
            a50 / ms(BFD_DETECT)
        );
    }
}
