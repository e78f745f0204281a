//! A request leg's span attributes: what they take from the request head
//! ([`RequestFacts`]), encoded once per request ([`RequestAttrs`]), and a connection's
//! last ones kept ([`LastRequest`]) so that a client asking the same way again — the
//! keep-alive loop — gets them as bytes instead of encoded again.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http::{header, Request, Version};
use prometheus_client::metrics::counter::Counter;

use super::{span::capped, wire::Attributes};

/// What the span attributes take from a request head (hyper's `Request` or the lean
/// HTTP/1 path's parsed head).
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The method token.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The HTTP version.
    pub version: Version,
    /// The target's host: the URI's authority, else the `Host` field (a port is removed).
    pub host: Option<&'a str>,
    /// `User-Agent`.
    pub user_agent: Option<&'a str>,
}

impl<'a> RequestFacts<'a> {
    /// The facts of a hyper request.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        Self {
            method: req.method().as_str(),
            path: req.uri().path(),
            version: req.version(),
            host: req.uri().host().or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
            }),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        }
    }
}

/// What a span takes from its request, fixed when the head arrives: the span name and
/// the request's attributes, already encoded, each value capped at
/// [`MAX_ATTRIBUTE_LEN`](super::span::MAX_ATTRIBUTE_LEN).
#[derive(Debug, Clone)]
pub(super) struct RequestAttrs {
    /// `METHOD route`, or `service/method` for gRPC.
    pub name: String,
    /// The request's attributes (the response's are added at the end).
    pub encoded: Attributes,
    /// Attributes whose values were cut.
    pub truncated: Vec<&'static str>,
    /// Where the path's attributes start in `encoded` and `truncated`: what is before
    /// depends on the method, host, `User-Agent` and version only, so a request that
    /// differs in its path (an id in it) rewrites the tail alone.
    tail: (usize, usize),
}

/// Bytes the attributes of a typical request take, reserved up front.
const TYPICAL_ATTRIBUTES: usize = 384;

/// What every request of a connection leg shares: the attributes encoded once per
/// connection (`fixed`), its destination (`server.address` without a Host).
#[derive(Clone, Copy)]
pub(super) struct Leg<'a> {
    pub fixed: &'a Attributes,
    pub dst: SocketAddr,
}

impl RequestAttrs {
    fn new(leg: Leg<'_>, req: RequestFacts<'_>, route: &str, is_grpc: bool) -> Self {
        let mut attrs = Self {
            name: String::new(),
            encoded: Attributes::with_capacity(
                TYPICAL_ATTRIBUTES + req.path.len() + leg.fixed.len(),
            ),
            truncated: Vec::new(),
            tail: (0, 0),
        };
        attrs.fill(leg, req, route, is_grpc);
        attrs
    }

    /// Becomes the attributes of `req`, in the buffers it already has.
    fn fill(&mut self, leg: Leg<'_>, req: RequestFacts<'_>, route: &str, is_grpc: bool) {
        let truncated = &mut self.truncated;
        truncated.clear();
        let mut dst_ip = String::new();
        let host = match req.host {
            Some(h) => strip_port(h),
            None => {
                use std::fmt::Write as _;
                let _ = write!(dst_ip, "{}", leg.dst.ip());
                dst_ip.as_str()
            }
        };
        let method = capped(req.method, "http.request.method", truncated);
        let host = capped(host, "server.address", truncated);
        let user_agent = req
            .user_agent
            .map(|ua| capped(ua, "user_agent.original", truncated));
        let a = &mut self.encoded;
        a.truncate(0);
        a.string("http.request.method", method);
        a.string("server.address", host);
        a.extend(leg.fixed);
        a.string(
            "network.protocol.version",
            match req.version {
                Version::HTTP_10 => "1.0",
                Version::HTTP_2 => "2",
                _ => "1.1",
            },
        );
        if let Some(ua) = user_agent {
            a.string("user_agent.original", ua);
        }
        self.tail = (a.len(), truncated.len());
        self.fill_tail(req, route, is_grpc);
    }

    /// Rewrites what depends on the path: `url.path`, `http.route`, gRPC's `rpc.*`
    /// and the span name.
    fn fill_tail(&mut self, req: RequestFacts<'_>, route: &str, is_grpc: bool) {
        let (encoded, cut) = self.tail;
        self.encoded.truncate(encoded);
        self.truncated.truncate(cut);
        let a = &mut self.encoded;
        let method = capped(req.method, "http.request.method", &mut Vec::new());
        let path = capped(req.path, "url.path", &mut self.truncated);
        a.string("url.path", path);
        a.string("http.route", route);
        let grpc = is_grpc
            .then(|| path.trim_start_matches('/').split_once('/'))
            .flatten();
        let name = &mut self.name;
        name.clear();
        match grpc {
            Some((svc, method)) => {
                a.string("rpc.system", "grpc");
                a.string("rpc.service", svc);
                a.string("rpc.method", method);
                name.extend([svc, "/", method]);
            }
            None => name.extend([method, " ", route]),
        }
    }
}

