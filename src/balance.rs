//! Choosing a server within a pool.
//!
//! Every pick is lock-free and O(1) or O(log n) except `least_request`, which scans the pool's servers
//! (a few cache lines of atomics; exactness is what the algorithm promises). Unavailable servers are
//! skipped without re-computing any table.

use crate::config::BalanceKind;
use crate::pool::Server;
use http::{HeaderMap, HeaderName};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use xxhash_rust::xxh3::xxh3_64;

/// Virtual nodes on the hash ring per unit of weight: enough for an even spread and ~1/n remapping.
const VNODES_PER_WEIGHT: usize = 160;

#[derive(Debug)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug)]
pub enum Balancer {
    /// nginx's smooth weighted round robin, precomputed into one cycle and walked by one atomic.
    RoundRobin {
        seq: Box<[u32]>,
        next: AtomicUsize,
    },
    LeastRequest {
        next: AtomicUsize,
    },
    PowerOfTwo {
        cumulative: Box<[u64]>,
    },
    Random {
        cumulative: Box<[u64]>,
    },
    /// Consistent hashing (a ring of virtual nodes keyed by server address).
    Hash {
        ring: Box<[(u64, u32)]>,
        key: HashKey,
    },
}

/// What a pick may look at about the request.
pub struct PickInput<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
}

impl Balancer {
    pub fn new(kind: BalanceKind, hash_key: Option<&str>, servers: &[Server]) -> Balancer {
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        let hash = |key| Balancer::Hash {
            ring: ring(servers),
            key,
        };
        match kind {
            BalanceKind::RoundRobin => Balancer::RoundRobin {
                seq: smooth_sequence(&weights),
                next: AtomicUsize::new(0),
            },
            BalanceKind::LeastRequest => Balancer::LeastRequest {
                next: AtomicUsize::new(0),
            },
            BalanceKind::PowerOfTwo => Balancer::PowerOfTwo {
                cumulative: cumulative(&weights),
            },
            BalanceKind::Random => Balancer::Random {
                cumulative: cumulative(&weights),
            },
            BalanceKind::IpHash => hash(HashKey::ClientIp),
            BalanceKind::HeaderHash => hash(HashKey::Header(
                HeaderName::from_bytes(hash_key.unwrap_or("x-hash-key").as_bytes())
                    .unwrap_or(HeaderName::from_static("x-hash-key")),
            )),
            BalanceKind::CookieHash => hash(HashKey::Cookie(hash_key.unwrap_or("").to_string())),
        }
    }

    /// Picks a server index for which `ok` holds, or `None` when there is none.
    pub fn pick(
        &self,
        servers: &[Server],
        input: &PickInput<'_>,
        ok: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        match self {
            // A miss consumes its slot of the cycle, so the others keep their exact proportions
            // (walking on from a fixed start would hand a down server's share to its successor).
            Balancer::RoundRobin { seq, next } => (0..seq.len())
                .map(|_| seq[next.fetch_add(1, Relaxed) % seq.len()] as usize)
                .find(|&i| ok(i)),
            Balancer::LeastRequest { next } => {
                least_loaded(servers, next.fetch_add(1, Relaxed), &ok)
            }
            Balancer::PowerOfTwo { cumulative } => {
                let a = weighted(cumulative);
                let mut b = weighted(cumulative);
                if b == a && n > 1 {
                    b = (a + 1 + fastrand::usize(..n - 1)) % n;
                }
                match (ok(a), ok(b)) {
                    (true, true) => Some(if lighter(&servers[b], &servers[a]) {
                        b
                    } else {
                        a
                    }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => least_loaded(servers, fastrand::usize(..n), &ok),
                }
            }
            Balancer::Random { cumulative } => {
                let first = weighted(cumulative);
                if ok(first) {
                    return Some(first);
                }
                (1..n).map(|k| (first + k) % n).find(|&i| ok(i))
            }
            Balancer::Hash { ring, key } => match hash_of(key, input) {
                Some(h) => walk_ring(ring, h, &ok),
                None => {
                    let start = fastrand::usize(..n);
                    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
                }
            },
        }
    }
}

/// Whether `a` carries less load than `b` relative to their weights.
fn lighter(a: &Server, b: &Server) -> bool {
    let la = a.state.in_flight.load(Relaxed) as u64 * b.weight as u64;
    let lb = b.state.in_flight.load(Relaxed) as u64 * a.weight as u64;
    la < lb
}

fn least_loaded(servers: &[Server], start: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let n = servers.len();
    let mut best: Option<usize> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if !ok(i) {
            continue;
        }
        best = match best {
            Some(b) if !lighter(&servers[i], &servers[b]) => Some(b),
            _ => Some(i),
        };
    }
    best
}

fn weighted(cumulative: &[u64]) -> usize {
    let total = *cumulative.last().unwrap_or(&1);
    let r = fastrand::u64(..total.max(1));
    cumulative.partition_point(|&c| c <= r)
}

