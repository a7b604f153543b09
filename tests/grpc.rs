//! gRPC through weir with a tonic server and client: every call shape over h2c and h2/TLS,
//! statuses and trailers passed through, `grpc-timeout`, weir's own failures in gRPC form, and the
//! gRPC health-checking probe (against tonic-health).

mod support;

use std::time::{Duration, Instant};

use support::control::{closed_port, Admin};
use support::grpc::{self, num, GrpcBackend, Num};
use support::tlsutil::TestCert;
use support::{Weir, WAIT};
use tokio::time::timeout;
use tonic::{Code, Request};

fn config(listener_extra: &str, pool_extra: &str, route_extra: &str, servers: &[String]) -> String {
    let servers: String = servers
        .iter()
        .map(|a| format!("      - address: \"{a}\"\n"))
        .collect();
    format!(
        "admin:\n  bind: \"127.0.0.1:0\"\n\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n{listener_extra}\
         pools:\n  p:\n    protocol: http2\n{pool_extra}    servers:\n{servers}\
         routes:\n  - name: grpc\n    match:\n      path_prefix: \"/\"\n    pool: p\n{route_extra}"
    )
}

/// Every call shape, an error status with its trailer metadata, in order and interactively.
async fn exercise(c: &mut grpc::Client) {
    let r = grpc::unary(c, Request::new(num(21))).await.expect("unary");
    assert_eq!(r.into_inner().n, 42);

    let e = grpc::unary(c, Request::new(num(-1)))
        .await
        .expect_err("negative fails");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.message(), "negative number -1");
    assert_eq!(
        e.metadata().get("x-detail").and_then(|v| v.to_str().ok()),
        Some("from-calc"),
        "trailer metadata passed through"
    );

    let mut s = grpc::count(c, 5)
        .await
        .expect("server streaming")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = timeout(WAIT, s.message())
        .await
        .unwrap()
        .expect("stream item")
    {
        got.push(m.n);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    let nums = futures_util::stream::iter((1..=10).map(num));
    let r = grpc::sum(c, nums).await.expect("client streaming");
    assert_eq!(r.into_inner().n, 55);

    // Bidi, lock-step: each answer arrives before the next message is sent, so nothing in
    // between may buffer the stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<Num>(1);
    let rx = tokio_stream::wrappers::ReceiverStream::new(rx);
    tx.send(num(0)).await.unwrap();
    let mut replies = grpc::echo(c, rx).await.expect("bidi").into_inner();
    for i in 0..10 {
        let m = timeout(WAIT, replies.message())
            .await
            .expect("reply in time")
            .expect("reply")
            .expect("not the end");
        assert_eq!(m.n, i + 1);
        if i < 9 {
            tx.send(num(i + 1)).await.unwrap();
        }
    }
    drop(tx);
    assert!(timeout(WAIT, replies.message())
        .await
        .unwrap()
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_call_shapes_over_h2c() {
    let b = GrpcBackend::start().await;
    let weir = Weir::start(&config("", "", "", &[b.addr.to_string()])).await;
    let mut c = grpc::h2c_client(weir.addr()).await;
    exercise(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_call_shapes_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new(dir.path());
    let b = GrpcBackend::start().await;
    let weir = Weir::start(&config(&cert.listener_tls(), "", "", &[b.addr.to_string()])).await;
    let tls = cert.connect(weir.addr(), &["h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut c = grpc::client_on(tls, "localhost").await;
    exercise(&mut c).await;
}

/// An h2c server that answers nothing for 30 s and ignores `grpc-timeout`, so only weir can end
/// the call.
async fn silent_h2_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(support::empty()))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_caps_the_route_timeout() {
    let (addr, _task) = silent_h2_backend().await;
    let weir = Weir::start(&config("", "", "    timeout: 60s\n", &[addr.to_string()])).await;
    let mut c = grpc::h2c_client(weir.addr()).await;
    let mut req = Request::new(num(1));
    // Sent as a header only: tonic's client does not enforce it locally this way.
    req.metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let start = Instant::now();
    let e = timeout(WAIT, grpc::unary(&mut c, req))
        .await
        .expect("weir answers well before the route's 60 s")
        .expect_err("deadline");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    weir.expect_access_log(200, Some("grpc")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weirs_own_failures_are_grpc_statuses() {
    // The route timeout itself (no grpc-timeout) gives DEADLINE_EXCEEDED too.
    let (addr, _task) = silent_h2_backend().await;
    let weir = Weir::start(&config("", "", "    timeout: 300ms\n", &[addr.to_string()])).await;
    let mut c = grpc::h2c_client(weir.addr()).await;
    let e = grpc::unary(&mut c, Request::new(num(1))).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.message().contains("deadline"), "{e:?}");
    drop(weir);

    // A server that refuses connections: UNAVAILABLE, trailers-only (HTTP 200, no body).
    let weir = Weir::start(&config("", "", "", &[closed_port().to_string()])).await;
    let mut c = grpc::h2c_client(weir.addr()).await;
    let e = grpc::unary(&mut c, Request::new(num(1))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let req = http::Request::post(format!("http://{}/test.Calc/Unary", weir.addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(support::full(vec![0u8, 0, 0, 0, 0]))
        .unwrap();
    let r = support::h2c_send(weir.addr(), req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status").as_deref(), Some("14"));
    assert!(r
        .header("grpc-message")
        .is_some_and(|m| m.contains("connecting")));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/grpc")
    );
    assert!(r.body.is_empty());

    // The same failure for a plain HTTP request stays a 502 page.
    let req = http::Request::get(format!("http://{}/", weir.addr()))
        .body(support::empty())
        .unwrap();
    assert_eq!(
        support::h2c_send(weir.addr(), req).await.unwrap().status,
        502
    );
}

async fn healthy(admin: &Admin, addr: std::net::SocketAddr) -> bool {
    admin.server("p", addr).await["healthy"] == serde_json::Value::Bool(true)
}

async fn until_healthy(admin: &Admin, addr: std::net::SocketAddr, want: bool) {
    support::eventually(&format!("healthy == {want}"), WAIT, || async {
        healthy(admin, addr).await == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_probe_follows_serving_status() {
    let mut b = GrpcBackend::start().await;
    let health = "    health:\n      grpc: true\n      grpc_service: test.Calc\n      \
                  interval: 200ms\n      timeout: 150ms\n      healthy_after: 1\n      \
                  unhealthy_after: 1\n      initial: unhealthy\n";
    let weir = Weir::start(&config("", health, "", &[b.addr.to_string()])).await;
    let admin = Admin::of(&weir).await;
    until_healthy(&admin, b.addr, true).await;
    let mut c = grpc::h2c_client(weir.addr()).await;
    assert_eq!(
        grpc::unary(&mut c, Request::new(num(2)))
            .await
            .unwrap()
            .into_inner()
            .n,
        4
    );

    b.health
        .set_service_status("test.Calc", tonic_health::ServingStatus::NotServing)
        .await;
    until_healthy(&admin, b.addr, false).await;
    let e = grpc::unary(&mut c, Request::new(num(2))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "no healthy server: {e:?}");
    let detail = admin.server("p", b.addr).await["last_probe"].to_string();
    assert!(
        detail.contains("SERVING") || detail.contains("status 2"),
        "{detail}"
    );

    b.health
        .set_service_status("test.Calc", tonic_health::ServingStatus::Serving)
        .await;
    until_healthy(&admin, b.addr, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_probe_of_an_unknown_service_fails() {
    let b = GrpcBackend::start().await;
    let health = "    health:\n      grpc: true\n      grpc_service: no.Such\n      \
                  interval: 200ms\n      timeout: 150ms\n      healthy_after: 1\n      \
                  unhealthy_after: 1\n";
    let weir = Weir::start(&config("", health, "", &[b.addr.to_string()])).await;
    let admin = Admin::of(&weir).await;
    until_healthy(&admin, b.addr, false).await;
    let detail = admin.server("p", b.addr).await["last_probe"].to_string();
    assert!(detail.contains("grpc-status 5"), "NOT_FOUND: {detail}");
}
