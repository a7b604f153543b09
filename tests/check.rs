//! `weir check`: the summary of a valid config, every error of an invalid one as FILE:LINE:COL,
//! YAML syntax errors, directory configs, `WEIR_CONFIG`; plus `--version` and `help`.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use regex::Regex;
use support::{Backend, Weir};

fn weir(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args)
        .env_remove("WEIR_CONFIG")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run weir")
}

fn check(path: &Path) -> Output {
    weir(&["check", "--config", path.to_str().unwrap()], &[])
}

/// stdout and stderr together.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every `FILE:LINE:COL: message` line whose FILE ends with `file_name`.
fn diagnostics(out: &str, file_name: &str) -> Vec<(u32, u32, String)> {
    let re = Regex::new(&format!(
        r"(?m)(?:^|[\s/\\]){}:(\d+):(\d+):\s*(.*)$",
        regex::escape(file_name)
    ))
    .unwrap();
    re.captures_iter(out)
        .map(|c| {
            (
                c[1].parse().unwrap(),
                c[2].parse().unwrap(),
                c[3].to_string(),
            )
        })
        .collect()
}

/// The 1-based number of the line of `yaml` containing `needle`.
fn line_of(yaml: &str, needle: &str) -> u32 {
    yaml.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the test config")) as u32
        + 1
}

/// Asserts there is a diagnostic on `line` whose column is plausible (within the line, at or after
/// its indentation) and whose message mentions one of `words`; returns it.
fn assert_diag(
    diags: &[(u32, u32, String)],
    yaml: &str,
    line: u32,
    words: &[&str],
    out: &str,
) -> (u32, u32, String) {
    let text = yaml.lines().nth(line as usize - 1).unwrap();
    let indent = (text.len() - text.trim_start().len()) as u32;
    let found = diags
        .iter()
        .find(|(l, _, _)| *l == line)
        .unwrap_or_else(|| {
            panic!("no FILE:{line}:COL: error for line {line} ({text:?}); output:\n{out}")
        });
    let (_, col, msg) = found;
    assert!(
        *col > indent && *col <= text.len() as u32 + 1,
        "column {col} is not within {text:?} (line {line})"
    );
    let lower = msg.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "the error on line {line} ({msg:?}) should mention one of {words:?}"
    );
    found.clone()
}

/// `N word` or `word: N` (or `words=N`) somewhere in the summary.
fn mentions_count(summary: &str, n: usize, word: &str) -> bool {
    Regex::new(&format!(r"(?i)\b{n}\s+{word}|\b{word}\w*\W{{1,3}}{n}\b"))
        .unwrap()
        .is_match(summary)
}

fn write_cert(dir: &Path) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("site.pem");
    let key = dir.join("site.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn valid_config_prints_summary_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path());
    let yaml = format!(
        r#"listeners:
  - name: web
    bind: "127.0.0.1:0"
  - name: websecure
    bind: "127.0.0.1:0"
    tls:
      certificates:
        - cert: "{cert}"
          key: "{key}"
pools:
  api:
    balance: round_robin
    servers:
      - address: "127.0.0.1:9001"
        weight: 1
      - address: "127.0.0.1:9002"
        weight: 3
    health:
      path: /healthz
      interval: 2s
      timeout: 1s
      expect_status: "200-399"
      healthy_after: 2
      unhealthy_after: 3
      initial: healthy
  sessions:
    balance: header_hash
    hash_header: x-user
    servers:
      - address: "127.0.0.1:9101"
      - address: "localhost:9102"
    sticky:
      cookie: weir_s
      ttl: 1h
  web:
    balance: least_request
    servers:
      - address: "127.0.0.1:9201"
routes:
  - name: api-v2
    match:
      host: "api.example.com"
      path_prefix: "/api/"
      methods: [GET, POST]
      headers:
        x-api-version: "2"
    pool: api
    timeout: 30s
    strip_prefix: "/api"
    max_body_size: 16MiB
  - name: login
    match:
      path_exact: "/login"
      cookies:
        beta: {{ present: true }}
    pool: sessions
  - name: versioned
    match:
      path_regex: "^/v[0-9]+/"
      query:
        tenant: {{ regex: "^acme" }}
    pool: api
    response_headers:
      set: {{ strict-transport-security: "max-age=31536000" }}
  - name: default
    match: {{ path_prefix: "/" }}
    pool: web
shutdown_timeout: 30s
"#
    );
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = check(&path);
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "weir check on a valid config:\n{all}"
    );
    for (n, word) in [(2, "listener"), (3, "pool"), (5, "server"), (4, "route")] {
        assert!(
            mentions_count(&all, n, word),
            "summary should mention {n} {word}(s):\n{all}"
        );
    }
}

