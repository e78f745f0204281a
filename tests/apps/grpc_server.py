#!/usr/bin/env python3
"""Test gRPC server: the ``hoptrace.test.Echo`` service (hoptrace_echo.proto).

    SPAN_FILE=spans.jsonl OTEL_PROPAGATORS=tracecontext grpc_server.py --listen 0.0.0.0:50051

Every call gets a SERVER span from opentelemetry-instrumentation-grpc's server
interceptor (parent: the trace context in the call's metadata; name
``/hoptrace.test.Echo/Say``; ``rpc.*`` attributes; ERROR for a non-OK status).
The span ends when the handler returns or its reply stream is exhausted, i.e.
before the status (trailers) is sent, so it nests inside whatever forwarded the
call. Replies carry what the server saw: the peer, the metadata as received
and the span's ids (see the proto).

``Say``: answers the text after ``delay_ms``; ``code`` != 0 aborts with that
status (no message, so gRPC sends a trailers-only response).
``Count``: ``n`` replies ``interval_ms`` apart, then status ``code`` (in the
trailers, after the messages).
"""

import argparse
import sys
import time
from concurrent import futures

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import server_interceptor

import otelapp

protos, services = grpc.protos_and_services("hoptrace_echo.proto")

STATUS = {code.value[0]: code for code in grpc.StatusCode}


def reply(context, text, seq=0):
    """A Reply with what the server saw of this call."""
    span = trace.get_current_span()
    trace_id, span_id = otelapp.ids(span)
    parent = getattr(span, "parent", None)
    return protos.Reply(
        text=text,
        seq=seq,
        peer=context.peer(),
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=format(parent.span_id, "016x") if parent else "",
        metadata=[protos.Pair(key=m.key, value=str(m.value)) for m in context.invocation_metadata()],
    )


def abort(context, code):
    context.abort(STATUS[code], f"hoptrace test: asked for status {code}")


class Echo(services.EchoServicer):
    def Say(self, request, context):
        if request.delay_ms:
            time.sleep(request.delay_ms / 1000)
        if request.code:
            abort(context, request.code)
        return reply(context, request.text)

    def Count(self, request, context):
        for i in range(request.n):
            if i and request.interval_ms:
                time.sleep(request.interval_ms / 1000)
            yield reply(context, str(i), seq=i)
        if request.code:
            abort(context, request.code)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="0.0.0.0:50051", help="HOST:PORT to listen on")
    parser.add_argument("--service", default="grpc-server", help="service.name of the spans")
    parser.add_argument("--workers", type=int, default=32, help="concurrent calls served")
    args = parser.parse_args()
    otelapp.setup_tracing(args.service)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        interceptors=[server_interceptor()],
        options=[("grpc.so_reuseport", 0)],
    )
    services.add_EchoServicer_to_server(Echo(), server)
    host, port = otelapp.split_hostport(args.listen)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) != port:
        sys.exit(f"grpc_server: cannot listen on {address}")
    server.start()
    sys.stderr.write(f"grpc_server: listening on {address}\n")
    sys.stderr.flush()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
