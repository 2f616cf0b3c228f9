//! The node's and its containers' resource use for the metrics report (`kubectl top`): CPU
//! as the rate between two samples (the node's from `/proc/stat`, a container's from its
//! cgroup), memory as the working set now (the node's total less what is available).

use std::collections::HashMap;
use std::time::Instant;

use bramble_api::wire::{MetricsReport, PodUse, ResourceUse};

use crate::runtime::Runtime;

/// The previous samples the next report's CPU rates are taken against.
#[derive(Default)]
pub struct Collector {
    node: Option<(Instant, u64, u64)>,
    containers: HashMap<String, (Instant, u64)>,
}

/// Busy and total jiffies of all CPUs, from `/proc/stat`'s first line.
fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// Bytes in use: MemTotal less MemAvailable.
fn memory_used(meminfo: &str) -> u64 {
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    kib("MemTotal:").saturating_sub(kib("MemAvailable:")) * 1024
}

/// A rate in nanocores from a CPU-time delta (ns) over `secs`.
fn nanocores(delta_ns: u64, secs: f64) -> u64 {
    if secs <= 0.0 {
        return 0;
    }
    (delta_ns as f64 / secs) as u64
}

impl Collector {
    /// A report of the containers given as (namespace, pod, container, id); a container seen
    /// for the first time reports no CPU yet (a rate needs two samples).
    pub fn collect(
        &mut self,
        runtime: &dyn Runtime,
        containers: &[(String, String, String, String)],
        window_ms: u64,
    ) -> MetricsReport {
        let now = Instant::now();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let mut node = ResourceUse {
            cpu_nanocores: 0,
            memory_bytes: memory_used(
                &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            ),
        };
        if let Some((busy, total)) =
            cpu_jiffies(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
        {
            if let Some((_, b0, t0)) = self.node
                && total > t0
            {
                let share = (busy.saturating_sub(b0)) as f64 / (total - t0) as f64;
                node.cpu_nanocores = (share * cpus as f64 * 1e9) as u64;
            }
            self.node = Some((now, busy, total));
        }
        let mut pods: Vec<PodUse> = Vec::new();
        let mut seen = HashMap::new();
        for (ns, pod, name, id) in containers {
            let Some((cpu_ns, memory)) = runtime.usage(id) else {
                tracing::debug!(
                    container = id,
                    "no resource use known for a running container"
                );
                continue;
            };
            let cpu = match self.containers.get(id) {
                Some((at, before)) => {
                    nanocores(cpu_ns.saturating_sub(*before), (now - *at).as_secs_f64())
                }
                None => 0,
            };
            seen.insert(id.clone(), (now, cpu_ns));
            let usage = ResourceUse {
                cpu_nanocores: cpu,
                memory_bytes: memory,
            };
            match pods
                .iter_mut()
                .find(|p| p.namespace == *ns && p.name == *pod)
            {
                Some(p) => p.containers.push((name.clone(), usage)),
                None => pods.push(PodUse {
                    namespace: ns.clone(),
                    name: pod.clone(),
                    containers: vec![(name.clone(), usage)],
                }),
            }
        }
        // Containers gone since are forgotten.
        self.containers = seen;
        MetricsReport {
            window_ms,
            node,
            pods,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(cpu_jiffies(stat), Some((160, 980)));
        assert_eq!(cpu_jiffies("intr 1 2 3"), None);
        let mem = "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     400 kB\n";
        assert_eq!(memory_used(mem), 600 * 1024);
        assert_eq!(memory_used(""), 0);
    }

    #[test]
    fn cpu_is_a_rate_between_two_samples() {
        // Half a core: 0.5 s of CPU time in 1 s.
        assert_eq!(nanocores(500_000_000, 1.0), 500_000_000);
        assert_eq!(nanocores(1, 0.0), 0);
    }
}
