//! `hoptrace`: the per-node tracing proxy agent.

use clap::Parser as _;
use hoptrace::config::{Cli, Command};

/// mimalloc rather than glibc's malloc: glibc keeps the memory of a load peak (per-thread
/// arenas) after the connections are gone; mimalloc purges freed pages within
/// milliseconds, so the agent's RSS comes back down after a flood
/// (`tests/tests/hostile.rs` `memory_is_returned_after_load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => hoptrace::check::run(&args),
        Command::Stat(args) => hoptrace::cli::stat(args),
        Command::Edges(args) => hoptrace::cli::edges(args),
        Command::Tap(args) => hoptrace::cli::tap::tap(args),
        Command::Top(args) => hoptrace::cli::top::top(args),
        Command::Dashboard(args) => hoptrace::cli::dashboard::dashboard(args),
        Command::Run(args) => {
            let thp = if args.huge_pages {
                Ok(())
            } else {
                hoptrace::park::no_huge_pages()
            };
            if let Err(err) = hoptrace::logging::init(&args.log_filter()) {
                eprintln!("hoptrace: invalid --log filter: {err}");
                return std::process::ExitCode::from(2);
            }
            if let Err(err) = thp {
                tracing::info!("transparent huge pages stay on (prctl: {err}): RSS may count unused parts of 2 MiB pages");
            }
            match hoptrace::agent::run(*args) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    eprintln!("hoptrace: {err:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
