//! Reads a redirected connection's original destination (SO_ORIGINAL_DST), which the
//! nat rules of `weft-proxy init` preserve in conntrack, for IPv4 and IPv6.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
/// (linux/netfilter_ipv6/ip6_tables.h) share the value 80.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination the client dialled before the nat table redirected it here.
pub fn original_dst(stream: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let fd = stream.as_raw_fd();
    let v4_socket = match local {
        SocketAddr::V4(_) => true,
        // A v4 client on a dual-stack listener: conntrack knows it as IPv4.
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    if v4_socket {
        let sin: libc::sockaddr_in = getsockopt(fd, libc::SOL_IP)?;
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
    } else {
        let sin6: libc::sockaddr_in6 = getsockopt(fd, libc::SOL_IPV6)?;
        let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(sin6.sin6_port),
            sin6.sin6_flowinfo,
            sin6.sin6_scope_id,
        )))
    }
}

fn getsockopt<T: Copy>(fd: libc::c_int, level: libc::c_int) -> io::Result<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a writable buffer of `len` bytes, and the kernel writes at
    // most `len` bytes of a sockaddr of this family into it.
    let rc = unsafe {
        libc::getsockopt(fd, level, SO_ORIGINAL_DST, value.as_mut_ptr().cast(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and then (partly) written by the kernel; every bit
    // pattern is a valid sockaddr_in/sockaddr_in6.
    Ok(unsafe { value.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_dst_or_its_own() {
        // Without a nat rule conntrack has no redirect for this flow: the kernel
        // answers with an error (ENOENT, or ENOPROTOOPT without conntrack) or the
        // untouched destination. Either way nothing panics and no garbage comes back.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        match original_dst(&server) {
            Ok(dst) => assert_eq!(dst, addr),
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOPROTOOPT)),
                "{e}"
            ),
        }
    }
}
