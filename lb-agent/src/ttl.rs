//! Receiving a datagram with the TTL (IPv4) or hop limit (IPv6) it arrived with, the edge of
//! every check that a sender is on the link (GTSM, RFC 5082; neighbour discovery's 255, RFC
//! 4861 §6.1.2), and the socket option call that asks for it.
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;

pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a c_int option on a valid socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// recvmsg(2) with the TTL / hop limit from the control messages.
pub fn recv_with_ttl(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u8>)> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr; the pointers below stay valid
    // for the call, and the control buffer is walked only with the CMSG macros within
    // msg_controllen.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ttl = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if (level == libc::IPPROTO_IP && kind == libc::IP_TTL)
                || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_HOPLIMIT)
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                ttl = u8::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let from = match i32::from(addr.ss_family) {
            libc::AF_INET => {
                let a = std::ptr::read_unaligned(
                    (&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                );
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                    u16::from_be(a.sin_port),
                )
            }
            libc::AF_INET6 => {
                let a = std::ptr::read_unaligned(
                    (&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>(),
                );
                // With the scope: link-local peers on different interfaces may share an
                // address (fe80::1 on every point-to-point port).
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    0,
                    a.sin6_scope_id,
                ))
            }
            _ => return Err(io::Error::other("not an IP source address")),
        };
        Ok((n as usize, from, ttl))
    }
}

/// The interface a link-local source address is scoped to; 0 for any other address. A
/// link-local address names a peer only together with it: two point-to-point peers may both
/// be fe80::1.
pub fn link_scope(from: &SocketAddr) -> u32 {
    match from {
        SocketAddr::V6(v6) if v6.ip().is_unicast_link_local() => v6.scope_id(),
        _ => 0,
    }
}
