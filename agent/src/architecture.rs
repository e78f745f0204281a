//! The module dependency table in docs/ARCHITECTURE.md is the code's: this test
//! reads every module's non-test source, collects the `crate::` modules it uses, and
//! compares them with the table, so a module that starts reaching back up shows in
//! review as a change to that table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `crate::<module>` and `use crate::{a, b::c, ...}` in `src`.
fn uses(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(body) = rest.strip_prefix('{') {
            // The top-level items of the braces, up to the matching `}`.
            let mut depth = 1;
            let mut item = String::new();
            for c in body.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    out.insert(head(&item));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            out.insert(head(rest));
        }
    }
    out.remove("");
    out
}

/// The first path segment of `s` (a module name).
fn head(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .collect()
}

fn collect(dir: &Path, top: Option<&str>, graph: &mut BTreeMap<String, BTreeSet<String>>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let module = top.unwrap_or(name).to_owned();
        if path.is_dir() {
            collect(&path, Some(&module), graph);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs")
            || ["tests", "lib", "main", "architecture"].contains(&name)
        {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read module");
        let code = src.split("#[cfg(test)]").next().unwrap_or_default();
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(uses(code).into_iter().filter(|d| *d != module));
    }
}

#[test]
fn module_dependencies_are_the_documented_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut graph = BTreeMap::new();
    collect(&root.join("src"), None, &mut graph);
    let actual: Vec<String> = graph
        .iter()
        .filter(|(_, deps)| !deps.is_empty())
        .map(|(m, deps)| {
            format!(
                "{m}: {}",
                deps.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect();

    let doc = include_str!("../../docs/ARCHITECTURE.md");
    let marker = "What each module uses";
    let block = doc
        .split_once(marker)
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("docs/ARCHITECTURE.md has the dependency block");
    let documented: Vec<String> = block.lines().map(str::to_owned).collect();
    assert_eq!(
        actual.join("\n"),
        documented.join("\n"),
        "docs/ARCHITECTURE.md's module table differs from the code; if the new \
         dependency points down the table, update the block, else remove it"
    );
}
