//! `BPF_PROG_TEST_RUN` for XDP programs, through the raw `bpf(2)` syscall.
use std::{io, os::fd::RawFd};

/// `BPF_PROG_TEST_RUN` (`bpf_cmd` 10).
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Run the program on real frames that are actually transmitted (`XDP_TX`), restarting every
/// repetition from the original frame (Linux 5.18).
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` as a test-run context.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

/// What one test run returned.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The XDP action (`XDP_PASS` = 2, `XDP_TX` = 3).
    pub retval: u32,
    /// The frame after the program ran.
    pub data_out: Vec<u8>,
    /// Average nanoseconds per repetition, as the kernel measured it.
    pub duration_ns: u32,
}

pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Runs the program `prog_fd` on `frame` `repeat` times.
///
/// Caveat: with `repeat > 1` and no live-frames flag, every run after the first sees the
/// previous run's output (research/toolchain.md gotcha 4): use `repeat = 1` for fixtures.
pub fn run(
    prog_fd: RawFd,
    frame: &[u8],
    repeat: u32,
    flags: u32,
    ctx: Option<XdpMd>,
) -> io::Result<RunResult> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx_in = ctx.unwrap_or_default();
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: if flags & BPF_F_TEST_XDP_LIVE_FRAMES != 0 {
            0
        } else {
            out.len() as u32
        },
        data_in: frame.as_ptr() as u64,
        data_out: if flags & BPF_F_TEST_XDP_LIVE_FRAMES != 0 {
            0
        } else {
            out.as_mut_ptr() as u64
        },
        repeat,
        flags,
        ..Default::default()
    };
    if ctx.is_some() {
        attr.ctx_size_in = size_of::<XdpMd>() as u32;
        attr.ctx_in = (&mut ctx_in as *mut XdpMd) as u64;
    }
    // SAFETY: `attr` points to live buffers of the sizes it states, for the whole call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(RunResult {
        retval: attr.retval,
        data_out: out,
        duration_ns: attr.duration,
    })
}
