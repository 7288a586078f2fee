//! What this node says over BGP, from the metallb.io objects (MetalLB's semantics): a session
//! to every BGPPeer whose `nodeSelectors` select the node, and on each the addresses of the
//! pools a BGPAdvertisement selects for this node and that peer, aggregated to the
//! advertisement's length, with its communities and (iBGP) LOCAL_PREF. Every eligible node
//! advertises every address, so the router spreads traffic over them (ECMP); with
//! `externalTrafficPolicy: Local` only nodes holding a ready endpoint do.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use lb_controller::{
    config::{
        community::Community,
        gtsm::{self, Hops},
        manifest::Objects,
        passwords,
        rules::duration,
        selector::{self, Advertisement},
        types::{BFDProfileSpec, BGPAdvertisement, DynamicAsn, v1beta2::BGPPeer},
    },
    plan::PlanEntry,
};

use super::rib_out::{RouteAttrs, Routes};
use super::session::{PeerAs, Settings};
use crate::inputs::{EXCLUDE_LABEL, Inputs};

/// MetalLB's defaults.
const HOLD_TIME: u16 = 90;
const CONNECT_TIME: Duration = Duration::from_secs(30);
const BGP_PORT: u16 = 179;
/// How long a router keeps our routes while the agent restarts, when graceful restart is on.
const RESTART_TIME: u16 = 120;

/// One session this node runs, and what it advertises on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPlan {
    /// For an unnumbered peer, `::` until its link-local address is found
    /// ([`super::unnumbered::resolve`]).
    pub address: IpAddr,
    /// Unnumbered (BGPPeer `interface`): the session runs over this interface's IPv6
    /// link-local addresses, IPv4 routes with IPv6 next hops (RFC 8950).
    pub interface: Option<String>,
    /// The interface index a link-local `address` is scoped to.
    pub scope: u32,
    pub port: u16,
    pub source: Option<IpAddr>,
    /// TCP MD5 (RFC 2385) key.
    pub password: Option<String>,
    /// eBGP to a peer more than one hop away: TTL 255 instead of 1.
    pub multihop: bool,
    /// TTL security (the BGPPeer's `xdplb.io/ttl-security-hops`): TTL 255 out, at least
    /// `min_ttl` in, and connections only from our side.
    pub ttl_security: Option<Hops>,
    pub settings: Settings,
    /// Next hop for the other family than the session's: this node's address of that family.
    pub node_v4: Option<Ipv4Addr>,
    pub node_v6: Option<Ipv6Addr>,
    /// The BFD session that guards this one (BGPPeer `bfdProfile`).
    pub bfd: Option<crate::bfd::Request>,
    /// Shared between peers that carry the same routes (the common case).
    pub routes: Arc<Routes>,
}

impl PeerPlan {
    /// Whether going from `self` to `other` needs a new session (anything but the routes).
    pub fn same_session(&self, other: &PeerPlan) -> bool {
        let strip = |p: &PeerPlan| PeerPlan {
            routes: Arc::default(),
            ..p.clone()
        };
        strip(self) == strip(other)
    }
}

/// `namespace/name` of the BGPPeer → its plan.
pub type Plan = BTreeMap<String, PeerPlan>;

/// What the BGP side keeps of the objects (a small part, like [`Inputs`] for Layer 2).
#[derive(Clone, Debug, Default)]
pub struct BgpInputs {
    pub peers: Vec<BGPPeer>,
    pub advertisements: Vec<BGPAdvertisement>,
    /// Community alias → value.
    pub aliases: BTreeMap<String, String>,
    /// `namespace/name` of a basic-auth Secret → its password.
    pub passwords: BTreeMap<String, String>,
    /// Node name → its InternalIP addresses.
    pub node_addresses: BTreeMap<String, Vec<IpAddr>>,
    /// BFDProfile name → its timers.
    pub bfd_profiles: BTreeMap<String, BFDProfileSpec>,
}

