//! `agentwire serve` as a separate process on an ephemeral loopback port, for the tests that
//! run the binary as a user would. Included by those tests only (it needs the binary, which
//! the `cli` feature builds).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Starts `agentwire serve --bind 127.0.0.1:0` with `args` and `RUST_LOG=warn`, and waits
/// for the address it prints. Its stdout is drained from then on, so the server never
/// blocks on a full pipe; its stderr is dropped.
pub fn spawn_serve(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the agentwire binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .expect("readable stdout");
        if let Some(addr) = line.strip_prefix("agentwire demo listening on http://") {
            break addr.parse().expect("an address");
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}
