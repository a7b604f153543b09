//! The `weir` binary: parse the command line, start logging, run the command.

use clap::Parser;
use std::process::ExitCode;
use weir::cli::{Cli, Command};

/// mimalloc: glibc malloc's arena locks and consolidation showed up at ~8% of proxy CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands the pages mimalloc holds free back to the OS (see `weir::workers::start`); forced, as
/// without `force` it purged none of them on an idle worker.
#[allow(unsafe_code)]
fn give_back_free_memory() {
    // SAFETY: `mi_collect` has no preconditions: any thread may call it at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    if let Command::Check { config, verbose } = &cli.command {
        return match weir::app::check(config, *verbose) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = weir::telemetry::init(&cli.log_level, cli.log_format, cli.access_log.as_deref())
    {
        eprintln!("weir: cannot open the access log: {e}");
        return ExitCode::FAILURE;
    }
    // Thread-per-core: the main thread's runtime and one more per extra worker, each
    // single-threaded (see `weir::workers`).
    let workers = cli.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if let Err(e) = weir::workers::start(workers.max(1), Some(give_back_free_memory)) {
        eprintln!("weir: cannot start the worker threads: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match weir::workers::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weir: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        match cli.command {
            Command::Run {
                config,
                watch,
                handover,
            } => weir::app::run(config, weir::app::RunOptions { watch, handover }).await?,
            Command::Demo => weir::demo::run().await?,
            Command::Check { .. } => unreachable!("handled above"),
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `{e}`, not the `{e:#}` chain: every weir error's message already carries its cause's,
        // and the chain printed each cause twice.
        // Once: as JSON events (one per line of the message) for a log collector, or as plain
        // text for a person; both at once printed every error twice.
        Err(e) => {
            match log_format {
                weir::cli::LogFormat::Json => {
                    for line in e.to_string().lines() {
                        tracing::error!("{line}");
                    }
                }
                weir::cli::LogFormat::Text => eprintln!("weir: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}
