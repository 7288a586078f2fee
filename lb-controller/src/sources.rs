//! The cluster as the controller and the agents read it: one reflector per kind. The metallb.io
//! objects and Secrets are read in the installation's namespace (as MetalLB does; the agents
//! only the Secrets they are handed, by name), Services, Namespaces and Nodes cluster-wide.
//! Every change wakes the reader's loop.
use std::{fmt::Debug, hash::Hash, sync::Arc};

use futures_util::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::{
    api::core::v1::{Namespace, Node, Secret, Service},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::config::{
    manifest::Objects,
    types::{BFDProfile, BGPAdvertisement, Community, IPAddressPool, L2Advertisement, v1beta2},
};

pub type Reader<K> = reflector::Store<K>;

pub struct Sources {
    pools: Reader<IPAddressPool>,
    l2: Reader<L2Advertisement>,
    bgp: Reader<BGPAdvertisement>,
    peers: Reader<v1beta2::BGPPeer>,
    bfd: Reader<BFDProfile>,
    communities: Reader<Community>,
    secrets: Vec<Reader<Secret>>,
    namespaces: Reader<Namespace>,
    nodes: Reader<Node>,
    services: Reader<Service>,
}

/// Which Secrets of the namespace a reader follows.
#[derive(Clone, Copy, Debug)]
pub enum SecretScope<'a> {
    /// All of them (the controller: it checks every `passwordSecret`).
    All,
    /// Only these, each watched by name, as an RBAC rule with `resourceNames` allows.
    Named(&'a [&'a str]),
}

pub fn watch<K>(
    api: Api<K>,
    changed: Arc<Notify>,
    tasks: &mut Vec<BoxFuture<'static, ()>>,
) -> Reader<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    watch_with(api, watcher::Config::default(), changed, tasks)
}

/// [`watch`], with the list and watch narrowed by `config` (selectors).
pub fn watch_with<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    tasks: &mut Vec<BoxFuture<'static, ()>>,
) -> Reader<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    tasks.push(
        async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => changed.notify_one(),
                    // The watcher relists by itself (410 Gone included); say why it had to.
                    Err(e) => tracing::warn!(%kind, error = %e, "watch interrupted; resuming"),
                }
            }
        }
        .boxed(),
    );
    reader
}

fn owned<K>(reader: &Reader<K>) -> Vec<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    reader.state().iter().map(|k| (**k).clone()).collect()
}

impl Sources {
    /// The reflectors, and the tasks that feed them (the caller spawns those).
    pub fn start(
        client: &Client,
        namespace: &str,
        secrets: SecretScope<'_>,
        changed: Arc<Notify>,
    ) -> (Self, Vec<BoxFuture<'static, ()>>) {
        let mut tasks = Vec::new();
        let c = client.clone();
        let ns = namespace;
        let secrets = match secrets {
            SecretScope::All => vec![watch(
                Api::namespaced(c.clone(), ns),
                changed.clone(),
                &mut tasks,
            )],
            SecretScope::Named(names) => names
                .iter()
                .map(|name| {
                    watch_with(
                        Api::namespaced(c.clone(), ns),
                        watcher::Config::default().fields(&format!("metadata.name={name}")),
                        changed.clone(),
                        &mut tasks,
                    )
                })
                .collect(),
        };
        let sources = Sources {
            pools: watch(Api::namespaced(c.clone(), ns), changed.clone(), &mut tasks),
            l2: watch(Api::namespaced(c.clone(), ns), changed.clone(), &mut tasks),
            bgp: watch(Api::namespaced(c.clone(), ns), changed.clone(), &mut tasks),
            peers: watch(Api::namespaced(c.clone(), ns), changed.clone(), &mut tasks),
            bfd: watch(Api::namespaced(c.clone(), ns), changed.clone(), &mut tasks),
            communities: watch(Api::namespaced(c.clone(), ns), changed.clone(), &mut tasks),
            secrets,
            namespaces: watch(Api::all(c.clone()), changed.clone(), &mut tasks),
            nodes: watch(Api::all(c.clone()), changed.clone(), &mut tasks),
            services: watch(Api::all(c), changed, &mut tasks),
        };
        (sources, tasks)
    }

    /// Returns once every reflector has its first full list.
    pub async fn wait_ready(&self) {
        let _ = tokio::join!(
            self.pools.wait_until_ready(),
            self.l2.wait_until_ready(),
            self.bgp.wait_until_ready(),
            self.peers.wait_until_ready(),
            self.bfd.wait_until_ready(),
            self.communities.wait_until_ready(),
            futures_util::future::join_all(self.secrets.iter().map(|s| s.wait_until_ready())),
            self.namespaces.wait_until_ready(),
            self.nodes.wait_until_ready(),
            self.services.wait_until_ready(),
        );
    }

    /// A snapshot in a stable order: configuration objects by name, Services oldest first (so
    /// when addresses are short, the Service created first gets one, whatever the cache order).
    pub fn objects(&self) -> Objects {
        fn by_name<K: ResourceExt>(mut v: Vec<K>) -> Vec<K> {
            v.sort_by_key(|k| (k.namespace(), k.name_any()));
            v
        }
        let mut services = owned(&self.services);
        services.sort_by_key(|s| {
            (
                s.creation_timestamp().map(|Time(t)| t),
                s.namespace(),
                s.name_any(),
            )
        });
        Objects {
            pools: by_name(owned(&self.pools)),
            l2_advertisements: by_name(owned(&self.l2)),
            bgp_advertisements: by_name(owned(&self.bgp)),
            peers: by_name(owned(&self.peers)),
            bfd_profiles: by_name(owned(&self.bfd)),
            communities: by_name(owned(&self.communities)),
            namespaces: by_name(owned(&self.namespaces)),
            nodes: by_name(owned(&self.nodes)),
            secrets: by_name(self.secrets.iter().flat_map(owned).collect()),
            services,
            endpoint_slices: Vec::new(),
        }
    }
}
