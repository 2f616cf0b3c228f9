//! Prometheus text metrics: API request counts and latencies, active watches, store revision
//! and object counts. A few counters do not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::Store;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    total: u64,
    sum: f64,
}

/// The master's metrics registry.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    watches: AtomicI64,
    /// Gateway counters (dropped messages by reason, ...).
    counters: Mutex<BTreeMap<&'static str, u64>>,
    gauges: Mutex<BTreeMap<&'static str, i64>>,
    /// Histograms in seconds by full metric name (heartbeat lag).
    histograms: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl Histogram {
    fn add(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.total += 1;
        self.sum += secs;
    }

    /// Its buckets, sum and count in the text format, with `labels` (`k="v"`, or empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.total
        );
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braced} {}", self.total);
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, verb: &'static str, resource: &'static str, code: u16, took: Duration) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((verb, resource, code)).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            l.entry(verb).or_default().add(took.as_secs_f64());
        }
    }

    /// Records one observation (seconds) in the histogram `name`.
    pub fn observe_seconds(&self, name: &'static str, secs: f64) {
        if let Ok(mut h) = self.histograms.lock() {
            h.entry(name).or_default().add(secs);
        }
    }

    /// Adds one to a named gateway counter (`bramble_gateway_<name>_total`).
    pub fn count(&self, name: &'static str) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry(name).or_default() += 1;
        }
    }

    /// Sets a named gateway gauge (`bramble_gateway_<name>`).
    pub fn set_gauge(&self, name: &'static str, v: i64) {
        if let Ok(mut g) = self.gauges.lock() {
            g.insert(name, v);
        }
    }

    /// Counts an open watch until the guard drops.
    pub fn watch_started(self: &Arc<Self>) -> WatchGuard {
        self.watches.fetch_add(1, Ordering::Relaxed);
        WatchGuard(self.clone())
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self, store: &Store) -> String {
        let mut out = String::new();
        out.push_str("# HELP bramble_apiserver_request_total API requests by verb, resource and HTTP code.\n");
        out.push_str("# TYPE bramble_apiserver_request_total counter\n");
        if let Ok(r) = self.requests.lock() {
            for ((verb, resource, code), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "bramble_apiserver_request_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP bramble_apiserver_request_duration_seconds API request latency by verb.\n",
        );
        out.push_str("# TYPE bramble_apiserver_request_duration_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (verb, h) in l.iter() {
                h.render(
                    &mut out,
                    "bramble_apiserver_request_duration_seconds",
                    &format!("verb=\"{verb}\""),
                );
            }
        }
        out.push_str("# HELP bramble_apiserver_watches Open watch streams.\n# TYPE bramble_apiserver_watches gauge\n");
        let _ = writeln!(
            out,
            "bramble_apiserver_watches {}",
            self.watches.load(Ordering::Relaxed)
        );
        if let Ok(c) = self.counters.lock() {
            for (name, n) in c.iter() {
                let _ = writeln!(
                    out,
                    "# TYPE bramble_gateway_{name}_total counter\nbramble_gateway_{name}_total {n}"
                );
            }
        }
        if let Ok(g) = self.gauges.lock() {
            for (name, v) in g.iter() {
                let _ = writeln!(
                    out,
                    "# TYPE bramble_gateway_{name} gauge\nbramble_gateway_{name} {v}"
                );
            }
        }
        if let Ok(hs) = self.histograms.lock() {
            for (name, h) in hs.iter() {
                let _ = writeln!(out, "# TYPE {name} histogram");
                h.render(&mut out, name, "");
            }
        }
        out.push_str("# HELP bramble_store_revision The store's global revision.\n# TYPE bramble_store_revision gauge\n");
        let _ = writeln!(out, "bramble_store_revision {}", store.revision());
        out.push_str("# HELP bramble_store_objects Stored objects by kind.\n# TYPE bramble_store_objects gauge\n");
        for (kind, n) in store.counts() {
            let _ = writeln!(out, "bramble_store_objects{{kind=\"{kind}\"}} {n}");
        }
        out
    }
}

/// Decrements the open-watch gauge when dropped.
pub struct WatchGuard(Arc<Metrics>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_with_and_without_labels() {
        let mut h = Histogram::default();
        h.add(0.003);
        h.add(2.0);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "verb=\"get\"");
        assert!(
            out.contains("x_seconds_bucket{verb=\"get\",le=\"0.0025\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{verb=\"get\",le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{verb=\"get\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{verb=\"get\"} 2\n"), "{out}");
        let mut out = String::new();
        h.render(&mut out, "lag_seconds", "");
        assert!(out.contains("lag_seconds_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("lag_seconds_sum 2.003\n"), "{out}");
        assert!(out.contains("lag_seconds_count 2\n"), "{out}");
    }
}
