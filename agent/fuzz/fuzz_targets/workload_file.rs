//! `hoptrace::workloads::parse` on arbitrary UTF-8 (the `--workloads-file` contents).
//!
//! Parsed twice: as node `node-1` and without a node name. Asserted:
//!
//! - no panic (nor hang: `cargo xtask fuzz` runs with a per-input timeout), and the
//!   error's message can be formatted;
//! - every workload of an `Ok` result satisfies what `parse` validates: non-empty
//!   `name` and `namespace`, each `namespace/name` once, a non-empty `ips` list,
//!   no loopback, unspecified or multicast address, each address in one workload
//!   only, `trace_sampling` within 0.0..=1.0, absolute `cgroup` and `netns` for this
//!   node's pods (an entry with another `node` needs neither), and no
//!   `netns_inode` (not part of the file format);
//! - the node name only matters through `node:` (the file's or an entry's): with
//!   `node-1` the result is the result without a node except that entries naming
//!   `node-1` are this node's (local), or a `WrongNode` error naming `node-1`, or an
//!   `Invalid` error for an entry that names `node-1` in the result without a node
//!   (local, it must carry an absolute cgroup and netns).
#![no_main]

use std::{collections::HashSet, path::Path};

use hoptrace::workloads::{parse, Workload, WorkloadError};
use libfuzzer_sys::fuzz_target;

fn check(ws: &[Workload]) {
    let mut keys = HashSet::new();
    let mut ips = HashSet::new();
    for w in ws {
        assert!(!w.name.is_empty() && !w.namespace.is_empty(), "{w:?}");
        assert!(keys.insert(w.key()), "duplicate {}", w.key());
        assert!(!w.ips.is_empty(), "{w:?}");
        for ip in &w.ips {
            assert!(
                !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast(),
                "{ip} accepted as a pod address"
            );
            assert!(ips.insert(*ip), "{ip} accepted for two pods");
        }
        if let Some(r) = w.trace_sampling {
            assert!((0.0..=1.0).contains(&r), "trace_sampling {r}");
        }
        // Only this node's pods are enrolled: an entry for another node's pod (`node:`)
        // names its addresses and needs no cgroup or netns.
        if w.is_local() {
            assert!(w.cgroup.is_absolute() && w.netns.is_absolute(), "{w:?}");
        }
        assert_eq!(w.netns_inode, None);
    }
}

fuzz_target!(|text: &str| {
    let path = Path::new("fuzz.yaml");
    let with_node = parse(path, text, Some("node-1"));
    let without = parse(path, text, None);
    for r in [&with_node, &without] {
        match r {
            Ok(ws) => check(ws),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("fuzz.yaml"), "{msg}");
            }
        }
    }
    // Without a node name, an entry naming `node-1` is a peer; with it, that entry is local.
    match (&with_node, &without) {
        (Ok(a), Ok(b)) => {
            let mut expected = b.clone();
            for w in &mut expected {
                if w.node.as_deref() == Some("node-1") {
                    w.node = None;
                }
            }
            assert_eq!(a, &expected);
        }
        (Ok(_), Err(e)) => panic!("accepted for node-1, rejected without a node: {e}"),
        (
            Err(WorkloadError::WrongNode {
                node, file_node, ..
            }),
            _,
        ) => {
            assert_eq!(node, "node-1");
            assert_ne!(file_node, "node-1");
        }
        (Err(e @ WorkloadError::Invalid { index, .. }), Ok(b)) => assert!(
            b.get(*index).and_then(|w| w.node.as_deref()) == Some("node-1"),
            "rejected for node-1, accepted without a node, the entry does not name node-1: {e}"
        ),
        (Err(e), Ok(_)) => {
            panic!("rejected for node-1 (not WrongNode or Invalid), accepted without a node: {e}")
        }
        (Err(_), Err(_)) => {}
    }
});
