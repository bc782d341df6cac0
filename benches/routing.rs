//! Micro-benchmark of the delivery path without sockets: an event emitted through an
//! `AgentRun` goes through the bus to its user's actor (numbered, encoded once, kept for
//! resume) and out to K real session actors, whose WebSocket frames travel over in-memory
//! streams (`Runtime::connect_in_memory`) instead of TCP. The registry is on this path only
//! at attach time: emitters find the user's actor through the directory.
//!
//! Reported per event: the time from the emit until every one of the K sessions has written
//! it and the in-memory client has decoded it (the decoding is a small part of it). Events
//! are emitted in bursts of 256, each drained before the next, as a streaming agent does.
//!
//! `cargo bench --bench routing`

use std::time::{Duration, Instant};

use agentwire::{InMemorySocket, JwtAuthenticator, Runtime, UserId};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Events emitted before the sessions are drained (well under the slow-consumer limit).
const BURST: u64 = 256;

async fn connect(runtime: &Runtime, user: &UserId, sessions: usize) -> Vec<InMemorySocket> {
    let mut sockets = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let mut socket = runtime.connect_in_memory(user.clone());
        let welcome = socket.recv().await.expect("welcome");
        assert!(welcome.contains("\"welcome\""));
        // Ends the resume hold, so events are written as they come.
        socket.send(r#"{"type":"ping"}"#).await;
        let pong = socket.recv().await.expect("pong");
        assert!(pong.contains("\"pong\""));
        sockets.push(socket);
    }
    sockets
}

/// Emits `events` thinking events and waits until every socket has received all of them.
async fn route(runtime: &Runtime, user: &UserId, sockets: &mut [InMemorySocket], events: u64) {
    let run = runtime.user(user.clone()).start_run("bench", "bench");
    for socket in sockets.iter_mut() {
        socket.recv().await.expect("agent_started");
    }
    let mut left = events;
    while left > 0 {
        let burst = left.min(BURST);
        for _ in 0..burst {
            run.thinking("a streamed token or two");
        }
        for socket in sockets.iter_mut() {
            for _ in 0..burst {
                socket.recv().await.expect("event");
            }
        }
        left -= burst;
    }
    run.complete("done");
    for socket in sockets.iter_mut() {
        socket.recv().await.expect("agent_completed");
    }
}

fn event_to_sessions(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_event");
    group.measurement_time(Duration::from_secs(4));
    for sessions in [1usize, 4, 16] {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("to_sessions", sessions),
            &sessions,
            |b, &sessions| {
                let system = actix_web::rt::System::new();
                let runtime = system.block_on(async {
                    Runtime::builder(JwtAuthenticator::hs256(b"bench secret"))
                        .config(agentwire::Config {
                            max_sockets_per_user: 16,
                            ..agentwire::Config::default()
                        })
                        .start()
                        .expect("valid config")
                });
                let user = UserId::new("bench-user").expect("valid id");
                let mut sockets = system.block_on(connect(&runtime, &user, sessions));
                b.iter_custom(|events| {
                    system.block_on(async {
                        let began = Instant::now();
                        route(&runtime, &user, &mut sockets, events).await;
                        began.elapsed()
                    })
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, event_to_sessions);
criterion_main!(benches);
