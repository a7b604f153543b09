//! `tlsload`: a load generator for new TLS connections, one full handshake per request.
//!
//! Why it exists: `bench/compare.sh`'s `tls-close` scenario (wrk, `Connection: close` over TLS)
//! measures wrk. wrk's OpenSSL 3.0 client spends about 220 µs of CPU per connection, more than
//! the servers it is pointed at (weir about 107 µs, nginx about 204 µs), so wrk fills its core
//! first and every proxy shows the same handshakes per second. This client does the same work per
//! request on rustls + aws-lc-rs for about 135 µs, so nginx and HAProxy (250-300 µs per full
//! handshake) become the bound. weir (about 100 µs) still does not: verifying the server's ECDSA
//! signature costs a client about three times what making it costs the server, so weir's rate
//! under this client is a lower bound (the `loadgen CPU %` column says so).
//!
//! ```text
//! tlsload --url https://127.0.0.1:18443/ -c 50 -d 8s [-t 1] [--timeout 5s]
//! ```
//!
//! Each of `-c` tasks loops until the deadline: TCP connect (`TCP_NODELAY`), full TLS handshake
//! (resumption disabled: no session or ticket is ever offered; TLS 1.3 or 1.2; ALPN `http/1.1`
//! only; no SNI for an IP-literal host, since an IP address is not a valid SNI name), one
//! `GET PATH HTTP/1.1` with `Connection: close`, read to EOF, check for `HTTP/1.1 200`, close.
//! Latency is connect start to EOF.
//!
//! Certificates are handled like wrk's `SSL_VERIFY_NONE`: any chain and name is accepted, but the
//! handshake signature (TLS 1.3 CertificateVerify, TLS 1.2 ServerKeyExchange) is still verified
//! against the certificate's key, as OpenSSL does, so the client does the work a real one does.
//! Key exchange groups are the classical ones in OpenSSL 3.0's order (X25519 first, its key share
//! the only one sent), not rustls' default hybrid X25519MLKEM768, so a rustls server and an
//! OpenSSL server make the same key exchange, as they do with wrk.
//!
//! `-t N` runs N OS threads, each with a current-thread tokio runtime and its share of the
//! connections. Errors are counted by kind and never stop the run. The result is one line on
//! stdout in the format `bench/report.lua` prints for wrk (`WRKRESULT requests=… p99_us=…`), where
//! `requests` counts `200` responses only; a readable summary goes to stderr. Exit status 1 when
//! not one request succeeded.

// wrk's `SSL_VERIFY_NONE`: no chain or name check, the handshake signature verified. Shared with
// the tests, which trust weir's certificates the same way.
#[path = "../tests/support/accept_any.rs"]
mod accept_any;

use accept_any::AcceptAny;
use clap::Parser;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug)]
#[command(
    name = "tlsload",
    about = "HTTPS load with a full TLS handshake per request (Connection: close)"
)]
struct Args {
    /// https://HOST[:PORT][/PATH]
    #[arg(short = 'u', long)]
    url: String,
    /// Concurrent connections
    #[arg(short = 'c', long = "connections", default_value_t = 50)]
    connections: usize,
    /// Run time (10s, 500ms, 2m; a bare number is seconds)
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// OS threads, each with a current-thread runtime
    #[arg(short = 't', long, default_value_t = 1)]
    threads: usize,
    /// A connection that has not reached EOF after this long counts as a timeout error
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// What the URL says: where to connect, what to name in SNI / `Host`, what to ask for.
struct Target {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    request: Vec<u8>,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url}: only https:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    // HOST, HOST:PORT, [V6], [V6]:PORT
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| format!("{url}: unclosed '['"))?;
        let port = match &v6[end + 1..] {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{url}: bad port"))?,
            ),
        };
        (&v6[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        Some(p) => p.parse().map_err(|_| format!("{url}: bad port '{p}'"))?,
        None => 443,
    };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    // an IP literal becomes ServerName::IpAddress, for which rustls sends no SNI
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: not a valid server name: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        .into_bytes();
    Ok(Target {
        addr,
        server_name,
        request,
    })
}

fn client_config() -> Result<ClientConfig, rustls::Error> {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let provider = CryptoProvider {
        // OpenSSL 3.0's default groups, in its order, minus the two rustls lacks (X448, P-521)
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    };
    let verifier = Arc::new(AcceptAny(provider.signature_verification_algorithms));
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// One task's (and, merged, the run's) counters.
#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    bytes: u64,
    connect_err: u64,
    read_err: u64,
    write_err: u64,
    status_err: u64,
    timeout_err: u64,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.latencies_us.extend_from_slice(&o.latencies_us);
        self.bytes += o.bytes;
        self.connect_err += o.connect_err;
        self.read_err += o.read_err;
        self.write_err += o.write_err;
        self.status_err += o.status_err;
        self.timeout_err += o.timeout_err;
    }
}

enum Failure {
    Connect,
    Read,
    Write,
    Status,
}

