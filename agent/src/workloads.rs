//! Workload sources: which pods on this node to enroll (DESIGN §3.2).
//!
//! The static source is a YAML file, re-read when it changes. A malformed file is
//! rejected with the line and reason and the last good set stays in force.

pub use crate::pod::PodKey;
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Deserialize;

/// Errors reading or validating a workload file.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error(
        "cannot read workload file {path}: {source}; check the path given to --workloads-file"
    )]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// YAML syntax or schema error.
    #[error("workload file {path}{location}: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// ` line L column C` when known.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A well-formed file with an entry that cannot be used.
    #[error("workload file {path}: workloads[{index}] ({pod}){location}: {message}")]
    Invalid {
        /// File path.
        path: PathBuf,
        /// Index of the entry in `workloads`.
        index: usize,
        /// `namespace/name` of the entry.
        pod: String,
        /// ` line L` of the entry when known.
        location: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The file is for another node.
    #[error("workload file {path} is for node {file_node:?} but this agent is --node-name {node:?}; point each agent at its own node's file")]
    WrongNode {
        /// File path.
        path: PathBuf,
        /// `node` in the file.
        file_node: String,
        /// This agent's node name.
        node: String,
    },
}

/// One pod to enroll, as the file describes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod UID, when known.
    #[serde(default)]
    pub uid: Option<String>,
    /// Service (workload) name; defaults to `name`.
    #[serde(default)]
    pub service: Option<String>,
    /// The pod's addresses (v4 and/or v6). Inbound connections to these are steered.
    pub ips: Vec<IpAddr>,
    /// The node the pod runs on, when it is not this agent's: such an entry only names
    /// the pod's addresses in the golden metrics (docs/METRICS.md) and is not enrolled.
    /// [`parse`] clears it for this node's pods, so `None` means "enroll".
    #[serde(default)]
    pub node: Option<String>,
    /// The pod's cgroup v2 directory. Outbound connections of processes in it are
    /// steered. Required for this node's pods.
    #[serde(default)]
    pub cgroup: PathBuf,
    /// The pod's network namespace (a bind-mounted nsfs file or `/proc/PID/ns/net`).
    /// Required for this node's pods.
    #[serde(default)]
    pub netns: PathBuf,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Opt-in: the fraction (0.0–1.0) of requests arriving at this pod *without*
    /// trace context for which the agent starts a new trace (for pods that act as
    /// ingress). Absent or 0: such requests are forwarded untouched, with no span.
    #[serde(default)]
    pub trace_sampling: Option<f64>,
    /// Opt-in: `auto` links the pod's outbound requests that carry no trace context to
    /// the inbound request that caused them and sends them on with its context
    /// (docs/TRACING.md, "Context propagation by the agent"). Default `off`.
    #[serde(default)]
    pub context_propagation: ContextPropagation,
    /// The nsfs inode of `netns`, when the source resolved it (Kubernetes discovery:
    /// `netns` is `/proc/PID/ns/net` of one of the pod's processes). Not part of the
    /// file format. Two specs naming the same inode name the same namespace even when
    /// they reach it through different processes; see [`Workload::same_target`].
    #[serde(skip)]
    pub netns_inode: Option<u64>,
}

/// A pod's context propagation setting ([`Workload::context_propagation`]; the
/// Kubernetes annotation `hoptrace.io/context-propagation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextPropagation {
    /// Requests leave as the app sends them.
    #[default]
    Off,
    /// Context-less outbound requests are linked to their inbound cause when exactly
    /// one can be it.
    Auto,
}

impl ContextPropagation {
    /// Parses the annotation value (`auto` | `off`).
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "context propagation `{other}` is not `auto` or `off`"
            )),
        }
    }
}

