//! Reading configuration text: a file, or a directory of `*.yaml`/`*.yml` merged in name order.
//!
//! serde_yaml reports positions only for its own errors, so each file is also walked once with an event
//! parser that records where every key and value sits, indexed by its path (`routes[2].pool`). Semantic
//! errors found later (an unknown pool, a duplicate name) then point into the file like a compiler's.

use super::diagnostic::{Diagnostics, Pos};
use super::raw::{RawAdmin, RawListener, RawPool, RawRoute};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_path_to_error::Segment;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line and column (1-based) of a key and of its value.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    key: Option<(usize, usize)>,
    value: (usize, usize),
}

/// One configuration file with the position of every node in it.
#[derive(Debug)]
pub struct SourceFile {
    pub name: Arc<str>,
    spans: HashMap<String, Span>,
}

impl SourceFile {
    fn pos(&self, (line, col): (usize, usize)) -> Pos {
        Pos {
            file: self.name.clone(),
            line,
            col,
        }
    }

    /// The position of the value at `path`, or, when it is absent (a default that conflicts with
    /// another setting), the key of the nearest enclosing node that exists (`health:`, not the
    /// first line inside it).
    pub fn value_pos(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(s) = self.spans.get(p) {
                let at = if p.len() < path.len() {
                    s.key.unwrap_or(s.value)
                } else {
                    s.value
                };
                return self.pos(at);
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.pos((1, 1)),
            }
        }
    }

    /// The position of the key at `path` (where a key's name is the problem, as with unknown keys).
    pub fn key_pos(&self, path: &str) -> Pos {
        match self.spans.get(path).and_then(|s| s.key) {
            Some(k) => self.pos(k),
            None => self.value_pos(path),
        }
    }
}

/// Where an item came from, so validation can point at any of its fields.
#[derive(Clone, Debug)]
pub struct Origin {
    pub file: Arc<SourceFile>,
    pub path: String,
}

impl Origin {
    pub fn field(&self, field: &str) -> Pos {
        self.file.value_pos(&self.join(field))
    }

    pub fn key(&self, field: &str) -> Pos {
        self.file.key_pos(&self.join(field))
    }

    pub fn here(&self) -> Pos {
        self.file.value_pos(&self.path)
    }

    fn join(&self, field: &str) -> String {
        if field.is_empty() {
            self.path.clone()
        } else if field.starts_with('[') || self.path.is_empty() {
            format!("{}{}", self.path, field)
        } else {
            format!("{}.{}", self.path, field)
        }
    }
}

#[derive(Debug)]
pub struct Item<T> {
    pub value: T,
    pub origin: Origin,
}

/// Every file's items, merged in file-name order; nothing interpreted yet.
#[derive(Debug, Default)]
pub struct RawConfig {
    pub listeners: Vec<Item<RawListener>>,
    pub pools: Vec<(String, Item<RawPool>)>,
    pub routes: Vec<Item<RawRoute>>,
    pub shutdown_timeout: Option<Item<String>>,
    pub shutdown_delay: Option<Item<String>>,
    pub admin: Option<Item<RawAdmin>>,
    pub files: Vec<Arc<str>>,
    /// Pools whose body failed to parse: routes naming them get no second, misleading error.
    pub broken_pools: Vec<String>,
}

/// The top level of one file; each item is deserialized on its own afterwards so one bad route does
/// not hide the errors of the next.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    #[serde(default)]
    listeners: Vec<serde_yaml::Value>,
    #[serde(default)]
    pools: serde_yaml::Mapping,
    #[serde(default)]
    routes: Vec<serde_yaml::Value>,
    shutdown_timeout: Option<serde_yaml::Value>,
    shutdown_delay: Option<serde_yaml::Value>,
    admin: Option<serde_yaml::Value>,
}

/// Reads `path` (file or directory) into a [`RawConfig`], adding every problem to `diags`.
pub fn load(path: &Path, diags: &mut Diagnostics) -> RawConfig {
    let mut raw = RawConfig::default();
    let files = match list_files(path) {
        Ok(f) => f,
        Err(msg) => {
            diags.error(pos_of(path, 1, 1), msg);
            return raw;
        }
    };
    for file in files {
        let name: Arc<str> = file.display().to_string().into();
        raw.files.push(name.clone());
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(name, &text, &mut raw, diags),
            Err(e) => diags.error(pos_of(&file, 1, 1), format!("cannot read file: {e}")),
        }
    }
    raw
}

