//! The userspace fallback: AF_PACKET sockets that feed [`super::responder`], for kernels or
//! NICs where XDP cannot attach; also the sender of gratuitous ARP / unsolicited NA.
//!
//! # Caveats
//! With VLAN offload the kernel strips the 802.1Q tag before packet sockets see the frame, so
//! the fallback answers tagged requests untagged; announce on the VLAN subinterface instead.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    mem::size_of,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use lb_common::{COUNTER_SLOTS, Counter, SlotBits, VipValue};

use super::{
    L2Error,
    iface::Interface,
    maps::{VipEntry, monotonic_ns},
    requesters::Requesters,
    responder::{self, Outcome, VipLookup},
};

/// A raw packet socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Classic BPF: accept ARP, and IPv6 whose next header is ICMPv6, untagged or behind one
/// 802.1Q tag; drop the rest in the kernel so the responder never wakes for other traffic.
const FILTER: [libc::sock_filter; 13] = {
    const LDH: u16 = 0x28;
    const LDB: u16 = 0x30;
    const JEQ: u16 = 0x15;
    const RET: u16 = 0x06;
    const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }
    [
        op(LDH, 0, 0, 12),
        op(JEQ, 9, 0, 0x0806),
        op(JEQ, 1, 0, 0x86dd),
        op(JEQ, 2, 8, 0x8100),
        op(LDB, 0, 0, 20),
        op(JEQ, 5, 6, 58),
        op(LDH, 0, 0, 16),
        op(JEQ, 3, 0, 0x0806),
        op(JEQ, 0, 3, 0x86dd),
        op(LDB, 0, 0, 24),
        op(JEQ, 0, 1, 58),
        op(RET, 0, 0, 0x40000),
        op(RET, 0, 0, 0),
    ]
};

impl PacketSocket {
    /// Opens a socket on `iface`. With `receive` it gets ARP and ICMPv6 frames (not our own);
    /// without, it only sends.
    pub fn open(iface: &Interface, receive: bool) -> Result<Self, L2Error> {
        let err = |source| L2Error::Socket {
            iface: iface.name.clone(),
            source,
        };
        let protocol = if receive {
            (libc::ETH_P_ALL as u16).to_be()
        } else {
            0
        };
        // SAFETY: plain socket(2).
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        })
        .map_err(err)?;
        // SAFETY: `fd` is a fresh descriptor owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if receive {
            let prog = libc::sock_fprog {
                len: FILTER.len() as u16,
                filter: FILTER.as_ptr().cast_mut(),
            };
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog).map_err(err)?;
            setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32).map_err(err)?;
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout).map_err(err)?;
        }
        let addr = sockaddr(iface.index, protocol);
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        })
        .map_err(err)?;
        Ok(Self {
            fd,
            ifindex: iface.index,
        })
    }

    /// Sends one Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let addr = sockaddr(self.ifindex, 0);
        // SAFETY: valid buffer and address for the duration of the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame; `Ok(None)` when the receive timeout passed.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: valid buffer for the duration of the call.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }
}

fn sockaddr(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as u32,
        )
    })
    .map(drop)
}

/// The fallback's VIP table. Leased entries answer while the lease it shares with the agent's
/// main loop runs: the same dead man's switch as the XDP program's, so responder threads stop
/// answering when the loop that should renew it is stuck. Without a lease (static mode, or a
/// table built without one) leased entries never answer.
#[derive(Default, Debug)]
pub struct Table {
    v4: HashMap<([u8; 4], u32), VipValue>,
    v6: HashMap<([u8; 16], u32), VipValue>,
    slots: HashMap<[u8; 16], SlotBits>,
    /// `CLOCK_MONOTONIC` nanoseconds until which leased entries answer.
    lease: Option<Arc<AtomicU64>>,
}

impl Table {
    /// The VIPs `entries`, with the slots of the active-active ones in `slots`.
    pub fn from_entries(entries: &[VipEntry], slots: &BTreeMap<IpAddr, SlotBits>) -> Self {
        let mut table = Self {
            slots: slots
                .iter()
                .map(|(ip, bits)| (super::maps::addr_key(*ip).addr, *bits))
                .collect(),
            ..Self::default()
        };
        for e in entries {
            let value = VipValue {
                mac: e.mac,
                flags: e.flags,
            };
            match e.addr {
                IpAddr::V4(a) => table.v4.insert((a.octets(), e.ifindex), value),
                IpAddr::V6(a) => table.v6.insert((a.octets(), e.ifindex), value),
            };
        }
        table
    }

    /// The same table, its leased entries answering until `lease` (renewed by the owner).
    pub fn with_lease(self, lease: Arc<AtomicU64>) -> Self {
        Self {
            lease: Some(lease),
            ..self
        }
    }
}

