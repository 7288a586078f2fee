//! Ones'-complement sums for the ICMPv6 checksum (RFC 4443 §2.3, pseudo-header RFC 8200 §8.1).
//!
//! The bytes are summed by the kernel (`bpf_csum_diff`) straight from packet memory: summing them
//! in the program unrolls into byte loads that spill past the 512-byte BPF stack.
use core::ptr::null_mut;

use aya_ebpf::helpers::bpf_csum_diff;

/// Big-endian ones'-complement sum of `len` bytes of packet memory at `ptr` (`len` a multiple
/// of 4, and the range already bounds-checked by the caller), or `None` if the helper refuses.
#[inline(always)]
pub fn packet_sum(ptr: *const u8, len: u32) -> Option<u64> {
    // SAFETY: `ptr..ptr+len` lies in the frame (checked by the caller; the verifier checks again).
    let sum = unsafe { bpf_csum_diff(null_mut(), 0, ptr as *mut u32, len, 0) };
    if sum < 0 {
        return None;
    }
    // csum_partial adds native (little-endian) 16-bit words; the ones'-complement sum commutes
    // with byte swapping (RFC 1071 §2(B)), so swapping the folded result gives the network-order sum.
    Some(u64::from(fold(sum as u64).swap_bytes()))
}

/// Folds an accumulator into 16 bits.
#[inline(always)]
pub fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The pseudo-header's upper-layer length and next-header words for an ICMPv6 payload.
#[inline(always)]
pub fn pseudo_tail(len: u16) -> u64 {
    u64::from(len) + u64::from(crate::hdr::IPPROTO_ICMPV6)
}
