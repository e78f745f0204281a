//! The `route` of a request: a path template with bounded cardinality, shared by the
//! golden metrics (`route` label) and the spans (`http.route`, span name).
//!
//! - gRPC: `/package.Service/Method` as it is (the method set is the service's own).
//! - HTTP: the path without its query; each segment that looks like an identifier
//!   (all digits, a UUID, hex of 8+ characters with a digit, or 24+ characters mixing
//!   letters and digits) becomes `{id}`.
//! - Each server workload has at most [`MAX_ROUTES`] routes; a new template beyond
//!   that is reported as [`OVERFLOW`], so 100,000 distinct raw paths cannot create
//!   100,000 series.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

/// Distinct routes remembered per server workload.
pub const MAX_ROUTES: usize = 100;
/// The route of every request beyond [`MAX_ROUTES`].
pub const OVERFLOW: &str = "other";
/// A path longer than this is not templated segment by segment: it is [`OVERFLOW`].
const MAX_PATH: usize = 1024;
/// Segments kept in a template; deeper paths end in `/…`.
const MAX_SEGMENTS: usize = 8;

/// The path of a request target: up to its query (`?`), if any. A plain byte loop:
/// paths are short, where a vectorised search (`memchr`) or a `char` pattern costs
/// more to set up than to run (callgrind, docs/BENCH.md).
pub fn path_of(target: &str) -> &str {
    let end = position(target.as_bytes(), |b| b == b'?');
    target.get(..end).unwrap_or(target)
}

/// A request target (origin form: path and query) with its path found once, for the
/// span's attributes and the route alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    target: &'a str,
    path: &'a str,
}

impl<'a> RequestTarget<'a> {
    /// `target` as the request line gives it.
    pub fn new(target: &'a str) -> Self {
        Self {
            target,
            path: path_of(target),
        }
    }

    /// The whole target, query included.
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// Its path: [`path_of`] the target.
    pub fn path(&self) -> &'a str {
        self.path
    }
}

/// The index of the first byte of `b` that `is` holds for, else its length.
fn position(b: &[u8], is: impl Fn(u8) -> bool) -> usize {
    b.iter().position(|c| is(*c)).unwrap_or(b.len())
}

/// The template of `path` (the request target's path, query allowed), `grpc` when the
/// request is gRPC. Pure: the same path always gives the same template.
pub fn template(path: &str, grpc: bool) -> String {
    let mut out = String::new();
    template_into(path, grpc, &mut out);
    out
}

/// [`template`], written into `out` (cleared first): a caller with a buffer of its own
/// allocates nothing for a path it has templated before.
pub fn template_into(path: &str, grpc: bool, out: &mut String) {
    out.clear();
    let end = position(path.as_bytes(), |b| b == b'?' || b == b'#');
    let path = path.get(..end).unwrap_or_default();
    let Some(rest) = path.strip_prefix('/').filter(|_| path.len() <= MAX_PATH) else {
        out.push_str(OVERFLOW);
        return;
    };
    if grpc {
        out.push_str(path);
        return;
    }
    // Split at each '/' by byte (an ASCII byte is always a char boundary).
    let mut start = 0;
    for i in 0..=MAX_SEGMENTS {
        if start > rest.len() {
            break;
        }
        let end = start + position(&rest.as_bytes()[start..], |b| b == b'/');
        let segment = rest.get(start..end).unwrap_or_default();
        start = end + 1;
        if i == MAX_SEGMENTS {
            out.push_str("/…");
            break;
        }
        out.push('/');
        out.push_str(if is_identifier(segment.as_bytes()) {
            "{id}"
        } else {
            segment
        });
    }
}

