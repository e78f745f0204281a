//! A synchronous netlink client over `netlink-sys`: one request with an
//! acknowledgement (rtnetlink, used by `inpod`), or one dump (sock_diag, used by
//! `listeners`). Messages are built and parsed by the `netlink-packet-*` crates. The
//! socket belongs to the network namespace current when it is opened (open it inside
//! `Netns::run`).

use std::io;

use netlink_packet_core::{
    ErrorMessage, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// A netlink socket.
pub struct Netlink {
    socket: Socket,
}

impl Netlink {
    /// Opens a socket of `protocol` (`netlink_sys::protocols::NETLINK_ROUTE`,
    /// `NETLINK_SOCK_DIAG`) in the calling thread's netns.
    pub fn open(protocol: isize) -> io::Result<Self> {
        let socket = Socket::new(protocol)?;
        // Talk to the kernel only (port 0): nothing else can answer on this socket.
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket })
    }

    fn send<M: NetlinkSerializable>(&self, flags: u16, message: M) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = 1;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(())
    }

    /// Receives one datagram and calls `each` with every message in it, until `each`
    /// returns a verdict, which is returned.
    fn recv<M: NetlinkDeserializable>(
        &self,
        buf: &mut Vec<u8>,
        mut each: impl FnMut(NetlinkPayload<M>) -> Option<io::Result<()>>,
    ) -> Option<io::Result<()>> {
        buf.clear();
        match self.socket.recv(buf, 0) {
            Err(e) => return Some(Err(e)),
            Ok(0) => {
                return Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink socket closed",
                )))
            }
            Ok(_) => {}
        }
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let msg = match NetlinkMessage::<M>::deserialize(rest) {
                Ok(msg) => msg,
                Err(e) => return Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            };
            rest = rest
                .get((msg.header.length as usize + 3) & !3..)
                .unwrap_or_default();
            if let Some(verdict) = each(msg.payload) {
                return Some(verdict);
            }
        }
        None
    }

    /// Sends one request with `NLM_F_ACK` (plus `flags`) and returns the kernel's
    /// verdict: `Ok` for the acknowledgement, its errno otherwise.
    pub fn request<M: NetlinkSerializable + NetlinkDeserializable>(
        &self,
        flags: u16,
        message: M,
    ) -> io::Result<()> {
        self.send(NLM_F_REQUEST | NLM_F_ACK | flags, message)?;
        let mut buf = Vec::with_capacity(4096);
        loop {
            let verdict = self.recv::<M>(&mut buf, |payload| match payload {
                NetlinkPayload::Error(e) => Some(ack(e)),
                _ => None,
            });
            if let Some(verdict) = verdict {
                return verdict;
            }
        }
    }

    /// Sends a dump request and calls `each` with every message of the answer, until
    /// `NLMSG_DONE`.
    pub fn dump<M: NetlinkSerializable + NetlinkDeserializable>(
        &self,
        message: M,
        mut each: impl FnMut(M),
    ) -> io::Result<()> {
        self.send(NLM_F_REQUEST | NLM_F_DUMP, message)?;
        let mut buf = Vec::with_capacity(32 * 1024);
        loop {
            let verdict = self.recv::<M>(&mut buf, |payload| match payload {
                NetlinkPayload::InnerMessage(m) => {
                    each(m);
                    None
                }
                NetlinkPayload::Done(_) => Some(Ok(())),
                NetlinkPayload::Error(e) => Some(ack(e)),
                _ => None,
            });
            if let Some(verdict) = verdict {
                return verdict;
            }
        }
    }
}

/// An `NLMSG_ERROR` message: an acknowledgement (no code) or the errno of a failure.
fn ack(e: ErrorMessage) -> io::Result<()> {
    match e.code {
        None => Ok(()),
        Some(_) => Err(e.to_io()),
    }
}
