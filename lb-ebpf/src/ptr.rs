//! Bounds-checked access to the frame.
use core::{mem::size_of, ptr::read_volatile};

use aya_ebpf::programs::XdpContext;

/// `(data, data_end)` of the frame.
///
/// Volatile reads keep LLVM from fusing the two 32-bit context loads into one 64-bit value
/// (shift + or), which the verifier rejects as pointer arithmetic.
#[inline(always)]
pub fn bounds(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: `ctx.ctx` is the context pointer the kernel passed to the program.
    unsafe {
        (
            read_volatile(&(*ctx.ctx).data) as usize,
            read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    }
}

/// Pointer to a `T` at `offset` in the frame, or `Err(())` when the frame is too short.
///
/// The comparison against `data_end` is what the verifier needs to see before any dereference;
/// every packet access goes through here so that shape is never lost.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let (start, end) = bounds(ctx);
    if start + offset + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

/// Start of the frame when it has at least `len` bytes.
///
/// For functions that read several headers: one load of the bounds and one check, then
/// constant offsets from the returned start. Reloading `data` per header lets LLVM emit a
/// zero-extension (shift left/right by 32) of the pointer, which the verifier rejects.
#[inline(always)]
pub fn frame_start(ctx: &XdpContext, len: usize) -> Result<usize, ()> {
    let (start, end) = bounds(ctx);
    if start + len > end {
        return Err(());
    }
    Ok(start)
}
