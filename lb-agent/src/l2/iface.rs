//! Interface facts read through sockets, so they are those of the caller's network namespace
//! (sysfs would show the namespace it was mounted in).
use std::{ffi::CString, io, mem::zeroed, os::fd::AsRawFd};

use super::L2Error;

/// An interface the agent announces on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

impl Interface {
    /// Looks `name` up in the current network namespace.
    pub fn lookup(name: &str) -> Result<Self, L2Error> {
        let index = index_of(name)?;
        let mac = mac_of(name).map_err(|source| L2Error::InterfaceMac {
            name: name.to_owned(),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            index,
            mac,
        })
    }
}

/// Interface index of `name`.
pub fn index_of(name: &str) -> Result<u32, L2Error> {
    let missing = || L2Error::NoSuchInterface {
        name: name.to_owned(),
    };
    let c_name = CString::new(name).map_err(|_| missing())?;
    // SAFETY: `c_name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(missing()),
        index => Ok(index),
    }
}

/// Name of the interface with index `index`, if any.
pub fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes the call requires.
    let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn mac_of(name: &str) -> io::Result<[u8; 6]> {
    if name.len() >= libc::IF_NAMESIZE {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned here.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// The networks of `name`'s addresses (IPv4 and IPv6), as `getifaddrs(3)` lists them: where a
/// host on that link may have its address. Empty when the interface has none or cannot be read.
pub fn networks(name: &str) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list it points `list` at, freed below; each entry's
    // name, address and netmask are valid C data (or null) while the list lives.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut at = list;
        while !at.is_null() {
            let entry = &*at;
            at = entry.ifa_next;
            if entry.ifa_name.is_null()
                || std::ffi::CStr::from_ptr(entry.ifa_name).to_bytes() != name.as_bytes()
            {
                continue;
            }
            if let (Some(addr), Some(mask)) = (ip_of(entry.ifa_addr), ip_of(entry.ifa_netmask))
                && let Ok(net) = ipnet::IpNet::with_netmask(addr, mask)
            {
                out.push(net.trunc());
            }
        }
        libc::freeifaddrs(list);
    }
    out
}

/// The IP address in a `sockaddr` of family AF_INET or AF_INET6.
///
/// # Safety
/// `sa` is null or points to a valid `sockaddr` of the size its family implies.
unsafe fn ip_of(sa: *const libc::sockaddr) -> Option<std::net::IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the caller's promise; the family says which struct it is.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let v4 = std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>());
                Some(std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)).into())
            }
            libc::AF_INET6 => {
                let v6 = std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in6>());
                Some(std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr).into())
            }
            _ => None,
        }
    }
}
