//! The Helm chart (deploy/helm/xdplb), rendered and linted by Helm's own Go SDK
//! (helm-python-sdk, pinned in target/tools/helm by `cargo xtask setup`), with no helm binary
//! and no cluster:
//! - default values render the objects of `kubectl kustomize` of deploy/ with the
//!   deploy/secure-metrics component (the chart serves secure metrics by default, as
//!   MetalLB's does), and with `metrics.secure.enabled: false` those of deploy/ alone, modulo
//!   Helm's labels and the Namespace (Helm's `--create-namespace` makes it);
//! - every rendered object of every values set passes `kubernetes-validate --strict`;
//! - the options do what they say; `values.schema.json` refuses bad values naming the field;
//! - `helm lint --strict` finds nothing.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

mod common;
use common::{kubernetes_validate, kustomize, pinned_tool, root, validator};

const NS: &str = "metallb-system";
/// The labels Helm's conventions add; the kustomization has none of them.
const HELM_LABELS: &[&str] = &[
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

fn chart() -> PathBuf {
    root().join("deploy/helm/xdplb")
}

/// The pinned SDK's Python.
fn python() -> Option<PathBuf> {
    pinned_tool("target/tools/helm/bin/python")
}

/// Runs deploy/helm/render.py; `Err` is its stderr (Helm's message).
fn helm(args: &[&str]) -> Option<Result<Value, String>> {
    let python = python()?;
    let out = Command::new(python)
        .arg(root().join("deploy/helm/render.py"))
        .args(args)
        .output()
        .expect("run render.py");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Some(if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}")))
    } else {
        Err(stderr)
    })
}

/// The chart's objects for `values` (CRDs included, as `helm install` applies them).
fn render(values: &Value) -> Option<Result<Vec<Value>, String>> {
    let chart = chart();
    let rendered = helm(&[
        "render",
        chart.to_str().expect("utf-8"),
        NS,
        &values.to_string(),
    ])?;
    Some(rendered.map(|out| {
        let mut texts: Vec<(String, String)> = out["manifests"]
            .as_object()
            .expect("manifests")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        texts.sort();
        for (i, crd) in out["crds"].as_array().expect("crds").iter().enumerate() {
            texts.push((
                format!("crd-{i}"),
                crd.as_str().unwrap_or_default().to_owned(),
            ));
        }
        texts
            .iter()
            .flat_map(|(name, text)| {
                lb_controller::config::manifest::documents(Path::new(name), text)
                    .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"))
            })
            .filter(|d| !d.is_null())
            .collect()
    }))
}

fn rendered(values: Value) -> Option<Vec<Value>> {
    render(&values).map(|r| r.unwrap_or_else(|e| panic!("rendering {values}: {e}")))
}

/// `255.0` and `255` are one number to the API server (the CRD files write bounds as floats;
/// kustomize re-encodes them as integers).
fn normalize(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *v = json!(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::Object(o) => o.values_mut().for_each(normalize),
        _ => {}
    }
}

/// `kind/namespace/name` → the object without Helm's labels (and without labels at all when
/// only those were there).
fn by_identity(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .map(|mut d| {
            normalize(&mut d);
            if let Some(labels) = d["metadata"]
                .get_mut("labels")
                .and_then(Value::as_object_mut)
            {
                for l in HELM_LABELS {
                    labels.remove(*l);
                }
                if labels.is_empty() {
                    d["metadata"]
                        .as_object_mut()
                        .expect("metadata")
                        .remove("labels");
                }
            }
            let key = format!(
                "{}/{}/{}",
                d["kind"].as_str().unwrap_or_default(),
                d["metadata"]["namespace"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default()
            );
            (key, d)
        })
        .collect()
}

fn same_objects(chart: Vec<Value>, kustomized: Vec<Value>, what: &str) {
    let chart = by_identity(chart);
    let mut kustomized = by_identity(kustomized);
    kustomized.retain(|k, _| !k.starts_with("Namespace/"));
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kustomized.keys().collect::<Vec<_>>(),
        "{what}: the same objects"
    );
    for (key, object) in &chart {
        assert_eq!(
            object, &kustomized[key],
            "{what}: {key} differs from the kustomization's"
        );
    }
}

