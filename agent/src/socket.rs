//! The one place sockets are created. Netns, reuse and option settings are
//! wrappers here, so the proxy never calls `socket()` itself.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::{Netns, NetnsError};

/// Socket mark of inbound-leg upstream sockets (and their replies); `inpod` routes
/// packets carrying it back to the agent.
pub const MARK: u32 = 0x4854_0000;

/// Errors creating sockets.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Entering the netns failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// `bind` failed because the port is taken.
    #[error("cannot listen on {addr} in {netns}: address in use; another process in the pod uses this port — pick another with --outbound-port/--inbound-port")]
    InUse {
        /// Address.
        addr: SocketAddr,
        /// Netns path.
        netns: String,
    },
    /// Any other socket error.
    #[error("{op} {addr} in {netns}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Netns path.
        netns: String,
        /// Cause.
        source: io::Error,
    },
}

/// Backlog of per-pod listeners: bursts of connects land in the accept queue.
const BACKLOG: i32 = 1024;

/// Opens a listening TCP socket on `addr` inside `netns` (non-blocking).
pub fn listen_in(netns: &Netns, addr: SocketAddr) -> Result<std::net::TcpListener, SocketError> {
    let err = |op, source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            SocketError::InUse {
                addr,
                netns: netns.path().display().to_string(),
            }
        } else {
            SocketError::Io {
                op,
                addr,
                netns: netns.path().display().to_string(),
                source,
            }
        }
    };
    let socket = netns
        .run(|| Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)))?
        .map_err(|e| err("socket", e))?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(true)
            .map_err(|e| err("IPV6_V6ONLY", e))?;
    }
    socket
        .set_reuse_address(true)
        .map_err(|e| err("SO_REUSEADDR", e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| err("O_NONBLOCK", e))?;
    socket.bind(&addr.into()).map_err(|e| err("bind", e))?;
    socket.listen(BACKLOG).map_err(|e| err("listen", e))?;
    Ok(socket.into())
}

/// Where an upstream connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The kernel's choice (the pod's address towards the destination).
    Default,
    /// The given address, which need not be local (IP_TRANSPARENT), with the socket
    /// marked [`MARK`] so the replies route back to it (`inpod`'s rule).
    Transparent(IpAddr),
}

/// Creates an unconnected TCP socket in `netns` for `dst`'s family, bound per `src`
/// (port chosen at connect time), ready for tokio to connect.
pub fn connect_socket_in(
    netns: &Netns,
    dst: SocketAddr,
    src: Source,
) -> Result<tokio::net::TcpSocket, SocketError> {
    let err = |op, source| SocketError::Io {
        op,
        addr: dst,
        netns: netns.path().display().to_string(),
        source,
    };
    let socket = netns
        .run(|| Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)))?
        .map_err(|e| err("socket", e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| err("O_NONBLOCK", e))?;
    socket
        .set_nodelay(true)
        .map_err(|e| err("TCP_NODELAY", e))?;
    if let Source::Transparent(ip) = src {
        match ip {
            IpAddr::V4(_) => socket
                .set_ip_transparent(true)
                .map_err(|e| err("IP_TRANSPARENT", e))?,
            IpAddr::V6(_) => {
                set_ipv6_transparent(&socket).map_err(|e| err("IPV6_TRANSPARENT", e))?
            }
        }
        socket.set_mark(MARK).map_err(|e| err("SO_MARK", e))?;
        // The port is chosen here, at bind (not deferred to connect), because the
        // caller registers the exact 4-tuple with sk_lookup before connecting.
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .map_err(|e| err("bind", e))?;
    }
    Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
}

fn set_ipv6_transparent(socket: &Socket) -> io::Result<()> {
    setsockopt_int(socket, libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
}

/// Sets an integer socket option to 1.
pub fn setsockopt_int(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value is a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The network namespace cookie of the namespace `fd` lives in (`SO_NETNS_COOKIE`,
/// Linux 5.14+). The same value `bpf_get_netns_cookie()` returns in the kernel.
pub fn netns_cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    getsockopt_u64(fd, SO_NETNS_COOKIE)
}

/// The socket's cookie (`SO_COOKIE`): the value `bpf_get_socket_cookie()` returns for
/// it in the kernel, unique for the socket's lifetime.
pub fn socket_cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    const SO_COOKIE: libc::c_int = 57;
    getsockopt_u64(fd, SO_COOKIE)
}

fn getsockopt_u64(fd: &impl AsRawFd, name: libc::c_int) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd; out-pointers to stack values of the declared size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The bytes a connected TCP socket has taken for sending since it was opened: those
/// the peer acknowledged (`tcpi_bytes_acked`) plus those still queued (`SIOCOUTQ`).
/// Read in that order, so a concurrent acknowledgement can make it low, never high.
pub fn tcp_bytes_taken(fd: &impl AsRawFd) -> io::Result<u64> {
    // `struct tcp_info` up to `tcpi_bytes_acked` (Linux 4.1+): offset 120, 8 bytes.
    const BYTES_ACKED: usize = 120;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: valid fd; out-pointer to a buffer of the declared size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < BYTES_ACKED + 8 {
        return Err(io::Error::other("tcp_info without tcpi_bytes_acked"));
    }
    let mut acked = [0u8; 8];
    acked.copy_from_slice(&info[BYTES_ACKED..BYTES_ACKED + 8]);
    let mut queued: libc::c_int = 0;
    // SAFETY: valid fd; SIOCOUTQ writes one int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(acked) + u64::try_from(queued).unwrap_or(0))
}

/// Loopback listen address of a per-pod listener.
pub fn loopback(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }
}
