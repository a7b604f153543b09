//! Cookie parsing and the header rewriting done on every proxied request, on arbitrary headers.
//!
//! Checks the promises the proxy relies on: no hop-by-hop header (or one that `Connection` names)
//! survives; `x-forwarded-for` is a single header ending in the client address; a request id is
//! always there and sane; configured edits land as written.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use weir::config::HeaderOps;
use weir::proxy::headers;
use weir::router::matcher;
use weir_fuzz::{header_map, Name, RawHeader};

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<RawHeader>,
    cookie_name: String,
    client: IpAddr,
    tls: bool,
    forward_host: bool,
    set: Vec<(Name, Vec<u8>)>,
    add: Vec<(Name, Vec<u8>)>,
    remove: Vec<Name>,
}

const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fuzz_target!(|input: Input| {
    let mut h = header_map(&input.headers);

    // Cookie lookup: whatever it finds is a trimmed piece of one Cookie header.
    if let Some(v) = matcher::cookie(&h, &input.cookie_name) {
        assert!(
            !v.starts_with(' ') && !v.ends_with(' ') && !v.contains(';'),
            "{v:?}"
        );
        let in_header = h
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|c| c.to_str().ok())
            .any(|c| c.contains(v));
        assert!(in_header, "cookie value {v:?} not from a Cookie header");
    }
    let _ = headers::wants_trailers(&h);

    let named: Vec<HeaderName> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    headers::remove_hop_by_hop(&mut h);
    for n in HOP {
        assert!(!h.contains_key(n), "hop-by-hop {n} kept");
    }
    for n in &named {
        assert!(!h.contains_key(n), "{n} named by Connection kept");
    }

    let host = h
        .get(http::header::HOST)
        .cloned()
        .filter(|_| input.forward_host);
    let proto = if input.tls { "https" } else { "http" };
    headers::add_forwarded(&mut h, input.client, proto, host.as_ref());
    let ip = input.client.to_canonical().to_string();
    let xff: Vec<&HeaderValue> = h.get_all(headers::X_FORWARDED_FOR).iter().collect();
    assert_eq!(xff.len(), 1, "x-forwarded-for must be one header");
    let xff = xff[0].to_str().expect("x-forwarded-for is ASCII");
    assert!(
        xff == ip || xff.ends_with(&format!(", {ip}")),
        "x-forwarded-for {xff:?} does not end with {ip}"
    );
    assert_eq!(h[headers::X_FORWARDED_PROTO], proto);
    assert_eq!(h.get(headers::X_FORWARDED_HOST), host.as_ref());

    let id = headers::request_id(&mut h);
    assert!(!id.is_empty() && id.len() <= 200);
    assert_eq!(h.get(headers::X_REQUEST_ID), Some(&id));

    let pairs = |v: &[(Name, Vec<u8>)]| -> Vec<(HeaderName, HeaderValue)> {
        v.iter()
            .filter_map(|(n, b)| Some((n.header_name()?, HeaderValue::from_bytes(b).ok()?)))
            .collect()
    };
    let ops = HeaderOps {
        set: pairs(&input.set),
        add: pairs(&input.add),
        remove: input.remove.iter().filter_map(Name::header_name).collect(),
    };
    headers::apply(&ops, &mut h);
    for (n, v) in &ops.add {
        assert!(h.get_all(n).iter().any(|x| x == v), "added {n} missing");
    }
    for (n, _) in &ops.set {
        let last_set = ops.set.iter().rev().find(|(m, _)| m == n).map(|(_, v)| v);
        let first = h.get_all(n).iter().next();
        assert_eq!(first, last_set, "set {n} not applied");
    }
    for n in &ops.remove {
        let put_back = ops.set.iter().chain(&ops.add).any(|(m, _)| m == n);
        assert!(put_back || !h.contains_key(n), "removed {n} still there");
    }
});
