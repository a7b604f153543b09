//! `.cargo/rustc-wrapper`, which makes release builds profile-guided, run as cargo runs it (the
//! file itself, by its shebang) in a scratch tree beside a stand-in rustc that reports a version
//! and prints the arguments it was given: the profile is added to a release build only when the
//! compiler, Cargo.lock and Cargo.toml are those its key records, and nothing changes otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A scratch tree: the wrapper at `.cargo/rustc-wrapper`, a profile for LLVM 22, a Cargo.lock
/// and a Cargo.toml, and stand-in compilers under `bin/`.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn new() -> Tree {
        let dir = tempfile::tempdir().expect("scratch tree");
        let root = dir.path();
        std::fs::create_dir_all(root.join(".cargo/pgo")).expect("scratch tree");
        std::fs::create_dir_all(root.join("bin")).expect("scratch tree");
        let wrapper = root.join(".cargo/rustc-wrapper");
        std::fs::copy(Path::new(ROOT).join(".cargo/rustc-wrapper"), &wrapper).expect("copy");
        chmod_x(&wrapper);
        std::fs::write(root.join(".cargo/pgo/llvm-22.profdata"), b"profile").unwrap();
        std::fs::write(root.join("Cargo.lock"), b"lock v1\n").unwrap();
        std::fs::write(root.join("Cargo.toml"), b"[package]\n").unwrap();
        Tree { dir }
    }

    /// A stand-in rustc: `-vV` reports `release`, `commit` and LLVM `llvm`; anything else prints
    /// its arguments, one per line.
    fn rustc(&self, release: &str, commit: &str, llvm: &str) -> PathBuf {
        let path = self
            .root()
            .join(format!("bin/rustc-{release}-{commit}-{llvm}"));
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = -vV ]; then\n  echo 'rustc {release} (test)'\n  \
             echo 'binary: rustc'\n  echo 'commit-hash: {commit}'\n  echo 'release: {release}'\n  \
             echo 'LLVM version: {llvm}'\n  exit 0\nfi\nfor a do echo \"$a\"; done\n"
        );
        std::fs::write(&path, script).expect("write stand-in rustc");
        chmod_x(&path);
        path
    }

    /// Records the key of `rustc` and this tree beside the profile, as bench/pgo.sh does.
    fn record_key(&self, rustc: &Path) {
        let out = Command::new(self.root().join(".cargo/rustc-wrapper"))
            .arg("--pgo-key")
            .arg(rustc)
            .output()
            .expect("run --pgo-key");
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("commit-hash "),
            "{out:?}"
        );
        std::fs::write(self.root().join(".cargo/pgo/llvm-22.key"), out.stdout).unwrap();
    }

    /// What the wrapper handed `rustc`, given `args` (and `WEIR_PGO`, when set).
    fn wrapped(&self, rustc: &Path, args: &[&str], weir_pgo: Option<&str>) -> Vec<String> {
        let mut cmd = Command::new(self.root().join(".cargo/rustc-wrapper"));
        cmd.arg(rustc).args(args).env_remove("WEIR_PGO");
        if let Some(v) = weir_pgo {
            cmd.env("WEIR_PGO", v);
        }
        let out = cmd.output().expect("run the wrapper");
        assert!(out.status.success(), "wrapper failed: {out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn profile_flag(&self) -> String {
        let profile = self.root().join(".cargo/pgo/llvm-22.profdata");
        format!("-Cprofile-use={}", profile.display())
    }
}

fn chmod_x(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

const RELEASE: [&str; 8] = [
    "--crate-name",
    "hyper",
    "-C",
    "opt-level=3",
    "-Cllvm-args=-inline-threshold=1000",
    "--out-dir",
    "/tmp/a dir with spaces",
    "src/lib.rs",
];

#[test]
fn a_release_build_with_the_recorded_compiler_and_lock_gets_the_profile() {
    let tree = Tree::new();
    let rustc = tree.rustc("1.95.0", "abc123", "22.1.2");
    tree.record_key(&rustc);
    let args = tree.wrapped(&rustc, &RELEASE, None);
    assert!(
        args.contains(&tree.profile_flag()),
        "no profile in {args:?}"
    );
    assert!(args.contains(&"-Cllvm-args=-no-pgo-warn-mismatch".to_owned()));
    assert!(
        !args.iter().any(|a| a.contains("inline-threshold")),
        "{args:?}"
    );
    let kept: Vec<&str> = RELEASE
        .iter()
        .copied()
        .filter(|a| !a.contains("inline-threshold"))
        .collect();
    assert_eq!(
        &args[..kept.len()],
        &kept[..],
        "the crate's own arguments, in order"
    );
}

#[test]
fn anything_the_key_does_not_record_builds_plain() {
    let tree = Tree::new();
    let rustc = tree.rustc("1.95.0", "abc123", "22.1.2");
    tree.record_key(&rustc);
    let same_llvm_other_rustc = tree.rustc("1.96.0", "def456", "22.1.8");
    assert_eq!(
        tree.wrapped(&same_llvm_other_rustc, &RELEASE, None),
        RELEASE,
        "another rustc on the same LLVM"
    );
    let other_llvm = tree.rustc("1.99.0", "fff000", "23.0.0");
    assert_eq!(
        tree.wrapped(&other_llvm, &RELEASE, None),
        RELEASE,
        "another LLVM"
    );
    std::fs::write(tree.root().join("Cargo.lock"), b"lock v2\n").unwrap();
    assert_eq!(
        tree.wrapped(&rustc, &RELEASE, None),
        RELEASE,
        "a changed Cargo.lock"
    );
}

#[test]
fn debug_builds_opt_outs_instrumented_builds_and_queries_pass_through() {
    let tree = Tree::new();
    let rustc = tree.rustc("1.95.0", "abc123", "22.1.2");
    tree.record_key(&rustc);
    let debug = ["--crate-name", "weir", "-C", "opt-level=0", "src/lib.rs"];
    assert_eq!(tree.wrapped(&rustc, &debug, None), debug, "a debug build");
    assert_eq!(
        tree.wrapped(&rustc, &RELEASE, Some("0")),
        RELEASE,
        "WEIR_PGO=0"
    );
    let generating = [
        "-C",
        "opt-level=3",
        "-Cprofile-generate=/tmp/x",
        "src/lib.rs",
    ];
    assert_eq!(
        tree.wrapped(&rustc, &generating, None),
        generating,
        "an instrumented build"
    );
    let version = tree.wrapped(&rustc, &["-vV"], None);
    assert!(
        version.contains(&"release: 1.95.0".to_owned()),
        "{version:?}"
    );
}

/// The committed profile comes with the key bench/pgo.sh wrote for it.
#[test]
fn every_committed_profile_has_its_key() {
    let dir = Path::new(ROOT).join(".cargo/pgo");
    let mut profiles = 0;
    for entry in std::fs::read_dir(&dir).expect(".cargo/pgo") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "profdata") {
            profiles += 1;
            let key = std::fs::read_to_string(path.with_extension("key"))
                .unwrap_or_else(|e| panic!("no key beside {}: {e}", path.display()));
            for field in ["commit-hash ", "release ", "Cargo.lock ", "Cargo.toml "] {
                assert!(key.contains(field), "{field} missing from {key}");
            }
        }
    }
    assert!(profiles > 0, "no profile in {}", dir.display());
}
