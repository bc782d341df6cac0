//! `agentwire-baseline`: the smallest server that speaks enough of the agentwire protocol to
//! be load-tested, with no actors: tokio, tokio-tungstenite, and one lock-protected map of
//! user → socket senders.
//!
//! It exists only to be measured against, by `agentwire bench --compare baseline`: the same
//! load run against it and against agentwire shows what agentwire's actors cost (or save).
//! It is not part of the library and not an example to build on: it has no heartbeat, no
//! resume or replay, no limits, no backpressure (each socket's queue is unbounded) and no
//! shutdown.
//!
//! What it speaks: the upgrade with a JWT (`jwt.<token>` subprotocol, `Authorization:
//! Bearer`, or `?token=`; 401 otherwise), `welcome`, `ping`/`pong`, and `start_agent` with
//! `context.synthetic = {"events": N, "interval_ms": X}` (the synthetic load contract of
//! `docs/protocol.md`, section 13), whose events carry the usual envelope, numbered per
//! user from 1 within a random epoch. Anything else gets an `error` frame.

mod auth;
mod conn;
mod hub;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use tokio::net::{TcpListener, TcpSocket};

use crate::auth::Verifier;
use crate::hub::Hub;

/// The agentwire benchmark baseline: a minimal WebSocket server with no actors.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// HS256 secret the clients' JWTs are signed with.
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.workers.max(1))
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> std::io::Result<()> {
    // The same accept backlog as `agentwire serve` (2,048; actix-web's own default is
    // 1,024), so a thousand simultaneous connects do not overflow it and wait for a SYN
    // retransmit.
    let socket = if cli.bind.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(cli.bind)?;
    let listener: TcpListener = socket.listen(2048)?;
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "agentwire-baseline listening on http://{}",
        listener.local_addr()?
    )?;
    stdout.flush()?;
    let hub = Arc::new(Hub::default());
    let verifier = Arc::new(Verifier::hs256(cli.jwt_secret.as_bytes()));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(conn::serve(stream, Arc::clone(&hub), Arc::clone(&verifier)));
            }
            // Out of file descriptors and the like: wait a moment rather than spin.
            Err(error) => {
                log::warn!("accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