impl VipLookup for Table {
    fn lookup4(&self, addr: [u8; 4], ifindex: u32) -> Option<VipValue> {
        self.v4.get(&(addr, ifindex)).copied()
    }
    fn lookup6(&self, addr: [u8; 16], ifindex: u32) -> Option<VipValue> {
        self.v6.get(&(addr, ifindex)).copied()
    }
    fn lease_valid(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| super::maps::monotonic_ns() < l.load(Ordering::Relaxed))
    }
    fn slots(&self, vip: &[u8; 16]) -> Option<&SlotBits> {
        self.slots.get(vip)
    }
}

/// Counters of the fallback, in the XDP program's slots.
#[derive(Debug, Default)]
pub struct SharedCounters(pub [AtomicU64; COUNTER_SLOTS as usize]);

impl SharedCounters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize].load(Ordering::Relaxed)
    }
}

/// A responder thread on one interface; stops when `stop` is set (within the receive timeout).
/// What every responder thread shares.
#[derive(Default)]
pub struct Shared {
    pub table: RwLock<Table>,
    pub counters: SharedCounters,
    pub requesters: Mutex<Requesters>,
    /// The lease of the table's leased entries (`CLOCK_MONOTONIC` ns).
    pub lease: Arc<AtomicU64>,
}

pub fn spawn_responder(
    iface: Interface,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, L2Error> {
    let socket = PacketSocket::open(&iface, true)?;
    let handle = std::thread::Builder::new()
        .name(format!("afpacket-{}", iface.name))
        .spawn(move || serve(&socket, &iface, &shared, &stop))
        .map_err(|source| L2Error::Socket {
            iface: "thread".to_owned(),
            source,
        })?;
    Ok(handle)
}

fn serve(socket: &PacketSocket, iface: &Interface, shared: &Shared, stop: &AtomicBool) {
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv(&mut buf) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(iface = %iface.name, error = %e, "afpacket receive failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(frame) = buf.get(..n) else { continue };
        let decision = match shared.table.read() {
            Ok(table) => responder::respond(frame, iface.index, &*table),
            Err(_) => return,
        };
        for c in &decision.counted {
            shared.counters.0[*c as usize].fetch_add(1, Ordering::Relaxed);
        }
        if let Some((key, value)) = decision.asker
            && let Ok(mut r) = shared.requesters.lock()
            && !r.record(key, value, monotonic_ns())
        {
            shared.counters.0[Counter::ClientsThrottled as usize].fetch_add(1, Ordering::Relaxed);
        }
        if let Outcome::Reply(reply) = decision.outcome
            && let Err(e) = socket.send(&reply)
        {
            tracing::warn!(iface = %iface.name, error = %e, "afpacket reply failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arp_for(vip: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [0xff; 6])
            .arp(
                etherparse::ArpPacket::new(
                    etherparse::ArpHardwareId::ETHERNET,
                    etherparse::EtherType::IPV4,
                    etherparse::ArpOperation::REQUEST,
                    &[2, 0, 0, 0, 0, 9],
                    &[10, 0, 0, 9],
                    &[0; 6],
                    &vip,
                )
                .expect("arp"),
            )
            .write(&mut out)
            .expect("write");
        out
    }

    /// Review finding 20: a leased entry answers while the lease runs and stops when nobody
    /// renews it, as the XDP program's do.
    #[test]
    fn leased_entries_stop_answering_when_the_lease_is_not_renewed() {
        let vip = [10, 0, 0, 100];
        let entries = [VipEntry {
            addr: IpAddr::from(vip),
            ifindex: 3,
            mac: [2, 0, 0, 0, 0, 1],
            flags: lb_common::VIP_FLAG_LEASED,
        }];
        let lease = Arc::new(AtomicU64::new(monotonic_ns() + 1_000_000_000));
        let table = Table::from_entries(&entries, &BTreeMap::new()).with_lease(lease.clone());
        let frame = arp_for(vip);
        assert!(matches!(
            responder::respond(&frame, 3, &table).outcome,
            Outcome::Reply(_)
        ));
        lease.store(monotonic_ns().saturating_sub(1), Ordering::Relaxed);
        let expired = responder::respond(&frame, 3, &table);
        assert!(matches!(expired.outcome, Outcome::Pass));
        assert!(expired.counted.contains(&Counter::LeaseExpired));
        // Without a lease at all, a leased entry never answers.
        let unleased = Table::from_entries(&entries, &BTreeMap::new());
        assert!(matches!(
            responder::respond(&frame, 3, &unleased).outcome,
            Outcome::Pass
        ));
    }
}
