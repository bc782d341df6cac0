//! The server under test: started as separate processes on loopback ports (agentwire's own
//! `serve`, one process or the nodes of a cluster, or the baseline), or an already running
//! one (`--url`), and its resident memory and CPU time read from /proc when its pids are
//! known.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Which server to start (and which one `--compare` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `agentwire serve`, one process on its in-process engine.
    Agentwire,
    /// The actor-free tokio + tokio-tungstenite baseline (`agentwire-baseline`).
    Baseline,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Agentwire => "agentwire",
            Target::Baseline => "baseline",
        }
    }
}

/// The server under test: one process, the nodes of a cluster, or an already running
/// server (`--url`).
pub struct Server {
    /// Where clients connect: one address, or one per node (socket `i` of the plan goes to
    /// `addrs[i % addrs.len()]`, see [`Server::addr_for`]).
    pub addrs: Vec<SocketAddr>,
    children: Vec<Child>,
    /// The admin token of the debug routes (`/metrics`), for an agentwire the bench started.
    admin_token: Option<&'static str>,
}

/// The admin token of the agentwire servers the bench starts (loopback only).
const ADMIN_TOKEN: &str = "bench";

impl Server {
    /// Starts `target` on a free loopback port with the given JWT secret: agentwire on its
    /// in-process engine, or the baseline.
    pub fn start(target: Target, secret: &str) -> Result<Server, String> {
        let (command, admin_token) = match target {
            Target::Agentwire => (agentwire_command(secret)?, Some(ADMIN_TOKEN)),
            Target::Baseline => {
                let baseline = current_exe()?.with_file_name("agentwire-baseline");
                let mut c = Command::new(baseline);
                c.args(["--bind", "127.0.0.1:0", "--jwt-secret", secret]);
                (c, None)
            }
        };
        let (child, addr) = spawn(command, &format!("the {} server", target.name()))?;
        Ok(Server {
            addrs: vec![addr],
            children: vec![child],
            admin_token,
        })
    }

    /// Agentwire nodes started by the caller (each with [`agentwire_command`] and [`spawn`]).
    pub fn nodes(nodes: Vec<(Child, SocketAddr)>) -> Server {
        let (children, addrs) = nodes.into_iter().unzip();
        Server {
            addrs,
            children,
            admin_token: Some(ADMIN_TOKEN),
        }
    }

    /// An already running server: no /proc figures.
    pub fn existing(addr: SocketAddr) -> Server {
        Server {
            addrs: vec![addr],
            children: Vec::new(),
            admin_token: None,
        }
    }

    /// The address the plan's `index`-th connection goes to (round-robin over the nodes).
    pub fn addr_for(&self, index: usize) -> SocketAddr {
        self.addrs[index % self.addrs.len()]
    }

    /// The admin token of `/metrics`, when the bench started an agentwire.
    pub fn admin_token(&self) -> Option<&'static str> {
        self.admin_token
    }

    /// Resident memory and CPU time (user + system) of the server, summed over its
    /// processes, when they are known (all of them).
    pub fn usage(&self) -> Option<ProcessUsage> {
        let mut total = ProcessUsage {
            rss_bytes: 0,
            cpu_micros: 0,
        };
        if self.children.is_empty() {
            return None;
        }
        for child in &self.children {
            let usage = ProcessUsage::read(child.id())?;
            total.rss_bytes += usage.rss_bytes;
            total.cpu_micros += usage.cpu_micros;
        }
        Some(total)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn current_exe() -> Result<std::path::PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the agentwire binary: {e}"))
}

/// `agentwire serve` on a free loopback port, with the bench's secret and admin token, on
/// its in-process engine unless the caller adds `--redis` (the Redis settings of the
/// bench's own environment are not passed on).
pub fn agentwire_command(secret: &str) -> Result<Command, String> {
    let mut c = Command::new(current_exe()?);
    c.args(["serve", "--bind", "127.0.0.1:0", "--jwt-secret", secret]);
    c.args(["--admin-token", ADMIN_TOKEN]);
    c.env_remove("AGENTWIRE_REDIS_URL")
        .env_remove("AGENTWIRE_REDIS_PREFIX");
    Ok(c)
}

/// Starts a server process and waits for the address it prints (`listening on http://ADDR`).
/// The process is killed with the bench, however the bench ends.
pub fn spawn(mut command: Command, what: &str) -> Result<(Child, SocketAddr), String> {
    die_with_parent(&mut command);
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} exited before printing its address"));
        };
        let line = line.map_err(|e| e.to_string())?;
        if let Some((_, addr)) = line.split_once("listening on http://") {
            match addr.trim().parse() {
                Ok(addr) => break addr,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{what} printed {addr}: {e}"));
                }
            }
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, addr))
}

/// Asks the kernel to kill the child when the bench dies (SIGKILL included), so no server
/// outlives a bench that was itself killed. Linux only; elsewhere the bench's own `Drop`
/// stops its servers. The bench starts its servers from its main thread, whose exit is
/// the process's.
pub fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // prctl(2), which is async-signal-safe, with constant arguments.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// A process's memory and CPU at one moment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessUsage {
    pub rss_bytes: u64,
    pub cpu_micros: u64,
}

impl ProcessUsage {
    /// This process's usage: the load generator's own.
    pub fn of_self() -> Option<ProcessUsage> {
        Self::read(std::process::id())
    }

    fn read(pid: u32) -> Option<ProcessUsage> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the `(comm)`, which may contain spaces: utime and stime are the
        // 14th and 15th fields of the whole line.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(ProcessUsage {
            rss_bytes: rss_kib * 1024,
            cpu_micros: (utime + stime) * 1_000_000 / ticks,
        })
    }
}

/// Raises this process's open-file limit to its hard limit; returns the new limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur
    }
}
