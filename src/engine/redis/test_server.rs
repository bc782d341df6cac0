//! A real `redis-server` for tests: started on a free loopback port in a temporary
//! directory, with persistence off (`--save "" --appendonly no`), so every test has a Redis
//! of its own that it may kill (SIGKILL), restart empty, or pause (SIGSTOP) and resume
//! (SIGCONT). Killed when dropped.
//!
//! It uses only `std` and `libc`, so integration tests include the same file (through
//! `tests/common`, which starts one for every test server when the tests run on the Redis
//! engine). Its own test is in `testing.rs`, so that it runs once, in the library's tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where the tests find the server (`scripts/test` installs it when missing).
const REDIS_SERVER: &str = "redis-server";

pub(crate) struct TestRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl TestRedis {
    /// Starts a server and waits until it answers PING.
    pub(crate) fn start() -> TestRedis {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "agentwire-redis-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // A port that was free a moment ago; retried if another process takes it first.
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut server = TestRedis {
                port,
                dir: dir.clone(),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed? scripts/test installs it)");
    }

    /// The URL to connect to.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) -> bool {
        std::fs::create_dir_all(&self.dir).expect("a temporary directory");
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                break; // exited: the port was taken
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// Sends one inline command (`SISMEMBER key member`) and returns the reply's first line.
    pub(crate) fn command(&self, command: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connected");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a timeout");
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("sent");
        let mut reply = Vec::new();
        let mut byte = [0];
        while !reply.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).expect("a reply");
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    /// Sends one inline command whose reply is a bulk string (`CLIENT LIST`) and returns
    /// that string (empty for a null reply).
    #[allow(dead_code)] // used by the integration tests only
    pub(crate) fn bulk(&self, command: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connected");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a timeout");
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("sent");
        let mut head = Vec::new();
        let mut byte = [0];
        while !head.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).expect("a reply");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).trim_end().to_owned();
        let length: i64 = head
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a bulk string reply to {command}, not {head}"));
        let Ok(length) = usize::try_from(length) else {
            return String::new();
        };
        let mut body = vec![0; length + 2];
        stream.read_exact(&mut body).expect("the bulk string");
        body.truncate(length);
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Whether the server answers PING right now.
    pub(crate) fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            let pid = child.id() as libc::pid_t;
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Kills the server with SIGKILL (its data is lost: persistence is off).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts an empty one on the same port.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGSTOP): connections stay open, nothing is answered.
    pub(crate) fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub(crate) fn resume(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
