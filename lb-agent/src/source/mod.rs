//! Where the agent's configuration comes from, read off its main loop. Here the standalone
//! source: the metallb.io objects, Nodes, Services and EndpointSlices in DIR and the
//! controller's `status/allocations.yaml`; [`cluster`] reads the same from the API server.
//!
//! Reading a large configuration takes long (10,000 Services parse in a few hundred
//! milliseconds), longer than the failure timeout: done on the main loop it would silence the
//! heartbeats and get this node declared dead. So a task of its own watches the directory
//! (inotify, with a slow poll in case an event is missed), reads only when a file actually
//! changed (path, inode, size, modification time), parses on a blocking thread, and hands each
//! result to the main loop.
//!
//! A reading whose configuration is invalid is refused whole here, as the standalone
//! controller refuses it (one operator edits the directory: a broken edit changes nothing). In
//! a cluster, as the controller there does, the last good configuration objects stay in place
//! of the reading's, and the rest (Services, Nodes, EndpointSlices) is followed. An agent that
//! starts while the configuration is invalid has no last good one: it acts on the valid part
//! (see [`LastGood::settle`]).
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use lb_controller::{
    config::{Problem, manifest, manifest::Objects, validate},
    metrics::Metrics,
    plan::PlanEntry,
    standalone::Standalone,
};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::bgp::policy::{BgpInputs, Plan, advertised_ips, plan};
use crate::desired::Inputs;

/// A configuration that passed validation.
#[derive(Clone)]
pub struct Config {
    pub inputs: Inputs,
    pub allocations: Vec<PlanEntry>,
    /// Heartbeat targets: every other Node's InternalIP.
    pub peers: Vec<SocketAddr>,
    /// The membership secret, when the source carries it (in a cluster, MetalLB's Secret);
    /// standalone agents read theirs from a file.
    pub secret: Option<Vec<u8>>,
    /// This node's BGP sessions and what each advertises.
    pub bgp: Plan,
    /// The addresses among them this node must accept traffic for.
    pub bgp_ips: BTreeSet<IpAddr>,
    /// In a cluster: `namespace/name` of each Service this node advertises → the BGPPeers
    /// (ServiceBGPStatus). Empty standalone, where nothing reads it.
    pub bgp_services: crate::statuses::Wanted,
    /// Why the reading's own configuration objects were refused (the last good ones, or the
    /// valid part, stand in for them).
    pub refused: Option<String>,
}

/// What stays when a reading is refused after a good one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRefusal {
    /// Everything: the reading is dropped (`Err`), the caller keeps what it has.
    LastReading,
    /// The configuration objects: the rest of the reading is followed.
    LastConfigObjects,
}

/// The configuration objects of the last reading that passed validation.
pub struct LastGood {
    on_refusal: OnRefusal,
    objects: Option<Objects>,
}

impl LastGood {
    pub fn new(on_refusal: OnRefusal) -> Self {
        Self {
            on_refusal,
            objects: None,
        }
    }

    /// Makes `objects` something to act on. A valid reading stays as it is and becomes the
    /// last good one (`Ok(None)`). A refused one after a good one is dropped (`Err`) or, with
    /// [`OnRefusal::LastConfigObjects`], gets the last good IPAddressPools, advertisements,
    /// BGPPeers, BFDProfiles and Communities in place of its own (`Ok(Some(why))`). Without a
    /// good one yet, or if those no longer pass, the valid part of what there is is used
    /// (`Ok(Some(why))`). `Err` too when nothing valid is left to act on.
    pub fn settle(
        &mut self,
        objects: &mut Objects,
        load_errors: &[Problem],
    ) -> Result<Option<String>, String> {
        let report = validate::validate(objects);
        let Some(why) = load_errors.iter().chain(&report.errors).next() else {
            self.objects = Some(config_part(objects));
            return Ok(None);
        };
        let why = why.to_string();
        if let Some(good) = &self.objects {
            if self.on_refusal == OnRefusal::LastReading {
                return Err(why);
            }
            let mut kept = objects.clone();
            put_config(&mut kept, good);
            if validate::validate(&kept).errors.is_empty() {
                *objects = kept;
                return Ok(Some(why));
            }
        }
        let (part, left_out) = validate::valid_part(objects).ok_or_else(|| why.clone())?;
        *objects = part;
        let left: Vec<String> = left_out
            .iter()
            .map(|p| format!("{}/{}", p.kind, p.name))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if left.is_empty() {
            return Ok(Some(why));
        }
        Ok(Some(format!(
            "{why} (left out until fixed: {})",
            left.join(", ")
        )))
    }
}