fn cumulative(weights: &[u32]) -> Box<[u64]> {
    let mut acc = 0u64;
    weights
        .iter()
        .map(|&w| {
            acc += w.max(1) as u64;
            acc
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One full cycle of nginx's smooth weighted round robin (weights 5,1,1 give a,a,b,a,c,a,a).
pub fn smooth_sequence(weights: &[u32]) -> Box<[u32]> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| (x.max(1) / g) as i64).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq.into_boxed_slice()
}

fn ring(servers: &[Server]) -> Box<[(u64, u32)]> {
    let mut ring = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        for v in 0..(s.weight as usize * VNODES_PER_WEIGHT) {
            let point = xxh3_64(format!("{}#{v}", s.address).as_bytes());
            ring.push((point, i as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

fn walk_ring(ring: &[(u64, u32)], h: u64, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let start = ring.partition_point(|&(p, _)| p < h);
    (0..ring.len())
        .map(|k| ring[(start + k) % ring.len()].1 as usize)
        .find(|&i| ok(i))
}

fn hash_of(key: &HashKey, input: &PickInput<'_>) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(match input.client_ip {
            IpAddr::V4(v4) => xxh3_64(&v4.octets()),
            IpAddr::V6(v6) => xxh3_64(&v6.octets()),
        }),
        HashKey::Header(name) => input.headers.get(name).map(|v| xxh3_64(v.as_bytes())),
        HashKey::Cookie(name) => {
            crate::router::matcher::cookie(input.headers, name).map(|v| xxh3_64(v.as_bytes()))
        }
    }
}

/// The hash `cookie_hash` and `header_hash` use, exposed for tests and benches.
pub fn key_hash(value: &str) -> u64 {
    xxh3_64(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Server;

    fn servers(weights: &[u32]) -> Vec<Server> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Server::for_test(&format!("10.0.0.{i}:80"), w))
            .collect()
    }

    fn input(h: &HeaderMap) -> PickInput<'_> {
        PickInput {
            client_ip: "127.0.0.1".parse().unwrap(),
            headers: h,
        }
    }

    #[test]
    fn smooth_round_robin_matches_nginx() {
        assert_eq!(&*smooth_sequence(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*smooth_sequence(&[1, 1, 1]), &[0, 1, 2]);
        assert_eq!(&*smooth_sequence(&[2, 6]), &[1, 0, 1, 1]);
    }

    #[test]
    fn round_robin_skips_unavailable_servers() {
        let s = servers(&[1, 1, 1]);
        let b = Balancer::new(BalanceKind::RoundRobin, None, &s);
        let h = HeaderMap::new();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[b.pick(&s, &input(&h), |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts, [150, 0, 150]);
        assert_eq!(b.pick(&s, &input(&h), |_| false), None);
    }

    #[test]
    fn random_respects_weights() {
        let s = servers(&[1, 3]);
        let b = Balancer::new(BalanceKind::Random, None, &s);
        let h = HeaderMap::new();
        let mut counts = [0; 2];
        for _ in 0..40_000 {
            counts[b.pick(&s, &input(&h), |_| true).unwrap()] += 1;
        }
        let ratio = counts[1] as f64 / counts[0] as f64;
        assert!((2.7..3.3).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn least_request_prefers_idle_server() {
        let s = servers(&[1, 1, 1]);
        s[0].state.in_flight.store(5, Relaxed);
        s[2].state.in_flight.store(1, Relaxed);
        let b = Balancer::new(BalanceKind::LeastRequest, None, &s);
        let h = HeaderMap::new();
        for _ in 0..10 {
            assert_eq!(b.pick(&s, &input(&h), |_| true), Some(1));
        }
    }

    #[test]
    fn consistent_hash_remaps_about_one_nth() {
        let four = servers(&[1, 1, 1, 1]);
        let three: Vec<Server> = four[..3]
            .iter()
            .map(|s| Server::for_test(&s.address, 1))
            .collect();
        let b4 = Balancer::new(BalanceKind::HeaderHash, Some("x-user"), &four);
        let b3 = Balancer::new(BalanceKind::HeaderHash, Some("x-user"), &three);
        let (mut moved, mut counts) = (0, [0; 4]);
        for k in 0..4000 {
            let mut h = HeaderMap::new();
            h.insert("x-user", format!("user-{k}").parse().unwrap());
            let a = b4.pick(&four, &input(&h), |_| true).unwrap();
            let c = b3.pick(&three, &input(&h), |_| true).unwrap();
            counts[a] += 1;
            if a != 3 {
                assert_eq!(a, c, "a key on a remaining server moved");
            } else {
                moved += 1;
            }
        }
        assert!(
            (700..1300).contains(&moved),
            "moved {moved}, spread {counts:?}"
        );
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }
}
