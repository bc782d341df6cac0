//! The cluster side of `agentwire bench --nodes N --redis [URL]`: the Redis the nodes share
//! (the one the URL names, or a `redis-server` the bench starts on a free loopback port and
//! stops at the end), its CPU time from `INFO cpu`, and the nodes themselves:
//! `agentwire serve --redis URL --redis-prefix P` processes, with a prefix of their own per
//! run, so a run never meets another run's streams. On a Redis it did not start, the bench
//! deletes its run's keys once the nodes are gone.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{self, Server};

/// How long one command to Redis may take (connect, PING, INFO, SCAN, UNLINK).
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// The Redis the nodes of a cluster bench share.
pub struct BenchRedis {
    url: String,
    client: redis::Client,
    /// The `redis-server` the bench started, when no URL was given.
    own: Option<OwnRedis>,
}

impl BenchRedis {
    /// The Redis at `url`, or (`None`) a `redis-server` of the bench's own; answers PING
    /// before this returns, so a wrong URL is said now, not as failed runs later.
    pub fn open(url: Option<&str>) -> Result<BenchRedis, String> {
        let (url, own) = match url {
            Some(url) => (url.to_owned(), None),
            None => {
                let own = OwnRedis::start()?;
                (format!("redis://127.0.0.1:{}/0", own.port), Some(own))
            }
        };
        let client =
            redis::Client::open(url.as_str()).map_err(|e| format!("--redis: bad URL: {e}"))?;
        let redis = BenchRedis { url, client, own };
        redis
            .command::<String>(&redis::cmd("PING"))
            .map_err(|e| format!("cannot reach Redis at {}: {e}", redis.address()))?;
        Ok(redis)
    }

    /// Where Redis is (host and port, never the password), and whether the bench started it.
    pub fn describe(&self) -> String {
        match &self.own {
            Some(_) => format!("redis-server started by the bench on {}", self.address()),
            None => format!("Redis at {}", self.address()),
        }
    }

    fn address(&self) -> String {
        self.client.get_connection_info().addr().to_string()
    }

    /// Redis's own CPU time so far, user plus system (`INFO cpu`: `used_cpu_user` and
    /// `used_cpu_sys`, its main thread and background threads together), in microseconds.
    pub fn cpu_micros(&self) -> Option<u64> {
        let info: String = self
            .command(redis::cmd("INFO").arg("cpu"))
            .map_err(|e| eprintln!("cannot read Redis's CPU time: {e}"))
            .ok()?;
        let field = |name: &str| -> Option<f64> {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
                .trim()
                .parse()
                .ok()
        };
        let seconds = field("used_cpu_user")? + field("used_cpu_sys")?;
        Some((seconds * 1e6).round() as u64)
    }

    /// Starts `nodes` agentwire nodes on this Redis under `prefix`.
    pub fn start_nodes(&self, nodes: usize, prefix: &str, secret: &str) -> Result<Server, String> {
        let mut started = Vec::with_capacity(nodes);
        for n in 0..nodes {
            let mut command = server::agentwire_command(secret)?;
            command.args(["--redis", &self.url, "--redis-prefix", prefix]);
            // A node that failed to start leaves the ones before it to `Server`'s drop.
            match server::spawn(command, &format!("node {}", n + 1)) {
                Ok(node) => started.push(node),
                Err(e) => {
                    drop(Server::nodes(started));
                    return Err(e);
                }
            }
        }
        Ok(Server::nodes(started))
    }

    /// Deletes every key under `prefix` (a run's keys, once its nodes are gone), unless the
    /// bench started this Redis (it is about to stop it). Returns how many were deleted.
    pub fn forget(&self, prefix: &str) -> Result<u64, String> {
        if self.own.is_some() {
            return Ok(0);
        }
        let pattern = format!("{prefix}:*");
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .command(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1_000),
                )
                .map_err(|e| format!("cannot list the run's keys: {e}"))?;
            if !keys.is_empty() {
                let n: u64 = self
                    .command(redis::cmd("UNLINK").arg(&keys))
                    .map_err(|e| format!("cannot delete the run's keys: {e}"))?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// One command on a fresh connection (the bench asks Redis a few times per run).
    fn command<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> redis::RedisResult<T> {
        let mut connection = self.client.get_connection_with_timeout(REDIS_TIMEOUT)?;
        connection.set_read_timeout(Some(REDIS_TIMEOUT))?;
        connection.set_write_timeout(Some(REDIS_TIMEOUT))?;
        command.query(&mut connection)
    }
}

/// A prefix no other run uses: the bench's pid and a random part.
pub fn unique_prefix() -> String {
    let random: u32 = rand::random();
    format!("agentwire-bench-{}-{random:08x}", std::process::id())
}

/// A `redis-server` on a free loopback port, with persistence off (`--save ""`,
/// `--appendonly no`) and its working directory in a temporary directory of its own;
/// killed, and its directory removed, when dropped.
struct OwnRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl OwnRedis {
    fn start() -> Result<OwnRedis, String> {
        let mut last_error = String::new();
        // A port that was free a moment ago may be taken before redis-server binds it:
        // then it exits, and another port is tried.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free loopback port: {e}"))?
                .port();
            let dir = std::env::temp_dir().join(format!(
                "agentwire-bench-redis-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            server::die_with_parent(&mut command);
            let child = command.spawn().map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                format!(
                    "cannot start redis-server ({e}); install it (Debian: apt-get install \
                     redis-server) or pass --redis URL"
                )
            })?;
            let mut own = OwnRedis { child, port, dir };
            match own.wait_ready() {
                Ok(()) => return Ok(own),
                Err(e) => last_error = e,
            }
        }
        Err(format!("redis-server did not start: {last_error}"))
    }

    /// Waits until the server answers PING (at most 10 s), or has exited.
    fn wait_ready(&mut self) -> Result<(), String> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", self.port))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ping = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match ping {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e.to_string()),
                Err(_) => {}
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("redis-server exited: {status}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
