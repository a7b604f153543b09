//! Prometheus metrics (prometheus-client families, text exposition on the admin listener).
//!
//! Labels hold `Arc<str>` names so recording a request clones pointers, not strings. Latency uses a
//! histogram of atomic buckets: prometheus-client's own histogram takes a write lock per observation,
//! which would put a lock on the request path.

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A label value that is a shared name.
///
/// prometheus-client finds a series in a `HashMap` with SipHash, several times per request; a name
/// hashes as one precomputed word (xxh3 of its text, so equal names hash alike) instead of its
/// bytes, which made SipHash about 2% of a small request's instructions.
#[derive(Clone, Debug)]
pub struct Name(Arc<str>, u64);

impl Name {
    pub fn new(s: &Arc<str>) -> Name {
        Name(s.clone(), xxhash_rust::xxh3::xxh3_64(s.as_bytes()))
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.1 == other.1 && self.0 == other.0
    }
}

impl Eq for Name {}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.1);
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        e.write_str(&self.0)
    }
}

fn dash() -> Name {
    static DASH: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    Name::new(DASH.get_or_init(|| "-".into()))
}

fn name(s: &Arc<str>) -> Name {
    Name::new(s)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: Name,
    pub route: Name,
    pub pool: Name,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub pool: Name,
    pub server: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerClassLabels {
    pub pool: Name,
    pub server: Name,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A lock-free histogram with fixed latency buckets (seconds). A handle: clones share the counts,
/// so a series found once can be kept (see [`Memo`]).
#[derive(Debug, Default, Clone)]
pub struct Histogram(Arc<Buckets>);

#[derive(Debug, Default)]
struct Buckets {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.0.counts[i].fetch_add(1, Relaxed);
        self.0.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut e: MetricEncoder) -> Result<(), std::fmt::Error> {
        // encode_histogram accumulates per-bucket counts itself: pass them uncumulated.
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, c) in self.0.counts.iter().enumerate() {
            let n = c.load(Relaxed);
            acc += n;
            buckets.push((BUCKETS.get(i).copied().unwrap_or(f64::MAX), n));
        }
        let sum = self.0.sum_micros.load(Relaxed) as f64 / 1e6;
        e.encode_histogram::<RouteLabels>(sum, acc, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

pub struct Metrics {
    /// Tells this instance's entries in the [`Memo`] from another's (tests run several).
    id: u64,
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_requests: Family<ServerClassLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    bytes_sent: Family<RouteLabels, Counter>,
    pub connections: Family<ListenerLabels, Gauge>,
    pub connections_total: Family<ListenerLabels, Counter>,
    pub connections_refused: Family<ListenerLabels, Counter>,
    pub in_flight: Gauge,
    pub upgraded: Gauge,
    pub retries: Counter,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub tls_handshakes: Family<OutcomeLabels, Counter>,
    pub server_up: Family<ServerLabels, Gauge>,
    pub server_in_flight: Family<ServerLabels, Gauge>,
    pub server_ejections: Family<ServerLabels, Gauge>,
    pub server_draining: Family<ServerLabels, Gauge>,
    pub worker_connections: Family<WorkerLabels, Gauge>,
}

/// The series a request was last counted in, per thread, so that the next request of the same
/// listener, route, server and status class counts without looking anything up: finding four
/// series in their families (hashing, a read lock each) was about 2% of a small request's
/// instructions. Direct-mapped, a few entries: a miss costs the lookups it saves.
struct Memo {
    key: MemoKey,
    series: Series,
    /// The names the key points at, kept alive so no other name can take their address.
    _names: [Option<Arc<str>>; 4],
}

struct Series {
    requests: Counter,
    upstream: Option<Counter>,
    duration: Histogram,
    bytes: Counter,
}

impl Series {
    fn count(&self, dur: Duration, bytes: u64) {
        self.requests.inc();
        if let Some(u) = &self.upstream {
            u.inc();
        }
        self.duration.observe(dur);
        self.bytes.inc_by(bytes);
    }
}

/// Which metrics instance, and the addresses of the names (0 for none), and the status class.
#[derive(Clone, Copy, PartialEq, Eq)]
struct MemoKey([usize; 6]);

/// The names and status one finished request is counted by.
struct Served<'a> {
    listener: &'a Arc<str>,
    route: Option<&'a Arc<str>>,
    pool: Option<&'a Arc<str>>,
    server: Option<&'a Arc<str>>,
    status: u16,
}

impl MemoKey {
    fn new(id: u64, r: &Served<'_>) -> MemoKey {
        let addr = |n: Option<&Arc<str>>| n.map_or(0, |n| Arc::as_ptr(n) as *const u8 as usize);
        MemoKey([
            id as usize,
            addr(Some(r.listener)),
            addr(r.route),
            addr(r.pool),
            addr(r.server),
            class_index(r.status),
        ])
    }

    fn slot(&self) -> usize {
        let h = self.0.iter().fold(0usize, |h, w| h.rotate_left(5) ^ w);
        (h ^ (h >> 7) ^ (h >> 13)) % MEMO_SLOTS
    }
}

const MEMO_SLOTS: usize = 8;

thread_local! {
    static MEMO: std::cell::RefCell<[Option<Memo>; MEMO_SLOTS]> = Default::default();
}

fn class(status: u16) -> &'static str {
    ["1xx", "2xx", "3xx", "4xx", "5xx"][class_index(status)]
}

fn class_index(status: u16) -> usize {
    match status {
        100..=499 => (status / 100 - 1) as usize,
        _ => 4,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("weir");
        static IDS: AtomicU64 = AtomicU64::new(0);
        let m = Metrics {
            id: IDS.fetch_add(1, Relaxed),
            requests: Family::default(),
            upstream_requests: Family::default(),
            errors: Family::default(),
            duration: Family::default(),
            bytes_sent: Family::default(),
            connections: Family::default(),
            connections_total: Family::default(),
            connections_refused: Family::default(),
            in_flight: Gauge::default(),
            upgraded: Gauge::default(),
            retries: Counter::default(),
            reloads: Family::default(),
            tls_handshakes: Family::default(),
            server_up: Family::default(),
            server_in_flight: Family::default(),
            server_ejections: Family::default(),
            server_draining: Family::default(),
            worker_connections: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "requests",
            "Requests answered, by listener, route, pool and status class",
            m.requests.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests answered by each server, by status class",
            m.upstream_requests.clone(),
        );
        r.register(
            "local_replies",
            "Requests weir answered or cut short itself, by reason",
            m.errors.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request to end of response, by route",
            m.duration.clone(),
        );
        r.register(
            "response_bytes",
            "Response body bytes sent, by route",
            m.bytes_sent.clone(),
        );
        r.register(
            "active_connections",
            "Open client connections, by listener",
            m.connections.clone(),
        );
        r.register(
            "connections",
            "Accepted client connections, by listener",
            m.connections_total.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections refused by a connection cap",
            m.connections_refused.clone(),
        );
        r.register(
            "in_flight_requests",
            "Requests being served",
            m.in_flight.clone(),
        );
        r.register(
            "active_upgraded_connections",
            "Open upgraded (WebSocket) connections being spliced",
            m.upgraded.clone(),
        );
        r.register(
            "retries",
            "Requests retried on another server",
            m.retries.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads, by outcome",
            m.reloads.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes, by outcome",
            m.tls_handshakes.clone(),
        );
        r.register(
            "server_up",
            "1 when a server is healthy and not ejected",
            m.server_up.clone(),
        );
        r.register(
            "server_in_flight_requests",
            "Requests in flight per server",
            m.server_in_flight.clone(),
        );
        r.register(
            "server_ejections",
            "Passive ejections per server since start",
            m.server_ejections.clone(),
        );
        r.register(
            "server_draining",
            "1 when a server is draining",
            m.server_draining.clone(),
        );
        r.register(
            "worker_connections",
            "Client connections each worker (event-loop thread) is serving",
            m.worker_connections.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Build information", build);
        Metrics { registry: r, ..m }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn request_done(
        &self,
        listener: &Arc<str>,
        route: Option<&Arc<str>>,
        pool: Option<&Arc<str>>,
        server: Option<&Arc<str>>,
        status: u16,
        reason: &'static str,
        dur: Duration,
        bytes: u64,
    ) {
        if reason != "ok" {
            self.errors.get_or_create(&ReasonLabels { reason }).inc();
        }
        let served = Served {
            listener,
            route,
            pool,
            server,
            status,
        };
        let key = MemoKey::new(self.id, &served);
        let counted = MEMO.try_with(|memo| {
            let mut memo = memo.borrow_mut();
            let slot = &mut memo[key.slot()];
            let series = match slot {
                Some(m) if m.key == key => &m.series,
                _ => &slot.insert(self.series(key, &served)).series,
            };
            series.count(dur, bytes);
        });
        if counted.is_err() {
            // The thread is going away (its memo with it): count without one.
            self.series(key, &served).series.count(dur, bytes);
        }
    }

    /// The series one request is counted in, found in the families (a hashed lookup under a
    /// read lock each), for the [`Memo`] to keep.
    fn series(&self, key: MemoKey, r: &Served<'_>) -> Memo {
        let Served {
            listener,
            route,
            pool,
            server,
            status,
        } = *r;
        let route_name = route.map_or_else(dash, name);
        let pool_name = pool.map_or_else(dash, name);
        let c = class(status);
        let requests = self
            .requests
            .get_or_create(&RequestLabels {
                listener: Name::new(listener),
                route: route_name.clone(),
                pool: pool_name.clone(),
                class: c,
            })
            .clone();
        let upstream = server.map(|s| {
            self.upstream_requests
                .get_or_create(&ServerClassLabels {
                    pool: pool_name,
                    server: name(s),
                    class: c,
                })
                .clone()
        });
        let rl = RouteLabels { route: route_name };
        Memo {
            key,
            series: Series {
                requests,
                upstream,
                duration: self.duration.get_or_create(&rl).clone(),
                bytes: self.bytes_sent.get_or_create(&rl).clone(),
            },
            _names: [
                Some(listener.clone()),
                route.cloned(),
                pool.cloned(),
                server.cloned(),
            ],
        }
    }

    /// Counts a cut that has no request of its own to be logged with.
    pub fn local_reply(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn listener(&self, l: &Arc<str>) -> ListenerLabels {
        ListenerLabels {
            listener: Name::new(l),
        }
    }

    pub fn server(&self, pool: &Arc<str>, server: &Arc<str>) -> ServerLabels {
        ServerLabels {
            pool: Name::new(pool),
            server: Name::new(server),
        }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, needle: &str) -> Option<String> {
        m.encode()
            .lines()
            .find(|l| l.contains(needle))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
    }

    #[test]
    fn remembered_series_count_for_their_own_instance_and_class() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let l: Arc<str> = "web".into();
        let r: Arc<str> = "api".into();
        let p: Arc<str> = "pool".into();
        let s: Arc<str> = "127.0.0.1:1".into();
        let d = Duration::from_millis(1);
        for _ in 0..3 {
            a.request_done(&l, Some(&r), Some(&p), Some(&s), 200, "ok", d, 10);
        }
        a.request_done(&l, Some(&r), Some(&p), Some(&s), 503, "upstream", d, 0);
        b.request_done(&l, Some(&r), Some(&p), None, 200, "ok", d, 5);
        // A name with the same text at another address is the same series.
        let r2: Arc<str> = "api".into();
        a.request_done(&l, Some(&r2), Some(&p), Some(&s), 200, "ok", d, 1);

        let req = |m: &Metrics, class: &str| {
            count(m, &format!("weir_requests_total{{listener=\"web\",route=\"api\",pool=\"pool\",class=\"{class}\"}}"))
        };
        assert_eq!(req(&a, "2xx").as_deref(), Some("4"));
        assert_eq!(req(&a, "5xx").as_deref(), Some("1"));
        assert_eq!(req(&b, "2xx").as_deref(), Some("1"));
        assert_eq!(req(&b, "5xx"), None);
        assert_eq!(
            count(&a, "weir_response_bytes_total{route=\"api\"}").as_deref(),
            Some("31")
        );
        assert_eq!(
            count(&b, "weir_response_bytes_total{route=\"api\"}").as_deref(),
            Some("5")
        );
        assert_eq!(
            count(
                &a,
                "weir_upstream_requests_total{pool=\"pool\",server=\"127.0.0.1:1\",class=\"2xx\"}"
            )
            .as_deref(),
            Some("4")
        );
        assert_eq!(count(&b, "weir_upstream_requests_total"), None);
        assert_eq!(
            count(&a, "weir_request_duration_seconds_count{route=\"api\"}").as_deref(),
            Some("5")
        );
    }

    #[test]
    fn classes_cover_every_status() {
        assert_eq!(class(101), "1xx");
        assert_eq!(class(204), "2xx");
        assert_eq!(class(308), "3xx");
        assert_eq!(class(499), "4xx");
        assert_eq!(class(500), "5xx");
        assert_eq!(class(0), "5xx");
        assert_eq!(class(999), "5xx");
    }
}
