//! A fixed delivery workload for instruction counts: one user with `SOCKETS` in-memory
//! sockets, one run emitting `EVENTS` thinking events in bursts of 64 (awaiting
//! `AgentRun::ready` between bursts, as a streaming agent does), every socket reading all of
//! them. The same work on every run, so `valgrind --tool=callgrind` counts repeat exactly and
//! compare two builds of the hot path (see docs/benchmarks.md).
//!
//! `cargo run --release --example delivery_workload -- [SOCKETS] [EVENTS]`

use agentwire::{InMemorySocket, JwtAuthenticator, Runtime, UserId};

#[actix_web::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let sockets: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let events: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_240);
    let runtime = Runtime::builder(JwtAuthenticator::hs256(b"workload secret"))
        .config(agentwire::Config {
            max_sockets_per_user: 16,
            ..agentwire::Config::default()
        })
        .start()
        .expect("valid config");
    let user = UserId::new("workload-user").expect("valid id");
    let mut readers: Vec<InMemorySocket> = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let mut socket = runtime.connect_in_memory(user.clone());
        socket.recv().await.expect("welcome");
        // Ends the resume hold, so events are written as they come.
        socket.send(r#"{"type":"ping"}"#).await;
        socket.recv().await.expect("pong");
        readers.push(socket);
    }
    let reading = readers
        .into_iter()
        .map(|mut socket| {
            actix_web::rt::spawn(async move {
                let mut frames = 0u64;
                while let Some(frame) = socket.recv().await {
                    frames += 1;
                    if frame.contains("\"agent_completed\"") {
                        break;
                    }
                }
                frames
            })
        })
        .collect::<Vec<_>>();
    let run = runtime.user(user).start_run("workload", "workload");
    for n in 1..=events {
        run.thinking("a streamed token or two");
        if n % 64 == 0 {
            run.ready().await;
            actix_web::rt::task::yield_now().await;
        }
    }
    run.complete("done");
    for reader in reading {
        let frames = reader.await.expect("reader");
        assert_eq!(frames, events + 2, "every event reached every socket");
    }
    println!("{sockets} sockets x {} events delivered", events + 2);
}
