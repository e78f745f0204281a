//! Log setup (`--log` / `RUST_LOG`, tracing-subscriber filter syntax).

/// kube-runtime's watcher warns on every failed attempt with a 403, once per retry;
/// the agent logs each distinct watch error once itself (`k8s::watch`), so kube's
/// lines are kept to errors unless the filter names kube-runtime.
const QUIET_KUBE: &str = "kube_runtime::watcher=error";

/// Installs the global subscriber, writing to stderr.
pub fn init(filter: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = tracing_subscriber::EnvFilter::try_new(with_quiet_kube(filter))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

/// `filter` plus [`QUIET_KUBE`], unless it says something about kube-runtime.
fn with_quiet_kube(filter: &str) -> String {
    if filter.contains("kube_runtime") {
        filter.to_string()
    } else if filter.trim().is_empty() {
        QUIET_KUBE.to_string()
    } else {
        format!("{filter},{QUIET_KUBE}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_runtime_warnings_stay_out_unless_asked_for() {
        assert_eq!(with_quiet_kube("info"), "info,kube_runtime::watcher=error");
        assert_eq!(with_quiet_kube(""), "kube_runtime::watcher=error");
        assert_eq!(
            with_quiet_kube("info,kube_runtime=debug"),
            "info,kube_runtime=debug"
        );
    }
}
