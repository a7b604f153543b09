//! Every configuration shipped in the repository passes `weir check`, so examples cannot rot:
//! `routes/*.yaml`, everything under `examples/`, and `bench/*.yaml`. Plus one broken config to show
//! that `check` fails with `FILE:LINE:COL:` (tests/check.rs covers diagnostics in depth).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `weir check --config <config>` run from `cwd` (certificate paths are relative to it).
fn check(config: &Path, cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .env_remove("WEIR_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run weir check")
}

/// The `*.yaml` / `*.yml` files under `dir` (recursively when `deep`), sorted.
fn yaml_files(dir: &Path, deep: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("read directory entry").path();
        if path.is_dir() {
            if deep {
                out.extend(yaml_files(&path, true));
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A report of every config that `check` refused, or `None` when all passed.
fn failures(configs: &[(PathBuf, PathBuf)]) -> Option<String> {
    let mut report = String::new();
    for (config, cwd) in configs {
        let out = check(config, cwd);
        if out.status.code() != Some(0) {
            report.push_str(&format!(
                "\n`weir check --config {}` (in {}) exited with {}\n--- stdout\n{}--- stderr\n{}",
                config.display(),
                cwd.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            ));
        }
    }
    (!report.is_empty()).then_some(report)
}

/// Checks every file as a path relative to the repository root, from the repository root.
fn assert_all_pass(files: Vec<PathBuf>) {
    let root = Path::new(ROOT);
    let configs: Vec<(PathBuf, PathBuf)> = files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(root).map(Path::to_path_buf).unwrap_or(f);
            (rel, root.to_path_buf())
        })
        .collect();
    if let Some(report) = failures(&configs) {
        panic!("configurations that fail `weir check`:{report}");
    }
}

#[test]
fn routes_configs_pass_check() {
    let files = yaml_files(&Path::new(ROOT).join("routes"), false);
    assert!(!files.is_empty(), "no YAML file in routes/");
    assert_all_pass(files);
}

#[test]
fn example_configs_pass_check() {
    let files = yaml_files(&Path::new(ROOT).join("examples"), true);
    for name in [
        "microservices.yaml",
        "virtual-hosts.yaml",
        "canary.yaml",
        "sticky.yaml",
        "tls-offload.yaml",
        "admin.yaml",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "examples/{name} is missing (the README refers to it)"
        );
    }
    assert_all_pass(files);
}

/// bench/compare.sh copies each config into a temp dir next to the certificate it generates
/// (certs/bench.crt, certs/bench.key); the development certificate stands in for it here.
#[test]
fn bench_configs_pass_check() {
    let bench = Path::new(ROOT).join("bench");
    let files = yaml_files(&bench, false);
    if files.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("create certs/");
    let dev = Path::new(ROOT).join("certs");
    std::fs::copy(dev.join("dev.pem"), certs.join("bench.crt")).expect("copy dev.pem");
    std::fs::copy(dev.join("dev.key"), certs.join("bench.key")).expect("copy dev.key");
    let mut configs = Vec::new();
    for f in files {
        let copy = dir.path().join(f.file_name().expect("file name"));
        std::fs::copy(&f, &copy).expect("copy bench config");
        configs.push((copy, dir.path().to_path_buf()));
    }
    if let Some(report) = failures(&configs) {
        panic!("bench configurations that fail `weir check`:{report}");
    }
}

#[test]
fn broken_config_fails_with_a_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.yaml");
    let yaml = "\
listeners:
  - name: web
    bind: \"127.0.0.1:8080\"
pools:
  web:
    servers:
      - address: \"127.0.0.1:9001\"
routes:
  - name: all
    pool: nowhere
";
    std::fs::write(&path, yaml).expect("write config");
    let out = check(&path, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a broken config must exit 1\nstderr:\n{stderr}"
    );
    let re = regex::Regex::new(&format!(
        r"(?m)^{}:10:\d+: .*nowhere",
        regex::escape(&path.display().to_string())
    ))
    .expect("regex");
    assert!(
        re.is_match(&stderr),
        "expected `{}:10:COL: ...nowhere...` on stderr, got:\n{stderr}",
        path.display()
    );
}
