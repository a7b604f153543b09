//! Process signals: SIGTERM/SIGINT drain gracefully, SIGHUP reloads the configuration.

use tokio::signal::unix::{signal, SignalKind};

pub enum Signal {
    Reload,
    Drain,
}

pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Reload,
            _ = self.term.recv() => Signal::Drain,
            _ = self.int.recv() => Signal::Drain,
        }
    }
}
