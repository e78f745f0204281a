//! hoptrace agent library: the daemon's modules, one per concern.
//!
//! See `docs/ARCHITECTURE.md` for the thread model, the data path and the port table.

pub mod admin;
pub mod agent;
pub mod attr;
pub mod check;
pub mod cli;
pub mod config;
pub mod cores;
pub mod ebpf;
pub mod enrollment;
pub mod export;
pub mod golden;
pub mod inpod;
pub mod k8s;
pub mod kernel;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod park;
pub mod pod;
pub mod proxy;
pub mod socket;
pub mod source;
pub mod trace;
pub mod workloads;

#[cfg(test)]
mod architecture;