fn pos_of(path: &Path, line: usize, col: usize) -> Pos {
    Pos {
        file: path.display().to_string().into(),
        line,
        col,
    }
}

fn list_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read config: {e}"))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read directory: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err("directory holds no *.yaml or *.yml file".into());
    }
    Ok(files)
}

/// Parses one file's text and appends its items to `raw`.
pub fn load_text(name: Arc<str>, text: &str, raw: &mut RawConfig, diags: &mut Diagnostics) {
    let (spans, duplicates) = match index_spans(text) {
        Ok(s) => s,
        Err((line, col, msg)) => {
            let pos = Pos {
                file: name,
                line,
                col,
            };
            diags.error(pos, format!("invalid YAML: {msg}"));
            return;
        }
    };
    let file = Arc::new(SourceFile { name, spans });
    if text.trim().is_empty() {
        return;
    }
    // serde_yaml refuses a document with a repeated key without saying where it is; the index does.
    if !duplicates.is_empty() {
        let mut shown: Vec<String> = Vec::new();
        for d in duplicates {
            // The keys inside a repeated key's value repeat those of its first value: one error.
            let inside = |p: &String| {
                d.path.starts_with(p.as_str())
                    && matches!(d.path.as_bytes().get(p.len()), Some(b'.' | b'['))
            };
            if shown.iter().any(inside) {
                continue;
            }
            shown.push(d.path.clone());
            let first = file.pos(d.first);
            let msg = format!(
                "duplicate key `{}` (first at {}:{}:{})",
                d.path, first.file, first.line, first.col
            );
            diags.error(file.pos(d.again), msg);
        }
        return;
    }
    let doc: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            diags.error(file.pos((line, col)), strip_location(&e.to_string()));
            return;
        }
    };
    let Some(top) = item::<RawTop>(doc, &origin(&file, String::new()), diags) else {
        return;
    };
    for (i, v) in top.listeners.into_iter().enumerate() {
        let origin = origin(&file, format!("listeners[{i}]"));
        if let Some(value) = item(v, &origin, diags) {
            raw.listeners.push(Item { value, origin });
        }
    }
    for (k, v) in top.pools {
        let Some(name) = k.as_str().map(str::to_owned) else {
            diags.error(file.value_pos("pools"), "pool names must be strings");
            continue;
        };
        let origin = origin(&file, format!("pools.{name}"));
        match item(v, &origin, diags) {
            Some(value) => raw.pools.push((name, Item { value, origin })),
            None => raw.broken_pools.push(name),
        }
    }
    for (i, v) in top.routes.into_iter().enumerate() {
        let origin = origin(&file, format!("routes[{i}]"));
        if let Some(value) = item(v, &origin, diags) {
            raw.routes.push(Item { value, origin });
        }
    }
    if let Some(v) = top.shutdown_timeout {
        let origin = origin(&file, "shutdown_timeout".into());
        if let Some(value) = item(v, &origin, diags) {
            set_once(&mut raw.shutdown_timeout, Item { value, origin }, diags);
        }
    }
    if let Some(v) = top.shutdown_delay {
        let origin = origin(&file, "shutdown_delay".into());
        if let Some(value) = item(v, &origin, diags) {
            set_once(&mut raw.shutdown_delay, Item { value, origin }, diags);
        }
    }
    if let Some(v) = top.admin {
        let origin = origin(&file, "admin".into());
        if let Some(value) = item(v, &origin, diags) {
            set_once(&mut raw.admin, Item { value, origin }, diags);
        }
    }
}

/// A top-level setting may appear in one file only: a second one is an error, like a duplicate name,
/// rather than a silent override that depends on file-name order.
fn set_once<T>(slot: &mut Option<Item<T>>, new: Item<T>, diags: &mut Diagnostics) {
    match slot {
        Some(first) => {
            let f = first.origin.key("");
            let msg = format!(
                "duplicate {} (first set at {}:{}:{})",
                new.origin.path, f.file, f.line, f.col
            );
            diags.error(new.origin.key(""), msg);
        }
        None => *slot = Some(new),
    }
}

fn origin(file: &Arc<SourceFile>, path: String) -> Origin {
    Origin {
        file: file.clone(),
        path,
    }
}

/// How many errors one item may report before the rest of it is left unread.
const MAX_ERRORS_PER_ITEM: usize = 32;

