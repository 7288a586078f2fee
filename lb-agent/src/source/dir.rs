//! The standalone source: the metallb.io objects, Nodes, Services and EndpointSlices in a
//! directory and the controller's `status/allocations.yaml`. A task watches the directory
//! (inotify, with a slow poll in case an event is missed), reads only when a file actually
//! changed (path, inode, size, modification time), and parses on a blocking thread.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use lb_controller::{
    allocations,
    config::{
        manifest,
        settle::{LastGood, OnRefusal},
    },
};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Config, peers};
use crate::bgp::policy::{BgpInputs, advertised_ips, plan, service_peers};
use crate::heap::{relocate, trim_heap};
use crate::inputs::Inputs;
use lb_controller::plan::announceable;

/// Changes within this window are read together (an editor's save, the controller's
/// write-and-rename).
const SETTLE: Duration = Duration::from_millis(20);
/// A look at the files even without a change notification, in case one was missed.
const POLL: Duration = Duration::from_secs(5);

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
        .settle(&mut loaded.objects, &loaded.errors)?
        .into_refused();
    let inputs = Inputs::new(&loaded.objects);
    let peers = peers(&loaded.objects.nodes, &inputs, node, port);
    // An unreadable file is refused like a broken configuration: read as "no allocations", it
    // would withdraw every VIP of the cluster.
    let written = allocations::read(dir).map_err(|e| e.to_string())?;
    let (allocations, outside_pools) = announceable(written.allocations, &inputs.spaces);
    let bgp = plan(
        node,
        &BgpInputs::new(&loaded.objects),
        &inputs,
        &allocations,
    );
    drop(loaded);
    Ok(Config {
        bgp_ips: advertised_ips(&bgp, &allocations),
        bgp_services: service_peers(&bgp, &allocations),
        inputs,
        allocations,
        peers,
        secret: None,
        bgp,
        refused,
        outside_pools,
    })
}

/// What identifies the current contents of the directory without reading them.
type Fingerprint = Vec<(PathBuf, u64, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for d in [dir.to_path_buf(), dir.join(allocations::STATUS_DIR)] {
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
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = events_tx.try_send(());
        }
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::Recursive).map(|()| w));
    // Without notifications (the host's inotify instances used up, say) the poll alone still
    // sees every change, later: worth a warning, not a refusal to run.
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, every = ?POLL, "cannot be notified of changes to the configuration directory (see fs.inotify.max_user_instances); looking at it periodically instead");
            None
        }
    };
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
