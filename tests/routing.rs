//! Routing: every `match` condition, first match wins, 404 when nothing matches, path rewriting,
//! request/response header edits, and HTTP/2 prior-knowledge clients routed by `:authority`.

mod support;

use http::{Request, StatusCode, Version};
use support::config::{pool_per_backend, LISTENER};
use support::{empty, h2c_send, Backend, Weir};

/// Backends `a`, `b`, `c`, `d` each behind a pool of the same name, with `routes` appended.
async fn setup(n: usize, routes: &str) -> (Vec<Backend>, Weir) {
    let mut backends = Vec::new();
    for name in ["a", "b", "c", "d"].iter().take(n) {
        backends.push(Backend::start(name).await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
    let yaml = format!("{LISTENER}{}routes:\n{routes}", pool_per_backend(&refs));
    let weir = Weir::start(&yaml).await;
    (backends, weir)
}

const FALLBACK_B: &str = "  - name: fallback\n    match:\n      path_prefix: \"/\"\n    pool: b\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_exact() {
    let routes = format!(
        "  - name: api\n    match:\n      host: \"api.example.com\"\n    pool: a\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    assert_eq!(weir.get("api.example.com", "/").await.backend(), "a");
    assert_eq!(weir.get("www.example.com", "/").await.backend(), "b");
    assert_eq!(weir.get("api.example.com.evil", "/").await.backend(), "b");
    assert_eq!(weir.get("xapi.example.com", "/").await.backend(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ipv6_literal_in_brackets_matches_with_or_without_port() {
    let routes =
        format!("  - name: v6\n    match:\n      host: \"[::1]\"\n    pool: a\n{FALLBACK_B}");
    let (_b, weir) = setup(2, &routes).await;
    assert_eq!(weir.get("[::1]", "/").await.backend(), "a");
    assert_eq!(weir.get("[::1]:8080", "/").await.backend(), "a");
    assert_eq!(weir.get("[::2]:8080", "/").await.backend(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_wildcard_matches_one_label() {
    let routes = format!(
        "  - name: wild\n    match:\n      host: \"*.example.com\"\n    pool: a\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    assert_eq!(weir.get("a.example.com", "/").await.backend(), "a");
    assert_eq!(weir.get("shop.example.com", "/").await.backend(), "a");
    assert_eq!(
        weir.get("example.com", "/").await.backend(),
        "b",
        "the bare domain is not *.example.com"
    );
    assert_eq!(weir.get("a.example.org", "/").await.backend(), "b");
    assert_eq!(weir.get("aexample.com", "/").await.backend(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_list_means_any() {
    let routes = format!(
        "  - name: list\n    match:\n      host: [\"one.test\", \"two.test\"]\n    pool: a\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    assert_eq!(weir.get("one.test", "/").await.backend(), "a");
    assert_eq!(weir.get("two.test", "/").await.backend(), "a");
    assert_eq!(weir.get("three.test", "/").await.backend(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_case_insensitive_and_ignores_port() {
    let routes = format!(
        "  - name: api\n    match:\n      host: \"api.example.com\"\n    pool: a\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    assert_eq!(weir.get("API.Example.com:8080", "/").await.backend(), "a");
    assert_eq!(weir.get("api.example.com:80", "/").await.backend(), "a");
    assert_eq!(weir.get("API.EXAMPLE.COM", "/").await.backend(), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_is_segment_aware() {
    let routes = format!(
        "  - name: api\n    match:\n      path_prefix: \"/api\"\n    pool: a\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    assert_eq!(weir.get("h", "/api").await.backend(), "a");
    assert_eq!(weir.get("h", "/api/").await.backend(), "a");
    assert_eq!(weir.get("h", "/api/x").await.backend(), "a");
    assert_eq!(weir.get("h", "/api?x=1").await.backend(), "a");
    assert_eq!(
        weir.get("h", "/apix").await.backend(),
        "b",
        "/apix is not under /api"
    );
    assert_eq!(weir.get("h", "/ap").await.backend(), "b");
    assert_eq!(weir.get("h", "/").await.backend(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_exact() {
    let routes = format!(
        "  - name: login\n    match:\n      path_exact: \"/login\"\n    pool: a\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    assert_eq!(weir.get("h", "/login").await.backend(), "a");
    assert_eq!(
        weir.get("h", "/login?next=/x").await.backend(),
        "a",
        "the query is not part of the path"
    );
    assert_eq!(weir.get("h", "/login/").await.backend(), "b");
    assert_eq!(weir.get("h", "/login/x").await.backend(), "b");
    assert_eq!(weir.get("h", "/loginx").await.backend(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_regex() {
    let routes = format!(
        "  - name: versioned\n    match:\n      path_regex: \"^/v[0-9]+/\"\n    pool: a\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    assert_eq!(weir.get("h", "/v1/users").await.backend(), "a");
    assert_eq!(weir.get("h", "/v22/").await.backend(), "a");
    assert_eq!(weir.get("h", "/vx/users").await.backend(), "b");
    assert_eq!(weir.get("h", "/x/v1/").await.backend(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods() {
    let routes =
        format!("  - name: rw\n    match:\n      methods: [GET, POST]\n    pool: a\n{FALLBACK_B}");
    let (_b, weir) = setup(2, &routes).await;
    for (method, want) in [("GET", "a"), ("POST", "a"), ("DELETE", "b"), ("PUT", "b")] {
        let resp = weir
            .send(weir.request(method, "h", "/").body(empty()).unwrap())
            .await;
        assert_eq!(resp.backend(), want, "{method}");
        assert_eq!(resp.seen().method, method);
    }
}

/// Routes `exact` → a, `regex` → b, `present` → c, fallback → d, for headers, cookies or query.
fn three_forms(kind: &str) -> String {
    format!(
        "  - name: exact\n    match:\n      {kind}:\n        x-one: \"2\"\n    pool: a\n\
         \x20 - name: regex\n    match:\n      {kind}:\n        x-two: {{ regex: \"^acme-[0-9]+$\" }}\n    pool: b\n\
         \x20 - name: present\n    match:\n      {kind}:\n        x-three: {{ present: true }}\n    pool: c\n\
         \x20 - name: fallback\n    match:\n      path_prefix: \"/\"\n    pool: d\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exact_regex_present() {
    let (_b, weir) = setup(4, &three_forms("headers")).await;
    let get = |name: &'static str, value: &'static str| {
        let req = weir
            .request("GET", "h", "/")
            .header(name, value)
            .body(empty())
            .unwrap();
        weir.send(req)
    };
    assert_eq!(get("x-one", "2").await.backend(), "a");
    assert_eq!(
        get("X-One", "2").await.backend(),
        "a",
        "header names are case-insensitive"
    );
    assert_eq!(get("x-one", "3").await.backend(), "d");
    assert_eq!(get("x-one", "22").await.backend(), "d");
    assert_eq!(get("x-two", "acme-42").await.backend(), "b");
    assert_eq!(get("x-two", "acme-").await.backend(), "d");
    assert_eq!(get("x-two", "xacme-1").await.backend(), "d");
    assert_eq!(get("x-three", "").await.backend(), "c");
    assert_eq!(get("x-three", "anything").await.backend(), "c");
    assert_eq!(weir.get("h", "/").await.backend(), "d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_exact_regex_present() {
    let (_b, weir) = setup(4, &three_forms("cookies")).await;
    let get = |cookie: &'static str| {
        let req = weir
            .request("GET", "h", "/")
            .header("cookie", cookie)
            .body(empty())
            .unwrap();
        weir.send(req)
    };
    assert_eq!(get("x-one=2").await.backend(), "a");
    assert_eq!(get("session=abc; x-one=2; other=1").await.backend(), "a");
    assert_eq!(get("x-one=3").await.backend(), "d");
    assert_eq!(get("xx-one=2").await.backend(), "d");
    assert_eq!(get("theme=dark; x-two=acme-7").await.backend(), "b");
    assert_eq!(get("x-two=acme-x").await.backend(), "d");
    assert_eq!(get("x-three=whatever").await.backend(), "c");
    assert_eq!(get("unrelated=x-three").await.backend(), "d");
    assert_eq!(weir.get("h", "/").await.backend(), "d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_exact_regex_present() {
    let (_b, weir) = setup(4, &three_forms("query")).await;
    assert_eq!(weir.get("h", "/?x-one=2").await.backend(), "a");
    assert_eq!(weir.get("h", "/p?a=1&x-one=2&b=2").await.backend(), "a");
    assert_eq!(weir.get("h", "/?x-one=3").await.backend(), "d");
    assert_eq!(weir.get("h", "/?x-two=acme-12").await.backend(), "b");
    assert_eq!(weir.get("h", "/?x-two=acme-").await.backend(), "d");
    assert_eq!(weir.get("h", "/?x-three=").await.backend(), "c");
    assert_eq!(weir.get("h", "/?x-three=1").await.backend(), "c");
    assert_eq!(weir.get("h", "/?other=x-three").await.backend(), "d");
    assert_eq!(weir.get("h", "/").await.backend(), "d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_combine_with_and() {
    let routes = format!(
        "  - name: strict\n    match:\n      host: \"api.example.com\"\n      path_prefix: \"/v2\"\n      methods: [POST]\n      headers:\n        x-api-version: \"2\"\n    pool: a\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    let send = |host: &'static str, method: &'static str, path: &'static str, ver: &'static str| {
        let req = weir
            .request(method, host, path)
            .header("x-api-version", ver)
            .body(empty())
            .unwrap();
        weir.send(req)
    };
    assert_eq!(
        send("api.example.com", "POST", "/v2/x", "2")
            .await
            .backend(),
        "a"
    );
    assert_eq!(
        send("web.example.com", "POST", "/v2/x", "2")
            .await
            .backend(),
        "b"
    );
    assert_eq!(
        send("api.example.com", "GET", "/v2/x", "2").await.backend(),
        "b"
    );
    assert_eq!(
        send("api.example.com", "POST", "/v1/x", "2")
            .await
            .backend(),
        "b"
    );
    assert_eq!(
        send("api.example.com", "POST", "/v2/x", "1")
            .await
            .backend(),
        "b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_match_wins_in_order() {
    // Both routes match /api/v1/x; the first listed wins even though the second is more specific.
    let routes = "  - name: broad\n    match:\n      path_prefix: \"/api\"\n    pool: a\n\
                  \x20 - name: specific\n    match:\n      path_prefix: \"/api/v1\"\n    pool: b\n\
                  \x20 - name: rest\n    match:\n      path_prefix: \"/\"\n    pool: c\n";
    let (_b, weir) = setup(3, routes).await;
    assert_eq!(weir.get("h", "/api/v1/x").await.backend(), "a");
    assert_eq!(weir.get("h", "/other").await.backend(), "c");
    weir.expect_access_log(200, Some("broad")).await;

    // And the other way round.
    let routes = "  - name: specific\n    match:\n      path_prefix: \"/api/v1\"\n    pool: b\n\
                  \x20 - name: broad\n    match:\n      path_prefix: \"/api\"\n    pool: a\n";
    let (_b, weir) = setup(2, routes).await;
    assert_eq!(weir.get("h", "/api/v1/x").await.backend(), "b");
    assert_eq!(weir.get("h", "/api/v2/x").await.backend(), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_match_is_404_naming_no_internals() {
    let backend = Backend::start("secretbackend").await;
    let yaml = format!(
        "{LISTENER}pools:\n  secretpool:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: hiddenroute\n    match:\n      host: \"api.example.com\"\n    pool: secretpool\n",
        support::servers(&[&backend])
    );
    let weir = Weir::start(&yaml).await;
    let resp = weir.get("other.example.com", "/anything").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND, "body {:?}", resp.text());
    let body = resp.text();
    assert!(
        !body.is_empty() && body.len() < 256,
        "short body expected, got {body:?}"
    );
    let ctype = resp.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("text/plain"), "content-type {ctype:?}");
    for secret in [
        "secretpool",
        "hiddenroute",
        "secretbackend",
        "127.0.0.1",
        &backend.addr.port().to_string(),
    ] {
        assert!(!body.contains(secret), "404 body {body:?} names {secret}");
    }
    assert_eq!(backend.requests(), 0);
    weir.expect_access_log(404, None).await;
    // The route still works for its host.
    assert_eq!(
        weir.get("api.example.com", "/").await.backend(),
        "secretbackend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_rewrites_path_and_keeps_query() {
    let routes = format!(
        "  - name: api\n    match:\n      path_prefix: \"/api\"\n    pool: a\n    strip_prefix: \"/api\"\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    let seen = weir.get("h", "/api/users").await.seen();
    assert_eq!((seen.backend.as_str(), seen.uri.as_str()), ("a", "/users"));
    let seen = weir.get("h", "/api/users/7?x=1&y=two").await.seen();
    assert_eq!(seen.uri, "/users/7?x=1&y=two");
    let seen = weir.get("h", "/api").await.seen();
    assert_eq!(seen.uri, "/", "stripping the whole path leaves /");
    let seen = weir.get("h", "/api?q=1").await.seen();
    assert_eq!(seen.uri, "/?q=1");
    // Routes without strip_prefix forward the path untouched.
    let seen = weir.get("h", "/apix/users?z=1").await.seen();
    assert_eq!(
        (seen.backend.as_str(), seen.uri.as_str()),
        ("b", "/apix/users?z=1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_set_add_remove() {
    let routes = "  - name: edit\n    match:\n      path_prefix: \"/\"\n    pool: a\n    request_headers:\n      set:\n        x-service: api\n        x-new: fresh\n      add:\n        x-added: from-weir\n      remove: [x-debug]\n";
    let (_b, weir) = setup(1, routes).await;
    let req = weir
        .request("GET", "h", "/")
        .header("x-service", "client")
        .header("x-added", "orig")
        .header("x-debug", "1")
        .header("x-untouched", "same")
        .body(empty())
        .unwrap();
    let seen = weir.send(req).await.seen();
    assert_eq!(
        seen.headers.get("x-service"),
        Some(&vec!["api".to_string()]),
        "set replaces"
    );
    assert_eq!(seen.header("x-new").as_deref(), Some("fresh"));
    let mut added = seen.header_elements("x-added");
    added.sort();
    assert_eq!(
        added,
        ["from-weir", "orig"],
        "add keeps the client's value: {:?}",
        seen.headers
    );
    assert!(!seen.has("x-debug"), "remove: {:?}", seen.headers);
    assert_eq!(seen.header("x-untouched").as_deref(), Some("same"));

    // Without the client's headers: set and add still apply.
    let seen = weir.get("h", "/").await.seen();
    assert_eq!(seen.header("x-service").as_deref(), Some("api"));
    assert_eq!(seen.header("x-added").as_deref(), Some("from-weir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_set_add_remove() {
    let backend = Backend::builder("a")
        .response_header("x-origin", "backend")
        .response_header("x-multi", "one")
        .response_header("x-drop-me", "1")
        .response_header("x-untouched", "same")
        .start()
        .await;
    let yaml = format!(
        "{LISTENER}pools:\n  a:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: edit\n    match:\n      path_prefix: \"/\"\n    pool: a\n    response_headers:\n      set:\n        x-origin: weir\n        strict-transport-security: \"max-age=31536000\"\n      add:\n        x-multi: two\n      remove: [x-drop-me]\n",
        support::servers(&[&backend])
    );
    let weir = Weir::start(&yaml).await;
    let resp = weir.get("h", "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        resp.header("x-origin").as_deref(),
        Some("weir"),
        "set replaces: {:?}",
        resp.headers
    );
    assert_eq!(
        resp.header("strict-transport-security").as_deref(),
        Some("max-age=31536000")
    );
    let mut multi = resp.header_elements("x-multi");
    multi.sort();
    assert_eq!(
        multi,
        ["one", "two"],
        "add keeps the backend's value: {:?}",
        resp.headers
    );
    assert!(
        resp.header("x-drop-me").is_none(),
        "remove: {:?}",
        resp.headers
    );
    assert_eq!(resp.header("x-untouched").as_deref(), Some("same"));
    assert_eq!(resp.seen().backend, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_routed_by_authority() {
    let routes = format!(
        "  - name: api\n    match:\n      host: \"api.example.com\"\n      path_prefix: \"/h2\"\n    pool: a\n{FALLBACK_B}"
    );
    let (_b, weir) = setup(2, &routes).await;
    let req = |uri: &str| Request::builder().uri(uri).body(empty()).unwrap();

    let resp = h2c_send(weir.addr(), req("http://api.example.com/h2/x?q=1"))
        .await
        .unwrap_or_else(|e| panic!("h2c request failed: {e}\n--- stderr ---\n{}", weir.stderr()));
    assert_eq!(resp.version, Version::HTTP_2);
    let seen = resp.seen();
    assert_eq!(seen.backend, "a");
    assert_eq!(seen.uri, "/h2/x?q=1");
    assert_eq!(seen.method, "GET");

    let resp = h2c_send(weir.addr(), req("http://API.example.com:8080/h2"))
        .await
        .expect("h2c request");
    assert_eq!(resp.backend(), "a");

    let resp = h2c_send(weir.addr(), req("http://other.example.com/h2"))
        .await
        .expect("h2c request");
    assert_eq!(resp.version, Version::HTTP_2);
    assert_eq!(resp.backend(), "b");
    weir.expect_access_log(200, Some("api")).await;

    // hyper-util's pooled client in HTTP/2-only mode: many requests, multiplexed.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<support::Body>();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let h2 = h2.clone();
        let url = weir.url(&format!("/h2/{i}"));
        tasks.push(tokio::spawn(async move {
            let req = Request::builder().uri(url).body(empty()).unwrap();
            support::send(&h2, req).await
        }));
    }
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.version, Version::HTTP_2);
        // :authority is 127.0.0.1:PORT here, so the host-bound route does not match.
        assert_eq!(resp.backend(), "b");
    }
}
