//! The server under test: started as a separate process on a loopback port (agentwire's own
//! `serve`, or the baseline), or an already running one (`--url`), and its resident memory
//! and CPU time read from /proc when its pid is known.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Which server to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `agentwire serve`.
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

pub struct Server {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Server {
    /// Starts `target` on a free loopback port with the given JWT secret.
    pub fn start(target: Target, secret: &str) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = match target {
            Target::Agentwire => {
                let mut c = Command::new(&exe);
                c.args(["serve", "--bind", "127.0.0.1:0", "--jwt-secret", secret]);
                c.args(["--admin-token", "bench"]);
                c
            }
            Target::Baseline => {
                let baseline = exe.with_file_name("agentwire-baseline");
                let mut c = Command::new(baseline);
                c.args(["--bind", "127.0.0.1:0", "--jwt-secret", secret]);
                c
            }
        };
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the {} server: {e}", target.name()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .ok_or("the server exited before printing its address")?
                .map_err(|e| e.to_string())?;
            if let Some((_, addr)) = line.split_once("listening on http://") {
                break addr.trim().parse().map_err(|e| format!("{addr}: {e}"))?;
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Server {
            addr,
            child: Some(child),
        })
    }

    /// An already running server: no /proc figures.
    pub fn existing(addr: SocketAddr) -> Server {
        Server { addr, child: None }
    }

    /// Resident memory and CPU time (user + system) of the server process, when known.
    pub fn usage(&self) -> Option<ProcessUsage> {
        let pid = self.child.as_ref()?.id();
        ProcessUsage::read(pid)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
