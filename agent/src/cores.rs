//! The data path's threads: one single-threaded tokio runtime per core, each with its
//! own event loop (epoll), timers and tasks, as an nginx worker has.
//!
//! Why not tokio's multi-threaded runtime: its workers share one event loop, so a
//! worker that takes readiness events wakes a sibling through a futex to run the woken
//! tasks, and tasks move between workers by stealing. The bench's profile put most of
//! the agent's CPU in the kernel's scheduler (switching and waking threads), and one
//! worker cost less per request than two (docs/BENCH.md). Here a connection lives on
//! one core from accept to close: its sockets, its tasks and its pooled upstream
//! connections ([`current`] is part of the pool key) stay on that thread.
//!
//! Accept loops run on the cores too (spread by enrollment); each accepted connection
//! goes to the core with the fewest connections ([`Cores::pick`]), the accepting core
//! within [`HAND_OVER_AT`] connections of the least busy, so a busy pod's
//! connections spread over the node's cores. The control
//! plane (workload source, enrollment, admin, span export) runs on the main thread's
//! runtime, apart from the data path.

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use tokio::{runtime::Handle, sync::oneshot};

thread_local! {
    /// The index of the core this thread runs, `None` off the data path.
    static CORE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The core the calling thread runs (`None` on the control plane or in tests).
pub fn current() -> Option<usize> {
    CORE.with(Cell::get)
}

/// A connection stays on the core that accepted it unless that core runs this many
/// more connections than the least busy one: a hand-over costs the socket's removal
/// from one event loop, its addition to another and a wake-up of that thread.
pub const HAND_OVER_AT: usize = 2;

/// One data path thread.
struct Core {
    handle: Handle,
    /// Connections running on this core.
    connections: AtomicUsize,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The node's data path cores; dropping it stops them (their tasks are dropped) and
/// joins the threads.
pub struct Cores {
    cores: Vec<Core>,
}

impl std::fmt::Debug for Cores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cores")
            .field("n", &self.cores.len())
            .finish()
    }
}

/// Counts a connection on its core for as long as it is held.
#[derive(Debug)]
pub struct OnCore {
    cores: Arc<Cores>,
    index: usize,
}

impl Drop for OnCore {
    fn drop(&mut self) {
        self.cores.cores[self.index]
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cores {
    /// Starts `n` cores (`0`: one per CPU the agent may run on), each on its own
    /// thread named `hoptrace-core-<i>`; with `pin`, core `i` runs only on the `i`-th
    /// of the CPUs the agent may run on (modulo their number). A thread that cannot be
    /// pinned runs unpinned (logged), as without `pin`.
    pub fn start(n: usize, pin: bool) -> std::io::Result<Arc<Self>> {
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            n
        };
        let cpus = if pin { allowed_cpus() } else { Vec::new() };
        // On error, the cores started so far stop when `this` drops.
        let mut this = Self {
            cores: Vec::with_capacity(n),
        };
        for index in 0..n {
            let rt = runtime()?;
            let handle = rt.handle().clone();
            handle.spawn(wake_up_regularly());
            let (stop, stopped) = oneshot::channel::<()>();
            let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("hoptrace-core-{index}"))
                .spawn(move || {
                    CORE.with(|c| c.set(Some(index)));
                    if let Some(cpu) = cpu {
                        pin_to(index, cpu);
                    }
                    // Returns when the sender fires or is dropped (`Cores` dropped).
                    let _ = rt.block_on(stopped);
                })?;
            this.cores.push(Core {
                handle,
                connections: AtomicUsize::new(0),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Arc::new(this))
    }

    /// How many cores there are.
    pub fn len(&self) -> usize {
        self.cores.len()
    }

    /// Never true: at least one core runs.
    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// The runtime of core `index` (modulo the number of cores).
    pub fn handle(&self, index: usize) -> &Handle {
        &self.cores[index % self.cores.len()].handle
    }

    /// The core a new connection goes to: the calling core, unless it runs
    /// [`HAND_OVER_AT`] connections more than the least busy one, which then takes it.
    /// The connection is counted there until the returned guard drops.
    pub fn pick(self: &Arc<Self>) -> (usize, OnCore) {
        let load = |i: usize| self.cores[i].connections.load(Ordering::Relaxed);
        let least = (0..self.cores.len())
            .min_by_key(|&i| load(i))
            .unwrap_or_default();
        let best = match current().filter(|&i| i < self.cores.len()) {
            Some(here) if load(here) < load(least) + HAND_OVER_AT => here,
            _ => least,
        };
        self.cores[best].connections.fetch_add(1, Ordering::Relaxed);
        (
            best,
            OnCore {
                cores: self.clone(),
                index: best,
            },
        )
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        for core in &mut self.cores {
            if let Some(stop) = core.stop.take() {
                let _ = stop.send(());
            }
        }
        let me = std::thread::current().id();
        for core in &mut self.cores {
            if let Some(t) = core.thread.take() {
                // The last reference can be dropped on a core itself (a task holding
                // an `OnCore`): that thread cannot join itself, it ends on its own.
                if t.thread().id() != me {
                    let _ = t.join();
                }
            }
        }
    }
}

/// The CPUs this process may run on, in order (empty when they cannot be read).
fn allowed_cpus() -> Vec<usize> {
    use nix::{sched::CpuSet, unistd::Pid};
    match nix::sched::sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(e) => {
            tracing::warn!("--pin-cores: reading the CPUs the agent may run on: {e}; the data path threads run unpinned");
            Vec::new()
        }
    }
}

/// Pins the calling thread (core `index`) to `cpu`; on failure it stays unpinned.
fn pin_to(index: usize, cpu: usize) {
    use nix::{sched::CpuSet, unistd::Pid};
    let mut set = CpuSet::new();
    // Pid 0: the calling thread.
    let pinned = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(Pid::from_raw(0), &set));
    match pinned {
        Ok(()) => tracing::debug!(core = index, cpu, "data path thread pinned"),
        Err(e) => tracing::warn!(
            core = index,
            cpu,
            "--pin-cores: pinning a data path thread: {e}; it runs unpinned"
        ),
    }
}

