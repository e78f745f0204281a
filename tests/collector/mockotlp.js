#!/usr/bin/env node
// Runs @elastic/mockotlpserver (a third-party OTLP receiver from the npm registry)
// on a free OTLP/gRPC port and prints what it receives, for hoptrace's tests:
//
//   node mockotlp.js
//   listening http://127.0.0.1:41235
//   {"trace_id":"…","span_id":"…","parent_span_id":"…","name":"GET","kind":"SPAN_KIND_SERVER",
//    "status":"STATUS_CODE_UNSET","attributes":{…},"resource":{…}}
//
// One JSON line per received span, from the server's own decoding
// (normalizeTrace), so the test checks what a collector other than ours made of
// the agent's export requests. Exits when stdin closes (the test ended).
'use strict';

const {MockOtlpServer, normalizeTrace} = require('@elastic/mockotlpserver');

function hex(id) {
    if (id == null) return '';
    if (typeof id === 'string') return id;
    return Buffer.from(id).toString('hex');
}

function onTrace(request) {
    const norm = normalizeTrace(request);
    for (const rs of norm.resourceSpans || []) {
        const resource = (rs.resource && rs.resource.attributes) || {};
        for (const ss of rs.scopeSpans || []) {
            for (const span of ss.spans || []) {
                const line = {
                    trace_id: hex(span.traceId),
                    span_id: hex(span.spanId),
                    parent_span_id: hex(span.parentSpanId),
                    name: span.name,
                    kind: span.kind,
                    status: (span.status && span.status.code) || 'STATUS_CODE_UNSET',
                    attributes: span.attributes || {},
                    resource,
                    scope: (ss.scope && ss.scope.name) || '',
                };
                process.stdout.write(JSON.stringify(line) + '\n');
            }
        }
    }
}

async function main() {
    const server = new MockOtlpServer({
        logLevel: 'warn',
        services: ['grpc'],
        grpcHostname: '127.0.0.1',
        grpcPort: 0,
        onTrace,
    });
    await server.start();
    process.stdout.write(`listening ${server.grpcUrl}\n`);
    process.stdin.resume();
    process.stdin.on('end', () => {
        server.close().finally(() => process.exit(0));
    });
}

main().catch((err) => {
    process.stderr.write(`mockotlp.js: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
});
