//! In-pod connections without TCP (docs/ARCHITECTURE.md, "In-pod connections without
//! TCP"): both ends of each connection between an app and the agent inside a pod's
//! netns go into `LOCAL_SOCKS` when established (`sock_ops` in the pod's cgroup for the
//! app's end, `hoptrace_sockops_agent` in the agent's own cgroup for the agent's), and
//! the `hoptrace_local_msg` program puts each message straight into the other end's
//! receive queue. The kernel does it all; the agent only loads and attaches the
//! programs, and marks each pod (`STEER_LOCAL`) when it enrolls it.

use std::fs::File;

use agent_common::{maps, programs, SockKey};
use aya::{
    maps::{MapData, SockHash},
    programs::{CgroupAttachMode, RawTracePoint, SkMsg, SockOps},
    Ebpf,
};

use super::{map_err, prog_err, program_as, Datapath, DatapathError};

/// The map the `sk_msg` program is attached to, held for the agent's lifetime.
pub(super) struct Local {
    _socks: SockHash<MapData, SockKey>,
}

impl Datapath {
    /// Makes the in-pod connections of the pods enrolled from now on skip TCP.
    /// `agent_cgroup`: the agent's own cgroup (not the root: a program attached there
    /// would run for every socket of the node). The receive hook tells sockets apart
    /// by `skc_cookie`, at the offset found in the kernel's BTF
    /// ([`super::btf::skc_cookie_offset`]); without it the redirected queue could not
    /// be bounded, and nothing is enabled.
    ///
    /// Opaque TCP is then relayed in userspace: a spliced socket reads segments, and
    /// an in-pod socket's bytes arrive as messages the splice program never sees.
    pub fn skip_pod_tcp(&self, agent_cgroup: &File) -> Result<(), DatapathError> {
        super::btf::skc_cookie_offset().map_err(DatapathError::Btf)?;
        let mut c = self.control();
        let socks = attach(&mut c.ebpf, agent_cgroup)?;
        drop(c);
        *self.local.lock().unwrap_or_else(|e| e.into_inner()) = Some(Local { _socks: socks });
        *self.splicer() = None;
        Ok(())
    }

    /// Whether pods enrolled now get [`agent_common::STEER_LOCAL`].
    pub fn pod_tcp_skipped(&self) -> bool {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// Loads and attaches the three programs. Nothing is redirected until a pod is marked,
/// so a failure half-way leaves every connection on TCP.
fn attach(e: &mut Ebpf, agent_cgroup: &File) -> Result<SockHash<MapData, SockKey>, DatapathError> {
    let socks: SockHash<MapData, SockKey> = SockHash::try_from(
        e.take_map(maps::LOCAL_SOCKS)
            .ok_or(DatapathError::Missing(maps::LOCAL_SOCKS))?,
    )
    .map_err(map_err(maps::LOCAL_SOCKS))?;
    let name = programs::LOCAL_MSG;
    let msg: &mut SkMsg = program_as(e, name)?;
    msg.load().map_err(prog_err(name))?;
    msg.attach(socks.fd()).map_err(prog_err(name))?;
    let name = programs::LOCAL_RECV;
    let recv: &mut RawTracePoint = program_as(e, name)?;
    recv.load().map_err(prog_err(name))?;
    recv.attach(programs::SOCK_RECV_TP)
        .map_err(prog_err(name))?;
    let name = programs::SOCK_OPS_AGENT;
    let ops: &mut SockOps = program_as(e, name)?;
    ops.load().map_err(prog_err(name))?;
    ops.attach(agent_cgroup, CgroupAttachMode::Single)
        .map_err(prog_err(name))?;
    Ok(socks)
}
