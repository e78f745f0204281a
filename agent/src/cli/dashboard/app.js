// hoptrace dashboard: polls /api/* every 2.5 s, draws the topology as inline SVG,
// keeps each workload's history in the browser and relays /api/tap (SSE).
'use strict';

const SVGNS = 'http://www.w3.org/2000/svg';
const REFRESH_MS = 2500;
const HISTORY = 120;
const TAP_ROWS = 100;
const $ = (id) => document.getElementById(id);
const S = {
  status: {}, edges: [], workloads: [], routes: [], ticks: 0,
  selected: null, history: {}, traces: {}, tap: [], tapDirty: false,
};

function health(rate) {
  if (rate === null || rate === undefined) return 'ok';
  return rate >= 0.99 ? 'ok' : rate >= 0.9 ? 'warn' : 'bad';
}
const COLOUR = { ok: '#2e9d4f', warn: '#e69500', bad: '#d43d3d' };
const pct = (r) => (r === null || r === undefined ? '-' : (r * 100).toFixed(2) + '%');
const num = (v) => (v === null || v === undefined ? '-' : Number(v).toFixed(2));
const ms = (v) => (v === null || v === undefined ? '-' : Number(v).toFixed(v >= 100 ? 0 : 2) + 'ms');
const key = (ns, name) => ns + '/' + name;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function row(cells, attrs) {
  const tr = el('tr', attrs);
  for (const c of cells) {
    if (c instanceof Node) { const td = el('td'); td.appendChild(c); tr.appendChild(td); }
    else if (Array.isArray(c)) tr.appendChild(el('td', { class: c[1] }, c[0]));
    else tr.appendChild(el('td', {}, c));
  }
  return tr;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
  return r.json();
}

async function refresh() {
  try {
    const [status, edges, workloads, routes] = await Promise.all([
      getJSON('/api/status'), getJSON('/api/edges'), getJSON('/api/workloads'), getJSON('/api/routes'),
    ]);
    Object.assign(S, { status, edges, workloads, routes });
    S.ticks += 1;
    const now = Date.now();
    for (const w of workloads) {
      const h = (S.history[key(w.namespace, w.name)] ||= []);
      h.push({ t: now, success: w.success_rate, rps: w.rps, p99: w.latency_ms_p99 });
      if (h.length > HISTORY) h.shift();
    }
    $('error').textContent = status.error ? 'error: ' + status.error : '';
    $('source').textContent = status.source + ' (window ' + status.window_s + 's)';
  } catch (e) {
    $('error').textContent = String(e);
  }
  render();
  const u = $('updated');
  u.dataset.count = String(S.ticks);
  u.textContent = '#' + S.ticks + ' at ' + new Date().toLocaleTimeString();
}

function namespaces() {
  const set = new Set();
  for (const e of S.edges) { set.add(e.src_namespace); set.add(e.dst_namespace); }
  for (const w of S.workloads) set.add(w.namespace);
  const select = $('namespace');
  const have = new Set([...select.options].map((o) => o.value));
  for (const ns of [...set].sort()) if (!have.has(ns)) select.appendChild(el('option', { value: ns }, ns));
  return select.value;
}

function render() {
  const ns = namespaces();
  drawGraph(ns);
  drawWorkload();
}

function graphModel(ns) {
  const edges = S.edges.filter((e) => !ns || e.src_namespace === ns || e.dst_namespace === ns);
  const nodes = new Map();
  const add = (n, name) => { if (!nodes.has(key(n, name))) nodes.set(key(n, name), { ns: n, name, depth: 0 }); };
  for (const w of S.workloads) if (!ns || w.namespace === ns) add(w.namespace, w.name);
  for (const e of edges) { add(e.src_namespace, e.src); add(e.dst_namespace, e.dst); }
  // Columns by call depth: the longest path from a caller (bounded, for cycles).
  const n = nodes.size;
  for (let i = 0; i < n; i++) {
    for (const e of edges) {
      const s = nodes.get(key(e.src_namespace, e.src));
      const d = nodes.get(key(e.dst_namespace, e.dst));
      if (s !== d && d.depth < s.depth + 1 && s.depth + 1 < n) d.depth = s.depth + 1;
    }
  }
  return { nodes, edges };
}

const NODE_W = 170, NODE_H = 54, COL_W = 340, ROW_H = 90;

