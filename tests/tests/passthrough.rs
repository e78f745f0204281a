//! What the agent must not trace: application TLS and a non-HTTP protocol pass
//! through both proxies byte for byte and produce no span, even when the TLS
//! stream carries a traced-looking HTTP request inside.
//!
//! Lab: `client` (node-1) → `server` (node-2), one agent per node, both
//! exporting to the OTLP receiver. Absence of spans is asserted after a
//! control HTTP request whose spans did arrive.

mod common;

use common::pychain::{agent_with_otlp, APP_PORT};
use common::*;
use hoptrace_tests::otlp::{summarize, TestPki};
use hoptrace_tests::{
    labapp, require_root, tlsapp, ClientOptions, OtlpReceiver, PyApps, ReceiverOptions,
};
use std::time::Duration;

const TLS_PORT: u16 = 8443;
/// How long the control trace may take to reach the receiver.
const SPANS: Duration = Duration::from_secs(20);
/// Extra time for stray spans to arrive before the receiver is checked.
const SETTLE: Duration = Duration::from_millis(1500);

#[test]
fn tls_and_opaque_tcp_pass_byte_exact_without_spans() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(true);
    let pki = TestPki::generate(&lab.tmp_dir().join("app-tls"), "app TLS").expect("pki");
    let _tls = tlsapp::server(&server, TLS_PORT, &pki).expect("TLS echo server");
    let _echo = app
        .echo_server(&server, server.addr(ECHO_PORT))
        .expect("echo server");
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&server, APP_PORT).expect("backend.py");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent1 = agent_with_otlp(&lab, "node-1", &otlp, &[]);
    let agent2 = agent_with_otlp(&lab, "node-2", &otlp, &[]);
    let out0 = accepted(&agent1, "outbound", "client");
    let in0 = accepted(&agent2, "inbound", "server");

    // TLS 1.3 from the app, 1 MiB after an HTTP request with a traceparent, all
    // encrypted: echoed exactly, and the connection was steered on both sides.
    let report =
        tlsapp::client(&client, server.addr(TLS_PORT), &pki.ca_file, MIB).expect("TLS echo client");
    assert!(report.ok, "TLS echo through the agents: {report:?}");
    assert_eq!(report.tls_version.as_deref(), Some("TLSv1.3"), "{report:?}");
    assert_counted(&agent1, "outbound", "client", out0, 1);
    assert_counted(&agent2, "inbound", "server", in0, 1);

    // A non-HTTP protocol (random bytes, half-close) on its own connections.
    let r = app
        .echo_client(&client, server.addr(ECHO_PORT), MIB, 2, true)
        .expect("echo client");
    assert_echo(&r, 2, MIB);
    assert_counted(&agent1, "outbound", "client", out0, 3);
    assert_counted(&agent2, "inbound", "server", in0, 3);

    // Control: a traced HTTP request through the same agents arrives as four spans...
    let run = apps
        .client(&client, &backend.url("/control"), &ClientOptions::default())
        .expect("client.py");
    let control = run.requests[0].trace_id().expect("trace id").to_owned();
    otlp.wait_for_trace(&control, 4, SPANS)
        .expect("control spans");
    std::thread::sleep(SETTLE);
    // ...and it is all the receiver got: nothing from TLS or the opaque echo.
    let spans = otlp.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == control),
        "spans other than the control request's were exported:\n{}",
        summarize(&spans)
    );
    assert_eq!(spans.len(), 4, "control spans:\n{}", summarize(&spans));
    for agent in [&agent1, &agent2] {
        assert_settled(agent, "outbound", "client", 0.0);
        assert_settled(agent, "inbound", "server", 0.0);
    }
}
