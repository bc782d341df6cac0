//! The `agentwire` binary's command line as a user meets it: each test runs the binary as a
//! separate process and reads what it prints and how it exits. Usage errors (a Redis prefix
//! or URL the engine would refuse among them) exit with status 2 before anything starts; a
//! start that fails names the address and prints no secret; shutting down is not a crash;
//! `tree --watch` outlives the server it watches.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "cli test admin token";

fn agentwire() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentwire"));
    command.env_remove("AGENTWIRE_ADMIN_TOKEN");
    command.env_remove("AGENTWIRE_JWT_SECRET");
    command.env_remove("AGENTWIRE_BIND");
    command.env_remove("AGENTWIRE_REDIS_URL");
    command.env_remove("AGENTWIRE_REDIS_PREFIX");
    command
}

/// Runs the binary to its end (for commands that must refuse to start).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = agentwire();
    command.args(args).stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the agentwire binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `agentwire serve` running, with everything it printed collected as it comes.
struct Serve {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts `serve` on `bind` with the test secret and admin token; `extra` are more
    /// flags, `rust_log` the log filter.
    fn start(bind: &str, extra: &[&str], rust_log: &str) -> Serve {
        let secret = std::str::from_utf8(common::SECRET).unwrap();
        let mut child = agentwire()
            .args(["serve", "--bind", bind, "--jwt-secret", secret])
            .args(["--admin-token", ADMIN])
            .args(extra)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the agentwire binary starts");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().unwrap(), stderr.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let seen = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.by_ref().map_while(Result::ok) {
                let addr = line
                    .strip_prefix("agentwire demo listening on http://")
                    .map(|a| a.parse::<SocketAddr>().unwrap());
                seen.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(common::PATIENCE)
            .unwrap_or_else(|_| panic!("no address printed; stderr: {}", stderr.lock().unwrap()));
        Serve {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: `kill` only sends a signal to the server process this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the process to exit (after a signal) and returns its exit status.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + common::PATIENCE * 3;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the readers take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn admin_get(&self, path: &str) -> (u16, String) {
        let auth = format!("Authorization: Bearer {ADMIN}\r\n");
        common::http(self.addr, "GET", path, None, &auth).await
    }

    /// Waits until the tree's totals show `users` users and `sessions` sockets.
    async fn wait_for_totals(&self, users: u64, sessions: u64) {
        let deadline = Instant::now() + common::PATIENCE;
        loop {
            let (status, body) = self.admin_get("/debug/tree").await;
            assert_eq!(status, 200, "{body}");
            let tree: Value = serde_json::from_str(&body).unwrap();
            if tree["totals"]["users"] == users && tree["totals"]["sessions"] == sessions {
                return;
            }
            assert!(Instant::now() < deadline, "tree never matched: {tree}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends everything `from` produces to `into`, from a thread of its own.
fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
}

#[test]
fn zero_workers_is_a_usage_error_not_a_panic() {
    for out in [
        run(&["serve", "--workers", "0"], &[]),
        run(&[], &[("AGENTWIRE_WORKERS", "0")]),
    ] {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--workers") && stderr.contains("at least 1"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "nothing started: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn a_redis_prefix_or_url_the_engine_refuses_is_a_usage_error() {
    let redis = [
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--redis",
        "redis://127.0.0.1:1/0",
    ];
    for out in [
        run(
            &[&redis[..], &["--redis-prefix", "two words"]].concat(),
            &[],
        ),
        run(&[&redis[..], &["--redis-prefix", "a{b}"]].concat(), &[]),
        run(&redis, &[("AGENTWIRE_REDIS_PREFIX", "")]),
    ] {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--redis-prefix")
                && stderr.contains("the Redis prefix must be 1 to 64 bytes without braces, whitespace or control characters"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "nothing started: {}",
            text(&out.stdout)
        );
    }
    for bad in ["localhost:6379", "http://127.0.0.1:6379"] {
        let out = run(&["serve", "--bind", "127.0.0.1:0", "--redis", bad], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--redis <URL>")
                && stderr.contains("expected redis://[user:password@]host:port/db"),
            "{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "nothing started: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn a_port_in_use_is_named_and_no_secret_is_printed() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["serve", "--bind", &addr], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("agentwire: cannot listen on {addr}: ")),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no generated secret for a server that never listened: {}",
        text(&out.stdout)
    );
}

#[test]
fn bind_says_the_form_it_expects_or_resolves_a_host_name() {
    for bad in ["8081", "localhost", "not an address"] {
        let out = run(&["serve", "--bind", bad], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("expected IP:PORT or HOST:PORT"), "{stderr}");
    }
    let out = run(&["serve", "--bind", "8081"], &[]);
    assert!(text(&out.stderr).contains("127.0.0.1:8081"), "a suggestion");

    let server = Serve::start("localhost:0", &[], "warn");
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let stdout = server.stdout.lock().unwrap().clone();
    assert!(
        !stdout.contains("generated"),
        "secrets were given: {stdout}"
    );
}

#[test]
fn empty_secrets_are_refused() {
    for (env, name) in [
        ("AGENTWIRE_ADMIN_TOKEN", "--admin-token"),
        ("AGENTWIRE_JWT_SECRET", "--jwt-secret"),
    ] {
        let out = run(&["serve", "--bind", "127.0.0.1:0"], &[(env, "")]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(name) && stderr.contains("must not be empty"),
            "{stderr}"
        );
    }
    let out = run(&["tree", "--admin-token", ""], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn secrets_are_printed_once_the_server_listens() {
    let mut child = agentwire()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(lines.next().unwrap().unwrap());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(first[0].starts_with("jwt secret (generated"), "{first:?}");
    assert!(first[1].starts_with("admin token (generated"), "{first:?}");
    assert!(first[2].starts_with("agentwire demo listening on http://127.0.0.1:"));
}

#[test]
fn a_non_loopback_address_with_the_demo_login_warns_at_startup() {
    let server = Serve::start("0.0.0.0:0", &[], "warn");
    let deadline = Instant::now() + common::PATIENCE;
    // The warning's lines may still be on their way when the first bytes are readable.
    let last_line = "anyone who can reach this port can log in as any user";
    while !server.stderr().contains(last_line) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = server.stderr();
    assert!(
        stderr.contains(&format!(
            "WARNING: listening on 0.0.0.0:{}, which is not a loopback address",
            server.addr.port()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("anyone who can reach this port can log in as any user"),
        "{stderr}"
    );

    let local = Serve::start("127.0.0.1:0", &[], "warn");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!local.stderr().contains("WARNING"), "{}", local.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_users_is_not_a_crash() {
    let mut server = Serve::start("127.0.0.1:0", &["--workers", "2"], "info");
    // Users in their resume window (no socket, actor kept), on both workers.
    for user in (0..100).map(|i| format!("idle-{i}")) {
        let user = user.as_str();
        let url = format!("ws://{}/ws", server.addr);
        let mut client =
            common::Client::connect_subprotocol(&url, &common::token(user, 3600)).await;
        client.socket.close(None).await.unwrap();
    }
    server.wait_for_totals(100, 0).await;
    server.signal(libc::SIGTERM);
    let status = server.wait();
    let stderr = server.stderr();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("SIGTERM: draining sockets"), "{stderr}");
    assert!(
        !stderr.contains("restart:") && !stderr.contains("restarted"),
        "a shutdown logged a restart:\n{stderr}"
    );
    assert!(
        !stderr.contains(" WARN "),
        "a warning at shutdown:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_slower_than_actix_webs_default_is_still_served() {
    // actix-web answers 408 when the request head takes more than 5 s; `serve` allows 30 s
    // by default, so a connection a busy worker reaches late in a connect storm is served.
    let server = Serve::start("127.0.0.1:0", &[], "warn");
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /agentwire.js HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stream
        .write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response:.40}");

    // The limit is a flag: a head that does not come in time gets 408.
    let strict = Serve::start(
        "127.0.0.1:0",
        &["--client-request-timeout-ms", "200"],
        "warn",
    );
    let mut stream = tokio::net::TcpStream::connect(strict.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response:.40}");
}

/// What `agentwire tree --watch` printed so far.
struct Watch {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Watch {
    fn start(url: &str) -> Watch {
        let mut child = agentwire()
            .args([
                "tree",
                "--watch",
                "--interval-ms",
                "100",
                "--format",
                "text",
            ])
            .args(["--url", url, "--admin-token", ADMIN])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().unwrap(), out.clone());
        collect(child.stderr.take().unwrap(), out.clone());
        Watch { child, out }
    }

    /// Waits until the latest screen (after the last clear) satisfies `want`; returns it.
    fn screen_where(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + common::PATIENCE;
        loop {
            let screen = {
                let out = self.out.lock().unwrap();
                out.rsplit("\x1b[2J\x1b[H").next().unwrap_or("").to_owned()
            };
            if want(&screen) {
                return screen;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "tree --watch exited ({status}): {}",
                    self.out.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what}; last: {screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An RFC 3339 UTC timestamp to the second at the start of `line`.
fn starts_with_timestamp(line: &str) -> bool {
    line.get(..20)
        .is_some_and(|t| humantime::parse_rfc3339(t).is_ok())
}

#[test]
fn tree_watch_keeps_watching_through_a_server_restart() {
    let server = Serve::start("127.0.0.1:0", &[], "warn");
    let addr = server.addr;
    let mut watch = Watch::start(&format!("http://{addr}"));
    let screen = watch.screen_where("the tree", |s| {
        s.contains("registry@local  engine=local users=")
    });
    let stamp = screen.lines().nth(1).unwrap();
    assert!(
        starts_with_timestamp(stamp) && stamp.ends_with("  ok"),
        "{screen}"
    );

    drop(server);
    let screen = watch.screen_where("the failure", |s| s.contains("fetch failed"));
    let failed = screen.lines().nth(1).unwrap();
    assert!(starts_with_timestamp(failed), "{screen}");
    assert!(
        failed.contains(&addr.to_string()),
        "says what failed: {screen}"
    );
    let last = screen
        .lines()
        .find(|l| l.starts_with("last success: "))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(
        starts_with_timestamp(&last["last success: ".len()..]),
        "{screen}"
    );
    assert!(
        screen.contains("registry@local  engine=local users="),
        "the last tree stays: {screen}"
    );

    // The server comes back on the same address: the watch shows it again.
    let _restarted = Serve::start(&addr.to_string(), &[], "warn");
    watch.screen_where("the tree again", |s| {
        s.lines().nth(1).is_some_and(|l| l.ends_with("  ok"))
            && s.contains("registry@local  engine=local users=")
    });
}