/// Deserializes one item, turning each failure into a positioned diagnostic.
///
/// serde stops at an item's first error, and the contract is that `weir check` prints every one.
/// So the field at fault is taken out and the item read again, until it reads (its remaining
/// fields then go on to validation, which finds the errors serde cannot: an unknown pool, a bad
/// duration) or an error cannot be taken out (the item itself has the wrong type, a list element
/// is malformed, a required field is missing). A required field that was taken out is not
/// reported missing: its own error was.
fn item<T: DeserializeOwned>(
    mut v: serde_yaml::Value,
    origin: &Origin,
    diags: &mut Diagnostics,
) -> Option<T> {
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..MAX_ERRORS_PER_ITEM {
        let e = match serde_path_to_error::deserialize::<_, T>(&v) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let path = render_path(&segments);
        let msg = strip_location(&e.inner().to_string());
        let missing = missing_field(&msg).map(|f| join_path(&path, f));
        if missing.as_ref().is_some_and(|f| removed.contains(f)) {
            return None;
        }
        let pos = match unknown_field(&msg) {
            Some(_) => origin.key(&path),
            None => origin.field(&path),
        };
        let shown = match (origin.path.is_empty(), path.is_empty()) {
            (_, true) => msg.clone(),
            (true, false) => format!("{path}: {msg}"),
            (false, false) => format!("{}.{}: {msg}", origin.path, path),
        };
        diags.error(pos, shown);
        if missing.is_some() || !remove_at(&mut v, &segments) {
            return None;
        }
        removed.push(path);
    }
    None
}

/// `routes[0].match.path_prefix`-style path of a serde error, relative to its item.
fn render_path(segments: &[Segment]) -> String {
    let mut path = String::new();
    for seg in segments {
        match seg {
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    path
}

fn join_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Takes the mapping entry at `segments` out of `v`; false when the path does not end in a
/// mapping key that is there (a list element is left alone: taking it out would shift the
/// positions of the elements after it).
fn remove_at(v: &mut serde_yaml::Value, segments: &[Segment]) -> bool {
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = v;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Map { key }, serde_yaml::Value::Mapping(m)) => {
                match m.get_mut(key.as_str()) {
                    Some(n) => n,
                    None => return false,
                }
            }
            (Segment::Seq { index }, serde_yaml::Value::Sequence(s)) => match s.get_mut(*index) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        serde_yaml::Value::Mapping(m) => m.shift_remove(key.as_str()).is_some(),
        _ => false,
    }
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// serde_yaml appends " at line L column C" to its messages; we print the position in front instead.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

/// A key that appears twice in one mapping: where first, and where again.
struct Duplicate {
    path: String,
    first: (usize, usize),
    again: (usize, usize),
}

#[derive(Default)]
struct SpanIndex {
    stack: Vec<Frame>,
    spans: HashMap<String, Span>,
    duplicates: Vec<Duplicate>,
}

impl SpanIndex {
    /// The path the next node takes, given where the parser is; `None` when the node is a map key.
    fn next_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map { path, key: Some(k) }) => Some(if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            }),
            Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
        }
    }

    /// After a value is complete, the parent moves on to its next key or element.
    fn advance(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn record_value(&mut self, path: &str, at: (usize, usize)) {
        self.spans.entry(path.to_string()).or_default().value = at;
    }
}

impl MarkedEventReceiver for SpanIndex {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(s, ..) => match self.next_path() {
                None => {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        let full = if path.is_empty() {
                            s.clone()
                        } else {
                            format!("{path}.{s}")
                        };
                        let span = self.spans.entry(full.clone()).or_default();
                        match span.key {
                            Some(first) => self.duplicates.push(Duplicate {
                                path: full,
                                first,
                                again: at,
                            }),
                            None => span.key = Some(at),
                        }
                        *key = Some(s);
                    }
                }
                Some(p) => {
                    self.record_value(&p, at);
                    self.advance();
                }
            },
            Event::Alias(_) => {
                if let Some(p) = self.next_path() {
                    self.record_value(&p, at);
                }
                self.advance();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A collection used as a map key has no path of ours; index it under a placeholder.
                let path = self.next_path().unwrap_or_else(|| "?".into());
                self.record_value(&path, at);
                self.stack.push(match ev {
                    Event::MappingStart(..) => Frame::Map { path, key: None },
                    _ => Frame::Seq { path, index: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.advance();
            }
            _ => {}
        }
    }
}

type Spans = (HashMap<String, Span>, Vec<Duplicate>);

