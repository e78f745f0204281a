//! Application TLS in lab pods (`tests/apps/tls_echo.py`): an echo server and a
//! client that checks the echo byte for byte, both on Python's `ssl` module, with
//! a certificate from [`TestPki`]. The agent must pass such connections through
//! untouched and untraced.

use crate::otlp::TestPki;
use crate::pyapp::{apps_dir, python};
use crate::{Pod, PodProcess};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Upper bound for one client run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// What `tls_echo.py client` reported.
#[derive(Clone, Debug, Deserialize)]
pub struct TlsEchoReport {
    /// The echo matched what was sent, byte for byte.
    pub ok: bool,
    /// Bytes echoed back.
    pub bytes: u64,
    /// SHA-256 (hex) of what was sent.
    pub sha256: String,
    /// Negotiated TLS version (e.g. `TLSv1.3`).
    pub tls_version: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
}

fn script() -> std::path::PathBuf {
    apps_dir().join("tls_echo.py")
}

/// Starts the TLS echo server in `pod` on `0.0.0.0:<port>` with the server
/// certificate of `pki` (valid for `localhost`); waits until it listens.
pub fn server(pod: &Pod, port: u16, pki: &TestPki) -> Result<PodProcess> {
    let mut cmd = Command::new(python());
    cmd.arg("-u")
        .arg(script())
        .arg("server")
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .arg("--cert")
        .arg(&pki.server_cert_file)
        .arg("--key")
        .arg(&pki.server_key_file)
        .stdout(std::process::Stdio::null());
    let mut process = pod.spawn(cmd)?;
    process
        .wait_listening(port, LISTEN_TIMEOUT)
        .with_context(|| format!("tls_echo.py server in pod {}", pod.name))?;
    Ok(process)
}

/// Runs the TLS echo client in `pod` against `addr`, trusting `ca_file`, sending
/// a traced-looking HTTP request plus `bytes` random bytes inside TLS.
pub fn client(pod: &Pod, addr: SocketAddr, ca_file: &Path, bytes: usize) -> Result<TlsEchoReport> {
    let mut cmd = Command::new(python());
    cmd.arg("-u")
        .arg(script())
        .arg("client")
        .args(["--addr", &addr.to_string()])
        .arg("--ca")
        .arg(ca_file)
        .args(["--bytes", &bytes.to_string()]);
    let out = pod.run(cmd, CLIENT_TIMEOUT)?;
    let line = out.stdout.lines().find(|l| l.starts_with('{'));
    let Some(line) = line else {
        bail!(
            "tls_echo.py client in pod {} printed no report ({}): {}",
            pod.name,
            out.status,
            out.stderr.trim()
        );
    };
    serde_json::from_str(line).with_context(|| format!("bad tls_echo.py report {line}"))
}
