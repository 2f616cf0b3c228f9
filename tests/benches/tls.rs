//! What TLS and the wire's authentication cost (release binaries): the same build with TLS
//! (the default) and with `--insecure-plaintext`, side by side in one run — a master with
//! 1,000 hollow nodes heartbeating every second (master CPU and RSS), the join storm of
//! those 1,000 nodes, and pod apply → Running over the API (to a hollow node, so the
//! figure is the control path: API, scheduler, gateway, agent, status).
//!
//! Run with `scripts/bench`. `BRAMBLE_BENCH_TLS_NODES` overrides the fleet size,
//! `BRAMBLE_BENCH_TLS_ROUNDS` the number of alternating rounds (3).

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::time::{Duration, Instant};

use bramble_tests::{HollowProcess, MasterProcess, cpu_secs, eventually, percentile, rss_mb};

struct Figures {
    join_s: f64,
    cpu: f64,
    rss: f64,
    apply_p50_ms: f64,
    apply_p99_ms: f64,
}

fn run(n: usize, tls: bool) -> Figures {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let extra: &[&str] = if tls { &[] } else { &["--insecure-plaintext"] };
    let m = MasterProcess::start_with(&dir.path().join("master"), extra).unwrap();
    assert_eq!(m.url.starts_with("https://"), tls);
    let t = Instant::now();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "f", n, &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(240), || m.ready_nodes() == n),
        "{} of {n} nodes Ready (tls {tls})",
        m.ready_nodes()
    );
    let join_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    let pid = m.child.id();
    let c0 = cpu_secs(pid);
    let window = 20.0;
    std::thread::sleep(Duration::from_secs_f64(window));
    let cpu = (cpu_secs(pid) - c0) / window;
    let rss = rss_mb(pid);
    // apply -> Running, to one hollow node, one pod at a time.
    let h = m.http();
    let mut lat = Vec::new();
    for i in 0..30 {
        let name = format!("lat-{i}");
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "f-0", "containers": [{"name": "c", "image": "busybox"}]}
        });
        let t = Instant::now();
        let r = h
            .request(
                "PATCH",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                Some("application/apply-patch+json"),
                &serde_json::to_vec(&pod).unwrap(),
                true,
            )
            .unwrap();
        assert_eq!(r.code, 201);
        // Polled on the same client (its connection is kept): the figure is the control
        // path, not a TLS handshake per poll.
        let path = format!("/api/v1/namespaces/default/pods/{name}");
        while !h
            .get(&path)
            .is_ok_and(|r| r.code == 200 && r.json()["status"]["phase"] == "Running")
        {
            assert!(t.elapsed() < Duration::from_secs(30), "{name} never ran");
            std::thread::sleep(Duration::from_millis(2));
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Figures {
        join_s,
        cpu,
        rss,
        apply_p50_ms: percentile(lat.clone(), 0.5),
        apply_p99_ms: percentile(lat, 0.99),
    }
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let n = env("BRAMBLE_BENCH_TLS_NODES", 1000);
    let rounds = env("BRAMBLE_BENCH_TLS_ROUNDS", 3).max(1);
    // Rounds alternate plaintext and TLS, so that the machine's noise (it is shared) falls
    // on both columns; each figure is the median over the rounds, each ratio the median of
    // the rounds' ratios.
    let mut plain = Vec::new();
    let mut tls = Vec::new();
    for r in 0..rounds {
        plain.push(run(n, false));
        tls.push(run(n, true));
        let (p, t) = (&plain[r], &tls[r]);
        eprintln!(
            "round {}: CPU {:.1}% / {:.1}%, join {:.1} / {:.1} s, apply p50 {:.0} / {:.0} ms (TLS / plaintext)",
            r + 1,
            t.cpu * 100.0,
            p.cpu * 100.0,
            t.join_s,
            p.join_s,
            t.apply_p50_ms,
            p.apply_p50_ms
        );
    }
    let med = |v: &[Figures], f: fn(&Figures) -> f64| percentile(v.iter().map(f).collect(), 0.5);
    let ratio = |f: fn(&Figures) -> f64| {
        percentile(
            tls.iter().zip(&plain).map(|(t, p)| f(t) / f(p)).collect(),
            0.5,
        )
    };
    println!(
        "| benchmark ({rounds} rounds, medians) | TLS (default) | plaintext (same run) | ratio (median of rounds) |"
    );
    println!("|---|---|---|---|");
    let row =
        |name: String, t: String, p: String, r: f64| println!("| {name} | {t} | {p} | {r:.2}x |");
    row(
        format!("master CPU, {n} hollow nodes heartbeating every 1 s"),
        format!("{:.1}% of a core", med(&tls, |f| f.cpu) * 100.0),
        format!("{:.1}% of a core", med(&plain, |f| f.cpu) * 100.0),
        ratio(|f| f.cpu),
    );
    row(
        format!("master RSS, {n} hollow nodes"),
        format!("{:.0} MB", med(&tls, |f| f.rss)),
        format!("{:.0} MB", med(&plain, |f| f.rss)),
        ratio(|f| f.rss),
    );
    row(
        format!("join storm: {n} nodes from start to all Ready"),
        format!("{:.1} s", med(&tls, |f| f.join_s)),
        format!("{:.1} s", med(&plain, |f| f.join_s)),
        ratio(|f| f.join_s),
    );
    row(
        format!("pod apply -> Running (to a hollow node, {n} nodes up), 30 pods"),
        format!(
            "p50 {:.0} ms, p99 {:.0} ms",
            med(&tls, |f| f.apply_p50_ms),
            med(&tls, |f| f.apply_p99_ms)
        ),
        format!(
            "p50 {:.0} ms, p99 {:.0} ms",
            med(&plain, |f| f.apply_p50_ms),
            med(&plain, |f| f.apply_p99_ms)
        ),
        ratio(|f| f.apply_p50_ms),
    );
}