#[test]
fn invalid_config_reports_every_error_with_position() {
    let yaml = r#"listeners:
  - name: web
    bind: "127.0.0.1:18080"
  - name: web
    bind: "127.0.0.1:18081"
  - name: other
    bind: "nope"
pools:
  api:
    balance: round_robin
    servers:
      - address: "127.0.0.1:9001"
        wieght: 2
routes:
  - name: a
    match:
      path_regex: "^/(unclosed"
    pool: api
    timeout: 5 parsecs
  - name: b
    match:
      path_prefix: "/"
    pool: nosuchpool
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = check(&path);
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "weir check on an invalid config:\n{all}"
    );
    let diags = diagnostics(&all, "weir.yaml");

    // The line numbers, as written above: 4, 7, 13, 17, 19, 23.
    assert_eq!(
        yaml.lines().nth(3),
        Some("  - name: web"),
        "sanity: the duplicate is on line 4"
    );
    let expected = [
        (4, &["web", "duplicate", "unique", "already"][..]),
        (line_of(yaml, "\"nope\""), &["nope", "address"][..]),
        (line_of(yaml, "wieght"), &["wieght"][..]),
        (
            line_of(yaml, "unclosed"),
            &["regex", "regular expression"][..],
        ),
        (line_of(yaml, "parsecs"), &["parsecs", "duration"][..]),
        (line_of(yaml, "nosuchpool"), &["nosuchpool"][..]),
    ];
    assert_eq!(
        expected.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        [4, 7, 13, 17, 19, 23]
    );
    for (line, words) in expected {
        assert_diag(&diags, yaml, line, words, &all);
    }
    // FILE is the path we gave (or ends with it).
    assert!(all.contains(&format!("{}:4:", path.display())) || all.contains("weir.yaml:4:"));
}

