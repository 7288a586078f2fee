//! The metallb.io kinds, typed as MetalLB serves them (group `metallb.io`), with `CustomResource`
//! so the CRDs can be generated from these types. Field names and defaults follow MetalLB's
//! `api/v1beta1` and `api/v1beta2` (research/metallb.md §1); defaults that MetalLB applies in
//! code are applied by [`super::model`], not here, so an object round-trips as written.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// MetalLB's advertisements, BFD profiles and communities may leave `spec` out (its own docs
/// show `kind: L2Advertisement` with only metadata: advertise every pool, everywhere). The
/// derived root types require the field, so these specs read a missing or null `spec` as
/// their default: serde asks a missing field's type for an `Option`, and `None` becomes the
/// default here. `remote = "Self"` keeps the derived code as inherent functions to call.
macro_rules! optional_spec {
    ($($spec:ident),*) => {$(
        impl<'de> Deserialize<'de> for $spec {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Present($spec);
                impl<'de> Deserialize<'de> for Present {
                    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                        $spec::deserialize(d).map(Present)
                    }
                }
                Ok(Option::<Present>::deserialize(d)?.map(|p| p.0).unwrap_or_default())
            }
        }
        impl Serialize for $spec {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $spec::serialize(self, s)
            }
        }
    )*};
}

optional_spec!(
    L2AdvertisementSpec,
    BGPAdvertisementSpec,
    BFDProfileSpec,
    CommunitySpec,
    ConfigurationStateSpec
);

/// Which Services a pool serves, and with which priority.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAllocation {
    /// Lower is preferred; unset sorts after every set priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// A pool of addresses for LoadBalancer Services.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "IPAddressPool",
    namespaced,
    status = "IPAddressPoolStatus",
    printcolumn = r#"{"name":"Auto Assign","type":"boolean","jsonPath":".spec.autoAssign"}"#,
    printcolumn = r#"{"name":"Avoid Buggy IPs","type":"boolean","jsonPath":".spec.avoidBuggyIPs"}"#,
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPAddressPoolSpec {
    /// CIDRs (`10.0.0.0/24`) or inclusive ranges (`10.0.0.10-10.0.0.20`), IPv4 or IPv6.
    pub addresses: Vec<String>,
    /// Whether the pool is used for Services that do not ask for it (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_assign: Option<bool>,
    /// Skip IPv4 addresses ending in .0 or .255.
    #[serde(
        default,
        rename = "avoidBuggyIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub avoid_buggy_ips: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct IPAddressPoolStatus {
    #[serde(rename = "assignedIPv4", default)]
    pub assigned_ipv4: i64,
    #[serde(rename = "assignedIPv6", default)]
    pub assigned_ipv6: i64,
    #[serde(rename = "availableIPv4", default)]
    pub available_ipv4: i64,
    #[serde(rename = "availableIPv6", default)]
    pub available_ipv6: i64,
}

/// A soft preference for the Layer 2 election.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferredNodeSelector {
    /// 1 to 100; the weights of matching selectors add up.
    pub weight: i32,
    pub preference: LabelSelector,
}

/// Announce the selected pools' addresses with ARP/NDP from the selected nodes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "L2Advertisement",
    namespaced,
    printcolumn = r#"{"name":"IPAddressPools","type":"string","jsonPath":".spec.ipAddressPools"}"#,
    printcolumn = r#"{"name":"IPAddressPool Selectors","type":"string","jsonPath":".spec.ipAddressPoolSelectors"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces"}"#,
    printcolumn = r#"{"name":"Node Selectors","type":"string","jsonPath":".spec.nodeSelectors","priority":10}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields, remote = "Self")]
pub struct L2AdvertisementSpec {
    #[serde(
        default,
        rename = "ipAddressPools",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_address_pools: Vec<String>,
    #[serde(
        default,
        rename = "ipAddressPoolSelectors",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_node_selectors: Vec<PreferredNodeSelector>,
}

