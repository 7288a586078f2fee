//! The cluster manifests under deploy/: the kustomization lists every one of them, each
//! document reads as its Kubernetes type, the workloads keep the security properties the
//! README promises, the images carry this build's version, and each component's RBAC grants
//! exactly what its code uses, no more.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    admissionregistration::v1::ValidatingWebhookConfiguration,
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Namespace, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use serde_json::Value;

mod common;
use common::{kubernetes_validate, kustomize, required, validator};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    lb_controller::config::manifest::documents(path, &text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn typed<T: serde::de::DeserializeOwned>(doc: &Value) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc["kind"]))
}

/// Every document the kustomization applies.
fn applied() -> Vec<Value> {
    let k = documents(&deploy().join("kustomization.yaml"));
    k[0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .flat_map(|r| documents(&deploy().join(r.as_str().expect("a path"))))
        .collect()
}

#[test]
fn the_kustomization_lists_every_manifest_and_each_exists() {
    let k = documents(&deploy().join("kustomization.yaml"));
    assert_eq!(k[0]["namespace"], "metallb-system");
    let listed: BTreeSet<String> = k[0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a path").to_owned())
        .collect();
    let mut present = BTreeSet::new();
    for dir in ["", "crds", "rbac"] {
        for entry in std::fs::read_dir(deploy().join(dir)).expect("read deploy/") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                present.insert(if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                });
            }
        }
    }
    assert_eq!(listed, present, "deploy/ and kustomization.yaml disagree");
}

#[test]
fn every_document_reads_as_its_kubernetes_type() {
    for doc in applied() {
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        let named = doc["metadata"]["name"].as_str().is_some();
        assert!(named, "a {kind} without a name");
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(&doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&doc)),
            "Role" => drop(typed::<Role>(&doc)),
            "RoleBinding" => drop(typed::<RoleBinding>(&doc)),
            "Deployment" => drop(typed::<Deployment>(&doc)),
            "DaemonSet" => drop(typed::<DaemonSet>(&doc)),
            "Service" => drop(typed::<Service>(&doc)),
            "ValidatingWebhookConfiguration" => {
                drop(typed::<ValidatingWebhookConfiguration>(&doc));
            }
            "CustomResourceDefinition" => {
                let group = doc["spec"]["group"].as_str().unwrap_or_default();
                assert!(
                    group == "metallb.io"
                        || (group == "frrk8s.metallb.io"
                            && doc["spec"]["names"]["kind"] == "BGPSessionState"),
                    "{group}"
                );
            }
            other => panic!("unexpected kind {other}"),
        }
    }
}

fn workload<T: serde::de::DeserializeOwned>(kind: &str) -> T {
    let doc = applied()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"));
    typed(&doc)
}

#[test]
fn workloads_run_this_version_with_least_privilege() {
    let version = env!("CARGO_PKG_VERSION");
    let controller: Deployment = workload("Deployment");
    let spec = controller.spec;
    assert_eq!(spec.replicas, Some(2), "a standby controller");
    let pod = spec.template.spec.expect("pod spec");
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(&*format!("xdplb/lb-controller:{version}"))
    );
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some()
    );
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(caps.add.is_none());
    let psc = pod.security_context.expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));

    let agent: DaemonSet = workload("DaemonSet");
    let pod = agent.spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(&*format!("xdplb/lb-agent:{version}"))
    );
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(
        sc.privileged,
        Some(true),
        "the agent must not be privileged"
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added,
        BTreeSet::from([
            "BPF",
            "PERFMON",
            "NET_ADMIN",
            "NET_RAW",
            "NET_BIND_SERVICE",
            "SYS_RESOURCE",
            "SYS_NICE",
            "IPC_LOCK"
        ])
    );
    let bpffs = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.host_path.as_ref())
        .expect("a hostPath volume");
    // The host's pins of the agent's own directory (the agent's default `--bpffs`), so they
    // outlive the pod, and no other project's.
    assert_eq!(bpffs.path, "/sys/fs/bpf/xdplb", "pins must outlive the pod");
    let mounts: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(mounts, vec!["/sys/fs/bpf/xdplb"]);
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let tolerated: Vec<&str> = pod
        .tolerations
        .iter()
        .flatten()
        .filter_map(|t| t.key.as_deref())
        .collect();
    assert!(tolerated.contains(&"node-role.kubernetes.io/control-plane"));
}