/// Whether a path segment looks like an identifier rather than a name (one pass over
/// its bytes).
fn is_identifier(b: &[u8]) -> bool {
    if b.is_empty() {
        return false;
    }
    let (mut digits, mut hex, mut alnum) = (0, true, true);
    for &c in b {
        if c.is_ascii_digit() {
            digits += 1;
        } else {
            hex &= c.is_ascii_hexdigit();
            alnum &= c.is_ascii_alphabetic() || c == b'-' || c == b'_';
        }
    }
    digits == b.len()
        || is_uuid(b)
        || (hex && b.len() >= 8 && digits > 0)
        || (alnum && b.len() >= 24 && digits > 0)
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The routes seen per server workload, each capped at [`MAX_ROUTES`]. Routes are
/// shared (`Arc<str>`), so a label or attribute holding one costs a refcount.
///
/// Hashed with foldhash (seeded per process) rather than SipHash: a route is hashed on
/// every request whose path the connection has not just seen, and a set never holds
/// more than [`MAX_ROUTES`] entries, so colliding keys cannot make it slow.
#[derive(Debug)]
pub struct RouteTable {
    by_server: Mutex<HashMap<Arc<str>, Routes, Hasher>>,
    /// [`OVERFLOW`], made once: every request beyond the cap shares it.
    overflow: Arc<str>,
}

type Hasher = foldhash::fast::RandomState;
type Routes = HashSet<Arc<str>, Hasher>;

impl Default for RouteTable {
    fn default() -> Self {
        Self {
            by_server: Mutex::default(),
            overflow: Arc::from(OVERFLOW),
        }
    }
}

/// One connection's last path and its route ([`RouteTable::route_cached`]). A route,
/// once given to a path, stays that path's route (the table only grows, and forgets a
/// server only once it is gone), so the cache is never stale.
#[derive(Debug, Default)]
pub struct RouteCache {
    last: Option<(String, bool, Arc<str>)>,
    /// Where a missed path's template is written.
    scratch: String,
}

impl RouteCache {
    /// Paths longer than this are not kept.
    const MAX_PATH: usize = 256;
}

impl RouteTable {
    /// The route for `path` at `server`: its template, or [`OVERFLOW`] once the
    /// server has [`MAX_ROUTES`] others.
    pub fn route(&self, server: &Arc<str>, path: &str, grpc: bool) -> Arc<str> {
        let mut t = String::new();
        template_into(path, grpc, &mut t);
        self.route_of(server, &t)
    }

    /// The route of template `t` at `server`.
    fn route_of(&self, server: &Arc<str>, t: &str) -> Arc<str> {
        if t == OVERFLOW {
            return self.overflow.clone();
        }
        let mut all = self.by_server.lock().unwrap_or_else(|e| e.into_inner());
        let Some(routes) = all.get_mut(server) else {
            let r: Arc<str> = Arc::from(t);
            let mut routes = Routes::default();
            routes.insert(r.clone());
            all.insert(server.clone(), routes);
            return r;
        };
        if let Some(r) = routes.get(t) {
            return r.clone();
        }
        if routes.len() >= MAX_ROUTES {
            return self.overflow.clone();
        }
        let r: Arc<str> = Arc::from(t);
        routes.insert(r.clone());
        r
    }

    /// [`RouteTable::route`] through a connection's `cache` of its last path: a client
    /// that asks for the same path again (the usual keep-alive loop) skips the
    /// template and the table.
    pub fn route_cached(
        &self,
        cache: &mut RouteCache,
        server: &Arc<str>,
        path: &str,
        grpc: bool,
    ) -> Arc<str> {
        if let Some((p, g, r)) = &cache.last {
            if *g == grpc && p.as_str() == path {
                return r.clone();
            }
        }
        template_into(path, grpc, &mut cache.scratch);
        // Another path with the last one's template (another id in a REST path): the
        // same route, without the table's lock and hash. A template, once a route,
        // stays that route. A real route starts with `/`, so only a path that is not
        // templated (`other`) can match the overflow route, which is its route anyway.
        let r = match &cache.last {
            Some((_, g, r)) if *g == grpc && **r == *cache.scratch => r.clone(),
            _ => self.route_of(server, &cache.scratch),
        };
        // Long paths are not kept: the cache stays small.
        if path.len() <= RouteCache::MAX_PATH {
            let (p, g, route) = cache
                .last
                .get_or_insert_with(|| (String::new(), grpc, r.clone()));
            p.clear();
            p.push_str(path);
            *g = grpc;
            *route = r.clone();
        } else {
            cache.last = None;
        }
        r
    }

    /// Forgets the routes of servers that are no longer known (bounded by the number
    /// of workloads the agent has seen since).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut all = self.by_server.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|server, _| keep(server));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_collapse() {
        let cases = [
            ("/", "/"),
            ("", OVERFLOW),
            ("/users/42", "/users/{id}"),
            ("/users/42/orders/7?x=1", "/users/{id}/orders/{id}"),
            ("/items/123e4567-e89b-12d3-a456-426614174000", "/items/{id}"),
            ("/blob/9f86d081884c7d65", "/blob/{id}"),
            ("/blob/deadbeef", "/blob/deadbeef"),
            ("/s/aB3dE5fG7hJ9kL1mN3pQ5rS7", "/s/{id}"),
            ("/api/v1/health", "/api/v1/health"),
            ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/…"),
            ("*", OVERFLOW),
            ("/a//b/", "/a//b/"),
            ("/a/b/c/d/e/f/g/h", "/a/b/c/d/e/f/g/h"),
            ("/a/b/c/d/e/f/g/h/", "/a/b/c/d/e/f/g/h/…"),
            ("/a#f", "/a"),
            ("/ü/42", "/ü/{id}"),
        ];
        for (path, want) in cases {
            assert_eq!(template(path, false), want, "{path}");
        }
        assert_eq!(
            template("/helloworld.Greeter/SayHello", true),
            "/helloworld.Greeter/SayHello"
        );
    }

    #[test]
    fn a_path_ends_at_its_query() {
        for (target, path) in [
            ("/a?b=1", "/a"),
            ("/a", "/a"),
            ("?x", ""),
            ("/ü?é", "/ü"),
            ("", ""),
        ] {
            assert_eq!(path_of(target), path, "{target}");
            let t = RequestTarget::new(target);
            assert_eq!((t.target(), t.path()), (target, path));
        }
    }

    #[test]
    fn routes_per_server_are_capped() {
        let table = RouteTable::default();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let mut distinct = HashSet::new();
        for i in 0..100_000 {
            // 100,000 raw paths: ids collapse; the word segments are all distinct.
            let r = table.route(&a, &format!("/p{}x/{i}", i % 1000), false);
            distinct.insert(r.to_string());
        }
        assert_eq!(distinct.len(), MAX_ROUTES + 1, "{} routes", distinct.len());
        assert!(distinct.contains(OVERFLOW));
        // Every request beyond the cap shares one overflow route, as do paths that
        // cannot be templated.
        let (x, y) = (
            table.route(&a, "/new/1", false),
            table.route(&a, "x", false),
        );
        assert!(Arc::ptr_eq(&x, &y) && &*x == OVERFLOW);
        // Another server has its own budget; a known route stays itself.
        assert_eq!(&*table.route(&b, "/p1x/9", false), "/p1x/{id}");
        assert_eq!(&*table.route(&a, "/p0x/5", false), "/p0x/{id}");
        table.retain(|s| s == "b");
        assert_eq!(&*table.route(&a, "/new/1", false), "/new/{id}");
    }

    /// The cached lookup answers what the table answers, path after path.
    #[test]
    fn cached_routes_are_the_tables() {
        let (cached, plain) = (RouteTable::default(), RouteTable::default());
        let a: Arc<str> = Arc::from("a");
        let mut cache = RouteCache::default();
        let long = format!("/{}", "x".repeat(400));
        let mut paths: Vec<(String, bool)> = Vec::new();
        for i in 0..(MAX_ROUTES + 20) {
            paths.push((format!("/w{i}/1"), false));
            paths.push((format!("/w{i}/1"), false));
            paths.push((format!("/w{i}/1"), true));
            paths.push((long.clone(), false));
            paths.push((long.clone(), false));
            // Another id, the last template: the cached route without the table.
            paths.push((format!("/users/{i}"), false));
            paths.push((format!("/users/{}", i + 1000), false));
            paths.push((format!("/users/{}", i + 2000), true));
        }
        paths.push(("no-slash".into(), false));
        paths.push(("also-no-slash".into(), false));
        for (path, grpc) in &paths {
            let mut buf = String::from("left over");
            template_into(path, *grpc, &mut buf);
            assert_eq!(buf, template(path, *grpc), "{path}");
            let want = plain.route(&a, path, *grpc);
            let got = cached.route_cached(&mut cache, &a, path, *grpc);
            assert_eq!(got, want, "{path} grpc={grpc}");
        }
    }

    /// A path with the last one's template gets the very route the table gave it.
    #[test]
    fn another_id_shares_the_route() {
        let table = RouteTable::default();
        let a: Arc<str> = Arc::from("a");
        let mut cache = RouteCache::default();
        let first = table.route_cached(&mut cache, &a, "/users/1", false);
        let second = table.route_cached(&mut cache, &a, "/users/2?x=1", false);
        assert_eq!(&*first, "/users/{id}");
        assert!(Arc::ptr_eq(&first, &second));
        let other = table.route_cached(&mut cache, &a, "/orders/7", false);
        assert_eq!(&*other, "/orders/{id}");
        assert!(Arc::ptr_eq(&table.route(&a, "/users/3", false), &first));

        // The table no longer consulted: with the server forgotten, the table would
        // make a new `Arc`; the connection keeps the one it had.
        let users = table.route_cached(&mut cache, &a, "/users/4", false);
        table.retain(|_| false);
        let again = table.route_cached(&mut cache, &a, "/users/5", false);
        assert!(
            Arc::ptr_eq(&users, &again),
            "the last route, not the table's"
        );
        assert!(!Arc::ptr_eq(&table.route(&a, "/users/6", false), &again));
    }
}
