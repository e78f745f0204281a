#!/usr/bin/env python3
"""Test backend: an instrumented HTTP/1.1 server.

    SPAN_FILE=spans.jsonl OTEL_PROPAGATORS=tracecontext backend.py --listen 0.0.0.0:8080

Every request gets a SERVER span (parent: the trace context in the request) and
a JSON answer: app, method, path, the headers exactly as received (names in the
received case, in order), the peer address, the trace/span ids of the SERVER
span and the parent span id it was given. ``/status/<code>`` anywhere in the
path answers with that status (5xx also marks the span ERROR); ``/delay/<ms>`` anywhere delays the answer by that long.
"""

import argparse

import otelapp


class BackendHandler(otelapp.TracedHandler):
    app_name = "backend"

    def answer(self, span):
        otelapp.delay_from_path(self.path)
        return otelapp.status_from_path(self.path), {}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="0.0.0.0:8080", help="HOST:PORT to listen on")
    parser.add_argument("--service", default="backend", help="service.name of the spans")
    args = parser.parse_args()
    BackendHandler.tracer = otelapp.setup_tracing(args.service)
    otelapp.serve(args.listen, BackendHandler)


if __name__ == "__main__":
    main()
