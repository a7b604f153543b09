//! Binary hand-over: while clients keep a steady stream of requests running, a new weir started
//! with the same `--handover PATH` takes the listening sockets over from the running one, which then
//! drains and exits 0. Three hand-overs in a row (A → B → C → D): not one refused connection and not
//! one failed request. A second test measures the SO_REUSEPORT-only restart (bind beside, then
//! SIGTERM the old one) for comparison; Linux may reset connections queued on the closed socket.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::load::Load;
use support::{servers, Backend, Weir};

fn config(backend: &Backend, bind: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    bind: \"{bind}\"\npools:\n  p:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\nshutdown_timeout: 10s\n",
        servers(&[backend])
    )
}

async fn exits_0(weir: &mut Weir, what: &str) {
    let status = weir
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("{what} still running 20 s later\n{}", weir.stderr()));
    assert!(
        status.success(),
        "{what} exited with {status}\n{}",
        weir.stderr()
    );
}

async fn start(config: &Path, sock: &Path) -> Weir {
    let access = config.with_file_name("access.log");
    Weir::start_path_args(
        config,
        &["web"],
        &[
            "--handover",
            sock.to_str().unwrap(),
            "--access-log",
            access.to_str().unwrap(),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_passes_the_sockets_and_loses_nothing() {
    let backend = Backend::start("x").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    let sock = dir.path().join("weir.sock");
    // Port 0: the successor does not bind at all, it receives the socket.
    std::fs::write(&path, config(&backend, "127.0.0.1:0")).unwrap();
    let mut old = start(&path, &sock).await;
    let addr = old.addr();
    old.wait_log("the handover socket", |l| {
        l.contains("handover socket ready")
    })
    .await;

    let load = Load::start(addr, "/", 3, 3);
    let started = Instant::now();
    const HANDOVERS: usize = 3;
    for n in 1..=HANDOVERS {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let new = start(&path, &sock).await;
        assert_eq!(new.addr(), addr, "the new process serves the same socket");
        new.wait_log("the takeover", |l| {
            l.contains("took over the listening sockets")
        })
        .await;
        old.wait_log("the old process to hand over", |l| {
            l.contains("handed over")
        })
        .await;
        exits_0(&mut old, &format!("the process replaced by hand-over {n}")).await;
        new.wait_log("its own handover socket", |l| {
            l.contains("handover socket ready")
        })
        .await;
        old = new;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop().await;
    println!(
        "hand-over: {HANDOVERS} hand-overs in {:?}; {} requests ok, {} failed, {} refused, {} connections opened",
        started.elapsed(),
        stats.ok,
        stats.failed,
        stats.refused,
        stats.connections
    );
    assert_eq!(
        (stats.failed, stats.refused),
        (0, 0),
        "failures across hand-overs: {:?}\n--- last weir ---\n{}",
        stats.examples,
        old.stderr()
    );
    assert!(stats.ok > 100, "the load ran: {stats:?}");
    assert_eq!(old.get("h", "/").await.backend(), "x");
}

/// SO_REUSEPORT only: B binds beside A, then A gets SIGTERM. Reported, not asserted: Linux resets
/// connections that were queued on A's socket when A closed it (unless `net.ipv4.tcp_migrate_req`
/// is set), which is why `--handover` exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuseport_restart_for_comparison() {
    let backend = Backend::start("x").await;
    let port = support::control::closed_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, config(&backend, &port.to_string())).unwrap();
    let mut a = Weir::start_path(&path, &["web"]).await;
    let load = Load::start(port, "/", 3, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = Weir::start_path(&path, &["web"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal("TERM");
    exits_0(&mut a, "the old process").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop().await;
    println!(
        "SO_REUSEPORT restart: {} requests ok, {} failed, {} refused; examples {:?}",
        stats.ok, stats.failed, stats.refused, stats.examples
    );
    assert_eq!(b.get("h", "/").await.backend(), "x");
}
