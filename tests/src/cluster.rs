//! A real Kubernetes control plane for the discovery tests: Debian's etcd 3.4 and
//! kube-apiserver v1.20.2 (built from Debian's source by `cargo xtask kube-apiserver`,
//! which `cargo xtask setup` runs), on loopback, over HTTPS, with RBAC and
//! service-account tokens.
//!
//! [`ControlPlane::start`] makes the certificates ([`certs`]), starts etcd and the API
//! server on free ports with their data and logs in a directory of the test, waits
//! until it serves, applies the project's own `deploy/base` namespace, service account
//! and RBAC, mints a token for the `hoptrace/hoptrace` service account with the
//! TokenRequest API (no controller-manager runs, so the `ServiceAccount` admission
//! plugin is off and no token secrets exist) and writes a kubeconfig with it:
//! the agent gets exactly the DaemonSet's permissions. [`ControlPlane::admin`] is a
//! `system:masters` client that also plays the kubelet's part (pod status,
//! confirming a graceful deletion). Processes are killed on drop (and die with the
//! test process: `PR_SET_PDEATHSIG`).
//!
//! [`ControlPlane::start_with`] serves on another address and with the `ServiceAccount`
//! admission plugin on, for a real node (the kubelet and pods reach it over a bridge,
//! a controller-manager mints token secrets): [`crate::node`].
//!
//! The binary: `$HOPTRACE_KUBE_APISERVER`, else where `cargo xtask kube-apiserver`
//! caches it, `${XDG_CACHE_HOME:-$HOME/.cache}/hoptrace/kube/kube-apiserver-v1.20.2`.
//! Missing, the start fails and says how to build it (tests are never skipped for it).

pub mod admin;
pub mod certs;

pub use admin::Admin;
pub use certs::Certs;

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::{free_port, free_port_on};

/// The Kubernetes version of the API server (`cargo xtask kube-apiserver` builds it).
pub const KUBE_VERSION: &str = "v1.20.2";
/// How long the API server may take to serve after its start.
const START: Duration = Duration::from_secs(60);

/// The kube-apiserver binary the tests use.
pub fn apiserver_binary() -> Result<PathBuf> {
    let bin = match std::env::var_os("HOPTRACE_KUBE_APISERVER") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
                Some(dir) => PathBuf::from(dir),
                None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                    .join(".cache"),
            };
            cache
                .join("hoptrace/kube")
                .join(format!("kube-apiserver-{KUBE_VERSION}"))
        }
    };
    if !bin.exists() {
        bail!(
            "no kube-apiserver at {}: run `cargo xtask kube-apiserver` (or `cargo xtask setup`), \
             or set HOPTRACE_KUBE_APISERVER",
            bin.display()
        );
    }
    Ok(bin)
}

/// A child process killed on drop, dying with the test process.
pub(crate) struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with its output in `log`.
    pub(crate) fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc { name, child })
    }

    /// Fails with the end of `log` when the process has exited.
    pub(crate) fn check_running(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

impl Proc {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where and how the API server serves ([`ControlPlane::start_with`]).
#[derive(Clone, Debug)]
pub struct Options {
    /// The address it listens on and advertises (default `127.0.0.1`).
    pub addr: IpAddr,
    /// The `ServiceAccount` admission plugin on (pods get a token volume; needs a
    /// controller-manager minting token secrets). Default off: the tests mint tokens
    /// with the TokenRequest API.
    pub service_accounts: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            service_accounts: false,
        }
    }
}

/// How many times [`ControlPlane::start_with`] starts the control plane.
const PORT_ATTEMPTS: u32 = 3;

