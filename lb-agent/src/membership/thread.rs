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
        let mut clock = Clock::new(Instant::now(), self.interval);
        loop {
            let now = Instant::now();
            let until = clock.wake_at(now, self.pending.is_some());
            let ready = self.poll(until.saturating_duration_since(now));
            if ready.wake {
                self.drain_wake();
                match self.commands() {
                    Next::Stop => return,
                    Next::BeatNow => clock.beat_now(Instant::now()),
                    Next::Go => {}
                }
            }
            if ready.socket {
                for _ in 0..BATCH {
                    match self.m.receive() {
                        Some(true) => clock.changed(),
                        Some(false) => {}
                        None => break,
                    }
                }
            }
            let due = clock.due(Instant::now());
            if due.beat {
                self.beat();
            }
            // The ring's verdicts move at heartbeats too (silences judged, verdicts learnt).
            if due.look || self.m.ring_moved() {
                let now = Instant::now();
                let view = self.m.look(now);
                clock.looked(self.m.next_deadline(now));
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

/// When the thread wakes and what is due then: pure, time passed in.
#[derive(Debug)]
struct Clock {
    interval: Duration,
    next_beat: Instant,
    /// Whether membership may have changed since the last look: a look walks every peer, so
    /// it runs on a change or a deadline, not on every datagram.
    look: bool,
    /// The earliest deadline as of the last look. Heartbeats since only move deadlines later,
    /// so waking here is never late; a deadline read afresh each turn would drop a peer that
    /// went past it between two turns, and that peer would never be looked at.
    look_at: Option<Instant>,
}

/// What is due at a wake-up.
#[derive(Debug)]
struct Due {
    beat: bool,
    look: bool,
}

impl Clock {
    fn new(now: Instant, interval: Duration) -> Self {
        Self {
            interval,
            next_beat: now,
            look: true,
            look_at: None,
        }
    }

    /// When to wake at the latest: the next heartbeat, the next deadline, or soon when a
    /// View waits for the agent.
    fn wake_at(&self, now: Instant, pending: bool) -> Instant {
        let mut until = self.next_beat;
        if let Some(d) = self.look_at {
            until = until.min(d);
        }
        if pending {
            until = until.min(now + RETRY);
        }
        until
    }

    /// Something the heartbeats say changed: beat and look now.
    fn beat_now(&mut self, now: Instant) {
        self.next_beat = now;
        self.look = true;
    }

    /// A datagram changed membership: look.
    fn changed(&mut self) {
        self.look = true;
    }

    /// What is due at `now`; a heartbeat due is counted as sent.
    fn due(&mut self, now: Instant) -> Due {
        let beat = now >= self.next_beat;
        if beat {
            self.next_beat += self.interval;
            if self.next_beat <= now {
                // Behind (the thread was stopped): on time from now, no burst.
                self.next_beat = now + self.interval;
            }
        }
        let look = std::mem::take(&mut self.look) || self.look_at.is_some_and(|d| now >= d);
        Due { beat, look }
    }

    /// A look was made; `deadline` is the earliest one after it.
    fn looked(&mut self, deadline: Option<Instant>) {
        self.look_at = deadline;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// (heartbeat due, look due)
    fn due(c: &mut Clock, now: Instant) -> (bool, bool) {
        let d = c.due(now);
        (d.beat, d.look)
    }

    #[test]
    fn a_deadline_passed_between_two_turns_is_looked_at() {
        let t0 = Instant::now();
        let mut c = Clock::new(t0, 10 * MS);
        assert_eq!(due(&mut c, t0), (true, true));
        // The look at t0 found a peer due at t0 + 25 ms.
        c.looked(Some(t0 + 25 * MS));
        assert_eq!(c.wake_at(t0, false), t0 + 10 * MS);
        assert_eq!(due(&mut c, t0 + 10 * MS), (true, false));
        assert_eq!(due(&mut c, t0 + 20 * MS), (true, false));
        assert_eq!(c.wake_at(t0 + 20 * MS, false), t0 + 25 * MS);
        // The thread woke late, past both the deadline and the next heartbeat, with nothing
        // changed by any datagram: the deadline still makes it look.
        assert_eq!(due(&mut c, t0 + 31 * MS), (true, true));
        // Until the next look, the old deadline stands (it is never late to look again).
        assert!(c.due(t0 + 32 * MS).look);
        c.looked(None);
        assert_eq!(due(&mut c, t0 + 33 * MS), (false, false));
    }

    #[test]
    fn a_change_looks_once_and_a_late_thread_beats_once() {
        let t0 = Instant::now();
        let mut c = Clock::new(t0, 10 * MS);
        c.due(t0);
        c.looked(None);
        c.changed();
        assert_eq!(due(&mut c, t0 + MS), (false, true));
        assert_eq!(due(&mut c, t0 + 2 * MS), (false, false));
        // Stopped for 100 ms: one heartbeat, then on time from now, not ten in a burst.
        assert!(c.due(t0 + 100 * MS).beat);
        assert!(!c.due(t0 + 101 * MS).beat);
        assert_eq!(c.wake_at(t0 + 101 * MS, false), t0 + 110 * MS);
        // A command that changes what heartbeats say: one now.
        c.beat_now(t0 + 103 * MS);
        assert_eq!(due(&mut c, t0 + 103 * MS), (true, true));
        // A View waiting for the agent is offered again soon.
        assert_eq!(c.wake_at(t0 + 104 * MS, true), t0 + 104 * MS + RETRY);
    }
}