/// `weir check` on `yaml` (as `weir.yaml`), which must fail: all it printed, and its diagnostics.
fn check_invalid(yaml: &str) -> (String, Vec<(u32, u32, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = check(&path);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let diags = diagnostics(&all, "weir.yaml");
    (all, diags)
}

#[test]
fn one_item_with_several_errors_reports_them_all() {
    // serde stops at an item's first error; weir takes the bad field out and reads on, so a typo
    // at the top and an unknown key inside a route hide neither the route's other errors nor
    // those found by validation (an unknown pool, a bad duration).
    let yaml = r#"listners: []
listeners:
  - name: web
    bind: "127.0.0.1:0"
pools:
  api:
    servers:
      - address: "127.0.0.1:9001"
        weight: heavy
routes:
  - name: r
    match: { path_prefix: "/" }
    pool: nope
    timeout: 5x
    bogus: 1
    retries: many
"#;
    let (all, diags) = check_invalid(yaml);
    let expected = [
        (1, &["listners"][..]),
        (line_of(yaml, "heavy"), &["weight"][..]),
        (line_of(yaml, "nope"), &["nope"][..]),
        (line_of(yaml, "5x"), &["5x"][..]),
        (line_of(yaml, "bogus"), &["bogus"][..]),
        (line_of(yaml, "many"), &["retries"][..]),
    ];
    for (line, words) in expected {
        assert_diag(&diags, yaml, line, words, &all);
    }
    assert_eq!(diags.len(), expected.len(), "one line per error:\n{all}");
}

#[test]
fn a_repeated_key_points_at_the_repeat() {
    let yaml = "routes:\n  - name: a\n    pool: p\n    match: { path_prefix: / }\nroutes:\n  - name: b\n    pool: p\n    match: { path_prefix: / }\n";
    let (all, diags) = check_invalid(yaml);
    assert_eq!(diags.len(), 1, "{all}");
    assert_eq!((diags[0].0, diags[0].1), (5, 1), "{all}");
    assert!(diags[0].2.contains("duplicate key `routes`"), "{all}");
}

#[test]
fn patterns_that_can_never_match_and_a_shared_admin_port_are_errors() {
    // Hosts are matched without their port, so a pattern with one would never match; an empty
    // list would match every host; an admin endpoint on a listener's address would share its
    // connections with it.
    let yaml = r#"listeners:
  - name: web
    bind: "127.0.0.1:18080"
pools: {api: {servers: [{address: "127.0.0.1:9001"}]}}
routes:
  - name: port
    match: { host: "api.example.com:18190" }
    pool: api
  - name: empty
    match: { host: [] }
    pool: api
  - name: v6
    match: { host: "[::1]" }
    pool: api
admin:
  bind: "127.0.0.1:18080"
"#;
    let (all, diags) = check_invalid(yaml);
    assert_diag(&diags, yaml, line_of(yaml, "18190"), &["port"], &all);
    assert_diag(&diags, yaml, line_of(yaml, "host: []"), &["empty"], &all);
    assert_diag(&diags, yaml, 16, &["admin.bind", "web"], &all);
    assert_eq!(diags.len(), 3, "a bracketed IPv6 host is fine:\n{all}");
}

#[test]
fn zero_deadlines_and_port_0_redirects_are_errors() {
    let yaml = r#"listeners:
  - name: web
    bind: "127.0.0.1:18080"
    redirect_https: 0
pools: {api: {servers: [{address: "127.0.0.1:9001"}], connect_timeout: 0s}}
routes:
  - name: r
    match: { path_prefix: "/" }
    pool: api
    timeout: 0ms
"#;
    let (all, diags) = check_invalid(yaml);
    assert_diag(&diags, yaml, 4, &["redirect_https"], &all);
    assert_diag(&diags, yaml, 5, &["connect_timeout"], &all);
    assert_diag(&diags, yaml, 10, &["timeout"], &all);
    assert_eq!(diags.len(), 3, "{all}");
}

#[test]
fn errors_do_not_cascade_onto_valid_references() {
    // Pool `api` exists but has a typo inside it; the route naming it is fine and must not be
    // reported as naming an unknown pool.
    let yaml = r#"listeners:
  - name: web
    bind: "127.0.0.1:0"
pools:
  api:
    balance: round_robin
    servers:
      - address: "127.0.0.1:9001"
        wieght: 2
routes:
  - name: a
    match:
      path_prefix: "/"
    pool: api
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = check(&path);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let diags = diagnostics(&all, "weir.yaml");
    assert_diag(&diags, yaml, line_of(yaml, "wieght"), &["wieght"], &all);
    let pool_line = line_of(yaml, "pool: api");
    assert!(
        !diags.iter().any(|(l, _, _)| *l == pool_line),
        "line {pool_line} names a pool that exists; reporting it is a cascading error:\n{all}"
    );
}

#[test]
fn missing_certificate_file_is_an_error() {
    let yaml = r#"listeners:
  - name: websecure
    bind: "127.0.0.1:0"
    tls:
      certificates:
        - cert: "/nonexistent/weir-test/site.pem"
          key: "/nonexistent/weir-test/site.key"
pools:
  web:
    balance: round_robin
    servers:
      - address: "127.0.0.1:9001"
routes:
  - name: all
    match:
      path_prefix: "/"
    pool: web
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = check(&path);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let diags = diagnostics(&all, "weir.yaml");
    assert_diag(&diags, yaml, 6, &["site.pem", "cert"], &all);
}

#[test]
fn yaml_syntax_error_has_position() {
    let yaml = "listeners:\n  - name: web\n    bind: a: b\npools: {}\nroutes: []\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = check(&path);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let diags = diagnostics(&all, "weir.yaml");
    assert!(
        diags.iter().any(|(l, c, _)| *l == 3 && *c >= 1 && *c <= 16),
        "expected weir.yaml:3:COL: for the syntax error, got:\n{all}"
    );
}

const DIR_LISTENERS: &str = "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n";

#[test]
fn directory_config_is_merged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("10-listeners.yaml"), DIR_LISTENERS).unwrap();
    std::fs::write(
        dir.path().join("20-pools.yml"),
        "pools:\n  api:\n    balance: round_robin\n    servers:\n      - address: \"127.0.0.1:9001\"\n  web:\n    balance: round_robin\n    servers:\n      - address: \"127.0.0.1:9002\"\n      - address: \"127.0.0.1:9003\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("30-routes.yaml"),
        "routes:\n  - name: api\n    match:\n      path_prefix: \"/api\"\n    pool: api\n  - name: default\n    match:\n      path_prefix: \"/\"\n    pool: web\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "this: is: not: yaml: [\n").unwrap();
    let out = check(dir.path());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "directory config:\n{all}");
    for (n, word) in [(1, "listener"), (2, "pool"), (3, "server"), (2, "route")] {
        assert!(
            mentions_count(&all, n, word),
            "summary should mention {n} {word}(s):\n{all}"
        );
    }
}

