//! Keeping the agent's memory small after large configurations (DESIGN.md §6: 10,000 VIPs in
//! under 20 MiB). A configuration is parsed on a blocking thread whose heap arena it then
//! fills; what the agent keeps is copied out and the arena given back.

/// A copy of `value` made on the calling thread, the original freed: kept where it was
/// parsed, a few long-lived objects would pin every page the parse touched.
pub fn relocate<T: Clone>(value: T) -> T {
    let copy = value.clone();
    drop(value);
    copy
}

/// Gives free heap pages back to the system (glibc returns only the top of a heap by itself).
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases memory that is free.
    unsafe { libc::malloc_trim(0) };
}
