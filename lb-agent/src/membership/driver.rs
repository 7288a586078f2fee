//! The UDP edge of membership: this agent's heartbeats out, the peers' in. Every datagram is
//! decoded and checked (secret, sender, freshness) before it reaches the [`Detector`]; a
//! refused one is counted, and logged at most once per reason and ten seconds, so a flood of
//! forged datagrams is seen in the metrics without flooding the log.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;
use tracing::{info, warn};

use super::{
    Rejected,
    detector::{Changes, Detector, Heard, View},
    heartbeat::{Heartbeat, HeartbeatError, Phase},
};
use crate::metrics::AgentMetrics;

/// The shortest usable membership secret: the HMAC must not be trivially guessed.
const MIN_SECRET: usize = 16;
/// Datagrams larger than this are not heartbeats.
const MAX_DATAGRAM: usize = 1500;

/// A usable membership secret: at least 16 bytes.
pub fn check_secret(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < MIN_SECRET {
        return Err(format!(
            "the membership secret must be at least {MIN_SECRET} bytes (it has {})",
            bytes.len()
        ));
    }
    Ok(bytes.to_vec())
}

/// This agent's heartbeats: one epoch per run, numbered within it.
struct Beats {
    node: String,
    epoch: u64,
    seq: u64,
}

impl Beats {
    fn next(&mut self, phase: Phase) -> Heartbeat {
        self.seq += 1;
        Heartbeat {
            node: self.node.clone(),
            epoch: self.epoch,
            seq: self.seq,
            echo: 0,
            hold_ms: 0,
            phase,
        }
    }
}

/// A run's epoch: random, so that no clock (which may go back between runs) is involved, and
/// never 0, which a heartbeat echoes for "not heard yet".
fn random_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let random = if n == 8 {
        u64::from_ne_bytes(bytes)
    } else {
        // Without the kernel's generator (never on Linux >= 3.17), the start time and PID
        // still differ between runs.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    };
    random.max(1)
}

/// Logs a refused heartbeat at most once per reason and interval.
#[derive(Default)]
struct RejectLog {
    last: [Option<Instant>; 4],
}

impl RejectLog {
    fn should_log(&mut self, why: Rejected, now: Instant) -> bool {
        let slot = &mut self.last[why as usize];
        if slot.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            return false;
        }
        *slot = Some(now);
        true
    }
}

fn rejected_by(e: &HeartbeatError) -> Rejected {
    match e {
        HeartbeatError::Auth | HeartbeatError::Key => Rejected::Auth,
        _ => Rejected::Malformed,
    }
}

/// Membership's socket, detector and secret.
pub struct Membership {
    udp: UdpSocket,
    node: String,
    beats: Beats,
    detector: Detector,
    changes: Changes,
    /// Nothing is sent or accepted without one.
    secret: Option<Vec<u8>>,
    /// Why the cluster's secret is not usable, as last logged.
    secret_problem: Option<String>,
    reject_log: RejectLog,
    metrics: Arc<AgentMetrics>,
    buf: Vec<u8>,
}

