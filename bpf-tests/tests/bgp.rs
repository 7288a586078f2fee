//! BGP against real routers: three agents (`lb-agent run`) in the lab's node namespaces peer
//! with FRR (zebra + bgpd) in the client namespace. FRR's RIB and the client's kernel routes
//! are what is checked: the VIPs with the nodes as next hops (3-way ECMP), communities, large
//! communities and the AS path, IPv6 VIPs over MP-BGP on the IPv4 sessions,
//! `externalTrafficPolicy: Local`, withdrawal when a Service goes, TCP MD5 passwords right and
//! wrong; an unnumbered session (BGPPeer `interface`) with FRR over a link-local-only link;
//! `localASN`; and the same advertisements seen by GoBGP and BIRD.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bpf_tests::{
    PinDir,
    harness::agent::Agent,
    harness::group::{METRICS, SECRET, allocate},
    harness::lab::Lab,
    harness::netns::NetNs,
    harness::scrape::sample,
    peers::bird::Bird,
    peers::frr::Frr,
    peers::gobgp::{self, GoBgp},
    privileged, unique,
};
use serde_json::Value;

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// FRR as AS 65000 on the client (10.210.0.1), the three nodes as eBGP neighbours in AS 64512,
/// IPv4 and IPv6 unicast on the IPv4 sessions, ECMP over up to 8 paths.
fn frr_conf(lab: &Lab, password: Option<&str>) -> String {
    let mut c = String::from(
        "frr defaults datacenter\nhostname router\n!\nrouter bgp 65000\n bgp router-id 10.210.0.1\n \
         no bgp ebgp-requires-policy\n neighbor NODES peer-group\n neighbor NODES remote-as 64512\n \
         neighbor NODES timers connect 1\n",
    );
    if let Some(pw) = password {
        c.push_str(&format!(" neighbor NODES password {pw}\n"));
    }
    for n in &lab.nodes {
        c.push_str(&format!(" neighbor {} peer-group NODES\n", n.ipv4));
    }
    c.push_str(
        " address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n \
         address-family ipv6 unicast\n  neighbor NODES activate\n  maximum-paths 8\n exit-address-family\n!\n",
    );
    c
}

/// Nodes (with both addresses), an IPv4 and an IPv6 pool advertised to the router with
/// communities, and `peers` (BGPPeer documents).
fn config(lab: &Lab, peers: &str, services: &[&str]) -> String {
    let mut y = String::from(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: v4, namespace: metallb-system}\n\
         spec: {addresses: [198.51.100.0/24]}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: v6, namespace: metallb-system}\n\
         spec: {addresses: [\"2001:db8:5::/120\"]}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: ad, namespace: metallb-system}\n\
         spec: {communities: [\"65000:100\", \"large:65000:1:2\"], localPref: 250}\n",
    );
    y.push_str(peers);
    for (i, n) in lab.nodes.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{k}, labels: {{kubernetes.io/hostname: node-{k}}}}}\n\
             status: {{addresses: [{{type: InternalIP, address: \"{}\"}}, {{type: InternalIP, address: \"{}\"}}]}}\n",
            n.ipv4,
            n.ipv6,
            k = i + 1
        ));
    }
    for s in services {
        let spec = match *s {
            "web6" => {
                "{type: LoadBalancer, ipFamilies: [IPv6], ipFamilyPolicy: SingleStack, ports: [{port: 80}]}"
            }
            "local" => "{type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 80}]}",
            _ => "{type: LoadBalancer, ports: [{port: 80}]}",
        };
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {s}, namespace: default}}\nspec: {spec}\n"
        ));
    }
    if services.contains(&"local") {
        y.push_str(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: local-1, namespace: default, labels: {kubernetes.io/service-name: local}}\n\
             addressType: IPv4\nendpoints: [{addresses: [10.1.0.2], nodeName: node-2, conditions: {ready: true}}]\n",
        );
    }
    y
}

fn peer(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: {name}, namespace: metallb-system}}\n\
         spec: {{myASN: 64512, peerASN: 65000, peerAddress: 10.210.0.1, holdTime: 9s, dualStackAddressFamily: true{extra}}}\n"
    )
}

/// Three agents and a router `R` (FRR or GoBGP) in the lab's client namespace.
struct Bgp<R> {
    // Dropped in this order: agents, then the router, then the namespaces.
    agents: Vec<Agent>,
    router: R,
    dir: PathBuf,
    pins: Vec<PinDir>,
    lab: Lab,
}

impl<R> Bgp<R> {
    fn start(tag: &str, peers: &str, services: &[&str], router: impl FnOnce(&Lab) -> R) -> Self {
        let lab = Lab::new(tag, 3);
        let dir = std::env::temp_dir().join(unique("xdplb-bgp"));
        std::fs::create_dir_all(&dir).expect("config dir");
        std::fs::write(dir.join("config.yaml"), config(&lab, peers, services)).expect("config");
        bpf_tests::write_secret(&dir.join("secret"), &format!("{SECRET}\n")).expect("secret");
        allocate(&dir);
        let router = router(&lab);
        let pins: Vec<PinDir> = (0..3).map(|i| PinDir::new(&format!("{tag}{i}"))).collect();
        let agents = (0..3)
            .map(|i| start_agent(&lab, &dir, i, &pins[i]))
            .collect();
        Bgp {
            agents,
            router,
            dir,
            pins,
            lab,
        }
    }

