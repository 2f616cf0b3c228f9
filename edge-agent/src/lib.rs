//! bramble-agent: the node agent on every board.
//!
//! It joins the cluster once (trading the join token for its own credentials), then keeps an
//! MQTT session with the master: a hello with its full status on every connect, a tiny
//! heartbeat every second, pod status changes as they happen, and the node's desired pods
//! as revisioned changes. The pod manager ([`pods`]) reconciles those desired pods with the
//! containers it runs through the [`runtime`] (libcontainer, in one shim process per
//! container), keeps everything in its own redb file, and carries on when the master is
//! gone.

pub mod agent;
pub mod config;
pub mod doctor;
pub mod facts;
pub mod hollow;
pub mod images;
pub mod join;
pub mod localstore;
pub mod logs;
pub mod network;
pub mod pods;
pub mod runtime;

pub use agent::{AgentError, run, run_with_runtime};
pub use config::Config;