/// A connection leg's last request attributes and what they were made from.
#[derive(Debug, Default)]
pub(super) struct LastRequest(Mutex<Option<Last>>);

#[derive(Debug)]
struct Last {
    method: String,
    path: String,
    host: Option<String>,
    user_agent: Option<String>,
    version: Version,
    route: Arc<str>,
    grpc: bool,
    attrs: Arc<RequestAttrs>,
}

impl Last {
    fn is(&self, req: &RequestFacts<'_>, route: &Arc<str>, grpc: bool) -> bool {
        self.grpc == grpc
            && (Arc::ptr_eq(&self.route, route) || *self.route == **route)
            && self.path == req.path
            && self.same_head(req)
    }

    /// Whether `req` has what the attributes before the path's were made from.
    fn same_head(&self, req: &RequestFacts<'_>) -> bool {
        self.version == req.version
            && self.method == req.method
            && self.host.as_deref() == req.host
            && self.user_agent.as_deref() == req.user_agent
    }

    /// Becomes the record of `req`, in the buffers it already has.
    fn set(
        &mut self,
        req: &RequestFacts<'_>,
        route: &Arc<str>,
        grpc: bool,
        attrs: &Arc<RequestAttrs>,
    ) {
        fn put(s: &mut String, v: &str) {
            s.clear();
            s.push_str(v);
        }
        fn put_opt(s: &mut Option<String>, v: Option<&str>) {
            match (s.as_mut(), v) {
                (Some(s), Some(v)) => put(s, v),
                (_, v) => *s = v.map(str::to_owned),
            }
        }
        put(&mut self.method, req.method);
        put(&mut self.path, req.path);
        put_opt(&mut self.host, req.host);
        put_opt(&mut self.user_agent, req.user_agent);
        self.version = req.version;
        self.route = route.clone();
        self.grpc = grpc;
        self.attrs = attrs.clone();
    }
}

impl LastRequest {
    /// Facts longer than this (path, host and `User-Agent` together) are not kept: the
    /// connection's memory stays small.
    const MAX_KEPT: usize = 1024;

    /// The attributes of a request with `req`, `route` and `grpc` on the connection leg
    /// `leg`: the last request's (shared, not copied) when it was the same; else encoded
    /// and kept, in the kept record's buffers. Attribute values cut to the limit are
    /// counted in `truncated` either way.
    pub fn attrs(
        &self,
        leg: Leg<'_>,
        req: RequestFacts<'_>,
        route: &Arc<str>,
        grpc: bool,
        truncated: &Counter,
    ) -> Arc<RequestAttrs> {
        // A panic while holding the lock leaves a whole `Last` or none: go on with it.
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let attrs = match last.as_mut() {
            Some(l) if l.is(&req, route, grpc) => l.attrs.clone(),
            mut kept => {
                let size = req.path.len()
                    + req.host.map_or(0, str::len)
                    + req.user_agent.map_or(0, str::len);
                // The last request's spans are usually encoded and gone by now: its
                // attributes' buffers are refilled rather than a new set allocated.
                let reused = match kept.as_deref_mut() {
                    Some(l) if size <= Self::MAX_KEPT => {
                        let head = l.same_head(&req);
                        Arc::get_mut(&mut l.attrs)
                            .map(|a| match head {
                                true => a.fill_tail(req, route, grpc),
                                false => a.fill(leg, req, route, grpc),
                            })
                            .map(|()| l.attrs.clone())
                    }
                    _ => None,
                };
                let attrs =
                    reused.unwrap_or_else(|| Arc::new(RequestAttrs::new(leg, req, route, grpc)));
                match kept {
                    _ if size > Self::MAX_KEPT => *last = None,
                    Some(l) => l.set(&req, route, grpc, &attrs),
                    None => {
                        *last = Some(Last {
                            method: req.method.to_owned(),
                            path: req.path.to_owned(),
                            host: req.host.map(str::to_owned),
                            user_agent: req.user_agent.map(str::to_owned),
                            version: req.version,
                            route: route.clone(),
                            grpc,
                            attrs: attrs.clone(),
                        })
                    }
                }
                attrs
            }
        };
        truncated.inc_by(attrs.truncated.len() as u64);
        attrs
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map(|h| h.trim_start_matches('['))
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(strip_port("web:8080"), "web");
        assert_eq!(strip_port("web"), "web");
        assert_eq!(strip_port("[fd00::1]:80"), "fd00::1");
    }

