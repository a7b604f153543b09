//! `.cargo/rustc-wrapper`, which makes release builds profile-guided, run against a stand-in rustc
//! that reports an LLVM version and prints the arguments it was given: the committed profile is
//! added to release builds on the LLVM that wrote it, and nothing changes anywhere else.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A fake rustc in a fresh temp dir: `-vV` reports LLVM `llvm`; anything else prints its arguments,
/// one per line.
fn fake_rustc(llvm: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "weir-wrapper-{}-{llvm}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("rustc");
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = -vV ] && {{ echo 'rustc 1.0.0'; echo 'LLVM version: {llvm}'; exit 0; }}\n\
         for a do echo \"$a\"; done\n"
    );
    std::fs::write(&path, script).expect("write fake rustc");
    Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .expect("chmod");
    path
}

/// The arguments the wrapper passed on to `rustc`, given `args` (and `WEIR_PGO`, when set).
fn wrapped(rustc: &Path, args: &[&str], weir_pgo: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new("sh");
    cmd.arg(Path::new(ROOT).join(".cargo/rustc-wrapper"))
        .arg(rustc)
        .args(args);
    cmd.env_remove("WEIR_PGO");
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

const RELEASE: [&str; 6] = [
    "--crate-name",
    "hyper",
    "-C",
    "opt-level=3",
    "-Cllvm-args=-inline-threshold=1000",
    "src/lib.rs",
];

/// The LLVM majors there is a committed profile for.
fn profiled_llvm() -> Vec<String> {
    std::fs::read_dir(Path::new(ROOT).join(".cargo/pgo"))
        .expect(".cargo/pgo holds the PGO profile")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(
                name.strip_prefix("llvm-")?
                    .strip_suffix(".profdata")?
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_release_build_on_the_profiles_llvm_gets_the_profile_and_no_fixed_threshold() {
    let llvm = profiled_llvm();
    assert!(!llvm.is_empty(), "no .cargo/pgo/llvm-N.profdata committed");
    let rustc = fake_rustc(&format!("{}.1.2", llvm[0]));
    let args = wrapped(&rustc, &RELEASE, None);
    let profile = Path::new(ROOT).join(format!(".cargo/pgo/llvm-{}.profdata", llvm[0]));
    let want = format!("-Cprofile-use={}", profile.display());
    assert!(args.contains(&want), "no {want} in {args:?}");
    assert!(args.contains(&"-Cllvm-args=-no-pgo-warn-mismatch".to_owned()));
    assert!(
        !args.iter().any(|a| a.contains("inline-threshold")),
        "{args:?}"
    );
    assert_eq!(
        &args[..4],
        &RELEASE[..4],
        "the crate's own arguments come first, in order"
    );
}

#[test]
fn other_compilers_debug_builds_and_opt_outs_are_left_as_cargo_called_them() {
    let other = fake_rustc("7.0.0");
    assert_eq!(wrapped(&other, &RELEASE, None), RELEASE, "another LLVM");
    let llvm = profiled_llvm();
    let rustc = fake_rustc(&format!("{}.0.0", llvm[0]));
    let debug = ["--crate-name", "weir", "-C", "opt-level=0", "src/lib.rs"];
    assert_eq!(wrapped(&rustc, &debug, None), debug, "a debug build");
    assert_eq!(wrapped(&rustc, &RELEASE, Some("0")), RELEASE, "WEIR_PGO=0");
    let generating = [
        "-C",
        "opt-level=3",
        "-Cprofile-generate=/tmp/x",
        "src/lib.rs",
    ];
    assert_eq!(
        wrapped(&rustc, &generating, None),
        generating,
        "an instrumented build"
    );
}
