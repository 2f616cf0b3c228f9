//! Bramble's API: the Kubernetes-shaped objects (Namespace, Node, Pod, Deployment, ReplicaSet, DaemonSet,
//! Job, CronJob, Service, Endpoints, ConfigMap, Secret, Event, Image), their validation, manifest parsing, and the error body of the API.
//!
//! This crate does no I/O. The master stores and serves these types, the agent runs them,
//! and the CLI parses manifests with [`manifest::parse_manifests`] before sending them.

pub mod backoff;
pub mod client_config;
pub mod config;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod error;
pub mod event;
pub mod image;
pub mod job;
pub mod join;
pub mod manifest;
pub mod meta;
pub mod names;
pub mod namespace;
pub mod net;
pub mod node;
pub mod object;
pub mod pod;
pub mod quantity;
pub mod replicaset;
pub mod report;
pub mod selector;
pub mod service;
pub mod status;
pub mod table;
pub mod time;
pub mod validate;
pub mod wire;

pub use error::{FieldError, Invalid};
pub use object::{Kind, Object};
pub use quantity::Quantity;
pub use selector::Selector;
