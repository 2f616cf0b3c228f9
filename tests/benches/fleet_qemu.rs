//! Tier-A emulated fleet (as root): N boards (default 100, `BRAMBLE_BENCH_QEMU_BOARDS`),
//! each a network and UTS namespace running the cross-compiled aarch64 agent under
//! qemu-aarch64-static with `--runtime memory`, against a native master. Measures the time
//! for all to join, each idle board's host memory and CPU over a 20 s window, and the
//! reconnect spread after a master restart.
//! Baseline: the same agent built for this machine, run natively in the same way on 10 boards
//! in the same run (the cost of emulation).
//!
//! Needs `BRAMBLE_CROSS_BINS=bramble-agent cross/build aarch64-unknown-linux-musl`;
//! `scripts/bench` runs it.

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::time::{Duration, Instant};

use bramble_tests::qemufleet::{self, Fleet, usage};

const IDLE_WINDOW: Duration = Duration::from_secs(20);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// (join seconds, median RSS MiB, median CPU % of a core, reconnect spread seconds).
fn measure(n: usize, agent: std::path::PathBuf, emulated: bool) -> (f64, f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut f = Fleet::start_with(dir.path(), n, &[], agent, emulated).unwrap();
    assert!(
        f.wait_ready(n, Duration::from_secs(600)),
        "not all boards joined"
    );
    let join = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    let ticks = 100.0; // USER_HZ
    let before: Vec<(u64, u64)> = f
        .boards
        .iter()
        .map(|b| usage(b.pid().unwrap()).unwrap())
        .collect();
    std::thread::sleep(IDLE_WINDOW);
    let after: Vec<(u64, u64)> = f
        .boards
        .iter()
        .map(|b| usage(b.pid().unwrap()).unwrap())
        .collect();
    let rss = median(after.iter().map(|(r, _)| *r as f64 / 1024.0).collect());
    let cpu = median(
        before
            .iter()
            .zip(&after)
            .map(|((_, a), (_, b))| (b - a) as f64 / ticks / IDLE_WINDOW.as_secs_f64() * 100.0)
            .collect(),
    );
    let spread = f
        .restart_master_and_measure(Duration::from_secs(300))
        .unwrap();
    (join, rss, cpu, spread)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    bramble_tests::require_root();
    let n: usize = std::env::var("BRAMBLE_BENCH_QEMU_BOARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let emulated = measure(n, qemufleet::aarch64_agent().unwrap(), true);
    let native = measure(10, bramble_tests::bin("bramble-agent"), false);
    println!("## emulated fleet (tier A): {n} aarch64 boards under qemu-user\n");
    println!("| measure | emulated aarch64 | native x86-64 (10 boards) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| all boards joined, s | {:.1} ({n} boards) | {:.1} | - |",
        emulated.0, native.0
    );
    println!(
        "| idle board memory (RSS), MiB, median | {:.1} | {:.1} | {:.2}x |",
        emulated.1,
        native.1,
        emulated.1 / native.1
    );
    println!(
        "| idle board CPU, % of a core, median | {:.2} | {:.2} | - |",
        emulated.2, native.2
    );
    println!(
        "| reconnect spread after a master restart, s | {:.2} ({n} boards) | {:.2} (10 boards) | - |",
        emulated.3, native.3
    );
}
