#!/usr/bin/env python3
"""Test gRPC client: calls to ``hoptrace.test.Echo`` (hoptrace_echo.proto),
each inside its own root CLIENT span, all on one channel (one HTTP/2
connection).

    SPAN_FILE=spans.jsonl grpc_client.py --target 10.1.2.3:50051 \
        --calls '[{"method": "Say", "text": "hi"}, {"method": "Count", "n": 3}]'

A call is ``{"method": "Say", "text": .., "code": .., "delay_ms": ..}`` or
``{"method": "Count", "n": .., "interval_ms": .., "code": ..}`` (see the proto;
missing fields are 0/empty). The span's context goes into the call's metadata
in the format of OTEL_PROPAGATORS. Calls run one after another, or all at once
with ``--concurrent`` (every call starts together: streams multiplexed on the
one connection). The channel is connected before the first call, and then
left idle for ``--idle-ms`` (a client that connects ahead of its calls).
``--slow-start-ms N``: the channel goes through a relay in this process whose
connection to the target is up at once but which holds the client's bytes
(the HTTP/2 preface first) for N ms, so the server — gRPC servers send their
SETTINGS as soon as they accept — speaks first.

Prints one JSON line per call, in the order given::

    {"method": "Say", "trace_id": "<32 hex>", "span_id": "<16 hex>", "sampled": true,
     "sent_metadata": [["traceparent", "..."]], "code": "NOT_FOUND", "code_value": 5,
     "details": "...", "replies": [{"text": .., "seq": .., "peer": .., "trace_id": ..,
     "span_id": .., "parent_span_id": .., "metadata": [[k, v], ...]}]}

Exits 0 when every call ended with a gRPC status (any code).
"""

import argparse
import json
import socket
import sys
import threading
import time
from concurrent import futures

import grpc
from opentelemetry import propagate, trace

import otelapp

protos, services = grpc.protos_and_services("hoptrace_echo.proto")

SERVICE = "hoptrace.test.Echo"
USER_AGENT = "hoptrace-grpc-client/1.0"


def reply_dict(r):
    return {
        "text": r.text,
        "seq": r.seq,
        "peer": r.peer,
        "trace_id": r.trace_id,
        "span_id": r.span_id,
        "parent_span_id": r.parent_span_id,
        "metadata": [[p.key, p.value] for p in r.metadata],
    }


def call(stub, tracer, spec, host, port, timeout, start_together):
    method = spec["method"]
    span = tracer.start_span(
        f"{SERVICE}/{method}",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": SERVICE,
            "rpc.method": method,
            "server.address": host,
            "server.port": port,
        },
    )
    ctx = span.get_span_context()
    carrier = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata = list(carrier.items())
    out = {
        "method": method,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "sampled": ctx.trace_flags.sampled,
        "sent_metadata": [[k, v] for k, v in metadata],
        "code": "OK",
        "code_value": 0,
        "details": "",
        "replies": [],
    }
    replies = out["replies"]
    start_together()
    try:
        if method == "Say":
            req = protos.SayRequest(
                text=spec.get("text", ""), code=spec.get("code", 0), delay_ms=spec.get("delay_ms", 0)
            )
            replies.append(reply_dict(stub.Say(req, metadata=metadata, timeout=timeout)))
        elif method == "Count":
            req = protos.CountRequest(
                n=spec.get("n", 0), interval_ms=spec.get("interval_ms", 0), code=spec.get("code", 0)
            )
            for r in stub.Count(req, metadata=metadata, timeout=timeout):
                replies.append(reply_dict(r))
        else:
            raise ValueError(f"unknown method {method!r}")
    except grpc.RpcError as e:
        out.update(code=e.code().name, code_value=e.code().value[0], details=e.details() or "")
    finally:
        span.set_attribute("rpc.grpc.status_code", out["code_value"])
        if out["code_value"] != 0:
            span.set_status(trace.Status(trace.StatusCode.ERROR, out["details"]))
        span.end()
    return out


def slow_relay(target, delay_s):
    """Starts a TCP relay to ``target`` on 127.0.0.1 that connects at once but
    relays nothing for ``delay_s``; returns its address."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def relay(down):
        up = socket.create_connection(otelapp.split_hostport(target))
        for s in (down, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(delay_s)
        threading.Thread(target=pump, args=(up, down), daemon=True).start()
        pump(down, up)

    def accept():
        while True:
            down, _ = listener.accept()
            threading.Thread(target=relay, args=(down,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return "127.0.0.1:%d" % listener.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT of grpc_server.py")
    parser.add_argument("--calls", required=True, help="JSON list of calls")
    parser.add_argument("--concurrent", action="store_true", help="all calls at once on the channel")
    parser.add_argument("--service", default="grpc-client", help="service.name of the spans")
    parser.add_argument("--timeout", type=float, default=20.0, help="deadline of each call (s)")
    parser.add_argument("--idle-ms", type=int, default=0, help="pause between connecting and the first call")
    parser.add_argument("--slow-start-ms", type=int, default=0, help="hold the client's first bytes this long")
    args = parser.parse_args()
    calls = json.loads(args.calls)
    tracer = otelapp.setup_tracing(args.service)
    host, port = otelapp.split_hostport(args.target)
    dial = slow_relay(args.target, args.slow_start_ms / 1000) if args.slow_start_ms else args.target
    channel = grpc.insecure_channel(
        dial,
        options=[
            # :authority is the real target, relay or not.
            ("grpc.default_authority", args.target),
            ("grpc.enable_http_proxy", 0),
            # A retried call would be a second stream (and second proxy spans).
            ("grpc.enable_retries", 0),
            ("grpc.primary_user_agent", USER_AGENT),
        ],
    )
    grpc.channel_ready_future(channel).result(timeout=args.timeout)
    time.sleep(args.idle_ms / 1000)
    stub = services.EchoStub(channel)
    if args.concurrent and calls:
        barrier = threading.Barrier(len(calls))
        with futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
            pending = [
                pool.submit(call, stub, tracer, spec, host, port, args.timeout, barrier.wait) for spec in calls
            ]
            results = [f.result() for f in pending]
    else:
        results = [call(stub, tracer, spec, host, port, args.timeout, lambda: None) for spec in calls]
    for out in results:
        print(json.dumps(out), flush=True)
    channel.close()
    trace.get_tracer_provider().shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
