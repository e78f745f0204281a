//! The lab: nodes and pods built from network namespaces, veths, bridges and
//! cgroup v2 directories, torn down on drop (also when a test panics).

use crate::netns::{self, ip_in};
use crate::{cgroup, state, workloads, Pod};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Lab-wide settings.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Give every pod an IPv6 address next to its IPv4 one (default: true).
    pub dual_stack: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions { dual_stack: true }
    }
}

/// One lab node: a netns with a bridge (the pods' gateway) and a link to the
/// underlay that connects the nodes.
#[derive(Clone, Debug)]
pub struct Node {
    /// Node name (`--node-name` of its agent).
    pub name: String,
    /// 1-based index; the third octet of its pod CIDR `10.<a>.<index>.0/24`.
    pub index: u8,
    /// Named netns (`ht<id>-<node>`).
    pub netns_name: String,
    /// IPv4 gateway of its pods (on `br0`).
    pub gateway_v4: Ipv4Addr,
    /// IPv6 gateway of its pods (dual-stack labs only).
    pub gateway_v6: Option<Ipv6Addr>,
    /// Address on the underlay (`ul0`, `10.<a>.0.<index>`).
    pub underlay_v4: Ipv4Addr,
}

/// A lab run. All names derive from a random 6-hex-digit run id; dropping it
/// kills every process in it (pods and agents), deletes its namespaces and
/// removes its cgroups and temp files (temp files are kept when panicking).
pub struct Lab {
    id: String,
    octet: u8,
    cg2: PathBuf,
    tmp: PathBuf,
    opts: LabOptions,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    torn_down: bool,
}

impl Lab {
    /// A dual-stack lab with no nodes yet. Reaps stale runs first.
    pub fn new() -> Result<Lab> {
        Lab::with_options(LabOptions::default())
    }

