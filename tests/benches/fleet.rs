//! Fleet benchmarks with hollow agents (release binaries): one master with 1,000 and 5,000
//! hollow nodes heartbeating every second (master CPU and RSS, memory per hollow node, time
//! to join), and node lost → replacement pods running, with default timings.
//!
//! Run with `scripts/bench`. `BRAMBLE_BENCH_FLEET` overrides the fleet sizes (e.g. `1000`).

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::time::{Duration, Instant};

use bramble_tests::{
    HollowProcess, MasterProcess, cpu_secs, eventually, histogram_buckets, histogram_quantile,
    histogram_window, ok_stdout, rss_mb,
};

/// The master's heartbeat-lag histogram (agent send → gateway processing).
const LAG: &str = "bramble_gateway_heartbeat_lag_seconds";

fn lag_buckets(m: &MasterProcess) -> Vec<(f64, u64)> {
    m.http()
        .get("/metrics")
        .map(|r| histogram_buckets(&String::from_utf8_lossy(&r.body), LAG))
        .unwrap_or_default()
}

fn row(name: &str, value: String, baseline: String, ratio: String) {
    println!("| {name} | {value} | {baseline} | {ratio} |");
}

/// `n` hollow nodes on one master, whose broker is the embedded rumqttd or, with
/// `mosquitto`, Debian's mosquitto (`--external-broker`, as DESIGN.md foresees for large
/// sites; its own CPU and RSS are reported beside the master's).
fn fleet(n: usize, mosquitto: bool) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let broker = mosquitto.then(|| bramble_tests::start_mosquitto(dir.path()).unwrap());
    let m = match &broker {
        Some((_, port)) => MasterProcess::start_with(
            &dir.path().join("master"),
            &["--external-broker", &format!("127.0.0.1:{port}")],
        )
        .unwrap(),
        None => MasterProcess::start(&dir.path().join("master")).unwrap(),
    };
    let label = if mosquitto {
        format!("master (external mosquitto) with {n} hollow nodes heartbeating every 1 s")
    } else {
        format!("master with {n} hollow nodes heartbeating every 1 s")
    };
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu0 = cpu_secs(m.child.id());
    std::thread::sleep(Duration::from_secs(5));
    let idle_cpu = (cpu_secs(m.child.id()) - idle_cpu0) / 5.0;
    let t = Instant::now();
    let h = HollowProcess::start(&m, &dir.path().join("hollow"), "f", n, &[]).unwrap();
    let joined = eventually(Duration::from_secs(240), || m.ready_nodes() == n);
    if !joined {
        // Report it rather than stop the other benches: this is a finding, not a crash.
        row(
            &label,
            format!(
                "did not converge: {} of {n} Ready after 240 s",
                m.ready_nodes()
            ),
            "-".into(),
            format!("master {:.0} MB RSS", rss_mb(m.child.id())),
        );
        return;
    }
    let join_time = t.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let (pid, hpid) = (m.child.id(), h.child.id());
    let bpid = broker.as_ref().map(|(b, _)| b.0.id());
    let (c0, hc0) = (cpu_secs(pid), cpu_secs(hpid));
    let bc0 = bpid.map(cpu_secs);
    let lag0 = lag_buckets(&m);
    let window = 20.0;
    std::thread::sleep(Duration::from_secs_f64(window));
    let lag = histogram_window(&lag0, &lag_buckets(&m));
    let cpu = (cpu_secs(pid) - c0) / window;
    let hcpu = (cpu_secs(hpid) - hc0) / window;
    let broker_note = match (bpid, bc0) {
        (Some(b), Some(c)) => format!(
            "; mosquitto {:.0}% of a core, {:.0} MB RSS",
            (cpu_secs(b) - c) / window * 100.0,
            rss_mb(b)
        ),
        _ => String::new(),
    };
    // Every node still Ready: no heartbeat fell behind the 3 s node-lost timeout.
    let still = m.ready_nodes();
    row(
        &label,
        format!(
            "{:.0}% of a core, {:.0} MB RSS, heartbeat lag p50 {:.0} ms / p99 {:.0} ms{broker_note}",
            cpu * 100.0,
            rss_mb(pid),
            histogram_quantile(&lag, 0.5) * 1000.0,
            histogram_quantile(&lag, 0.99) * 1000.0,
        ),
        format!("idle master {:.1}% of a core", idle_cpu * 100.0),
        format!("{still}/{n} nodes Ready throughout"),
    );
    row(
        &format!("{n} hollow nodes in one process (agent code, in-memory containers)"),
        format!(
            "{:.2} MB and {:.2}% CPU per node",
            rss_mb(hpid) / n as f64,
            hcpu * 100.0 / n as f64
        ),
        "-".into(),
        format!("joined in {:.1} s", join_time.as_secs_f64()),
    );
    if still != n {
        eprintln!(
            "warning: {} of {n} nodes were lost under heartbeat load",
            n - still
        );
    }
}

fn replacement() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _stay = HollowProcess::start(&m, &dir.path().join("stay"), "stay", 2, &[]).unwrap();
    let mut doomed =
        HollowProcess::start(&m, &dir.path().join("doomed"), "doomed", 1, &[]).unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 3));
    let d = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: busybox, resources: {requests: {cpu: 100m}}}]\n";
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(d)));
    let ready_elsewhere = |m: &MasterProcess| {
        m.pods()
            .iter()
            .filter(|p| {
                p["spec"]["nodeName"] != "doomed-0"
                    && p["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .count()
    };
    assert!(eventually(Duration::from_secs(30), || {
        m.pods()
            .iter()
            .filter(|p| p["spec"]["nodeName"] == "doomed-0")
            .count()
            == 2
            && ready_elsewhere(&m) == 4
    }));
    let t = Instant::now();
    doomed.child.kill().unwrap();
    let _ = doomed.child.wait();
    assert!(eventually(Duration::from_secs(60), || ready_elsewhere(&m) == 6));
    row(
        "node lost -> replacement pods Ready elsewhere (defaults: lost after 3 s, evict after 5 s)",
        format!("{:.1} s", t.elapsed().as_secs_f64()),
        "3 s + 5 s of configured waiting".into(),
        "-".into(),
    );
}

fn main() {
    println!("| benchmark | median | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    if std::env::var("BRAMBLE_BENCH_BROKER").is_err() {
        replacement();
    }
    let sizes: Vec<usize> = std::env::var("BRAMBLE_BENCH_FLEET")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 5000]);
    // `BRAMBLE_BENCH_BROKER=mosquitto` runs only the external-broker variant.
    let only_external = std::env::var("BRAMBLE_BENCH_BROKER").is_ok_and(|b| b == "mosquitto");
    for &n in sizes.iter().filter(|_| !only_external) {
        fleet(n, false);
    }
    // The large fleet again with an external broker.
    if let Some(&n) = sizes.iter().max() {
        fleet(n, true);
    }
}
