//! Logging: a tracing subscriber on stderr, text or JSON. The access log is the `weir::access` target
//! (one event per request, fields: method host path status route pool upstream dur_ms upstream_ms
//! bytes reason retries id listener tls); with `--access-log FILE` it goes to that file instead of
//! stderr, in the same format.

use crate::cli::LogFormat;
use std::io::IsTerminal;
use std::path::Path;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

const ACCESS: &str = "weir::access";

/// The log filter from a RUST_LOG-style spec. rustls logs a WARN line per handshake for client
/// quirks that are no fault of weir's (an IP address sent as SNI, as wrk and some libraries do):
/// any client could flood the log that way, one line per connection, so rustls is held to errors
/// unless the spec names it.
fn log_filter(spec: &str) -> EnvFilter {
    let filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    if spec.contains("rustls") {
        return filter;
    }
    match "rustls=error".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    }
}

pub fn init(level: &str, format: LogFormat, access_log: Option<&Path>) -> std::io::Result<()> {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_string());
    let filter = log_filter(&spec);
    let ansi = std::io::stderr().is_terminal();
    let Some(path) = access_log else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
        match format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
        return Ok(());
    };
    // O_APPEND: every line is one write, so logrotate's copytruncate and concurrent readers are safe.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let file = std::sync::Mutex::new(file);
    let stderr =
        fmt_layer(format, std::io::stderr, ansi).with_filter(filter_fn(|m| m.target() != ACCESS));
    let access = fmt_layer(format, file, false).with_filter(filter_fn(|m| m.target() == ACCESS));
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(access)
        .init();
    install_panic_hook();
    Ok(())
}

fn fmt_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    }
}

/// Logs panics through tracing (so they reach the JSON log too) instead of bare stderr text.
///
/// Every client connection runs in its own tokio task and every HTTP/2 stream in its own task too,
/// so a panic ends only that task: its neighbours keep being served, and the connection counters
/// are released by drop guards. This hook makes sure such a panic is never silent.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            target: "weir::panic",
            panic = %panic_message(info.payload()),
            location = %location,
            thread = thread.name().unwrap_or("-"),
            "panic; the task that raised it has ended, other connections are unaffected"
        );
    }));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn panic_payloads_become_text() {
        let e = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(super::panic_message(&*e), "boom 1");
        let e = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(super::panic_message(&*e), "static");
    }

    #[test]
    fn rustls_is_held_to_errors_unless_named() {
        let f = super::log_filter("warn").to_string();
        assert!(f.contains("rustls=error"), "{f}");
        let f = super::log_filter("info,rustls=debug").to_string();
        assert!(
            f.contains("rustls=debug") && !f.contains("rustls=error"),
            "{f}"
        );
    }
}
