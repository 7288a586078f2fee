//! Holding the leader Lease: the I/O around [`super::lease::Elector`]. Every `retry` the Lease
//! is read and written as the elector says; whether we lead is published on a watch channel.
//! Leadership is given up when a renewal has not succeeded for `renew_deadline` (shorter than
//! the lease duration, so we stop acting before anyone else may start), and the Lease is
//! released on shutdown so a rolling update hands over at once.
use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{PostParams, entry::Entry},
};
use tokio::sync::watch;

use super::lease::{Elector, Record, Step};

pub const LEASE_NAME: &str = "xdplb-controller";

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl Default for Timing {
    /// client-go's defaults.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

fn record(lease: &Lease) -> Record {
    let spec = lease.spec.clone().unwrap_or_default();
    Record {
        holder: spec.holder_identity,
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(0) as u64),
        renew_time: spec.renew_time.map(|t| t.0.to_string()),
        transitions: spec.lease_transitions.unwrap_or(0),
    }
}

/// Whether we hold the Lease after one read-and-write.
async fn attempt(
    api: &Api<Lease>,
    elector: &mut Elector,
    timing: &Timing,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(LEASE_NAME).await?;
    let now = MicroTime(Timestamp::now());
    let seconds = i32::try_from(timing.duration.as_secs()).unwrap_or(i32::MAX);
    let step = elector.step(current.as_ref().map(record).as_ref(), Instant::now());
    let mut lease = match (&step, current) {
        (Step::Follow { holder, expires_in }, _) => {
            tracing::debug!(%holder, ?expires_in, "another replica leads");
            return Ok(false);
        }
        (Step::Create, _) | (_, None) => Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(elector.identity().into()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        },
        (Step::Acquire { transitions }, Some(mut lease)) => {
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(elector.identity().into()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(*transitions),
                ..Default::default()
            });
            lease
        }
        (Step::Renew, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(seconds);
            lease
        }
    };
    let written = if matches!(step, Step::Create) {
        api.create(&PostParams::default(), &lease).await
    } else {
        // Carries the resourceVersion that was read: a racing writer gets 409.
        lease.metadata.managed_fields = None;
        api.replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
    };
    match written {
        Ok(_) => {
            if !matches!(step, Step::Renew) {
                tracing::info!(identity = elector.identity(), "acquired the leader lease");
            }
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!("another replica took the leader lease first");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (only if we still hold it).
async fn release(api: &Api<Lease>, identity: &str) {
    let entry = match api.entry(LEASE_NAME).await {
        Ok(Entry::Occupied(e)) => e,
        _ => return,
    };
    let mut entry = entry;
    let spec = entry.get_mut().spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = Some(String::new());
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    match entry.commit(&PostParams::default()).await {
        Ok(()) => tracing::info!("released the leader lease"),
        Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
    }
}

/// Runs until `stop` turns true; `leading` says whether we lead.
pub async fn hold(
    api: Api<Lease>,
    mut elector: Elector,
    timing: Timing,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_ok: Option<Instant> = None;
    loop {
        match attempt(&api, &mut elector, &timing).await {
            Ok(true) => last_ok = Some(Instant::now()),
            Ok(false) => last_ok = None,
            Err(e) => tracing::warn!(error = %e, "cannot reach the leader lease"),
        }
        let lead = last_ok.is_some_and(|t| t.elapsed() < timing.renew_deadline);
        leading.send_if_modified(|l| std::mem::replace(l, lead) != lead);
        tokio::select! {
            () = tokio::time::sleep(timing.retry) => {}
            _ = stop.changed() => {
                leading.send_replace(false);
                if lead {
                    release(&api, elector.identity()).await;
                }
                return;
            }
        }
    }
}
