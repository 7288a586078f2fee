//! The metric types and labels the agent's parts share: the BGP speaker and the BFD service
//! register theirs with these, and [`super::AgentMetrics`] gathers them all. A leaf: it imports
//! nothing of the agent.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct IpLabel {
    pub ip: String,
}

/// Counters per label set written without the `_total` suffix prometheus-client adds to its
/// own, as MetalLB's Go client exposes `metallb_layer2_gratuitous_sent` and its FRR mode the
/// `metallb_bfd_*` counters.
#[derive(Debug, Clone)]
pub struct Counts<L>(Arc<Mutex<BTreeMap<L, u64>>>);

impl<L> Default for Counts<L> {
    fn default() -> Self {
        Counts(Arc::default())
    }
}

impl<L: Ord + Clone> Counts<L> {
    pub fn add(&self, label: &L, n: u64) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(label.clone()).or_default() += n;
        }
    }

    pub fn remove(&self, label: &L) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(label);
        }
    }
}

pub type PerIp = Counts<IpLabel>;

impl<L: Ord + Clone + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> EncodeMetric
    for Counts<L>
{
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let snapshot: Vec<(L, u64)> = match self.0.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(_) => Vec::new(),
        };
        for (label, value) in snapshot {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(encoder.encode_family(&label)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The label of the BGP and BFD metrics: the peer (`address:port` for BGP, as MetalLB's native
/// speaker; the address for BFD, as its FRR mode).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}
