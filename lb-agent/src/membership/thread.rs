//! The membership thread: heartbeats out on time, the peers' in as they arrive, failure
//! detection at the exact deadline, and the data-path lease renewed with each heartbeat, on a
//! thread of its own (SCHED_FIFO where the agent may, memory locked) that nothing else runs
//! on. A host whose CPUs are saturated, or an agent busy dumping maps, parsing a
//! configuration or writing statuses, can then neither make this node look dead to its peers
//! nor let its XDP lease lapse, and a dead peer is noticed when its timeout ends, not at the
//! next tick of a busy runtime.
//!
//! The agent talks to it by [`Handle`]: what the heartbeats say (peers, phase, links, claims,
//! secret) goes in as commands; what membership decided goes out as [`View`]s, sent only when
//! something changed, and merged while the agent has not taken the previous one.
use std::{
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    claims::Claims,
    detector::View,
    driver::Membership,
    heartbeat::Phase,
    links::Links,
    realtime::{self, Wanted},
};
use crate::metrics::AgentMetrics;

/// Datagrams taken per wake-up before the clock is looked at again: a flood cannot hold the
/// heartbeats back by more than this many HMAC checks.
const BATCH: usize = 64;
/// How soon a View the agent has not taken yet is offered again.
const RETRY: Duration = Duration::from_millis(5);

/// Renews the data-path lease (one BPF array write); `Err` says why it could not.
pub type Renew = Box<dyn FnMut() -> Result<(), String> + Send>;

enum Command {
    Peers(Vec<(String, SocketAddr)>),
    Phase(Phase),
    Links(Links),
    Claims(Claims),
    Secret(Result<Vec<u8>, String>),
    /// Goodbye three times, then stop (no more heartbeats, no more renewals).
    Leave(tokio::sync::oneshot::Sender<Vec<(SocketAddr, std::io::Error)>>),
}

/// The agent's side of the membership thread.
pub struct Handle {
    commands: mpsc::Sender<Command>,
    wake: Arc<OwnedFd>,
    /// What membership decided, when it changed.
    pub views: tokio::sync::mpsc::Receiver<View>,
}

/// How the thread runs.
pub struct Settings {
    pub interval: Duration,
    pub realtime: Wanted,
}

impl Handle {
    /// Starts the thread with `membership`; `renew` runs after each heartbeat.
    pub fn spawn(
        membership: Membership,
        settings: Settings,
        renew: Renew,
        metrics: Arc<AgentMetrics>,
    ) -> std::io::Result<Self> {
        // SAFETY: plain flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let (commands, rx) = mpsc::channel();
        let (views_tx, views) = tokio::sync::mpsc::channel(16);
        let thread_wake = wake.clone();
        std::thread::Builder::new()
            .name("xdplb-members".into())
            .spawn(move || {
                let outcome = realtime::enter(settings.realtime);
                metrics
                    .membership_realtime
                    .set(i64::from(outcome.realtime()));
                match &outcome.fifo {
                    Ok(p) => info!(priority = p, "membership thread runs SCHED_FIFO"),
                    Err(why) => warn!(%why, "membership thread runs without real-time scheduling: a saturated host may delay heartbeats (xdplb_membership_realtime 0)"),
                }
                if let Err(why) = &outcome.locked {
                    warn!(%why, "memory not locked: paging may delay heartbeats");
                }
                Loop {
                    m: membership,
                    interval: settings.interval,
                    renew,
                    rx,
                    wake: thread_wake,
                    views: views_tx,
                    peers: Vec::new(),
                    phase: Phase::Active,
                    pending: None,
                    renew_failed: None,
                }
                .run();
            })?;
        Ok(Self {
            commands,
            wake,
            views,
        })
    }

    fn send(&self, c: Command) {
        if self.commands.send(c).is_ok() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to an eventfd; a full counter
            // (EAGAIN) means a wake-up is pending anyway.
            unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// The peers to heartbeat (from the configuration).
    pub fn peers(&self, peers: Vec<(String, SocketAddr)>) {
        self.send(Command::Peers(peers));
    }

    /// The phase the heartbeats say (joining, active).
    pub fn phase(&self, phase: Phase) {
        self.send(Command::Phase(phase));
    }

    /// This node's announcing links with carrier: said at once.
    pub fn links(&self, links: Links) {
        self.send(Command::Links(links));
    }

    /// The non-revertive VIPs this node holds: said at once.
    pub fn claims(&self, claims: Claims) {
        self.send(Command::Claims(claims));
    }

    /// The secret the cluster holds, or why there is none usable.
    pub fn secret(&self, secret: Result<Vec<u8>, String>) {
        self.send(Command::Secret(secret));
    }

    /// Says goodbye (three times: UDP may drop one) and stops the thread; returns the peers it
    /// could not be said to.
    pub async fn leave(&self) -> Vec<(SocketAddr, std::io::Error)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Leave(tx));
        rx.await.unwrap_or_default()
    }
}

