//! TLS termination and origination: certificate choice by SNI (wildcards, default), ALPN, minimum
//! version, session resumption, rotation on SIGHUP, the handshake timeout, 421 for a Host the
//! certificate does not cover, redirect to https, HSTS, mutual TLS, TLS towards servers, and what
//! `weir check` says about certificate files.
//!
//! The client side is rustls + tokio-rustls with hyper's connection-level clients, so each test
//! controls SNI, ALPN, versions and client certificates, and can look at the certificate the server
//! presented. Certificates are generated with rcgen into each test's temporary directory.
//! `tls_1_1_is_refused` uses the `openssl` CLI and skips (with a message) when it is missing.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use regex::Regex;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, SupportedProtocolVersion};
use serde_json::json;
use support::accept_any::AcceptAny;
use support::{empty, Backend, Body, Resp, Weir, WAIT};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate with its key, in PEM (for weir's files) and DER (for rustls and comparisons).
struct Cert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Cert {
    fn from_parts(cert: rcgen::Certificate, key: &KeyPair) -> Cert {
        Cert {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }

    /// Writes `STEM.pem` and `STEM.key` into `dir`; returns their paths.
    fn write(&self, dir: &Path, stem: &str) -> (String, String) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (path_str(&cert), path_str(&key))
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

/// A self-signed certificate for `names`, with its own key.
fn self_signed(names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("generate certificate");
    Cert::from_parts(ck.cert, &ck.key_pair)
}

/// A self-signed certificate from explicit params (no SANs, expired, ...).
fn self_signed_with(params: CertificateParams) -> Cert {
    let key = KeyPair::generate().expect("generate key");
    let cert = params.self_signed(&key).expect("self-sign");
    Cert::from_parts(cert, &key)
}

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = p.self_signed(&key).expect("self-sign CA");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn write(&self, dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, self.pem()).expect("write CA");
        path_str(&p)
    }

    fn issue(&self, params: CertificateParams) -> Cert {
        let key = KeyPair::generate().expect("generate key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign certificate");
        Cert::from_parts(cert, &key)
    }

    /// A client certificate with `CN=cn` (no SANs), for client authentication.
    fn client_cert(&self, cn: &str) -> Cert {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("client params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(p)
    }

    /// A server certificate for `names`.
    fn server_cert(&self, names: &[&str]) -> Cert {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names).expect("server params");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(p)
    }
}

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

/// `certificates:` under `tls:` (6-space indent) for (cert, key) paths.
fn certificates(pairs: &[&(String, String)]) -> String {
    let mut out = String::from("      certificates:\n");
    for (cert, key) in pairs {
        out.push_str(&format!(
            "        - cert: \"{cert}\"\n          key: \"{key}\"\n"
        ));
    }
    out
}

/// One TLS listener `web` (with `tls_lines` under `tls:`, 6-space indent), one pool `p` over
/// `backend`, one catch-all route.
fn tls_config(tls_lines: &str, backend: &Backend) -> String {
    format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    tls:\n{tls_lines}\
         pools:\n  p:\n    balance: round_robin\n    servers:\n      - address: \"{}\"\n\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n",
        backend.addr
    )
}

/// weir with one TLS listener serving `a.test` (a self-signed certificate) in front of the backend
/// "app"; dropped in that order: weir, the backend, then the directory with the certificate.
async fn a_test_site() -> (Weir, Backend, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pa = self_signed(&["a.test"]).write(dir.path(), "a");
    let backend = Backend::start("app").await;
    let weir = start_in(
        dir.path(),
        &tls_config(&certificates(&[&pa]), &backend),
        &["web"],
    )
    .await;
    (weir, backend, dir)
}

/// Writes `yaml` as `weir.yaml` in `dir` and serves it, waiting for `names`.
async fn start_in(dir: &Path, yaml: &str, names: &[&str]) -> Weir {
    let path = dir.join("weir.yaml");
    std::fs::write(&path, yaml).expect("write config");
    Weir::start_path(&path, names).await
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

static BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
static ONLY_12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
static ONLY_13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// How a test client connects.
struct Opts<'a> {
    alpn: &'a [&'a str],
    versions: &'a [&'static SupportedProtocolVersion],
    client_cert: Option<&'a Cert>,
    resumption: bool,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            alpn: &["http/1.1"],
            versions: BOTH,
            client_cert: None,
            resumption: false,
        }
    }
}

fn client_config(o: Opts<'_>) -> Arc<ClientConfig> {
    let p = provider();
    let builder = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(o.versions)
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p.signature_verification_algorithms)));
    let mut cfg = match o.client_cert {
        Some(c) => builder
            .with_client_auth_cert(vec![c.der.clone()], c.key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = o.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    if !o.resumption {
        cfg.resumption = Resumption::disabled();
    }
    Arc::new(cfg)
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).expect("dns name")
}

fn no_sni() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// An established TLS connection to weir with an HTTP client on it (HTTP/2 when ALPN chose h2).
struct TlsConn {
    leaf: Option<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    kind: Option<HandshakeKind>,
    sender: Sender,
}

