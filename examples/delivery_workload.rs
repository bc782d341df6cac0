//! A fixed delivery workload for instruction counts: one user with `SOCKETS` in-memory
//! sockets, one run emitting `EVENTS` thinking events in bursts of `BURST`, each burst read
//! by every socket before the next is emitted (a burst of 1 is the paced case: every event
//! its own wakeup at every hop; a burst of 64 a streaming agent awaiting
//! `AgentRun::ready`). The same work on every run, so `valgrind --tool=callgrind` counts
//! repeat closely and compare two builds of the hot path (see docs/benchmarks.md).
//!
//! `cargo run --release --example delivery_workload -- [SOCKETS] [EVENTS] [BURST]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use agentwire::{InMemorySocket, JwtAuthenticator, Runtime, UserId};
use tokio::sync::Notify;

/// Frames read by every socket together, and a signal on each.
#[derive(Default)]
struct Progress {
    frames: AtomicU64,
    read: Notify,
}

#[actix_web::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: u64| args.next().and_then(|a| a.parse().ok()).unwrap_or(default);
    let (sockets, events, burst) = (arg(4), arg(10_240), arg(64).max(1));
    let runtime = Runtime::builder(JwtAuthenticator::hs256(b"workload secret"))
        .config(agentwire::Config {
            max_sockets_per_user: 16,
            ..agentwire::Config::default()
        })
        .start()
        .expect("valid config");
    let user = UserId::new("workload-user").expect("valid id");
    let progress = Arc::new(Progress::default());
    let mut readers = Vec::new();
    for _ in 0..sockets {
        let mut socket: InMemorySocket = runtime.connect_in_memory(user.clone());
        socket.recv().await.expect("welcome");
        // Ends the resume hold, so events are written as they come.
        socket.send(r#"{"type":"ping"}"#).await;
        socket.recv().await.expect("pong");
        let progress = progress.clone();
        readers.push(actix_web::rt::spawn(async move {
            while let Some(frame) = socket.recv().await {
                progress.frames.fetch_add(1, Ordering::SeqCst);
                progress.read.notify_one();
                if frame.contains("\"agent_completed\"") {
                    break;
                }
            }
        }));
    }
    let all_read = |emitted: u64| {
        let progress = progress.clone();
        async move {
            while progress.frames.load(Ordering::SeqCst) < emitted * sockets {
                progress.read.notified().await;
            }
        }
    };
    let run = runtime.user(user).start_run("workload", "workload");
    all_read(1).await;
    for n in 1..=events {
        run.thinking("a streamed token or two");
        if n % burst == 0 {
            all_read(n + 1).await;
        }
    }
    run.complete("done");
    for reader in readers {
        reader.await.expect("reader");
    }
    assert_eq!(
        progress.frames.load(Ordering::SeqCst),
        (events + 2) * sockets
    );
    println!("{sockets} sockets x {} events delivered", events + 2);
}