/// (API group, resource, verb) triples.
type Grants = BTreeSet<(String, String, String)>;

fn grants(rules: &[PolicyRule]) -> Grants {
    let mut out = Grants::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn expect(triples: &[(&str, &[&str], &[&str])]) -> Grants {
    let mut out = Grants::new();
    for (group, resources, verbs) in triples {
        for r in *resources {
            for v in *verbs {
                out.insert(((*group).to_owned(), (*r).to_owned(), (*v).to_owned()));
            }
        }
    }
    out
}

/// The rules of the `role` kind (ClusterRole, Role) that `binding` objects bind to service
/// account `sa`.
fn bound_rules(sa: &str, binding: &str, role: &str) -> Vec<PolicyRule> {
    let docs = applied();
    let names: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == binding)
        .filter(|d| {
            d["subjects"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == sa))
        })
        .map(|d| d["roleRef"]["name"].as_str().expect("roleRef").to_owned())
        .collect();
    docs.iter()
        .filter(|d| d["kind"] == role)
        .filter(|d| names.iter().any(|n| d["metadata"]["name"] == n.as_str()))
        .flat_map(|d| {
            let rules: Vec<PolicyRule> = serde_json::from_value(d["rules"].clone())
                .unwrap_or_else(|e| panic!("{role} rules: {e}"));
            rules
        })
        .collect()
}

/// The rules bound to service account `sa`: (cluster-wide, in its namespace).
fn rbac_of(sa: &str) -> (Grants, Grants) {
    (
        grants(&bound_rules(sa, "ClusterRoleBinding", "ClusterRole")),
        grants(&bound_rules(sa, "RoleBinding", "Role")),
    )
}

/// For each rule of `sa`'s Roles on Secrets: its verbs and the names it is limited to (empty:
/// every Secret of the namespace).
fn secret_rules(sa: &str) -> BTreeSet<(Vec<String>, Vec<String>)> {
    bound_rules(sa, "RoleBinding", "Role")
        .into_iter()
        .filter(|r| r.resources.iter().flatten().any(|r| r == "secrets"))
        .map(|r| (r.verbs, r.resource_names.unwrap_or_default()))
        .collect()
}

/// The agents read two Secrets by name (source/cluster.rs), not the namespace's Secrets; the
/// controller may rewrite only the one it hands them (cluster/passwords.rs).
#[test]
fn secrets_are_granted_by_name_where_the_code_reads_them_by_name() {
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        secret_rules("xdplb-agent"),
        BTreeSet::from([(
            names(&["list", "watch"]),
            names(&["memberlist", "xdplb-bgp-passwords"])
        )])
    );
    assert_eq!(
        secret_rules("xdplb-controller"),
        BTreeSet::from([
            (names(&["list", "watch"]), vec![]),
            (names(&["create"]), vec![]),
            (
                names(&["update"]),
                names(&["xdplb-bgp-passwords", "xdplb-webhook-cert"])
            ),
        ])
    );
    assert_eq!(
        lb_controller::config::passwords::SECRET,
        "xdplb-bgp-passwords"
    );
    assert_eq!(lb_controller::config::memberlist::SECRET, "memberlist");
}

const CONFIG_KINDS: &[&str] = &[
    "ipaddresspools",
    "l2advertisements",
    "bgpadvertisements",
    "bgppeers",
    "bfdprofiles",
    "communities",
];

