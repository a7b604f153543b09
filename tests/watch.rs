//! `weir run --watch`: a change to the config file (written in place or renamed over it, as editors
//! do) or to a file of the config directory reloads like SIGHUP; a bad edit is rejected and the old
//! table keeps serving.

mod support;

use std::path::Path;
use std::time::Duration;

use support::config::LISTENER;
use support::{eventually, servers, Backend, Weir};

fn config(backend: &Backend) -> String {
    format!(
        "{LISTENER}pools:\n  p:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n",
        servers(&[backend])
    )
}

async fn serves(weir: &Weir, name: &str) -> bool {
    let r = weir.get("h", "/").await;
    r.status == 200 && r.seen().backend == name
}

/// Replaces `path` the way editors do: write a temporary beside it, then rename it over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_config_file_is_reloaded() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, config(&a)).unwrap();
    let weir = Weir::start_path_args(&path, &["web"], &["--watch"]).await;
    assert!(serves(&weir, "a").await);

    // Written in place.
    std::fs::write(&path, config(&b)).unwrap();
    eventually(
        "the in-place edit to take effect",
        Duration::from_secs(10),
        || serves(&weir, "b"),
    )
    .await;

    // Renamed over the file (a new inode): the watch is on the directory, so it still sees it.
    replace(&path, &config(&a));
    eventually(
        "the renamed file to take effect",
        Duration::from_secs(10),
        || serves(&weir, "a"),
    )
    .await;

    // A broken edit is refused and the running table stays.
    std::fs::write(&path, "listeners: [oops\n").unwrap();
    weir.wait_log("a rejected reload", |l| l.contains("reload rejected"))
        .await;
    assert!(serves(&weir, "a").await, "{}", weir.stderr());

    // The debounce turns each save into one reload, not one per event.
    let reloads = weir
        .logs()
        .iter()
        .filter(|l| l.contains("reloading the configuration"))
        .count();
    assert!(
        (3..=6).contains(&reloads),
        "expected about one reload per save (3 saves), got {reloads}\n{}",
        weir.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_in_a_watched_directory_is_reloaded() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("10-base.yaml"), config(&a)).unwrap();
    let weir = Weir::start_path_args(dir.path(), &["web"], &["--watch"]).await;
    assert!(serves(&weir, "a").await);

    // A file that is not YAML does not count. The new file sorts first, so its route is tried first.
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let extra = format!(
        "pools:\n  q:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: first\n    match:\n      path_prefix: \"/b\"\n    pool: q\n",
        servers(&[&b])
    );
    std::fs::write(dir.path().join("05-extra.yaml"), extra).unwrap();
    eventually(
        "the new file's route to appear",
        Duration::from_secs(10),
        || async {
            let r = weir.get("h", "/b").await;
            r.status == 200 && r.seen().backend == "b"
        },
    )
    .await;
    assert!(
        !weir.logs().iter().any(|l| l.contains("reload rejected")),
        "{}",
        weir.stderr()
    );
}