fn config_part(o: &Objects) -> Objects {
    let mut part = Objects::default();
    put_config(&mut part, o);
    part
}

fn put_config(into: &mut Objects, from: &Objects) {
    into.pools.clone_from(&from.pools);
    into.l2_advertisements.clone_from(&from.l2_advertisements);
    into.bgp_advertisements.clone_from(&from.bgp_advertisements);
    into.peers.clone_from(&from.peers);
    into.bfd_profiles.clone_from(&from.bfd_profiles);
    into.communities.clone_from(&from.communities);
}

pub mod cluster;

/// Changes within this window are read together (an editor's save, the controller's
/// write-and-rename).
const SETTLE: Duration = Duration::from_millis(20);
/// A look at the files even without a change notification, in case one was missed.
const POLL: Duration = Duration::from_secs(5);

fn internal_ip(node: &Node) -> Option<IpAddr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    addrs
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

/// Heartbeat targets: the InternalIP of every Node but `me`, at `port`.
pub(crate) fn peers(nodes: &[Node], me: &str, port: u16) -> Vec<SocketAddr> {
    nodes
        .iter()
        .filter(|n| n.name_any() != me)
        .filter_map(internal_ip)
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Reads and validates the configuration of `node` (the controller's own validation: an agent
/// never acts on a configuration the controller would refuse), settled by `good`.
pub fn read(dir: &Path, node: &str, port: u16, good: &Mutex<LastGood>) -> Result<Config, String> {
    let mut loaded = manifest::load_with(
        std::slice::from_ref(&dir.to_path_buf()),
        manifest::Strictness::Lenient,
    )
    .map_err(|e| e.to_string())?;
    let refused = good
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .settle(&mut loaded.objects, &loaded.errors)?;
    let reader = Standalone::new(dir.to_path_buf(), None, Arc::new(Metrics::default()));
    let allocations = reader.read_allocations().allocations;
    let peers = peers(&loaded.objects.nodes, node, port);
    let inputs = Inputs::new(&loaded.objects);
    let bgp = plan(
        node,
        &BgpInputs::new(&loaded.objects),
        &inputs,
        &allocations,
    );
    drop(loaded);
    Ok(Config {
        bgp_ips: advertised_ips(&bgp, &allocations),
        bgp_services: Default::default(),
        inputs,
        allocations,
        peers,
        secret: None,
        bgp,
        refused,
    })
}

/// A copy made on the calling thread, the original freed.
pub(crate) fn relocate(c: Config) -> Config {
    let copy = c.clone();
    drop(c);
    copy
}

/// Gives free heap pages back to the system (glibc returns only the top of a heap by itself).
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases memory that is free.
    unsafe { libc::malloc_trim(0) };
}

/// What identifies the current contents of the directory without reading them.
type Fingerprint = Vec<(PathBuf, u64, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for d in [
        dir.to_path_buf(),
        dir.join(lb_controller::standalone::STATUS_DIR),
    ] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if let (true, Ok(meta)) = (yaml, std::fs::metadata(&path)) {
                out.push((path, meta.ino(), meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Starts watching `dir`: the receiver gets the first reading at once and one more whenever
/// the files change. `Err` carries why a reading was refused (the last good one should stay).
pub fn watch(
    dir: PathBuf,
    node: String,
    port: u16,
) -> anyhow::Result<mpsc::Receiver<Result<Arc<Config>, String>>> {
    let (events_tx, mut events) = mpsc::channel::<()>(16);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = events_tx.try_send(());
        }
    })?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _watcher = watcher;
        let good = Arc::new(Mutex::new(LastGood::new(OnRefusal::LastReading)));
        let mut last: Option<Fingerprint> = None;
        let mut poll = tokio::time::interval(POLL);
        loop {
            let print = fingerprint(&dir);
            if last.as_ref() != Some(&print) {
                let (d, n, g) = (dir.clone(), node.clone(), good.clone());
                let result = tokio::task::spawn_blocking(move || read(&d, &n, port, &g))
                    .await
                    .unwrap_or_else(|e| Err(format!("reading the configuration: {e}")))
                    // Copied out of the parsing thread's heap, which can then be given back
                    // whole: kept there, the few long-lived objects would pin every page the
                    // parse touched (tens of MB with 10,000 Services).
                    .map(relocate);
                trim_heap();
                last = Some(print);
                if tx.send(result.map(Arc::new)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                Some(()) = events.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while events.try_recv().is_ok() {}
                }
                _ = poll.tick() => {}
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use lb_controller::config::types::{IPAddressPool, IPAddressPoolSpec, L2Advertisement};

    use super::*;

    fn pool(name: &str, cidr: &str) -> IPAddressPool {
        IPAddressPool::new(
            name,
            IPAddressPoolSpec {
                addresses: vec![cidr.into()],
                ..IPAddressPoolSpec::default()
            },
        )
    }

    fn service(name: &str) -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap_or_default()
    }

    fn names<T: ResourceExt>(v: &[T]) -> Vec<String> {
        v.iter().map(|o| o.name_any()).collect()
    }

    #[test]
    fn a_refused_configuration_keeps_the_last_good_objects_and_follows_the_rest() {
        let mut good = LastGood::new(OnRefusal::LastConfigObjects);
        let mut first = Objects {
            pools: vec![pool("lab", "10.0.0.0/24")],
            l2_advertisements: vec![L2Advertisement::new("l2", Default::default())],
            services: vec![service("web")],
            ..Objects::default()
        };
        assert_eq!(good.settle(&mut first, &[]), Ok(None));

        // The pool is edited into something invalid while a Service is added.
        let mut second = Objects {
            pools: vec![pool("lab", "10.0.0.0/33")],
            services: vec![service("web"), service("api")],
            ..first.clone()
        };
        let why = good
            .settle(&mut second, &[])
            .ok()
            .flatten()
            .unwrap_or_default();
        assert!(
            why.contains("IPAddressPool/lab") && why.contains("spec.addresses"),
            "{why}"
        );
        assert_eq!(second.pools[0].spec.addresses, ["10.0.0.0/24"]);
        assert_eq!(names(&second.services), ["web", "api"]);

        // Fixed: the reading is taken as it is again.
        let mut third = Objects {
            pools: vec![pool("lab", "10.0.1.0/24")],
            ..second.clone()
        };
        assert_eq!(good.settle(&mut third, &[]), Ok(None));
        assert_eq!(third.pools[0].spec.addresses, ["10.0.1.0/24"]);
    }

    #[test]
    fn with_nothing_good_yet_the_valid_part_is_used() {
        let mut good = LastGood::new(OnRefusal::LastConfigObjects);
        let mut objects = Objects {
            pools: vec![pool("lab", "10.0.0.0/24"), pool("bad", "10.0.0.0/33")],
            services: vec![service("web")],
            ..Objects::default()
        };
        let why = good
            .settle(&mut objects, &[])
            .ok()
            .flatten()
            .unwrap_or_default();
        assert!(
            why.contains("left out until fixed: IPAddressPool/bad"),
            "{why}"
        );
        assert_eq!(names(&objects.pools), ["lab"]);
        // What was settled this way is not remembered as good: a later invalid reading
        // still starts from its own valid part.
        let mut again = Objects {
            pools: vec![pool("other", "10.9.0.0/24"), pool("bad", "10.0.0.0/33")],
            ..Objects::default()
        };
        assert!(good.settle(&mut again, &[]).is_ok_and(|w| w.is_some()));
        assert_eq!(names(&again.pools), ["other"]);
    }

    #[test]
    fn standalone_a_refused_reading_is_dropped_whole_once_one_was_good() {
        let mut good = LastGood::new(OnRefusal::LastReading);
        let mut bad = Objects {
            pools: vec![pool("lab", "10.0.0.0/24"), pool("bad", "10.0.0.0/33")],
            ..Objects::default()
        };
        assert!(good.settle(&mut bad, &[]).is_ok_and(|w| w.is_some()));
        let mut fine = Objects {
            pools: vec![pool("lab", "10.0.0.0/24")],
            ..Objects::default()
        };
        assert_eq!(good.settle(&mut fine, &[]), Ok(None));
        let mut broken = Objects {
            pools: vec![pool("lab", "10.0.0.0/33")],
            ..Objects::default()
        };
        let err = good.settle(&mut broken, &[]).err().unwrap_or_default();
        assert!(err.contains("IPAddressPool/lab"), "{err}");
    }

    #[test]
    fn a_load_error_refuses_the_reading() {
        let mut good = LastGood::new(OnRefusal::LastConfigObjects);
        let mut first = Objects {
            pools: vec![pool("lab", "10.0.0.0/24")],
            ..Objects::default()
        };
        assert_eq!(good.settle(&mut first, &[]), Ok(None));
        let broken = Problem::new("", "pools.yaml", "", "not YAML");
        let mut second = Objects::default();
        let why = good
            .settle(&mut second, &[broken])
            .ok()
            .flatten()
            .unwrap_or_default();
        assert!(why.contains("not YAML"), "{why}");
        assert_eq!(names(&second.pools), ["lab"]);
    }
}
