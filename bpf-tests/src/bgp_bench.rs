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

use crate::{PinDir, agent::Agent, frr::Frr, gobgp::GoBgp, group::allocate, lab::Lab, unique};

pub const ROUTES: usize = 10_000;
const LIMIT: Duration = Duration::from_secs(120);

pub struct BgpFigures {
    /// Our speaker: agent start → session Established at FRR.
    pub establish: Duration,
    /// Established → 10,000 prefixes at FRR.
    pub ours: Duration,
    pub gobgp: Duration,
    pub rss_kb: u64,
}

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

/// Polls FRR until `node`'s session is up and has sent `ROUTES` prefixes: the time from the
/// first look that saw it Established, and the instant that look happened.
fn time_to_full(frr: &Frr, node: &str) -> Result<(Duration, Instant), String> {
    let start = Instant::now();
    let mut up: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let (established, received) = at_frr(frr, node);
        if established && up.is_none() {
            up = Some(now);
        }
        if let Some(t) = up
            && received as usize >= ROUTES
        {
            return Ok((now - t, t));
        }
        if now - start > LIMIT {
            return Err(format!("FRR holds {received} routes after {LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn config(lab: &Lab) -> String {
    let mut y = format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: scale, namespace: metallb-system}}\n\
         spec: {{addresses: [10.230.0.0/18]}}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {{name: scale, namespace: metallb-system}}\nspec: {{}}\n---\n\
         apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: router, namespace: metallb-system}}\n\
         spec: {{myASN: 64512, peerASN: 65000, peerAddress: 10.210.0.1}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-1}}\nstatus: {{addresses: [{{type: InternalIP, address: \"{}\"}}]}}\n",
        lab.nodes[0].ipv4
    );
    for i in 0..ROUTES {
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

pub fn run() -> Result<BgpFigures, String> {
    let lab = Lab::new("bgb", 1);
    let node = lab.nodes[0].ipv4.clone();
    let node_ip: Ipv4Addr = node.parse().map_err(|e| format!("{e}"))?;

    // Ours.
    let dir = std::env::temp_dir().join(unique("xdplb-bgp-bench"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("config.yaml"), config(&lab)).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("secret"), "bench-secret-0123456789abcdef\n")
        .map_err(|e| e.to_string())?;
    allocate(&dir);
    let frr = Frr::start(&lab.client.ns, &frr_conf(&node), false);
    let pins = PinDir::new("bgbpins");
    let started = Instant::now();
    let mut agent = Agent::start(
        &lab.nodes[0].ns,
        &[
            "run",
            "--node-name",
            "node-1",
            "--config-dir",
            dir.to_str().ok_or("utf-8 path")?,
            "--interface",
            "eth0",
            "--bpffs",
            pins.path().to_str().ok_or("utf-8 path")?,
            "--metrics-addr",
            "127.0.0.1:7472",
        ],
    );
    let timed = time_to_full(&frr, &node);
    let rss = crate::rss_kb(agent.child.id());
    agent.signal(libc::SIGTERM);
    let _ = agent.child.wait();
    let log = agent.log_text();
    let _ = std::fs::remove_dir_all(&dir);
    let (ours, up_at) = timed.map_err(|e| format!("xdplb: {e}\n{log}"))?;
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
    let frr = Frr::start(&lab.client.ns, &frr_conf(&node), false);
    gobgp.cli(&["neighbor", "add", "10.210.0.1", "as", "65000"]);
    let (theirs, _) = time_to_full(&frr, &node).map_err(|e| format!("gobgp: {e}"))?;
    drop(frr);
    drop(gobgp);
    Ok(BgpFigures {
        establish: up_at - started,
        ours,
        gobgp: theirs,
        rss_kb,
    })
}

impl BgpFigures {
    pub fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| BGP: Established → FRR holds {ROUTES} routes (ms) | {:.0} | gobgpd {:.0} | {:.1}× faster | faster than GoBGP |",
            ms(self.ours),
            ms(self.gobgp),
            ms(self.gobgp) / ms(self.ours).max(1e-9)
        );
        println!(
            "| BGP: agent start → session Established, {ROUTES} Services configured (ms) | {:.0} | — | — | — |",
            ms(self.establish)
        );
        println!(
            "| BGP: agent RSS advertising {ROUTES} prefixes to 1 peer (MiB) | {:.1} | — | — | — |",
            self.rss_kb as f64 / 1024.0
        );
    }
}