/// One connection: connect, handshake, request, read to EOF. Adds the bytes read to `bytes`.
async fn one(
    target: &Target,
    connector: &TlsConnector,
    buf: &mut [u8],
    bytes: &mut u64,
) -> Result<(), Failure> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|_| Failure::Connect)?;
    let _ = tcp.set_nodelay(true);
    // a handshake failure surfaces as an I/O error: a read error, as wrk counts it
    let mut tls = connector
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(|_| Failure::Read)?;
    tls.write_all(&target.request)
        .await
        .map_err(|_| Failure::Write)?;
    tls.flush().await.map_err(|_| Failure::Write)?;
    let mut head = [0u8; 12];
    let mut head_len = 0;
    loop {
        match tls.read(buf).await {
            Ok(0) => break,
            Ok(n) => {
                *bytes += n as u64;
                let take = n.min(head.len() - head_len);
                head[head_len..head_len + take].copy_from_slice(&buf[..take]);
                head_len += take;
            }
            // TCP FIN without close_notify: the response has ended all the same
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && head_len > 0 => break,
            Err(_) => return Err(Failure::Read),
        }
    }
    if head_len == 0 {
        return Err(Failure::Read); // closed before any response
    }
    if &head[..head_len] != b"HTTP/1.1 200" {
        return Err(Failure::Status);
    }
    Ok(())
}

/// One connection slot: connections back to back until the deadline. A connection still open at
/// the deadline is dropped and not counted (as wrk does).
async fn task(
    target: Arc<Target>,
    connector: TlsConnector,
    deadline: Instant,
    timeout: Duration,
) -> Stats {
    let mut st = Stats::default();
    let mut buf = vec![0u8; 16 * 1024];
    while Instant::now() < deadline {
        let start = Instant::now();
        let attempt =
            tokio::time::timeout(timeout, one(&target, &connector, &mut buf, &mut st.bytes));
        let r = tokio::select! {
            r = attempt => r,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        match r {
            Ok(Ok(())) => {
                let us = start.elapsed().as_micros();
                st.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(Err(Failure::Connect)) => st.connect_err += 1,
            Ok(Err(Failure::Read)) => st.read_err += 1,
            Ok(Err(Failure::Write)) => st.write_err += 1,
            Ok(Err(Failure::Status)) => st.status_err += 1,
            Err(_elapsed) => st.timeout_err += 1,
        }
    }
    st
}

fn run_thread(
    target: Arc<Target>,
    connector: TlsConnector,
    conns: usize,
    deadline: std::time::Instant,
    timeout: Duration,
) -> io::Result<Stats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let deadline = Instant::from_std(deadline);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..conns {
            set.spawn(task(target.clone(), connector.clone(), deadline, timeout));
        }
        let mut total = Stats::default();
        while let Some(r) = set.join_next().await {
            total.merge(r.map_err(io::Error::other)?);
        }
        Ok(total)
    })
}

/// The value at quantile `q` of sorted `v` (nearest rank), 0 when empty.
fn percentile(v: &[u32], q: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn main() {
    let args = Args::parse();
    if args.connections == 0 || args.threads == 0 {
        eprintln!("tlsload: -c and -t must be at least 1");
        std::process::exit(2);
    }
    let threads = args.threads.min(args.connections);
    let target = match parse_url(&args.url) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("tlsload: {e}");
            std::process::exit(2);
        }
    };
    let config = match client_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tlsload: TLS setup: {e}");
            std::process::exit(2);
        }
    };
    let connector = TlsConnector::from(Arc::new(config));

    let start = std::time::Instant::now();
    let deadline = start + args.duration;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            // connections spread over the threads as evenly as they divide
            let conns = args.connections / threads + usize::from(i < args.connections % threads);
            let (target, connector, timeout) = (target.clone(), connector.clone(), args.timeout);
            std::thread::Builder::new()
                .name(format!("tlsload-{i}"))
                .spawn(move || run_thread(target, connector, conns, deadline, timeout))
                .expect("spawn a load thread")
        })
        .collect();
    let mut st = Stats::default();
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => st.merge(s),
            Ok(Err(e)) => {
                eprintln!("tlsload: a load thread failed: {e}");
                std::process::exit(2);
            }
            Err(_) => {
                eprintln!("tlsload: a load thread panicked");
                std::process::exit(2);
            }
        }
    }
    let elapsed = start.elapsed();

    let lat = &mut st.latencies_us;
    lat.sort_unstable();
    let requests = lat.len();
    let (p50, p99, p999) = (
        percentile(lat, 0.50),
        percentile(lat, 0.99),
        percentile(lat, 0.999),
    );
    let max = lat.last().copied().unwrap_or(0);
    let mean = if requests == 0 {
        0.0
    } else {
        lat.iter().map(|&v| f64::from(v)).sum::<f64>() / requests as f64
    };
    let duration_us = elapsed.as_micros();
    println!(
        "WRKRESULT requests={requests} duration_us={duration_us} bytes={} connect_err={} \
         read_err={} write_err={} status_err={} timeout_err={} p50_us={p50} p99_us={p99} \
         p999_us={p999} mean_us={mean:.1} max_us={max}",
        st.bytes, st.connect_err, st.read_err, st.write_err, st.status_err, st.timeout_err
    );
    let secs = elapsed.as_secs_f64();
    eprintln!(
        "tlsload {}: {threads} thread(s), {} connections, {secs:.2} s\n  \
         {requests} requests (one full TLS handshake each), {:.1} req/s, {:.2} MiB read\n  \
         latency (connect to EOF) p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, \
         mean {:.2} ms, max {:.2} ms\n  \
         errors: connect {}, read {}, write {}, status {}, timeout {}",
        args.url,
        args.connections,
        requests as f64 / secs,
        st.bytes as f64 / 1048576.0,
        f64::from(p50) / 1000.0,
        f64::from(p99) / 1000.0,
        f64::from(p999) / 1000.0,
        mean / 1000.0,
        f64::from(max) / 1000.0,
        st.connect_err,
        st.read_err,
        st.write_err,
        st.status_err,
        st.timeout_err
    );
    if requests == 0 {
        std::process::exit(1);
    }
}