function drawGraph(ns) {
  const { nodes, edges } = graphModel(ns);
  const cols = [];
  for (const node of [...nodes.values()].sort((a, b) => key(a.ns, a.name).localeCompare(key(b.ns, b.name)))) {
    (cols[node.depth] ||= []).push(node);
  }
  cols.forEach((col, c) => col.forEach((node, r) => { node.x = 20 + c * COL_W; node.y = 20 + r * ROW_H; }));
  const rows = Math.max(1, ...cols.map((c) => (c ? c.length : 0)));
  const g = $('graph');
  g.setAttribute('viewBox', `0 0 ${Math.max(600, 40 + cols.length * COL_W)} ${Math.max(200, 40 + rows * ROW_H)}`);
  g.style.height = Math.max(200, 40 + rows * ROW_H) + 'px';
  $('graph-empty').hidden = nodes.size > 0;
  const workloads = new Map(S.workloads.map((w) => [key(w.namespace, w.name), w]));

  const eg = $('edges');
  eg.replaceChildren();
  for (const e of edges) {
    const s = nodes.get(key(e.src_namespace, e.src));
    const d = nodes.get(key(e.dst_namespace, e.dst));
    const h = health(e.success_rate);
    const id = key(e.src_namespace, e.src) + '->' + key(e.dst_namespace, e.dst);
    const grp = svg('g', { class: 'edge', 'data-edge': id, 'data-health': h });
    const x1 = s.x + NODE_W, y1 = s.y + NODE_H / 2, x2 = d.x, y2 = d.y + NODE_H / 2;
    const bend = x2 > x1 ? 0 : 60;
    const c1 = [x1 + 60 + bend, y1 - bend], c2 = [x2 - 60 - bend, y2 - bend];
    const path = `M${x1},${y1} C${c1[0]},${c1[1]} ${c2[0]},${c2[1]} ${x2 - 2},${y2}`;
    // The curve's point at t = 0.5, for the label.
    const mx = (x1 + 3 * c1[0] + 3 * c2[0] + x2) / 8, my = (y1 + 3 * c1[1] + 3 * c2[1] + y2) / 8;
    const width = 1.5 + Math.min(7, Math.log2(1 + (e.rps || 0)) * 1.2);
    grp.appendChild(svg('path', { d: path, stroke: COLOUR[h], 'stroke-width': width.toFixed(1), 'marker-end': `url(#arrow-${h})` }));
    grp.appendChild(svg('text', { x: mx, y: my - 8, 'text-anchor': 'middle' },
      `${num(e.rps)} rps · ${pct(e.success_rate)}`));
    grp.appendChild(svg('title', {}, `${id}\nsuccess ${pct(e.success_rate)}, ${num(e.rps)} rps, p99 ${ms(e.latency_ms_p99)}`));
    grp.addEventListener('click', () => showEdge(e));
    eg.appendChild(grp);
  }

  const ng = $('nodes');
  ng.replaceChildren();
  for (const node of nodes.values()) {
    const k = key(node.ns, node.name);
    const w = workloads.get(k);
    const h = health(w ? w.success_rate : null);
    const grp = svg('g', { class: 'node' + (S.selected === k ? ' selected' : ''), 'data-node': k, 'data-health': h, transform: `translate(${node.x},${node.y})` });
    grp.appendChild(svg('rect', { width: NODE_W, height: NODE_H, rx: 6 }));
    grp.appendChild(svg('text', { x: 10, y: 20, 'font-weight': 'bold' }, node.name));
    grp.appendChild(svg('text', { x: 10, y: 36, 'font-size': 11, fill: '#667' }, node.ns));
    grp.appendChild(svg('text', { x: 10, y: 49, 'font-size': 11, fill: COLOUR[h] },
      w ? `${pct(w.success_rate)} · ${num(w.rps)} rps` : 'client only'));
    grp.addEventListener('click', () => select(k));
    ng.appendChild(grp);
  }
}

function showEdge(e) {
  const d = $('edge-detail');
  d.replaceChildren(el('h3', {}, `${key(e.src_namespace, e.src)} → ${key(e.dst_namespace, e.dst)}`),
    el('div', { class: health(e.success_rate) },
      `success ${pct(e.success_rate)} · ${num(e.rps)} rps · p99 ${ms(e.latency_ms_p99)} · traced ${e.traced ? 'yes' : 'no'}`));
}

function select(k) {
  S.selected = k;
  if (location.hash !== '#workload=' + k) history.replaceState(null, '', '#workload=' + k);
  render();
}

function spark(id, points, field) {
  const g = $(id);
  g.replaceChildren();
  const vals = points.map((p) => p[field]).filter((v) => v !== null && v !== undefined);
  if (vals.length === 0) return;
  const W = 160, H = 36, lo = Math.min(...vals), hi = Math.max(...vals);
  const span = hi - lo || 1;
  const pts = vals.map((v, i) => `${vals.length === 1 ? W : (i * W) / (vals.length - 1)},${H - 4 - ((v - lo) / span) * (H - 8)}`);
  g.setAttribute('viewBox', `0 0 ${W} ${H}`);
  g.appendChild(svg('polyline', { points: pts.join(' '), fill: 'none', stroke: '#3b6fd4', 'stroke-width': 1.5 }));
  g.appendChild(svg('title', {}, `last ${vals[vals.length - 1]}, min ${lo}, max ${hi}`));
}