/// Advertise the selected pools' addresses over BGP to the selected peers.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "BGPAdvertisement",
    namespaced,
    printcolumn = r#"{"name":"IPAddressPools","type":"string","jsonPath":".spec.ipAddressPools"}"#,
    printcolumn = r#"{"name":"IPAddressPool Selectors","type":"string","jsonPath":".spec.ipAddressPoolSelectors"}"#,
    printcolumn = r#"{"name":"Peers","type":"string","jsonPath":".spec.peers"}"#,
    printcolumn = r#"{"name":"Node Selectors","type":"string","jsonPath":".spec.nodeSelectors","priority":10}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields, remote = "Self")]
pub struct BGPAdvertisementSpec {
    /// Prefix length for IPv4 announcements (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_length: Option<i32>,
    /// Prefix length for IPv6 announcements (default 128).
    #[serde(
        default,
        rename = "aggregationLengthV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub aggregation_length_v6: Option<i32>,
    /// LOCAL_PREF for iBGP peers (0 = not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// `A:B`, `large:X:Y:Z`, or the name of a Community alias.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    #[serde(
        default,
        rename = "ipAddressPools",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_address_pools: Vec<String>,
    #[serde(
        default,
        rename = "ipAddressPoolSelectors",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// BGPPeer names; empty means every peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// BFD session parameters referenced by BGPPeers.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "BFDProfile",
    namespaced,
    printcolumn = r#"{"name":"Passive Mode","type":"boolean","jsonPath":".spec.passiveMode"}"#,
    printcolumn = r#"{"name":"Transmit Interval","type":"integer","jsonPath":".spec.transmitInterval"}"#,
    printcolumn = r#"{"name":"Receive Interval","type":"integer","jsonPath":".spec.receiveInterval"}"#,
    printcolumn = r#"{"name":"Multiplier","type":"integer","jsonPath":".spec.detectMultiplier"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields, remote = "Self")]
pub struct BFDProfileSpec {
    /// Milliseconds, 10 to 60000 (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_interval: Option<u32>,
    /// Milliseconds, 10 to 60000 (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transmit_interval: Option<u32>,
    /// 2 to 255 (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_multiplier: Option<u32>,
    /// Milliseconds, 10 to 60000 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_mode: Option<bool>,
    /// 1 to 254, multihop sessions only.
    #[serde(
        default,
        rename = "minimumTtl",
        skip_serializing_if = "Option::is_none"
    )]
    pub minimum_ttl: Option<u32>,
}

/// One community alias.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommunityAlias {
    pub name: String,
    pub value: String,
}

/// Named community values usable in BGPAdvertisements.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "Community",
    namespaced
)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct CommunitySpec {
    #[serde(default)]
    pub communities: Vec<CommunityAlias>,
}

/// `dynamicASN`: accept the peer's ASN, as long as it is internal or external as stated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DynamicAsn {
    Internal,
    External,
}

/// A reference to the Secret holding a BGP password.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// BGPPeer as still served in `metallb.io/v1beta1` (MetalLB converts it to v1beta2).
pub mod v1beta1 {
    use super::*;

    /// A BGP session to establish from the selected nodes (the older API).
    #[derive(
        CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema,
    )]
    #[kube(
        group = "metallb.io",
        version = "v1beta1",
        kind = "BGPPeer",
        namespaced,
        deprecated = "v1beta1 is deprecated, please use v1beta2",
        printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.peerAddress"}"#,
        printcolumn = r#"{"name":"ASN","type":"string","jsonPath":".spec.peerASN"}"#,
        printcolumn = r#"{"name":"BFD Profile","type":"string","jsonPath":".spec.bfdProfile"}"#,
        printcolumn = r#"{"name":"Multi Hops","type":"string","jsonPath":".spec.ebgpMultiHop"}"#
    )]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct BGPPeerSpec {
        #[serde(rename = "myASN")]
        pub my_asn: u32,
        #[serde(rename = "peerASN")]
        pub peer_asn: u32,
        pub peer_address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub source_address: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub peer_port: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub hold_time: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub keepalive_time: Option<String>,
        #[serde(default, rename = "routerID", skip_serializing_if = "Option::is_none")]
        pub router_id: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub node_selectors: Vec<LabelSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub bfd_profile: Option<String>,
        #[serde(
            default,
            rename = "ebgpMultiHop",
            skip_serializing_if = "Option::is_none"
        )]
        pub ebgp_multi_hop: Option<bool>,
    }
}

