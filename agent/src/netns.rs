//! Network namespaces: run a closure with the calling thread inside a pod's netns.
//!
//! Sockets keep the netns they were created in, so the agent enters a pod's netns
//! only for the `socket()` call (and `bind`/`listen` of listeners), on whatever
//! thread is running, and returns at once: no thread per pod. This is the model
//! istio/ztunnel uses for its in-pod mode.

use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use nix::sched::{setns, CloneFlags};

/// Errors entering or opening network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The netns file does not exist or cannot be opened.
    #[error("cannot open network namespace {path}: {source}; the pod may be gone or its netns not created yet (the agent retries)")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a network namespace.
    #[error("{path} is not a network namespace file (expected an nsfs mount such as /var/run/netns/NAME or /proc/PID/ns/net)")]
    NotNetns {
        /// The path given.
        path: PathBuf,
    },
    /// `setns` failed.
    #[error("setns into {path} failed: {source}; the agent needs CAP_SYS_ADMIN (run privileged)")]
    Enter {
        /// The namespace entered.
        path: PathBuf,
        /// Cause.
        source: nix::Error,
    },
}

/// The agent's own network namespace, captured at startup, to return to.
static HOST_NETNS: OnceLock<File> = OnceLock::new();

/// Records the calling thread's netns as the "host" netns that [`Netns::run`] returns
/// to. Call once at startup, from the main thread, before any [`Netns::run`].
pub fn init_host() -> Result<(), NetnsError> {
    let path = Path::new("/proc/thread-self/ns/net");
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    let _ = HOST_NETNS.set(file);
    Ok(())
}

/// An open handle to a network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the netns at `path` and checks it is one.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        // NSFS_MAGIC: bind-mounted netns files and /proc/PID/ns/net both live on nsfs.
        const NSFS_MAGIC: i64 = 0x6e73_6673;
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| NetnsError::Open {
            path: path.to_owned(),
            source: e.into(),
        })?;
        if st.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(NetnsError::NotNetns {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file (for attaching `sk_lookup`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` with the calling thread inside this netns, then returns the thread to
    /// the host netns. `f` must not block or await: it is for socket creation.
    ///
    /// If returning to the host netns fails the process aborts: a thread left in a
    /// pod's netns would silently put later sockets in the wrong place.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let Some(host) = HOST_NETNS.get() else {
            // Programming error: init_host() not called. Fail closed for this call.
            return Err(NetnsError::NotNetns {
                path: PathBuf::from("<host netns not initialised>"),
            });
        };
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let out = f();
        if let Err(err) = setns(host.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!("hoptrace: FATAL: cannot return to the host network namespace: {err}");
            std::process::abort();
        }
        Ok(out)
    }
}