impl Workload {
    /// The pod's identity as used in metrics and logs.
    pub fn key(&self) -> PodKey {
        PodKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// True when `other` needs no re-enrollment of a pod enrolled as `self`: every
    /// field is equal, except that `netns` paths may differ when both specs carry the
    /// same [`Workload::netns_inode`] (the same namespace seen through another process).
    /// An enrolled pod holds its namespace open, so the kernel cannot hand its inode
    /// number to a new namespace while it is enrolled.
    pub fn same_target(&self, other: &Workload) -> bool {
        if self == other {
            return true;
        }
        match (self.netns_inode, other.netns_inode) {
            (Some(a), Some(b)) if a == b => {
                let mut moved = other.clone();
                moved.netns = self.netns.clone();
                *self == moved
            }
            _ => false,
        }
    }

    /// Whether the pod runs on this agent's node (and is enrolled).
    pub fn is_local(&self) -> bool {
        self.node.is_none()
    }

    /// Service name (`service`, else the pod name).
    pub fn service_name(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadFile {
    #[serde(default)]
    node: Option<String>,
    /// Required: a file without it (empty, or cut short by a partial write) is an error,
    /// never "no pods"; `workloads: []` says that.
    workloads: Vec<Workload>,
}

/// Parses and validates workload file contents. `node` is this agent's node name.
pub fn parse(path: &Path, text: &str, node: Option<&str>) -> Result<Vec<Workload>, WorkloadError> {
    let no_content = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if no_content {
        // A 0-byte file is what a writer that truncates before writing leaves for a
        // moment: releasing every pod on it would unsteer the node.
        return Err(WorkloadError::Parse {
            path: path.to_owned(),
            location: String::new(),
            message:
                "the file is empty (a partial write?); write `workloads: []` to release every pod"
                    .into(),
        });
    }
    let file: WorkloadFile = serde_norway::from_str(text).map_err(|e| WorkloadError::Parse {
        path: path.to_owned(),
        location: e
            .location()
            .map(|l| format!(" line {} column {}", l.line(), l.column()))
            .unwrap_or_default(),
        message: e.to_string(),
    })?;
    if let (Some(file_node), Some(node)) = (file.node.as_deref(), node) {
        if file_node != node {
            return Err(WorkloadError::WrongNode {
                path: path.to_owned(),
                file_node: file_node.to_owned(),
                node: node.to_owned(),
            });
        }
    }
    let entry_lines = entry_lines(text);
    let mut names = HashSet::new();
    let mut ips = HashSet::new();
    let mut workloads = file.workloads;
    // An entry's own `node` that is this node's (the agent's, else the file's) is
    // the same as none: the pod is enrolled.
    let this_node = node.or(file.node.as_deref());
    for w in &mut workloads {
        if w.node.is_some() && w.node.as_deref() == this_node {
            w.node = None;
        }
    }
    for (index, w) in workloads.iter().enumerate() {
        let invalid = |message: String| WorkloadError::Invalid {
            path: path.to_owned(),
            index,
            pod: w.key().to_string(),
            location: entry_lines
                .get(index)
                .map(|l| format!(" line {l}"))
                .unwrap_or_default(),
            message,
        };
        if w.name.is_empty() || w.namespace.is_empty() {
            return Err(invalid("`name` and `namespace` must not be empty".into()));
        }
        if !names.insert(w.key()) {
            return Err(invalid(
                "duplicate pod: each namespace/name may appear once".into(),
            ));
        }
        if w.ips.is_empty() {
            return Err(invalid(
                "`ips` is empty: list the pod's addresses so inbound traffic can be steered".into(),
            ));
        }
        for ip in &w.ips {
            // `::ffff:10.0.0.1` is `10.0.0.1`: checked, and counted, as the address it is.
            let canonical = ip.to_canonical();
            if canonical.is_loopback() || canonical.is_unspecified() || canonical.is_multicast() {
                return Err(invalid(format!("{ip} is not a pod address")));
            }
            if !ips.insert(canonical) {
                return Err(invalid(format!(
                    "{ip} is listed for two pods; an address belongs to one pod"
                )));
            }
        }
        if let Some(r) = w.trace_sampling {
            if !(0.0..=1.0).contains(&r) {
                return Err(invalid(format!(
                    "trace_sampling {r} is not a fraction between 0.0 and 1.0"
                )));
            }
        }
        if w.is_local() && (!w.cgroup.is_absolute() || !w.netns.is_absolute()) {
            return Err(invalid(
                "`cgroup` and `netns` must be absolute paths (an entry for a pod on another node says so with `node:`)".into(),
            ));
        }
    }
    Ok(workloads)
}

/// 1-based line numbers of the `- ` items directly under `workloads:`. Best effort,
/// used only to point error messages at the right entry.
fn entry_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut in_workloads = false;
    let mut item_indent: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent == 0 {
            in_workloads = trimmed.starts_with("workloads:");
            continue;
        }
        if in_workloads && (trimmed.starts_with("- ") || trimmed == "-") {
            let want = *item_indent.get_or_insert(indent);
            if indent == want {
                lines.push(i + 1);
            }
        }
    }
    lines
}

/// Reads and parses a workload file.
pub fn load(path: &Path, node: Option<&str>) -> Result<Vec<Workload>, WorkloadError> {
    let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, node)
}

/// How often the file is polled. Polling (rather than inotify) also follows files
/// replaced by rename and ConfigMap symlink swaps, which is what "within 1 s" needs.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Detects changes to a workload file by (mtime, size, inode, contents).
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    last: Option<(Option<SystemTime>, u64, u64)>,
    last_text: Option<String>,
}