struct Loop {
    m: Membership,
    interval: Duration,
    renew: Renew,
    rx: mpsc::Receiver<Command>,
    wake: Arc<OwnedFd>,
    views: tokio::sync::mpsc::Sender<View>,
    peers: Vec<(String, SocketAddr)>,
    phase: Phase,
    /// A View the agent has not taken yet.
    pending: Option<View>,
    /// When a failed renewal was last logged.
    renew_failed: Option<Instant>,
}

/// Which of the polled descriptors are readable.
struct Ready {
    socket: bool,
    wake: bool,
}

impl Loop {
    fn run(mut self) {
        let mut next_beat = Instant::now();
        // Whether membership may have changed since the last look: a look walks every peer,
        // so it runs on a change or a deadline, not on every datagram.
        let mut look = true;
        // The earliest deadline as of the last look. Heartbeats since only move deadlines
        // later, so waking here is never late; a deadline read afresh each turn would drop a
        // peer that went past it between two turns, and that peer would never be looked at.
        let mut look_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut until = next_beat;
            if let Some(d) = look_at {
                until = until.min(d);
            }
            if self.pending.is_some() {
                until = until.min(now + RETRY);
            }
            let ready = self.poll(until.saturating_duration_since(now));
            if ready.wake {
                self.drain_wake();
                match self.commands() {
                    Next::Stop => return,
                    Next::BeatNow => {
                        next_beat = Instant::now();
                        look = true;
                    }
                    Next::Go => {}
                }
            }
            if ready.socket {
                for _ in 0..BATCH {
                    match self.m.receive() {
                        Some(changed) => look |= changed,
                        None => break,
                    }
                }
            }
            let now = Instant::now();
            look |= look_at.is_some_and(|d| now >= d);
            if now >= next_beat {
                self.beat();
                next_beat += self.interval;
                if next_beat <= now {
                    // Behind (the thread was stopped): on time from now, no burst.
                    next_beat = now + self.interval;
                }
            }
            if std::mem::take(&mut look) {
                let now = Instant::now();
                let view = self.m.look(now);
                look_at = self.m.next_deadline(now);
                self.offer(view);
            } else if let Some(view) = self.pending.take() {
                self.offer(view);
            }
        }
    }

    fn beat(&mut self) {
        // A lost datagram is what the failure timeout is for: nothing to report here.
        let _ = self.m.beat(&self.peers, self.phase);
        if let Err(e) = (self.renew)() {
            let now = Instant::now();
            if self
                .renew_failed
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
            {
                warn!(error = %e, "cannot renew the data-path lease: the XDP program stops answering when it lapses");
                self.renew_failed = Some(now);
            }
        }
    }

    /// Hands `view` to the agent if something in it changed, merged with one not taken yet.
    fn offer(&mut self, view: View) {
        if !view.changed && !view.rejoined && self.pending.is_none() {
            return;
        }
        let merged = match self.pending.take() {
            Some(old) => View {
                changed: old.changed || view.changed,
                rejoined: old.rejoined || view.rejoined,
                ..view
            },
            None => view,
        };
        match self.views.try_send(merged) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(v)) => self.pending = Some(v),
            // The agent is gone: nothing left to tell.
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn commands(&mut self) -> Next {
        let mut next = Next::Go;
        loop {
            let c = match self.rx.try_recv() {
                Ok(c) => c,
                Err(mpsc::TryRecvError::Empty) => return next,
                Err(mpsc::TryRecvError::Disconnected) => return Next::Stop,
            };
            match c {
                Command::Peers(p) => {
                    if p != self.peers {
                        self.peers = p;
                        next = Next::BeatNow;
                    }
                }
                Command::Phase(p) => {
                    if p != self.phase {
                        self.phase = p;
                        next = Next::BeatNow;
                    }
                }
                Command::Links(l) => {
                    if self.m.set_links(l) {
                        next = Next::BeatNow;
                    }
                }
                Command::Claims(c) => {
                    if self.m.set_claims(c) {
                        next = Next::BeatNow;
                    }
                }
                Command::Secret(s) => self.m.follow_secret(s),
                Command::Leave(reply) => {
                    let mut failed = Vec::new();
                    for _ in 0..3 {
                        failed.extend(self.m.beat(&self.peers, Phase::Leaving));
                    }
                    let _ = reply.send(failed);
                    return Next::Stop;
                }
            }
        }
    }

    fn drain_wake(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer from a non-blocking eventfd.
        unsafe {
            libc::read(
                self.wake.as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            )
        };
    }

    /// Waits up to `timeout` (to the nanosecond: ppoll's hrtimer) for a datagram or a command.
    fn poll(&self, timeout: Duration) -> Ready {
        let mut fds = [
            libc::pollfd {
                fd: self.m.socket().as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `fds` and `ts` are live for the call; no signal mask is changed.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if n <= 0 {
            // Timed out, or interrupted: the caller looks at the clock either way.
            return Ready {
                socket: false,
                wake: false,
            };
        }
        Ready {
            socket: fds[0].revents != 0,
            wake: fds[1].revents != 0,
        }
    }
}

enum Next {
    Go,
    BeatNow,
    Stop,
}
