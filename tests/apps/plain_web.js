#!/usr/bin/env node
// Plain web tier for the context-propagation tests (Node.js): no tracing
// library, and it forwards no header at all. One event loop serves every
// request, so several requests are in flight on the same thread.
//
//     node plain_web.js --listen 0.0.0.0:8080 --backend http://10.1.2.3:8080
//
// GET /work/<tag>?calls=N&delay_ms=D (N default 1, D default 0) waits D ms
// (a timer: other requests are served meanwhile), then calls
// <backend>/echo/<tag>/<i> for i in 0..N one after another with http.request
// (the default agent), and answers JSON like plain_web.py:
//
//     {"app": "plain_web_js", "tag": "<tag>", "thread": "main",
//      "headers": [[name, value], ...],
//      "calls": [{"path": "/echo/<tag>/0", "status": 200, "in_flight": 3, "body": <backend JSON>, "error": null}]}
//
// in_flight is how many requests the app was serving when it made the call.
"use strict";

const http = require("http");

function flag(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const listen = flag("--listen", "0.0.0.0:8080");
const backend = flag("--backend", "").replace(/\/+$/, "");
if (!backend) {
  console.error("plain_web.js: --backend is required");
  process.exit(2);
}

let inFlight = 0;

function call(path) {
  const at = inFlight;
  return new Promise((resolve) => {
    const req = http.get(backend + path, { timeout: 20000 }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let body;
        try {
          body = JSON.parse(text);
        } catch (e) {
          body = text;
        }
        resolve({ path, status: res.statusCode, in_flight: at, body, error: null });
      });
      res.on("error", (e) => resolve({ path, status: 0, in_flight: at, body: null, error: String(e) }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (e) => resolve({ path, status: 0, in_flight: at, body: null, error: String(e) }));
  });
}

function reply(res, status, payload) {
  const data = Buffer.from(JSON.stringify(payload));
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": data.length });
  res.end(data);
}

async function handle(req, res) {
  const url = new URL(req.url, "http://localhost");
  const parts = url.pathname.split("/");
  if (parts.length !== 3 || parts[1] !== "work" || !parts[2]) {
    reply(res, 404, { app: "plain_web_js", error: "not found" });
    return;
  }
  const tag = parts[2];
  const calls = parseInt(url.searchParams.get("calls") || "1", 10);
  const delayMs = parseInt(url.searchParams.get("delay_ms") || "0", 10);
  if (delayMs > 0) {
    await new Promise((r) => setTimeout(r, delayMs));
  }
  const out = [];
  for (let i = 0; i < calls; i++) {
    out.push(await call(`/echo/${tag}/${i}`));
  }
  const headers = [];
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
  }
  const ok = out.every((c) => c.status === 200);
  reply(res, ok ? 200 : 502, { app: "plain_web_js", tag, thread: "main", headers, calls: out });
}

const server = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    inFlight++;
    handle(req, res)
      .catch((e) => reply(res, 500, { app: "plain_web_js", error: String(e) }))
      .finally(() => inFlight--);
  });
});
server.keepAliveTimeout = 60000;
const colon = listen.lastIndexOf(":");
const host = listen.slice(0, colon).replace(/[[\]]/g, "") || "0.0.0.0";
server.listen({ host, port: parseInt(listen.slice(colon + 1), 10), backlog: 1024 }, () => {
  console.error(`plain_web.js: listening on ${listen}`);
});
