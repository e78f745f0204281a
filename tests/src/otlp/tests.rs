use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use tonic::transport::{Channel, ClientTlsConfig};

const WAIT: Duration = Duration::from_secs(10);

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// A request with `n` spans of trace 0102..10, span ids 1..=n, span k the
/// child of span k-1.
fn request(n: u8) -> ExportTraceServiceRequest {
    let trace_id: Vec<u8> = (1..=16).collect();
    let spans = (1..=n)
        .map(|k| Span {
            trace_id: trace_id.clone(),
            span_id: vec![0, 0, 0, 0, 0, 0, 0, k],
            parent_span_id: if k == 1 {
                vec![]
            } else {
                vec![0, 0, 0, 0, 0, 0, 0, k - 1]
            },
            name: format!("GET /{k}"),
            kind: if k % 2 == 1 {
                span::SpanKind::Server as i32
            } else {
                span::SpanKind::Client as i32
            },
            start_time_unix_nano: 1_000 + u64::from(k),
            end_time_unix_nano: 2_000 - u64::from(k),
            attributes: vec![
                kv("http.request.method", s("GET")),
                kv("http.response.status_code", any_value::Value::IntValue(503)),
                kv("ok", any_value::Value::BoolValue(false)),
                kv("ratio", any_value::Value::DoubleValue(0.5)),
                kv(
                    "list",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(s("a")),
                            },
                            AnyValue {
                                value: Some(any_value::Value::IntValue(2)),
                            },
                        ],
                    }),
                ),
                kv(
                    "map",
                    any_value::Value::KvlistValue(KeyValueList {
                        values: vec![kv("k", s("v"))],
                    }),
                ),
                kv("raw", any_value::Value::BytesValue(vec![0xab, 0x01])),
            ],
            status: Some(Status {
                message: "upstream said 503".into(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("hoptrace-proxy")),
                    kv("k8s.pod.name", s("client")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "hoptrace".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

struct Client {
    endpoint: String,
    tls: Option<ClientTlsConfig>,
    gzip: bool,
    headers: Vec<(&'static str, &'static str)>,
}

impl Client {
    fn plain(endpoint: String) -> Client {
        Client {
            endpoint,
            tls: None,
            gzip: false,
            headers: vec![],
        }
    }

    fn export(&self, n: u8) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        rt.block_on(async {
            let mut ep = Channel::from_shared(self.endpoint.clone())
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(5));
            if let Some(tls) = &self.tls {
                ep = ep.tls_config(tls.clone()).map_err(|e| e.to_string())?;
            }
            let channel = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
            let mut client = TraceServiceClient::new(channel);
            if self.gzip {
                client = client.send_compressed(CompressionEncoding::Gzip);
            }
            let mut req = tonic::Request::new(request(n));
            for (k, v) in &self.headers {
                req.metadata_mut()
                    .insert(*k, v.parse().map_err(|_| "bad header".to_string())?);
            }
            client
                .export(req)
                .await
                .map(|_| ())
                .map_err(|st| format!("{:?}: {}", st.code(), st.message()))
        })
    }
}

#[test]
fn plain_receives_and_flattens_spans() {
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
    assert!(
        otlp.endpoint().starts_with("http://127.0.0.1:"),
        "{}",
        otlp.endpoint()
    );
    assert_eq!(otlp.ca_file(), None);
    assert_eq!(
        otlp.agent_args(),
        vec!["--otlp-endpoint".to_owned(), otlp.endpoint()]
    );
    let mut client = Client::plain(otlp.endpoint());
    client.headers = vec![("x-tenant", "lab"), ("authorization", "Bearer t0k")];
    client.export(3).expect("export");

    let spans = otlp.wait_for_spans(3, WAIT).expect("3 spans");
    assert_eq!(otlp.requests(), 1);
    let first = &spans[0];
    assert_eq!(first.trace_id, "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(first.span_id, "0000000000000001");
    assert_eq!(first.parent_span_id, "");
    assert_eq!(spans[1].parent_span_id, "0000000000000001");
    assert_eq!(first.kind, SpanKind::Server);
    assert_eq!(spans[1].kind, SpanKind::Client);
    assert_eq!(first.name, "GET /1");
    assert_eq!((first.start_unix_nano, first.end_unix_nano), (1001, 1999));
    assert_eq!(first.status_code, StatusCode::Error);
    assert_eq!(first.status_message, "upstream said 503");
    assert_eq!(first.attr("http.request.method"), Some("GET"));
    assert_eq!(first.attr("http.response.status_code"), Some("503"));
    assert_eq!(first.attr("ok"), Some("false"));
    assert_eq!(first.attr("ratio"), Some("0.5"));
    assert_eq!(first.attr("list"), Some("[a, 2]"));
    assert_eq!(first.attr("map"), Some("{k: v}"));
    assert_eq!(first.attr("raw"), Some("ab01"));
    assert_eq!(first.res("service.name"), Some("hoptrace-proxy"));
    assert_eq!(first.res("k8s.pod.name"), Some("client"));
    assert_eq!(first.scope_name, "hoptrace");
    assert_eq!(otlp.trace("0102030405060708090A0B0C0D0E0F10").len(), 3);
    assert_eq!(
        otlp.wait_for_trace("0102030405060708090a0b0c0d0e0f10", 3, WAIT)
            .expect("trace")
            .len(),
        3
    );

    let headers = otlp.received_headers();
    assert_eq!(headers.get("x-tenant").map(String::as_str), Some("lab"));
    assert_eq!(
        headers.get("authorization").map(String::as_str),
        Some("Bearer t0k")
    );
    assert_eq!(headers.get("grpc-encoding"), None, "{headers:?}");

    otlp.clear();
    assert_eq!((otlp.spans().len(), otlp.requests()), (0, 0));
    let err = otlp
        .wait_for_spans(1, Duration::from_millis(50))
        .unwrap_err();
    assert!(format!("{err:#}").contains("1 spans not seen"), "{err:#}");
}

/// `idle_while` moves the receiver's threads to SCHED_IDLE and back, and the
/// receiver still answers meanwhile.
#[test]
fn idle_priority_while_held() {
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
    let policies = || -> Vec<libc::c_int> {
        let tids = otlp.threads.lock().expect("lock").clone();
        assert!(!tids.is_empty(), "the receiver's threads are known");
        // SAFETY: a thread id; -1 for one that exited.
        tids.iter()
            .map(|&t| unsafe { libc::sched_getscheduler(t) })
            .filter(|p| *p >= 0)
            .collect()
    };
    assert!(policies().iter().all(|p| *p == libc::SCHED_OTHER));
    {
        let _idle = otlp.idle_while();
        assert!(policies().iter().all(|p| *p == libc::SCHED_IDLE));
        Client::plain(otlp.endpoint()).export(2).expect("export");
        assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
    }
    assert!(policies().iter().all(|p| *p == libc::SCHED_OTHER));
}

#[test]
fn gzip_requests_are_accepted() {
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
    let mut client = Client::plain(otlp.endpoint());
    client.gzip = true;
    client.export(2).expect("gzip export");
    assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
    assert_eq!(
        otlp.received_headers()
            .get("grpc-encoding")
            .map(String::as_str),
        Some("gzip")
    );
}

#[test]
fn count_only_counts_spans_plain_and_gzip_and_honours_reject() {
    let otlp = OtlpReceiver::start(ReceiverOptions {
        keep_spans: false,
        ..ReceiverOptions::default()
    })
    .expect("start");
    let mut client = Client::plain(otlp.endpoint());
    client.export(3).expect("plain export");
    client.gzip = true;
    client.export(5).expect("gzip export");
    assert_eq!(otlp.wait_for_requests(2, WAIT).expect("requests"), 2);
    assert_eq!(otlp.span_count(), 8);
    assert!(otlp.spans().is_empty(), "count-only receiver kept spans");
    assert_eq!(
        otlp.received_headers()
            .get("grpc-encoding")
            .map(String::as_str),
        Some("gzip")
    );
    otlp.set_reject(true);
    let err = client
        .export(2)
        .expect_err("export accepted in reject mode");
    assert!(err.starts_with("Unavailable"), "{err}");
    assert_eq!((otlp.span_count(), otlp.rejected()), (8, 1));
}

#[test]
fn server_tls() {
    let otlp = OtlpReceiver::start(ReceiverOptions::tls(TlsMode::ServerTls)).expect("start");
    let pki = otlp.pki().expect("pki").clone();
    assert!(otlp.endpoint().starts_with("https://127.0.0.1:"));
    for f in [
        otlp.ca_file(),
        otlp.client_cert_file(),
        otlp.client_key_file(),
    ] {
        assert!(f.expect("file").is_file());
    }
    let args = otlp.agent_args();
    assert_eq!(args.len(), 4, "{args:?}");
    assert_eq!(args[2], "--otlp-ca-file");

    // By IP (the endpoint as given) and by name.
    let mut client = Client::plain(otlp.endpoint());
    client.tls = Some(ClientTlsConfig::new().ca_certificate(pki.ca_certificate()));
    client.export(1).expect("TLS export by IP");
    client.tls = Some(
        ClientTlsConfig::new()
            .ca_certificate(pki.ca_certificate())
            .domain_name("localhost"),
    );
    client.gzip = true;
    client.export(1).expect("TLS export by name, gzip");
    assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);

    // A client that does not trust the test CA fails, and so does plain text.
    let other = TestPki::generate(&otlp.dir.as_ref().expect("dir").join("other"), "untrusted")
        .expect("other pki");
    client.tls = Some(ClientTlsConfig::new().ca_certificate(other.ca_certificate()));
    assert!(client.export(1).is_err(), "untrusted server cert accepted");
    client.tls = None;
    client.endpoint = otlp.endpoint().replace("https://", "http://");
    assert!(
        client.export(1).is_err(),
        "plain text accepted on a TLS port"
    );
    assert_eq!(otlp.requests(), 2);
}

#[test]
fn mutual_tls_refuses_clients_without_a_valid_cert() {
    let otlp = OtlpReceiver::start(ReceiverOptions::tls(TlsMode::MutualTls)).expect("start");
    let pki = otlp.pki().expect("pki").clone();
    let args = otlp.agent_args();
    assert_eq!(args.len(), 8, "{args:?}");
    assert_eq!(
        (args[4].as_str(), args[6].as_str()),
        ("--otlp-client-cert", "--otlp-client-key")
    );

    let mut client = Client::plain(otlp.endpoint());
    client.tls = Some(ClientTlsConfig::new().ca_certificate(pki.ca_certificate()));
    let err = client
        .export(1)
        .expect_err("client without a cert accepted");
    eprintln!("no client cert: {err}");

    let other = TestPki::generate(&otlp.dir.as_ref().expect("dir").join("other"), "untrusted")
        .expect("other pki");
    client.tls = Some(
        ClientTlsConfig::new()
            .ca_certificate(pki.ca_certificate())
            .identity(other.client_identity()),
    );
    let err = client
        .export(1)
        .expect_err("client cert of another CA accepted");
    eprintln!("foreign client cert: {err}");
    assert_eq!(otlp.requests(), 0);

    client.tls = Some(
        ClientTlsConfig::new()
            .ca_certificate(pki.ca_certificate())
            .identity(pki.client_identity()),
    );
    client.gzip = true;
    client.export(2).expect("mTLS export");
    assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
    assert_eq!(otlp.requests(), 1);
}

#[test]
fn stop_and_restart_on_the_same_port() {
    let mut otlp = OtlpReceiver::start(ReceiverOptions::tls(TlsMode::ServerTls)).expect("start");
    let endpoint = otlp.endpoint();
    let mut client = Client::plain(endpoint.clone());
    client.tls =
        Some(ClientTlsConfig::new().ca_certificate(otlp.pki().expect("pki").ca_certificate()));
    client.export(1).expect("export before stop");

    otlp.stop();
    assert!(!otlp.is_running());
    assert!(
        std::net::TcpStream::connect(otlp.addr()).is_err(),
        "port still open after stop"
    );
    assert!(client.export(1).is_err(), "export succeeded while stopped");

    otlp.restart().expect("restart");
    assert!(otlp.is_running());
    assert_eq!(otlp.endpoint(), endpoint, "restart moved the receiver");
    client.export(1).expect("export after restart (same CA)");
    assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
    assert_eq!(otlp.requests(), 2);

    // Restart while running and while a connection is open is fine too.
    otlp.restart().expect("second restart");
    client.export(1).expect("export after second restart");
    assert_eq!(otlp.spans().len(), 3);
}

/// A long-lived client connection (as an exporter keeps) is cut by stop()
/// and the same channel gets through again after restart().
#[test]
fn stop_cuts_open_connections_and_a_channel_recovers() {
    let mut otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let _guard = rt.enter();
    let channel = Channel::from_shared(otlp.endpoint())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect_lazy();
    let export = |n: u8| {
        let mut client = TraceServiceClient::new(channel.clone());
        rt.block_on(client.export(request(n))).map(|_| ())
    };
    export(1).expect("export on a fresh channel");
    otlp.stop();
    let err = export(1).expect_err("export through a stopped receiver");
    eprintln!("while stopped: {:?} {}", err.code(), err.message());
    otlp.restart().expect("restart");
    let start = Instant::now();
    while export(1).is_err() {
        assert!(
            start.elapsed() < WAIT,
            "the channel never reconnected after restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(otlp.spans().len(), 2);
}

#[test]
fn reject_mode_answers_unavailable() {
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
    let client = Client::plain(otlp.endpoint());
    otlp.set_reject(true);
    let err = client
        .export(2)
        .expect_err("export accepted in reject mode");
    assert!(err.starts_with("Unavailable"), "{err}");
    assert_eq!(
        (otlp.requests(), otlp.rejected(), otlp.spans().len()),
        (1, 1, 0)
    );
    assert_eq!(otlp.wait_for_requests(1, WAIT).expect("requests"), 1);

    otlp.set_reject(false);
    client.export(2).expect("export after reject mode");
    assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
    assert_eq!((otlp.requests(), otlp.rejected()), (2, 1));
}
