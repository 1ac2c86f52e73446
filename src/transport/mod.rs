//! Transports: the per-packet halves of asyncio transports, driven by the loop's poller.

pub mod stream;