#[test]
fn default_values_install_what_the_kustomization_and_its_secure_metrics_install() {
    let Some(chart) = rendered(json!({})) else {
        return;
    };
    let Some(kustomized) = kustomize("helm-vs-secure", &["deploy"], &["deploy/secure-metrics"])
    else {
        return;
    };
    same_objects(chart, kustomized, "default values");
}

#[test]
fn plain_metrics_values_install_what_the_kustomization_installs() {
    let Some(chart) = rendered(json!({"metrics": {"secure": {"enabled": false}}})) else {
        return;
    };
    let Some(kustomized) = kustomize("helm-vs-plain", &["deploy"], &[]) else {
        return;
    };
    same_objects(chart, kustomized, "metrics.secure.enabled=false");
}

/// Every option set at once.
fn everything() -> Value {
    json!({
        "loadBalancerClass": "example.com/xdplb",
        "controller": {"image": {"repository": "registry.example/xdplb/lb-controller", "tag": "9.9.9"},
                       "replicas": 3, "logLevel": "debug", "extraArgs": ["--retry-period=1s"],
                       "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
                       "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]},
        "agent": {"heartbeatInterval": "100ms", "failureTimeout": "400ms", "extraArgs": ["--mode=xdp-generic"],
                  "image": {"repository": "registry.example/xdplb/lb-agent", "pullPolicy": "Always"}},
        "metrics": {"port": 7473, "secure": {"port": 9121, "tlsSecret": "xdplb-metrics-tls"}},
        "monitoring": {"prometheusRule": {"enabled": true}, "serviceMonitor": {"enabled": true},
                       "podMonitor": {"enabled": true, "interval": "30s"},
                       "dashboard": {"enabled": true}},
        "networkPolicies": {"enabled": true},
    })
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_option_reaches_the_objects_it_names() {
    let Some(docs) = rendered(everything()) else {
        return;
    };
    let controller = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    let agent = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(find(&docs, "Deployment")["spec"]["replicas"], 3);
    assert_eq!(
        controller["containers"][0]["image"],
        "registry.example/xdplb/lb-controller:9.9.9"
    );
    assert_eq!(
        agent["containers"][0]["image"],
        "registry.example/xdplb/lb-agent:0.1.0"
    );
    assert_eq!(agent["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(
        controller["nodeSelector"],
        json!({"node-role.kubernetes.io/control-plane": ""})
    );
    assert_eq!(controller["tolerations"][0]["key"], "dedicated");
    let tls = [
        "--metrics-tls-cert=/etc/xdplb/metrics-tls/tls.crt",
        "--metrics-tls-key=/etc/xdplb/metrics-tls/tls.key",
    ];
    for (spec, own) in [
        (controller, &["--retry-period=1s"][..]),
        (
            agent,
            &[
                "--heartbeat-interval=100ms",
                "--failure-timeout=400ms",
                "--mode=xdp-generic",
            ][..],
        ),
    ] {
        let c = &spec["containers"][0];
        let args = strings(&c["args"]);
        for want in [
            "--metrics-addr=127.0.0.1:7473",
            "--secure-metrics-addr=0.0.0.0:9121",
            "--lb-class=example.com/xdplb",
        ]
        .iter()
        .chain(&tls)
        .chain(own)
        {
            assert!(args.contains(want), "{want} not in {args:?}");
        }
        assert_eq!(
            c["volumeMounts"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == "metrics-tls"))
                .map(|m| &m["mountPath"]),
            Some(&json!("/etc/xdplb/metrics-tls"))
        );
        assert!(
            spec["volumes"].as_array().is_some_and(|v| v
                .iter()
                .any(|v| v["secret"]["secretName"] == "xdplb-metrics-tls")),
            "{}",
            spec["volumes"]
        );
    }
    assert_eq!(
        controller["containers"][0]["env"][2],
        json!({"name": "RUST_LOG", "value": "debug"})
    );
    // The alerts are the rule file's, as the kustomize component's PrometheusRule has them.
    let component = std::fs::read_to_string(root().join("deploy/monitoring/prometheusrule.yaml"))
        .expect("prometheusrule.yaml");
    let component =
        lb_controller::config::manifest::documents(Path::new("prometheusrule.yaml"), &component)
            .expect("YAML");
    assert_eq!(find(&docs, "PrometheusRule")["spec"], component[0]["spec"]);
    // The dashboard is the file's, where Grafana's sidecar looks.
    let map = find(&docs, "ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let file = std::fs::read_to_string(root().join("deploy/monitoring/dashboard.json"))
        .expect("dashboard.json");
    assert_eq!(map["data"]["xdplb.json"], json!(file));
    for (kind, endpoints) in [
        ("ServiceMonitor", "endpoints"),
        ("PodMonitor", "podMetricsEndpoints"),
    ] {
        let e = &find(&docs, kind)["spec"][endpoints][0];
        assert_eq!(e["port"], "https-metrics", "{kind}");
        assert_eq!(e["scheme"], "https", "{kind}");
    }
    assert_eq!(
        find(&docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["interval"],
        "30s"
    );
    let ports: Vec<&Value> = find(&docs, "NetworkPolicy")["spec"]["ingress"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| &p["port"])
        .collect();
    assert_eq!(ports, [&json!(9121), &json!(9443)]);

    // Without the webhook: no configuration, no Service, and the controller serves none.
    let Some(docs) = rendered(json!({"webhook": {"enabled": false}})) else {
        return;
    };
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ValidatingWebhookConfiguration")
    );
    let args =
        strings(&find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.contains(&"--disable-webhook"), "{args:?}");
}

#[test]
fn every_rendered_object_passes_the_kubernetes_schemas() {
    let Some(validator) = validator() else {
        return;
    };
    for values in [json!({}), everything()] {
        let Some(docs) = rendered(values.clone()) else {
            return;
        };
        // The Prometheus operator's kinds are not Kubernetes': their CRDs are not here.
        let docs: Vec<&Value> = docs
            .iter()
            .filter(|d| d["apiVersion"] != "monitoring.coreos.com/v1")
            .collect();
        let yaml: String = docs.iter().map(|d| format!("---\n{d}\n")).collect();
        let report = kubernetes_validate(&validator, yaml.as_bytes(), "helm");
        assert_eq!(
            report.matches(" passed for resource ").count(),
            docs.len(),
            "{report}"
        );
    }
}

#[test]
fn the_values_schema_refuses_bad_values_naming_the_field() {
    for (values, names) in [
        (
            json!({"controller": {"replicas": "two"}}),
            "/controller/replicas",
        ),
        (json!({"metrics": {"port": 70000}}), "/metrics/port"),
        (
            json!({"agent": {"failureTimeout": "soon"}}),
            "/agent/failureTimeout",
        ),
        (json!({"controler": {}}), "controler"),
        (
            json!({"monitoring": {"serviceMonitor": {"enable": true}}}),
            "enable",
        ),
    ] {
        let Some(result) = render(&values) else {
            return;
        };
        let err = result.expect_err(&format!("{values} is refused"));
        assert!(err.contains(names), "{values}: {err}");
    }
}

#[test]
fn helm_lint_strict_finds_nothing() {
    let chart = chart();
    for values in [json!({}), everything()] {
        let Some(report) = helm(&["lint", chart.to_str().expect("utf-8"), &values.to_string()])
        else {
            return;
        };
        let report = report.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report["errors"], json!([]), "{report}");
        // Severity 1 is information ("icon is recommended"); 2 and 3 are warnings and errors.
        let serious: Vec<&Value> = report["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["severity"].as_u64().is_some_and(|s| s >= 2))
            .collect();
        assert!(serious.is_empty(), "{values}: {serious:?}");
    }
}