#[test]
fn duplicate_pool_across_files_names_the_second_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-first.yaml"),
        format!("{DIR_LISTENERS}pools:\n  api:\n    balance: round_robin\n    servers:\n      - address: \"127.0.0.1:9001\"\nroutes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: api\n"),
    )
    .unwrap();
    let second = "pools:\n  api:\n    balance: round_robin\n    servers:\n      - address: \"127.0.0.1:9002\"\n";
    std::fs::write(dir.path().join("20-second.yaml"), second).unwrap();
    let out = check(dir.path());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let diags = diagnostics(&all, "20-second.yaml");
    assert_diag(&diags, second, 2, &["api"], &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_config_runs_in_file_name_order() {
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let dir = tempfile::tempdir().unwrap();
    // Written in the opposite order to their names: the name decides.
    std::fs::write(
        dir.path().join("b.yaml"),
        format!("pools:\n  second:\n    balance: round_robin\n    servers:\n      - address: \"{}\"\nroutes:\n  - name: from-b\n    match:\n      path_prefix: \"/\"\n    pool: second\n", second.addr),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        format!("{DIR_LISTENERS}pools:\n  first:\n    balance: round_robin\n    servers:\n      - address: \"{}\"\nroutes:\n  - name: from-a\n    match:\n      path_prefix: \"/\"\n    pool: first\n", first.addr),
    )
    .unwrap();
    let weir = Weir::start_path(dir.path(), &["web"]).await;
    assert_eq!(weir.get("h", "/x").await.backend(), "first");
    weir.expect_access_log(200, Some("from-a")).await;
}

#[test]
fn weir_config_env_stands_in_for_flag() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!("{DIR_LISTENERS}pools:\n  p:\n    balance: round_robin\n    servers:\n      - address: \"127.0.0.1:9001\"\nroutes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n"),
    )
    .unwrap();
    let out = weir(&["check"], &[("WEIR_CONFIG", &good)]);
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "WEIR_CONFIG=good.yaml weir check:\n{all}"
    );
    assert!(mentions_count(&all, 1, "route"), "{all}");

    let bad = dir.path().join("bad.yaml");
    let bad_yaml = format!("{DIR_LISTENERS}pools: {{}}\nroutes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: missing\n");
    std::fs::write(&bad, &bad_yaml).unwrap();
    let out = weir(&["check"], &[("WEIR_CONFIG", &bad)]);
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "WEIR_CONFIG=bad.yaml weir check:\n{all}"
    );
    let diags = diagnostics(&all, "bad.yaml");
    assert_diag(
        &diags,
        &bad_yaml,
        line_of(&bad_yaml, "missing"),
        &["missing"],
        &all,
    );
}