#[test]
fn each_component_gets_exactly_what_its_code_uses() {
    // lb-controller: cluster/sources.rs (reflectors), cluster/mod.rs (status and annotation
    // patches, the Event recorder, pool status), cluster/memberlist.rs (the Secret), cluster/leader.rs (the
    // Lease), cluster/configstate.rs (get, create, patch, patch status), webhook/keeper.rs (its
    // Secret, and its configuration's caBundle).
    let (cluster, namespaced) = rbac_of("xdplb-controller");
    assert_eq!(
        cluster,
        expect(&[
            ("", &["services", "namespaces", "nodes"], &["list", "watch"]),
            ("", &["services/status", "services"], &["patch"]),
            ("events.k8s.io", &["events"], &["create", "patch"]),
            (
                "admissionregistration.k8s.io",
                &["validatingwebhookconfigurations"],
                &["get", "update"]
            ),
        ])
    );
    assert_eq!(
        namespaced,
        expect(&[
            ("metallb.io", CONFIG_KINDS, &["list", "watch"]),
            ("metallb.io", &["ipaddresspools/status"], &["patch"]),
            ("", &["secrets"], &["list", "watch", "create", "update"]),
            (
                "coordination.k8s.io",
                &["leases"],
                &["create", "get", "update"]
            ),
            (
                "metallb.io",
                &["configurationstates"],
                &["create", "get", "patch"]
            ),
            ("metallb.io", &["configurationstates/status"], &["patch"]),
        ])
    );
    // lb-agent: source/cluster.rs (reflectors, EndpointSlices too), run.rs (nodeAssigned
    // Events), statuses.rs (list, create, patch, patch status, delete: the Service statuses and
    // the BGPSessionStates), configstate.rs (get,
    // create, patch, patch status).
    let (cluster, namespaced) = rbac_of("xdplb-agent");
    assert_eq!(
        cluster,
        expect(&[
            ("", &["services", "namespaces", "nodes"], &["list", "watch"]),
            ("discovery.k8s.io", &["endpointslices"], &["list", "watch"]),
            ("events.k8s.io", &["events"], &["create", "patch"]),
        ])
    );
    assert_eq!(
        namespaced,
        expect(&[
            ("metallb.io", CONFIG_KINDS, &["list", "watch"]),
            ("", &["secrets"], &["list", "watch"]),
            (
                "metallb.io",
                &["servicel2statuses", "servicebgpstatuses"],
                &["list", "create", "patch", "delete"]
            ),
            (
                "metallb.io",
                &["servicel2statuses/status", "servicebgpstatuses/status"],
                &["patch"]
            ),
            (
                "frrk8s.metallb.io",
                &["bgpsessionstates"],
                &["list", "create", "patch", "delete"]
            ),
            (
                "frrk8s.metallb.io",
                &["bgpsessionstates/status"],
                &["patch"]
            ),
            (
                "metallb.io",
                &["configurationstates"],
                &["get", "create", "patch"]
            ),
            ("metallb.io", &["configurationstates/status"], &["patch"]),
        ])
    );
}