/// The TLS handshake only.
async fn tls_handshake(
    addr: SocketAddr,
    name: ServerName<'static>,
    cfg: Arc<ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// Handshake, then an HTTP/1.1 or HTTP/2 client connection on top.
async fn connect(
    addr: SocketAddr,
    name: ServerName<'static>,
    cfg: Arc<ClientConfig>,
) -> Result<TlsConn, String> {
    let tls = tls_handshake(addr, name, cfg).await?;
    let (_, c) = tls.get_ref();
    let leaf = c.peer_certificates().and_then(|v| v.first()).cloned();
    let alpn = c.alpn_protocol().map(|p| p.to_vec());
    let version = c.protocol_version();
    let kind = c.handshake_kind();
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| format!("h2 handshake: {e:?}"))?;
        tokio::spawn(conn);
        Sender::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("http1 handshake: {e:?}"))?;
        tokio::spawn(conn);
        Sender::H1(s)
    };
    Ok(TlsConn {
        leaf,
        alpn,
        version,
        kind,
        sender,
    })
}

/// `GET https://{host}{path}`: over HTTP/2 the authority becomes `:authority`; over HTTP/1.1 it
/// becomes the Host header and the request line carries the path only.
fn get(host: &str, path: &str) -> Request<Body> {
    Request::builder()
        .uri(format!("https://{host}{path}"))
        .body(empty())
        .unwrap()
}

impl TlsConn {
    async fn send(&mut self, mut req: Request<Body>) -> Result<Resp, String> {
        let fut = async {
            match &mut self.sender {
                Sender::H1(s) => {
                    if let Some(auth) = req.uri().authority().cloned() {
                        req.headers_mut()
                            .entry(http::header::HOST)
                            .or_insert(auth.as_str().parse().unwrap());
                    }
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map_or("/".to_string(), |p| p.to_string());
                    *req.uri_mut() = pq.parse().unwrap();
                    s.ready().await.map_err(|e| format!("not ready: {e:?}"))?;
                    s.send_request(req).await.map_err(|e| format!("{e:?}"))
                }
                Sender::H2(s) => {
                    s.ready().await.map_err(|e| format!("not ready: {e:?}"))?;
                    s.send_request(req).await.map_err(|e| format!("{e:?}"))
                }
            }
        };
        let resp = timeout(Duration::from_secs(30), fut)
            .await
            .map_err(|_| "no response head within 30s".to_string())??;
        collect(resp).await
    }

    /// Sends and expects a response, panicking with weir's stderr otherwise.
    async fn must_send(&mut self, weir: &Weir, req: Request<Body>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        self.send(req).await.unwrap_or_else(|e| {
            panic!(
                "{what} over TLS failed: {e}\n--- stderr ---\n{}",
                weir.stderr()
            )
        })
    }

    fn leaf(&self) -> &CertificateDer<'static> {
        self.leaf.as_ref().expect("server presented a certificate")
    }
}

