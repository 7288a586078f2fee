//! One BFD session in asynchronous mode (RFC 5880 §6.8), time passed in: packets and ticks
//! in, packets to send and state changes out. Sockets, demultiplexing and TTL checks are the
//! edge's.
use std::time::{Duration, Instant};

use super::packet::{Control, State, diag};

/// While a session is not Up it sends at most one packet a second (RFC 5880 §6.8.3).
const SLOW: Duration = Duration::from_secs(1);

/// A BFDProfile's timers (MetalLB's defaults: 300 ms, 300 ms, 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Settings {
    pub desired_min_tx: Duration,
    pub required_min_rx: Duration,
    pub detect_mult: u8,
    /// Wait for the peer to speak first (RFC 5880 §6.1 passive role).
    pub passive: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            detect_mult: 3,
            passive: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send(Control),
    Changed { from: State, to: State, diag: u8 },
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[derive(Debug)]
pub struct Session {
    settings: Settings,
    state: State,
    diag: u8,
    local_discr: u32,
    remote_discr: u32,
    remote_state: State,
    /// Microseconds, as the peer sent them.
    remote_min_rx: u32,
    remote_desired_tx: u32,
    remote_mult: u8,
    /// What we advertise as DesiredMinTxInterval now (1 s until Up).
    desired_tx: Duration,
    polling: bool,
    next_tx: Option<Instant>,
    detect_at: Option<Instant>,
    rng: u64,
}

impl Session {
    /// `local_discr` must be unique among the node's sessions and non-zero; `seed` drives the
    /// transmit jitter.
    pub fn new(settings: Settings, local_discr: u32, seed: u64) -> Self {
        Session {
            settings,
            state: State::Down,
            diag: diag::NONE,
            local_discr,
            remote_discr: 0,
            remote_state: State::Down,
            remote_min_rx: 1,
            remote_desired_tx: 0,
            remote_mult: 0,
            desired_tx: SLOW.max(settings.desired_min_tx),
            polling: false,
            next_tx: None,
            detect_at: None,
            rng: seed | 1,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn local_discr(&self) -> u32 {
        self.local_discr
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The time without a packet after which the session goes down, as negotiated.
    pub fn detection_time(&self) -> Duration {
        let rx = micros(self.settings.required_min_rx).max(self.remote_desired_tx);
        Duration::from_micros(u64::from(rx) * u64::from(self.remote_mult))
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.next_tx, self.detect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn start(&mut self, now: Instant) -> Vec<Output> {
        if !self.settings.passive {
            self.next_tx = Some(now);
        }
        self.tick(now)
    }

    fn packet(&self, poll: bool, fin: bool) -> Control {
        Control {
            diag: self.diag,
            state: self.state,
            poll,
            fin,
            cpi: false,
            demand: false,
            detect_mult: self.settings.detect_mult,
            my_discr: self.local_discr,
            your_discr: self.remote_discr,
            desired_min_tx: micros(self.desired_tx),
            required_min_rx: micros(self.settings.required_min_rx),
            required_min_echo_rx: 0,
        }
    }

    /// The interval between our packets: the slower of what we want and what the peer
    /// accepts, less 0 to 25 % jitter (RFC 5880 §6.8.7; at most 90 % with a multiplier of 1).
    fn interval(&mut self) -> Duration {
        let base = micros(self.desired_tx).max(self.remote_min_rx);
        // xorshift64: enough to keep sessions from synchronising.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let max_pct = if self.settings.detect_mult == 1 {
            90
        } else {
            100
        };
        let pct = 75 + self.rng % (max_pct - 75 + 1);
        Duration::from_micros(u64::from(base) * pct / 100)
    }

    fn set_state(&mut self, to: State, why: u8, out: &mut Vec<Output>) {
        if to == self.state {
            return;
        }
        let from = self.state;
        self.state = to;
        self.diag = why;
        out.push(Output::Changed {
            from,
            to,
            diag: why,
        });
        if to == State::Up {
            // Now the configured rate, announced with a Poll Sequence (§6.8.3); a decrease
            // may take effect at once.
            if self.desired_tx != self.settings.desired_min_tx {
                self.desired_tx = self.settings.desired_min_tx;
                self.polling = true;
            }
        } else if self.desired_tx < SLOW {
            self.desired_tx = SLOW;
            self.polling = false;
        }
    }

    /// A valid Control packet for this session (RFC 5880 §6.8.6 from "If the Your
    /// Discriminator field is nonzero").
    pub fn receive(&mut self, c: &Control, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if c.your_discr != 0 && c.your_discr != self.local_discr {
            return out;
        }
        if self.state == State::AdminDown {
            return out;
        }
        // A packet that does not name this session (Your Discriminator 0) is matched by
        // address only: taken while the session is Down, when the peer cannot know our
        // discriminator yet, and discarded otherwise (as FRR's bfdd does), so that one packet
        // spoofed from the link cannot take an Up session down.
        if c.your_discr == 0 && self.state != State::Down {
            return out;
        }
        // Once the peer's discriminator is known, packets from another one are not its own.
        if self.remote_discr != 0 && c.my_discr != self.remote_discr && self.state != State::Down {
            return out;
        }
        self.remote_discr = c.my_discr;
        self.remote_state = c.state;
        self.remote_min_rx = c.required_min_rx.max(1);
        self.remote_desired_tx = c.desired_min_tx;
        self.remote_mult = c.detect_mult;
        if c.fin && self.polling {
            self.polling = false;
        }
        match (self.state, c.state) {
            (State::Init | State::Up, State::AdminDown) => {
                self.set_state(State::Down, diag::NEIGHBOR_SIGNALED_DOWN, &mut out)
            }
            (_, State::AdminDown) => {}
            (State::Down, State::Down) => self.set_state(State::Init, diag::NONE, &mut out),
            (State::Down, State::Init) => self.set_state(State::Up, diag::NONE, &mut out),
            (State::Init, State::Init | State::Up) => {
                self.set_state(State::Up, diag::NONE, &mut out)
            }
            (State::Up, State::Down) => {
                self.set_state(State::Down, diag::NEIGHBOR_SIGNALED_DOWN, &mut out)
            }
            _ => {}
        }
        self.detect_at =
            matches!(self.state, State::Init | State::Up).then(|| now + self.detection_time());
        if c.poll {
            out.push(Output::Send(self.packet(false, true)));
        }
        // A passive session starts sending once the peer has spoken; a change of state is
        // told at once rather than at the next periodic packet.
        let changed = out.iter().any(|o| matches!(o, Output::Changed { .. }));
        if self.next_tx.is_none() || changed {
            self.next_tx = Some(now);
        }
        // A peer that now accepts packets faster (RequiredMinRxInterval lowered, as when it
        // comes Up) must not wait for a packet scheduled at the old, slower rate: its
        // detection time would run out first.
        let longest =
            Duration::from_micros(u64::from(micros(self.desired_tx).max(self.remote_min_rx)));
        if self.next_tx.is_some_and(|t| t > now + longest) {
            self.next_tx = Some(now + self.interval());
        }
        out.extend(self.tick(now));
        out
    }

    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if self.detect_at.is_some_and(|t| t <= now) {
            self.detect_at = None;
            self.remote_discr = 0;
            self.set_state(State::Down, diag::DETECTION_TIME_EXPIRED, &mut out);
        }
        let passive_silent = self.settings.passive && self.remote_discr == 0;
        if self.next_tx.is_some_and(|t| t <= now) {
            if passive_silent {
                self.next_tx = None;
            } else {
                out.push(Output::Send(self.packet(self.polling, false)));
                self.next_tx = Some(now + self.interval());
            }
        }
        out
    }

    /// Takes the session administratively down (the peer is deconfigured): one packet says
    /// so, and no more follow.
    pub fn shutdown(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        self.set_state(State::AdminDown, diag::ADMINISTRATIVELY_DOWN, &mut out);
        out.push(Output::Send(self.packet(false, false)));
        self.next_tx = None;
        self.detect_at = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Settings {
        Settings {
            desired_min_tx: Duration::from_millis(50),
            required_min_rx: Duration::from_millis(50),
            detect_mult: 3,
            passive: false,
        }
    }

    fn sent(out: &[Output]) -> Vec<Control> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    fn changes(out: &[Output]) -> Vec<(State, u8)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Changed { to, diag, .. } => Some((*to, *diag)),
                _ => None,
            })
            .collect()
    }

