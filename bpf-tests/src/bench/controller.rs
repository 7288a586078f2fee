//! The controller at scale, for the bench: 10,000 Services over 200 pools (IPv4, IPv6 and
//! dual-stack pools; single-stack and dual-stack Services), read from YAML as a user's
//! configuration would be. Times parsing, validation, the whole plan, one more Service on the
//! planned state, a re-plan after one pool is edited, and the resident memory of the real
//! `lb-controller run --config-dir` holding it all, beside the same process with no Services.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_controller::{
    config::{manifest, validate},
    ipam::{allocator::Allocator, service},
    plan,
};

pub const SERVICES: usize = 10_000;
pub const POOLS: usize = 200;

pub struct ScaleFigures {
    pub parse: Duration,
    pub validate: Duration,
    pub plan: Duration,
    pub pending: usize,
    /// One more Service assigned on the allocator that holds the plan.
    pub add_one: Duration,
    /// The whole pass a controller runs today when one Service is added.
    pub add_one_full: Duration,
    pub pool_edit: Duration,
    pub moved: usize,
    /// (with 10,000 Services, with none), kB.
    pub rss_kb: Option<(u64, u64)>,
}

fn pools_yaml() -> String {
    let mut out = String::new();
    for i in 0..POOLS {
        let (hi, lo) = (i / 250, i % 250);
        let addresses = match i % 3 {
            0 => format!("[10.{}.{lo}.0/24]", 100 + hi),
            1 => format!("[\"fd00:{i:x}::/120\"]"),
            _ => format!("[10.{}.{lo}.0/24, \"fd00:{i:x}::/120\"]", 100 + hi),
        };
        let _ = write!(
            out,
            "---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: pool-{i:03}\n  namespace: metallb-system\nspec:\n  addresses: {addresses}\n"
        );
    }
    out
}

fn services_yaml() -> String {
    let mut out = String::new();
    for i in 0..SERVICES {
        let (policy, families, ips) = match i % 5 {
            0..=2 => (
                "SingleStack",
                "[IPv4]",
                format!("[10.96.{}.{}]", i / 250, i % 250),
            ),
            3 => ("SingleStack", "[IPv6]", format!("[\"fd96::{i:x}\"]")),
            _ => (
                "PreferDualStack",
                "[IPv4, IPv6]",
                format!("[10.96.{}.{}, \"fd96::{i:x}\"]", i / 250, i % 250),
            ),
        };
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i:05}\n  namespace: default\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: {policy}\n  ipFamilies: {families}\n  clusterIPs: {ips}\n  ports: [{{port: 80, protocol: TCP}}]\n"
        );
    }
    out
}

fn write_dir(with_services: bool) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(crate::unique("xdplb-scale"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("pools.yaml"), pools_yaml()).map_err(|e| e.to_string())?;
    if with_services {
        std::fs::write(dir.join("services.yaml"), services_yaml()).map_err(|e| e.to_string())?;
    }
    Ok(dir)
}

/// VmRSS of `lb-controller run --config-dir DIR` once it has written its allocations.
fn controller_rss(dir: &Path) -> Result<u64, String> {
    let bin = crate::harness::agent::workspace_bin("lb-controller");
    let mut child = Command::new(bin)
        .args(["run", "--metrics-addr", "127.0.0.1:0", "--config-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start lb-controller: {e}"))?;
    let file = dir.join("status/allocations.yaml");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the pass finish and settle.
    std::thread::sleep(Duration::from_millis(300));
    let rss = crate::rss_kb(child.id());
    let _ = child.kill();
    let _ = child.wait();
    if !file.exists() {
        return Err("the controller wrote no allocations within 60 s".into());
    }
    rss
}

pub fn run() -> Result<ScaleFigures, String> {
    let dir = write_dir(true)?;
    let start = Instant::now();
    let loaded = manifest::load(std::slice::from_ref(&dir)).map_err(|e| e.to_string())?;
    let parse = start.elapsed();
    let objects = loaded.objects;
    if objects.services.len() != SERVICES || objects.pools.len() != POOLS {
        return Err("the scale input did not load whole".into());
    }
    let start = Instant::now();
    let report = validate::validate(&objects);
    let validate = start.elapsed();
    if let Some(e) = report.errors.first() {
        return Err(format!("the scale configuration is invalid: {e}"));
    }
    let start = Instant::now();
    let first = plan::plan(&objects, None, &BTreeMap::new());
    let plan_time = start.elapsed();
    let pending = first.iter().filter(|e| e.pending.is_some()).count();

    // One more Service: on the allocator that holds the plan, and as a whole pass.
    let mut allocator = Allocator::new(plan::pool_defs(&objects.pools));
    let no_labels = BTreeMap::new();
    let previous: BTreeMap<String, Vec<std::net::IpAddr>> = first
        .iter()
        .map(|e| (e.service.clone(), e.ips.clone()))
        .collect();
    for (svc, entry) in objects.services.iter().zip(&first) {
        if let Ok(mut r) = service::request(svc, &no_labels) {
            r.current = entry.ips.clone();
            allocator.keep(&r);
        }
    }
    let mut extra = objects.services[0].clone();
    extra.metadata.name = Some("svc-extra".into());
    let request = service::request(&extra, &no_labels).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let got = allocator.assign(&request);
    let add_one = start.elapsed();
    if got.is_err() {
        return Err("no address for the extra Service".into());
    }
    let mut plus_one = objects.clone();
    plus_one.services.push(extra);
    let start = Instant::now();
    let _ = validate::validate(&plus_one);
    let _ = plan::plan(&plus_one, None, &previous);
    let add_one_full = start.elapsed();

    // A pool edited: pool-000 shrinks to its upper half; its Services in the lower half move.
    let mut edited = objects.clone();
    edited.pools[0].spec.addresses = vec!["10.100.0.128/25".into()];
    let start = Instant::now();
    let _ = validate::validate(&edited);
    let second = plan::plan(&edited, None, &previous);
    let pool_edit = start.elapsed();
    let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();

    let empty = write_dir(false)?;
    let rss_kb = match (controller_rss(&dir), controller_rss(&empty)) {
        (Ok(full), Ok(none)) => Some((full, none)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("controller RSS not measured: {e}");
            None
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
    Ok(ScaleFigures {
        parse,
        validate,
        plan: plan_time,
        pending,
        add_one,
        add_one_full,
        pool_edit,
        moved,
        rss_kb,
    })
}