#[test]
fn version_and_help() {
    let out = weir(&["--version"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout.contains("weir") && stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {stdout:?}"
    );

    let out = weir(&["help"], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for cmd in ["run", "check", "demo"] {
        assert!(all.contains(cmd), "`weir help` should list `{cmd}`:\n{all}");
    }
}

#[test]
fn health_and_retry_budget_forms_are_accepted() {
    let yaml = r#"listeners:
  - name: web
    bind: "127.0.0.1:0"
pools:
  api:
    servers:
      - address: "127.0.0.1:9001"
      - address: "127.0.0.1:9002"
    health:
      path: /healthz
      method: HEAD
      host: health.internal
      interval: 2s
      unhealthy_interval: 500ms
      timeout: 250ms
      expect_status: [200, "301-308"]
      expect_body: ok
    retry_budget: { percent: 25, min_per_second: 5 }
    slow_start: 30s
    max_connections: 100
    queue_size: 10
    queue_timeout: 2s
    panic: true
  legacy:
    servers:
      - address: "127.0.0.1:9101"
    health:
      tcp: true
      expect_status: 204
    retry_budget: 20
routes:
  - name: a
    match: { path_prefix: "/" }
    pool: api
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn probe_timeouts_and_retry_budget_are_checked() {
    let yaml = r#"listeners:
  - name: web
    bind: "127.0.0.1:0"
pools:
  a:
    servers:
      - address: "127.0.0.1:9001"
    health:
      interval: 1s
      timeout: 1s
  b:
    servers:
      - address: "127.0.0.1:9002"
    health:
      interval: 2s
      unhealthy_interval: 200ms
      timeout: 500ms
    retry_budget: 150
  c:
    servers:
      - address: "127.0.0.1:9003"
    retry_budget: { percent: 20, min_per_sec: 5 }
routes:
  - name: r
    match: { path_prefix: "/" }
    pool: a
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = check(&path);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let diags = diagnostics(&all, "weir.yaml");
    assert_diag(
        &diags,
        yaml,
        line_of(yaml, "timeout: 1s"),
        &["interval"],
        &all,
    );
    assert_diag(
        &diags,
        yaml,
        line_of(yaml, "unhealthy_interval: 200ms"),
        &["unhealthy_interval"],
        &all,
    );
    assert_diag(
        &diags,
        yaml,
        line_of(yaml, "retry_budget: 150"),
        &["0 to 100"],
        &all,
    );
    assert_diag(
        &diags,
        yaml,
        line_of(yaml, "min_per_sec:"),
        &["min_per_sec"],
        &all,
    );
}

#[test]
fn admin_or_shutdown_timeout_in_two_files_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let first = format!(
        "{DIR_LISTENERS}pools:\n  api:\n    balance: round_robin\n    servers:\n      - address: \"127.0.0.1:9001\"\nroutes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: api\nshutdown_timeout: 5s\nadmin:\n  bind: \"127.0.0.1:9901\"\n"
    );
    std::fs::write(dir.path().join("10-first.yaml"), &first).unwrap();
    let second = "shutdown_timeout: 10s\nadmin:\n  bind: \"127.0.0.1:9902\"\n";
    std::fs::write(dir.path().join("20-second.yaml"), second).unwrap();
    let out = check(dir.path());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let diags = diagnostics(&all, "20-second.yaml");
    let (_, _, msg) = assert_diag(&diags, second, 1, &["duplicate"], &all);
    assert!(msg.contains("10-first.yaml"), "names the first file: {msg}");
    assert_diag(&diags, second, 2, &["duplicate"], &all);
}

#[test]
fn admin_on_a_public_address_needs_allow_public() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "{DIR_LISTENERS}pools:\n  api:\n    balance: round_robin\n    servers:\n      - address: \"127.0.0.1:9001\"\nroutes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: api\n"
    );
    let refused = format!("{base}admin:\n  bind: \"0.0.0.0:9901\"\n");
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, &refused).unwrap();
    let out = check(&path);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let diags = diagnostics(&all, "weir.yaml");
    assert_diag(
        &diags,
        &refused,
        line_of(&refused, "0.0.0.0"),
        &["loopback"],
        &all,
    );
    std::fs::write(
        &path,
        format!("{base}admin:\n  bind: \"0.0.0.0:9901\"\n  allow_public: true\n"),
    )
    .unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn verbose_prints_the_compiled_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    let yaml = "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
        pools:\n  api:\n    balance: header_hash\n    hash_header: x-user\n    servers:\n      - address: \"127.0.0.1:9001\"\n        weight: 3\n\
        \x20   health:\n      path: /ready\n      interval: 5s\n    sticky:\n      cookie: s\n      on_unavailable: reject\n\
        \x20 web:\n    balance: round_robin\n    servers:\n      - address: \"127.0.0.1:9002\"\n\
        routes:\n  - name: api\n    match:\n      host: [\"api.example.com\", \"*.api.example.com\"]\n      path_prefix: \"/v1/\"\n      methods: [GET]\n      headers:\n        x-beta: {present: true}\n    pool: api\n    timeout: 5s\n    retries: 2\n    strip_prefix: /v1\n    max_body_size: 1MiB\n    request_headers:\n      set: { x-service: api }\n\
        \x20 - name: default\n    match: { path_prefix: / }\n    pool: web\n";
    std::fs::write(&path, yaml).unwrap();
    let out = weir(&["check", "-v", "--config", path.to_str().unwrap()], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for needle in [
        "1. api -> pool api",
        "host in [api.example.com, *.api.example.com] and path prefix \"/v1/\" and method in [GET] and header x-beta present",
        "timeout 5s, retries 2, strip prefix \"/v1\", max body 1048576 bytes",
        "request headers: set x-service: api",
        "2. default -> pool web",
        "api: header_hash on x-user",
        "health: GET /ready expecting",
        "every 5s",
        "sticky: cookie s (session), when the server is down: 503",
        "- 127.0.0.1:9001 weight 3",
        "shutdown: timeout 30s",
    ] {
        assert!(all.contains(needle), "{needle:?} in:\n{all}");
    }
    assert!(all.find("1. api").unwrap() < all.find("2. default").unwrap());
}

