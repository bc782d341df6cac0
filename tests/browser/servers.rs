//! What the browser talks to in the browser tests: the `agentwire` binary's demo server as a
//! separate process (stopped with SIGTERM, as an operator would, and started again on the
//! same port), and a TCP proxy in front of it that can cut every connection, silence them
//! (half-open, as after a laptop sleeps) or refuse new ones, like a network that drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const JWT_SECRET: &str = "browser test secret";
pub const ADMIN_TOKEN: &str = "browser admin token";

/// `agentwire serve` on a loopback port, killed when dropped.
pub struct DemoServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    extra: Vec<String>,
}

impl DemoServer {
    /// Starts the demo server on a free port, with `extra` arguments.
    pub fn start(extra: &[&str]) -> DemoServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn("127.0.0.1:0", &extra);
        DemoServer {
            child: Some(child),
            addr,
            extra,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, as an operator stops it: the server drains (closing every socket with 1012)
    /// and exits. Waits for the exit.
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().expect("wait for the server").is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port (after `terminate`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "terminate first");
        let deadline = Instant::now() + Duration::from_secs(10);
        // The port is free once the old process is gone; retry briefly in case it lingers.
        loop {
            if TcpListener::bind(self.addr).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "port {} stays busy", self.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
        let (child, addr) = spawn(&self.addr.to_string(), &self.extra);
        assert_eq!(addr, self.addr, "the same port");
        self.child = Some(child);
    }

    /// A demo token for `user`, from `/demo/login`.
    pub fn login(&self, user: &str) -> String {
        let answer = post(&self.url("/demo/login"), &json!({ "user": user }), None);
        answer["token"].as_str().expect("a token").to_owned()
    }

    /// Asks the operator routes to crash `user`'s actor.
    pub fn crash_user(&self, user: &str) {
        post(
            &self.url("/debug/fault"),
            &json!({ "action": "crash_user", "user": user }),
            Some(ADMIN_TOKEN),
        );
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(bind: &str, extra: &[String]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args(["serve", "--bind", bind, "--jwt-secret", JWT_SECRET])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(extra)
        .env("RUST_LOG", "warn")
        // The fault test's injected panic is expected: one line of it is enough.
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the agentwire binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .expect("readable stdout");
        if let Some(addr) = line.strip_prefix("agentwire demo listening on http://") {
            break addr.parse().expect("an address");
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// A JSON POST; the parsed answer (or `null` for a body that is not JSON).
pub fn post(url: &str, body: &Value, bearer: Option<&str>) -> Value {
    let mut request = ureq::post(url).header("Content-Type", "application/json");
    if let Some(token) = bearer {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let text = response.body_mut().read_to_string().expect("a body");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A TCP proxy on a loopback port that forwards to a target it can change.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    target: Mutex<SocketAddr>,
    /// Every forwarded connection.
    open: Mutex<Vec<Forwarded>>,
    refusing: AtomicBool,
    closed: AtomicBool,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            open: Mutex::new(Vec::new()),
            refusing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.closed.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                if accepting.refusing.load(Ordering::Relaxed) {
                    refuse(client);
                    continue;
                }
                let target = *accepting.target.lock().expect("target");
                let Ok(upstream) = TcpStream::connect(target) else {
                    refuse(client);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let silent = Arc::new(AtomicBool::new(false));
                pipe(&client, &upstream, &silent);
                pipe(&upstream, &client, &silent);
                accepting.open.lock().expect("connections").push(Forwarded {
                    client,
                    upstream,
                    silent,
                });
            }
        });
        Proxy { addr, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cuts every connection open through the proxy, without a WebSocket close frame.
    pub fn cut(&self) {
        for forwarded in self.shared.open.lock().expect("connections").drain(..) {
            reset(&forwarded.client);
            let _ = forwarded.upstream.shutdown(Shutdown::Both);
        }
    }

    /// Every connection open now stays open but carries nothing more, either way (new
    /// connections work).
    pub fn silence(&self) {
        for forwarded in self.shared.open.lock().expect("connections").iter() {
            forwarded.silent.store(true, Ordering::Relaxed);
        }
    }

    /// While refusing, new connections are reset at once (the server seems unreachable).
    pub fn refuse(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Sends new connections to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().expect("target") = target;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.cut();
        let _ = TcpStream::connect(self.addr); // wakes the accept loop so it can end
    }
}

struct Forwarded {
    client: TcpStream,
    upstream: TcpStream,
    /// Set: what arrives is dropped instead of forwarded.
    silent: Arc<AtomicBool>,
}

/// Copies `from` to `to` on a thread of its own, until either side ends.
fn pipe(from: &TcpStream, to: &TcpStream, silent: &Arc<AtomicBool>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let silent = silent.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) if silent.load(Ordering::Relaxed) => continue,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Ends a forwarded connection at once, both ways, without any WebSocket close frame.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    let _ = stream.shutdown(Shutdown::Both);
}

/// Answers a new connection with a TCP reset, as a host with nothing listening does.
fn refuse(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
