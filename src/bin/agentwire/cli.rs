//! Command-line parsing for the `agentwire` binary: every flag also reads an environment
//! variable, and running with no subcommand means `serve`.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// agentwire: an actor-based WebSocket runtime for AI-agent backends.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, these are the `serve` options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the demo server: the WebSocket endpoint, a demo login, a simulated agent and a
    /// page to watch it work (the default).
    Serve(ServeArgs),
    /// Print the live supervision tree of a running server (its /debug/tree route).
    Tree(TreeArgs),
    /// Load benchmarks through the wire protocol (see docs/benchmarks.md).
    Bench(crate::bench::BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TreeArgs {
    /// The server's base URL.
    #[arg(long, env = "AGENTWIRE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The server's admin token.
    #[arg(long, env = "AGENTWIRE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TreeFormat::Text)]
    pub format: TreeFormat,
    /// Refresh until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: how often to refresh, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub interval_ms: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum TreeFormat {
    /// An indented tree, one line per actor.
    Text,
    /// Nested JSON nodes.
    Json,
    /// Graphviz DOT.
    Dot,
}

impl TreeFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TreeFormat::Text => "text",
            TreeFormat::Json => "json",
            TreeFormat::Dot => "dot",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "AGENTWIRE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// HS256 secret for the demo's JWTs; a random one is generated and printed when absent.
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Bearer token for the operator (debug) routes; a random one is generated and printed
    /// when absent.
    #[arg(long, env = "AGENTWIRE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How often the server pings each socket, in milliseconds.
    #[arg(
        long,
        env = "AGENTWIRE_HEARTBEAT_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub heartbeat_interval_ms: u64,
    /// Close a socket that sent nothing for this long, in milliseconds.
    #[arg(long, env = "AGENTWIRE_CLIENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub client_timeout_ms: u64,
    /// On SIGTERM or SIGINT, how long to spend closing sockets (1012) before exiting.
    #[arg(long, env = "AGENTWIRE_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// How long a user's numbering and replay buffer outlive their last socket.
    #[arg(long, env = "AGENTWIRE_RESUME_WINDOW_MS", default_value_t = 120_000)]
    pub resume_window_ms: u64,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "AGENTWIRE_WORKERS")]
    pub workers: Option<usize>,
    /// Where user actors run (see `UserPlacement` in the library docs).
    #[arg(long, env = "AGENTWIRE_USER_PLACEMENT", value_enum, default_value_t = Placement::FirstSocket)]
    pub user_placement: Placement,
}

/// `--user-placement`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Placement {
    /// On the thread of the user's first socket, with its handler tasks (the default).
    FirstSocket,
    /// On dedicated arbiter threads, one per core.
    Pool,
}