fn addresses(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

impl BgpInputs {
    pub fn new(objects: &Objects) -> Self {
        let passwords = objects
            .secrets
            .iter()
            .filter_map(|s| {
                let key = format!(
                    "{}/{}",
                    s.namespace().unwrap_or_else(|| "default".into()),
                    s.name_any()
                );
                let password = String::from_utf8(passwords::password_of(s)?).ok()?;
                Some((key, password))
            })
            .collect();
        BgpInputs {
            peers: objects.peers.clone(),
            advertisements: objects.bgp_advertisements.clone(),
            aliases: objects
                .communities
                .iter()
                .flat_map(|c| c.spec.communities.iter())
                .map(|a| (a.name.clone(), a.value.clone()))
                .collect(),
            passwords,
            node_addresses: objects
                .nodes
                .iter()
                .map(|n| (n.name_any(), addresses(n)))
                .collect(),
            bfd_profiles: objects
                .bfd_profiles
                .iter()
                .map(|p| (p.name_any(), p.spec.clone()))
                .collect(),
        }
    }
}

fn key(peer: &BGPPeer) -> String {
    format!(
        "{}/{}",
        peer.namespace().unwrap_or_else(|| "default".into()),
        peer.name_any()
    )
}

fn seconds(text: Option<&str>) -> Option<u16> {
    let d = duration(text?).ok()?;
    Some(u16::try_from(d.as_secs()).unwrap_or(u16::MAX))
}

fn attrs(ad: &BGPAdvertisement, aliases: &BTreeMap<String, String>) -> RouteAttrs {
    let mut a = RouteAttrs {
        local_pref: ad.spec.local_pref.filter(|lp| *lp != 0),
        ..RouteAttrs::default()
    };
    // Validation has refused unknown aliases and bad values; none reach here.
    for c in ad
        .spec
        .communities
        .iter()
        .filter_map(|c| Community::resolve(c, aliases).ok())
    {
        match c {
            Community::Standard(std) => {
                a.communities.insert(std);
            }
            Community::Large(large) => {
                a.large_communities.insert(large);
            }
        }
    }
    a
}

/// The peer's address; `::` for an unnumbered one (found at run time).
fn peer_address(peer: &BGPPeer) -> Option<IpAddr> {
    match (&peer.spec.peer_address, &peer.spec.interface) {
        (Some(a), _) => a.parse().ok(),
        (None, Some(_)) => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        (None, None) => None,
    }
}

fn settings(peer: &BGPPeer, node_ips: &[IpAddr], node: &str) -> Option<Settings> {
    let s = &peer.spec;
    let address = peer_address(peer)?;
    // An unnumbered session carries both families (IPv4 with IPv6 next hops).
    let unnumbered = s.peer_address.is_none() && s.interface.is_some();
    let hold = seconds(s.hold_time.as_deref());
    let keepalive = seconds(s.keepalive_time.as_deref());
    // MetalLB: only one given, the other follows (hold = 3 × keepalive).
    let hold_time = hold.unwrap_or_else(|| keepalive.map_or(HOLD_TIME, |k| k.saturating_mul(3)));
    let router_id = s
        .router_id
        .as_deref()
        .and_then(|r| r.parse().ok())
        .or_else(|| {
            node_ips.iter().find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
        })
        // An IPv6-only node still needs a 32-bit identifier: one derived from its name.
        .unwrap_or_else(|| {
            let h = node.bytes().fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            Ipv4Addr::from(h | 1)
        });
    let both = s.dual_stack_address_family == Some(true) && s.disable_mp != Some(true);
    Some(Settings {
        // localASN: this session speaks as another AS (FRR's `local-as N no-prepend
        // replace-as`, as MetalLB configures it): in the OPEN and alone in the AS path.
        local_as: s.local_asn.filter(|a| *a != 0).unwrap_or(s.my_asn),
        peer_as: match (s.peer_asn, s.dynamic_asn) {
            (Some(asn), _) => PeerAs::Fixed(asn),
            (None, Some(DynamicAsn::Internal)) => PeerAs::Internal,
            (None, _) => PeerAs::External,
        },
        router_id,
        hold_time,
        keepalive,
        connect_time: seconds(s.connect_time.as_deref())
            .map_or(CONNECT_TIME, |c| Duration::from_secs(u64::from(c))),
        passive: false,
        ipv4: address.is_ipv4() || both || unnumbered,
        ipv6: address.is_ipv6() || both,
        graceful_restart: (s.enable_graceful_restart == Some(true)).then_some(RESTART_TIME),
        extended_next_hop: unnumbered,
    })
}

/// The sessions `node` runs and the routes each carries.
pub fn plan(node: &str, bgp: &BgpInputs, inputs: &Inputs, allocations: &[PlanEntry]) -> Plan {
    let empty = BTreeMap::new();
    let labels = inputs.nodes.get(node).unwrap_or(&empty);
    let node_ips = bgp.node_addresses.get(node).cloned().unwrap_or_default();
    // An excluded or unusable node keeps its sessions but advertises nothing, so traffic
    // leaves it without the sessions flapping.
    let advertises = !labels.contains_key(EXCLUDE_LABEL) && !inputs.unavailable.contains(node);
    let mut out = Plan::new();
    let mut distinct: Vec<Arc<Routes>> = Vec::new();
    for peer in &bgp.peers {
        if !selector::admits(&peer.spec.node_selectors, labels) {
            continue;
        }
        let Some(settings) = settings(peer, &node_ips, node) else {
            continue;
        };
        let Some(address) = peer_address(peer) else {
            continue;
        };
        let interface = peer
            .spec
            .interface
            .clone()
            .filter(|_| peer.spec.peer_address.is_none());
        let ns = peer.namespace().unwrap_or_else(|| "default".into());
        let password = peer.spec.password.clone().or_else(|| {
            let r = peer.spec.password_secret.as_ref()?;
            let secret_ns = r.namespace.clone().unwrap_or_else(|| ns.clone());
            bgp.passwords
                .get(&format!("{secret_ns}/{}", r.name.as_deref()?))
                .cloned()
        });
        let source: Option<IpAddr> = peer
            .spec
            .source_address
            .as_deref()
            .and_then(|a| a.parse().ok());
        let multihop = peer.spec.ebgp_multi_hop == Some(true);
        let ttl_security = gtsm::hops(peer.annotations()).and_then(Result::ok);
        let bfd = peer
            .spec
            .bfd_profile
            .as_ref()
            .and_then(|name| bgp.bfd_profiles.get(name))
            .map(|p| bfd_request(p, address, source, multihop));
        let mut routes = Routes::new();
        if advertises {
            for entry in allocations {
                let Some((pool, pool_labels)) = inputs.pool_of(entry) else {
                    continue;
                };
                let svc = inputs.services.get(&entry.service);
                if let Some(local) = svc.and_then(|s| s.local_nodes.as_ref())
                    && !local.contains(node)
                {
                    continue;
                }
                let svc_labels = svc.map_or(&empty, |s| &s.labels);
                for ad in &bgp.advertisements {
                    let s = &ad.spec;
                    if !s.selects_pool(pool, pool_labels)
                        || !s.selects_node(labels)
                        || !selector::admits(&s.service_selectors, svc_labels)
                        || !(s.peers.is_empty() || s.peers.iter().any(|p| *p == peer.name_any()))
                    {
                        continue;
                    }
                    let a = attrs(ad, &bgp.aliases);
                    for ip in &entry.ips {
                        let len = match ip {
                            IpAddr::V4(_) => s.aggregation_length.unwrap_or(32),
                            IpAddr::V6(_) => s.aggregation_length_v6.unwrap_or(128),
                        };
                        let Ok(net) = IpNet::new(*ip, u8::try_from(len).unwrap_or(0)) else {
                            continue;
                        };
                        routes.entry(net.trunc()).or_default().merge(&a);
                    }
                }
            }
        }
        out.insert(
            key(peer),
            PeerPlan {
                address,
                interface,
                scope: 0,
                port: peer
                    .spec
                    .peer_port
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(BGP_PORT),
                source,
                password,
                multihop,
                ttl_security,
                settings,
                node_v4: node_ips.iter().find_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                }),
                node_v6: node_ips.iter().find_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                }),
                bfd,
                routes: match distinct.iter().find(|r| ***r == routes) {
                    Some(same) => Arc::clone(same),
                    None => {
                        let r = Arc::new(routes);
                        distinct.push(Arc::clone(&r));
                        r
                    }
                },
            },
        );
    }
    out
}