impl Membership {
    /// Binds the heartbeat port (IPv6 and IPv4, or IPv4 alone where there is no IPv6).
    pub async fn bind(
        port: u16,
        node: &str,
        failure_timeout: Duration,
        secret: Option<Vec<u8>>,
        metrics: Arc<AgentMetrics>,
    ) -> std::io::Result<Self> {
        let epoch = random_epoch();
        let udp = match UdpSocket::bind(("::", port)).await {
            Ok(udp) => udp,
            Err(_) => {
                let s = std::net::UdpSocket::bind(("0.0.0.0", port))?;
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s)?
            }
        };
        Ok(Self {
            udp,
            node: node.to_owned(),
            beats: Beats {
                node: node.to_owned(),
                epoch,
                seq: 0,
            },
            detector: Detector::new(failure_timeout, epoch),
            changes: Changes::default(),
            secret,
            secret_problem: None,
            reject_log: RejectLog::default(),
            metrics,
            buf: vec![0u8; MAX_DATAGRAM],
        })
    }

    /// Takes the secret the cluster holds (`Err`: why there is none usable), logging each new
    /// problem once.
    pub fn follow_secret(&mut self, from_cluster: Result<Vec<u8>, String>) {
        match from_cluster {
            Ok(s) => {
                self.secret = Some(s);
                self.secret_problem = None;
            }
            Err(e) => {
                if self.secret_problem.as_deref() != Some(&e) {
                    warn!(problem = %e, "no usable membership secret: heartbeats neither sent nor accepted");
                }
                self.secret_problem = Some(e);
            }
        }
    }

    /// Signs a heartbeat in `phase` and sends it to every peer; returns the peers it could not
    /// be sent to. Nothing is sent without a secret.
    pub async fn beat(
        &mut self,
        peers: &[(String, SocketAddr)],
        phase: Phase,
    ) -> Vec<(SocketAddr, std::io::Error)> {
        let mut hb = self.beats.next(phase);
        let mut failed = Vec::new();
        let Some(key) = self.secret.as_deref() else {
            return failed;
        };
        for (node, addr) in peers {
            // Signed for each peer: each gets its own run echoed.
            hb.echo = self.detector.echo_for(node);
            let Ok(datagram) = hb.encode(key) else {
                return failed;
            };
            if let Err(e) = self.udp.send_to(&datagram, addr).await {
                failed.push((*addr, e));
            }
        }
        failed
    }

    /// Waits for one datagram and takes it into account; `true` when the alive set changed
    /// (worth acting on at once: take over from a leaving peer, hand back to a ready one).
    /// Cancel-safe: only the receive awaits.
    pub async fn recv(&mut self) -> bool {
        let Ok((n, from)) = self.udp.recv_from(&mut self.buf).await else {
            return false;
        };
        let now = Instant::now();
        let Some(key) = &self.secret else {
            self.metrics.rejected(Rejected::Auth);
            return false;
        };
        let Some(datagram) = self.buf.get(..n) else {
            return false;
        };
        let hb = match Heartbeat::decode(datagram, key) {
            Ok(hb) => hb,
            Err(e) => {
                let why = rejected_by(&e);
                self.metrics.rejected(why);
                if self.reject_log.should_log(why, now) {
                    warn!(%from, error = %e, "heartbeat refused (counted in xdplb_membership_heartbeats_rejected_total; logged once per 10 s)");
                }
                return false;
            }
        };
        if hb.node == self.node {
            // This agent never sends to itself: a valid heartbeat in its own name is a
            // recording played back.
            self.metrics.rejected(Rejected::Replay);
            return false;
        }
        let hold = (hb.hold_ms > 0).then(|| now + Duration::from_millis(u64::from(hb.hold_ms)));
        match self
            .detector
            .heard(&hb.node, hb.epoch, hb.seq, hb.echo, hb.phase, hold, now)
        {
            Heard::Unconfirmed => {
                self.metrics.rejected(Rejected::Stale);
                false
            }
            Heard::Replayed => {
                self.metrics.rejected(Rejected::Replay);
                if self.reject_log.should_log(Rejected::Replay, now) {
                    warn!(%from, peer = %hb.node, "replayed heartbeat refused");
                }
                false
            }
            Heard::Changed => {
                self.metrics.heartbeats_received.inc();
                if hb.phase == Phase::Leaving {
                    info!(peer = %hb.node, "peer is leaving");
                }
                true
            }
            Heard::Unchanged => {
                self.metrics.heartbeats_received.inc();
                false
            }
        }
    }

    /// Who is alive at `now` (this node included) and what changed since the last look,
    /// recorded in the metrics and the log.
    pub fn look(&mut self, now: Instant) -> View {
        let view = self.changes.look(&self.detector, &self.node, now);
        self.metrics
            .peers_alive
            .set(view.alive.len().saturating_sub(1) as i64);
        for silence in &view.detected {
            self.metrics.detection.observe(silence.as_secs_f64());
        }
        if view.changed {
            info!(alive = ?view.alive, "membership changed");
        }
        view
    }
}