/// What the API server does to a v1beta1 BGPPeer (MetalLB's conversion to its hub version):
/// every v1beta1 field has a v1beta2 field of the same name and shape, so nothing is lost.
impl From<v1beta1::BGPPeer> for v1beta2::BGPPeer {
    fn from(old: v1beta1::BGPPeer) -> Self {
        let s = old.spec;
        Self {
            metadata: old.metadata,
            spec: v1beta2::BGPPeerSpec {
                my_asn: s.my_asn,
                peer_asn: Some(s.peer_asn),
                peer_address: Some(s.peer_address),
                source_address: s.source_address,
                peer_port: s.peer_port,
                hold_time: s.hold_time,
                keepalive_time: s.keepalive_time,
                router_id: s.router_id,
                node_selectors: s.node_selectors,
                password: s.password,
                bfd_profile: s.bfd_profile,
                ebgp_multi_hop: s.ebgp_multi_hop,
                ..v1beta2::BGPPeerSpec::default()
            },
        }
    }
}

/// BGPPeer as served in `metallb.io/v1beta2` (the storage version).
pub mod v1beta2 {
    use super::*;

    /// A BGP session to establish from the selected nodes.
    #[derive(
        CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema,
    )]
    #[kube(
        group = "metallb.io",
        version = "v1beta2",
        kind = "BGPPeer",
        namespaced,
        printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.peerAddress"}"#,
        printcolumn = r#"{"name":"ASN","type":"string","jsonPath":".spec.peerASN"}"#,
        printcolumn = r#"{"name":"BFD Profile","type":"string","jsonPath":".spec.bfdProfile"}"#,
        printcolumn = r#"{"name":"Multi Hops","type":"string","jsonPath":".spec.ebgpMultiHop"}"#
    )]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct BGPPeerSpec {
        #[serde(rename = "myASN")]
        pub my_asn: u32,
        #[serde(default, rename = "peerASN", skip_serializing_if = "Option::is_none")]
        pub peer_asn: Option<u32>,
        #[serde(
            default,
            rename = "dynamicASN",
            skip_serializing_if = "Option::is_none"
        )]
        pub dynamic_asn: Option<DynamicAsn>,
        #[serde(default, rename = "localASN", skip_serializing_if = "Option::is_none")]
        pub local_asn: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub peer_address: Option<String>,
        /// Unnumbered peering over this interface's IPv6 link-local address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interface: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub source_address: Option<String>,
        /// 1 to 16384 (default 179).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub peer_port: Option<u32>,
        /// A Kubernetes duration (`90s`, `1m30s`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub hold_time: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub keepalive_time: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub connect_time: Option<String>,
        #[serde(default, rename = "routerID", skip_serializing_if = "Option::is_none")]
        pub router_id: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub node_selectors: Vec<LabelSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password_secret: Option<SecretReference>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub bfd_profile: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub enable_graceful_restart: Option<bool>,
        #[serde(
            default,
            rename = "ebgpMultiHop",
            skip_serializing_if = "Option::is_none"
        )]
        pub ebgp_multi_hop: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub vrf: Option<String>,
        #[serde(default, rename = "disableMP", skip_serializing_if = "Option::is_none")]
        pub disable_mp: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub dual_stack_address_family: Option<bool>,
    }
}

