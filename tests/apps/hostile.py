"""Hostile clients and a plain HTTP server for the lab's hostile-input tests.

Standard library only. Every client subcommand prints one JSON object on stdout.

  hostile.py serve --listen IP:PORT
      HTTP/1.1 server (threads): any method answers 200 with a JSON body
      {"headers": [[name, value], ...], "body_len": N}; `/sleep/<ms>` waits first.
  hostile.py connect --addr IP:PORT [--send TEXT] [--timeout S]
      One connection: how it ended ("refused", "reset", "eof", "data", "timeout")
      and after how many ms.
  hostile.py scan --ip IP --ports A-B [--timeout S]
      A connect to each port (one after another): outcome counts and the slowest ms.
  hostile.py hold --addr IP:PORT --count N --seconds S [--slowloris]
      Opens N connections (idle, or sending a request head one byte per second) and
      keeps them for S seconds: how many were accepted, refused/reset at once, and
      closed by the far end later (with the median ms at which they were).
  hostile.py loop --addr IP:PORT --interval-ms I --seconds S
      A GET on a new connection every I ms for S seconds: {"ok": N, "failed": N,
      "errors": [...first few]}.
  hostile.py raw --addr IP:PORT (--data-hex HEX | --data-file PATH) [--timeout S]
      Sends the bytes, reads the answer until EOF or timeout: status code and body.
"""

import argparse
import errno
import json
import socket
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def addr(s):
    host, port = s.rsplit(":", 1)
    return host.strip("[]"), int(port)


def now_ms():
    return time.monotonic() * 1000.0


def outcome_of(err):
    if isinstance(err, socket.timeout):
        return "timeout"
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    if isinstance(err, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(err, OSError) and err.errno == errno.ECONNREFUSED:
        return "refused"
    return "error:" + type(err).__name__


def one_connect(target, send, timeout):
    start = now_ms()
    s = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
    s.settimeout(timeout)
    try:
        s.connect(target)
        if send:
            s.sendall(send.encode())
        data = s.recv(65536)
        return ("data" if data else "eof"), now_ms() - start
    except Exception as e:  # noqa: BLE001 - the outcome is what we report
        return outcome_of(e), now_ms() - start
    finally:
        s.close()


def cmd_connect(a):
    out, ms = one_connect(addr(a.addr), a.send, a.timeout)
    print(json.dumps({"outcome": out, "ms": ms}))


def cmd_scan(a):
    lo, hi = (int(x) for x in a.ports.split("-"))
    counts, slowest = {}, 0.0
    for port in range(lo, hi + 1):
        out, ms = one_connect((a.ip, port), "", a.timeout)
        counts[out] = counts.get(out, 0) + 1
        slowest = max(slowest, ms)
    print(json.dumps({"counts": counts, "slowest_ms": slowest}))


def cmd_hold(a):
    target = addr(a.addr)
    socks, failed_at_once = [], 0
    for _ in range(a.count):
        s = socket.socket(socket.AF_INET)
        s.settimeout(5)
        try:
            s.connect(target)
            if a.slowloris:
                # The request line and a first field at once, right after the connect
                # (so the agent detects HTTP), then the rest one byte per second.
                s.sendall(b"GET / HTTP/1.1\r\nHost: victim\r\n")
            s.setblocking(False)
            socks.append(s)
        except Exception:  # noqa: BLE001
            failed_at_once += 1
            s.close()
    start = now_ms()
    # Let a reset sent right after the handshake arrive before counting survivors.
    time.sleep(0.5)
    closed = {}
    head = b"X-Slow: " + b"a" * 10000
    pos = 0
    while now_ms() - start < a.seconds * 1000:
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                if s.recv(4096) == b"":
                    closed[i] = now_ms() - start
            except BlockingIOError:
                pass
            except OSError:
                closed[i] = now_ms() - start
            if a.slowloris and i not in closed and pos < len(head):
                try:
                    s.send(head[pos:pos + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    closed[i] = now_ms() - start
        pos += 1
        time.sleep(1.0 if a.slowloris else 0.2)
    early = sum(1 for t in closed.values() if t < 600)
    later = [t for t in closed.values() if t >= 600]
    print(json.dumps({
        "opened": len(socks),
        "failed_at_once": failed_at_once,
        "reset_at_once": early,
        "closed_later": len(later),
        "closed_later_median_ms": statistics.median(later) if later else None,
        "still_open": len(socks) - len(closed),
    }))
    for s in socks:
        s.close()


def cmd_loop(a):
    target = addr(a.addr)
    ok, failed, errors = 0, 0, []
    end = now_ms() + a.seconds * 1000
    while now_ms() < end:
        s = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
        s.settimeout(5)
        try:
            s.connect(target)
            s.sendall(b"GET /loop HTTP/1.1\r\nHost: victim\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"HTTP/1.1 200"):
                ok += 1
            else:
                failed += 1
                errors.append(data[:80].decode("utf-8", "replace"))
        except Exception as e:  # noqa: BLE001
            failed += 1
            errors.append(repr(e))
        finally:
            s.close()
        time.sleep(a.interval_ms / 1000.0)
    print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:5]}))


def cmd_raw(a):
    target = addr(a.addr)
    s = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
    s.settimeout(a.timeout)
    start = now_ms()
    data = b""
    try:
        s.connect(target)
        if a.data_file:
            with open(a.data_file, "rb") as f:
                s.sendall(f.read())
        else:
            s.sendall(bytes.fromhex(a.data_hex))
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = None
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip())
                if length is not None and len(body) >= length:
                    break
        outcome = "eof"
    except Exception as e:  # noqa: BLE001
        outcome = outcome_of(e)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = None
    if data.startswith(b"HTTP/"):
        status = int(head.split(b" ", 2)[1])
    print(json.dumps({
        "outcome": outcome,
        "status": status,
        "ms": now_ms() - start,
        "body": body.decode("utf-8", "replace"),
    }))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        if self.path.startswith("/sleep/"):
            time.sleep(int(self.path.split("/")[2]) / 1000.0)
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                self.rfile.read(size + 2)
                n += size
                if size == 0:
                    break
        elif self.headers.get("Content-Length"):
            n = len(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"headers": list(self.headers.items()), "body_len": n}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = answer


def cmd_serve(a):
    host, port = addr(a.listen)
    ThreadingHTTPServer.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening", flush=True)
    while True:
        time.sleep(3600)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s = sub.add_parser("connect")
    s.add_argument("--addr", required=True)
    s.add_argument("--send", default="")
    s.add_argument("--timeout", type=float, default=5)
    s = sub.add_parser("scan")
    s.add_argument("--ip", required=True)
    s.add_argument("--ports", required=True)
    s.add_argument("--timeout", type=float, default=5)
    s = sub.add_parser("hold")
    s.add_argument("--addr", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--slowloris", action="store_true")
    s = sub.add_parser("loop")
    s.add_argument("--addr", required=True)
    s.add_argument("--interval-ms", type=float, default=100)
    s.add_argument("--seconds", type=float, required=True)
    s = sub.add_parser("raw")
    s.add_argument("--addr", required=True)
    s.add_argument("--data-hex", default="")
    s.add_argument("--data-file", default="")
    s.add_argument("--timeout", type=float, default=5)
    a = p.parse_args()
    {"serve": cmd_serve, "connect": cmd_connect, "scan": cmd_scan, "hold": cmd_hold,
     "raw": cmd_raw, "loop": cmd_loop}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
