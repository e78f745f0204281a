//! The static workload file (DESIGN §3.2) the agent reads with `--workloads-file`.

use crate::{Pod, LAB_NAMESPACE};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

/// Renders the workload file for `node` listing `pods`, e.g.
///
/// ```yaml
/// node: node-1
/// workloads:
///   - name: client
///     namespace: lab
///     ips: [10.61.1.2, "fd00:61:1::2"]
///     cgroup: /sys/fs/cgroup/unified/hoptrace-lab/<id>/node-1/client
///     netns: /var/run/netns/ht<id>-client
/// ```
///
/// A pod with [`Pod::context_propagation`] gets `    context_propagation: auto`
/// after its `netns:` line (issue 13); others get no such line (the agent's
/// default, `off`).
///
/// `peers` (pods of other nodes) follow as entries with their own `node:` and
/// addresses only: the agent does not enroll them, it names their addresses in its
/// golden metrics. An empty list renders as `workloads: []`. Names are DNS labels
/// (validated by the lab), so only IPv6 addresses need quoting.
pub fn render(node: &str, pods: &[&Pod], peers: &[&Pod]) -> String {
    let mut out = format!("node: {node}\n");
    if pods.is_empty() && peers.is_empty() {
        out.push_str("workloads: []\n");
        return out;
    }
    out.push_str("workloads:\n");
    // Writing into a String cannot fail.
    for pod in pods {
        let _ = write!(
            out,
            "  - name: {}\n    namespace: {LAB_NAMESPACE}\n    ips: [{}]\n    cgroup: {}\n    netns: {}\n",
            pod.name,
            ips(pod),
            pod.cgroup.display(),
            pod.netns_path.display(),
        );
        if pod.context_propagation {
            out.push_str("    context_propagation: auto\n");
        }
    }
    for pod in peers {
        let _ = write!(
            out,
            "  - name: {}\n    namespace: {LAB_NAMESPACE}\n    node: {}\n    ips: [{}]\n",
            pod.name,
            pod.node,
            ips(pod),
        );
    }
    out
}

fn ips(pod: &Pod) -> String {
    let ips: Vec<String> = pod
        .ips()
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"{v6}\""),
        })
        .collect();
    ips.join(", ")
}

/// Writes `contents` to `path` atomically (temp file in the same directory,
/// then `rename`), so a watcher never reads a half-written file.
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pod(name: &str, v6: bool) -> Pod {
        Pod {
            name: name.into(),
            node: "node-1".into(),
            netns_name: format!("htabc123-{name}"),
            netns_path: PathBuf::from(format!("/var/run/netns/htabc123-{name}")),
            cgroup: PathBuf::from(format!(
                "/sys/fs/cgroup/unified/hoptrace-lab/abc123/node-1/{name}"
            )),
            ipv4: "10.61.1.2".parse().expect("v4"),
            ipv6: v6.then(|| "fd00:61:1::2".parse().expect("v6")),
            context_propagation: false,
        }
    }

    #[test]
    fn exact_format() {
        let client = pod("client", true);
        assert_eq!(
            render("node-1", &[&client], &[]),
            "node: node-1\nworkloads:\n  - name: client\n    namespace: lab\n    \
             ips: [10.61.1.2, \"fd00:61:1::2\"]\n    \
             cgroup: /sys/fs/cgroup/unified/hoptrace-lab/abc123/node-1/client\n    \
             netns: /var/run/netns/htabc123-client\n"
        );
    }

    #[test]
    fn parses_as_yaml() {
        let (a, b) = (pod("client", true), pod("server", false));
        let doc: serde_norway::Value =
            serde_norway::from_str(&render("node-2", &[&a, &b], &[])).expect("valid yaml");
        assert_eq!(doc["node"], "node-2");
        let w = &doc["workloads"];
        assert_eq!(w[0]["ips"][1], "fd00:61:1::2");
        assert_eq!(w[1]["name"], "server");
        assert_eq!(w[1]["ips"].as_sequence().map(Vec::len), Some(1));
        let mut web = pod("web", false);
        web.context_propagation = true;
        let doc: serde_norway::Value =
            serde_norway::from_str(&render("node-1", &[&a, &web], &[&b])).expect("valid yaml");
        assert_eq!(doc["workloads"][1]["context_propagation"], "auto");
        assert!(doc["workloads"][0].get("context_propagation").is_none());
        assert!(doc["workloads"][2].get("context_propagation").is_none());
        let empty: serde_norway::Value =
            serde_norway::from_str(&render("node-1", &[], &[])).expect("valid yaml");
        assert_eq!(empty["workloads"].as_sequence().map(Vec::len), Some(0));
    }
}