/// The webhook cannot block an install (failurePolicy Ignore), reaches every replica through
/// its Service, covers every metallb.io kind xdplb reads in every served version, and its
/// names are the controller's defaults (the Secret and configuration it keeps).
#[test]
fn the_webhook_fails_open_and_matches_the_controller() {
    let docs = applied();
    let config: ValidatingWebhookConfiguration = typed(
        docs.iter()
            .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
            .expect("a ValidatingWebhookConfiguration"),
    );
    assert_eq!(
        config.metadata.name.as_deref(),
        Some("xdplb-validating-webhook")
    );
    let hooks = config.webhooks.expect("webhooks");
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.admission_review_versions, vec!["v1".to_owned()]);
    let svc = hook.client_config.service.as_ref().expect("a Service");
    assert_eq!(
        (svc.name.as_str(), svc.path.as_deref()),
        ("xdplb-webhook", Some("/validate"))
    );
    let rules = hook.rules.as_ref().expect("rules");
    let resources: BTreeSet<&str> = rules
        .iter()
        .flat_map(|r| r.resources.iter().flatten().map(String::as_str))
        .collect();
    assert_eq!(resources, CONFIG_KINDS.iter().copied().collect());
    let versions: BTreeSet<&str> = rules
        .iter()
        .flat_map(|r| r.api_versions.iter().flatten().map(String::as_str))
        .collect();
    assert_eq!(versions, BTreeSet::from(["v1beta1", "v1beta2"]));
    let operations: BTreeSet<&str> = rules
        .iter()
        .flat_map(|r| r.operations.iter().flatten().map(String::as_str))
        .collect();
    assert_eq!(operations, BTreeSet::from(["CREATE", "UPDATE", "DELETE"]));
    let service: Service = typed(
        docs.iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "xdplb-webhook")
            .expect("the webhook's Service"),
    );
    let port = &service.spec.expect("spec").ports.expect("ports")[0];
    assert_eq!(port.port, 443);
    let deployment: Deployment = workload("Deployment");
    let container = &deployment.spec.template.spec.expect("pod").containers[0];
    let webhook_port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("webhook"))
        .expect("a webhook port");
    assert_eq!(webhook_port.container_port, 9443);
    // The controller's defaults name these objects.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_lb-controller"))
        .args(["run", "--help"])
        .output()
        .expect("lb-controller run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for default in [
        "[default: xdplb-webhook]",
        "[default: xdplb-webhook-cert]",
        "[default: xdplb-validating-webhook]",
        "[default: 0.0.0.0:9443]",
    ] {
        assert!(help.contains(default), "{default} in:\n{help}");
    }
}

/// `kubectl xdplb` (lb-agent/src/diagnose/cluster.rs) lists these and gets the controller's
/// ConfigurationState: the viewer role grants exactly that, read-only.
#[test]
fn the_plugins_viewer_role_is_read_only_and_what_it_reads() {
    let docs = applied();
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "xdplb-viewer")
        .expect("the xdplb-viewer ClusterRole");
    let rules: Vec<PolicyRule> =
        serde_json::from_value(role["rules"].clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        grants(&rules),
        expect(&[
            ("", &["services", "nodes", "namespaces", "pods"], &["list"]),
            ("discovery.k8s.io", &["endpointslices"], &["list"]),
            ("events.k8s.io", &["events"], &["list"]),
            (
                "metallb.io",
                &[
                    "ipaddresspools",
                    "l2advertisements",
                    "bgpadvertisements",
                    "bgppeers",
                    "bfdprofiles",
                    "communities",
                    "servicel2statuses",
                    "servicebgpstatuses"
                ],
                &["list"]
            ),
            ("metallb.io", &["configurationstates"], &["get"]),
            ("frrk8s.metallb.io", &["bgpsessionstates"], &["list"]),
        ])
    );
}

/// Whether `selector`'s `matchLabels` all hold in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v))
}

/// The optional components (deploy/monitoring/, deploy/networkpolicies/) reach what they are
/// about: the ServiceMonitor the metrics Services and their port, the PodMonitor the
/// controller's and agents' Pods and their port, the NetworkPolicy the controller's Pods and
/// every port it listens on.
#[test]
fn the_monitors_and_policies_select_what_they_are_for() {
    let docs = applied();
    let find =
        |kind: &str| -> Vec<Value> { docs.iter().filter(|d| d["kind"] == kind).cloned().collect() };
    let one = |path: &str| -> Value {
        documents(&deploy().join(path))
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{path} is empty"))
    };
    let metrics_services: Vec<Value> = find("Service")
        .into_iter()
        .filter(|s| {
            s["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-metrics"))
        })
        .collect();
    assert_eq!(metrics_services.len(), 2);
    let sm = one("monitoring/servicemonitor.yaml");
    for svc in &metrics_services {
        assert!(
            selects(&sm["spec"]["selector"], &svc["metadata"]["labels"]),
            "{svc}"
        );
        let port = sm["spec"]["endpoints"][0]["port"].clone();
        assert!(
            svc["spec"]["ports"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == port)),
            "{svc} has no port {port}"
        );
    }
    // The webhook Service shares the labels but has no `metrics` port: scraped nowhere.
    let pm = one("monitoring/podmonitor.yaml");
    let np = one("networkpolicies/controller.yaml");
    for kind in ["Deployment", "DaemonSet"] {
        let workload = &find(kind)[0];
        let pod = &workload["spec"]["template"];
        assert!(
            selects(&pm["spec"]["selector"], &pod["metadata"]["labels"]),
            "{kind}"
        );
        let ports = &pod["spec"]["containers"][0]["ports"];
        assert!(
            ports
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "metrics")),
            "{kind} has no metrics port"
        );
        if kind == "Deployment" {
            assert!(selects(
                &np["spec"]["podSelector"],
                &pod["metadata"]["labels"]
            ));
            let allowed: BTreeSet<i64> = np["spec"]["ingress"][0]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["port"].as_i64())
                .collect();
            let listening: BTreeSet<i64> = ports
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["containerPort"].as_i64())
                .collect();
            assert_eq!(
                allowed, listening,
                "the NetworkPolicy admits exactly the controller's ports"
            );
        }
    }
}

