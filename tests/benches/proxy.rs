//! Proxy (as root): render + apply of 1,000 Services with 5 endpoints each, and of one
//! endpoint change at that size (a partial sync: only the chains that changed), into a
//! network namespace the bench creates and removes.
//! Baseline: `iptables-restore --noflush` of the same text alone (the kernel's share).
//!
//! Run with `scripts/bench`.

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use bramble_api::meta::IntOrString;
use bramble_api::service::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort,
};
use bramble_proxy::{NodeContext, build, render};

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 5;
const ROUNDS: usize = 5;

fn cluster(changed: bool) -> (Vec<Service>, Vec<Endpoints>) {
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..SERVICES {
        let mut s = Service::default();
        s.metadata.name = format!("svc-{i}");
        s.metadata.namespace = "default".into();
        s.spec.cluster_ip = format!("10.43.{}.{}", i / 250, i % 250 + 1);
        s.spec.ports = vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: Some(IntOrString::Int(8080)),
            ..Default::default()
        }];
        services.push(s);
        let mut e = Endpoints::default();
        e.metadata.name = format!("svc-{i}");
        e.metadata.namespace = "default".into();
        let n = if changed && i == 0 {
            ENDPOINTS - 1
        } else {
            ENDPOINTS
        };
        e.subsets = vec![EndpointSubset {
            addresses: (0..n)
                .map(|k| EndpointAddress {
                    ip: format!("10.42.{}.{}", k, i % 250 + 2),
                    ..Default::default()
                })
                .collect(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        }];
        endpoints.push(e);
    }
    (services, endpoints)
}

fn restore(ns: &str, text: &str) {
    let mut c = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "iptables-restore",
            "--noflush",
            "--wait",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
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
    let ns = format!("bramble-bench-proxy-{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let node = NodeContext {
        cluster_cidr: "10.42.0.0/16".into(),
        existing_chains: vec![],
    };
    let (s0, e0) = cluster(false);
    let (s1, e1) = cluster(true);
    let (mut full, mut change, mut only_restore, mut render_only) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let text = render(&s0, &e0, &node);
        render_only.push(t.elapsed().as_secs_f64());
        restore(&ns, &text);
        full.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        restore(&ns, &text);
        only_restore.push(t.elapsed().as_secs_f64());
        // One endpoint fewer on one service, written as a partial sync: only the chains that
        // changed since the last applied ruleset (kept in memory by the proxy).
        let previous = build(&s0, &e0, &node);
        let t = Instant::now();
        let changed = build(&s1, &e1, &node).text(Some(&previous), &[]);
        restore(&ns, &changed);
        change.push(t.elapsed().as_secs_f64());
        // And back, so the next round starts from the full ruleset.
        restore(
            &ns,
            &build(&s0, &e0, &node).text(Some(&build(&s1, &e1, &node)), &[]),
        );
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let lines = render(&s0, &e0, &node).lines().count();
    println!("## proxy: {SERVICES} Services x {ENDPOINTS} endpoints ({lines} ruleset lines)\n");
    println!("| measure | Bramble | baseline | ratio |");
    println!("|---|---|---|---|");
    let (f, c, r, ro) = (
        median(full),
        median(change),
        median(only_restore),
        median(render_only),
    );
    println!(
        "| full sync (render + iptables-restore), ms | {:.0} | iptables-restore alone: {:.0} | {:.2}x |",
        f * 1e3,
        r * 1e3,
        f / r
    );
    println!(
        "| one endpoint change (build both, partial restore), ms | {:.0} | full sync: {:.0} | {:.2}x faster |",
        c * 1e3,
        f * 1e3,
        f / c
    );
    println!("| render alone, ms | {:.1} | - | - |", ro * 1e3);
}
