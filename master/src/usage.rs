//! The nodes' latest resource use, from their agents' metrics reports: in memory only (as
//! heartbeats are), served by the metrics API (`kubectl top`, `bramble top`). A node whose
//! last report is older than [`STALE`] has none.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bramble_api::wire::MetricsReport;

/// How long a report stands for its node.
pub const STALE: Duration = Duration::from_secs(120);

/// A node's last report and when it came.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: SystemTime,
    received: Instant,
    pub report: MetricsReport,
}

#[derive(Default)]
pub struct Usage {
    reports: Mutex<HashMap<String, Sample>>,
}

impl Usage {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sample>> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `node`'s report (the last one wins).
    pub fn record(&self, node: &str, report: MetricsReport) {
        let sample = Sample {
            at: SystemTime::now(),
            received: Instant::now(),
            report,
        };
        let mut m = self.lock();
        m.retain(|_, s| s.received.elapsed() < STALE);
        m.insert(node.to_string(), sample);
    }

    /// Every node's fresh report, by node name.
    pub fn all(&self) -> Vec<(String, Sample)> {
        let mut out: Vec<(String, Sample)> = self
            .lock()
            .iter()
            .filter(|(_, s)| s.received.elapsed() < STALE)
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_api::wire::ResourceUse;

    #[test]
    fn the_last_report_of_a_node_wins() {
        let u = Usage::default();
        let r = |cpu| MetricsReport {
            window_ms: 1000,
            node: ResourceUse {
                cpu_nanocores: cpu,
                memory_bytes: 1,
            },
            pods: vec![],
        };
        u.record("b", r(1));
        u.record("a", r(2));
        u.record("b", r(3));
        let all = u.all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "a");
        assert_eq!(all[1].1.report.node.cpu_nanocores, 3);
    }
}