/// `kubectl kustomize` renders both components, and the NetworkPolicy passes
/// `kubernetes-validate --strict` (the monitoring objects are the operator's kinds, which the
/// Kubernetes schemas do not hold).
#[test]
fn the_optional_components_render_and_validate() {
    let render = |dir: &str| {
        std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy().join(dir))
            .output()
    };
    let (Ok(monitoring), Ok(policies)) = (render("monitoring"), render("networkpolicies")) else {
        assert!(!required(), "kubectl kustomize unavailable");
        return;
    };
    assert!(
        monitoring.status.success(),
        "{}",
        String::from_utf8_lossy(&monitoring.stderr)
    );
    let text = String::from_utf8_lossy(&monitoring.stdout);
    assert!(
        text.contains("kind: PrometheusRule") && text.contains("kind: ServiceMonitor"),
        "{text}"
    );
    // The dashboard, as the file is, where Grafana's sidecar looks.
    let docs = lb_controller::config::manifest::documents(Path::new("monitoring"), &text)
        .expect("rendered YAML");
    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "xdplb-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let file = std::fs::read_to_string(deploy().join("monitoring/dashboard.json"))
        .expect("dashboard.json");
    assert_eq!(map["data"]["xdplb.json"], serde_json::json!(file));
    assert!(policies.status.success());
    let Some(validator) = validator() else {
        return;
    };
    let report = kubernetes_validate(&validator, &policies.stdout, "policies");
    assert_eq!(
        report.matches(" passed for resource ").count(),
        1,
        "{report}"
    );
}

#[test]
fn the_cluster_examples_are_valid_metallb_configuration() {
    let dir = deploy().join("examples/cluster");
    let loaded = lb_controller::config::manifest::load(&[dir]).expect("load the examples");
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let report = lb_controller::config::validate::validate(&loaded.objects);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(loaded.objects.pools.len(), 2);
    assert_eq!(loaded.objects.peers.len(), 1);
}

/// `kubectl kustomize deploy/` renders, and every object it renders passes
/// `kubernetes-validate --strict` (the Kubernetes OpenAPI schemas, unknown fields rejected).
#[test]
fn the_kustomization_renders_and_validates_offline_against_the_kubernetes_schemas() {
    let Some(validator) = validator() else {
        return;
    };
    let rendered = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy())
        .output();
    let rendered = match rendered {
        Ok(out) if out.status.success() => out.stdout,
        other => {
            assert!(!required(), "kubectl kustomize deploy/ failed: {other:?}");
            eprintln!("skipped: kubectl kustomize unavailable: {other:?}");
            return;
        }
    };
    let text = String::from_utf8_lossy(&rendered);
    let kinds: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    for kind in [
        "CustomResourceDefinition",
        "DaemonSet",
        "Deployment",
        "ClusterRole",
        "Service",
    ] {
        assert!(
            kinds.contains(kind),
            "rendered output lacks a {kind}: {kinds:?}"
        );
    }
    let report = kubernetes_validate(&validator, &rendered, "rendered");
    let passed = report.matches(" passed for resource ").count();
    assert_eq!(passed, applied().len(), "every object checked:\n{report}");
}

