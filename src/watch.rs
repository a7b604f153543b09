//! `--watch`: reload when the config file (or a `*.yaml`/`*.yml` file of the config directory) changes.
//!
//! The watch is on the directory, not the file: editors and config-management tools replace a file
//! by writing a temporary and renaming it over the original, which ends a watch on the old inode.
//! Events are debounced: one save is several events (truncate, write, close, rename), and a tool
//! that writes several files of a directory should cause one reload of the finished set, not one per
//! file with the first reload seeing half of the change.

use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the files must stay quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches `config`; the receiver yields once per settled burst of changes. The watcher lives as
/// long as the returned handle.
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
    settled: mpsc::Receiver<()>,
}

impl ConfigWatch {
    pub fn start(config: &Path) -> notify::Result<ConfigWatch> {
        let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
        let is_dir = config.is_dir();
        let dir = if is_dir {
            config.clone()
        } else {
            config
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let filter = Filter { config, is_dir };
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if filter.matters(&ev) {
                    let _ = raw_tx.send(());
                }
            }
        })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let (settled_tx, settled) = mpsc::channel(1);
        tokio::spawn(debounce(raw_rx, settled_tx));
        Ok(ConfigWatch {
            _watcher: watcher,
            settled,
        })
    }

    /// Resolves after the next settled change.
    pub async fn changed(&mut self) {
        if self.settled.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

struct Filter {
    config: PathBuf,
    is_dir: bool,
}

impl Filter {
    fn matters(&self, ev: &notify::Event) -> bool {
        if matches!(ev.kind, EventKind::Access(_)) {
            return false;
        }
        ev.paths.iter().any(|p| {
            if self.is_dir {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
            } else {
                p.file_name() == self.config.file_name()
            }
        })
    }
}

/// Forwards one signal per burst: after an event, waits until [`DEBOUNCE`] passes with no other.
async fn debounce(mut raw: mpsc::UnboundedReceiver<()>, settled: mpsc::Sender<()>) {
    while raw.recv().await.is_some() {
        loop {
            match tokio::time::timeout(DEBOUNCE, raw.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        // A full channel means a reload is already pending; it will read the newest files.
        let _ = settled.try_send(());
    }
}