/// A BFDProfile as a BFD session request (MetalLB's defaults: 300 ms, 300 ms, 3; multihop
/// packets must arrive with a TTL of at least 254 unless `minimumTtl` says otherwise).
fn bfd_request(
    p: &BFDProfileSpec,
    peer: IpAddr,
    local: Option<IpAddr>,
    multihop: bool,
) -> crate::bfd::Request {
    let ms = |v: Option<u32>| Duration::from_millis(u64::from(v.unwrap_or(300)));
    crate::bfd::Request {
        peer,
        scope: 0,
        local,
        multihop,
        settings: crate::bfd::session::Settings {
            desired_min_tx: ms(p.transmit_interval),
            required_min_rx: ms(p.receive_interval),
            detect_mult: p
                .detect_multiplier
                .and_then(|m| u8::try_from(m).ok())
                .unwrap_or(3),
            passive: p.passive_mode == Some(true),
        },
        min_ttl: p
            .minimum_ttl
            .and_then(|t| u8::try_from(t).ok())
            .unwrap_or(254),
    }
}

/// Each Service this node advertises (`namespace/name`) → the BGPPeers (by name) it goes to,
/// for MetalLB's ServiceBGPStatus objects.
pub fn service_peers(plan: &Plan, allocations: &[PlanEntry]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, p) in plan {
        let name = key.split_once('/').map_or(key.as_str(), |(_, n)| n);
        let aggregated: Vec<&IpNet> = p
            .routes
            .keys()
            .filter(|n| n.prefix_len() != n.max_prefix_len())
            .collect();
        for e in allocations {
            let carried = e.ips.iter().any(|ip| {
                p.routes.contains_key(&IpNet::from(*ip))
                    || aggregated.iter().any(|n| n.contains(ip))
            });
            if carried {
                out.entry(e.service.clone())
                    .or_default()
                    .insert(name.to_owned());
            }
        }
    }
    out
}

