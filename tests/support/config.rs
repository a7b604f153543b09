//! YAML snippets for configs built around running backends.

use super::backend::Backend;

/// `servers:` list items (6-space indent, to sit under `    servers:`), weight 1 each.
pub fn servers(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("      - address: \"{}\"\n", b.addr))
        .collect()
}

/// `servers:` list items with weights.
pub fn weighted_servers(backends: &[(&Backend, u32)]) -> String {
    backends
        .iter()
        .map(|(b, w)| format!("      - address: \"{}\"\n        weight: {w}\n", b.addr))
        .collect()
}

/// The one-listener preamble: a listener named `web` on an ephemeral loopback port.
pub const LISTENER: &str = "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n";

/// A pool per backend, each named after its backend, round robin.
pub fn pool_per_backend(backends: &[&Backend]) -> String {
    let mut out = String::from("pools:\n");
    for b in backends {
        out.push_str(&format!(
            "  {}:\n    balance: round_robin\n    servers:\n{}",
            b.name,
            servers(&[b])
        ));
    }
    out
}

/// A full config: one listener, one pool `p` with `balance` (and any extra pool lines, indented
/// four spaces) over `backends`, and one catch-all route `all`.
pub fn single_pool(balance: &str, extra_pool_lines: &str, backends: &str) -> String {
    format!(
        "{LISTENER}pools:\n  p:\n    balance: {balance}\n{extra_pool_lines}    servers:\n{backends}\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n"
    )
}
