#!/usr/bin/env python3
"""Test web tier: an instrumented HTTP/1.1 server that calls a backend.

    SPAN_FILE=spans.jsonl web.py --listen 0.0.0.0:8080 --backend http://10.1.2.3:8080

For a request to PATH it makes a SERVER span (parent: the incoming context),
calls ``<backend>PATH`` with ``requests`` (instrumented by
opentelemetry-instrumentation-requests: a CLIENT span, context injected in the
format of OTEL_PROPAGATORS), and answers with the backend's status code and a
JSON body like backend.py's plus ``"backend": {"status": .., "body": <backend
JSON>}``.
"""

import argparse
import threading

import requests
from opentelemetry.instrumentation.requests import RequestsInstrumentor

import otelapp

_local = threading.local()


def session():
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


class WebHandler(otelapp.TracedHandler):
    app_name = "web"
    backend = ""

    def answer(self, span):
        try:
            r = session().get(self.backend + self.path, timeout=10)
        except requests.RequestException as e:
            return 502, {"backend": {"status": 0, "error": repr(e)}}
        try:
            body = r.json()
        except ValueError:
            body = r.text
        return r.status_code, {"backend": {"status": r.status_code, "body": body}}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="0.0.0.0:8080", help="HOST:PORT to listen on")
    parser.add_argument("--backend", required=True, help="base URL of the backend, e.g. http://10.1.2.3:8080")
    parser.add_argument("--service", default="web", help="service.name of the spans")
    args = parser.parse_args()
    WebHandler.tracer = otelapp.setup_tracing(args.service)
    WebHandler.backend = args.backend.rstrip("/")
    RequestsInstrumentor().instrument()
    otelapp.serve(args.listen, WebHandler)


if __name__ == "__main__":
    main()
