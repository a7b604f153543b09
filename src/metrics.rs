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

/// A lock-free histogram with fixed latency buckets (seconds).
#[derive(Debug, Default)]
pub struct Histogram {
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
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
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
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Relaxed);
            acc += n;
            buckets.push((BUCKETS.get(i).copied().unwrap_or(f64::MAX), n));
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        e.encode_histogram::<RouteLabels>(sum, acc, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

pub struct Metrics {
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
}

fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
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
        let m = Metrics {
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
        let route = route.map_or_else(dash, name);
        let pool = pool.map_or_else(dash, name);
        let c = class(status);
        self.requests
            .get_or_create(&RequestLabels {
                listener: Name::new(listener),
                route: route.clone(),
                pool: pool.clone(),
                class: c,
            })
            .inc();
        if let Some(s) = server {
            self.upstream_requests
                .get_or_create(&ServerClassLabels {
                    pool,
                    server: name(s),
                    class: c,
                })
                .inc();
        }
        if reason != "ok" {
            self.errors.get_or_create(&ReasonLabels { reason }).inc();
        }
        let rl = RouteLabels { route };
        self.duration.get_or_create(&rl).observe(dur);
        self.bytes_sent.get_or_create(&rl).inc_by(bytes);
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
