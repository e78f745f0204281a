#!/usr/bin/env python3
"""Plain web tier for the context-propagation tests: no tracing library, and it
forwards no header at all (what issue 13's agent must link on its own).

    plain_web.py --listen 0.0.0.0:8080 --backend http://10.1.2.3:8080

``http.server.ThreadingHTTPServer`` (a thread per connection, HTTP/1.1
keep-alive) calling the backend with ``urllib.request`` on the handler's own
thread. ``GET /work/<tag>?calls=N&delay_ms=D`` (N default 1, D default 0) waits
D ms, then calls ``<backend>/echo/<tag>/<i>`` for i in 0..N one after another,
each request carrying only urllib's own headers (never a trace header), and
answers JSON::

    {"app": "plain_web", "tag": "<tag>", "thread": "<handler thread>",
     "headers": [[name, value], ...],          # as received
     "calls": [{"path": "/echo/<tag>/0", "status": 200, "in_flight": 3,
                "body": <backend JSON or text>, "error": null}, ...]}

``in_flight`` is how many requests the app was serving when it made the call
(this one included). Any other path answers 404.
"""

import argparse
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


_lock = threading.Lock()
_in_flight = 0


def in_flight(delta):
    global _in_flight
    with _lock:
        _in_flight += delta
        return _in_flight


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "plain-web"
    sys_version = ""
    backend = ""

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        parts = url.path.split("/")
        if len(parts) != 3 or parts[1] != "work" or not parts[2]:
            self.reply(404, {"app": "plain_web", "error": "not found"})
            return
        in_flight(1)
        try:
            self.work(parts[2], parse_qs(url.query))
        finally:
            in_flight(-1)

    def work(self, tag, query):
        calls = int(query.get("calls", ["1"])[0])
        delay_ms = int(query.get("delay_ms", ["0"])[0])
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        out = []
        for i in range(calls):
            path = f"/echo/{tag}/{i}"
            call = {"path": path, "status": 0, "in_flight": in_flight(0), "body": None, "error": None}
            try:
                with urllib.request.urlopen(self.backend + path, timeout=20) as r:
                    call["status"] = r.status
                    call["body"] = decode(r.read())
            except urllib.error.HTTPError as e:
                call["status"] = e.code
                call["body"] = decode(e.read())
            except Exception as e:  # report, never hang the client
                call["error"] = repr(e)
            out.append(call)
        status = 200 if all(c["status"] == 200 for c in out) else 502
        self.reply(
            status,
            {
                "app": "plain_web",
                "tag": tag,
                "thread": threading.current_thread().name,
                "headers": [[k, v] for k, v in self.headers.items()],
                "calls": out,
            },
        )

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        self.wfile.write(head + data)


def decode(raw):
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="0.0.0.0:8080", help="HOST:PORT to listen on")
    parser.add_argument("--backend", required=True, help="base URL, e.g. http://10.1.2.3:8080")
    args = parser.parse_args()
    Handler.backend = args.backend.rstrip("/")
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if ":" in host:
        Server.address_family = socket.AF_INET6
    server = Server((host, int(port)), Handler)
    sys.stderr.write(f"plain_web: listening on {args.listen}\n")
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
