//! Arbitrary bytes as a YAML configuration file, through parsing, validation and compilation.
//!
//! Never panics; a refused file always says why, at a position inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::config::diagnostic::Severity;
use weir::config::{self, Config};
use weir::runtime::Runtime;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse("fuzz.yaml", text) {
        Err(e) => {
            assert!(!e.0.is_empty(), "a refused config must say why");
            let lines = yaml_lines(text);
            for d in &e.0 {
                assert_eq!(d.severity, Severity::Error);
                assert!(!d.message.trim().is_empty(), "empty diagnostic: {d:?}");
                assert_eq!(&*d.pos.file, "fuzz.yaml");
                assert!(
                    d.pos.line >= 1 && d.pos.col >= 1,
                    "position not 1-based: {d:?}"
                );
                // YAML positions may point one line past the last (at end of input).
                assert!(
                    d.pos.line <= lines + 1,
                    "position past the end: {d:?} ({lines} lines)"
                );
                let _ = d.to_string();
            }
            let _ = e.to_string();
        }
        Ok((config, warnings)) => {
            for w in &warnings {
                assert_eq!(w.severity, Severity::Warning);
            }
            let _ = config.summary();
            if !touches_files(&config) {
                // Compilation must accept every validated config that names no files.
                if let Err(e) = Runtime::compile(config, None, 1) {
                    panic!("validated config failed to compile: {e}");
                }
            }
        }
    }
});

/// Lines as YAML counts them: CR LF, a lone CR or LF, and (YAML 1.1, libyaml) NEL, LS and PS each
/// end a line.
fn yaml_lines(text: &str) -> usize {
    let mut n = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                n += 1;
            }
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => n += 1,
            _ => {}
        }
    }
    n
}

/// Certificate and CA paths would make the fuzzer read whatever files it names; those configs stop
/// after validation.
fn touches_files(c: &Config) -> bool {
    c.listeners.iter().any(|l| l.tls.is_some())
        || c.pools
            .iter()
            .any(|p| p.tls.as_ref().is_some_and(|t| t.ca.is_some()))
}
