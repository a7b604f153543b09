//! A running `weir run` process: its listeners' addresses, every line it wrote to stderr, signals.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use regex::Regex;

use super::client::{self, empty, Body, Resp};
use super::WAIT;

/// A `weir run` child process. Dropping it kills the process (by its pid) and reaps it.
pub struct Weir {
    child: Child,
    pub pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    addrs: HashMap<String, SocketAddr>,
    config: PathBuf,
    dir: Option<tempfile::TempDir>,
    client: Client<HttpConnector, Body>,
}

impl Weir {
    /// Writes `yaml` to a temporary `weir.yaml` and serves it; waits for the listener named `web`.
    pub async fn start(yaml: &str) -> Weir {
        Self::start_with_listeners(yaml, &["web"]).await
    }

    /// Like [`Weir::start`], waiting for every listener in `names`.
    pub async fn start_with_listeners(yaml: &str, names: &[&str]) -> Weir {
        Self::start_args(yaml, names, &[]).await
    }

    /// Like [`Weir::start_with_listeners`] with extra `weir run` arguments (`--workers 3`...).
    pub async fn start_args(yaml: &str, names: &[&str], args: &[&str]) -> Weir {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("weir.yaml");
        std::fs::write(&path, yaml).expect("write config");
        Self::spawn(&path, Some(dir), names, args).await
    }

    /// Serves the config file or directory at `config` (owned by the caller).
    pub async fn start_path(config: &Path, names: &[&str]) -> Weir {
        Self::spawn(config, None, names, &[]).await
    }

    /// Like [`Weir::start_path`] with extra `weir run` arguments (`--watch`, `--takeover PATH`...).
    pub async fn start_path_args(config: &Path, names: &[&str], args: &[&str]) -> Weir {
        Self::spawn(config, None, names, args).await
    }

    async fn spawn(
        config: &Path,
        dir: Option<tempfile::TempDir>,
        names: &[&str],
        args: &[&str],
    ) -> Weir {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("WEIR_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                        sink.lock().unwrap().push(line);
                    }
                }
            }
        });
        let mut weir = Weir {
            child,
            pid,
            lines,
            addrs: HashMap::new(),
            config: config.to_path_buf(),
            dir,
            client: client::client(),
        };
        weir.wait_listening(names).await;
        weir
    }

    async fn wait_listening(&mut self, names: &[&str]) {
        let re = Regex::new(
            r#"listening\b.*\blistener="?([A-Za-z0-9_.-]+)"?.*\baddr="?([0-9A-Fa-f:.\[\]]+)"?"#,
        )
        .unwrap();
        let start = Instant::now();
        loop {
            for line in self.logs() {
                if let Some(c) = re.captures(&line) {
                    if let Ok(addr) = c[2].parse::<SocketAddr>() {
                        self.addrs.insert(c[1].to_string(), addr);
                    }
                }
            }
            if names.iter().all(|n| self.addrs.contains_key(*n)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the reader thread a moment to collect the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "weir exited ({status}) before listening on {names:?}; config {}:\n{}\n--- stderr ---\n{}",
                    self.config.display(),
                    std::fs::read_to_string(&self.config).unwrap_or_default(),
                    self.stderr()
                );
            }
            if start.elapsed() > WAIT {
                panic!(
                    "weir did not log `listening listener=NAME addr=IP:PORT` for all of {names:?} \
                     within {WAIT:?} (found {:?})\n--- stderr ---\n{}",
                    self.addrs,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address of the listener named `web`.
    pub fn addr(&self) -> SocketAddr {
        self.addr_of("web")
    }

    pub fn addr_of(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no listener named {name}: {:?}", self.addrs))
    }

    /// `http://ADDR/path` on the `web` listener.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr(), path_and_query)
    }

    /// A request builder aimed at the `web` listener with the given Host header.
    pub fn request(&self, method: &str, host: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(self.url(path))
            .header(http::header::HOST, host)
    }

    /// GET `path` with `Host: host` through weir's `web` listener.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        self.send(self.request("GET", host, path).body(empty()).unwrap())
            .await
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        match client::try_send(&self.client, req).await {
            Ok(resp) => resp,
            Err(e) => panic!(
                "{what} through weir failed: {e}\n--- stderr ---\n{}",
                self.stderr()
            ),
        }
    }

    /// A clone of this weir's pooled HTTP/1 client (for concurrent requests).
    pub fn client(&self) -> Client<HttpConnector, Body> {
        self.client.clone()
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.logs().join("\n")
    }

    /// Waits until some stderr line satisfies `pred` and returns it.
    pub async fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| pred(l)) {
                return line;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "no stderr line {what} within {WAIT:?}\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for an access-log line with `status=NNN` (and `route=NAME` when given).
    pub async fn expect_access_log(&self, status: u16, route: Option<&str>) -> String {
        let status_re = Regex::new(&format!(r#"\bstatus="?{status}"?\b"#)).unwrap();
        let route_re = route
            .map(|r| Regex::new(&format!(r#"\broute="?{}"?(\s|$)"#, regex::escape(r))).unwrap());
        let what = match route {
            Some(r) => format!("with status={status} and route={r}"),
            None => format!("with status={status}"),
        };
        self.wait_log(&what, |l| {
            status_re.is_match(l)
                && match &route_re {
                    Some(re) => re.is_match(l),
                    None => true,
                }
        })
        .await
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A `/proc/PID/status` field in KiB, e.g. `VmRSS` or `VmHWM` (peak RSS).
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    /// CPU time the process has used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .expect("read /proc/PID/stat");
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        // USER_HZ is 100 on Linux.
        ticks / 100.0
    }

    /// The temporary directory holding the config, when weir wrote it.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes ANSI colour escapes, in case weir colours its output anyway.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
