//! `agentwire bench`: load benchmarks driven only through the wire protocol.
//!
//! Without `--url` it starts the server under test as a separate process on a loopback port
//! (so its own RSS and CPU time are read from /proc), ramps up connections spread over
//! several loopback source addresses, drives synthetic runs (`start_agent` with
//! `context.synthetic`), checks every event it counts (`client`), and reports throughput,
//! latency percentiles, connect rate, memory and CPU per event (`report`, and `chart` for
//! the SVG). With `--compare baseline` each scenario also runs against the actor-free
//! baseline server. With `--nodes N --redis [URL]` agentwire runs as N nodes on one Redis (`cluster`), each
//! user's sockets spread over the nodes, and the report adds Redis's own CPU per event and
//! what each node says on `/metrics` (`node_metrics`).

mod chart;
mod client;
mod cluster;
mod node_metrics;
mod report;
mod server;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use jsonwebtoken::{encode, EncodingKey, Header};

use client::{ClientPlan, ClientRecord};
use cluster::BenchRedis;
pub use report::{EngineCounters, Outcome};
pub use server::Target;
use server::{ProcessUsage, Server};

/// Loopback source addresses the clients spread over (127.0.0.1 .. 127.0.0.N), so that
/// 20,000 sockets do not exhaust one address's ephemeral ports.
const SOURCE_ADDRESSES: u8 = 16;

/// Concurrent connect-and-leave loops in the churn scenario.
const CHURNERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Connect sockets and hold them: server memory per socket.
    Idle,
    /// Flat-out synthetic runs on every user: throughput and CPU per event.
    Fanout,
    /// Runs paced at `--interval-ms`: latency under a steady load.
    Paced,
    /// Sockets connecting and leaving continuously while runs stream: connects per second.
    Churn,
    /// Paced load with a tenth of the sockets not reading: the others' latency.
    SlowConsumer,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Scenario::Fanout)]
    pub scenario: Scenario,
    /// Sockets in total.
    #[arg(long, default_value_t = 1_000)]
    pub sockets: usize,
    /// Sockets per user (users = sockets / this).
    #[arg(long, default_value_t = 1)]
    pub sockets_per_user: usize,
    /// Events per synthetic run.
    #[arg(long, default_value_t = 1_000)]
    pub events: u64,
    /// Milliseconds between a run's events (0 = flat out).
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// How long to drive load, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Drive an already running server instead of starting one (needs its --jwt-secret).
    #[arg(long)]
    pub url: Option<String>,
    /// The HS256 secret to sign client tokens with (a random one for a started server).
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Also run against another server and report the ratios: the baseline, or (with
    /// --redis) `agentwire`, one process on its in-process engine.
    #[arg(long, value_enum)]
    pub compare: Option<Target>,
    /// Run agentwire as this many nodes on one Redis (needs --redis); each user's sockets
    /// are spread over the nodes round-robin.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// Run agentwire on the Redis engine, its nodes sharing the Redis at this URL
    /// (`redis://[user:password@]host:port/db`; the run's keys are deleted afterwards).
    /// Without a URL, the bench starts its own `redis-server` on a free loopback port,
    /// with persistence off, and stops it at the end.
    #[arg(long = "redis", value_name = "URL", num_args = 0..=1, conflicts_with = "url")]
    pub redis: Option<Option<String>>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Draw latency percentiles and throughput over time as SVG here.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
    /// Threads the load generator runs its clients on (it shares the machine's cores with
    /// the server it starts).
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
}

/// What a scenario runs against.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// One `agentwire serve` on its in-process engine.
    Agentwire,
    /// The baseline server.
    Baseline,
    /// `nodes` `agentwire serve --redis` nodes on the bench's Redis.
    Cluster { nodes: usize },
}

impl Setup {
    /// The name in the report.
    fn name(self) -> String {
        match self {
            Setup::Agentwire => "agentwire".to_owned(),
            Setup::Baseline => "baseline".to_owned(),
            Setup::Cluster { nodes: 1 } => "agentwire-redis (1 node)".to_owned(),
            Setup::Cluster { nodes } => format!("agentwire-redis ({nodes} nodes)"),
        }
    }

    /// The part of the user ids that tells the setups apart.
    fn tag(self) -> &'static str {
        match self {
            Setup::Agentwire => "agentwire",
            Setup::Baseline => "baseline",
            Setup::Cluster { .. } => "redis",
        }
    }
}