    fn logs(&self) -> String {
        Agent::logs(&self.agents)
    }

    /// Waits until `up` says each of `nodes` has its session Established.
    fn established(&self, nodes: &[usize], up: impl Fn(&R, &str) -> bool) {
        for &i in nodes {
            let ip = &self.lab.nodes[i].ipv4;
            let deadline = Instant::now() + Duration::from_secs(15);
            while !up(&self.router, ip) {
                assert!(
                    Instant::now() < deadline,
                    "{ip}: no session within 15 s\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn vip(&self, service: &str) -> String {
        bpf_tests::harness::group::vip_of(&self.dir, &format!("default/{service}"))
    }

    fn metrics(&self, i: usize) -> String {
        let addr = METRICS.parse().expect("metrics address");
        match bpf_tests::harness::scrape::get(&self.lab.nodes[i].ns, addr, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("/metrics: {other:?}"),
        }
    }
}

impl Bgp<Frr> {
    /// After `wait` (FRR retries every second: several tries), node `i`'s session is not up.
    fn still_down_after(&self, i: usize, wait: Duration) {
        std::thread::sleep(wait);
        let ip = &self.lab.nodes[i].ipv4;
        assert_ne!(self.router.peer_state(ip), "Established", "{}", self.logs());
    }
}

fn frr_up(f: &Frr, ip: &str) -> bool {
    f.peer_state(ip) == "Established"
}

fn start_agent(lab: &Lab, dir: &Path, i: usize, pins: &PinDir) -> Agent {
    let mut a = Agent::run_node(&lab.nodes[i].ns, NODES[i], dir, pins.path(), &[]);
    a.wait_for_log("running;", Duration::from_secs(20));
    a
}

/// FRR's paths for `prefix` in `family` (`ipv4` / `ipv6`).
fn paths(frr: &Frr, family: &str, prefix: &str) -> Vec<Value> {
    frr.paths(family, prefix)
}

fn next_hops(paths: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = paths
        .iter()
        .filter_map(|p| p["nexthops"][0]["ip"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

fn kernel_nexthops(lab: &Lab, v6: bool, prefix: &str) -> usize {
    let mut cmd = lab.client.ns.exec("ip");
    if v6 {
        cmd.arg("-6");
    }
    let out = cmd
        .args(["route", "show", prefix])
        .output()
        .expect("ip route");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().filter(|l| l.contains("nexthop via")).count()
}

#[test]
fn frr_holds_every_vip_from_every_node_with_the_advertised_attributes() {
    if !privileged("frr_holds_every_vip_from_every_node_with_the_advertised_attributes") {
        return;
    }
    let services = ["web", "web6", "local"];
    let bgp = Bgp::start("bgpa", &peer("router", ""), &services, |lab| {
        Frr::start(&lab.client.ns, &frr_conf(lab, None), false)
    });
    bgp.established(&[0, 1, 2], frr_up);
    let (web, web6, local) = (bgp.vip("web"), bgp.vip("web6"), bgp.vip("local"));
    let nodes_v4: Vec<String> = bgp.lab.nodes.iter().map(|n| n.ipv4.clone()).collect();
    let nodes_v6: Vec<String> = bgp.lab.nodes.iter().map(|n| n.ipv6.clone()).collect();

    let p = bgp
        .router
        .wait(Duration::from_secs(10), "3 paths for web", |f| {
            let p = paths(f, "ipv4", &format!("{web}/32"));
            (p.len() == 3).then_some(p)
        });
    assert_eq!(next_hops(&p), nodes_v4);
    for path in &p {
        assert_eq!(path["aspath"]["string"], "64512", "{path}");
        assert_eq!(path["community"]["string"], "65000:100", "{path}");
        assert_eq!(path["largeCommunity"]["string"], "65000:1:2", "{path}");
        assert!(
            path.get("locPrf").is_none(),
            "LOCAL_PREF is for iBGP only: {path}"
        );
    }
    // zebra installed one route with three next hops: ECMP over the nodes.
    assert_eq!(
        kernel_nexthops_eventually(&bgp.lab, false, &web, 3),
        3,
        "client kernel routes for {web}"
    );

    // The IPv6 VIP over MP-BGP on the IPv4 sessions, next hop the nodes' IPv6 addresses.
    let p6 = bgp
        .router
        .wait(Duration::from_secs(10), "3 paths for web6", |f| {
            let p = paths(f, "ipv6", &format!("{web6}/128"));
            (p.len() == 3).then_some(p)
        });
    assert_eq!(next_hops(&p6), nodes_v6);
    assert_eq!(
        kernel_nexthops_eventually(&bgp.lab, true, &web6, 3),
        3,
        "client kernel routes for {web6}"
    );

    // externalTrafficPolicy: Local: only node-2 holds an endpoint.
    let pl = paths(&bgp.router, "ipv4", &format!("{local}/32"));
    assert_eq!(next_hops(&pl), vec![nodes_v4[1].clone()], "{pl:?}");

    let m = bgp.metrics(0);
    let label = [("peer", "10.210.0.1:179")];
    assert_eq!(
        sample(&m, "metallb_bgp_session_up", &label),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "metallb_bgp_announced_prefixes_total", &label),
        Some(2.0),
        "node-1 announces web and web6"
    );
    assert!(sample(&m, "metallb_bgp_updates_total", &label).is_some_and(|n| n >= 2.0));
    // MetalLB's announced gauge: node-1 says it announces web and web6 over BGP, not `local`
    // (its endpoint is on node-2, which says so).
    let announced = |m: &str, svc: &str, ip: &str, node: &str| {
        sample(
            m,
            "metallb_speaker_announced",
            &[
                ("ip", ip),
                ("node", node),
                ("protocol", "bgp"),
                ("service", svc),
            ],
        )
    };
    assert_eq!(
        announced(&m, "default/web", &web, "node-1"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        announced(&m, "default/web6", &web6, "node-1"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        announced(&m, "default/local", &local, "node-1"),
        None,
        "{m}"
    );
    let m2 = bgp.metrics(1);
    assert_eq!(
        announced(&m2, "default/local", &local, "node-2"),
        Some(1.0),
        "{m2}"
    );

    // The Service goes: every node withdraws it; the others stay.
    std::fs::write(
        bgp.dir.join("config.yaml"),
        config(&bgp.lab, &peer("router", ""), &["web6", "local"]),
    )
    .expect("config");
    allocate(&bgp.dir);
    bgp.router
        .wait(Duration::from_secs(10), "web withdrawn", |f| {
            paths(f, "ipv4", &format!("{web}/32"))
                .is_empty()
                .then_some(())
        });
    assert_eq!(paths(&bgp.router, "ipv6", &format!("{web6}/128")).len(), 3);
    // The sessions stayed up through the change.
    let m = bgp.metrics(0);
    assert_eq!(announced(&m, "default/web", &web, "node-1"), None, "{m}");
    assert_eq!(sample(&m, "metallb_bgp_session_up", &label), Some(1.0));
    let log = bgp.logs();
    assert!(!log.contains("down:"), "no session went down:\n{log}");
}

#[test]
fn md5_passwords_must_match_and_source_address_is_used() {
    if !privileged("md5_passwords_must_match_and_source_address_is_used") {
        return;
    }
    // node-1 and node-3 know the password (one inline, one from a Secret); node-2 has another.
    // node-1 speaks from a second address of its own (sourceAddress), the one FRR knows.
    let peers = format!(
        "{}{}{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bgp-pw, namespace: metallb-system}}\n\
         type: kubernetes.io/basic-auth\nstringData: {{password: s3cret}}\n",
        peer(
            "right",
            ", password: s3cret, sourceAddress: 10.210.0.21, nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-1}}]"
        ),
        peer(
            "secret",
            ", passwordSecret: {name: bgp-pw}, nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-3}}]"
        ),
        peer(
            "wrong",
            ", password: other, nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-2}}]"
        ),
    );
    let bgp = Bgp::start("bgpm", &peers, &["web"], |lab| {
        lab.nodes[0]
            .ns
            .ip(&["addr", "add", "10.210.0.21/24", "dev", "eth0"]);
        let conf = frr_conf(lab, Some("s3cret")).replace(
            " neighbor 10.210.0.11 peer-group NODES\n",
            " neighbor 10.210.0.21 peer-group NODES\n",
        );
        Frr::start(&lab.client.ns, &conf, false)
    });
    bgp.established(&[2], frr_up);
    bgp.established(&[0], |f: &Frr, _| frr_up(f, "10.210.0.21"));
    bgp.still_down_after(1, Duration::from_secs(3));
    let web = bgp.vip("web");
    let p = paths(&bgp.router, "ipv4", &format!("{web}/32"));
    assert_eq!(
        next_hops(&p),
        vec!["10.210.0.13".to_owned(), "10.210.0.21".to_owned()],
        "node-1's next hop is its session's address"
    );
}

/// TTL security (GTSM) through the BGPPeer annotation `xdplb.io/ttl-security-hops`: with the
/// router configured alike the session forms (both sides send TTL 255 and require it); a
/// router that sends the usual eBGP TTL 1 gets no session with a node that asks for it (the
/// kernel drops its segments, and its own connections are not taken); and without the
/// annotation nothing changes for a router that does not use it either.
#[test]
fn ttl_security_holds_segments_to_the_hop_count() {
    if !privileged("ttl_security_holds_segments_to_the_hop_count") {
        return;
    }
    let gtsm = |name: &str, node: &str| {
        peer(
            name,
            &format!(", nodeSelectors: [{{matchLabels: {{kubernetes.io/hostname: {node}}}}}]"),
        )
        .replace(
            &format!("metadata: {{name: {name}, "),
            &format!(
                "metadata: {{name: {name}, annotations: {{xdplb.io/ttl-security-hops: \"1\"}}, "
            ),
        )
    };
    let peers = format!(
        "{}{}{}",
        gtsm("both", "node-1"),
        peer(
            "plain",
            ", nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-2}}]"
        ),
        gtsm("ours", "node-3"),
    );
    assert!(peers.contains("ttl-security-hops"), "{peers}");
    let bgp = Bgp::start("bgpt", &peers, &["web"], |lab| {
        let conf = frr_conf(lab, None).replace(
            " neighbor 10.210.0.11 peer-group NODES\n",
            " neighbor 10.210.0.11 peer-group NODES\n neighbor 10.210.0.11 ttl-security hops 1\n",
        );
        Frr::start(&lab.client.ns, &conf, false)
    });
    bgp.established(&[0, 1], frr_up);
    // node-3's connections and FRR's both run every second (timers connect 1).
    bgp.still_down_after(2, Duration::from_secs(5));
    let web = bgp.vip("web");
    let p = paths(&bgp.router, "ipv4", &format!("{web}/32"));
    assert_eq!(
        next_hops(&p),
        vec!["10.210.0.11".to_owned(), "10.210.0.12".to_owned()],
    );
}

/// GoBGP as an iBGP collector in AS 64512 (LOCAL_PREF reaches it), listening on port 1790
/// and never connecting itself: the sessions exist only if the agents use `peerPort`.
fn gobgp_conf(lab: &Lab) -> String {
    let mut c = String::from(
        "[global.config]\n  as = 64512\n  router-id = \"10.210.0.1\"\n  port = 1790\n",
    );
    for n in &lab.nodes {
        c.push_str(&format!(
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = 64512\n\
             [neighbors.transport.config]\n    passive-mode = true\n\
             [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv4-unicast\"\n\
             [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv6-unicast\"\n",
            n.ipv4
        ));
    }
    c
}

#[test]
fn gobgp_on_another_port_gets_local_pref_and_ipv6_over_ibgp() {
    if !privileged("gobgp_on_another_port_gets_local_pref_and_ipv6_over_ibgp") {
        return;
    }
    let peers = "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: ibgp, namespace: metallb-system}\n\
                 spec: {myASN: 64512, peerASN: 64512, peerAddress: 10.210.0.1, peerPort: 1790, dualStackAddressFamily: true}\n";
    let bgp = Bgp::start("bgpg", peers, &["web", "web6"], |lab| {
        GoBgp::start(&lab.client.ns, &gobgp_conf(lab))
    });
    bgp.established(&[0, 1, 2], |g: &GoBgp, ip| {
        g.state(ip) == gobgp::ESTABLISHED
    });
    let web = bgp.vip("web");
    let deadline = Instant::now() + Duration::from_secs(10);
    let paths = loop {
        let rib = bgp.router.rib("ipv4");
        let p = rib
            .get(&format!("{web}/32"))
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        if p.len() == 3 || Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        paths.len(),
        3,
        "{:?}\n{}",
        bgp.router.rib("ipv4"),
        bgp.router.log()
    );
    for p in &paths {
        let attrs = p["attrs"].as_array().cloned().unwrap_or_default();
        let of = |t: u64| {
            attrs
                .iter()
                .find(|a| a["type"].as_u64() == Some(t))
                .cloned()
        };
        assert_eq!(
            of(5).map(|a| a["value"].clone()),
            Some(Value::from(250)),
            "{p}"
        );
        let path = of(2).map(|a| a["as_paths"].clone()).unwrap_or(Value::Null);
        assert!(
            path.as_array().is_none_or(|a| a.is_empty()),
            "iBGP: empty AS path: {p}"
        );
        assert_eq!(
            of(8).map(|a| a["communities"].clone()),
            Some(Value::from(vec![65000u64 << 16 | 100])),
            "{p}"
        );
        assert!(of(32).is_some(), "large community: {p}");
    }
    let web6 = bgp.vip("web6");
    let rib6 = bgp.router.rib("ipv6");
    let p6 = rib6
        .get(&format!("{web6}/128"))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    assert_eq!(p6.len(), 3, "{rib6:?}");
}

#[test]
fn graceful_restart_keeps_the_routes_while_an_agent_restarts() {
    if !privileged("graceful_restart_keeps_the_routes_while_an_agent_restarts") {
        return;
    }
    let mut bgp = Bgp::start(
        "bgpr",
        &peer("router", ", enableGracefulRestart: true"),
        &["web"],
        |lab| {
            let conf = frr_conf(lab, None).replace(
                " no bgp ebgp-requires-policy\n",
                " no bgp ebgp-requires-policy\n bgp graceful-restart\n",
            );
            Frr::start(&lab.client.ns, &conf, false)
        },
    );
    bgp.established(&[0, 1, 2], frr_up);
    let web = format!("{}/32", bgp.vip("web"));
    bgp.router.wait(Duration::from_secs(10), "3 paths", |f| {
        (paths(f, "ipv4", &web).len() == 3).then_some(())
    });
    // SIGTERM: the agent closes its sessions without a NOTIFICATION.
    let a = bgp.agents.remove(0);
    a.signal(libc::SIGTERM);
    let mut a = a;
    let _ = a.child.wait();
    let node1 = bgp.lab.nodes[0].ipv4.clone();
    bgp.router
        .wait(Duration::from_secs(10), "node-1 down", |f| {
            (!frr_up(f, &node1)).then_some(())
        });
    // While it is away FRR keeps node-1's path, marked stale.
    for _ in 0..10 {
        let p = paths(&bgp.router, "ipv4", &web);
        assert_eq!(p.len(), 3, "{p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = paths(&bgp.router, "ipv4", &web);
    assert!(
        p.iter().any(|p| p["stale"] == Value::Bool(true)),
        "node-1's path is stale: {p:?}"
    );
    let pins = &bgp.pins[0];
    let again = start_agent(&bgp.lab, &bgp.dir, 0, pins);
    bgp.agents.insert(0, again);
    bgp.established(&[0], frr_up);
    bgp.router
        .wait(Duration::from_secs(10), "fresh paths", |f| {
            let p = paths(f, "ipv4", &web);
            (p.len() == 3 && p.iter().all(|p| p.get("stale").is_none())).then_some(())
        });
}

#[test]
fn bfd_takes_a_cut_node_out_of_ecmp_long_before_the_hold_time() {
    if !privileged("bfd_takes_a_cut_node_out_of_ecmp_long_before_the_hold_time") {
        return;
    }
    let peers = format!(
        "---\napiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata: {{name: fast, namespace: metallb-system}}\n\
         spec: {{receiveInterval: 100, transmitInterval: 100, detectMultiplier: 3}}\n{}",
        peer("router", ", bfdProfile: fast")
    );
    let bgp = Bgp::start("bgpf", &peers, &["web"], |lab| {
        // The bfd block goes after `router bgp`: bgpd stops reading at its closing `exit`.
        let conf = frr_conf(lab, None).replace(
            " neighbor NODES remote-as 64512\n",
            " neighbor NODES remote-as 64512\n neighbor NODES bfd profile fast\n",
        ) + "bfd\n profile fast\n  transmit-interval 100\n  receive-interval 100\n  detect-multiplier 3\n !\n!\n";
        Frr::start(&lab.client.ns, &conf, true)
    });
    bgp.established(&[0, 1, 2], frr_up);
    let bfd_up = |f: &Frr| -> usize {
        f.json("show bfd peers json")
            .as_array()
            .map_or(0, |a| a.iter().filter(|p| p["status"] == "up").count())
    };
    bgp.router
        .wait(Duration::from_secs(15), "3 BFD sessions up", |f| {
            (bfd_up(f) == 3).then_some(())
        });
    let web = format!("{}/32", bgp.vip("web"));
    bgp.router.wait(Duration::from_secs(10), "3 paths", |f| {
        (paths(f, "ipv4", &web).len() == 3).then_some(())
    });
    let m = bgp.metrics(0);
    let label = [("peer", "10.210.0.1")];
    assert_eq!(
        sample(&m, "metallb_bfd_session_up", &label),
        Some(1.0),
        "{m}"
    );
    assert!(sample(&m, "metallb_bfd_control_packet_input", &label).is_some_and(|n| n > 0.0));

    // Review finding 7: Down packets in the router's name that do not name node-1's session
    // (Your Discriminator 0, or a guessed one), sent from the segment with TTL 255, as a
    // host there can. The session and the paths stay.
    spoof_bfd_down(&bgp.lab, &bgp.lab.nodes[0].ipv4);
    std::thread::sleep(Duration::from_millis(500));
    let m = bgp.metrics(0);
    assert_eq!(
        sample(&m, "metallb_bfd_session_up", &label),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "metallb_bfd_session_down_events", &label).unwrap_or(0.0),
        0.0,
        "a spoofed packet took the session down\n{m}"
    );
    assert_eq!(paths(&bgp.router, "ipv4", &web).len(), 3);

    // Cut node-1 off the segment: BGP alone would notice after its 9 s hold time.
    bgp.lab.segment.ip(&["link", "set", "p1", "down"]);
    let cut = Instant::now();
    bgp.router
        .wait(Duration::from_secs(3), "node-1 out of ECMP", |f| {
            (paths(f, "ipv4", &web).len() == 2).then_some(())
        });
    eprintln!("node-1 left ECMP {:?} after the cut", cut.elapsed());
    assert_eq!(kernel_nexthops_eventually(&bgp.lab, false, &web, 2), 2);

    // Back: BFD, then BGP, come up again.
    bgp.lab.segment.ip(&["link", "set", "p1", "up"]);
    bgp.router
        .wait(Duration::from_secs(20), "node-1 back", |f| {
            (paths(f, "ipv4", &web).len() == 3).then_some(())
        });
    let m = bgp.metrics(0);
    assert!(
        sample(&m, "metallb_bfd_session_down_events", &label).is_some_and(|n| n >= 1.0),
        "{m}"
    );
}

/// Sends BFD Control packets saying Down to `node`'s single-hop port, from the router's
/// address in the client namespace (TTL 255): one with Your
/// Discriminator 0, and some guessing one.
fn spoof_bfd_down(lab: &Lab, node: &str) {
    use lb_agent::bfd::packet::{Control, State};
    let to = format!("{node}:3784");
    lab.client.ns.within(move || {
        let sock = std::net::UdpSocket::bind("10.210.0.1:0").expect("bind");
        sock.set_ttl(255).expect("ttl");
        for your_discr in [0u32, 1, 2, 0x9e37_79b2, 0x9e37_79b3, u32::MAX] {
            let c = Control {
                diag: 0,
                state: State::Down,
                poll: false,
                fin: false,
                cpi: false,
                demand: false,
                detect_mult: 3,
                my_discr: 4242,
                your_discr,
                desired_min_tx: 100_000,
                required_min_rx: 100_000,
                required_min_echo_rx: 0,
            };
            for _ in 0..5 {
                sock.send_to(&c.encode(), &to).expect("send");
            }
        }
    });
}

/// The client's kernel route's next hops for `prefix`, once it has `want` of them or after
/// 3 s.
fn kernel_nexthops_eventually(lab: &Lab, v6: bool, prefix: &str, want: usize) -> usize {
    let ip = prefix.split('/').next().unwrap_or(prefix);
    let mut n = 0;
    for _ in 0..30 {
        n = kernel_nexthops(lab, v6, ip);
        if n == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    n
}

#[test]
fn ebgp_multihop_with_multihop_bfd_reaches_a_router_behind_a_hop_and_single_hop_does_not() {
    if !privileged(
        "ebgp_multihop_with_multihop_bfd_reaches_a_router_behind_a_hop_and_single_hop_does_not",
    ) {
        return;
    }
    let far_peer = |name: &str, extra: &str| {
        format!(
            "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: {name}, namespace: metallb-system}}\n\
             spec: {{myASN: 64512, peerASN: 65000, peerAddress: 10.211.0.2{extra}}}\n"
        )
    };
    let profile = "---\napiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata: {name: fast, namespace: metallb-system}\n\
                   spec: {receiveInterval: 100, transmitInterval: 100}\n";
    let peers = profile.to_owned()
        + &far_peer(
            "multihop",
            ", ebgpMultiHop: true, bfdProfile: fast, nodeSelectors: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-1, node-2]}]}]",
        )
        + &far_peer(
            "single",
            ", nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-3}}]",
        );
    // (FRR, its namespace): FRR is dropped first.
    let bgp = Bgp::start("bgph", &peers, &["web"], |lab| {
        let far = lab.routed_host("bgpfar").ns;
        let conf = frr_conf(lab, None)
            .replace("bgp router-id 10.210.0.1", "bgp router-id 10.211.0.2")
            .replace(
                " neighbor NODES remote-as 64512\n",
                " neighbor NODES remote-as 64512\n neighbor NODES ebgp-multihop 2\n neighbor NODES bfd profile fast\n",
            )
            + "bfd\n profile fast\n  transmit-interval 100\n  receive-interval 100\n !\n!\n";
        (Frr::start(&far, &conf, true), far)
    });
    bgp.established(&[0, 1], |(f, _): &(Frr, NetNs), ip| frr_up(f, ip));
    let frr = &bgp.router.0;
    let web = format!("{}/32", bgp.vip("web"));
    frr.wait(Duration::from_secs(10), "2 paths at the far router", |f| {
        (paths(f, "ipv4", &web).len() == 2).then_some(())
    });
    // Multihop BFD (UDP 4784, TTL checked against minimumTtl 254) is up with both.
    let multihop_up = |f: &Frr| -> usize {
        f.json("show bfd peers json").as_array().map_or(0, |a| {
            a.iter()
                .filter(|p| p["status"] == "up" && p["multihop"] == true)
                .count()
        })
    };
    frr.wait(Duration::from_secs(15), "2 multihop BFD sessions up", |f| {
        (multihop_up(f) == 2).then_some(())
    });
    // node-3 sends with TTL 1 (and answers FRR's own connections with TTL 1): no session.
    std::thread::sleep(Duration::from_secs(3));
    let node3 = bgp.lab.nodes[2].ipv4.clone();
    assert_ne!(frr.peer_state(&node3), "Established", "{}", bgp.logs());
    assert_eq!(
        next_hops(&paths(frr, "ipv4", &web)),
        vec![bgp.lab.nodes[0].ipv4.clone(), bgp.lab.nodes[1].ipv4.clone()],
        "{}\n{}\n{}",
        frr.vtysh("show bfd peers"),
        frr.vtysh("show bfd peers counters"),
        bgp.logs()
    );
}

#[test]
fn an_ipv6_session_carries_both_families() {
    if !privileged("an_ipv6_session_carries_both_families") {
        return;
    }
    let peers = "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: v6, namespace: metallb-system}\n\
                 spec: {myASN: 64512, peerASN: 65000, peerAddress: \"fd00:210::1\", dualStackAddressFamily: true}\n";
    let bgp = Bgp::start("bgp6", peers, &["web", "web6"], |lab| {
        let mut conf = frr_conf(lab, None);
        for n in &lab.nodes {
            conf = conf.replace(
                &format!(" neighbor {} peer-group NODES\n", n.ipv4),
                &format!(" neighbor {} peer-group NODES\n", n.ipv6),
            );
        }
        let conf = conf.replace(
            " address-family ipv4 unicast\n",
            " address-family ipv4 unicast\n  neighbor NODES activate\n",
        );
        Frr::start(&lab.client.ns, &conf, false)
    });
    let v6: Vec<String> = bgp.lab.nodes.iter().map(|n| n.ipv6.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !v6.iter().all(|ip| frr_up(&bgp.router, ip)) {
        assert!(Instant::now() < deadline, "IPv6 sessions: {}", bgp.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (web, web6) = (bgp.vip("web"), bgp.vip("web6"));
    let p6 = bgp
        .router
        .wait(Duration::from_secs(10), "web6 from 3 nodes", |f| {
            let p = paths(f, "ipv6", &format!("{web6}/128"));
            (p.len() == 3).then_some(p)
        });
    assert_eq!(next_hops(&p6), v6);
    let p4 = bgp
        .router
        .wait(Duration::from_secs(10), "web from 3 nodes", |f| {
            let p = paths(f, "ipv4", &format!("{web}/32"));
            (p.len() == 3).then_some(p)
        });
    let v4: Vec<String> = bgp.lab.nodes.iter().map(|n| n.ipv4.clone()).collect();
    assert_eq!(
        next_hops(&p4),
        v4,
        "IPv4 routes carry the nodes' IPv4 next hops"
    );
}

#[test]
fn an_unnumbered_session_runs_over_link_local_addresses_with_ipv4_via_ipv6() {
    if !privileged("an_unnumbered_session_runs_over_link_local_addresses_with_ipv4_via_ipv6") {
        return;
    }
    // node-1 and FRR on a point-to-point link with no address but the link-local ones; the
    // BGPPeer names the interface, as with MetalLB's FRR mode.
    let peers = "---\napiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata: {name: fast, namespace: metallb-system}\n\
                 spec: {receiveInterval: 100, transmitInterval: 100}\n\
                 ---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: tor, namespace: metallb-system}\n\
                 spec: {myASN: 64512, peerASN: 65000, interface: un0, bfdProfile: fast, \
                 nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-1}}]}\n";
    let bgp = Bgp::start("bgpu", peers, &["web", "web6"], |lab| {
        let rt = NetNs::new(&unique("bgpurt"));
        let node = &lab.nodes[0].ns;
        bpf_tests::harness::netns::ip(&[
            "link", "add", "un0", "netns", &node.name, "type", "veth", "peer", "name", "rt1",
            "netns", &rt.name,
        ]);
        for (ns, dev) in [(node, "un0"), (&rt, "rt1")] {
            ns.exec("sysctl")
                .args(["-qw", &format!("net.ipv6.conf.{dev}.accept_dad=0")])
                .status()
                .expect("sysctl");
            ns.ip(&["link", "set", dev, "up"]);
        }
        rt.ip(&["link", "set", "lo", "up"]);
        let conf = "frr defaults datacenter\nhostname tor\n!\ninterface rt1\n ipv6 nd ra-interval 1\n \
                    no ipv6 nd suppress-ra\n!\nrouter bgp 65000\n bgp router-id 10.99.0.1\n \
                    no bgp ebgp-requires-policy\n neighbor rt1 interface remote-as external\n \
                    neighbor rt1 timers connect 1\n neighbor rt1 bfd profile fast\n \
                    address-family ipv6 unicast\n  neighbor rt1 activate\n exit-address-family\n!\n\
                    bfd\n profile fast\n  transmit-interval 100\n  receive-interval 100\n !\n!\n";
        (Frr::start(&rt, conf, true), rt)
    });
    let frr = &bgp.router.0;
    frr.wait(Duration::from_secs(20), "the unnumbered session", |f| {
        (f.peer_state("rt1") == "Established").then_some(())
    });
    let (web, web6) = (bgp.vip("web"), bgp.vip("web6"));
    // IPv4 with an IPv6 (link-local) next hop, and IPv6: both from node-1 alone.
    let p4 = frr.wait(Duration::from_secs(10), "web at the router", |f| {
        let p = paths(f, "ipv4", &format!("{web}/32"));
        (p.len() == 1).then_some(p)
    });
    let hop = p4[0]["nexthops"][0]["ip"].as_str().unwrap_or("").to_owned();
    assert!(hop.starts_with("fe80:"), "next hop {hop}: {p4:?}");
    frr.wait(Duration::from_secs(10), "web6 at the router", |f| {
        (paths(f, "ipv6", &format!("{web6}/128")).len() == 1).then_some(())
    });
    // The kernel forwards to the VIP through the link-local neighbour (RFC 8950 routes).
    let rt = &bgp.router.1;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = rt
            .exec("ip")
            .args(["route", "show", &web])
            .output()
            .expect("ip route");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("via inet6 fe80:") && text.contains("dev rt1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kernel route for {web}: {text:?}\n{}",
            bgp.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent reports the session under the interface's name.
    let m = bgp.metrics(0);
    assert_eq!(
        sample(&m, "metallb_bgp_session_up", &[("peer", "un0")]),
        Some(1.0),
        "{m}"
    );
    // BFD runs over the same link-local addresses, both ends up.
    frr.wait(Duration::from_secs(10), "BFD up at the router", |f| {
        f.json("show bfd peers json")
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["status"] == "up"))
            .then_some(())
    });
    let m = bgp.metrics(0);
    let up = m
        .lines()
        .filter(|l| l.starts_with("metallb_bfd_session_up{") && l.contains("fe80:"))
        .any(|l| l.ends_with(" 1"));
    assert!(up, "{m}");
}

#[test]
fn local_asn_is_the_as_the_router_sees() {
    if !privileged("local_asn_is_the_as_the_router_sees") {
        return;
    }
    // node-1 speaks as AS 64600 to this router (FRR's local-as ... no-prepend replace-as,
    // as MetalLB sets it up): in the OPEN, and alone in the AS path.
    let peers = "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: tor, namespace: metallb-system}\n\
                 spec: {myASN: 64512, localASN: 64600, peerASN: 65000, peerAddress: 10.210.0.1, \
                 nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-1}}]}\n";
    let bgp = Bgp::start("bgpl", peers, &["web"], |lab| {
        let conf = format!(
            "frr defaults datacenter\nhostname router\n!\nrouter bgp 65000\n bgp router-id 10.210.0.1\n \
             no bgp ebgp-requires-policy\n neighbor {} remote-as 64600\n neighbor {} timers connect 1\n!\n",
            lab.nodes[0].ipv4, lab.nodes[0].ipv4
        );
        Frr::start(&lab.client.ns, &conf, false)
    });
    bgp.established(&[0], frr_up);
    let web = format!("{}/32", bgp.vip("web"));
    let p = bgp
        .router
        .wait(Duration::from_secs(10), "web from node-1", |f| {
            let p = paths(f, "ipv4", &web);
            (p.len() == 1).then_some(p)
        });
    assert_eq!(p[0]["aspath"]["string"], "64600", "{p:?}");
}

/// BIRD 2 as the router: the same advertisements as FRR and GoBGP see.
fn bird_conf(lab: &Lab) -> String {
    let mut c = String::from(
        "router id 10.210.0.1;\nprotocol device {}\n\
         template bgp nodes {\n  local 10.210.0.1 as 65000;\n  hold time 9;\n  \
         ipv4 { import all; export none; };\n  ipv6 { import all; export none; };\n}\n",
    );
    for (i, n) in lab.nodes.iter().enumerate() {
        c.push_str(&format!(
            "protocol bgp n{} from nodes {{ neighbor {} as 64512; }}\n",
            i + 1,
            n.ipv4
        ));
    }
    c
}

#[test]
fn bird_holds_every_vip_from_every_node_with_the_advertised_attributes() {
    if !privileged("bird_holds_every_vip_from_every_node_with_the_advertised_attributes") {
        return;
    }
    let bgp = Bgp::start("bgpb", &peer("router", ""), &["web", "web6"], |lab| {
        Bird::start(&lab.client.ns, &bird_conf(lab))
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !["n1", "n2", "n3"].iter().all(|p| bgp.router.established(p)) {
        assert!(
            Instant::now() < deadline,
            "BIRD sessions: {}\n{}\n{}",
            bgp.router.cli(&["show", "protocols"]),
            bgp.router.log(),
            bgp.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (prefix, hops) in [
        (
            format!("{}/32", bgp.vip("web")),
            bgp.lab
                .nodes
                .iter()
                .map(|n| n.ipv4.clone())
                .collect::<Vec<_>>(),
        ),
        (
            format!("{}/128", bgp.vip("web6")),
            bgp.lab.nodes.iter().map(|n| n.ipv6.clone()).collect(),
        ),
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let routes = loop {
            let r = bgp.router.routes(&prefix);
            if r.matches("unicast [").count() == 3 {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix} at BIRD: {r}\n{}",
                bgp.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        for hop in &hops {
            assert!(routes.contains(&format!("via {hop} ")), "{hop} in {routes}");
        }
        assert_eq!(
            routes.matches("BGP.as_path: 64512\n").count(),
            3,
            "{routes}"
        );
        assert_eq!(
            routes.matches("BGP.community: (65000,100)").count(),
            3,
            "{routes}"
        );
        assert_eq!(
            routes.matches("BGP.large_community: (65000, 1, 2)").count(),
            3,
            "{routes}"
        );
    }
}
