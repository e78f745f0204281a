//! A minimal netlink client: one request with an acknowledgement (rtnetlink, used by
//! `inpod`), or one dump (sock_diag, used by `listeners`). The socket belongs to the
//! network namespace current when it is opened (open it inside `Netns::run`).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// Netlink header length.
const HDR: usize = 16;

/// A netlink socket.
pub struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    /// Opens a socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_SOCK_DIAG`) in the
    /// calling thread's netns.
    pub fn open(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: buffer valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv<'a>(&self, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        // SAFETY: buffer valid for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(&buf[..n as usize])
    }

    /// Sends one request with NLM_F_ACK and returns the kernel's verdict.
    pub fn request(&self, msg: &[u8]) -> io::Result<()> {
        self.send(msg)?;
        let mut buf = [0u8; 4096];
        let reply = self.recv(&mut buf)?;
        // nlmsghdr (16 bytes), then for NLMSG_ERROR an i32 error code.
        if reply.len() < HDR + 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short netlink reply",
            ));
        }
        let ty = u16::from_ne_bytes([reply[4], reply[5]]);
        if ty != libc::NLMSG_ERROR as u16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected netlink reply",
            ));
        }
        match i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
            0 => Ok(()),
            code => Err(io::Error::from_raw_os_error(-code)),
        }
    }

    /// Sends a dump request and calls `each` with the payload of every message of the
    /// answer, until `NLMSG_DONE`.
    pub fn dump(&self, msg: &[u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
        self.send(msg)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let reply = self.recv(&mut buf)?;
            if reply.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink dump ended early",
                ));
            }
            let mut off = 0;
            while off + HDR <= reply.len() {
                let len = u32::from_ne_bytes([
                    reply[off],
                    reply[off + 1],
                    reply[off + 2],
                    reply[off + 3],
                ]) as usize;
                let ty = u16::from_ne_bytes([reply[off + 4], reply[off + 5]]);
                if len < HDR || off + len > reply.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink message",
                    ));
                }
                let payload = &reply[off + HDR..off + len];
                match ty {
                    t if t == libc::NLMSG_DONE as u16 => return Ok(()),
                    t if t == libc::NLMSG_ERROR as u16 => {
                        let code = payload
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    _ => each(payload),
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// Builds a netlink message: header, fixed body, then u32 attributes.
pub fn message(ty: u16, flags: u16, body: &[u8], attrs: &[(u16, u32)]) -> Vec<u8> {
    let attrs_len = attrs.len() * 8; // rtattr (4) + u32 (4), already 4-aligned
    let len = HDR + body.len() + attrs_len;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: kernel assigns
    m.extend_from_slice(body);
    for (kind, value) in attrs {
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&value.to_ne_bytes());
    }
    m
}