function traceLink(id) {
  const t = S.status.trace_url;
  if (!t || !/^https?:\/\//.test(t)) return el('span', {}, id);
  return el('a', { href: t.replace('{trace_id}', encodeURIComponent(id)), target: '_blank', rel: 'noopener' }, id);
}

function drawWorkload() {
  const k = S.selected;
  $('workload-empty').hidden = !!k;
  $('workload-body').hidden = !k;
  if (!k) return;
  const [ns, name] = [k.slice(0, k.indexOf('/')), k.slice(k.indexOf('/') + 1)];
  $('workload-title').textContent = 'Workload ' + k;
  const w = S.workloads.find((x) => x.namespace === ns && x.name === name);
  $('workload-metrics').replaceChildren(w
    ? el('div', { class: health(w.success_rate) }, `success ${pct(w.success_rate)} · ${num(w.rps)} rps · p50 ${ms(w.latency_ms_p50)} · p95 ${ms(w.latency_ms_p95)} · p99 ${ms(w.latency_ms_p99)} · TCP ${w.tcp_conn ?? '-'}`)
    : el('div', { class: 'empty' }, 'no inbound requests in the window'));
  const h = S.history[k] || [];
  spark('spark-success', h, 'success');
  spark('spark-rps', h, 'rps');
  spark('spark-p99', h, 'p99');
  const rb = $('routes').tBodies[0];
  rb.replaceChildren(...S.routes.filter((r) => r.namespace === ns && r.name === name).map((r) =>
    row([r.route, [pct(r.success_rate), 'num ' + health(r.success_rate)], [num(r.rps), 'num'], [ms(r.latency_ms_p50), 'num'], [ms(r.latency_ms_p99), 'num']], { 'data-route': r.route })));
  const eb = $('workload-edges').tBodies[0];
  eb.replaceChildren(...S.edges.filter((e) => key(e.src_namespace, e.src) === k || key(e.dst_namespace, e.dst) === k).map((e) =>
    row([key(e.src_namespace, e.src), key(e.dst_namespace, e.dst), [pct(e.success_rate), 'num ' + health(e.success_rate)], [num(e.rps), 'num'], [ms(e.latency_ms_p99), 'num']])));
  const tr = S.traces[k] || [];
  $('traces').replaceChildren(...(tr.length ? tr.slice().reverse().map((t) => {
    const li = el('li');
    li.appendChild(traceLink(t.trace_id));
    li.appendChild(document.createTextNode(` ${t.method} ${t.path} → ${t.status} (${ms(t.latency_ms)})`));
    return li;
  }) : [el('li', { class: 'empty' }, 'none seen by the tap yet (agents need --tap; only traced requests)')]));
}

function tapLine(l) {
  if (l.dropped !== undefined) { $('tap-notice').textContent = `the agent dropped ${l.dropped} requests (this page fell behind)`; return; }
  $('tap-notice').textContent = '';
  S.tap.push(l);
  if (S.tap.length > TAP_ROWS) S.tap.shift();
  if (l.trace_id) {
    for (const k of [key(l.server_namespace, l.server), key(l.client_namespace, l.client)]) {
      const list = (S.traces[k] ||= []);
      if (!list.some((t) => t.trace_id === l.trace_id)) list.push(l);
      if (list.length > 10) list.shift();
    }
  }
  if (!S.tapDirty) { S.tapDirty = true; setTimeout(drawTap, 300); }
}

function drawTap() {
  S.tapDirty = false;
  const f = $('tap-filter').value.trim().toLowerCase();
  const rows = S.tap.filter((l) => !f || [l.client, l.server, l.method, l.path, l.status, l.direction].join(' ').toLowerCase().includes(f));
  $('tap').tBodies[0].replaceChildren(...rows.slice(-TAP_ROWS).reverse().map((l) => row([
    new Date(l.ts_ms).toLocaleTimeString(), l.direction, key(l.client_namespace, l.client), key(l.server_namespace, l.server),
    l.method, l.path, [String(l.status), 'num ' + (l.outcome === 'success' ? 'ok' : 'bad')], [ms(l.latency_ms), 'num'],
    l.trace_id ? traceLink(l.trace_id) : '-',
  ], { 'data-tap': key(l.server_namespace, l.server) })));
}

function startTap() {
  const es = new EventSource('/api/tap');
  es.onmessage = (ev) => { try { tapLine(JSON.parse(ev.data)); } catch (e) { /* not JSON: ignore */ } };
  es.addEventListener('notice', (ev) => { $('tap-notice').textContent = ev.data; });
}

function fromHash() {
  const m = /^#workload=(.+)$/.exec(location.hash);
  if (m) S.selected = decodeURIComponent(m[1]);
}

window.addEventListener('hashchange', () => { fromHash(); render(); });
$('namespace').addEventListener('change', render);
$('tap-filter').addEventListener('input', drawTap);
fromHash();
refresh();
setInterval(refresh, REFRESH_MS);
startTap();
