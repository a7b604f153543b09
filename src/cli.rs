//! Command line (clap derive).

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "An L7 HTTP reverse-proxy load balancer"
)]
pub struct Cli {
    /// Log level or filter (RUST_LOG syntax); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Write the access log (target `weir::access`) to this file (appended) instead of stderr.
    #[arg(long, global = true, value_name = "FILE")]
    pub access_log: Option<PathBuf>,
    /// Worker threads for the proxy (default: one per CPU core). `WEIR_WORKERS` may stand in.
    #[arg(long, global = true, env = "WEIR_WORKERS")]
    pub workers: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve with the given configuration.
    Run {
        /// A YAML file, or a directory of *.yaml / *.yml files merged in name order.
        #[arg(long, short, env = "WEIR_CONFIG")]
        config: PathBuf,
        /// Also reload when the config file (or a YAML file of the config directory) changes.
        #[arg(long)]
        watch: bool,
        /// A unix socket for zero-downtime binary upgrades: take the listening sockets over from
        /// the weir serving on it (if any), then offer ours on it to the next one.
        #[arg(long, value_name = "PATH")]
        handover: Option<PathBuf>,
    },
    /// Parse and validate a configuration, then exit.
    Check {
        #[arg(long, short, env = "WEIR_CONFIG")]
        config: PathBuf,
        /// Also print the compiled routes and pools.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Start demo backends and a proxy on 127.0.0.1:8080 (HTTP) and :8443 (HTTPS).
    Demo,
}
