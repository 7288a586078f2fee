//! `cargo xtask demo`: a short tour of what xdplb does today, in a throwaway lab: a client and
//! three nodes on one bridge, the standalone controller handing out addresses from MetalLB's
//! own objects, an agent per node electing the owner of each VIP and answering ARP/NDP from
//! XDP, a real TCP request, and a node killed mid-flight; then Layer 3: the agents' BGP
//! speaker advertising a routed pool to FRR, ECMP over the nodes, and BFD taking a failed
//! node out of the router's ECMP; and active-active Layer 2: one VIP's clients spread over the
//! three nodes, the dead node's clients (only) moved to the others.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bpf_tests::{
    PinDir,
    bench::failover::PROBE,
    harness::agent::{Agent, Controller, agent_bin, workspace_bin},
    harness::fleet::{self, Fleet},
    harness::lab::Lab,
    harness::netns::{NetNs, mac_str},
    harness::prober::{Prober, takeover},
    peers::frr::Frr,
};
use lb_controller::allocations;

/// The example configuration the demo runs from (relative to the workspace root).
const EXAMPLE: &str = "deploy/examples/standalone";
const FILES: [&str; 6] = [
    "pool.yaml",
    "services.yaml",
    "shared.yaml",
    "nodes.yaml",
    "bgp.yaml",
    "secret",
];
/// Client namespaces of the active-active step.
const FLEET: usize = 30;

fn say(title: &str, text: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("\n\x1b[1m== {title}\x1b[0m");
    } else {
        println!("\n== {title}");
    }
    for line in text.lines() {
        println!("   {line}");
    }
}

fn show(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text.lines() {
        println!("   | {line}");
    }
    Ok(text)
}