    /// Delivers every packet one side sends to the other until both are quiet at `now`.
    fn exchange(a: &mut Session, b: &mut Session, first: Vec<Output>, now: Instant) {
        let mut to_b = sent(&first);
        let mut to_a = Vec::new();
        for _ in 0..10 {
            for c in std::mem::take(&mut to_b) {
                to_a.extend(sent(&b.receive(&c, now)));
            }
            for c in std::mem::take(&mut to_a) {
                to_b.extend(sent(&a.receive(&c, now)));
            }
        }
    }

    fn up_pair(t0: Instant) -> (Session, Session) {
        let mut a = Session::new(fast(), 1, 1);
        let mut b = Session::new(fast(), 2, 2);
        let first = a.start(t0);
        b.start(t0);
        exchange(&mut a, &mut b, first, t0);
        (a, b)
    }

    #[test]
    fn three_way_handshake_brings_both_up() {
        let t0 = Instant::now();
        let (a, b) = up_pair(t0);
        assert_eq!((a.state(), b.state()), (State::Up, State::Up));
        // Up: the configured rate, after the 1 s slow start.
        assert_eq!(a.desired_tx, Duration::from_millis(50));
        assert_eq!(a.detection_time(), Duration::from_millis(150));
    }

    #[test]
    fn silence_for_the_detection_time_takes_it_down() {
        let t0 = Instant::now();
        let (mut a, _) = up_pair(t0);
        assert!(changes(&a.tick(t0 + Duration::from_millis(149))).is_empty());
        let out = a.tick(t0 + Duration::from_millis(150));
        assert_eq!(
            changes(&out),
            vec![(State::Down, diag::DETECTION_TIME_EXPIRED)]
        );
        // Down: back to one packet a second, telling the peer why.
        let down = sent(&a.tick(t0 + Duration::from_secs(2)));
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].state, State::Down);
        assert_eq!(down[0].diag, diag::DETECTION_TIME_EXPIRED);
        assert_eq!(down[0].your_discr, 0);
        assert_eq!(down[0].desired_min_tx, 1_000_000);
    }

    #[test]
    fn the_peer_saying_down_or_admin_down_takes_it_down() {
        let t0 = Instant::now();
        for remote in [State::Down, State::AdminDown] {
            let (mut a, b) = up_pair(t0);
            let mut c = b.packet(false, false);
            c.state = remote;
            let out = a.receive(&c, t0);
            assert_eq!(
                changes(&out),
                vec![(State::Down, diag::NEIGHBOR_SIGNALED_DOWN)]
            );
        }
    }

    #[test]
    fn a_spoofed_down_that_does_not_name_the_session_changes_nothing() {
        let t0 = Instant::now();
        let (mut a, b) = up_pair(t0);
        // Your Discriminator 0 (the attacker does not know ours), or ours with another
        // My Discriminator than the peer's: neither is the peer speaking.
        let mut blind = b.packet(false, false);
        blind.state = State::Down;
        blind.your_discr = 0;
        blind.my_discr = 12345;
        let mut guessed = b.packet(false, false);
        guessed.state = State::Down;
        guessed.my_discr = 12345;
        for c in [blind, guessed] {
            let out = a.receive(&c, t0);
            assert!(out.is_empty(), "{out:?}");
            assert_eq!(a.state(), State::Up);
            assert_eq!(a.remote_discr, b.local_discr());
        }
        // The peer's own Down still counts.
        let mut real = b.packet(false, false);
        real.state = State::Down;
        assert_eq!(
            changes(&a.receive(&real, t0)),
            vec![(State::Down, diag::NEIGHBOR_SIGNALED_DOWN)]
        );
    }

    #[test]
    fn a_poll_is_answered_with_final_at_once() {
        let t0 = Instant::now();
        let (mut a, b) = up_pair(t0);
        let out = a.receive(&b.packet(true, false), t0);
        let f = sent(&out);
        assert!(f.iter().any(|c| c.fin && !c.poll), "{out:?}");
    }

    #[test]
    fn a_passive_session_waits_for_the_peer() {
        let t0 = Instant::now();
        let mut p = Session::new(
            Settings {
                passive: true,
                ..fast()
            },
            5,
            3,
        );
        assert!(p.start(t0).is_empty());
        assert!(p.tick(t0 + Duration::from_secs(5)).is_empty());
        let mut a = Session::new(fast(), 6, 4);
        let first = a.start(t0);
        exchange(&mut a, &mut p, first, t0);
        assert_eq!(p.state(), State::Up);
    }

    #[test]
    fn packets_for_another_discriminator_are_ignored() {
        let t0 = Instant::now();
        let (mut a, b) = up_pair(t0);
        let mut c = b.packet(false, false);
        c.your_discr = 999;
        c.state = State::Down;
        assert!(a.receive(&c, t0).is_empty());
        assert_eq!(a.state(), State::Up);
    }

    #[test]
    fn transmit_intervals_carry_jitter_within_the_rfc_bounds() {
        let mut s = Session::new(fast(), 1, 42);
        s.desired_tx = Duration::from_millis(100);
        let seen: Vec<Duration> = (0..1000).map(|_| s.interval()).collect();
        assert!(
            seen.iter()
                .all(|d| *d >= Duration::from_millis(75) && *d <= Duration::from_millis(100))
        );
        assert!(seen.iter().any(|d| *d < Duration::from_millis(80)));
        assert!(seen.iter().any(|d| *d > Duration::from_millis(95)));
    }

    #[test]
    fn a_peer_lowering_its_receive_interval_gets_packets_at_the_new_rate() {
        let t0 = Instant::now();
        let (mut a, b) = up_pair(t0);
        // The peer asked for 1 s between packets, then (coming Up) for 50 ms.
        let mut slow = b.packet(false, false);
        slow.required_min_rx = 1_000_000;
        a.receive(&slow, t0);
        // The packet already due goes out, the next one at the slow rate.
        let due = a.next_tx.unwrap_or(t0);
        assert_eq!(sent(&a.tick(due)).len(), 1);
        let scheduled = a.next_tx.unwrap_or(t0);
        assert!(
            scheduled > due + Duration::from_millis(700),
            "{:?}",
            scheduled - due
        );
        let later = due + Duration::from_millis(10);
        a.receive(&b.packet(false, false), later);
        let next = a.next_tx.unwrap_or(t0);
        assert!(
            next <= later + Duration::from_millis(50),
            "{:?}",
            next - later
        );
    }

    #[test]
    fn shutdown_says_admin_down_once() {
        let t0 = Instant::now();
        let (mut a, _) = up_pair(t0);
        let out = a.shutdown();
        assert_eq!(sent(&out).len(), 1);
        assert_eq!(sent(&out)[0].state, State::AdminDown);
        assert_eq!(a.next_deadline(), None);
    }
}
