//! `cargo xtask image`: the agent's container image from `deploy/Dockerfile`, and
//! the tool checks `image` and `kind` share.

use std::{path::Path, process::Command};

use anyhow::bail;

/// The image `cargo xtask image` builds by default and `cargo xtask kind` loads
/// (`deploy/overlays/kind` rewrites the DaemonSet's image to it).
pub const DEFAULT_TAG: &str = "hoptrace:dev";

/// A command-line tool a task needs, and where to get it.
pub struct Tool {
    /// Program name on PATH.
    pub name: &'static str,
    /// Where to get it.
    pub install: &'static str,
}

/// The Docker CLI.
pub const DOCKER: Tool = Tool {
    name: "docker",
    install: "https://docs.docker.com/engine/install/",
};
/// kind.
pub const KIND: Tool = Tool {
    name: "kind",
    install: "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (v0.33.0 or newer)",
};
/// kubectl.
pub const KUBECTL: Tool = Tool {
    name: "kubectl",
    install: "https://kubernetes.io/docs/tasks/tools/",
};

/// What is missing for `task`: each tool not on PATH (`on_path`), and a Docker
/// engine that does not answer (`docker_info`, run only when `docker` is on PATH
/// and among `tools`). Empty when everything is there.
pub fn problems(
    tools: &[Tool],
    on_path: &dyn Fn(&str) -> bool,
    docker_info: &dyn Fn() -> Result<(), String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for t in tools {
        if !on_path(t.name) {
            out.push(format!(
                "`{}` is not on PATH; install it: {}",
                t.name, t.install
            ));
        } else if t.name == DOCKER.name {
            if let Err(e) = docker_info() {
                out.push(format!(
                    "the Docker engine is not reachable (`docker info`: {e}); start the Docker daemon, or point DOCKER_HOST at one"
                ));
            }
        }
    }
    out
}

/// Fails with every missing piece for `task`, before anything is done.
pub fn require(task: &str, tools: &[Tool]) -> anyhow::Result<()> {
    let found = problems(tools, &|name| which::which(name).is_ok(), &docker_info);
    if found.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = tools.iter().map(|t| t.name).collect();
    bail!(
        "`cargo xtask {task}` needs {} (see deploy/README.md); nothing was done:\n  - {}",
        names.join(", "),
        found.join("\n  - ")
    )
}

/// `docker info`: Ok when the engine answers, else the last line of its error.
fn docker_info() -> Result<(), String> {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed")
        .trim()
        .to_string())
}

/// `docker build -f deploy/Dockerfile -t <tag> <root>` (BuildKit).
pub fn build(root: &Path, tag: &str) -> anyhow::Result<()> {
    println!("xtask image: building {tag} from deploy/Dockerfile (the first build compiles bpf-linker and the agent: several minutes)");
    crate::run(
        Command::new("docker")
            .current_dir(root)
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "-f", "deploy/Dockerfile", "-t", tag, "."]),
    )?;
    println!("xtask image: built {tag}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_missing_piece() {
        let none = |_: &str| false;
        let engine_down = || Err("Cannot connect to the Docker daemon".to_string());
        let found = problems(&[DOCKER, KIND, KUBECTL], &none, &engine_down);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[1].contains("`kind` is not on PATH"), "{found:?}");

        let all = |_: &str| true;
        let found = problems(&[DOCKER, KIND, KUBECTL], &all, &engine_down);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("Docker engine is not reachable")
                && found[0].contains("Cannot connect"),
            "{found:?}"
        );

        let engine_up = || Ok(());
        assert!(problems(&[DOCKER, KIND, KUBECTL], &all, &engine_up).is_empty());
        // `docker info` only runs when docker is needed and present.
        let boom = || -> Result<(), String> { panic!("must not run docker info") };
        assert!(problems(&[KUBECTL], &all, &boom).is_empty());
        assert_eq!(problems(&[DOCKER], &none, &boom).len(), 1);
    }
}
