//! Logging: a tracing subscriber on stderr, text or JSON. The access log is the `weir::access` target
//! (one event per request, fields: method host path status route pool upstream dur_ms bytes reason id).

use crate::cli::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    install_panic_hook();
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
}