/// A core with nothing to do sleeps in `epoll_wait` with no timer armed, and its
/// heap is collected only when it parks: this wakes it once a second, so a core that
/// went quiet after a load gives its freed memory back within two seconds (its next
/// park after a sleep that long is a forced collection, `park.rs`).
async fn wake_up_regularly() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// A single-threaded runtime of the agent (a core or the control plane), with the
/// heap collection at park ([`crate::park`]).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::park::on_park)
        .on_thread_unpark(crate::park::on_unpark)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs the calling thread may run on.
    fn my_cpus() -> Vec<usize> {
        allowed_cpus()
    }

    #[test]
    fn pinned_cores_run_on_one_cpu_each() {
        let all = my_cpus();
        assert!(!all.is_empty());
        let cores = Cores::start(2, true).expect("cores");
        for i in 0..2 {
            let (tx, rx) = std::sync::mpsc::channel();
            cores.handle(i).spawn(async move {
                let _ = tx.send(my_cpus());
            });
            let on = rx.recv().expect("ran on the core");
            assert_eq!(on, vec![all[i % all.len()]], "core {i}");
        }
        // Unpinned, a core may run wherever the process may.
        let cores = Cores::start(1, false).expect("cores");
        let (tx, rx) = std::sync::mpsc::channel();
        cores.handle(0).spawn(async move {
            let _ = tx.send(my_cpus());
        });
        assert_eq!(rx.recv().expect("ran"), all);
    }

    #[test]
    fn connections_spread_and_stay_on_their_core() {
        let cores = Cores::start(2, false).expect("cores");
        assert_eq!(cores.len(), 2);
        assert_eq!(current(), None);
        // Off the cores: always the least busy, core 0 on a tie.
        let (a, ga) = cores.pick();
        let (b, gb) = cores.pick();
        assert_eq!((a, b), (0, 1));
        drop(ga);
        let (c, gc) = cores.pick();
        assert_eq!(c, 0);
        // On core 1: it keeps its connections until it runs HAND_OVER_AT more than
        // core 0 (one each now), then core 0 takes the next.
        let on_core_1 = |cores: &Arc<Cores>| {
            let cores2 = cores.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            cores.handle(1).spawn(async move {
                let picked = cores2.pick();
                let _ = tx.send((current(), picked));
            });
            rx.recv().expect("ran on core 1")
        };
        let mut held = Vec::new();
        for _ in 0..HAND_OVER_AT {
            let (on, (i, g)) = on_core_1(&cores);
            assert_eq!((on, i), (Some(1), 1));
            held.push(g);
        }
        let (_, (i, g)) = on_core_1(&cores);
        assert_eq!(i, 0, "handed over to the least busy core");
        held.push(g);
        drop((gb, gc, held));
        for core in &cores.cores {
            assert_eq!(core.connections.load(Ordering::Relaxed), 0);
        }
    }
}