    /// The kept attributes are the ones encoding the request again gives, and any
    /// difference in what they are made from encodes them again.
    #[test]
    fn a_request_asking_the_same_way_gets_the_same_attributes() {
        let fixed = Attributes::default();
        let leg = || Leg {
            fixed: &fixed,
            dst: "10.0.0.2:8080".parse().expect("addr"),
        };
        let route: Arc<str> = Arc::from("/users/{id}");
        let other_route: Arc<str> = Arc::from("/other");
        let long_ua = "u".repeat(3000);
        let base = RequestFacts {
            method: "GET",
            path: "/users/1",
            version: Version::HTTP_11,
            host: Some("web:8080"),
            user_agent: Some("curl"),
        };
        let variants = [
            (base, &route, false),
            (
                RequestFacts {
                    method: "POST",
                    ..base
                },
                &route,
                false,
            ),
            (
                RequestFacts {
                    path: "/users/2",
                    ..base
                },
                &route,
                false,
            ),
            (RequestFacts { host: None, ..base }, &route, false),
            (
                RequestFacts {
                    host: Some("api"),
                    ..base
                },
                &route,
                false,
            ),
            (
                RequestFacts {
                    user_agent: None,
                    ..base
                },
                &route,
                false,
            ),
            (
                RequestFacts {
                    user_agent: Some(&long_ua),
                    ..base
                },
                &route,
                false,
            ),
            (
                RequestFacts {
                    version: Version::HTTP_2,
                    ..base
                },
                &route,
                false,
            ),
            (base, &other_route, false),
            (base, &route, true),
        ];
        let last = LastRequest::default();
        let truncated = Counter::default();
        let mut cut = 0;
        // Each variant twice in a row (the second from the cache), then after another.
        for (i, (req, r, grpc)) in variants.iter().chain(variants.iter().rev()).enumerate() {
            let fresh = RequestAttrs::new(leg(), *req, r, *grpc);
            let mut seen: Vec<Arc<RequestAttrs>> = Vec::new();
            for _ in 0..2 {
                let got = last.attrs(leg(), *req, r, *grpc, &truncated);
                seen.push(got.clone());
                assert_eq!(got.name, fresh.name, "variant {i}");
                assert_eq!(
                    got.encoded.as_bytes(),
                    fresh.encoded.as_bytes(),
                    "variant {i}"
                );
                assert_eq!(got.truncated, fresh.truncated, "variant {i}");
                cut += fresh.truncated.len() as u64;
            }
            // The second is the first, shared; a request too long to keep is not kept.
            let kept = req
                .user_agent
                .is_none_or(|ua| ua.len() < LastRequest::MAX_KEPT);
            assert_eq!(Arc::ptr_eq(&seen[0], &seen[1]), kept, "variant {i}");
        }
        assert_eq!(truncated.get(), cut, "cut values counted on every request");
        assert!(cut > 0, "the long User-Agent is cut");
    }

    /// A new request's attributes go into the last one's buffers when no span holds
    /// them any more, and never into ones a span still holds.
    #[test]
    fn buffers_are_refilled_only_when_no_span_holds_them() {
        let fixed = Attributes::default();
        let leg = || Leg {
            fixed: &fixed,
            dst: "10.0.0.2:8080".parse().expect("addr"),
        };
        let route: Arc<str> = Arc::from("/p/{id}");
        let facts = |path| RequestFacts {
            method: "GET",
            path,
            version: Version::HTTP_11,
            host: Some("web"),
            user_agent: None,
        };
        let last = LastRequest::default();
        let truncated = Counter::default();
        let first = last.attrs(leg(), facts("/p/1"), &route, false, &truncated);
        let first_ptr = Arc::as_ptr(&first);
        drop(first);
        let second = last.attrs(leg(), facts("/p/2"), &route, false, &truncated);
        assert_eq!(Arc::as_ptr(&second), first_ptr, "refilled in place");
        let fresh = RequestAttrs::new(leg(), facts("/p/2"), &route, false);
        assert_eq!(second.encoded.as_bytes(), fresh.encoded.as_bytes());
        assert_eq!(second.name, fresh.name);
        // `second` is still held (a span not yet encoded): the next one is new.
        let before = second.encoded.as_bytes().to_vec();
        let third = last.attrs(leg(), facts("/p/3"), &route, false, &truncated);
        assert!(!Arc::ptr_eq(&second, &third));
        assert_eq!(
            second.encoded.as_bytes(),
            before,
            "a held set is never touched"
        );
        let fresh = RequestAttrs::new(leg(), facts("/p/3"), &route, false);
        assert_eq!(third.encoded.as_bytes(), fresh.encoded.as_bytes());
    }
}
