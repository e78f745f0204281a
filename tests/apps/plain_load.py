#!/usr/bin/env python3
"""Concurrent load client for the context-propagation tests (no tracing library).

    plain_load.py --base http://10.1.1.3:8080 --count 500 --concurrency 128 \
        [--calls N] [--delay-ms D] [--prefix r] [--propagation tracecontext|b3|b3multi]

Sends COUNT requests ``GET /work/<prefix><i>?calls=N&delay_ms=D`` from
CONCURRENCY threads (each with its own keep-alive connection, all started
together), every request with its own sampled context: a fresh random trace id
and parent span id in ``traceparent: 00-<trace>-<span>-01`` (default), or
``b3: <trace>-<span>-1``, or ``X-B3-TraceId``, ``X-B3-SpanId``, ``X-B3-Sampled: 1``.
Prints one JSON line per request, in request order::

    {"tag": "r7", "trace_id": "<32 hex>", "span_id": "<16 hex>", "status": 200,
     "body": <the web's JSON answer or text>, "error": null}

Exits 0 when every request got an HTTP answer (any status).
"""

import argparse
import http.client
import json
import os
import sys
import threading
from urllib.parse import urlsplit


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="http://HOST:PORT of the web app")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--prefix", default="r")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--propagation", default="tracecontext", choices=["tracecontext", "b3", "b3multi"])
    args = parser.parse_args()

    base = urlsplit(args.base)
    results = [None] * args.count
    next_index = iter(range(args.count))
    lock = threading.Lock()
    start = threading.Barrier(max(1, min(args.concurrency, args.count)))

    def worker():
        conn = None
        start.wait()
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            tag = f"{args.prefix}{i}"
            trace_id = os.urandom(16).hex()
            span_id = os.urandom(8).hex()
            out = {"tag": tag, "trace_id": trace_id, "span_id": span_id,
                   "status": 0, "body": None, "error": None}
            path = f"/work/{tag}?calls={args.calls}&delay_ms={args.delay_ms}"
            headers = {"User-Agent": "hoptrace-plainload/1.0"}
            if args.propagation == "b3":
                headers["b3"] = f"{trace_id}-{span_id}-1"
            elif args.propagation == "b3multi":
                headers.update({"X-B3-TraceId": trace_id, "X-B3-SpanId": span_id, "X-B3-Sampled": "1"})
            else:
                headers["traceparent"] = f"00-{trace_id}-{span_id}-01"
            for attempt in range(2):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(base.hostname, base.port or 80,
                                                          timeout=args.timeout)
                    conn.request("GET", path, headers=headers)
                    r = conn.getresponse()
                    text = r.read().decode("utf-8", "replace")
                    out["status"] = r.status
                    try:
                        out["body"] = json.loads(text)
                    except ValueError:
                        out["body"] = text
                    out["error"] = None
                    break
                except (http.client.HTTPException, OSError) as e:
                    # A keep-alive connection the server closed before this
                    # request was read is retried once on a new connection.
                    out["error"] = repr(e)
                    if conn is not None:
                        conn.close()
                    conn = None
            results[i] = out

    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(max(1, min(args.concurrency, args.count)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = 0
    for out in results:
        failed += out["status"] == 0
        print(json.dumps(out), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
