"""Shared plumbing of the hoptrace test apps (backend.py, web.py, client.py).

Pods cannot reach the host's loopback, so the apps do not export over the
network: every finished span is appended as one JSON line to the file named by
``SPAN_FILE`` (SimpleSpanProcessor: written and flushed when the span ends).
One line::

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex or ''>",
     "name": "...", "kind": "SERVER", "start_ns": 1, "end_ns": 2,
     "attributes": {...}, "status": "UNSET|OK|ERROR", "service": "web"}

Trace-context formats come from ``OTEL_PROPAGATORS`` (read by the SDK itself):
``tracecontext`` (default), ``b3`` (single header), ``b3multi``.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import socket

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased


class JsonLinesExporter(SpanExporter):
    """Appends each span as one JSON line to a file, flushing every batch."""

    def __init__(self, path):
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")

    def export(self, spans):
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                        "parent_span_id": format(parent.span_id, "016x") if parent else "",
                        "name": span.name,
                        "kind": span.kind.name,
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
                        "status": span.status.status_code.name,
                        "service": span.resource.attributes.get("service.name", ""),
                    },
                    sort_keys=True,
                )
            )
        with self._lock:
            for line in lines:
                self._file.write(line + "\n")
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self):
        with self._lock:
            self._file.close()

    def force_flush(self, timeout_millis=30000):
        with self._lock:
            self._file.flush()
        return True


def _plain(value):
    if isinstance(value, (str, bool, int, float)):
        return value
    return list(value)


def setup_tracing(service, sampled=True):
    """Installs the global tracer provider (span file from SPAN_FILE) and
    returns a tracer. ``sampled=False`` makes root spans unsampled
    (ParentBased(ALWAYS_OFF)); children always follow their parent."""
    sampler = ParentBased(ALWAYS_ON if sampled else ALWAYS_OFF)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), sampler=sampler
    )
    path = os.environ.get("SPAN_FILE")
    if path:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("hoptrace-test-apps")


def split_hostport(text):
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def ids(span):
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class AppServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 overflows under the concurrent load of
    # the propagation tests (a connect then waits for a SYN retransmit).
    request_queue_size = 1024

    def __init__(self, listen, handler):
        host, port = split_hostport(listen)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), handler)


class TracedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) handler: every request gets a SERVER span whose
    parent is the context extracted from the request headers; ``answer`` (set by
    the app) computes (status, payload dict) inside that span. The span ends
    before the response is written, so it nests inside whatever forwarded the
    request to us (a proxy's client span ends only once it has the response)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "hoptrace-test-app"
    sys_version = ""
    app_name = "app"
    tracer = None

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.app_name, fmt % args))

    def do_GET(self):
        self._serve()

    def do_POST(self):
        self._serve()

    def do_PUT(self):
        self._serve()

    def do_DELETE(self):
        self._serve()

    def answer(self, span):
        raise NotImplementedError

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parent = propagate.extract(self.headers)
        remote = trace.get_current_span(parent).get_span_context()
        path, _, query = self.path.partition("?")
        peer_ip, peer_port = self.client_address[0], self.client_address[1]
        attributes = {
            "http.request.method": self.command,
            "url.path": path,
            "url.scheme": "http",
            "network.protocol.version": self.request_version.split("/")[-1],
            "client.address": peer_ip,
            "user_agent.original": self.headers.get("User-Agent", ""),
        }
        if query:
            attributes["url.query"] = query
        with self.tracer.start_as_current_span(
            f"{self.command} {path}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
            end_on_exit=False,
        ) as span:
            try:
                status, payload = self.answer(span)
            except Exception as e:  # report, never hang the client
                status, payload = 500, {"error": repr(e)}
            trace_id, span_id = ids(span)
            payload.update(
                {
                    "app": self.app_name,
                    "method": self.command,
                    "path": self.path,
                    "request_body": body.decode("utf-8", "replace"),
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "peer": f"{peer_ip}:{peer_port}",
                    "status": status,
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "parent_span_id": format(remote.span_id, "016x") if remote.is_valid else "",
                    "sampled": span.get_span_context().trace_flags.sampled,
                }
            )
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            span.end()
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # Head and body in one write (no Nagle/delayed-ACK stalls on keep-alive).
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        self.wfile.write(head + data)


def status_from_path(path):
    """``/status/503`` (anywhere in the path: ``/x/status/503/y``) -> 503, else 200."""
    parts = path.split("?")[0].split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "status" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return 200


def delay_from_path(path):
    """``/delay/250`` (anywhere in the path) -> sleep 0.25 s before answering."""
    parts = path.split("?")[0].split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "delay" and parts[i + 1].isdigit():
            time.sleep(int(parts[i + 1]) / 1000.0)


def serve(listen, handler):
    server = AppServer(listen, handler)
    sys.stderr.write(f"{handler.app_name}: listening on {listen}\n")
    sys.stderr.flush()
    server.serve_forever()
