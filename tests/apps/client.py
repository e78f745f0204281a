#!/usr/bin/env python3
"""Test client: N requests to a URL, each inside its own root CLIENT span.

    SPAN_FILE=spans.jsonl client.py --url http://10.1.2.3:8080/hello --count 3

Prints one JSON line per request::

    {"status": 200, "trace_id": "<32 hex>", "span_id": "<16 hex>", "sampled": true,
     "sent_headers": [["User-Agent", "..."], ...], "body": <response JSON or text>,
     "error": null}

``sent_headers`` are the request headers exactly as sent, Host included.
The trace context goes out in the format of OTEL_PROPAGATORS.
``--no-context``: no span, no trace header at all (trace_id/span_id null).
``--unsampled``: the root span is not sampled (ParentBased(ALWAYS_OFF)): the
request carries valid ids with the sampled flag off; no span is recorded.
Requests reuse one keep-alive connection unless ``--new-connection``.
Exits 0 when every request got an HTTP answer (any status).
"""

import argparse
import json
import sys
from urllib.parse import urlsplit

import requests
from opentelemetry import propagate, trace

import otelapp


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--data", default=None, help="request body")
    parser.add_argument("--no-context", action="store_true", help="send no trace header")
    parser.add_argument("--unsampled", action="store_true", help="unsampled root span")
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value' header")
    parser.add_argument("--user-agent", default="hoptrace-pyclient/1.0")
    parser.add_argument("--new-connection", action="store_true", help="a new connection per request")
    parser.add_argument("--service", default="client", help="service.name of the spans")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    tracer = otelapp.setup_tracing(args.service, sampled=not args.unsampled)
    url = urlsplit(args.url)
    path = url.path or "/"
    failures = 0
    sess = requests.Session()
    for _ in range(args.count):
        if args.new_connection:
            sess.close()
            sess = requests.Session()
        headers = {"Host": url.netloc, "User-Agent": args.user_agent}
        for h in args.header:
            name, _, value = h.partition(":")
            headers[name.strip()] = value.strip()
        out = {"trace_id": None, "span_id": None, "sampled": None}
        span = None
        if not args.no_context:
            span = tracer.start_span(
                f"{args.method} {path}",
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "http.request.method": args.method,
                    "url.full": args.url,
                    "server.address": url.hostname,
                    "server.port": url.port or 80,
                },
            )
            ctx = span.get_span_context()
            out.update(
                trace_id=format(ctx.trace_id, "032x"),
                span_id=format(ctx.span_id, "016x"),
                sampled=ctx.trace_flags.sampled,
            )
            propagate.inject(headers, context=trace.set_span_in_context(span))
        try:
            r = sess.request(args.method, args.url, headers=headers, data=args.data, timeout=args.timeout)
            try:
                body = r.json()
            except ValueError:
                body = r.text
            out.update(
                status=r.status_code,
                sent_headers=[[k, v] for k, v in r.request.headers.items()],
                body=body,
                error=None,
            )
            if span is not None:
                span.set_attribute("http.response.status_code", r.status_code)
                if r.status_code >= 400:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
        except requests.RequestException as e:
            failures += 1
            out.update(status=0, sent_headers=[[k, v] for k, v in headers.items()], body=None, error=repr(e))
            if span is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, repr(e)))
        finally:
            if span is not None:
                span.end()
        print(json.dumps(out), flush=True)
    trace.get_tracer_provider().shutdown()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
