//! Command-line parsing for the `agentwire` binary: every flag also reads an environment
//! variable, and running with no subcommand means `serve`. Values that cannot work (no
//! workers, an empty secret, an address that is not `IP:PORT` or `HOST:PORT`, a Redis URL
//! or key prefix the Redis engine refuses) are usage errors: clap prints them and exits
//! with status 2, before anything starts.

use std::net::{SocketAddr, ToSocketAddrs};

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
    #[arg(long, env = "AGENTWIRE_ADMIN_TOKEN", hide_env_values = true, value_parser = non_empty)]
    pub admin_token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TreeFormat::Text)]
    pub format: TreeFormat,
    /// Refresh until interrupted; a failed fetch is shown and retried at the next refresh.
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
    /// Address to listen on: IP:PORT, or HOST:PORT (every address the host name resolves
    /// to). Port 0 picks a free port; the chosen address is printed.
    #[arg(long, env = "AGENTWIRE_BIND", default_value = "127.0.0.1:8080", value_name = "ADDR", value_parser = parse_bind)]
    pub bind: BindAddr,
    /// HS256 secret for the demo's JWTs; a random one is generated and printed when absent.
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true, value_parser = non_empty)]
    pub jwt_secret: Option<String>,
    /// Bearer token for the operator (debug) routes; a random one is generated and printed
    /// when absent.
    #[arg(long, env = "AGENTWIRE_ADMIN_TOKEN", hide_env_values = true, value_parser = non_empty)]
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
    /// HTTP worker threads, at least 1 (default: one per core).
    #[arg(long, env = "AGENTWIRE_WORKERS", value_parser = at_least_one)]
    pub workers: Option<usize>,
    /// How long a new connection may take to send its request head (the WebSocket upgrade
    /// request), in milliseconds, before it is answered 408 and closed; 0 for no limit.
    /// Counted from when a worker first sees the connection, so under a connect storm it
    /// includes the time the connection waits for a busy worker.
    #[arg(
        long,
        env = "AGENTWIRE_CLIENT_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub client_request_timeout_ms: u64,
    /// How many connections may wait to be accepted (the listen backlog; Linux caps it at
    /// net.core.somaxconn). Past it, a connecting client's SYN is dropped and retried a
    /// second or more later.
    #[arg(long, env = "AGENTWIRE_BACKLOG", default_value_t = 2_048)]
    pub backlog: u32,
    /// Where user actors run (see `UserPlacement` in the library docs).
    #[arg(long, env = "AGENTWIRE_USER_PLACEMENT", value_enum, default_value_t = Placement::FirstSocket)]
    pub user_placement: Placement,
    /// Join a cluster: every node started with the same Redis and prefix shares each user's
    /// stream (`redis://[user:password@]host:port/db`). Without it, streams live in this
    /// process.
    #[arg(long = "redis", env = "AGENTWIRE_REDIS_URL", value_name = "URL", value_parser = redis_url)]
    pub redis_url: Option<String>,
    /// The prefix of every Redis key and channel, so several deployments can share one Redis
    /// (1 to 64 bytes, no braces, whitespace or control characters).
    #[arg(long, env = "AGENTWIRE_REDIS_PREFIX", default_value = "agentwire", value_parser = redis_prefix, requires = "redis_url")]
    pub redis_prefix: String,
    /// How many events this node's publish queue holds while Redis is slow or unreachable
    /// (and at most 64 MiB): an event that does not fit stops its run, which ends with
    /// `agent_error` code `engine_unavailable`.
    #[arg(
        long,
        env = "AGENTWIRE_REDIS_QUEUE_CAPACITY",
        value_name = "EVENTS",
        default_value_t = 262_144,
        value_parser = at_least_one,
        requires = "redis_url"
    )]
    pub redis_queue_capacity: usize,
}

/// `--user-placement`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Placement {
    /// On the thread of the user's first socket, with its handler tasks (the default).
    FirstSocket,
    /// On dedicated arbiter threads, one per core.
    Pool,
}

/// `--bind`: what the user wrote, and the addresses it stands for.
#[derive(Debug, Clone)]
pub struct BindAddr {
    pub addrs: Vec<SocketAddr>,
}

/// `IP:PORT` (`127.0.0.1:8080`, `[::1]:8080`) or `HOST:PORT` (`localhost:8080`, resolved
/// now: every address it names).
fn parse_bind(value: &str) -> Result<BindAddr, String> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(BindAddr { addrs: vec![addr] });
    }
    let expected = "expected IP:PORT or HOST:PORT, for example 127.0.0.1:8080 or localhost:8080";
    if value.parse::<u16>().is_ok() {
        return Err(format!(
            "{expected} (a port alone does not say which address: 127.0.0.1:{value} \
             listens on this machine only, 0.0.0.0:{value} on every interface)"
        ));
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(expected.to_owned());
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!(
            "{expected} (the port must be a number from 0 to 65535)"
        ));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(expected.to_owned());
    }
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host}: {error}"))?
        .collect();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    Ok(BindAddr { addrs })
}

/// A secret or token: an empty one would sign or guard nothing.
fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty (leave the flag and its environment variable unset to have a random one generated)".to_owned());
    }
    Ok(value.to_owned())
}

/// `--redis`: a URL the Redis client takes (connecting happens later, in the background).
fn redis_url(value: &str) -> Result<String, String> {
    agentwire::RuntimeBuilder::check_redis_url(value).map_err(|e| e.reason().to_owned())?;
    Ok(value.to_owned())
}

/// `--redis-prefix`: a prefix the Redis engine takes.
fn redis_prefix(value: &str) -> Result<String, String> {
    agentwire::RuntimeBuilder::check_redis_prefix(value).map_err(|e| e.reason().to_owned())?;
    Ok(value.to_owned())
}

/// `--workers`: actix-web needs at least one.
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_takes_an_ip_and_port_or_a_host_name() {
        assert_eq!(
            parse_bind("127.0.0.1:8081").unwrap().addrs,
            ["127.0.0.1:8081".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            parse_bind("[::1]:0").unwrap().addrs,
            ["[::1]:0".parse::<SocketAddr>().unwrap()]
        );
        let localhost = parse_bind("localhost:8081").unwrap().addrs;
        assert!(!localhost.is_empty());
        assert!(localhost
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8081));
        for bad in [
            "8081",
            "localhost",
            "localhost:http",
            ":8081",
            "127.0.0.1:70000",
        ] {
            let error = parse_bind(bad).unwrap_err();
            assert!(error.contains("IP:PORT"), "{bad}: {error}");
        }
    }

    #[test]
    fn zero_workers_and_empty_secrets_are_refused() {
        assert!(at_least_one("0").is_err());
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(non_empty("").is_err());
        assert_eq!(non_empty("x"), Ok("x".to_owned()));
    }

    #[test]
    fn redis_urls_and_prefixes_are_checked_as_the_engine_checks_them() {
        assert!(redis_url("redis://127.0.0.1:6379/0").is_ok());
        for bad in ["", "127.0.0.1:6379", "http://127.0.0.1:6379"] {
            assert!(redis_url(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            redis_prefix("agentwire-eu.1"),
            Ok("agentwire-eu.1".to_owned())
        );
        for bad in ["", "a b", "a{b", "a}b", "a\tb", &"p".repeat(65)] {
            let error = redis_prefix(bad).unwrap_err();
            assert!(error.contains("Redis prefix"), "{bad:?}: {error}");
        }
    }
}
