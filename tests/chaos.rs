//! Chaos: three real backends are killed (port closed, open connections cut) and restarted on the
//! same port at random while a few client loops send GETs through weir. No GET may fail.
//!
//! The schedule comes from a seeded RNG; the seed is printed, and `CHAOS_SEED=N` replays it. The run
//! is bounded (about 20 s of chaos, every loop bounded in count, everything under a 55 s timeout).
//! A server is only killed while another one is running and weir's `/status` shows it up: killing
//! the last good server would make a failure that no proxy could hide.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::config::LISTENER;
use support::control::{ctl_servers, find_server, Admin, ControlBackend};
use support::{empty, Weir};

const HOST: &str = "chaos.test";
const CHAOS: Duration = Duration::from_secs(20);
const LOOPS: usize = 4;
const PER_LOOP: usize = 5000;

fn config(servers: &str) -> String {
    format!(
        "{LISTENER}pools:\n  p:\n    balance: round_robin\n    connect_timeout: 2s\n\
         \x20   health:\n      path: /healthz\n      interval: 200ms\n      timeout: 150ms\n\
         \x20     unhealthy_after: 2\n      healthy_after: 2\n\
         \x20   passive:\n      consecutive_failures: 3\n      ejection_time: 1s\n      max_ejection_time: 4s\n\
         \x20   servers:\n{servers}\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n    retries: 2\n    timeout: 10s\n\
         admin:\n  bind: \"127.0.0.1:0\"\n"
    )
}

#[derive(Default)]
struct Tally {
    requests: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// One client loop: sequential GETs until `stop` or `PER_LOOP`, each failure recorded.
async fn client_loop(weir_url: String, l: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let client = support::client::client();
    for i in 0..PER_LOOP {
        if stop.load(SeqCst) {
            break;
        }
        let req = Request::get(format!("{weir_url}/loop{l}/{i}"))
            .header("host", HOST)
            .body(empty())
            .unwrap();
        let outcome = support::try_send(&client, req).await;
        tally.requests.fetch_add(1, SeqCst);
        let failed = match outcome {
            Ok(r) if r.status == StatusCode::OK => None,
            Ok(r) => Some(format!("{} {}", r.status, r.text())),
            Err(e) => Some(e),
        };
        if let Some(f) = failed {
            tally
                .failures
                .lock()
                .unwrap()
                .push(format!("loop {l} #{i}: {f}"));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// weir's view of a server: up by its probes and not ejected.
async fn weir_sees_up(admin: &Admin, b: &ControlBackend) -> bool {
    find_server(&admin.status().await, "p", b.addr)
        .is_some_and(|s| s["healthy"] == true && s["ejected"] == false)
}

/// Sum of the samples of `metric` (any labels) in a Prometheus text exposition.
fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_survive_servers_killed_and_restarted_at_random() {
    tokio::time::timeout(Duration::from_secs(55), chaos())
        .await
        .expect("the chaos run exceeded its 55s bound");
}

async fn chaos() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos seed {seed} (replay with CHAOS_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);

    let servers = [
        ControlBackend::start("s0").await,
        ControlBackend::start("s1").await,
        ControlBackend::start("s2").await,
    ];
    for s in &servers {
        s.set_delay(Duration::from_millis(2));
    }
    let weir = Weir::start(&config(&ctl_servers(&servers.iter().collect::<Vec<_>>()))).await;
    let admin = Admin::of(&weir).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let loops: Vec<_> = (0..LOOPS)
        .map(|l| tokio::spawn(client_loop(weir.url(""), l, stop.clone(), tally.clone())))
        .collect();

    let (mut kills, mut restarts) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < CHAOS {
        tokio::time::sleep(Duration::from_millis(rng.u64(150..=700))).await;
        let i = rng.usize(..servers.len());
        let s = &servers[i];
        if !s.is_running() {
            s.restart().await;
            restarts += 1;
            eprintln!("{:>6.2}s restart {}", start.elapsed().as_secs_f64(), s.name);
            continue;
        }
        let mut another_up = false;
        for o in servers
            .iter()
            .filter(|o| o.name != s.name && o.is_running())
        {
            another_up |= weir_sees_up(&admin, o).await;
        }
        if another_up {
            s.stop().await;
            kills += 1;
            eprintln!("{:>6.2}s kill    {}", start.elapsed().as_secs_f64(), s.name);
        }
    }
    for s in &servers {
        s.restart().await;
    }
    stop.store(true, SeqCst);
    for l in loops {
        l.await.expect("client loop");
    }

    let metrics = {
        let req = Request::get(format!("http://{}/metrics", admin.addr))
            .body(empty())
            .unwrap();
        support::send(&support::client::client(), req).await.text()
    };
    let retries = metric_sum(&metrics, "weir_retries_total");
    let ejections = metric_sum(&metrics, "weir_server_ejections");
    let requests = tally.requests.load(SeqCst);
    let failures = tally.failures.lock().unwrap().clone();
    let served: Vec<String> = servers
        .iter()
        .map(|s| format!("{}={}", s.name, s.requests()))
        .collect();
    eprintln!(
        "chaos figures: seed={seed} requests={requests} failures={} retries={retries} \
         ejections={ejections} kills={kills} restarts={restarts} served: {}",
        failures.len(),
        served.join(" ")
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} GETs failed (seed {seed}): {:?}\n--- weir stderr (warnings) ---\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        weir.logs()
            .iter()
            .filter(|l| !l.contains("weir::access"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        kills >= 3,
        "only {kills} kills: the run did not exercise failover"
    );
    assert!(requests >= 200, "only {requests} requests: no steady load");
}
