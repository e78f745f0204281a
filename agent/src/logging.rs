//! Log setup (`--log` / `RUST_LOG`, tracing-subscriber filter syntax).

/// kube-runtime's watcher warns on every failed attempt with a 403, and kube-client
/// logs every failed request at error level, once per retry; the agent logs each
/// distinct watch error once itself (`k8s::watch`), so kube's own lines stay out
/// unless the filter names a kube crate (`kube_runtime`, `kube_client`).
const QUIET_KUBE: &str = "kube_runtime::watcher=off,kube_client::client::builder=off";

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
    if filter.contains("kube_runtime") || filter.contains("kube_client") {
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
        assert_eq!(with_quiet_kube("info"), format!("info,{QUIET_KUBE}"));
        assert_eq!(with_quiet_kube(""), QUIET_KUBE);
        assert_eq!(with_quiet_kube("kube_client=debug"), "kube_client=debug");
        assert_eq!(
            with_quiet_kube("info,kube_runtime=debug"),
            "info,kube_runtime=debug"
        );
    }
}