fn index_spans(text: &str) -> Result<Spans, (usize, usize, String)> {
    let mut idx = SpanIndex::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut idx, false).map_err(|e| {
        let m = e.marker();
        (m.line(), m.col() + 1, e.info().to_string())
    })?;
    Ok((idx.spans, idx.duplicates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_keys_and_values() {
        let text =
            "routes:\n  - name: a\n    pool: web\n  - name: b\n    match: { path_prefix: /x }\n";
        let (spans, _) = index_spans(text).unwrap();
        assert_eq!(spans["routes[0].pool"].value, (3, 11));
        assert_eq!(spans["routes[0].pool"].key, Some((3, 5)));
        assert_eq!(spans["routes[1].match.path_prefix"].value, (5, 27));
        assert_eq!(spans["routes[1].name"].value, (4, 11));
    }

    #[test]
    fn an_absent_field_points_at_its_parents_key() {
        let text = "pools:\n  api:\n    health:\n      healthy_after: 2\n";
        let (spans, _) = index_spans(text).unwrap();
        let file = SourceFile {
            name: "f.yaml".into(),
            spans,
        };
        let at = |p: &str| {
            let pos = file.value_pos(p);
            (pos.line, pos.col)
        };
        assert_eq!(at("pools.api.health.timeout"), (3, 5));
        assert_eq!(at("pools.api.health.healthy_after"), (4, 22));
    }

    #[test]
    fn item_errors_carry_positions() {
        let text = "listeners:\n  - name: web\n    bnd: x\nroutes:\n  - name: r\n    pool: p\n    timeout: 5\n";
        let mut raw = RawConfig::default();
        let mut d = Diagnostics::default();
        load_text("f.yaml".into(), text, &mut raw, &mut d);
        let errs: Vec<String> = d.errors().map(|e| e.to_string()).collect();
        assert!(errs[0].starts_with("f.yaml:3:5: "), "{errs:?}");
        assert!(errs[0].contains("unknown field `bnd`"), "{errs:?}");
        // `bind` is missing too: with `bnd` taken out, the listener reads on and says so.
        assert!(errs[1].contains("missing field `bind`"), "{errs:?}");
        assert!(errs[2].starts_with("f.yaml:7:14: "), "{errs:?}");
    }

    fn errors_of(text: &str) -> Vec<String> {
        let mut raw = RawConfig::default();
        let mut d = Diagnostics::default();
        load_text("f.yaml".into(), text, &mut raw, &mut d);
        super::super::validate::validate(raw, &mut d);
        let mut errs: Vec<&super::super::diagnostic::Diagnostic> = d.errors().collect();
        errs.sort_by_key(|e| (e.pos.line, e.pos.col));
        errs.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn every_error_of_an_item_is_reported() {
        let text = "pools: {api: {servers: [{address: \"127.0.0.1:9001\"}]}}\nroutes:\n  - name: r\n    match: { path_prefix: / }\n    pool: nope\n    timeout: 5x\n    bogus: 1\n    retries: many\n";
        let errs = errors_of(text);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[0].starts_with("f.yaml:5:11: ") && errs[0].contains("nope"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("f.yaml:6:14: ") && errs[1].contains("5x"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("f.yaml:7:5: ") && errs[2].contains("`bogus`"),
            "{errs:?}"
        );
        assert!(
            errs[3].starts_with("f.yaml:8:14: ") && errs[3].contains("retries"),
            "{errs:?}"
        );
    }

    #[test]
    fn an_unknown_top_level_key_hides_nothing() {
        let text = "listners: []\nshutdown_timeout: 3x\npools:\n  api:\n    servers: [{address: \"127.0.0.1:1\", weight: x}]\n";
        let errs = errors_of(text);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("f.yaml:1:1: listners: unknown field"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("f.yaml:2:19: shutdown_timeout: invalid duration"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("f.yaml:5:48: pools.api.servers[0].weight"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_required_field_of_the_wrong_type_is_not_also_missing() {
        let text = "routes:\n  - name: r\n    pool: [a]\n    match: { path_prefix: / }\n";
        let errs = errors_of(text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("f.yaml:3:11: routes[0].pool: invalid type"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_repeated_key_is_reported_where_it_repeats() {
        let text = "routes:\n  - name: a\n    pool: p\nroutes:\n  - name: b\n    pool: p\n";
        let errs = errors_of(text);
        assert_eq!(
            errs,
            ["f.yaml:4:1: duplicate key `routes` (first at f.yaml:1:1)"],
            "{errs:?}"
        );
        let errs = errors_of("pools:\n  a:\n    servers: []\n    servers: []\n");
        assert_eq!(
            errs,
            ["f.yaml:4:5: duplicate key `pools.a.servers` (first at f.yaml:3:5)"],
            "{errs:?}"
        );
    }
}
