//! The resources the test API server serves: where each lives in the URL space, its kind, and
//! whether it has a status subresource (writes to the object then leave `status` alone, and
//! writes to `/status` change nothing else, as the real API server does).

/// One served resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// `""` for the core group.
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub status: bool,
}

const fn res(
    group: &'static str,
    versions: &'static [&'static str],
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
) -> Resource {
    Resource {
        group,
        versions,
        plural,
        kind,
        namespaced,
        status,
    }
}

pub const RESOURCES: &[Resource] = &[
    res("", &["v1"], "services", "Service", true, true),
    res("", &["v1"], "namespaces", "Namespace", false, true),
    res("", &["v1"], "nodes", "Node", false, true),
    res("", &["v1"], "secrets", "Secret", true, false),
    res("", &["v1"], "pods", "Pod", true, true),
    res("", &["v1"], "events", "Event", true, false),
    res(
        "discovery.k8s.io",
        &["v1"],
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    res(
        "coordination.k8s.io",
        &["v1"],
        "leases",
        "Lease",
        true,
        false,
    ),
    res("events.k8s.io", &["v1"], "events", "Event", true, false),
    res(
        "frrk8s.metallb.io",
        &["v1beta1"],
        "bgpsessionstates",
        "BGPSessionState",
        true,
        true,
    ),
    res(
        "rbac.authorization.k8s.io",
        &["v1"],
        "clusterroles",
        "ClusterRole",
        false,
        false,
    ),
    res(
        "rbac.authorization.k8s.io",
        &["v1"],
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
    ),
    res(
        "admissionregistration.k8s.io",
        &["v1"],
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
        false,
    ),
    res(
        "metallb.io",
        &["v1beta1"],
        "ipaddresspools",
        "IPAddressPool",
        true,
        true,
    ),
    res(
        "metallb.io",
        &["v1beta1"],
        "l2advertisements",
        "L2Advertisement",
        true,
        true,
    ),
    res(
        "metallb.io",
        &["v1beta1"],
        "bgpadvertisements",
        "BGPAdvertisement",
        true,
        true,
    ),
    res(
        "metallb.io",
        &["v1beta1", "v1beta2"],
        "bgppeers",
        "BGPPeer",
        true,
        true,
    ),
    res(
        "metallb.io",
        &["v1beta1"],
        "bfdprofiles",
        "BFDProfile",
        true,
        true,
    ),
    res(
        "metallb.io",
        &["v1beta1"],
        "communities",
        "Community",
        true,
        true,
    ),
    res(
        "metallb.io",
        &["v1beta1"],
        "servicel2statuses",
        "ServiceL2Status",
        true,
        true,
    ),
    res(
        "metallb.io",
        &["v1beta1"],
        "servicebgpstatuses",
        "ServiceBGPStatus",
        true,
        true,
    ),
    res(
        "metallb.io",
        &["v1beta1"],
        "configurationstates",
        "ConfigurationState",
        true,
        true,
    ),
];

impl Resource {
    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.plural == plural && r.versions.contains(&version))
    }

    /// The resource whose objects carry `apiVersion` and `kind`.
    pub fn of(api_version: &str, kind: &str) -> Option<&'static Resource> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.kind == kind && r.versions.contains(&version))
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }
}
