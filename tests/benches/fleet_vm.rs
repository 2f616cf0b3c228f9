//! Tier-B emulated boards (as root): 3 real aarch64 kernels under qemu-system-aarch64
//! (cortex-a72, 512 MiB) with the cross-compiled agent. Measures boot-to-Ready time, and
//! each idle VM's host memory (the qemu process's RSS) and CPU over a 20 s window.
//! Baseline, in the same run: 3 tier-A boards (the same agent under qemu-user in network
//! namespaces) — the price of a whole emulated machine over an emulated process.
//!
//! Needs the aarch64 agent (cross/build) and tests/fleet/tier-b-setup; `scripts/bench` runs it.

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::time::{Duration, Instant};

use bramble_tests::netlab::{Lan, enter_netns};
use bramble_tests::qemufleet::{Fleet, aarch64_agent, usage};
use bramble_tests::vmfleet::{Vm, build_boot};
use bramble_tests::{MasterProcess, eventually};

const BOARDS: usize = 3;
const IDLE_WINDOW: Duration = Duration::from_secs(20);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median RSS (MiB) and CPU (% of a core) of `pids` over the idle window.
fn idle(pids: &[u32]) -> (f64, f64) {
    let before: Vec<(u64, u64)> = pids.iter().map(|p| usage(*p).unwrap()).collect();
    std::thread::sleep(IDLE_WINDOW);
    let after: Vec<(u64, u64)> = pids.iter().map(|p| usage(*p).unwrap()).collect();
    let rss = median(after.iter().map(|(r, _)| *r as f64 / 1024.0).collect());
    let cpu = median(
        before
            .iter()
            .zip(&after)
            .map(|((_, a), (_, b))| (b - a) as f64 / 100.0 / IDLE_WINDOW.as_secs_f64() * 100.0)
            .collect(),
    );
    (rss, cpu)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    bramble_tests::require_root();
    let agent = aarch64_agent().unwrap();
    // Tier B.
    let (vm_join, vm_rss, vm_cpu) = std::thread::spawn(move || {
        let dir = tempfile::tempdir().unwrap();
        let boot = build_boot(dir.path(), &agent).unwrap();
        let mut lan = Lan::new().unwrap();
        let mhost = lan.host("m", 1).unwrap();
        enter_netns(&mhost.path).unwrap();
        let m = MasterProcess::start_on(&dir.path().join("master"), &mhost.ip, &[]).unwrap();
        let t0 = Instant::now();
        let vms: Vec<Vm> = (1..=BOARDS as u8)
            .map(|n| Vm::boot(&lan, n, &boot, &m.url, &m.join_token(), dir.path()).unwrap())
            .collect();
        assert!(eventually(Duration::from_secs(300), || m.ready_nodes() == BOARDS));
        let join = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(5));
        let pids: Vec<u32> = vms.iter().map(Vm::pid).collect();
        let (rss, cpu) = idle(&pids);
        drop(vms);
        (join, rss, cpu)
    })
    .join()
    .unwrap();
    // Tier A, same size.
    let (a_join, a_rss, a_cpu) = std::thread::spawn(|| {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let f = Fleet::start(dir.path(), BOARDS, &[]).unwrap();
        assert!(f.wait_ready(BOARDS, Duration::from_secs(120)));
        let join = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(5));
        let pids: Vec<u32> = f.boards.iter().map(|b| b.pid().unwrap()).collect();
        let (rss, cpu) = idle(&pids);
        (join, rss, cpu)
    })
    .join()
    .unwrap();
    println!("## emulated fleet (tier B): {BOARDS} aarch64 VMs\n");
    println!("| measure | tier B (qemu-system, 512 MiB VMs) | tier A (qemu-user) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| boot (or start) to all {BOARDS} Ready, s | {vm_join:.1} | {a_join:.1} | {:.1}x |",
        vm_join / a_join
    );
    println!(
        "| idle board host memory (RSS), MiB, median | {vm_rss:.0} | {a_rss:.1} | {:.0}x |",
        vm_rss / a_rss
    );
    println!("| idle board host CPU, % of a core, median | {vm_cpu:.1} | {a_cpu:.2} | - |");
}
