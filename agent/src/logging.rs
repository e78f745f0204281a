//! Log setup (`--log` / `RUST_LOG`, tracing-subscriber filter syntax).

/// Installs the global subscriber, writing to stderr.
pub fn init(filter: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