/// Kills the controller when the demo ends, however it ends.
/// An HTTP responder on port 8080 of every node, saying which node answered.
fn serve_hello(lab: &Lab, names: &[&'static str]) -> Result<()> {
    for (node, name) in lab.nodes.iter().zip(names) {
        let name = *name;
        let listener = node
            .ns
            .within(|| TcpListener::bind(("0.0.0.0", 8080)))
            .context("listen on port 8080")?;
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut request = [0u8; 512];
                let _ = conn.read(&mut request);
                let body = format!("hello from {name}\n");
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }
    Ok(())
}

fn http_get(from: &NetNs, vip: &'static str) -> Result<String> {
    let response = from.within(move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(
            &(
                vip.parse::<std::net::IpAddr>()
                    .map_err(std::io::Error::other)?,
                8080,
            )
                .into(),
            Duration::from_secs(2),
        )?;
        stream.write_all(format!("GET / HTTP/1.0\r\nHost: {vip}\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        stream.read_to_string(&mut out)?;
        Ok(out)
    })?;
    Ok(response)
}

/// FRR's paths for `vip`/32.
fn paths(frr: &Frr, vip: &str) -> Vec<serde_json::Value> {
    frr.paths("ipv4", &format!("{vip}/32"))
}

/// Waits until FRR has `n` paths for `vip`, at most `within`.
fn wait_paths(frr: &Frr, vip: &str, n: usize, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    while paths(frr, vip).len() != n {
        if start.elapsed() > within {
            bail!("the router does not have {n} paths for {vip} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(start.elapsed())
}

/// Waits until the kernel route to `vip` in `ns` has `n` next hops; returns it as printed.
fn wait_route(ns: &NetNs, vip: &str, n: usize, within: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        let out = ns.exec("ip").args(["route", "show", vip]).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let hops = text.lines().filter(|l| l.contains("nexthop")).count();
        if hops == n {
            return Ok(text);
        }
        if start.elapsed() > within {
            bail!("the kernel route to {vip} does not have {n} next hops after {within:?}: {text}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Step 2: the standalone controller allocates from the example directory. Returns the
/// running controller and web's IPv4 and IPv6 addresses.
fn controller_step(dir: &std::path::Path) -> Result<(Controller, String, String)> {
    let example = std::env::current_dir()
        .context("current directory")?
        .join(EXAMPLE);
    std::fs::create_dir_all(dir).context("config directory")?;
    for file in FILES {
        std::fs::copy(example.join(file), dir.join(file))
            .with_context(|| format!("copy {EXAMPLE}/{file}"))?;
    }
    // The example's secret is a published placeholder, which agents refuse.
    bpf_tests::write_secret(&dir.join("secret"), &bpf_tests::random_secret()?)
        .context("writing a random secret")?;
    say(
        "2. The configuration: MetalLB's own objects",
        &format!(
            "{EXAMPLE}/ holds an IPAddressPool (ten IPv4 and ten IPv6\n\
             addresses), an L2Advertisement, two Services (`web`, dual-stack; `dns`, asking for\n\
             10.210.0.105), the three Nodes with their addresses, and a placeholder secret (the\n\
             demo writes a random one in its copy: agents refuse the published placeholder).\n\
             lb-controller validate checks them with MetalLB's rules:"
        ),
    );
    let bin = workspace_bin("lb-controller");
    show(Command::new(&bin).arg("validate").arg(dir))?;
    println!(
        "\n   lb-controller run --config-dir watches the directory and writes\n   \
         status/allocations.yaml (atomically) for the agents:"
    );
    let controller = Controller(
        Command::new(&bin)
            .args(["run", "--metrics-addr", "127.0.0.1:0", "--config-dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start lb-controller")?,
    );
    let path = allocations::path(dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&path).context("the controller wrote no allocations")?;
    for line in text.lines() {
        println!("   | {line}");
    }
    let written = allocations::read(dir)?;
    let web = written
        .allocations
        .iter()
        .find(|e| e.service == "default/web")
        .context("no allocation for default/web")?;
    let v4 = web.ips.iter().find(|ip| ip.is_ipv4());
    let v6 = web.ips.iter().find(|ip| ip.is_ipv6());
    match (v4, v6) {
        (Some(v4), Some(v6)) => Ok((controller, v4.to_string(), v6.to_string())),
        _ => bail!("default/web did not get both families: {:?}", web.ips),
    }
}

fn main() -> Result<()> {
    if !bpf_tests::privileged("xdplb-demo") {
        bail!("the demo needs root and a bpf filesystem (it creates network namespaces)");
    }
    say(
        "xdplb",
        "A bare-metal LoadBalancer whose Layer 2 answers come from XDP: ARP and IPv6 neighbour\n\
         solicitations for a VIP are answered in the NIC driver, before the kernel allocates\n\
         anything, from a BPF map the agent keeps current. It reads MetalLB's configuration,\n\
         and here runs without Kubernetes, as a keepalived replacement for plain hosts.",
    );

    say(
        "1. A lab",
        "A bridge joins a client (10.210.0.1) and three nodes (10.210.0.11-13), each in its own\n\
         network namespace: one L2 segment, 10.210.0.0/24 and fd00:210::/64. (Native XDP\n\
         replies on a veth only arrive when the bridge end runs an XDP program too, so the\n\
         bridge ports get a pass-through one; real NICs need nothing of the sort.)\n\
         The client is also a router: real FRR (AS 65000, with BFD) peers with the nodes, and\n\
         routes for a host one hop beyond it (10.211.0.2), out in the network.",
    );
    let lab = Lab::new("demo", 3);
    // Dropped before the lab: the router's daemons, then the host behind it.
    let outside = lab.routed_host("demoout");
    let router = Frr::start(
        &lab.client.ns,
        &bpf_tests::peers::frr::lab_router_conf(&lab),
        true,
    );
    // Spread flows over the ECMP paths by ports too, not only by addresses.
    show(
        lab.client
            .ns
            .exec("sysctl")
            .args(["-w", "net.ipv4.fib_multipath_hash_policy=1"]),
    )?;
    let names: [&'static str; 3] = ["node-1", "node-2", "node-3"];
    let macs: BTreeMap<String, &'static str> = (0..3)
        .map(|i| (mac_str(&lab.node_mac(i)), names[i]))
        .collect();
    for (mac, name) in &macs {
        println!("   {name} has MAC {mac}");
    }

    let dir = std::env::temp_dir().join(bpf_tests::unique("xdplb-demo-config"));
    let (controller, vip4, vip6) = controller_step(&dir)?;
    // Lives as long as the demo; the namespace helpers run closures on threads of their own.
    let (vip4, vip6): (&'static str, &'static str) = (
        Box::leak(vip4.into_boxed_str()),
        Box::leak(vip6.into_boxed_str()),
    );

    say(
        "3. An agent on every node",
        "lb-agent run --node-name node-N --config-dir DIR --interface eth0\n\
         Each agent loads the XDP program, sends the others a heartbeat every 10 ms (UDP 7946,\n\
         HMAC-SHA256 with the shared secret), and computes for every Service MetalLB's owner\n\
         among the live nodes: the same answer on every node, so there is nothing to negotiate.\n\
         The owner puts the VIPs in its XDP maps and on xdplb0, and announces them.",
    );
    let pins: Vec<PinDir> = (0..3).map(|i| PinDir::new(&format!("demo{i}"))).collect();
    let dir_s = dir.to_str().context("utf-8 config path")?.to_owned();
    let mut agents: Vec<Option<Agent>> = Vec::new();
    for (i, node) in lab.nodes.iter().enumerate() {
        let pin = pins[i]
            .path()
            .to_str()
            .context("utf-8 pin path")?
            .to_owned();
        let mut agent = Agent::start(
            &node.ns,
            &[
                "run",
                "--node-name",
                names[i],
                "--config-dir",
                &dir_s,
                "--interface",
                "eth0",
                "--bpffs",
                &pin,
                "--mode",
                "xdp-native",
            ],
        );
        agent.wait_for_log("running;", Duration::from_secs(20));
        agents.push(Some(agent));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let owner = loop {
        let who = lab.answerers(vip4, "0.2");
        if let [one] = who.iter().collect::<Vec<_>>().as_slice()
            && let Some(name) = names.iter().find(|n| **n == one.as_str())
        {
            break *name;
        }
        if Instant::now() > deadline {
            bail!("nobody answers for {vip4}");
        }
    };
    for (i, agent) in agents.iter().enumerate() {
        if let Some(a) = agent {
            for line in a.log_text().lines().filter(|l| l.contains("taking over")) {
                let short = line.split("INFO ").nth(1).unwrap_or(line);
                println!("   {}: {short}", names[i]);
            }
        }
    }
    println!("   => web ({vip4}, {vip6}) is announced by {owner}");

    say(
        "4. The client asks who has web's IPv4 address (real arping)",
        "",
    );
    show(
        lab.client
            .ns
            .exec("arping")
            .args(["-c", "3", "-w", "3", "-I", "eth0", vip4]),
    )?;
    say(
        "5. The client solicits web's IPv6 address (real ndisc6)",
        "",
    );
    show(
        lab.client
            .ns
            .exec("ndisc6")
            .args(["-1", "-r", "3", "-w", "500", vip6, "eth0"]),
    )?;

    say(
        "6. The VIP really serves: an HTTP request from the client",
        "Every node runs a small HTTP server on port 8080 that says its name; the request goes\n\
         to the VIP, so the node that owns it answers.",
    );
    serve_hello(&lab, &names)?;
    for line in http_get(&lab.client.ns, vip4)?.lines() {
        println!("   | {line}");
    }

    let shop: &'static str =
        Box::leak(bpf_tests::harness::group::vip_of(&dir, "default/shop").into_boxed_str());
    say(
        "7. Active-active Layer 2: one VIP, every node",
        &format!(
            "MetalLB answers a VIP from one node. `shop` ({shop}) carries the annotation\n\
             xdplb.io/l2-mode: active-active, so every node answers it, each for its share of\n\
             the clients: the agents compute the same 4096-slot table, and the XDP program\n\
             hashes the requester's address to a slot and answers only its own. {FLEET} clients\n\
             (a namespace each, 10.210.0.160-189) ping {shop}; their kernels resolve it:"
        ),
    );
    let fleet = Fleet::attach(&lab, "demofl", FLEET);
    let mut served: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
    let mut by_client = Vec::new();
    for i in 0..FLEET {
        let node = fleet
            .resolve(i, shop)
            .and_then(|m| macs.get(&m).copied())
            .unwrap_or("nobody");
        served.entry(node).or_default().push(i);
        by_client.push(node);
    }
    for (node, clients) in &served {
        let list: Vec<String> = clients
            .iter()
            .map(|i| format!(".{}", usize::from(fleet::FIRST) + i))
            .collect();
        println!(
            "   {node} answers {:>2} clients: {}",
            clients.len(),
            list.join(" ")
        );
    }
    println!("   (In single-owner mode one node would answer all {FLEET}.)");

    let api: &'static str =
        Box::leak(bpf_tests::harness::group::vip_of(&dir, "default/api").into_boxed_str());
    say(
        "8. Layer 3: a routed pool over BGP",
        &format!(
            "bgp.yaml adds a pool (198.51.100.10-19) advertised by BGP to the router, a BGPPeer\n\
             with a BFD profile (100 ms, x3), and the Service `api`, which got {api}. Each agent\n\
             runs its own BGP speaker (no FRR on the nodes): all three advertise {api}/32 with\n\
             themselves as next hop, and the router spreads the traffic over them (ECMP).",
        ),
    );
    wait_paths(&router, api, 3, Duration::from_secs(20))?;
    show(Command::new("vtysh").args(["-N", &router.name, "-c", "show bgp summary"]))?;
    show(Command::new("vtysh").args([
        "-N",
        &router.name,
        "-c",
        &format!("show bgp ipv4 unicast {api}/32"),
    ]))?;
    println!("   The router's kernel route (installed by FRR's zebra):");
    show(lab.client.ns.exec("ip").args(["route", "show", api]))?;
    println!("   Twelve HTTP requests from 10.211.0.2, beyond the router, to {api}:8080:");
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..12 {
        let reply = http_get(&outside.ns, api)?;
        if let Some(line) = reply.lines().find(|l| l.starts_with("hello")) {
            *served.entry(line.to_owned()).or_default() += 1;
        }
    }
    for (line, n) in &served {
        println!("   | {line}  x{n}");
    }

    // A node that does not own web at Layer 2, so the next steps' story stays the same.
    let cut = (0..3)
        .find(|i| names[*i] != owner)
        .context("a node other than the owner")?;
    say(
        &format!("9. {}'s link fails", names[cut]),
        "Its bridge port goes down, as when a cable or a switch port fails. BGP alone would\n\
         notice after its 9 s hold time; BFD notices after 3 missed packets (300 ms), the\n\
         agent and the router both tear the session down, and the router drops the node\n\
         from ECMP.",
    );
    let port = format!("p{}", cut + 1);
    lab.segment.ip(&["link", "set", &port, "down"]);
    let gone = wait_paths(&router, api, 2, Duration::from_secs(10))?;
    // zebra updates the kernel a moment after BGP: show the route once it has followed.
    let cut_at = Instant::now() - gone;
    let route = wait_route(&lab.client.ns, api, 2, Duration::from_secs(5))?;
    println!(
        "   => the router has 2 BGP paths for {api} {:.0} ms after the cut, and its kernel route\n   \
         2 next hops {:.0} ms after it:",
        gone.as_secs_f64() * 1e3,
        cut_at.elapsed().as_secs_f64() * 1e3
    );
    for line in route.lines() {
        println!("   | {line}");
    }
    lab.segment.ip(&["link", "set", &port, "up"]);
    let back = wait_paths(&router, api, 3, Duration::from_secs(30))?;
    println!(
        "   The link comes back: BFD, then BGP, come up again; 3 paths after {:.1} s.",
        back.as_secs_f64()
    );
    // The membership sees the node again before the next step.
    std::thread::sleep(Duration::from_millis(500));

    let index = names
        .iter()
        .position(|n| *n == owner)
        .context("owner index")?;
    say(
        &format!("10. {owner} dies"),
        &format!(
            "SIGKILL to {owner}'s agent, as if the host crashed: no goodbye. Its pinned XDP\n\
             program is still attached, but its entries are leased and the lease is no longer\n\
             renewed, so it falls silent; the others stop hearing its heartbeats, declare it\n\
             dead after 30 ms and the next node in MetalLB's order takes web over, with\n\
             gratuitous ARP and unsolicited NA. The client sends an ARP request every 10 ms, as\n\
             `cargo xtask bench` does: the figure is from the kill to the first reply from\n\
             another node."
        ),
    );
    let owner_mac = lab.node_mac(index);
    let prober = Prober::start(
        &lab.client.ns,
        "eth0",
        lab.client.ipv4.parse::<Ipv4Addr>()?.octets(),
        vip4.parse::<Ipv4Addr>()?.octets(),
        PROBE,
    );
    std::thread::sleep(Duration::from_millis(100));
    let killed_at = Instant::now();
    if let Some(mut agent) = agents[index].take() {
        let _ = agent.child.kill();
        let _ = agent.child.wait();
    }
    // While the client probes web, the shared VIP: the survivors tell exactly the dead
    // node's clients (unicast ARP replies to the clients they recorded), and nobody else's
    // entry changes.
    let orphans: Vec<usize> = (0..FLEET).filter(|i| by_client[*i] == owner).collect();
    let dead_mac: Vec<&String> = macs
        .iter()
        .filter(|(_, n)| **n == owner)
        .map(|(m, _)| m)
        .collect();
    let moved_at = loop {
        let stuck = orphans.iter().filter(|i| {
            fleet
                .neighbor(**i, shop)
                .is_none_or(|m| dead_mac.contains(&&m))
        });
        if stuck.count() == 0 {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() > Duration::from_secs(5) {
            bail!("{owner}'s clients of {shop} were not moved");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The prober ran meanwhile; give it the bench's 800 ms at least.
    std::thread::sleep(
        (killed_at + Duration::from_millis(800)).saturating_duration_since(Instant::now()),
    );
    let replies = prober.finish();
    let took = takeover(&replies, killed_at, owner_mac)
        .with_context(|| format!("nobody took {vip4} over"))?;
    let new_owner = replies
        .iter()
        .find(|(at, mac)| *at >= killed_at && *mac != owner_mac)
        .and_then(|(_, mac)| macs.get(&mac_str(mac)).copied())
        .unwrap_or("?");
    println!(
        "   => {new_owner} answers for {vip4} {:.0} ms after the kill (the README's failover\n   \
         figures are this, over many kills)",
        took.as_secs_f64() * 1e3
    );
    show(
        lab.client
            .ns
            .exec("ndisc6")
            .args(["-1", "-r", "3", "-w", "500", vip6, "eth0"]),
    )?;
    let kept = (0..FLEET)
        .filter(|i| by_client[*i] != owner)
        .filter(|i| {
            fleet.neighbor(*i, shop).and_then(|m| macs.get(&m).copied()) == Some(by_client[*i])
        })
        .count();
    println!(
        "   shop ({shop}, active-active): {owner}'s {} clients moved to the survivors within {:.0} ms\n   \
         of the kill (no broadcast: each was told by unicast); {kept} of the other {} kept their MAC.",
        orphans.len(),
        moved_at.as_secs_f64() * 1e3,
        FLEET - orphans.len()
    );
    for line in http_get(&lab.client.ns, vip4)?
        .lines()
        .filter(|l| l.starts_with("hello"))
    {
        println!("   | {line}");
    }

    let new_index = names
        .iter()
        .position(|n| *n == new_owner)
        .context("index")?;
    let pin_dir = pins[new_index].path().to_str().context("utf-8")?.to_owned();
    say(
        &format!("11. What {new_owner}'s data path holds: lb-agent maps"),
        "The VIPs it owns now, marked leased (shop's also shared, with this node's slots and the\n\
         clients it recorded); the lease it renews every heartbeat; the counters.",
    );
    show(
        lab.nodes[new_index]
            .ns
            .enter(agent_bin().to_str().context("utf-8")?)
            .args(["maps", "--bpffs", &pin_dir]),
    )?;

    say(
        "12. Non-revertive failover (opt-in)",
        "By MetalLB's rule a VIP goes back to its preferred node when that node returns, so\n\
         clients change MAC twice per failure. With `xdplb.io/l2-preempt: \"false\"` on the\n\
         L2Advertisement it stays where it went. Two fresh labs of three nodes, one with the\n\
         annotation: the owner is killed, started again 800 ms later, and a client probing\n\
         every 10 ms records who answers.",
    );
    for (sticky, label) in [
        (true, "xdplb.io/l2-preempt: \"false\""),
        (false, "MetalLB's rule     "),
    ] {
        let seen =
            bpf_tests::bench::failover::kill_and_return(sticky).map_err(anyhow::Error::msg)?;
        println!(
            "   {label}: {} ({} MAC change{})",
            seen.join(" → "),
            seen.len().saturating_sub(1),
            if seen.len() == 2 { "" } else { "s" }
        );
    }

    say(
        "13. Finding out why",
        "`kubectl xdplb` answers \"who announces my IP?\" and \"why is it not answered?\" from the\n\
         API in a cluster; pointed at this directory it gives the same answers from the\n\
         manifests and the controller's allocations (the same code).",
    );
    let plugin = bpf_tests::harness::agent::workspace_bin("kubectl-xdplb");
    let config_dir = dir.to_string_lossy().into_owned();
    for args in [
        vec!["status", "--config-dir", &config_dir],
        vec!["why", "default/web", "--config-dir", &config_dir],
    ] {
        println!("   $ kubectl xdplb {}", args[..args.len() - 2].join(" "));
        let out = std::process::Command::new(&plugin)
            .args(&args)
            .output()
            .context("kubectl-xdplb")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("   {line}");
        }
    }

    say(
        "14. Done",
        "SIGTERM to the other agents: each says goodbye and withdraws its VIPs. The lab, the\n\
         pins and the configuration copy go with this process.",
    );
    for agent in agents.into_iter().flatten() {
        agent.stop();
    }
    drop(controller);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
