//! A strict parser for the OpenMetrics / Prometheus text exposition weir serves on `/metrics`: every
//! line must be a well-formed `# HELP`, `# TYPE`, `# UNIT` or sample line, every sample must belong
//! to a declared family with a suffix its type allows, label values must be properly quoted and
//! escaped, values must be numbers, histogram buckets must be cumulative and end at `+Inf` equal to
//! `_count`, and the text must end with `# EOF`.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name to its type.
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The sum of every sample named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let eq = s[i..].find('=').ok_or("label without =")? + i;
        let name = &s[i..eq];
        if !valid_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        if b.get(eq + 1) != Some(&b'"') {
            return Err(format!("label {name} value not quoted"));
        }
        let mut j = eq + 2;
        let mut val = String::new();
        loop {
            match b.get(j) {
                None => return Err("unterminated label value".into()),
                Some(b'\\') => {
                    match b.get(j + 1) {
                        Some(b'\\') => val.push('\\'),
                        Some(b'"') => val.push('"'),
                        Some(b'n') => val.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    }
                    j += 2;
                }
                Some(b'"') => break,
                Some(_) => {
                    let ch = s[j..].chars().next().unwrap();
                    val.push(ch);
                    j += ch.len_utf8();
                }
            }
        }
        out.push((name.to_string(), val));
        i = j + 1;
        match b.get(i) {
            None => break,
            Some(b',') => i += 1,
            Some(c) => return Err(format!("expected , after label, got {:?}", *c as char)),
        }
    }
    Ok(out)
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<(&'a str, &'a str)> {
    if types.contains_key(name) {
        return Some((name, ""));
    }
    for suffix in ["_total", "_bucket", "_count", "_sum", "_created", "_info"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.contains_key(base) {
                return Some((base, suffix));
            }
        }
    }
    None
}

fn allowed(kind: &str, suffix: &str) -> bool {
    match kind {
        "counter" => matches!(suffix, "_total" | "_created"),
        "gauge" | "unknown" => suffix.is_empty(),
        "histogram" => matches!(suffix, "_bucket" | "_count" | "_sum" | "_created"),
        "info" => suffix == "_info",
        _ => false,
    }
}

pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut ex = Exposition::default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.last() != Some(&"# EOF") {
        return Err("the exposition does not end with # EOF".into());
    }
    for (n, line) in lines[..lines.len() - 1].iter().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            match kw {
                "TYPE" => {
                    let kind = parts.next().unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "unknown",
                        "summary",
                    ]
                    .contains(&kind)
                    {
                        return Err(err(format!("unknown type {kind:?}")));
                    }
                    if ex.types.insert(name.into(), kind.into()).is_some() {
                        return Err(err("family declared twice".into()));
                    }
                }
                "HELP" | "UNIT" => {}
                _ => return Err(err(format!("unknown comment {kw:?}"))),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(err("empty or malformed line".into()));
        }
        let (series, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => return Err(err("no value".into())),
        };
        let (name, labels) = match series.find('{') {
            Some(i) => {
                let inner = series[i + 1..]
                    .strip_suffix('}')
                    .ok_or_else(|| err("unclosed {".into()))?;
                (&series[..i], parse_labels(inner).map_err(err)?)
            }
            None => (series, Vec::new()),
        };
        if !valid_name(name) {
            return Err(err(format!("bad sample name {name:?}")));
        }
        let (family, suffix) = family_of(name, &ex.types)
            .ok_or_else(|| err(format!("sample {name} has no # TYPE")))?;
        let kind = &ex.types[family];
        if !allowed(kind, suffix) {
            return Err(err(format!("{kind} {family} cannot have a {name} sample")));
        }
        let value = parse_value(value).map_err(err)?;
        ex.samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    check_histograms(&ex)?;
    Ok(ex)
}

/// A histogram series: its family name and its labels other than `le`.
type SeriesKey = (String, Vec<(String, String)>);

fn check_histograms(ex: &Exposition) -> Result<(), String> {
    let mut series: HashMap<SeriesKey, Vec<(f64, f64)>> = HashMap::new();
    let mut counts: HashMap<SeriesKey, f64> = HashMap::new();
    for s in &ex.samples {
        let others: Vec<_> = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        if let Some(base) = s.name.strip_suffix("_bucket") {
            let le = parse_value(s.label("le").ok_or("bucket without le")?)?;
            series
                .entry((base.to_string(), others))
                .or_default()
                .push((le, s.value));
        } else if let Some(base) = s.name.strip_suffix("_count") {
            counts.insert((base.to_string(), others), s.value);
        }
    }
    for (key, buckets) in series {
        let mut last = (f64::NEG_INFINITY, 0.0);
        for &(le, v) in &buckets {
            if le <= last.0 || v < last.1 {
                return Err(format!(
                    "{key:?}: buckets not increasing and cumulative: {buckets:?}"
                ));
            }
            last = (le, v);
        }
        if last.0 != f64::INFINITY {
            return Err(format!("{key:?}: last bucket is not +Inf"));
        }
        if counts.get(&key) != Some(&last.1) {
            return Err(format!(
                "{key:?}: +Inf bucket {} != _count {:?}",
                last.1,
                counts.get(&key)
            ));
        }
    }
    Ok(())
}