#[test]
fn send_timeout_is_checked_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    let tail = "pools:\n  p:\n    servers:\n      - address: \"127.0.0.1:9001\"\n\
        routes:\n  - name: all\n    pool: p\n";
    let bad = format!(
        "listeners:\n  - name: a\n    bind: \"127.0.0.1:0\"\n    send_timeout: 5 parsecs\n\
         \x20 - name: b\n    bind: \"127.0.0.1:1\"\n    send_timeout: 0s\n{tail}"
    );
    std::fs::write(&path, &bad).unwrap();
    let out = check(&path);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let diags = diagnostics(&all, "weir.yaml");
    assert_diag(
        &diags,
        &bad,
        line_of(&bad, "parsecs"),
        &["send_timeout"],
        &all,
    );
    assert_diag(&diags, &bad, line_of(&bad, "0s"), &["send_timeout"], &all);

    let good = format!(
        "listeners:\n  - name: a\n    bind: \"127.0.0.1:0\"\n    send_timeout: 2s\n\
         \x20 - name: b\n    bind: \"127.0.0.1:1\"\n{tail}"
    );
    std::fs::write(&path, &good).unwrap();
    let out = weir(
        &["check", "--verbose", "--config", path.to_str().unwrap()],
        &[],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("send timeout 2s"), "{all}");
    assert!(all.contains("send timeout 1m"), "the default: {all}");
}

/// `weir run` with a bad config exits 1 and prints each error once, positioned like `check`'s.
#[test]
fn run_with_a_bad_config_prints_each_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let yaml = "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\npools: {}\nroutes:\n  - name: r\n    match: { path_prefix: \"/\" }\n    pool: nowhere\n";
    std::fs::write(&path, yaml).unwrap();
    let out = weir(&["run", "--config", path.to_str().unwrap()], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let plain = all
        .lines()
        .find(|l| l.starts_with("weir: "))
        .unwrap_or_else(|| panic!("no `weir: ` line in:\n{all}"));
    let found = diagnostics(plain, "bad.yaml");
    assert_eq!(found.len(), 1, "one error, printed once: {plain:?}");
    assert_eq!(found[0].0, line_of(yaml, "pool: nowhere"), "{plain:?}");
    assert_eq!(plain.matches("nowhere").count(), 1, "{plain:?}");
    assert_eq!(
        all.matches("nowhere").count(),
        1,
        "printed once in all: {all}"
    );

    // With JSON logs every stderr line is one JSON object, the error among them once.
    let out = weir(
        &[
            "--log-format",
            "json",
            "run",
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut found = 0;
    for line in stderr.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{stderr}"));
        found += v["message"]
            .as_str()
            .unwrap_or("")
            .matches("nowhere")
            .count();
    }
    assert_eq!(found, 1, "{stderr}");
}
