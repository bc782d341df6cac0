//! `agentwire serve`: the demo server.
//!
//! Mounts agentwire at `/ws` with an HS256 `JwtAuthenticator` and the simulated agent, the
//! demo-only login at `/demo/login`, and the demo page at `/` (with the reusable JavaScript
//! client at `/agentwire.js` and its types at `/agentwire.d.ts`), and the admin-only operator
//! routes (`/debug`, `/metrics`). Once it listens, prints the secrets it generated and the
//! addresses it listens on, and warns on standard error when an address is reachable from
//! other machines.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use agentwire::{Config, JwtAuthenticator, Runtime, UserPlacement};
use rand::Rng;

use crate::cli::{Placement, ServeArgs};
use crate::demo_agent::DemoAgent;
use crate::demo_login::{self, DemoIssuer};

const INDEX_HTML: &str = include_str!("assets/index.html");
const CLIENT_JS: &str = include_str!("assets/agentwire.js");
const CLIENT_TYPES: &str = include_str!("assets/agentwire.d.ts");

pub fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    actix_web::rt::System::new().block_on(serve(args))
}

fn random_secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Secrets are generated now but printed only once the server listens: a start that
    // fails prints none.
    let mut generated = Vec::new();
    let jwt_secret = args.jwt_secret.clone().unwrap_or_else(|| {
        let secret = random_secret();
        generated.push(format!(
            "jwt secret (generated; pass --jwt-secret to fix it): {secret}"
        ));
        secret
    });
    let admin_token = args.admin_token.clone().unwrap_or_else(|| {
        let token = random_secret();
        generated.push(format!(
            "admin token (generated; pass --admin-token to fix it): {token}"
        ));
        token
    });
    let config = Config {
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
        client_timeout: Duration::from_millis(args.client_timeout_ms),
        resume_window: Duration::from_millis(args.resume_window_ms),
        user_placement: match args.user_placement {
            Placement::FirstSocket => UserPlacement::WithFirstSocket,
            Placement::Pool => UserPlacement::Pool,
        },
        ..Config::default()
    };
    let mut builder = Runtime::builder(JwtAuthenticator::hs256(jwt_secret.as_bytes()))
        .config(config)
        .handler(DemoAgent);
    if let Some(url) = &args.redis_url {
        builder = builder
            .redis(url)
            .redis_prefix(&args.redis_prefix)
            .redis_queue_capacity(args.redis_queue_capacity);
    }
    let runtime = builder.start()?;
    let issuer = DemoIssuer::new(jwt_secret.as_bytes());

    let app_runtime = runtime.clone();
    let mut server = HttpServer::new(move || {
        let runtime = app_runtime.clone();
        App::new()
            .configure(agentwire::routes(runtime.clone()))
            .configure(agentwire::debug_routes(
                runtime.clone(),
                admin_token.clone(),
            ))
            .configure(demo_login::routes(issuer.clone()))
            .route("/", web::get().to(index))
            .route("/agentwire.js", web::get().to(client_js))
            .route("/agentwire.d.ts", web::get().to(client_types))
            .route("/favicon.ico", web::get().to(HttpResponse::NoContent))
    })
    // Each event is its own small frame, written as soon as it is encoded: without
    // TCP_NODELAY, Nagle's algorithm holds a frame back until the client acknowledges the
    // previous one (up to its delayed-ACK timer, 40 ms on Linux).
    .tcp_nodelay(true)
    // actix-web's 5 s default answers 408 to connections that a busy worker reaches late in
    // a connect storm (thousands of clients reconnecting at once after a restart).
    .client_request_timeout(Duration::from_millis(args.client_request_timeout_ms))
    // actix-web's default is 1,024: a storm overflows it sooner, and a dropped SYN is
    // retried only a second or more later.
    .backlog(args.backlog)
    // Signals are ours: sockets are drained with 1012 before the HTTP server stops.
    .disable_signals()
    .shutdown_timeout(1);
    if let Some(workers) = args.workers {
        server = server.workers(workers);
    }
    for addr in bindable(&args.bind.addrs)? {
        server = server
            .bind(addr)
            .map_err(|error| format!("cannot listen on {addr}: {error}"))?;
    }
    for line in generated {
        println!("{line}");
    }
    for addr in server.addrs() {
        println!("agentwire demo listening on http://{addr}");
    }
    warn_if_reachable(&server.addrs());
    let server = server.run();
    let handle = server.handle();
    let drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    actix_web::rt::spawn(async move {
        let signal = wait_for_signal().await;
        log::info!(
            "{signal}: draining sockets (at most {drain_timeout:?}); signal again to exit now"
        );
        actix_web::rt::spawn(async {
            let again = wait_for_signal().await;
            log::warn!("{again} during the drain: exiting now");
            std::process::exit(1);
        });
        match runtime.shutdown(drain_timeout).await {
            Ok(report) => log::info!(
                "drained: {} socket(s) closed, {} still open after {:?}",
                report.closed,
                report.still_open,
                report.took
            ),
            Err(error) => log::error!("drain failed: {error}"),
        }
        handle.stop(true).await;
    });
    server.await?;
    Ok(())
}

/// The addresses of `--bind` this machine has. A host name may name an address the
/// machine cannot listen on (`localhost` names `::1` too, which a machine without IPv6
/// lacks): such an address is left out, with a warning, as long as another one remains.
/// Probed on port 0, so the real port is not touched.
fn bindable(addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
    let mut usable = Vec::new();
    let mut missing = Vec::new();
    for addr in addrs {
        match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)) {
            Err(error) if error.kind() == std::io::ErrorKind::AddrNotAvailable => {
                missing.push(format!("cannot listen on {addr}: {error}"));
            }
            _ => usable.push(*addr),
        }
    }
    if usable.is_empty() {
        return Err(missing.join("; "));
    }
    for line in missing {
        log::warn!("{line}; left out");
    }
    Ok(usable)
}

/// The demo login gives a token for any name to anyone who asks: on an address other
/// machines can reach, that is anyone on the network.
fn warn_if_reachable(addrs: &[SocketAddr]) {
    for addr in addrs.iter().filter(|a| !a.ip().is_loopback()) {
        eprintln!(
            "agentwire: WARNING: listening on {addr}, which is not a loopback address, with \
             the demo login on.\n\
             agentwire: WARNING: anyone who can reach this port can log in as any user at \
             /demo/login and read that user's events.\n\
             agentwire: WARNING: the demo server is for trying agentwire on this machine; \
             use --bind 127.0.0.1:{} unless everyone who can reach it may be anyone.",
            addr.port()
        );
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM; names the signal.
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use actix_web::rt::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = actix_web::rt::signal::ctrl_c() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            },
            Err(error) => {
                log::warn!("cannot listen for SIGTERM: {error}");
                let _ = actix_web::rt::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_web::rt::signal::ctrl_c().await;
        "SIGINT"
    }
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(CLIENT_JS)
}

async fn client_types() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(CLIENT_TYPES)
}
