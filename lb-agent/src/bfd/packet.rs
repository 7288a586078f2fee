//! The BFD Control packet (RFC 5880 §4.1), without authentication: 24 bytes.
use thiserror::Error;

pub const LEN: usize = 24;
const VERSION: u8 = 1;

/// Session state as carried on the wire (RFC 5880 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "admin-down",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        }
    }
}

/// Diagnostic codes (RFC 5880 §4.1).
pub mod diag {
    pub const NONE: u8 = 0;
    pub const DETECTION_TIME_EXPIRED: u8 = 1;
    pub const NEIGHBOR_SIGNALED_DOWN: u8 = 3;
    pub const ADMINISTRATIVELY_DOWN: u8 = 7;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub fin: bool,
    /// Control plane independent (C bit).
    pub cpi: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discr: u32,
    pub your_discr: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
}

/// Why a received packet is discarded (RFC 5880 §6.8.6).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Invalid {
    #[error("{0} bytes, shorter than a BFD Control packet")]
    Short(usize),
    #[error("version {0}, not 1")]
    Version(u8),
    #[error("length field {0} does not fit the packet")]
    Length(u8),
    #[error("detect multiplier is zero")]
    ZeroMultiplier,
    #[error("multipoint bit set")]
    Multipoint,
    #[error("my discriminator is zero")]
    ZeroDiscriminator,
    #[error("your discriminator is zero in state {0:?}")]
    ZeroYourDiscriminator(State),
    #[error("authentication is not configured here")]
    Authenticated,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

impl Control {
    pub fn decode(b: &[u8]) -> Result<Control, Invalid> {
        if b.len() < LEN {
            return Err(Invalid::Short(b.len()));
        }
        let version = b[0] >> 5;
        if version != VERSION {
            return Err(Invalid::Version(version));
        }
        let flags = b[1];
        let len = b[3];
        if usize::from(len) < LEN || usize::from(len) > b.len() {
            return Err(Invalid::Length(len));
        }
        if flags & 0x04 != 0 {
            return Err(Invalid::Authenticated);
        }
        if flags & 0x01 != 0 {
            return Err(Invalid::Multipoint);
        }
        let c = Control {
            diag: b[0] & 0x1f,
            state: State::from_bits(flags >> 6),
            poll: flags & 0x20 != 0,
            fin: flags & 0x10 != 0,
            cpi: flags & 0x08 != 0,
            demand: flags & 0x02 != 0,
            detect_mult: b[2],
            my_discr: be32(b, 4),
            your_discr: be32(b, 8),
            desired_min_tx: be32(b, 12),
            required_min_rx: be32(b, 16),
            required_min_echo_rx: be32(b, 20),
        };
        if c.detect_mult == 0 {
            return Err(Invalid::ZeroMultiplier);
        }
        if c.my_discr == 0 {
            return Err(Invalid::ZeroDiscriminator);
        }
        if c.your_discr == 0 && !matches!(c.state, State::Down | State::AdminDown) {
            return Err(Invalid::ZeroYourDiscriminator(c.state));
        }
        Ok(c)
    }

    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = VERSION << 5 | (self.diag & 0x1f);
        b[1] = (self.state as u8) << 6
            | u8::from(self.poll) << 5
            | u8::from(self.fin) << 4
            | u8::from(self.cpi) << 3
            | u8::from(self.demand) << 1;
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_discr.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_discr.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Control {
        Control {
            diag: diag::NONE,
            state: State::Up,
            poll: true,
            fin: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_discr: 7,
            your_discr: 9,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn the_wire_form_is_rfc_5880s() {
        let b = sample().encode();
        assert_eq!(b[0], 0x20, "version 1, no diagnostic");
        assert_eq!(b[1], 0xe0, "state Up, poll");
        assert_eq!(&b[12..16], &300_000u32.to_be_bytes());
        assert_eq!(Control::decode(&b), Ok(sample()));
    }

    #[test]
    fn invalid_packets_are_named() {
        let good = sample().encode();
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            b
        };
        assert_eq!(Control::decode(&good[..20]), Err(Invalid::Short(20)));
        assert_eq!(Control::decode(&with(0, 0x40)), Err(Invalid::Version(2)));
        assert_eq!(Control::decode(&with(3, 30)), Err(Invalid::Length(30)));
        assert_eq!(Control::decode(&with(2, 0)), Err(Invalid::ZeroMultiplier));
        assert_eq!(Control::decode(&with(1, 0xc1)), Err(Invalid::Multipoint));
        assert_eq!(Control::decode(&with(1, 0xc4)), Err(Invalid::Authenticated));
        let mut b = good;
        b[4..8].fill(0);
        assert_eq!(Control::decode(&b), Err(Invalid::ZeroDiscriminator));
        let mut b = good;
        b[8..12].fill(0);
        assert_eq!(
            Control::decode(&b),
            Err(Invalid::ZeroYourDiscriminator(State::Up))
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Control::decode(&bytes);
        }

        #[test]
        fn valid_packets_round_trip(
            diag in 0u8..32, state in 0u8..4, poll: bool, fin: bool, mult in 1u8..,
            mine in 1u32.., yours: u32, tx: u32, rx: u32,
        ) {
            let state = State::from_bits(state);
            let yours = if matches!(state, State::Up | State::Init) { yours.max(1) } else { yours };
            let c = Control {
                diag, state, poll, fin, cpi: false, demand: false, detect_mult: mult,
                my_discr: mine, your_discr: yours, desired_min_tx: tx, required_min_rx: rx,
                required_min_echo_rx: 0,
            };
            prop_assert_eq!(Control::decode(&c.encode()), Ok(c));
        }
    }
}
