//! The sticky-session cookie decoder, with and without a `secret`, on arbitrary Cookie headers.
//!
//! A value is accepted only if it is exactly one of our servers' values; every value we issue in a
//! `Set-Cookie` comes back to the same server; after `strip` no server sees the affinity cookie.
#![no_main]

use arbitrary::Arbitrary;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use weir::pool::Pool;
use weir::router::matcher;
use weir::sticky::server_value;
use weir_fuzz::{header_map, RawHeader};

const CONFIG: &str = r#"
pools:
  plain:
    servers:
      - address: "127.0.0.1:9001"
      - address: "127.0.0.1:9002"
      - address: "backend.internal:80"
    sticky: { cookie: sid, ttl: 1h }
  keyed:
    servers:
      - address: "127.0.0.1:9001"
      - address: "[::1]:9002"
    sticky: { cookie: weir_s, secret: "k3y", domain: example.com, strip: true }
"#;

static POOLS: LazyLock<Vec<Pool>> = LazyLock::new(|| {
    let (config, _) = weir::config::parse("sticky.yaml", CONFIG).expect("fixed config is valid");
    config
        .pools
        .iter()
        .map(|p| Pool::build(p, None).expect("pool builds"))
        .collect()
});

/// How the affinity cookie is written into the request.
#[derive(Arbitrary, Debug)]
enum Value {
    /// One of the pool's real values, possibly disguised.
    Server {
        index: u8,
        quote: bool,
        pad: bool,
        upper: bool,
        cut: u8,
    },
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    keyed: bool,
    before: Vec<(String, String)>,
    value: Option<Value>,
    /// Spaces around the name, as `sid =x`.
    name_pad: bool,
    after: Vec<(String, String)>,
    extra: Vec<RawHeader>,
    split: bool,
    tls: bool,
    issued: u8,
    pool: String,
    address: String,
    secret: Option<String>,
}

fuzz_target!(|input: Input| {
    let v = server_value(&input.pool, &input.address, input.secret.as_deref());
    assert_eq!(v.len(), if input.secret.is_some() { 32 } else { 16 });
    assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));

    let pool = &POOLS[input.keyed as usize];
    let sticky = pool.sticky.as_ref().expect("sticky pool");
    let n = pool.servers.len();
    let name = sticky.config.cookie.as_str();

    let mut pairs: Vec<String> = input
        .before
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if let Some(value) = &input.value {
        let v = match value {
            Value::Server {
                index,
                quote,
                pad,
                upper,
                cut,
            } => {
                let mut v = sticky.value(*index as usize % n).to_string();
                v.truncate(v.len() - (*cut as usize % 4).min(v.len()));
                if *upper {
                    v = v.to_ascii_uppercase();
                }
                if *quote {
                    v = format!("\"{v}\"");
                }
                if *pad {
                    v = format!(" {v} ");
                }
                v
            }
            Value::Raw(s) => s.clone(),
        };
        let k = if input.name_pad {
            format!(" {name} ")
        } else {
            name.to_string()
        };
        pairs.push(format!("{k}={v}"));
    }
    pairs.extend(input.after.iter().map(|(k, v)| format!("{k}={v}")));
    let mut h = header_map(&input.extra);
    if input.split {
        for p in &pairs {
            if let Ok(v) = HeaderValue::from_str(p) {
                h.append(http::header::COOKIE, v);
            }
        }
    } else if let Ok(v) = HeaderValue::from_str(&pairs.join("; ")) {
        h.append(http::header::COOKIE, v);
    }

    let found = sticky.lookup(&h);
    let seen = matcher::cookie(&h, name);
    if let Some(i) = found {
        assert!(i < n);
        assert_eq!(
            seen,
            Some(sticky.value(i)),
            "accepted a value that is not ours"
        );
    }
    if let Some(s) = seen {
        let ours = (0..n).find(|&i| sticky.value(i) == s);
        assert_eq!(found, ours, "cookie {s:?}");
    }

    // What we issue comes back to the same server.
    let i = input.issued as usize % n;
    let set = sticky.set_cookie(i, input.tls);
    let set = set.to_str().expect("Set-Cookie is ASCII");
    let first = set.split(';').next().unwrap();
    let mut back = http::HeaderMap::new();
    back.insert(http::header::COOKIE, HeaderValue::from_str(first).unwrap());
    assert_eq!(sticky.lookup(&back), Some(i), "issued {set:?}");
    assert_eq!(
        set.contains("; Secure"),
        sticky.config.secure.unwrap_or(input.tls)
    );

    // The server behind us never sees the affinity cookie.
    let others_before: Vec<String> = cookie_pairs(&h)
        .into_iter()
        .filter(|(k, _)| k.trim() != name)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    sticky.strip(&mut h);
    if sticky.config.strip {
        assert_eq!(
            matcher::cookie(&h, name),
            None,
            "affinity cookie left for the server"
        );
        assert_eq!(sticky.lookup(&h), None);
        let after: Vec<String> = cookie_pairs(&h)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(after, others_before, "other cookies changed");
    }
});

/// Every `k=v` pair of every Cookie header, trimmed, in order (pairs without `=` are skipped).
fn cookie_pairs(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