/// The allocated addresses this node advertises on some session: it must accept their
/// traffic (standalone, they go on `xdplb0`; in a cluster kube-proxy takes them).
pub fn advertised_ips(plan: &Plan, allocations: &[PlanEntry]) -> BTreeSet<IpAddr> {
    let nets: BTreeSet<IpNet> = plan
        .values()
        .flat_map(|p| p.routes.keys().copied())
        .collect();
    let aggregated: Vec<&IpNet> = nets
        .iter()
        .filter(|n| n.prefix_len() != n.max_prefix_len())
        .collect();
    allocations
        .iter()
        .flat_map(|e| e.ips.iter().copied())
        .filter(|ip| nets.contains(&IpNet::from(*ip)) || aggregated.iter().any(|n| n.contains(ip)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_controller::config::manifest;

    const CONFIG: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: pool, namespace: metallb-system}
spec: {addresses: [192.0.2.0/24, "2001:db8:5::/64"]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: other, namespace: metallb-system}
spec: {addresses: [198.51.100.0/24]}
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: c, namespace: metallb-system}
spec: {communities: [{name: no-advertise, value: "65535:65282"}]}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: ad, namespace: metallb-system}
spec:
  ipAddressPools: [pool]
  communities: [no-advertise, "64512:7", "large:64512:1:2"]
  localPref: 150
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: agg, namespace: metallb-system}
spec:
  ipAddressPools: [other]
  aggregationLength: 24
  peers: [ibgp]
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: router, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 65000, peerAddress: 10.0.0.1, holdTime: 9s, passwordSecret: {name: pw}}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: ibgp, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 64512, peerAddress: 10.0.0.2, dualStackAddressFamily: true}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: rack2, namespace: metallb-system}
spec:
  myASN: 64512
  peerASN: 65000
  peerAddress: 10.0.0.3
  routerID: 1.2.3.4
  nodeSelectors: [{matchLabels: {rack: "2"}}]
