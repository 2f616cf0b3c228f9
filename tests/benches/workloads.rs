//! Workload controllers at fleet scale (release binaries, a master with hollow nodes): a
//! DaemonSet placed on, then rolled across, 1,000 nodes, against a Deployment of as many
//! replicas in the same run (the same pods through the scheduler); and 1,000 Jobs of one
//! short pod each, against 1,000 bare pods that run the same command (what the Job
//! controller adds on top).
//!
//! Run with `scripts/bench`. `BRAMBLE_BENCH_WORKLOAD_NODES` overrides the node count,
//! `BRAMBLE_BENCH_JOBS` the number of Jobs.

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::time::{Duration, Instant};

use bramble_tests::{HollowProcess, MasterProcess, eventually};

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn get(m: &MasterProcess, path: &str) -> serde_json::Value {
    m.http().get(path).unwrap().json()
}

/// Seconds until `done` holds, polled every 100 ms (at most `limit`).
fn time_until(limit: Duration, mut done: impl FnMut() -> bool) -> f64 {
    let t = Instant::now();
    assert!(
        eventually(limit, || {
            std::thread::sleep(Duration::from_millis(80));
            done()
        }),
        "did not finish within {limit:?}"
    );
    t.elapsed().as_secs_f64()
}

/// Whether the controller has seen the object's latest spec (its status is not stale).
fn observed(obj: &serde_json::Value) -> bool {
    obj["status"]["observedGeneration"].as_i64() >= obj["metadata"]["generation"].as_i64()
}

fn apply(m: &MasterProcess, yaml: &str) {
    bramble_tests::ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(yaml)));
}

fn workload(kind: &str, version: &str, n: usize) -> String {
    let (head, strategy) = match kind {
        "DaemonSet" => (
            String::new(),
            "  updateStrategy: {rollingUpdate: {maxUnavailable: 10%}}\n",
        ),
        _ => (
            format!("  replicas: {n}\n"),
            "  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 10%}}\n",
        ),
    };
    format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: w-{}}}\nspec:\n{head}{strategy}  selector: {{matchLabels: {{app: w}}}}\n  template:\n    metadata: {{labels: {{app: w}}}}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n        env: [{{name: V, value: \"{version}\"}}]\n",
        kind.to_ascii_lowercase()
    )
}

fn main() {
    let n = env("BRAMBLE_BENCH_WORKLOAD_NODES", 1000);
    let jobs = env("BRAMBLE_BENCH_JOBS", 1000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "w", n, &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(300), || m.ready_nodes() == n),
        "{} of {n} nodes Ready",
        m.ready_nodes()
    );
    std::thread::sleep(Duration::from_secs(3));

    // A DaemonSet to every node, then a rolling update of it.
    let ds = "/apis/apps/v1/namespaces/default/daemonsets/w-daemonset";
    apply(&m, &workload("DaemonSet", "1", n));
    let ds_place = time_until(Duration::from_secs(600), || {
        get(&m, ds)["status"]["numberReady"].as_u64() == Some(n as u64)
    });
    apply(&m, &workload("DaemonSet", "2", n));
    let ds_roll = time_until(Duration::from_secs(900), || {
        let d = get(&m, ds);
        let st = &d["status"];
        observed(&d)
            && st["updatedNumberScheduled"].as_u64() == Some(n as u64)
            && st["numberAvailable"].as_u64() == Some(n as u64)
    });
    bramble_tests::ok_stdout(&m.cli(&["delete", "ds", "w-daemonset"]));
    assert!(eventually(Duration::from_secs(300), || m.pods().is_empty()));

    // The same number of pods as a Deployment: scheduled, then rolled within 10%.
    let dep = "/apis/apps/v1/namespaces/default/deployments/w-deployment";
    apply(&m, &workload("Deployment", "1", n));
    let dep_place = time_until(Duration::from_secs(600), || {
        get(&m, dep)["status"]["readyReplicas"].as_u64() == Some(n as u64)
    });
    apply(&m, &workload("Deployment", "2", n));
    let dep_roll = time_until(Duration::from_secs(900), || {
        let d = get(&m, dep);
        let st = &d["status"];
        observed(&d)
            && st["updatedReplicas"].as_u64() == Some(n as u64)
            && st["readyReplicas"].as_u64() == Some(n as u64)
            && st["replicas"].as_u64() == Some(n as u64)
    });
    bramble_tests::ok_stdout(&m.cli(&["delete", "deploy", "w-deployment"]));
    assert!(eventually(Duration::from_secs(300), || m.pods().is_empty()));

    // Jobs of one short pod each (a hollow `true` exits 0 at once), 16 clients creating.
    let create_all = |kind: &str| {
        let start = Instant::now();
        let threads: Vec<_> = (0..16)
            .map(|w| {
                let h = m.http();
                let kind = kind.to_string();
                std::thread::spawn(move || {
                    for i in (w..jobs).step_by(16) {
                        let pod = serde_json::json!({"restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]});
                        let (path, body) = if kind == "Job" {
                            (
                                "/apis/batch/v1/namespaces/default/jobs",
                                serde_json::json!({"apiVersion": "batch/v1", "kind": "Job",
                                    "metadata": {"name": format!("j-{i}")},
                                    "spec": {"template": {"spec": pod}}}),
                            )
                        } else {
                            (
                                "/api/v1/namespaces/default/pods",
                                serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": format!("p-{i}")}, "spec": pod}),
                            )
                        };
                        assert_eq!(h.post_json(path, &body).unwrap().code, 201);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        start
    };
    let start = create_all("Pod");
    time_until(Duration::from_secs(600), || {
        m.pods()
            .iter()
            .filter(|p| p["status"]["phase"] == "Succeeded")
            .count()
            == jobs
    });
    let pods_s = start.elapsed().as_secs_f64();
    let items = |path: &str| -> Vec<serde_json::Value> {
        get(&m, path)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    for p in items("/api/v1/namespaces/default/pods") {
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        m.http()
            .request(
                "DELETE",
                &format!("/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0"),
                None,
                b"",
                true,
            )
            .unwrap();
    }
    assert!(eventually(Duration::from_secs(300), || m.pods().is_empty()));
    let start = create_all("Job");
    time_until(Duration::from_secs(900), || {
        items("/apis/batch/v1/namespaces/default/jobs")
            .iter()
            .filter(|j| {
                j["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Complete"))
            })
            .count()
            == jobs
    });
    let jobs_s = start.elapsed().as_secs_f64();

    println!("| benchmark ({n} hollow nodes) | value | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| DaemonSet placed on {n} nodes (apply → all Ready) | {ds_place:.1} s | Deployment of {n} replicas: {dep_place:.1} s | {:.2}x |",
        ds_place / dep_place
    );
    println!(
        "| DaemonSet rolled on {n} nodes (maxUnavailable 10%) | {ds_roll:.1} s | Deployment rollout (maxUnavailable 10%): {dep_roll:.1} s | {:.2}x |",
        ds_roll / dep_roll
    );
    println!(
        "| {jobs} Jobs of one short pod each, create → all Complete | {:.0} Jobs/s ({jobs_s:.1} s) | {jobs} bare pods to Succeeded: {:.0} pods/s ({pods_s:.1} s) | {:.2}x the time |",
        jobs as f64 / jobs_s,
        jobs as f64 / pods_s,
        jobs_s / pods_s
    );
}