    /// A lab with `opts` and no nodes yet. Reaps stale runs first.
    pub fn with_options(opts: LabOptions) -> Result<Lab> {
        let cg2 = cgroup::cgroup2_mount()?;
        let claim = state::claim(&cg2)?;
        let tmp = std::env::temp_dir().join(format!("hoptrace-lab-{}", claim.id));
        let lab = Lab {
            id: claim.id,
            octet: claim.octet,
            cg2,
            tmp,
            opts,
            nodes: Vec::new(),
            pods: Vec::new(),
            torn_down: false,
        };
        // From here on, a failure drops `lab`, which removes what was made.
        std::fs::create_dir_all(&lab.tmp)
            .with_context(|| format!("creating {}", lab.tmp.display()))?;
        std::fs::create_dir_all(lab.cgroup_dir())
            .with_context(|| format!("creating {}", lab.cgroup_dir().display()))?;
        let ul = lab.underlay_netns();
        netns::add(&ul)?;
        ip_in(&ul, &["link", "set", "lo", "up"])?;
        ip_in(&ul, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&ul, &["link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// The run id (6 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The second octet `<a>` of every address in this lab (`10.<a>.x.x`, `fd00:<a>:..`).
    pub fn octet(&self) -> u8 {
        self.octet
    }

    /// The lab's temp dir (agent logs, workload files, process output).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// The cgroup v2 mount in use.
    pub fn cgroup2_mount(&self) -> &Path {
        &self.cg2
    }

    /// `<cgroup2>/hoptrace-lab/<id>`: parent of all node, pod and agent cgroups.
    pub fn cgroup_dir(&self) -> PathBuf {
        self.cg2.join(state::CGROUP_DIR).join(&self.id)
    }

    /// The cgroup an agent for `node` runs in (never a pod cgroup).
    pub fn agent_cgroup(&self, node: &str) -> PathBuf {
        self.cgroup_dir().join("_agents").join(node)
    }

    /// Names of every netns this lab created so far.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![self.underlay_netns()];
        names.extend(self.nodes.iter().map(|n| n.netns_name.clone()));
        names.extend(self.pods.iter().map(|p| p.netns_name.clone()));
        names
    }

    fn underlay_netns(&self) -> String {
        // `_` cannot appear in a node or pod name, so this never collides.
        format!("{}_underlay", state::netns_prefix(&self.id))
    }

    fn check_name(&self, name: &str) -> Result<()> {
        let ok = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !ok {
            bail!("{name:?}: names must be DNS labels of at most 40 chars ([a-z0-9-])");
        }
        if self.nodes.iter().any(|n| n.name == name) || self.pods.iter().any(|p| p.name == name) {
            bail!("{name:?}: node and pod names must be unique within a lab");
        }
        Ok(())
    }

    /// Adds node `name`: a netns `ht<id>-<name>` with forwarding on, bridge
    /// `br0` holding the pod gateways `10.<a>.<n>.1/24` and `fd00:<a>:<n>::1/64`,
    /// `ul0` on the underlay, and routes to/from every other node's pod CIDR.
    pub fn add_node(&mut self, name: &str) -> Result<Node> {
        self.check_name(name)?;
        let index = u8::try_from(self.nodes.len() + 1)
            .ok()
            .filter(|&i| i < 255)
            .context("too many nodes")?;
        let (a, v6) = (self.octet, self.opts.dual_stack);
        let ns = format!("{}{name}", state::netns_prefix(&self.id));
        let node = Node {
            name: name.to_owned(),
            index,
            netns_name: ns.clone(),
            gateway_v4: Ipv4Addr::new(10, a, index, 1),
            gateway_v6: v6.then(|| ipv6(a, index, 1)),
            underlay_v4: Ipv4Addr::new(10, a, 0, index),
        };
        netns::add(&ns)?;
        // Record it first so a failure below still tears it down.
        self.nodes.push(node.clone());
        netns::sysctls(
            &netns::path(&ns),
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ],
        )?;
        let ul = self.underlay_netns();
        let port = format!("n{index}");
        ip_in(&ns, &["link", "set", "lo", "up"])?;
        ip_in(&ns, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(
            &ns,
            &["addr", "add", &format!("10.{a}.{index}.1/24"), "dev", "br0"],
        )?;
        ip_in(
            &ns,
            &[
                "link", "add", "ul0", "type", "veth", "peer", "name", &port, "netns", &ul,
            ],
        )?;
        ip_in(&ul, &["link", "set", &port, "master", "br0", "up"])?;
        ip_in(
            &ns,
            &["addr", "add", &format!("10.{a}.0.{index}/24"), "dev", "ul0"],
        )?;
        if v6 {
            let gw = format!("{}/64", ipv6(a, index, 1));
            ip_in(&ns, &["addr", "add", &gw, "dev", "br0", "nodad"])?;
            let ul6 = format!("fd00:{a}::{index}/64");
            ip_in(&ns, &["addr", "add", &ul6, "dev", "ul0", "nodad"])?;
        }
        ip_in(&ns, &["link", "set", "br0", "up"])?;
        ip_in(&ns, &["link", "set", "ul0", "up"])?;
        for other in self.nodes.iter().filter(|n| n.index != index) {
            self.route_to(&ns, other.index)?;
            self.route_to(&other.netns_name, index)?;
        }
        std::fs::create_dir_all(self.cgroup_dir().join(name))?;
        Ok(node)
    }

    /// In node netns `ns_from`, routes node `to`'s pod CIDRs via its underlay address.
    fn route_to(&self, ns_from: &str, to: u8) -> Result<()> {
        let a = self.octet;
        ip_in(
            ns_from,
            &[
                "route",
                "add",
                &format!("10.{a}.{to}.0/24"),
                "via",
                &format!("10.{a}.0.{to}"),
            ],
        )?;
        if self.opts.dual_stack {
            let net = format!("fd00:{a}:{to}::/64");
            let via = format!("fd00:{a}::{to}");
            ip_in(ns_from, &["-6", "route", "add", &net, "via", &via])?;
        }
        Ok(())
    }

    /// Adds pod `name` on `node`: netns `ht<id>-<name>` with `lo` up and
    /// `eth0` (veth to the node bridge) holding `10.<a>.<n>.<k>/24` (and
    /// `fd00:<a>:<n>::<k>/64`, DAD off), default routes via the node, and the
    /// cgroup `<cgroup2>/hoptrace-lab/<id>/<node>/<name>`.
    pub fn add_pod(&mut self, node: &str, name: &str) -> Result<Pod> {
        let cgroup = self.cgroup_dir().join(node).join(name);
        self.add_pod_in(node, name, &cgroup)
    }

    /// Like [`Lab::add_pod`], with the pod's processes in `cgroup` (created with its
    /// parents; it must be below [`Lab::cgroup_dir`] so teardown removes it), e.g. a
    /// container cgroup in a kubelet-shaped tree for the discovery tests.
    pub fn add_pod_in(&mut self, node: &str, name: &str, cgroup: &Path) -> Result<Pod> {
        if !cgroup.starts_with(self.cgroup_dir()) || cgroup == self.cgroup_dir() {
            bail!(
                "pod cgroup {} must be below the lab's {}",
                cgroup.display(),
                self.cgroup_dir().display()
            );
        }
        self.check_name(name)?;
        let n = self
            .nodes
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("no node {node:?} in the lab"))?
            .clone();
        let k = u8::try_from(self.pods.iter().filter(|p| p.node == node).count() + 2)
            .ok()
            .filter(|&k| k < 255)
            .context("too many pods on one node")?;
        let (a, v6) = (self.octet, self.opts.dual_stack);
        let ns = format!("{}{name}", state::netns_prefix(&self.id));
        let pod = Pod {
            name: name.to_owned(),
            node: node.to_owned(),
            netns_name: ns.clone(),
            netns_path: netns::path(&ns),
            cgroup: cgroup.to_path_buf(),
            ipv4: Ipv4Addr::new(10, a, n.index, k),
            ipv6: v6.then(|| ipv6(a, n.index, k)),
            context_propagation: false,
        };
        netns::add(&ns)?;
        self.pods.push(pod.clone());
        netns::sysctls(
            &pod.netns_path,
            &[
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ],
        )?;
        let port = format!("vp{k}");
        let node_ns = &n.netns_name;
        ip_in(
            node_ns,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        ip_in(node_ns, &["link", "set", &port, "master", "br0", "up"])?;
        ip_in(&ns, &["link", "set", "lo", "up"])?;
        ip_in(
            &ns,
            &["addr", "add", &format!("{}/24", pod.ipv4), "dev", "eth0"],
        )?;
        if let (Some(ip), Some(gw)) = (pod.ipv6, n.gateway_v6) {
            ip_in(
                &ns,
                &["addr", "add", &format!("{ip}/64"), "dev", "eth0", "nodad"],
            )?;
            ip_in(&ns, &["link", "set", "eth0", "up"])?;
            ip_in(
                &ns,
                &["-6", "route", "add", "default", "via", &gw.to_string()],
            )?;
        } else {
            ip_in(&ns, &["link", "set", "eth0", "up"])?;
        }
        ip_in(
            &ns,
            &["route", "add", "default", "via", &n.gateway_v4.to_string()],
        )?;
        std::fs::create_dir_all(&pod.cgroup)
            .with_context(|| format!("creating {}", pod.cgroup.display()))?;
        Ok(pod)
    }

    /// Turns `context_propagation: auto` on (or off) for pod `name` in the workload
    /// files written from now on ([`Lab::write_workloads`]); returns the updated pod.
    pub fn set_context_propagation(&mut self, name: &str, auto: bool) -> Result<Pod> {
        let pod = self
            .pods
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name:?} in the lab"))?;
        pod.context_propagation = auto;
        Ok(pod.clone())
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// All pods on `node`, in creation order.
    pub fn pods_on(&self, node: &str) -> Vec<&Pod> {
        self.pods.iter().filter(|p| p.node == node).collect()
    }

    /// Path of `node`'s workload file (`<tmp>/workloads-<node>.yaml`).
    pub fn workloads_path(&self, node: &str) -> PathBuf {
        self.tmp.join(format!("workloads-{node}.yaml"))
    }

    /// (Re)writes `node`'s workload file listing all its pods, and the other nodes'
    /// pods as peers (named in the golden metrics, not enrolled); returns its path.
    pub fn write_workloads(&self, node: &str) -> Result<PathBuf> {
        let pods = self.pods_on(node);
        let peers: Vec<&Pod> = self.pods.iter().filter(|p| p.node != node).collect();
        self.write_file(node, &pods, &peers)
    }

    /// (Re)writes `node`'s workload file listing only the named pods (all must
    /// be on `node`); returns its path. The write is atomic (rename).
    pub fn write_workloads_only(&self, node: &str, names: &[&str]) -> Result<PathBuf> {
        let mut pods = Vec::new();
        for name in names {
            match self.pod(name) {
                Some(p) if p.node == node => pods.push(p),
                _ => bail!("no pod {name:?} on node {node:?}"),
            }
        }
        self.write_file(node, &pods, &[])
    }

    fn write_file(&self, node: &str, pods: &[&Pod], peers: &[&Pod]) -> Result<PathBuf> {
        if self.node(node).is_none() {
            bail!("no node {node:?} in the lab");
        }
        let path = self.workloads_path(node);
        workloads::write_atomic(&path, &workloads::render(node, pods, peers))?;
        Ok(path)
    }

    /// Tears the lab down now and reports errors (drop does the same, silently
    /// apart from a message on stderr).
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let result = state::teardown(&self.id, &self.cg2);
        if std::thread::panicking() {
            eprintln!(
                "hoptrace lab {}: files kept in {}",
                self.id,
                self.tmp.display()
            );
        } else if self.tmp.exists() {
            std::fs::remove_dir_all(&self.tmp)
                .with_context(|| format!("removing {}", self.tmp.display()))?;
        }
        result
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            eprintln!("hoptrace lab {}: teardown failed: {e:#}", self.id);
        }
    }
}

fn ipv6(a: u8, node: u8, host: u8) -> Ipv6Addr {
    // Written like the IPv4 address (`fd00:61:1::2` for 10.61.1.2): each
    // decimal number is read as a hex group, which is always valid (<= 0x255).
    let hex = |n: u8| u16::from_str_radix(&n.to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0xfd00, hex(a), hex(node), 0, 0, 0, 0, hex(host))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv6_reads_like_ipv4() {
        assert_eq!(super::ipv6(61, 1, 2).to_string(), "fd00:61:1::2");
        assert_eq!(super::ipv6(249, 12, 254).to_string(), "fd00:249:12::254");
    }
}
