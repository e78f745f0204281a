//! Shared by the header targets: the input format.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Fields a request may carry here (hyper's HTTP/1 default limit is 100).
const MAX_FIELDS: usize = 100;

/// An HTTP header block: `name:value` lines separated by `\n` (a `\r` before it is
/// dropped). The value is everything after the first `:`, surrounding spaces and tabs
/// included (`name: value` keeps the space, which HTTP/1 parsers strip but other
/// sources of a `HeaderMap` may not). Lines whose name or value the `http` crate
/// rejects are skipped, as hyper would have rejected the request.
pub fn header_block(data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in data.split(|&b| b == b'\n').take(MAX_FIELDS) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// FNV-1a of the input: a deterministic "random" value for the target.
#[allow(dead_code)] // not every target uses it
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
