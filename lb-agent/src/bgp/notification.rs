//! Every NOTIFICATION error code and subcode the speaker sends or names (RFC 4271 §4.5 and
//! §6, RFC 4486, RFC 6608, RFC 9384), in one place: the decoders return the NOTIFICATION to
//! send, and the session sends its own; both take their numbers from here.

/// NOTIFICATION error codes (RFC 4271 §4.5).
pub mod code {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH_MESSAGE: u8 = 7;
}

/// Message Header Error subcodes.
pub mod header_error {
    pub const NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_LENGTH: u8 = 2;
    pub const BAD_TYPE: u8 = 3;
}

/// OPEN Message Error subcodes.
pub mod open_error {
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
}

/// UPDATE Message Error subcodes (RFC 4271 §6.3).
pub mod update_error {
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
}

/// Cease subcodes (RFC 4486, RFC 9384).
pub mod cease {
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const CONNECTION_COLLISION: u8 = 7;
    pub const OUT_OF_RESOURCES: u8 = 8;
    pub const BFD_DOWN: u8 = 10;
}

/// FSM error subcodes (RFC 6608): an unexpected message in OpenSent, OpenConfirm, Established.
pub mod fsm_error {
    pub const IN_OPEN_SENT: u8 = 1;
    pub const IN_OPEN_CONFIRM: u8 = 2;
    pub const IN_ESTABLISHED: u8 = 3;
}
