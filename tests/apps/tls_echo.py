#!/usr/bin/env python3
"""TLS echo server and client: application TLS that the agent must pass through.

    tls_echo.py server --listen 0.0.0.0:8443 --cert server.pem --key server.key
    tls_echo.py client --addr 10.1.2.3:8443 --ca ca.pem --bytes 1048576 --seed 7

The server echoes every byte until the client closes its write side (TLS
close_notify), then closes. The client verifies the server against ``--ca``
with SNI ``localhost`` (the test certificate's name), sends a plaintext HTTP
request carrying a ``traceparent`` header followed by ``--bytes`` seeded random
bytes, all inside TLS, reads the echo and compares it byte for byte. It prints
one JSON line::

    {"ok": true, "bytes": 1048640, "sha256": "<hex of what was sent>",
     "tls_version": "TLSv1.3", "error": null}

and exits 0 only when the echo matched exactly.
"""

import argparse
import hashlib
import json
import random
import socket
import ssl
import sys
import threading

# Looks like a traced HTTP request, but travels encrypted: a proxy that
# steers this connection must neither parse it nor trace it.
HTTP_PREFIX = (
    b"GET /inside-tls HTTP/1.1\r\n"
    b"Host: localhost\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"\r\n"
)


def host_port(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def serve(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    host, port = host_port(args.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(64)
        print(f"listening on {args.listen}", flush=True)
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=echo, args=(ctx, conn), daemon=True).start()


def echo(ctx, conn):
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                tls.sendall(data)
    except (OSError, ssl.SSLError) as e:
        print(f"connection error: {e}", file=sys.stderr, flush=True)


def client(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    rng = random.Random(args.seed)
    payload = HTTP_PREFIX + rng.randbytes(args.bytes)
    result = {"ok": False, "bytes": 0, "sha256": hashlib.sha256(payload).hexdigest(),
              "tls_version": None, "error": None}
    try:
        host, port = host_port(args.addr)
        raw = socket.create_connection((host, port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            result["tls_version"] = tls.version()
            received = bytearray()
            # Send in slices and read as we go so neither side's buffers fill up.
            view = memoryview(payload)
            sent = 0
            while sent < len(payload):
                n = tls.send(view[sent:sent + 16384])
                sent += n
                while len(received) < sent - 65536:
                    received += tls.recv(65536)
            while len(received) < len(payload):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                received += chunk
            result["bytes"] = len(received)
            result["ok"] = bytes(received) == payload
            if not result["ok"]:
                result["error"] = f"echo differs: got {len(received)} bytes of {len(payload)}"
    except (OSError, ssl.SSLError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    c = sub.add_parser("client")
    c.add_argument("--addr", required=True)
    c.add_argument("--ca", required=True)
    c.add_argument("--bytes", type=int, default=1 << 20)
    c.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "server":
        serve(args)
        return 0
    return client(args)


if __name__ == "__main__":
    sys.exit(main())
