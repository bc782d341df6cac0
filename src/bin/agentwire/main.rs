//! The `agentwire` binary: the demo server (`serve`, the default), the tree inspector
//! (`tree`) and the load benchmarks (`bench`).
//!
//! `cli` parses the command line, `serve` runs an actix-web server with agentwire mounted,
//! `demo_agent` is the simulated agent that answers clients, `demo_login` is the demo-only
//! token issuer, `tree` prints a running server's supervision tree, and `bench` drives load
//! through the wire protocol. None of this is part of the library: an application embeds
//! `agentwire` with its own authenticator and handler.

mod bench;
mod cli;
mod demo_agent;
mod demo_login;
mod serve;
mod tree;

use clap::Parser;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Some(cli::Command::Serve(args)) => serve::run(args),
        Some(cli::Command::Tree(args)) => tree::run(args),
        Some(cli::Command::Bench(args)) => bench::run(args),
        None => serve::run(cli.serve),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agentwire: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
