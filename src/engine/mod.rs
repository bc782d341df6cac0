//! The engine: where events are numbered, kept for resume and handed to the user actors that
//! fan them out. `redis` is the engine for several nodes on one Redis (feature `redis`).

#[cfg(feature = "redis")]
pub(crate) mod redis;
