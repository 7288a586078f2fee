//! Real-time scheduling and locked memory for the membership thread, so that a host whose
//! CPUs are saturated, or that is swapping, delays neither this node's heartbeats (its peers
//! would take its VIPs) nor its noticing a dead peer.
//!
//! Either may be refused (no CAP_SYS_NICE, no CAP_IPC_LOCK and a finite RLIMIT_MEMLOCK): the
//! thread then runs as any other, which is what it did before, and [`Outcome`] says why for the
//! log and `xdplb_membership_realtime`.

/// What the thread asked for: SCHED_FIFO at `priority` (1–99; 0 asks for nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub priority: u8,
}

/// What the thread got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `Ok(priority)` when the thread runs SCHED_FIFO; otherwise why not.
    pub fifo: Result<u8, String>,
    /// `Ok` when the process's memory is locked; otherwise why not.
    pub locked: Result<(), String>,
}

impl Outcome {
    pub fn realtime(&self) -> bool {
        self.fifo.is_ok()
    }
}

/// Whether `mlockall(MCL_FUTURE)` is safe: with a finite RLIMIT_MEMLOCK and no CAP_IPC_LOCK,
/// a later allocation past the limit would fail, and an allocation failure aborts the agent.
pub fn may_lock_future(memlock_unlimited: bool, cap_ipc_lock: bool) -> bool {
    memlock_unlimited || cap_ipc_lock
}

/// Whether the effective capability set in `/proc/self/status` (`CapEff:` in hex) has `bit`.
pub fn has_capability(status: &str, bit: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| bit < 64 && caps & (1 << bit) != 0)
}

const CAP_IPC_LOCK: u32 = 14;

/// Puts the calling thread in SCHED_FIFO at `wanted.priority` and locks the process's memory
/// (pages as they are touched: nothing is faulted in up front).
pub fn enter(wanted: Wanted) -> Outcome {
    let fifo = match wanted.priority {
        0 => Err("disabled (--membership-priority 0)".to_owned()),
        p => set_fifo(p).map(|()| p),
    };
    Outcome {
        fifo,
        locked: lock_memory(),
    }
}

fn set_fifo(priority: u8) -> Result<(), String> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EPERM) => format!("SCHED_FIFO refused ({e}): the agent needs CAP_SYS_NICE"),
        _ => format!("SCHED_FIFO refused: {e}"),
    })
}

fn lock_memory() -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to fill.
    let unlimited = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0
        && limit.rlim_cur == libc::RLIM_INFINITY;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !may_lock_future(unlimited, has_capability(&status, CAP_IPC_LOCK)) {
        return Err("not locked: no CAP_IPC_LOCK and RLIMIT_MEMLOCK is finite".to_owned());
    }
    // SAFETY: plain flags.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    match r {
        0 => Ok(()),
        _ => Err(format!(
            "mlockall refused: {}",
            std::io::Error::last_os_error()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn future_pages_are_locked_only_where_no_allocation_can_fail_for_it() {
        assert!(may_lock_future(true, false));
        assert!(may_lock_future(false, true));
        assert!(!may_lock_future(false, false));
    }

    #[test]
    fn the_effective_capabilities_are_read_from_proc_status() {
        let root = "Name:\tlb-agent\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(has_capability(root, CAP_IPC_LOCK));
        // BPF, PERFMON, NET_ADMIN, NET_RAW, NET_BIND_SERVICE, SYS_RESOURCE: no IPC_LOCK.
        let deployed = "CapEff:\t000000c001003400\n";
        assert!(!has_capability(deployed, CAP_IPC_LOCK));
        assert!(has_capability(deployed, 12), "NET_ADMIN");
        assert!(!has_capability("CapEff:\tzz\n", 0));
        assert!(!has_capability("", 0));
    }
}