impl FileWatch {
    /// Watches `path` (nothing is read until [`FileWatch::poll`]).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            last: None,
            last_text: None,
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the new contents when the file changed since the last call (the first
    /// call always returns them), `Ok(None)` when unchanged.
    pub fn poll(&mut self) -> Result<Option<String>, WorkloadError> {
        use std::os::unix::fs::MetadataExt as _;
        let read_err = |source| WorkloadError::Read {
            path: self.path.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(read_err)?;
        let stamp = (meta.modified().ok(), meta.len(), meta.ino());
        if self.last == Some(stamp) {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.path).map_err(|source| WorkloadError::Read {
            path: self.path.clone(),
            source,
        })?;
        self.last = Some(stamp);
        if self.last_text.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        self.last_text = Some(text.clone());
        Ok(Some(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node: node-1
workloads:
  - name: web-5d8f7          # pod name
    namespace: emojivoto
    uid: 0c1d
    service: web
    ips: [10.244.1.5, "fd00::5"]
    cgroup: /sys/fs/cgroup/unified/lab/node-1/web-5d8f7
    netns: /var/run/netns/web-5d8f7
    labels: {app: web}
  - name: db
    namespace: emojivoto
    ips: [10.244.1.6]
    cgroup: /sys/fs/cgroup/unified/lab/node-1/db
    netns: /var/run/netns/db
"#;

    fn p() -> &'static Path {
        Path::new("/etc/w.yaml")
    }

    #[test]
    fn entries_of_other_nodes_only_name_peers() {
        let text = r#"
node: node-1
workloads:
  - name: a
    namespace: shop
    node: node-1
    ips: [10.0.0.1]
    cgroup: /sys/fs/cgroup/a
    netns: /run/netns/a
  - name: b
    namespace: shop
    service: backend
    node: node-2
    ips: [10.0.1.1]
"#;
        let w = parse(Path::new("w.yaml"), text, Some("node-1")).expect("valid");
        assert!(w[0].is_local() && !w[1].is_local(), "{w:?}");
        assert_eq!(w[1].node.as_deref(), Some("node-2"));
        // Without --node-name the file's node decides.
        let w = parse(Path::new("w.yaml"), text, None).expect("valid");
        assert!(w[0].is_local() && !w[1].is_local());
        // A local entry still needs its cgroup and netns.
        let bad = text.replace("    node: node-2\n", "");
        let err = parse(Path::new("w.yaml"), &bad, Some("node-1")).expect_err("invalid");
        assert!(err.to_string().contains("another node"), "{err}");
    }

    /// Found by `cargo xtask fuzz` (workload_file): with no node name anywhere (no
    /// `--node-name`, no file `node:`), an entry's `node:` cannot be this node's, so the
    /// entry only names a peer; told the agent is on that node, the entry is local and
    /// must carry its cgroup and netns.
    #[test]
    fn an_entry_node_is_a_peer_until_the_agent_knows_its_node() {
        let text =
            "workloads:\n  - name: a\n    namespace: shop\n    node: node-1\n    ips: [10.0.0.1]\n";
        let w = parse(p(), text, None).expect("a peer entry");
        assert!(!w[0].is_local(), "{w:?}");
        let err = parse(p(), text, Some("node-1")).expect_err("local, no netns");
        assert!(err.to_string().contains("absolute"), "{err}");
        let w = parse(p(), text, Some("node-2")).expect("a peer entry");
        assert!(!w[0].is_local(), "{w:?}");
    }

    #[test]
    fn parses_the_documented_example() {
        let w = parse(p(), GOOD, Some("node-1")).expect("valid");
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].service_name(), "web");
        assert_eq!(w[1].service_name(), "db");
        assert_eq!(w[0].ips.len(), 2);
        assert_eq!(w[0].labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(w[1].key().to_string(), "emojivoto/db");
    }

    #[test]
    fn v4_mapped_addresses_are_their_v4_address() {
        let entry = |name: &str, ip: &str| {
            format!(
                "  - name: {name}\n    namespace: ns\n    ips: [\"{ip}\"]\n    cgroup: /c/{name}\n    netns: /n/{name}\n"
            )
        };
        let lo = format!("workloads:\n{}", entry("a", "::ffff:127.0.0.1"));
        assert!(parse(p(), &lo, None)
            .expect_err("loopback")
            .to_string()
            .contains("not a pod address"));
        let dup = format!(
            "workloads:\n{}{}",
            entry("a", "10.0.0.1"),
            entry("b", "::ffff:10.0.0.1")
        );
        assert!(parse(p(), &dup, None)
            .expect_err("same address")
            .to_string()
            .contains("two pods"));
    }

    #[test]
    fn empty_file_is_an_error_and_an_empty_list_means_none() {
        assert!(parse(p(), "workloads: []\n", None).expect("ok").is_empty());
        // An empty file (or one cut before its list) is an error, never "no pods".
        for partial in ["", "\n  \n", "# comment only\n", "node: node-1\n"] {
            let err = parse(p(), partial, None).expect_err(partial).to_string();
            assert!(err.contains("workloads"), "{partial:?}: {err}");
        }
    }

    #[test]
    fn syntax_error_names_the_line() {
        let bad = "node: n\nworkloads:\n  - name: [unclosed\n";
        let err = parse(p(), bad, None).expect_err("bad yaml").to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("/etc/w.yaml"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let bad = GOOD.replace("uid: 0c1d", "uidd: 0c1d");
        let err = parse(p(), &bad, None)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("uidd"), "{err}");
    }

    #[test]
    fn semantic_errors_point_at_the_entry() {
        let bad = GOOD.replace("ips: [10.244.1.6]", "ips: [10.244.1.5]");
        let err = parse(p(), &bad, None).expect_err("dup ip").to_string();
        assert!(err.contains("workloads[1]"), "{err}");
        assert!(err.contains("emojivoto/db"), "{err}");
        assert!(err.contains("line 12"), "{err}");
        assert!(err.contains("10.244.1.5"), "{err}");

        let bad = GOOD.replace("ips: [10.244.1.6]", "ips: []");
        assert!(parse(p(), &bad, None).is_err());
        let bad = GOOD.replace("netns: /var/run/netns/db", "netns: netns/db");
        assert!(parse(p(), &bad, None)
            .expect_err("relative")
            .to_string()
            .contains("absolute"));
        let bad = GOOD.replace("ips: [10.244.1.6]", "ips: [127.0.0.1]");
        assert!(parse(p(), &bad, None).is_err());
        let bad = GOOD.replace("name: db", "name: web-5d8f7");
        assert!(parse(p(), &bad, None)
            .expect_err("dup")
            .to_string()
            .contains("duplicate"));
        let bad = GOOD.replace("ips: [10.244.1.6]", "ips: [10.244.1.999]");
        assert!(parse(p(), &bad, None).is_err());
        let bad = GOOD.replace("labels: {app: web}", "trace_sampling: 1.5");
        assert!(parse(p(), &bad, None)
            .expect_err("ratio")
            .to_string()
            .contains("1.5"));
        let ok = GOOD.replace("labels: {app: web}", "trace_sampling: 0.25");
        assert_eq!(
            parse(p(), &ok, None).expect("ok")[0].trace_sampling,
            Some(0.25)
        );
        assert_eq!(
            parse(p(), GOOD, None).expect("ok")[0].context_propagation,
            ContextPropagation::Off
        );
        let ok = GOOD.replace("labels: {app: web}", "context_propagation: auto");
        assert_eq!(
            parse(p(), &ok, None).expect("ok")[0].context_propagation,
            ContextPropagation::Auto
        );
        let bad = GOOD.replace("labels: {app: web}", "context_propagation: always");
        let err = parse(p(), &bad, None).expect_err("bad value").to_string();
        assert!(err.contains("always") && err.contains("auto"), "{err}");
    }

    #[test]
    fn same_netns_through_another_path_is_the_same_target() {
        let mut a = parse(p(), GOOD, None).expect("valid").remove(0);
        let mut b = a.clone();
        b.netns = PathBuf::from("/proc/42/ns/net");
        // File specs carry no inode: a different path is a different target.
        assert!(!a.same_target(&b));
        a.netns_inode = Some(4026532000);
        b.netns_inode = Some(4026532000);
        assert!(a.same_target(&b) && b.same_target(&a));
        b.netns_inode = Some(4026532001);
        assert!(!a.same_target(&b), "netns replaced");
        b.netns_inode = a.netns_inode;
        b.ips.pop();
        assert!(!a.same_target(&b), "other fields still count");
        assert!(a.same_target(&a.clone()));
    }

    #[test]
    fn other_nodes_file_is_rejected() {
        let err = parse(p(), GOOD, Some("node-2"))
            .expect_err("wrong node")
            .to_string();
        assert!(err.contains("node-2") && err.contains("node-1"), "{err}");
    }

    #[test]
    fn watch_reports_changes_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("w.yaml");
        std::fs::write(&path, "workloads: []\n").expect("write");
        let mut w = FileWatch::new(path.clone());
        assert!(w.poll().expect("poll").is_some());
        assert!(w.poll().expect("poll").is_none());
        std::fs::write(&path, GOOD).expect("write");
        assert_eq!(w.poll().expect("poll").as_deref(), Some(GOOD));
        assert!(w.poll().expect("poll").is_none());
        std::fs::remove_file(&path).expect("rm");
        assert!(w.poll().is_err());
    }
}
