//! The socket options BGP needs that the standard library does not offer: the TCP MD5
//! signature key per peer (RFC 2385, `TCP_MD5SIG`) and the TTL of the session's packets.
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

/// `struct tcp_md5sig` from `linux/tcp.h` (libc does not define it).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: u32,
    key: [u8; 80],
}

/// The longest key the kernel takes.
pub const MAX_KEY: usize = 80;

fn setsockopt<T>(fd: &impl AsRawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live, initialised T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Signs (and requires signatures on) segments to and from `peer` with `key`; an empty key
/// removes it. Set on a listener it applies to the connections it accepts from `peer`.
pub fn set_md5(fd: &impl AsRawFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a TCP MD5 password is at most {MAX_KEY} bytes"),
        ));
    }
    // SAFETY: all-zero is a valid sockaddr_storage and tcp_md5sig.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let addr = socket2::SockAddr::from(SocketAddr::new(peer, 0));
    // SAFETY: SockAddr holds at most a sockaddr_storage; copy exactly its length.
    unsafe {
        std::ptr::copy_nonoverlapping(
            addr.as_ptr().cast::<u8>(),
            (&mut sig.addr as *mut libc::sockaddr_storage).cast::<u8>(),
            addr.len() as usize,
        );
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

/// The TTL (hop limit) of outgoing packets.
pub fn set_ttl(fd: &impl AsRawFd, v6: bool, ttl: u8) -> io::Result<()> {
    let ttl = libc::c_int::from(ttl);
    if v6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl)
    }
}

/// The lowest TTL (hop limit) a segment may arrive with; the kernel drops the others (GTSM,
/// RFC 5082). Set before connecting, it covers the handshake too.
pub fn set_min_ttl(fd: &impl AsRawFd, v6: bool, ttl: u8) -> io::Result<()> {
    let ttl = libc::c_int::from(ttl);
    if v6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &ttl)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_MINTTL, &ttl)
    }
}

/// TCP keepalives on a session's connection: a peer that negotiated hold time 0 sends no
/// KEEPALIVEs, and without these a peer that died silently would look up forever. Probes
/// after 30 s idle, every 10 s, 3 of them: a dead peer is found in about a minute.
pub fn set_keepalive(fd: &impl std::os::fd::AsFd) -> io::Result<()> {
    let probes = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(fd).set_tcp_keepalive(&probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_struct_matches_the_kernel_layout() {
        // 128 (sockaddr_storage) + 1 + 1 + 2 + 4 + 80.
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[test]
    fn keys_are_accepted_and_checked() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let peer: IpAddr = "127.0.0.2".parse().unwrap_or_else(|e| panic!("{e}"));
        set_md5(&sock, peer, b"s3cret").unwrap_or_else(|e| panic!("{e}"));
        set_md5(&sock, peer, b"").unwrap_or_else(|e| panic!("{e}"));
        assert!(set_md5(&sock, peer, &[b'x'; 81]).is_err());
        set_ttl(&sock, false, 1).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The kernel, not our code, drops the segments: a SYN-ACK from loopback's default TTL 64
    /// never completes a handshake that asked for 255, one sent with TTL 255 does.
    #[test]
    fn segments_below_the_minimum_ttl_are_dropped() {
        use socket2::{Domain, Socket, Type};
        let timeout = std::time::Duration::from_millis(500);
        for (listener_ttl, connects) in [(None, false), (Some(255), true)] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            if let Some(ttl) = listener_ttl {
                set_ttl(&l, false, ttl).unwrap_or_else(|e| panic!("{e}"));
            }
            let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap_or_else(|e| panic!("{e}"));
            set_min_ttl(&c, false, 255).unwrap_or_else(|e| panic!("{e}"));
            let result = c.connect_timeout(&addr.into(), timeout);
            assert_eq!(
                result.is_ok(),
                connects,
                "listener TTL {listener_ttl:?}: {result:?}"
            );
        }
        let v6 = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap_or_else(|e| panic!("{e}"));
        set_min_ttl(&v6, true, 255).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn session_connections_probe_a_silent_peer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let c = std::net::TcpStream::connect(l.local_addr().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        set_keepalive(&c).unwrap_or_else(|e| panic!("{e}"));
        let s = socket2::SockRef::from(&c);
        assert!(s.keepalive().unwrap_or(false));
        assert_eq!(
            s.tcp_keepalive_time().ok(),
            Some(std::time::Duration::from_secs(30))
        );
    }
}