---
apiVersion: v1
kind: Secret
metadata: {name: pw, namespace: metallb-system}
type: kubernetes.io/basic-auth
stringData: {password: s3cret}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {rack: "1"}}
status: {addresses: [{type: InternalIP, address: 10.0.0.11}, {type: InternalIP, address: "fd00::11"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2, labels: {rack: "1"}}
status: {addresses: [{type: InternalIP, address: 10.0.0.12}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {type: LoadBalancer}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec: {type: LoadBalancer, externalTrafficPolicy: Local}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: default, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1], nodeName: node-2, conditions: {ready: true}}]
"#;

    /// Parsed in memory: tests run in parallel, and a file shared between them would be
    /// rewritten or removed under another's read.
    fn objects() -> Objects {
        let mut loaded = manifest::Loaded::default();
        manifest::add_text(
            std::path::Path::new("c.yaml"),
            CONFIG,
            manifest::Strictness::Strict,
            &mut loaded,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let report = lb_controller::config::validate::validate(&loaded.objects);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        loaded.objects
    }

    fn alloc(service: &str, pool: &str, ips: &[&str]) -> PlanEntry {
        PlanEntry {
            service: service.into(),
            ips: ips.iter().filter_map(|i| i.parse().ok()).collect(),
            pool: Some(pool.into()),
            pending: None,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn sessions_and_routes_follow_metallb() {
        let o = objects();
        let (bgp, inputs) = (BgpInputs::new(&o), Inputs::new(&o));
        let allocations = vec![
            alloc("default/web", "pool", &["192.0.2.10", "2001:db8:5::10"]),
            alloc("default/local", "pool", &["192.0.2.11"]),
            alloc("default/agg", "other", &["198.51.100.7"]),
        ];
        let p = plan("node-1", &bgp, &inputs, &allocations);
        assert_eq!(
            p.keys().collect::<Vec<_>>(),
            vec!["metallb-system/ibgp", "metallb-system/router"],
            "rack2 selects other nodes"
        );
        let router = &p["metallb-system/router"];
        assert_eq!(router.password.as_deref(), Some("s3cret"));
        assert_eq!(router.settings.hold_time, 9);
        assert_eq!(router.settings.router_id, Ipv4Addr::new(10, 0, 0, 11));
        assert!(router.settings.ipv4 && !router.settings.ipv6);
        assert_eq!(
            router.node_v6,
            Some("fd00::11".parse().unwrap_or(Ipv6Addr::LOCALHOST))
        );
        // `local` has its endpoint on node-2 only; `agg` goes to ibgp only.
        assert_eq!(
            router.routes.keys().copied().collect::<Vec<_>>(),
            vec![net("192.0.2.10/32"), net("2001:db8:5::10/128")]
        );
        let a = &router.routes[&net("192.0.2.10/32")];
        assert_eq!(a.local_pref, Some(150));
        assert_eq!(
            a.communities.iter().copied().collect::<Vec<_>>(),
            vec![64512 << 16 | 7, 0xffff_ff02]
        );
        assert_eq!(
            a.large_communities.iter().collect::<Vec<_>>(),
            vec![&[64512, 1, 2]]
        );
        let ibgp = &p["metallb-system/ibgp"];
        assert!(ibgp.settings.ipv4 && ibgp.settings.ipv6);
        assert_eq!(ibgp.settings.peer_as, PeerAs::Fixed(64512));
        assert_eq!(ibgp.settings.router_id, Ipv4Addr::new(10, 0, 0, 11));
        assert!(
            ibgp.routes.contains_key(&net("198.51.100.0/24")),
            "aggregated"
        );

        let ips: Vec<String> = advertised_ips(&p, &allocations)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ips,
            vec!["192.0.2.10", "198.51.100.7", "2001:db8:5::10"],
            "the aggregated one included, the Local one (endpoint elsewhere) not"
        );
        let peers = service_peers(&p, &allocations);
        let names = |s: &str| peers.get(s).map(|p| p.iter().cloned().collect::<Vec<_>>());
        assert_eq!(
            names("default/web"),
            Some(vec!["ibgp".into(), "router".into()])
        );
        assert_eq!(names("default/agg"), Some(vec!["ibgp".into()]));
        assert_eq!(names("default/local"), None, "its endpoint is on node-2");
        let p2 = plan("node-2", &bgp, &inputs, &allocations);
        assert!(
            p2["metallb-system/router"]
                .routes
                .contains_key(&net("192.0.2.11/32"))
        );
        // Only the routes differ between the nodes' router sessions' routes, not the
        // session parameters that matter for a reset.
        assert!(
            !p2["metallb-system/router"].same_session(router),
            "router id differs"
        );
        let mut moved = router.clone();
        moved.routes = Arc::default();
        assert!(moved.same_session(router));
    }

    #[test]
    fn no_route_for_an_address_outside_the_pool_its_entry_names() {
        let o = objects();
        let (bgp, inputs) = (BgpInputs::new(&o), Inputs::new(&o));
        let allocations = vec![
            alloc("default/web", "pool", &["192.0.2.10", "10.9.9.9"]),
            alloc("default/agg", "pool", &["198.51.100.7"]),
            alloc("default/gone", "deleted", &["192.0.2.12"]),
            alloc("default/ok", "pool", &["192.0.2.13"]),
        ];
        let p = plan("node-1", &bgp, &inputs, &allocations);
        let routes: BTreeSet<IpNet> = p.values().flat_map(|s| s.routes.keys().copied()).collect();
        assert_eq!(routes, [net("192.0.2.13/32")].into());
    }

    #[test]
    fn local_asn_replaces_my_asn_on_its_session_and_an_interface_makes_it_unnumbered() {
        let mut o = objects();
        for peer in &mut o.peers {
            if peer.name_any() == "router" {
                peer.spec.local_asn = Some(64600);
            }
            if peer.name_any() == "ibgp" {
                peer.spec.peer_address = None;
                peer.spec.interface = Some("eth1".into());
            }
        }
        let (bgp, inputs) = (BgpInputs::new(&o), Inputs::new(&o));
        let p = plan(
            "node-1",
            &bgp,
            &inputs,
            &[alloc("default/web", "pool", &["192.0.2.10"])],
        );
        let router = &p["metallb-system/router"];
        assert_eq!(router.settings.local_as, 64600);
        assert!(!router.settings.extended_next_hop && router.interface.is_none());
        let unnumbered = &p["metallb-system/ibgp"];
        assert_eq!(unnumbered.settings.local_as, 64512);
        assert_eq!(unnumbered.interface.as_deref(), Some("eth1"));
        assert_eq!(unnumbered.address, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert!(unnumbered.settings.extended_next_hop);
        assert!(unnumbered.settings.ipv4 && unnumbered.settings.ipv6);
    }

    #[test]
    fn excluded_nodes_keep_sessions_but_advertise_nothing() {
        let mut o = objects();
        for n in &mut o.nodes {
            n.labels_mut().insert(EXCLUDE_LABEL.into(), String::new());
        }
        let (bgp, inputs) = (BgpInputs::new(&o), Inputs::new(&o));
        let p = plan(
            "node-1",
            &bgp,
            &inputs,
            &[alloc("default/web", "pool", &["192.0.2.10"])],
        );
        assert_eq!(p.len(), 2);
        assert!(p.values().all(|pp| pp.routes.is_empty()));
    }
}