/// Which node announces a Service at Layer 2: written by the agents, read by users
/// (`kubectl get servicel2statuses -n metallb-system`). One object per Service and announcing
/// node, in the agents' namespace, named `l2-…` and labelled `metallb.io/node`,
/// `metallb.io/service-name` and `metallb.io/service-namespace`, as MetalLB's speakers do.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "ServiceL2Status",
    namespaced,
    status = "MetalLBServiceL2Status",
    printcolumn = r#"{"name":"Allocated Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"Service Name","type":"string","jsonPath":".status.serviceName"}"#,
    printcolumn = r#"{"name":"Service Namespace","type":"string","jsonPath":".status.serviceNamespace"}"#
)]
pub struct ServiceL2StatusSpec {}

/// The observed state of a [`ServiceL2Status`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetalLBServiceL2Status {
    /// The node that receives the traffic.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_namespace: String,
    /// The interfaces that receive the traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceInfo>,
}

/// One interface of a Layer 2 announcement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct InterfaceInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Which BGP peers a node advertises a Service to: written by the agents, one object per
/// Service and advertising node (`kubectl get servicebgpstatuses -n metallb-system`), named
/// `bgp-…` and labelled like [`ServiceL2Status`], as MetalLB's speakers do.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "ServiceBGPStatus",
    namespaced,
    status = "MetalLBServiceBGPStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"Service Name","type":"string","jsonPath":".status.serviceName"}"#,
    printcolumn = r#"{"name":"Service Namespace","type":"string","jsonPath":".status.serviceNamespace"}"#
)]
pub struct ServiceBGPStatusSpec {}

/// The observed state of a [`ServiceBGPStatus`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetalLBServiceBGPStatus {
    /// The node that advertises the Service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_namespace: String,
    /// The BGPPeers the Service is advertised to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// One BGP session of one node, as FRR-K8s reports it (`kubectl get bgpsessionstates -n
/// metallb-system`), so tools that read FRR-K8s' objects read xdplb's: one object per node and
/// peer, in the agents' namespace, named `NODE-…` and labelled `frrk8s.metallb.io/node`,
/// `frrk8s.metallb.io/peer` and `frrk8s.metallb.io/vrf`, owned by the agent's Pod.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "frrk8s.metallb.io",
    version = "v1beta1",
    kind = "BGPSessionState",
    namespaced,
    status = "BGPSessionStateStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"Peer","type":"string","jsonPath":".status.peer"}"#,
    printcolumn = r#"{"name":"VRF","type":"string","jsonPath":".status.vrf"}"#,
    printcolumn = r#"{"name":"BGP","type":"string","jsonPath":".status.bgpStatus"}"#,
    printcolumn = r#"{"name":"BFD","type":"string","jsonPath":".status.bfdStatus"}"#
)]
pub struct BGPSessionStateSpec {}

/// The observed state of a [`BGPSessionState`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPSessionStateStatus {
    /// `Idle`, `Connect`, `OpenSent`, `OpenConfirm` or `Established`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bgp_status: String,
    /// `Up`, `Down`, or `N/A` when the peer has no BFD profile.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bfd_status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The peer's address (an IPv6 one with `-` for `:`, as in the label), or its interface.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vrf: String,
}

/// Whether a component's configuration is valid, as MetalLB reports it: one object per
/// component in its namespace, `controller` and `speaker-NODE`, labelled
/// `metallb.io/component-type` (and `metallb.io/node-name` for an agent). MetalLB's kind has no
/// spec; the CRD leaves it out (see [`super::crds`]).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "ConfigurationState",
    namespaced,
    status = "ConfigurationStateStatus",
    printcolumn = r#"{"name":"Result","type":"string","jsonPath":".status.result"}"#,
    printcolumn = r#"{"name":"ErrorSummary","type":"string","jsonPath":".status.errorSummary"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(remote = "Self")]
pub struct ConfigurationStateSpec {}

/// The observed state of a [`ConfigurationState`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStateStatus {
    /// `Valid`, `Invalid` or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ConfigurationResult>,
    /// The problems found, one per line; empty when the result is `Valid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConfigurationResult {
    Valid,
    Invalid,
    Unknown,
}