pub fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let nodes = usize::from(args.nodes);
    if nodes > 1 && args.redis.is_none() {
        return Err("--nodes needs --redis: the nodes share their users' streams there".into());
    }
    let limit = server::raise_fd_limit();
    eprintln!("open-file limit: {limit} (raised to the hard limit)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    let secret = args.jwt_secret.clone().unwrap_or_else(|| {
        let bytes: [u8; 16] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let redis = match &args.redis {
        Some(url) => {
            let redis = BenchRedis::open(url.as_deref())?;
            eprintln!("{}", redis.describe());
            Some(redis)
        }
        None => None,
    };
    let mut setups = vec![match redis {
        Some(_) => Setup::Cluster { nodes },
        None => Setup::Agentwire,
    }];
    if let Some(other) = args.compare {
        if args.url.is_some() {
            return Err("--compare starts both servers itself; drop --url".into());
        }
        setups.push(match other {
            Target::Agentwire => Setup::Agentwire,
            Target::Baseline => Setup::Baseline,
        });
    }
    let mut outcomes = Vec::new();
    for setup in setups {
        let mut prefix = None;
        let server = match (&args.url, setup, &redis) {
            (Some(url), _, _) => {
                let host = url
                    .trim_start_matches("http://")
                    .trim_start_matches("ws://");
                let host = host.split('/').next().unwrap_or(host);
                Server::existing(host.parse().map_err(|e| format!("--url {url}: {e}"))?)
            }
            (None, Setup::Cluster { nodes }, Some(redis)) => {
                let unique = cluster::unique_prefix();
                let server = redis.start_nodes(nodes, &unique, &secret)?;
                prefix = Some(unique);
                server
            }
            (None, Setup::Baseline, _) => Server::start(Target::Baseline, &secret)?,
            (None, _, _) => Server::start(Target::Agentwire, &secret)?,
        };
        let addrs: Vec<String> = server.addrs.iter().map(ToString::to_string).collect();
        eprintln!(
            "{}: {:?} against {}",
            setup.name(),
            args.scenario,
            addrs.join(", ")
        );
        let redis = redis.as_ref().filter(|_| prefix.is_some());
        let passes = || -> Result<Vec<Outcome>, Box<dyn std::error::Error>> {
            let mut passes = Vec::new();
            if args.scenario == Scenario::SlowConsumer {
                // The same paced load first with every socket reading, then with a tenth
                // not.
                let mut reference =
                    runtime.block_on(scenario(&args, &server, redis, &secret, setup, false))?;
                reference.target = format!("{} (reference)", setup.name());
                passes.push(reference);
            }
            let mut outcome =
                runtime.block_on(scenario(&args, &server, redis, &secret, setup, true))?;
            if args.scenario == Scenario::SlowConsumer {
                outcome.target = format!("{} (slow)", setup.name());
            }
            passes.push(outcome);
            Ok(passes)
        };
        let passes = passes();
        // The servers stop, and the run's keys go, whether the passes succeeded or not.
        drop(server);
        if let (Some(redis), Some(prefix)) = (redis, &prefix) {
            if let Err(e) = redis.forget(prefix) {
                eprintln!("{e} (they are under the prefix {prefix})");
            }
        }
        outcomes.extend(passes?);
    }
    report::print(&outcomes);
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&args, &outcomes))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, chart::svg(&outcomes))?;
    }
    if outcomes.iter().any(|o| !o.correct()) {
        return Err("events were lost, duplicated, misdelivered or left unfinished".into());
    }
    Ok(())
}

