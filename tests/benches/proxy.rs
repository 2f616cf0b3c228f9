//! Proxy (as root): the proxy's syncs of 1,000 Services with 5 endpoints each through
//! `Syncer`, into a network namespace the bench creates and removes: the first sync into
//! empty tables, a full resync with the kernel in step and with one chain differing, and one
//! endpoint change (a partial sync).
//! Baseline: `iptables-restore --noflush` of the whole text alone (the kernel's share).
//!
//! Run with `scripts/bench`.

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::time::Instant;

use bramble_api::service::{Endpoints, Service};
use bramble_proxy::{NodeContext, Syncer, build, iptables, render};
use bramble_tests::netlab::{Lan, in_netns};

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 5;
const ROUNDS: usize = 5;

fn cluster(changed: bool) -> (Vec<Service>, Vec<Endpoints>) {
    let first = if changed { ENDPOINTS - 1 } else { ENDPOINTS };
    bramble_tests::services::cluster(SERVICES, ENDPOINTS, first, None)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    bramble_tests::require_root();
    let mut lan = Lan::new().unwrap();
    let host = lan.host("bench", 2).unwrap();
    let rows = in_netns(&host.path, || {
        let b = iptables::detect().unwrap();
        let node = NodeContext {
            cluster_cidr: "10.42.0.0/16".into(),
            existing_chains: vec![],
        };
        let (s0, e0) = cluster(false);
        let (s1, e1) = cluster(true);
        let text = render(&s0, &e0, &node);
        let (mut cold, mut restore_only, mut steady, mut resync_one, mut change, mut render_only) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            // Baseline: iptables-restore of the whole text into empty tables.
            iptables::cleanup(b).unwrap();
            let t = Instant::now();
            iptables::restore(b, &text).unwrap();
            restore_only.push(t.elapsed().as_secs_f64());
            // A proxy's first sync on a node without rules: everything is written.
            iptables::cleanup(b).unwrap();
            let t = Instant::now();
            let st = Syncer::new(b).sync(&s0, &e0, &node).unwrap();
            cold.push(t.elapsed().as_secs_f64());
            assert!(st.full && st.lines > 10_000);
            // A full resync (a restarted proxy, or the periodic one) with the kernel in step:
            // read back with iptables-save, compared, nothing written.
            let t = Instant::now();
            let mut sy = Syncer::new(b);
            let st = sy.sync(&s0, &e0, &node).unwrap();
            steady.push(t.elapsed().as_secs_f64());
            assert_eq!(st.lines, 0);
            // One endpoint fewer, as a partial sync of the proxy that applied the rest.
            let t = Instant::now();
            let st = sy.sync(&s1, &e1, &node).unwrap();
            change.push(t.elapsed().as_secs_f64());
            assert!(!st.full && st.lines > 0);
            // And back, as a full resync that finds the one chain that differs.
            let t = Instant::now();
            let st = Syncer::new(b).sync(&s0, &e0, &node).unwrap();
            resync_one.push(t.elapsed().as_secs_f64());
            assert!(st.full && st.lines > 0 && st.lines < 20);
            let t = Instant::now();
            let _ = build(&s0, &e0, &node);
            render_only.push(t.elapsed().as_secs_f64());
        }
        iptables::cleanup(b).unwrap();
        (
            text.lines().count(),
            median(cold),
            median(restore_only),
            median(steady),
            median(resync_one),
            median(change),
            median(render_only),
        )
    });
    let (lines, cold, restore_only, steady, resync_one, change, render_only) = rows;
    println!("## proxy: {SERVICES} Services x {ENDPOINTS} endpoints ({lines} ruleset lines)\n");
    println!("| measure | Bramble | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| first sync into empty tables (read, render, restore, jumps), ms | {:.0} | iptables-restore of the same text alone: {:.0} | {:.2}x |",
        cold * 1e3,
        restore_only * 1e3,
        cold / restore_only
    );
    println!(
        "| full resync, kernel in step (iptables-save, compare, nothing written), ms | {:.0} | first sync: {:.0} | {:.2}x faster |",
        steady * 1e3,
        cold * 1e3,
        cold / steady
    );
    println!(
        "| full resync, one chain differs, ms | {:.0} | first sync: {:.0} | {:.2}x faster |",
        resync_one * 1e3,
        cold * 1e3,
        cold / resync_one
    );
    println!(
        "| one endpoint change (partial sync), ms | {:.0} | first sync: {:.0} | {:.2}x faster |",
        change * 1e3,
        cold * 1e3,
        cold / change
    );
    println!("| render alone, ms | {:.1} | - | - |", render_only * 1e3);
}
