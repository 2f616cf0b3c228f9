//! Plumbing that Bramble's binaries (master, agent, proxy) share, so that each has one home
//! and no binary imports another: logging set-up and a repeat limiter, shutdown on signals,
//! a clock that tests can move, durable small files, a stable hash and jitter, a coalescing queue, and (feature `mqtt`) the MQTT session both
//! ends of the wire run.

mod budget;
mod clock;
mod coalescing;
pub mod fs;
mod log;
#[cfg(feature = "mqtt")]
pub mod mqtt;
mod random;
mod signals;
#[cfg(feature = "stream")]
pub mod stream;
mod thread;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "wire-auth")]
pub mod wire_auth;

pub use budget::SourceBudget;
pub use clock::{Clock, ManualClock, SystemClock};
pub use coalescing::Coalescing;
pub use log::{LogLimiter, init_logging};
pub use random::{fnv64, jitter};
pub use signals::{run_until_signalled, shutdown_on_signals};
pub use thread::spawn_with_runtime;