async fn collect(resp: Response<Incoming>) -> Result<Resp, String> {
    let (parts, body) = resp.into_parts();
    let body = timeout(Duration::from_secs(30), body.collect())
        .await
        .map_err(|_| "response body not complete within 30s".to_string())?
        .map_err(|e| format!("response body: {e:?}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Connects and panics (with weir's stderr) on failure.
async fn must_connect(weir: &Weir, name: ServerName<'static>, cfg: Arc<ClientConfig>) -> TlsConn {
    let what = format!("{name:?}");
    connect(weir.addr(), name, cfg).await.unwrap_or_else(|e| {
        panic!(
            "TLS connection ({what}) failed: {e}\n--- stderr ---\n{}",
            weir.stderr()
        )
    })
}

/// The leaf certificate weir presents for `name` on a fresh (non-resumed) connection.
async fn presented(weir: &Weir, name: ServerName<'static>) -> CertificateDer<'static> {
    let conn = must_connect(weir, name, client_config(Opts::default())).await;
    conn.leaf().clone()
}

fn which<'a>(der: &CertificateDer<'_>, known: &[(&'a str, &Cert)]) -> &'a str {
    known
        .iter()
        .find(|(_, c)| c.der == *der)
        .map_or("an unknown certificate", |(n, _)| n)
}

// ---------------------------------------------------------------------------------------------
// 1-2. Certificate selection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sni_picks_the_certificate_and_the_first_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(&["a.test"]);
    let b = self_signed(&["b.test"]);
    let pa = a.write(dir.path(), "a");
    let pb = b.write(dir.path(), "b");
    let backend = Backend::start("app").await;
    let weir = start_in(
        dir.path(),
        &tls_config(&certificates(&[&pa, &pb]), &backend),
        &["web"],
    )
    .await;
    let known = [("a.test", &a), ("b.test", &b)];

    for (sni, want) in [
        ("a.test", &a),
        ("b.test", &b),
        ("B.Test", &b),
        ("c.test", &a),
    ] {
        let got = presented(&weir, dns(sni)).await;
        assert!(
            got == want.der,
            "SNI {sni}: weir presented {} (expected {})",
            which(&got, &known),
            which(&want.der, &known)
        );
    }
    let got = presented(&weir, no_sni()).await;
    assert!(
        got == a.der,
        "no SNI: weir presented {} (expected the first, a.test)",
        which(&got, &known)
    );

    // And it serves on each.
    let mut conn = must_connect(&weir, dns("b.test"), client_config(Opts::default())).await;
    let resp = conn.must_send(&weir, get("b.test", "/hello")).await;
    assert_eq!(resp.backend(), "app");
}

#[tokio::test]
async fn wildcard_certificate_covers_one_label() {
    let dir = tempfile::tempdir().unwrap();
    let d = self_signed(&["default.test"]);
    let w = self_signed(&["*.w.test"]);
    let pd = d.write(dir.path(), "default");
    let pw = w.write(dir.path(), "wild");
    let backend = Backend::start("app").await;
    let weir = start_in(
        dir.path(),
        &tls_config(&certificates(&[&pd, &pw]), &backend),
        &["web"],
    )
    .await;
    let known = [("default", &d), ("*.w.test", &w)];

    for (sni, want) in [
        ("x.w.test", &w),
        ("X.W.TEST", &w),
        ("x.y.w.test", &d),
        ("w.test", &d),
    ] {
        let got = presented(&weir, dns(sni)).await;
        assert!(
            got == want.der,
            "SNI {sni}: weir presented {} (expected {})",
            which(&got, &known),
            which(&want.der, &known)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. ALPN
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn alpn_negotiates_h2_or_http1_and_proxies_end_to_end() {
    let (weir, _backend, _dir) = a_test_site().await;

    // h2 offered (first) → h2, and the request goes through over HTTP/2.
    let cfg = client_config(Opts {
        alpn: &["h2", "http/1.1"],
        ..Opts::default()
    });
    let mut conn = must_connect(&weir, dns("a.test"), cfg).await;
    assert_eq!(
        conn.alpn.as_deref(),
        Some(&b"h2"[..]),
        "client offered h2: ALPN result {:?}",
        conn.alpn
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    );
    let resp = conn.must_send(&weir, get("a.test", "/h2?x=1")).await;
    assert_eq!(resp.status, StatusCode::OK, "body {:?}", resp.text());
    assert_eq!(resp.version, http::Version::HTTP_2);
    let seen = resp.seen();
    assert_eq!(seen.uri, "/h2?x=1");
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));

    // Only http/1.1 offered → http/1.1.
    let cfg = client_config(Opts {
        alpn: &["http/1.1"],
        ..Opts::default()
    });
    let mut conn = must_connect(&weir, dns("a.test"), cfg).await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let resp = conn.must_send(&weir, get("a.test", "/h1")).await;
    assert_eq!(resp.status, StatusCode::OK, "body {:?}", resp.text());
    assert_eq!(resp.version, http::Version::HTTP_11);
    let seen = resp.seen();
    assert_eq!(seen.uri, "/h1");
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));

    // No ALPN at all → HTTP/1.1 still works.
    let cfg = client_config(Opts {
        alpn: &[],
        ..Opts::default()
    });
    let mut conn = must_connect(&weir, dns("a.test"), cfg).await;
    assert_eq!(conn.alpn, None);
    let resp = conn.must_send(&weir, get("a.test", "/none")).await;
    assert_eq!(resp.status, StatusCode::OK, "body {:?}", resp.text());
}

#[tokio::test]
async fn alpn_list_on_the_listener_limits_the_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let pa = self_signed(&["a.test"]).write(dir.path(), "a");
    let backend = Backend::start("app").await;
    let tls = format!("{}      alpn: [http/1.1]\n", certificates(&[&pa]));
    let weir = start_in(dir.path(), &tls_config(&tls, &backend), &["web"]).await;

    let cfg = client_config(Opts {
        alpn: &["h2", "http/1.1"],
        ..Opts::default()
    });
    let mut conn = must_connect(&weir, dns("a.test"), cfg).await;
    assert_eq!(
        conn.alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "listener alpn [http/1.1], client offered h2 first: got {:?}",
        conn.alpn
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    );
    let resp = conn.must_send(&weir, get("a.test", "/")).await;
    assert_eq!(resp.version, http::Version::HTTP_11);
    assert_eq!(resp.backend(), "app");
}

// ---------------------------------------------------------------------------------------------
// 4. Versions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2() {
    let dir = tempfile::tempdir().unwrap();
    let pa = self_signed(&["a.test"]).write(dir.path(), "a");
    let backend = Backend::start("app").await;
    let tls = format!("{}      min_version: \"1.3\"\n", certificates(&[&pa]));
    let weir = start_in(dir.path(), &tls_config(&tls, &backend), &["web"]).await;

    let only12 = client_config(Opts {
        versions: ONLY_12,
        ..Opts::default()
    });
    let r = tls_handshake(weir.addr(), dns("a.test"), only12).await;
    assert!(
        r.is_err(),
        "a TLS 1.2-only client completed a handshake with a min_version 1.3 listener (version {:?})",
        r.as_ref().ok().and_then(|s| s.get_ref().1.protocol_version())
    );

    let only13 = client_config(Opts {
        versions: ONLY_13,
        ..Opts::default()
    });
    let mut conn = must_connect(&weir, dns("a.test"), only13).await;
    assert_eq!(conn.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(
        conn.must_send(&weir, get("a.test", "/")).await.backend(),
        "app"
    );
}

#[tokio::test]
async fn default_listener_accepts_tls_1_2_and_1_3() {
    let (weir, _backend, _dir) = a_test_site().await;

    for (versions, want) in [
        (ONLY_12, ProtocolVersion::TLSv1_2),
        (ONLY_13, ProtocolVersion::TLSv1_3),
    ] {
        let cfg = client_config(Opts {
            versions,
            ..Opts::default()
        });
        let mut conn = must_connect(&weir, dns("a.test"), cfg).await;
        assert_eq!(conn.version, Some(want));
        let resp = conn.must_send(&weir, get("a.test", "/v")).await;
        assert_eq!(resp.backend(), "app", "over {want:?}");
    }
}

/// Runs `openssl s_client` against `addr` with `extra` flags; `None` when openssl is missing.
async fn s_client(addr: SocketAddr, extra: &[&str]) -> Option<Output> {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg("a.test")
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("run openssl: {e}"),
    };
    Some(
        timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("openssl s_client did not finish within 30s")
            .expect("openssl s_client"),
    )
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let (weir, _backend, _dir) = a_test_site().await;

    // The tool works against this listener at TLS 1.2 ...
    let Some(ok) = s_client(weir.addr(), &["-tls1_2"]).await else {
        eprintln!("SKIPPED tls_1_1_is_refused: the openssl CLI is not installed");
        return;
    };
    let ok_text = format!(
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        ok.status.success() && ok_text.contains("TLSv1.2"),
        "openssl s_client -tls1_2 failed against weir:\n{ok_text}"
    );

    // ... and is refused at TLS 1.1 (SECLEVEL=0 so that OpenSSL 3 is willing to offer it).
    let out = s_client(weir.addr(), &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        .await
        .expect("openssl ran once already");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("no protocols available") {
        eprintln!("SKIPPED tls_1_1_is_refused: this openssl cannot offer TLS 1.1:\n{text}");
        return;
    }
    assert!(
        !out.status.success(),
        "openssl s_client -tls1_1 succeeded against weir:\n{text}"
    );
    // The refusal comes from the server (an alert), not from openssl giving up on its own.
    assert!(
        text.contains("alert protocol version") || text.contains("alert handshake failure"),
        "expected the server to refuse TLS 1.1 with an alert; openssl said:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Resumption
// ---------------------------------------------------------------------------------------------

/// A client config that remembers sessions, after one full handshake and one exchange with
/// `a.test` on it (so the TLS 1.3 session tickets sent after the handshake are read).
async fn after_one_session(
    weir: &Weir,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let cfg = client_config(Opts {
        versions,
        resumption: true,
        ..Opts::default()
    });
    let mut first = must_connect(weir, dns("a.test"), cfg.clone()).await;
    assert_eq!(first.kind, Some(HandshakeKind::Full));
    assert_eq!(
        first.must_send(weir, get("a.test", "/1")).await.backend(),
        "app"
    );
    cfg
}

#[tokio::test]
async fn second_connection_resumes_the_session() {
    let (weir, _backend, _dir) = a_test_site().await;

    for versions in [ONLY_13, ONLY_12] {
        let cfg = after_one_session(&weir, versions).await;
        let mut second = must_connect(&weir, dns("a.test"), cfg).await;
        assert_eq!(
            second.kind,
            Some(HandshakeKind::Resumed),
            "second connection with the same client config ({:?}) was not resumed",
            second.version
        );
        assert_eq!(
            second.must_send(&weir, get("a.test", "/2")).await.backend(),
            "app"
        );
    }
}

/// One TLS 1.3 ticket per handshake: a client holding the first connection's ticket resumes
/// once, and a connection made before it has read the next ticket is a full handshake.
#[tokio::test]
async fn each_handshake_leaves_one_session_ticket() {
    let (weir, _backend, _dir) = a_test_site().await;
    let cfg = after_one_session(&weir, ONLY_13).await;
    let second = must_connect(&weir, dns("a.test"), cfg.clone()).await;
    assert_eq!(second.kind, Some(HandshakeKind::Resumed));
    // The second connection's own ticket is not read yet: nothing left to resume with.
    let third = must_connect(&weir, dns("a.test"), cfg).await;
    assert_eq!(
        third.kind,
        Some(HandshakeKind::Full),
        "the first handshake left more than one ticket"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sighup_rotates_the_certificate_and_a_bad_one_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(&["rot.test"]);
    let b = self_signed(&["rot.test"]);
    let paths = a.write(dir.path(), "site");
    let backend = Backend::start("app").await;
    let weir = start_in(
        dir.path(),
        &tls_config(&certificates(&[&paths]), &backend),
        &["web"],
    )
    .await;
    let known = [("A", &a), ("B", &b)];

    let mut conn1 = must_connect(&weir, dns("rot.test"), client_config(Opts::default())).await;
    assert!(
        conn1.leaf() == &a.der,
        "before rotation weir presented {}",
        which(conn1.leaf(), &known)
    );
    assert_eq!(
        conn1
            .must_send(&weir, get("rot.test", "/before"))
            .await
            .backend(),
        "app"
    );

    b.write(dir.path(), "site");
    weir.signal("HUP");
    let start = Instant::now();
    loop {
        let got = presented(&weir, dns("rot.test")).await;
        if got == b.der {
            break;
        }
        if start.elapsed() > WAIT {
            panic!(
                "new connections still get {} {WAIT:?} after SIGHUP with certificate B on disk\n\
                 --- stderr ---\n{}",
                which(&got, &known),
                weir.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The connection opened before the rotation still serves.
    let resp = conn1.must_send(&weir, get("rot.test", "/after")).await;
    assert_eq!(resp.backend(), "app");

    // A broken certificate is rejected and B keeps serving.
    std::fs::write(
        &paths.0,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    weir.signal("HUP");
    let line = weir
        .wait_log("saying the reload was rejected", |l| {
            let l = l.to_ascii_lowercase();
            l.contains("reload") && l.contains("reject")
        })
        .await;
    assert!(
        line.contains("ERROR") || line.to_ascii_lowercase().contains("error"),
        "the reload rejection is not logged as an error: {line}"
    );
    for _ in 0..3 {
        let got = presented(&weir, dns("rot.test")).await;
        assert!(
            got == b.der,
            "after a rejected reload new connections got {}, expected B",
            which(&got, &known)
        );
    }
    let mut conn = must_connect(&weir, dns("rot.test"), client_config(Opts::default())).await;
    assert_eq!(
        conn.must_send(&weir, get("rot.test", "/still"))
            .await
            .backend(),
        "app"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Handshake timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pa = self_signed(&["a.test"]).write(dir.path(), "a");
    let backend = Backend::start("app").await;
    let tls = format!("{}      handshake_timeout: 300ms\n", certificates(&[&pa]));
    let weir = start_in(dir.path(), &tls_config(&tls, &backend), &["web"]).await;

    let mut tcp = timeout(WAIT, TcpStream::connect(weir.addr()))
        .await
        .expect("connect timed out")
        .expect("connect");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("weir sent {n} bytes to a client that never sent a ClientHello"),
        Err(_) => panic!(
            "a silent connection was still open 5s after connecting (handshake_timeout: 300ms)\n\
             --- stderr ---\n{}",
            weir.stderr()
        ),
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(4500),
        "closed only after {took:?} (handshake_timeout: 300ms)"
    );

    // A real client on the same listener is unaffected.
    let mut conn = must_connect(&weir, dns("a.test"), client_config(Opts::default())).await;
    assert_eq!(
        conn.must_send(&weir, get("a.test", "/")).await.backend(),
        "app"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. 421 Misdirected Request
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn host_not_covered_by_the_sni_certificate_gets_421() {
    let dir = tempfile::tempdir().unwrap();
    let pa = self_signed(&["a.test"]).write(dir.path(), "a");
    let pb = self_signed(&["b.test"]).write(dir.path(), "b");
    let backend = Backend::start("app").await;
    let weir = start_in(
        dir.path(),
        &tls_config(&certificates(&[&pa, &pb]), &backend),
        &["web"],
    )
    .await;

    for alpn in ["http/1.1", "h2"] {
        let cfg = client_config(Opts {
            alpn: &[alpn],
            ..Opts::default()
        });
        let mut conn = must_connect(&weir, dns("a.test"), cfg).await;
        let resp = conn.must_send(&weir, get("a.test", "/ok")).await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "{alpn}: Host a.test on SNI a.test"
        );
        let resp = conn.must_send(&weir, get("a.test:8443", "/ok")).await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "{alpn}: Host a.test:8443 on SNI a.test: body {:?}",
            resp.text()
        );
        let before = backend.requests();
        let resp = conn.must_send(&weir, get("b.test", "/other")).await;
        assert_eq!(
            resp.status,
            StatusCode::MISDIRECTED_REQUEST,
            "{alpn}: Host b.test on a connection with SNI a.test: body {:?}",
            resp.text()
        );
        assert_eq!(
            backend.requests(),
            before,
            "{alpn}: the 421 request reached the backend"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9-10. Redirect to https, HSTS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redirect_https_answers_308_to_the_https_port() {
    let backend = Backend::start("app").await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    redirect_https: 8443\n\
         pools:\n  p:\n    balance: round_robin\n    servers:\n      - address: \"{}\"\n\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n",
        backend.addr
    );
    let weir = Weir::start(&yaml).await;

    for (host, path, want) in [
        (
            "example.test",
            "/a/b?x=1&y=2",
            "https://example.test:8443/a/b?x=1&y=2",
        ),
        ("example.test:8080", "/", "https://example.test:8443/"),
    ] {
        let resp = weir.get(host, path).await;
        assert_eq!(
            resp.status,
            StatusCode::PERMANENT_REDIRECT,
            "Host {host} {path}: body {:?}",
            resp.text()
        );
        assert_eq!(
            resp.header("location").as_deref(),
            Some(want),
            "Host {host} {path}"
        );
    }
    // HTTP/1.0 may leave the host out; there is then nowhere to redirect to.
    let resp = support::raw_request(weir.addr(), b"GET /p HTTP/1.0\r\n\r\n".to_vec(), true).await;
    assert_eq!(resp.status, 400, "{:?}", resp.raw);
    assert_eq!(
        backend.requests(),
        0,
        "a redirected request reached the backend"
    );
}

#[tokio::test]
async fn hsts_header_on_responses() {
    let dir = tempfile::tempdir().unwrap();
    let pa = self_signed(&["a.test"]).write(dir.path(), "a");
    let backend = Backend::start("app").await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    tls:\n{}      hsts: \"max-age=600\"\n\
         pools:\n  p:\n    balance: round_robin\n    servers:\n      - address: \"{}\"\n\
         routes:\n  - name: app\n    match:\n      path_prefix: \"/app\"\n    pool: p\n",
        certificates(&[&pa]),
        backend.addr
    );
    let weir = start_in(dir.path(), &yaml, &["web"]).await;

    let mut conn = must_connect(&weir, dns("a.test"), client_config(Opts::default())).await;
    let resp = conn.must_send(&weir, get("a.test", "/app/x")).await;
    assert_eq!(resp.backend(), "app");
    assert_eq!(
        resp.header("strict-transport-security").as_deref(),
        Some("max-age=600")
    );
    // Weir's own answers carry it too.
    let resp = conn.must_send(&weir, get("a.test", "/nowhere")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(
        resp.header("strict-transport-security").as_deref(),
        Some("max-age=600"),
        "on weir's 404"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Mutual TLS
// ---------------------------------------------------------------------------------------------

/// A request over a fresh connection; `Err` when the handshake or the request fails.
async fn try_request(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    req: Request<Body>,
) -> Result<Resp, String> {
    let mut conn = connect(addr, dns("a.test"), cfg).await?;
    conn.send(req).await
}

#[tokio::test]
async fn client_certificates_required_and_optional() {
    let dir = tempfile::tempdir().unwrap();
    let pa = self_signed(&["a.test"]).write(dir.path(), "a");
    let ca = Ca::new("weir test client CA");
    let foreign = Ca::new("someone else's CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let alice = ca.client_cert("alice");
    let eve = foreign.client_cert("eve");
    let backend = Backend::start("app").await;
    let yaml = format!(
        "listeners:\n\
         \x20 - name: web\n    bind: \"127.0.0.1:0\"\n    tls:\n{certs}\
         \x20     client_auth:\n        ca: \"{ca_path}\"\n        required: true\n\
         \x20 - name: optional\n    bind: \"127.0.0.1:0\"\n    tls:\n{certs}\
         \x20     client_auth:\n        ca: \"{ca_path}\"\n        required: false\n\
         \x20 - name: plain\n    bind: \"127.0.0.1:0\"\n\
         pools:\n  p:\n    balance: round_robin\n    servers:\n      - address: \"{addr}\"\n\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n",
        certs = certificates(&[&pa]),
        addr = backend.addr
    );
    let weir = start_in(dir.path(), &yaml, &["web", "optional", "plain"]).await;
    let required = weir.addr_of("web");
    let optional = weir.addr_of("optional");
    let with = |c: &Cert| {
        client_config(Opts {
            client_cert: Some(c),
            ..Opts::default()
        })
    };
    let without = || client_config(Opts::default());

    // Required: no certificate, or one from another CA, gets nothing through.
    for (what, cfg) in [
        ("no client certificate", without()),
        ("a foreign CA's certificate", with(&eve)),
    ] {
        match try_request(required, cfg, get("a.test", "/secret")).await {
            Err(_) => {}
            Ok(resp) => panic!(
                "required client auth with {what}: got {} {:?}",
                resp.status,
                resp.text()
            ),
        }
    }
    assert_eq!(
        backend.requests(),
        0,
        "an unauthenticated request reached the backend"
    );

    // Required, good certificate: through, with the verified subject.
    let resp = try_request(required, with(&alice), get("a.test", "/secret"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "alice's certificate: {e}\n--- stderr ---\n{}",
                weir.stderr()
            )
        });
    assert_eq!(resp.status, StatusCode::OK, "body {:?}", resp.text());
    let subject = resp.seen().header("x-client-cert-subject");
    assert!(
        subject.as_deref().is_some_and(|s| s.contains("CN=alice")),
        "x-client-cert-subject at the backend: {subject:?}"
    );

    // Optional: a client without a certificate cannot forge the subject header.
    let forged = || {
        Request::builder()
            .uri("https://a.test/forged")
            .header("x-client-cert-subject", "CN=mallory")
            .body(empty())
            .unwrap()
    };
    let resp = try_request(optional, without(), forged())
        .await
        .unwrap_or_else(|e| panic!("optional listener without a cert: {e}"));
    assert_eq!(resp.status, StatusCode::OK, "body {:?}", resp.text());
    let subject = resp.seen().header("x-client-cert-subject");
    assert!(
        !subject.as_deref().is_some_and(|s| s.contains("mallory")),
        "a client-sent x-client-cert-subject reached the backend: {subject:?}"
    );

    // Optional with alice's certificate: alice, not mallory.
    let resp = try_request(optional, with(&alice), forged())
        .await
        .unwrap_or_else(|e| panic!("optional listener with alice's cert: {e}"));
    let subject = resp.seen().header("x-client-cert-subject");
    assert!(
        subject
            .as_deref()
            .is_some_and(|s| s.contains("CN=alice") && !s.contains("mallory")),
        "x-client-cert-subject at the backend: {subject:?}"
    );

    // A plain listener strips it too.
    let resp = weir
        .send(
            Request::builder()
                .uri(format!("http://{}/plain", weir.addr_of("plain")))
                .header("host", "a.test")
                .header("x-client-cert-subject", "CN=mallory")
                .body(empty())
                .unwrap(),
        )
        .await;
    let subject = resp.seen().header("x-client-cert-subject");
    assert!(
        subject.is_none(),
        "plain listener forwarded a client-sent x-client-cert-subject: {subject:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. TLS towards the servers
// ---------------------------------------------------------------------------------------------

/// An HTTPS backend (h2 and http/1.1 by ALPN) answering a JSON echo like [`Backend`], plus the SNI
/// of the connection (`sni`) and its number (`conn`, counting from 1).
async fn tls_backend(cert: &Cert) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], cert.key())
        .expect("backend server config");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = 0u64;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            conns += 1;
            let conn = conns;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) = timeout(WAIT, acceptor.accept(tcp)).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let sni = sni.clone();
                    async move {
                        let headers: serde_json::Map<String, serde_json::Value> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_string(),
                                    json!([String::from_utf8_lossy(v.as_bytes())]),
                                )
                            })
                            .collect();
                        let echo = json!({
                            "backend": "secure",
                            "method": req.method().as_str(),
                            "uri": req.uri().path_and_query().map_or("/", |p| p.as_str()),
                            "version": format!("{:?}", req.version()),
                            "headers": headers,
                            "body_len": 0,
                            "sni": sni,
                            "conn": conn,
                        });
                        Ok::<_, std::convert::Infallible>(Response::new(support::full(
                            Bytes::from(echo.to_string()),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn upstream_tls_verified_against_the_pool_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("weir test upstream CA");
    let other = Ca::new("an unrelated CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let other_path = other.write(dir.path(), "other.pem");
    let (addr, _task) = tls_backend(&ca.server_cert(&["localhost"])).await;
    let port = addr.port();
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
         pools:\n\
         \x20 by_sni:\n    tls: true\n    ca: \"{ca_path}\"\n    sni: localhost\n\
         \x20   servers:\n      - address: \"127.0.0.1:{port}\"\n\
         \x20 by_name:\n    tls: true\n    ca: \"{ca_path}\"\n\
         \x20   servers:\n      - address: \"localhost:{port}\"\n\
         \x20 wrong_ca:\n    tls: true\n    ca: \"{other_path}\"\n    sni: localhost\n\
         \x20   servers:\n      - address: \"127.0.0.1:{port}\"\n\
         routes:\n\
         \x20 - name: by_sni\n    match:\n      path_prefix: \"/sni\"\n    pool: by_sni\n\
         \x20 - name: by_name\n    match:\n      path_prefix: \"/name\"\n    pool: by_name\n\
         \x20 - name: wrong_ca\n    match:\n      path_prefix: \"/wrong\"\n    pool: wrong_ca\n"
    );
    let weir = start_in(dir.path(), &yaml, &["web"]).await;

    for path in ["/sni/x", "/name/y"] {
        let resp = weir.get("app.test", path).await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "{path} through an HTTPS pool: body {:?}\n--- stderr ---\n{}",
            resp.text(),
            weir.stderr()
        );
        let seen = resp.seen();
        assert_eq!(seen.backend, "secure");
        assert_eq!(seen.uri, path);
    }

    let resp = weir.get("app.test", "/wrong/z").await;
    assert_eq!(
        resp.status,
        StatusCode::BAD_GATEWAY,
        "a server whose certificate the pool's CA did not sign: body {:?}",
        resp.text()
    );
}

/// The `sni` and `conn` an HTTPS [`tls_backend`] reported.
fn sni_and_conn(resp: &Resp) -> (Option<String>, u64) {
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("echo");
    (
        v["sni"].as_str().map(str::to_string),
        v["conn"].as_u64().expect("conn"),
    )
}

#[tokio::test]
async fn upstream_tls_speaks_h2_by_alpn_and_pools_to_one_address_never_share_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("weir test upstream CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let (addr, _task) = tls_backend(&ca.server_cert(&["a.test", "b.test"])).await;
    // Two pools to the same address whose TLS identities differ only by SNI, and a third with the
    // default ALPN but `protocol: http1`.
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
         pools:\n\
         \x20 a:\n    tls: true\n    ca: \"{ca_path}\"\n    sni: a.test\n\
         \x20   servers:\n      - address: \"{addr}\"\n\
         \x20 b:\n    tls: true\n    ca: \"{ca_path}\"\n    sni: b.test\n\
         \x20   servers:\n      - address: \"{addr}\"\n\
         \x20 h1:\n    tls: true\n    ca: \"{ca_path}\"\n    sni: a.test\n    protocol: http1\n\
         \x20   servers:\n      - address: \"{addr}\"\n\
         routes:\n\
         \x20 - name: a\n    match:\n      path_prefix: \"/a\"\n    pool: a\n\
         \x20 - name: b\n    match:\n      path_prefix: \"/b\"\n    pool: b\n\
         \x20 - name: h1\n    match:\n      path_prefix: \"/h1\"\n    pool: h1\n"
    );
    let weir = start_in(dir.path(), &yaml, &["web"]).await;
    let mut conns: HashMap<&str, HashSet<u64>> = HashMap::new();
    for round in 0..4 {
        for (pool, sni, version) in [
            ("a", "a.test", "HTTP/2.0"),
            ("b", "b.test", "HTTP/2.0"),
            ("h1", "a.test", "HTTP/1.1"),
        ] {
            let resp = weir.get("app.test", &format!("/{pool}/{round}")).await;
            assert_eq!(
                resp.status,
                StatusCode::OK,
                "pool {pool}: {:?}\n--- stderr ---\n{}",
                resp.text(),
                weir.stderr()
            );
            let seen = resp.seen();
            assert_eq!(
                seen.version, version,
                "pool {pool}: protocol to the backend"
            );
            let (got_sni, conn) = sni_and_conn(&resp);
            assert_eq!(got_sni.as_deref(), Some(sni), "pool {pool} round {round}");
            conns.entry(pool).or_default().insert(conn);
        }
    }
    // Keep-alive works within a pool, and no connection ever served two pools.
    for (pool, set) in &conns {
        assert!(
            set.len() < 4,
            "pool {pool} opened a connection per request: {set:?}"
        );
    }
    let all: Vec<u64> = conns.values().flatten().copied().collect();
    let distinct: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        distinct.len(),
        "a connection was shared: {conns:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 13. weir check
// ---------------------------------------------------------------------------------------------

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .env_remove("WEIR_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run weir check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A one-listener config using this (cert, key) pair, written to `dir/weir.yaml`.
fn write_check_config(dir: &Path, cert: &str, key: &str) -> (PathBuf, String) {
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n\
         \x20       - cert: \"{cert}\"\n          key: \"{key}\"\n\
         pools:\n  p:\n    servers:\n      - address: \"127.0.0.1:9\"\n\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n"
    );
    let path = dir.join("weir.yaml");
    std::fs::write(&path, &yaml).unwrap();
    (path, yaml)
}

/// The `weir.yaml:LINE:COL: message` diagnostics in `out`.
fn diagnostics(out: &str) -> Vec<(usize, usize, String)> {
    let re = Regex::new(r"(?m)weir\.yaml:(\d+):(\d+):\s*(.*)$").unwrap();
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

fn line_of(yaml: &str, needle: &str) -> usize {
    yaml.lines()
        .position(|l| l.contains(needle))
        .expect("needle in config")
        + 1
}

/// Asserts `weir check` fails with a diagnostic on the line containing `at` whose message
/// mentions `mention`.
fn assert_check_error(dir: &Path, cert: &str, key: &str, at: &str, mention: &str, what: &str) {
    let (path, yaml) = write_check_config(dir, cert, key);
    let (ok, out) = check(&path);
    assert!(!ok, "weir check accepted {what}:\n{out}");
    let line = line_of(&yaml, at);
    let diags = diagnostics(&out);
    assert!(
        diags
            .iter()
            .any(|(l, c, m)| *l == line && *c >= 1 && m.contains(mention)),
        "{what}: no `weir.yaml:{line}:COL:` error mentioning {mention:?}; output:\n{out}"
    );
}

#[test]
fn check_refuses_a_key_that_does_not_match_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed(&["a.test"]).write(dir.path(), "a");
    let (_, other_key) = self_signed(&["a.test"]).write(dir.path(), "other");
    assert_check_error(
        dir.path(),
        &cert,
        &other_key,
        "key:",
        &other_key,
        "a key that does not match its certificate",
    );
}

#[test]
fn check_refuses_a_certificate_without_sans() {
    let dir = tempfile::tempdir().unwrap();
    let no_sans = self_signed_with(CertificateParams::new(Vec::<String>::new()).unwrap());
    let (cert, key) = no_sans.write(dir.path(), "nosan");
    assert_check_error(
        dir.path(),
        &cert,
        &key,
        "cert:",
        "nosan.pem",
        "a certificate with no subject alternative names",
    );
}

#[test]
fn check_refuses_unreadable_certificate_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = self_signed(&["a.test"]).write(dir.path(), "a");
    let missing = path_str(&dir.path().join("missing.pem"));
    assert_check_error(
        dir.path(),
        &missing,
        &key,
        "cert:",
        "missing.pem",
        "a missing certificate",
    );
    let a_dir = dir.path().join("certdir.pem");
    std::fs::create_dir(&a_dir).unwrap();
    assert_check_error(
        dir.path(),
        &path_str(&a_dir),
        &key,
        "cert:",
        "certdir.pem",
        "a directory as the certificate",
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    assert_check_error(
        dir.path(),
        &path_str(&garbage),
        &key,
        "cert:",
        "garbage.pem",
        "a file with no PEM certificate",
    );
}

#[test]
fn check_warns_about_an_expired_certificate_but_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = CertificateParams::new(vec!["old.test".to_string()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2000, 1, 1);
    p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let (cert, key) = self_signed_with(p).write(dir.path(), "expired");
    let (path, _) = write_check_config(dir.path(), &cert, &key);
    let (ok, out) = check(&path);
    assert!(
        ok,
        "weir check refused an expired (but otherwise fine) certificate:\n{out}"
    );
    let warning = out
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("warn") && l.contains("expired.pem"));
    assert!(
        warning.is_some(),
        "no warning naming expired.pem in weir check's output:\n{out}"
    );
}

#[tokio::test]
async fn health_probes_of_a_tls_pool_use_tls_and_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("weir test upstream CA");
    let other = Ca::new("an unrelated CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let other_path = other.write(dir.path(), "other.pem");
    let (addr, _task) = tls_backend(&ca.server_cert(&["localhost"])).await;
    // A TLS handshake in a debug build on a busy machine can take a while: a generous timeout.
    let health = "    health:\n      path: /healthz\n      interval: 1s\n      timeout: 800ms\n\
                  \x20     unhealthy_after: 1\n      healthy_after: 1\n";
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
         pools:\n\
         \x20 good:\n    tls: true\n    ca: \"{ca_path}\"\n    sni: localhost\n{health}\
         \x20   servers:\n      - address: \"{addr}\"\n\
         \x20 wrong_ca:\n    tls: true\n    ca: \"{other_path}\"\n    sni: localhost\n{health}\
         \x20   servers:\n      - address: \"{addr}\"\n\
         routes:\n\
         \x20 - name: good\n    match:\n      path_prefix: \"/good\"\n    pool: good\n\
         \x20 - name: wrong\n    match:\n      path_prefix: \"/\"\n    pool: wrong_ca\n\
         admin:\n  bind: \"127.0.0.1:0\"\n"
    );
    let weir = start_in(dir.path(), &yaml, &["web"]).await;
    let admin = support::control::Admin::of(&weir).await;
    let until = |pool: &'static str, what: &'static str, pred: fn(&serde_json::Value) -> bool| {
        let admin = &admin;
        async move {
            let start = Instant::now();
            loop {
                let st = admin.status().await;
                let s = support::control::find_server(&st, pool, addr).expect("server in /status");
                if pred(&s) {
                    return s;
                }
                assert!(
                    start.elapsed() < WAIT,
                    "{pool}: never {what} within {WAIT:?}: {s}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // A plain-HTTP probe of a TLS server would fail: passing proves the probe spoke TLS.
    until("good", "passed a probe", |s| {
        s["last_probe"]["ok"] == true && s["healthy"] == true
    })
    .await;
    // The wrong CA fails the handshake, and the probe says so.
    until("wrong_ca", "failed on the certificate", |s| {
        let detail = s["last_probe"]["detail"].as_str().unwrap_or_default();
        s["last_probe"]["ok"] == false
            && s["healthy"] == false
            && (detail.contains("certificate") || detail.contains("issuer"))
    })
    .await;
    let r = weir.get("app.test", "/good/x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}
