//! Context propagation by the agent (docs/TRACING.md, "Context propagation by the
//! agent"): for a pod that opted in, an outbound request that carries no trace context
//! is linked to the inbound request that caused it, and leaves with that request's
//! context, as if the app had forwarded it.
//!
//! The inbound leg registers each request it hands to the app ([`Propagation::inbound`],
//! a guard that unregisters when the response is over); the outbound leg asks
//! [`Propagation::link`]. The answer comes from [`decide`], a pure function of what is
//! in flight and what the kernel noted (`ebpf::threads`): exactly one inbound request in
//! flight, or exactly one read by the thread that wrote the outbound request; anything
//! else is ambiguous and nothing is added. Never a guess.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue};

use crate::{
    ebpf::{AppSocket, Datapath, ThreadId, ThreadProbes},
    metrics::PropagationMetrics,
    trace::context::{self, TRACEPARENT, TRACEPARENT_LEN},
};

/// Threads remembered as serving several requests at once (event loops); past this
/// many the set starts again.
const MAX_MULTIPLEXING: usize = 4096;
/// The most inbound requests in flight for which the by-thread rule looks up the
/// kernel's facts (two map reads per request and decision, under the pod's lock);
/// with more in flight a context-less outbound request is counted ambiguous, so one
/// pod's burst cannot make each of its calls cost the node's agent unbounded work.
pub const MAX_THREAD_RULE_IN_FLIGHT: usize = 256;
/// How long a thread seen serving several requests at once is not trusted by the
/// by-thread rule (seen again, the time starts again).
const MULTIPLEXING_TTL: Duration = Duration::from_secs(10);

/// What the app's end of an inbound request's connection is known as.
#[derive(Debug, Clone, Copy)]
enum AppEnd {
    /// Not known (HTTP/2, or the request went through hyper's client): the request
    /// counts for exclusivity only, and makes the by-thread rule ambiguous.
    Unknown,
    /// Not sent yet.
    Pending,
    /// The agent's connection `from` → `to`, written at `sent_ns` (CLOCK_MONOTONIC);
    /// the app's socket once found.
    Conn {
        from: SocketAddr,
        to: SocketAddr,
        sent_ns: u64,
        socket: Option<AppSocket>,
    },
}

/// The trace-context fields an inbound request was forwarded to the app with.
#[derive(Debug, Clone)]
pub enum Forwarded {
    /// Any set of fields.
    Fields(Arc<HeaderMap>),
    /// One `traceparent` field with this value (the common request, rewritten in
    /// place by the lean path): no map is built unless an outbound request is linked
    /// to it.
    Traceparent([u8; TRACEPARENT_LEN]),
}

impl Forwarded {
    /// `fields` as forwarded; `None` when there are none.
    pub fn fields(fields: HeaderMap) -> Option<Forwarded> {
        (!fields.is_empty()).then(|| Forwarded::Fields(Arc::new(fields)))
    }

    /// The fields as a map, for the outbound request that takes them.
    fn to_map(&self) -> Option<Arc<HeaderMap>> {
        match self {
            Forwarded::Fields(map) => Some(map.clone()),
            Forwarded::Traceparent(value) => {
                // Validated when it was parsed (ASCII hex and dashes).
                let value = HeaderValue::from_bytes(value).ok()?;
                let mut map = HeaderMap::with_capacity(1);
                map.insert(TRACEPARENT, value);
                Some(Arc::new(map))
            }
        }
    }
}

/// One inbound request in flight to the app.
struct Entry {
    id: u64,
    /// The trace fields as forwarded to the app (`None`: it carried no context).
    context: Option<Forwarded>,
    app: AppEnd,
}

#[derive(Default)]
struct Inflight {
    next_id: u64,
    entries: Vec<Entry>,
    /// Threads seen serving several requests at once, and when.
    multiplexing: HashMap<ThreadId, Instant>,
}

/// One pod's propagation state.
pub struct Propagation {
    datapath: Arc<Datapath>,
    inflight: Mutex<Inflight>,
    metrics: PropagationMetrics,
    /// Keeps the thread programs attached while the pod is enrolled (`None`: not
    /// available on this kernel; exclusivity alone).
    _probes: Option<ThreadProbes>,
}

impl std::fmt::Debug for Propagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Propagation").finish_non_exhaustive()
    }
}