fn token(secret: &str, user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 24 * 3600;
    encode(
        &Header::default(),
        &serde_json::json!({ "sub": user, "exp": exp }),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

async fn scenario(
    args: &BenchArgs,
    server: &Server,
    redis: Option<&BenchRedis>,
    secret: &str,
    setup: Setup,
    with_slow_consumers: bool,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let sockets = args.sockets.max(1);
    let per_user = args.sockets_per_user.max(1);
    let duration = Duration::from_secs(args.duration_s.max(1));
    let (runs, interval_ms) = match args.scenario {
        Scenario::Idle => (false, args.interval_ms),
        Scenario::Fanout => (true, 0),
        Scenario::Paced | Scenario::SlowConsumer | Scenario::Churn => {
            (true, args.interval_ms.max(1))
        }
    };
    let before = server.usage();
    let bench_start = Instant::now();
    // Everyone connects first (the ramp); then load runs for `duration`.
    let ready = Arc::new(AtomicUsize::new(0));
    let (go_tx, go) = tokio::sync::watch::channel(None);
    let mut handles = Vec::with_capacity(sockets);
    let mut tokens = std::collections::HashMap::new();
    for i in 0..sockets {
        let pass = if with_slow_consumers { "" } else { "ref-" };
        let (user_index, socket_of_user) = (i / per_user, i % per_user);
        let user = format!("bench-{}-{pass}{user_index}", setup.tag());
        let token = tokens
            .entry(user.clone())
            .or_insert_with(|| token(secret, &user))
            .clone();
        let plan = ClientPlan {
            // A user's sockets on consecutive nodes, and the users' first sockets (which
            // drive the runs) round-robin over the nodes too.
            server: server.addr_for(user_index + socket_of_user),
            source: IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % SOURCE_ADDRESSES as usize) as u8,
            )),
            user,
            token,
            drives_runs: runs && socket_of_user == 0,
            events_per_run: args.events.max(2),
            interval_ms,
            ready: ready.clone(),
            go: go.clone(),
            stop_reading: with_slow_consumers
                && args.scenario == Scenario::SlowConsumer
                && i % 10 == 9,
        };
        handles.push(tokio::spawn(client::run(plan, bench_start)));
        if i % 250 == 249 {
            eprint!("\rconnecting {}/{sockets}", i + 1);
            tokio::task::yield_now().await;
        }
    }
    let ramp_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = ready.load(Ordering::SeqCst);
        eprint!("\rconnected {done}/{sockets}   ");
        if done >= sockets || Instant::now() > ramp_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp = bench_start.elapsed();
    eprintln!(
        "\rconnected {}/{sockets} in {:.2} s",
        ready.load(Ordering::SeqCst),
        ramp.as_secs_f64()
    );
    let connected_usage = server.usage();
    let redis_at_load = redis.and_then(BenchRedis::cpu_micros);
    let nodes_at_load = scrape(server).await;
    let generator_at_load = ProcessUsage::of_self();
    let load_start = Instant::now();
    let _ = go_tx.send(Some(load_start + duration));
    // Churn: connections that come and go during the load, each a full handshake, token
    // check, registration and welcome.
    let churners: Vec<_> = if args.scenario == Scenario::Churn {
        (0..CHURNERS)
            .map(|c| {
                let user = format!("bench-churn-{}-{c}", setup.tag());
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (c % 200) as u8));
                tokio::spawn(client::churn(
                    server.addr_for(c),
                    source,
                    token(secret, &user),
                    load_start + duration,
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut churned = 0;
    for churner in churners {
        churned += churner.await?;
    }
    let churn_secs = load_start.elapsed().as_secs_f64();
    let mut records: Vec<ClientRecord> = Vec::with_capacity(sockets);
    for handle in handles {
        records.push(handle.await?);
    }
    let after = server.usage();
    let redis_after = redis.and_then(BenchRedis::cpu_micros);
    let nodes_after = scrape(server).await;
    let generator_after = ProcessUsage::of_self();
    let mut outcome = Outcome::new(
        setup.name(),
        args.scenario,
        records,
        (ramp, load_start.duration_since(bench_start), duration),
        (before, connected_usage, after),
    );
    if let (Some(at_load), Some(after)) = (generator_at_load, generator_after) {
        if outcome.events > 0 {
            let cpu = after.cpu_micros.saturating_sub(at_load.cpu_micros);
            outcome.generator_cpu_us_per_event = Some(cpu as f64 / outcome.events as f64);
        }
    }
    outcome.nodes = server.addrs.len();
    if let (Some(at_load), Some(after)) = (redis_at_load, redis_after) {
        if outcome.events > 0 {
            let cpu = after.saturating_sub(at_load);
            outcome.redis_cpu_us_per_event = Some(cpu as f64 / outcome.events as f64);
        }
    }
    if let Some(at_load) = &nodes_at_load {
        outcome.sessions_per_node = at_load.iter().map(|n| n.sessions).collect();
    }
    if let (Some(at_load), Some(after)) = (&nodes_at_load, &nodes_after) {
        for name in ["written", "inbox", "outbox"] {
            let Some(grown) = node_metrics::histogram_growth(name, at_load, after) else {
                continue;
            };
            let ms = |q| node_metrics::quantile(&grown, q).map(|s| s * 1e3);
            if let (Some(p50), Some(p99)) = (ms(0.5), ms(0.99)) {
                outcome.server_waits_ms.insert(name, [p50, p99]);
            }
        }
    }
    if let (Some(at_load), Some(after), Some(_)) = (&nodes_at_load, &nodes_after, redis) {
        outcome.engine = Some(EngineCounters::between(at_load, after));
    }
    if args.scenario == Scenario::Churn {
        outcome.churn_connects_per_sec = Some(churned as f64 / churn_secs.max(1e-3));
    }
    Ok(outcome)
}

/// What each node says on `/metrics` (off the client threads: a scrape blocks).
async fn scrape(server: &Server) -> Option<Vec<node_metrics::NodeMetrics>> {
    let token = server.admin_token()?;
    let addrs = server.addrs.clone();
    tokio::task::spawn_blocking(move || node_metrics::scrape_all(&addrs, token))
        .await
        .ok()
        .flatten()
}