/// deploy/secure-metrics beside deploy/: both binaries serve HTTPS on the port the Pods,
/// probes and Services name, plain HTTP only on localhost, the probes over HTTPS; the
/// components may create exactly the reviews the code asks (metrics_server/secure.rs); every
/// object passes `kubernetes-validate --strict`; deploy/monitoring/secure scrapes that port.
#[test]
fn the_secure_metrics_component_serves_https_where_everything_points() {
    let Some(docs) = kustomize(
        "secure-metrics-test",
        &["deploy"],
        &["deploy/secure-metrics"],
    ) else {
        return;
    };
    for kind in ["Deployment", "DaemonSet"] {
        let workload = docs.iter().find(|d| d["kind"] == kind).expect(kind);
        let container = &workload["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.contains(&"--metrics-addr=127.0.0.1:7472"),
            "{kind}: {args:?}"
        );
        assert!(
            args.contains(&"--secure-metrics-addr=0.0.0.0:9120"),
            "{kind}: {args:?}"
        );
        let port = container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == "https-metrics")
            .expect("an https-metrics port");
        assert_eq!(port["containerPort"], 9120, "{kind}");
        for probe in ["livenessProbe", "readinessProbe"] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["port"], "https-metrics", "{kind} {probe}");
            assert_eq!(get["scheme"], "HTTPS", "{kind} {probe}");
        }
    }
    for service in ["xdplb-controller-metrics", "xdplb-agent-metrics"] {
        let svc = docs
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == service)
            .expect(service);
        assert!(
            svc["spec"]["ports"].as_array().is_some_and(|p| p
                .iter()
                .any(|p| p["name"] == "https-metrics"
                    && p["port"] == 9120
                    && p["targetPort"] == "https-metrics")),
            "{service}: {}",
            svc["spec"]["ports"]
        );
    }
    let rules = |sa: &str| -> Grants {
        let bindings: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding")
            .filter(|d| {
                d["subjects"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["name"] == sa))
            })
            .collect();
        let roles: Vec<PolicyRule> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .filter(|d| {
                bindings
                    .iter()
                    .any(|b| b["roleRef"]["name"] == d["metadata"]["name"])
            })
            .flat_map(|d| {
                serde_json::from_value::<Vec<PolicyRule>>(d["rules"].clone()).expect("rules")
            })
            .collect();
        grants(&roles)
    };
    let reviews = expect(&[
        ("authentication.k8s.io", &["tokenreviews"], &["create"]),
        (
            "authorization.k8s.io",
            &["subjectaccessreviews"],
            &["create"],
        ),
    ]);
    for sa in ["xdplb-controller", "xdplb-agent"] {
        let (plain, _) = rbac_of(sa);
        let with = rules(sa);
        assert_eq!(
            with.difference(&plain).cloned().collect::<Grants>(),
            reviews,
            "{sa}: what the secure metrics add"
        );
    }
    let reader = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "xdplb-metrics-reader")
        .expect("the reader role");
    assert_eq!(
        reader["rules"],
        serde_json::json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
    );
    if let Some(validator) = validator() {
        let yaml: String = docs
            .iter()
            .map(|d| format!("---\n{}\n", serde_json::to_string(d).expect("JSON")))
            .collect();
        let report = kubernetes_validate(&validator, yaml.as_bytes(), "secure-metrics");
        assert_eq!(
            report.matches(" passed for resource ").count(),
            docs.len(),
            "{report}"
        );
    }

    let Some(monitoring) = kustomize(
        "secure-monitoring-test",
        &["deploy/monitoring"],
        &["deploy/monitoring/secure"],
    ) else {
        return;
    };
    let monitor = monitoring
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("the ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "https-metrics");
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(
        endpoint["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
}