/// Runs `start(attempt)` (attempts numbered from 1) until it succeeds, fails for
/// another reason than a port taken ("address already in use" anywhere in the error's
/// chain), or `attempts` have been made; returns the last result.
fn again_when_port_taken<T>(attempts: u32, mut start: impl FnMut(u32) -> Result<T>) -> Result<T> {
    let mut attempt = 1;
    loop {
        match start(attempt) {
            Err(e) if attempt < attempts && format!("{e:#}").contains("address already in use") => {
                eprintln!("control plane attempt {attempt}: a port was taken ({e:#}); again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// etcd and kube-apiserver on loopback. See the module docs.
pub struct ControlPlane {
    dir: PathBuf,
    opts: Options,
    admin_kubeconfig: PathBuf,
    certs: Certs,
    etcd_port: u16,
    port: u16,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    starts: u32,
    agent_kubeconfig: PathBuf,
    admin: Admin,
}

impl ControlPlane {
    /// Starts etcd and the API server with state under `dir`, applies `deploy/base`
    /// and writes the agent's kubeconfig.
    pub fn start(dir: &Path) -> Result<ControlPlane> {
        Self::start_with(dir, &Options::default())
    }

    /// [`ControlPlane::start`] with other [`Options`]. A port picked free can be bound
    /// by a parallel test's server before ours binds it ("address already in use"):
    /// then it starts again on new ports, in a fresh directory, up to three times.
    pub fn start_with(dir: &Path, opts: &Options) -> Result<ControlPlane> {
        again_when_port_taken(PORT_ATTEMPTS, |attempt| {
            let sub = if attempt == 1 {
                dir.join("kube")
            } else {
                dir.join(format!("kube-{attempt}"))
            };
            Self::start_in(sub, opts)
        })
    }

    fn start_in(dir: PathBuf, opts: &Options) -> Result<ControlPlane> {
        let bin = apiserver_binary()?;
        std::fs::create_dir_all(&dir)?;
        let extra: Vec<IpAddr> = Some(opts.addr)
            .filter(|a| !a.is_loopback())
            .into_iter()
            .collect();
        let certs = Certs::generate(&dir.join("pki"), &extra)?;
        let port = free_port_on(opts.addr)?;
        let server = SocketAddr::new(opts.addr, port);
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(&admin_kubeconfig, server, &certs, None)?;
        // Builds the client only: nothing is connected before the server is up.
        let admin = Admin::connect(&admin_kubeconfig)?;
        let mut cp = ControlPlane {
            agent_kubeconfig: dir.join("agent.kubeconfig"),
            dir,
            opts: opts.clone(),
            admin_kubeconfig,
            certs,
            etcd_port: free_port()?,
            port,
            etcd: None,
            apiserver: None,
            starts: 0,
            admin,
        };
        cp.start_etcd()?;
        cp.start_apiserver_with(&bin)?;
        cp.admin.apply_deploy_base()?;
        let token = cp.admin.service_account_token("hoptrace", "hoptrace")?;
        write_kubeconfig(&cp.agent_kubeconfig, server, &cp.certs, Some(&token))?;
        Ok(cp)
    }

    /// The admin client (`system:masters`).
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// The agent's kubeconfig: the `hoptrace/hoptrace` service account's token.
    pub fn agent_kubeconfig(&self) -> &Path {
        &self.agent_kubeconfig
    }

    /// The API server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.opts.addr, self.port)
    }

    /// The admin's kubeconfig (`system:masters`, a client certificate).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The keys and certificates.
    pub fn certs(&self) -> &Certs {
        &self.certs
    }

    fn start_etcd(&mut self) -> Result<()> {
        let peer = free_port()?;
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "warn", "--logger", "zap"]);
        let log = self.dir.join("etcd.log");
        let mut etcd = Proc::spawn("etcd", cmd, &log)
            .context("etcd (Debian: etcd-server; `cargo xtask setup` installs it)")?;
        let deadline = Instant::now() + START;
        while etcd_post(self.etcd_port, "/v3/kv/range", r#"{"key":"AA=="}"#).is_err() {
            etcd.check_running(&log)?;
            if Instant::now() > deadline {
                bail!("etcd did not serve on {client} within {START:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.etcd = Some(etcd);
        Ok(())
    }

    fn start_apiserver_with(&mut self, bin: &Path) -> Result<()> {
        let c = &self.certs;
        let mut cmd = Command::new(bin);
        if !self.opts.service_accounts {
            // No controller-manager mints service-account token secrets: tokens
            // come from the TokenRequest API, and pods get no token volume.
            cmd.arg("--disable-admission-plugins=ServiceAccount");
        }
        cmd.args([
            &format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            &format!("--bind-address={}", self.opts.addr),
            &format!("--advertise-address={}", self.opts.addr),
            &format!("--secure-port={}", self.port),
            "--insecure-port=0",
            "--authorization-mode=RBAC",
            // Logs and exec go to the kubelet by the node's address, not its name.
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ])
        .arg(format!(
            "--cert-dir={}",
            self.dir.join("apiserver-certs").display()
        ))
        .arg(format!("--tls-cert-file={}", c.serving_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            c.serving_key.display()
        ))
        .arg(format!("--client-ca-file={}", c.ca.display()))
        .arg(format!("--service-account-key-file={}", c.sa_pub.display()))
        .arg(format!(
            "--service-account-signing-key-file={}",
            c.sa_key.display()
        ));
        self.starts += 1;
        let log = self.dir.join(format!("kube-apiserver.{}.log", self.starts));
        let mut proc = Proc::spawn("kube-apiserver", cmd, &log)?;
        let deadline = Instant::now() + START;
        loop {
            proc.check_running(&log)?;
            if self.admin.ready() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver did not become ready within {START:?}: see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.apiserver = Some(proc);
        Ok(())
    }

    /// Stops the API server (SIGKILL); etcd keeps its state.
    pub fn stop_apiserver(&mut self) {
        self.apiserver = None;
    }

    /// Starts the API server again (same port, certificates and etcd).
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            bail!("the API server is running");
        }
        let bin = apiserver_binary()?;
        self.start_apiserver_with(&bin)
    }

    /// While the API server is stopped: moves etcd's revision on and compacts its
    /// history, so a watch resumed from a resource version seen before gets
    /// `410 Gone` from the restarted API server and the client must list again.
    pub fn expire_history(&self) -> Result<()> {
        if self.apiserver.is_some() {
            bail!("stop the API server first");
        }
        let mut rev = 0u64;
        for _ in 0..5 {
            // key "hoptrace-test", value "x" (base64, as etcd's JSON gateway wants)
            let body = etcd_post(
                self.etcd_port,
                "/v3/kv/put",
                r#"{"key":"aG9wdHJhY2UtdGVzdA==","value":"eA=="}"#,
            )?;
            rev = revision(&body)?;
        }
        etcd_post(
            self.etcd_port,
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{rev}","physical":true}}"#),
        )?;
        Ok(())
    }
}

/// Writes a kubeconfig for the API server at `server`: the admin's client certificate,
/// or `token`.
fn write_kubeconfig(
    path: &Path,
    server: SocketAddr,
    certs: &Certs,
    token: Option<&str>,
) -> Result<()> {
    let user = match token {
        Some(t) => format!("    token: {t}\n"),
        None => format!(
            "    client-certificate: {}\n    client-key: {}\n",
            certs.admin_cert.display(),
            certs.admin_key.display()
        ),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{server}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n{user}contexts:\n- name: test\n  context:\n    cluster: test\n    user: u\ncurrent-context: test\n",
        certs.ca.display(),
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `header.revision` of an etcd JSON gateway answer.
fn revision(body: &str) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_str(body).context("etcd answer")?;
    v["header"]["revision"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no header.revision in {body}"))
}

/// One POST to etcd's JSON gateway (plain HTTP/1.0 on loopback); the body on 200.
fn etcd_post(port: u16, path: &str, body: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("etcd {path}: {head}");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_starts_again_and_other_errors_do_not() {
        // Taken once (the cause deep in the chain, as kube-apiserver's exit reports it),
        // then up: two attempts, the second's value.
        let mut seen = Vec::new();
        let r = again_when_port_taken(3, |a| {
            seen.push(a);
            if a == 1 {
                Err(
                    anyhow::anyhow!("listen tcp 127.0.0.1:2380: bind: address already in use")
                        .context("kube-apiserver exited"),
                )
            } else {
                Ok(a)
            }
        });
        assert_eq!(r.expect("second attempt"), 2);
        assert_eq!(seen, [1, 2]);

        // Another error: no second attempt.
        let mut calls = 0;
        let r: Result<()> = again_when_port_taken(3, |_| {
            calls += 1;
            bail!("etcd: permission denied")
        });
        assert!(format!("{:#}", r.expect_err("fails")).contains("permission denied"));
        assert_eq!(calls, 1);

        // Taken every time: three attempts, then the last error.
        let mut calls = 0;
        let r: Result<()> = again_when_port_taken(3, |a| {
            calls += 1;
            bail!("attempt {a}: bind: address already in use")
        });
        assert!(format!("{:#}", r.expect_err("gives up")).starts_with("attempt 3:"));
        assert_eq!(calls, 3);
    }
}
