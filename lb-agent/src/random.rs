//! Numbers that must differ between agent runs and between nodes (heartbeat epochs, BFD
//! discriminators): from the kernel's generator.

/// 64 random bits. Without the kernel's generator (never on Linux >= 3.17), the start time
/// and PID, which still differ between runs.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(bytes)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    }
}