/// How an outbound request was linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Send it with these trace fields (the inbound request's, as forwarded).
    Linked(Arc<HeaderMap>),
    /// Leave it untouched.
    Untouched,
}

/// Holds one inbound request's registration; unregisters on drop (response over,
/// failed or abandoned).
pub struct InboundGuard {
    prop: Arc<Propagation>,
    id: u64,
}

impl std::fmt::Debug for InboundGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundGuard")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for InboundGuard {
    fn drop(&mut self) {
        let mut g = self.prop.lock();
        if let Some(i) = g.entries.iter().position(|e| e.id == self.id) {
            g.entries.swap_remove(i);
        }
    }
}

impl InboundGuard {
    /// The request is about to be written on the agent's connection `from` → `to` (its
    /// app end is found by this 4-tuple). Call right before writing: a read the kernel
    /// notes earlier than this was not a read of this request.
    pub fn sending_on(&self, from: SocketAddr, to: SocketAddr) {
        let sent_ns = monotonic_ns();
        let mut g = self.prop.lock();
        if let Some(e) = g.entries.iter_mut().find(|e| e.id == self.id) {
            e.app = AppEnd::Conn {
                from,
                to,
                sent_ns,
                socket: None,
            };
        }
    }
}

impl Propagation {
    /// The state of a pod that propagates; `probes` keeps the thread programs attached.
    pub fn new(
        datapath: Arc<Datapath>,
        metrics: PropagationMetrics,
        probes: Option<ThreadProbes>,
    ) -> Self {
        Self {
            datapath,
            inflight: Mutex::new(Inflight::default()),
            metrics,
            _probes: probes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an inbound request about to be handed to the app, with the trace
    /// fields it is forwarded with. `lean`: the caller will say which connection it is
    /// written on ([`InboundGuard::sending_on`]); else its app end stays unknown.
    pub fn inbound(self: &Arc<Self>, context: Option<Forwarded>, lean: bool) -> InboundGuard {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.entries.push(Entry {
            id,
            context,
            app: if lean {
                AppEnd::Pending
            } else {
                AppEnd::Unknown
            },
        });
        drop(g);
        InboundGuard {
            prop: self.clone(),
            id,
        }
    }

    /// Links an outbound request without trace context, written by the app on
    /// `socket`; `h1`: an HTTP/1 request (on HTTP/2 the writing thread says nothing
    /// about the request). Counts the result.
    pub fn link(&self, socket: Option<AppSocket>, h1: bool) -> Link {
        let writer = socket
            .filter(|_| h1)
            .and_then(|s| self.datapath.last_use(s))
            .map(|u| u.thread);
        let mut g = self.lock();
        let by_thread = (2..=MAX_THREAD_RULE_IN_FLIGHT).contains(&g.entries.len());
        let candidates: Vec<Reader> = if by_thread && writer.is_some() {
            let datapath = &self.datapath;
            g.entries.iter_mut().map(|e| reader(datapath, e)).collect()
        } else {
            vec![Reader::Unknown; g.entries.len()]
        };
        let multiplexing = writer.is_some_and(|w| {
            g.multiplexing
                .get(&w)
                .is_some_and(|seen| seen.elapsed() < MULTIPLEXING_TTL)
        });
        let decision = decide(&candidates, writer, multiplexing);
        let link = match decision {
            Decision::Linked(i) => g.entries[i].context.clone(),
            Decision::Multiplexing => {
                if let Some(w) = writer {
                    if g.multiplexing.len() >= MAX_MULTIPLEXING {
                        g.multiplexing.clear();
                    }
                    g.multiplexing.insert(w, Instant::now());
                }
                None
            }
            Decision::Ambiguous | Decision::None => None,
        };
        drop(g);
        let link = link.and_then(|f| f.to_map());
        tracing::debug!(
            ?decision,
            ?writer,
            in_flight = candidates.len(),
            "propagation: context-less outbound request"
        );
        match (decision, link) {
            (Decision::Linked(_), Some(fields)) => {
                self.metrics.linked.inc();
                Link::Linked(fields)
            }
            (Decision::Ambiguous | Decision::Multiplexing, _) => {
                self.metrics.ambiguous.inc();
                Link::Untouched
            }
            _ => {
                self.metrics.none.inc();
                Link::Untouched
            }
        }
    }
}

/// Whether `headers` has any trace-context field (valid or not): such a request is
/// never changed by propagation.
pub fn has_trace_fields(headers: &HeaderMap) -> bool {
    context::FIELDS.iter().any(|n| headers.contains_key(*n))
}

/// The trace-context fields of `headers` (as forwarded to the app).
pub fn trace_fields(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in context::FIELDS {
        for v in headers.get_all(name) {
            out.append(name, v.clone());
        }
    }
    out
}

/// Adds `fields` to a request that has none.
pub fn adopt(headers: &mut HeaderMap, fields: &HeaderMap) {
    for (n, v) in fields {
        headers.append(n.clone(), v.clone());
    }
}

/// What is known of who read an inbound request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Cannot be known: it may have been read by any thread.
    Unknown,
    /// Not read by the app yet (so it caused nothing yet).
    NotRead,
    /// Read by `thread`, last at `read_ns`; the app wrote on its connection (began
    /// its response) at `answered_ns`, if it did since (CLOCK_MONOTONIC ns).
    Thread {
        /// The reading thread.
        thread: ThreadId,
        /// Its last read.
        read_ns: u64,
        /// The app's first write after it, if any.
        answered_ns: Option<u64>,
    },
}

/// Resolves who read `e` and whether the app has answered it.
fn reader(datapath: &Datapath, e: &mut Entry) -> Reader {
    let AppEnd::Conn {
        from,
        to,
        sent_ns,
        socket,
    } = &mut e.app
    else {
        return match e.app {
            AppEnd::Pending => Reader::NotRead,
            _ => Reader::Unknown,
        };
    };
    let sock = match socket {
        Some(s) => *s,
        None => match datapath.app_socket(*from, *to) {
            Some(s) => *socket.insert(s),
            None => return Reader::Unknown,
        },
    };
    match datapath.last_use(sock) {
        Some(u) if u.at_ns >= *sent_ns => Reader::Thread {
            thread: u.thread,
            read_ns: u.at_ns,
            answered_ns: (u.wrote_ns > u.at_ns).then_some(u.wrote_ns),
        },
        _ => Reader::NotRead,
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The request at this index caused it.
    Linked(usize),
    /// More than one could have.
    Ambiguous,
    /// The writing thread reads several requests in flight (an event loop): ambiguous,
    /// and the thread is not trusted by the by-thread rule again.
    Multiplexing,
    /// None in flight.
    None,
}

/// Which inbound request in flight (`candidates`, one per request, what is known of
/// its reader) caused an outbound request written by `writer` (`None`: unknown):
/// - exclusivity: exactly one in flight → that one, whatever the threading model;
/// - by thread: the writer is serving exactly one of them — it read exactly one that
///   the app has not answered yet, and read it after answering every other one it
///   read (a thread that reads a request before answering the previous one serves
///   several at once: an event loop) — every other request's reader is known (or it
///   is not read yet), and the writer was not seen serving several at once lately
///   (`multiplexing`) → that one;
/// - otherwise ambiguous.
pub fn decide(candidates: &[Reader], writer: Option<ThreadId>, multiplexing: bool) -> Decision {
    match candidates.len() {
        0 => return Decision::None,
        1 => return Decision::Linked(0),
        _ => {}
    }
    let Some(w) = writer else {
        return Decision::Ambiguous;
    };
    if multiplexing || candidates.contains(&Reader::Unknown) {
        return Decision::Ambiguous;
    }
    let read_by_writer = || {
        candidates
            .iter()
            .enumerate()
            .filter_map(move |(i, r)| match *r {
                Reader::Thread {
                    thread,
                    read_ns,
                    answered_ns,
                } if thread == w => Some((i, read_ns, answered_ns)),
                _ => None,
            })
    };
    let mut serving = read_by_writer().filter(|(_, _, answered)| answered.is_none());
    let (i, read_ns) = match (serving.next(), serving.next()) {
        (Some((i, read_ns, _)), None) => (i, read_ns),
        (Some(_), Some(_)) => return Decision::Multiplexing,
        (None, _) => return Decision::Ambiguous,
    };
    // Answered ones must have been answered before the writer read this one.
    let overlapped = read_by_writer().any(|(_, _, answered)| answered.is_some_and(|a| a > read_ns));
    if overlapped {
        return Decision::Multiplexing;
    }
    Decision::Linked(i)
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of `bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: ThreadId = ThreadId(101);
    const T2: ThreadId = ThreadId(102);

    /// A request forwarded with one rewritten `traceparent` hands an outbound request
    /// exactly that field, as the map of any other forwarded fields would; no fields,
    /// nothing to hand.
    #[test]
    fn forwarded_traceparent_becomes_the_same_field() {
        let value = *b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let map = Forwarded::Traceparent(value).to_map().expect("map");
        assert_eq!(map.len(), 1);
        assert_eq!(
            map.get("traceparent").map(|v| v.as_bytes()),
            Some(&value[..])
        );
        let mut fields = HeaderMap::new();
        fields.insert("traceparent", HeaderValue::from_static("x"));
        fields.insert("tracestate", HeaderValue::from_static("a=b"));
        let forwarded = Forwarded::fields(fields.clone()).expect("fields");
        assert_eq!(forwarded.to_map().as_deref(), Some(&fields));
        assert!(Forwarded::fields(HeaderMap::new()).is_none());
    }

    /// Read by `t` at `read`, answered at `answered`.
    fn by(t: ThreadId, read: u64, answered: Option<u64>) -> Reader {
        Reader::Thread {
            thread: t,
            read_ns: read,
            answered_ns: answered,
        }
    }

    #[test]
    fn nothing_in_flight_is_none() {
        assert_eq!(decide(&[], Some(T1), false), Decision::None);
        assert_eq!(decide(&[], None, false), Decision::None);
    }

    #[test]
    fn exactly_one_in_flight_is_linked_whatever_the_threads() {
        for r in [
            Reader::Unknown,
            Reader::NotRead,
            by(T2, 5, None),
            by(T1, 5, Some(9)),
        ] {
            assert_eq!(decide(&[r], None, false), Decision::Linked(0));
            assert_eq!(decide(&[r], Some(T1), true), Decision::Linked(0));
        }
    }

    #[test]
    fn the_writer_serving_exactly_one_is_linked() {
        let c = [by(T2, 10, None), by(T1, 20, None), Reader::NotRead];
        assert_eq!(decide(&c, Some(T1), false), Decision::Linked(1));
        assert_eq!(decide(&c, Some(T2), false), Decision::Linked(0));
    }

    #[test]
    fn a_thread_that_answered_and_read_the_next_serves_the_next() {
        // T1 answered one request (at 15) and then read another (at 20) before the
        // agent relayed the answer: its write belongs to the new one.
        let c = [by(T1, 10, Some(15)), by(T1, 20, None)];
        assert_eq!(decide(&c, Some(T1), false), Decision::Linked(1));
    }

    #[test]
    fn an_event_loop_reading_several_is_never_linked() {
        // Two read and neither answered.
        let c = [by(T1, 10, None), by(T1, 20, None)];
        assert_eq!(decide(&c, Some(T1), false), Decision::Multiplexing);
        // One answered, but only after the other was read: both were being served.
        let c = [by(T1, 10, Some(30)), by(T1, 20, None)];
        assert_eq!(decide(&c, Some(T1), false), Decision::Multiplexing);
        // Once seen multiplexing, not trusted even when it reads one at a time.
        let c = [by(T1, 10, None), Reader::NotRead];
        assert_eq!(decide(&c, Some(T1), true), Decision::Ambiguous);
    }

    #[test]
    fn unknown_writer_or_reader_is_ambiguous() {
        let c = [by(T1, 10, None), by(T2, 20, None)];
        assert_eq!(decide(&c, None, false), Decision::Ambiguous);
        // A request whose reader cannot be known might have been read by the writer.
        let c = [by(T1, 10, None), Reader::Unknown];
        assert_eq!(decide(&c, Some(T1), false), Decision::Ambiguous);
        // A writer that read none of them (work handed to another thread), or only
        // requests it has answered.
        let c = [by(T1, 10, None), by(T2, 20, None)];
        assert_eq!(decide(&c, Some(ThreadId(7)), false), Decision::Ambiguous);
        let c = [by(T1, 10, Some(12)), by(T2, 20, None)];
        assert_eq!(decide(&c, Some(T1), false), Decision::Ambiguous);
    }
}
