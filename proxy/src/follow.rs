//! Following the master from the standalone `bramble-proxy`, for boards that route but run
//! no agent: the Services and Endpoints are listed and then watched through the API, as
//! kube-proxy does, and the rules are synced on every change (folded: changes that arrive
//! within a few milliseconds go together) and fully every `resync`. A watch that ends or
//! expires is re-listed.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bramble_api::service::{Endpoints, Service};
use serde::de::DeserializeOwned;

use crate::{NodeContext, Syncer, iptables};

/// Where the master is and what to render.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// The master's API, e.g. `https://192.168.1.10:6443`.
    pub server: String,
    pub token: String,
    /// The cluster CA (PEM) the master's certificate must chain to (https).
    pub ca_pem: Option<String>,
    pub cluster_cidr: String,
    pub resync: Duration,
}

/// One change seen by a watcher: (namespace, name) and the object, None when deleted; or a
/// full list that replaces the kind's objects.
enum Update<T> {
    Set((String, String), Option<T>),
    Relisted(BTreeMap<(String, String), T>),
}

enum Event {
    Service(Update<Service>),
    Endpoints(Update<Endpoints>),
}

trait Named {
    fn key(&self) -> (String, String);
}
impl Named for Service {
    fn key(&self) -> (String, String) {
        (self.metadata.namespace.clone(), self.metadata.name.clone())
    }
}
impl Named for Endpoints {
    fn key(&self) -> (String, String) {
        (self.metadata.namespace.clone(), self.metadata.name.clone())
    }
}

fn agent(cfg: &FollowConfig, timeout: Option<Duration>) -> Result<ureq::Agent, String> {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeout);
    if let Some(ca) = &cfg.ca_pem {
        b = b.tls_config(bramble_support::tls::ureq_tls(ca)?);
    }
    Ok(b.build().into())
}

/// Lists then watches `resource` (`services`, `endpoints`) until `stop`, re-listing after a
/// watch ends; sends every change.
fn watch_kind<T: DeserializeOwned + Named>(
    cfg: &FollowConfig,
    resource: &str,
    wrap: fn(Update<T>) -> Event,
    tx: &mpsc::Sender<Event>,
    stop: &AtomicBool,
) {
    let base = format!("{}/api/v1/{resource}", cfg.server.trim_end_matches('/'));
    let auth = format!("Bearer {}", cfg.token);
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let result = (|| -> Result<(), String> {
            let resp = agent(cfg, Some(Duration::from_secs(30)))?
                .get(&base)
                .header("Authorization", &auth)
                .call()
                .map_err(|e| e.to_string())?;
            let code = resp.status().as_u16();
            let body = resp.into_body().read_to_vec().map_err(|e| e.to_string())?;
            if code != 200 {
                return Err(format!(
                    "GET {base}: HTTP {code}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            let list: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let rv = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let mut all = BTreeMap::new();
            for item in list["items"].as_array().into_iter().flatten() {
                if let Ok(o) = serde_json::from_value::<T>(item.clone()) {
                    all.insert(o.key(), o);
                }
            }
            tx.send(wrap(Update::Relisted(all)))
                .map_err(|e| e.to_string())?;
            failures = 0;
            // Watches end after a while so that `stop` is seen and the connection refreshed.
            let url = format!("{base}?watch=1&resourceVersion={rv}&timeoutSeconds=300");
            let resp = agent(cfg, None)?
                .get(&url)
                .header("Authorization", &auth)
                .call()
                .map_err(|e| e.to_string())?;
            if resp.status().as_u16() != 200 {
                return Err(format!("watch {resource}: HTTP {}", resp.status().as_u16()));
            }
            let reader = std::io::BufReader::new(resp.into_body().into_reader());
            for line in reader.lines() {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let line = line.map_err(|e| e.to_string())?;
                let ev: serde_json::Value = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let Ok(o) = serde_json::from_value::<T>(ev["object"].clone()) else {
                    // An ERROR event (the revision was compacted): re-list.
                    return Ok(());
                };
                let deleted = ev["type"] == "DELETED";
                let key = o.key();
                tx.send(wrap(Update::Set(key, (!deleted).then_some(o))))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            failures += 1;
            let wait = bramble_api::backoff::delay(
                failures - 1,
                Duration::from_millis(200),
                Duration::from_secs(10),
                0.5,
            );
            tracing::warn!(resource, error = %e, retry_in = ?wait, "cannot follow the master");
            std::thread::sleep(wait);
        }
    }
}

fn fold<T>(map: &mut BTreeMap<(String, String), T>, u: Update<T>) {
    match u {
        Update::Set(k, Some(v)) => {
            map.insert(k, v);
        }
        Update::Set(k, None) => {
            map.remove(&k);
        }
        Update::Relisted(all) => *map = all,
    }
}

/// Follows the master and keeps this host's rules in step until `stop`.
pub fn follow(cfg: FollowConfig, stop: Arc<AtomicBool>) -> Result<(), iptables::IptablesError> {
    let backend = iptables::detect()?;
    tracing::info!(
        backend = backend.prefix(),
        server = cfg.server,
        "following the master's Services and Endpoints"
    );
    let (tx, rx) = mpsc::channel();
    for which in ["services", "endpoints"] {
        let (cfg, tx, stop) = (cfg.clone(), tx.clone(), stop.clone());
        std::thread::spawn(move || {
            if which == "services" {
                watch_kind::<Service>(&cfg, which, Event::Service, &tx, &stop)
            } else {
                watch_kind::<Endpoints>(&cfg, which, Event::Endpoints, &tx, &stop)
            }
        });
    }
    drop(tx);
    let mut syncer = Syncer::new(backend);
    syncer.resync_every = cfg.resync;
    let node = NodeContext {
        cluster_cidr: cfg.cluster_cidr.clone(),
        existing_chains: Vec::new(),
    };
    let (mut services, mut endpoints) = (BTreeMap::new(), BTreeMap::new());
    let mut listed = (false, false);
    let mut last_sync = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut dirty = false;
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(ev) => {
                let mut ev = Some(ev);
                // Fold what arrives together into one sync.
                while let Some(e) = ev {
                    match e {
                        Event::Service(u) => {
                            listed.0 |= matches!(u, Update::Relisted(_));
                            fold(&mut services, u)
                        }
                        Event::Endpoints(u) => {
                            listed.1 |= matches!(u, Update::Relisted(_));
                            fold(&mut endpoints, u)
                        }
                    }
                    ev = rx.recv_timeout(Duration::from_millis(5)).ok();
                }
                dirty = true;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Nothing is applied before both kinds are listed (that would drop every rule).
        let due = last_sync.elapsed() >= cfg.resync;
        if listed == (true, true) && (dirty || due) {
            let svcs: Vec<Service> = services.values().cloned().collect();
            let eps: Vec<Endpoints> = endpoints.values().cloned().collect();
            match syncer.sync(&svcs, &eps, &node) {
                Ok(s) => tracing::debug!(full = s.full, lines = s.lines, "service rules applied"),
                Err(e) => tracing::warn!(error = %e, "cannot apply the service rules; retrying"),
            }
            last_sync = Instant::now();
        }
    }
    Ok(())
}
