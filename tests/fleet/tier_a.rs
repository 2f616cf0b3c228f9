//! Tier-A fleet test (as root): N emulated aarch64 boards (default 20,
//! `BRAMBLE_FLEET_BOARDS`), each a network and UTS namespace running the cross-compiled
//! agent under qemu-aarch64-static, against a native master. They join under their
//! hostnames; a Deployment spreads over them; a board's power cut moves its pods; a board
//! cut off the LAN and reconnected leaves no duplicate pods; a master restart brings every
//! board back, spread out by the agents' jittered back-off (the spread is printed, and
//! bounded by the back-off cap).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bramble_tests::qemufleet::Fleet;
use bramble_tests::{MasterProcess, eventually, ok_stdout, require_root};

fn deployment(replicas: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: main
        image: busybox
        command: [sleep, "3600"]
        resources: {{requests: {{cpu: 100m, memory: 16Mi}}}}
"#
    )
}

/// Running, not terminating pods per node; and every pod name with its count.
fn placement(m: &MasterProcess) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let (mut per_node, mut names) = (BTreeMap::new(), BTreeMap::new());
    for p in m.pods() {
        *names
            .entry(p["metadata"]["name"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
        if p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running" {
            *per_node
                .entry(p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    (per_node, names)
}

fn running(m: &MasterProcess) -> usize {
    placement(m).0.values().sum()
}

#[test]
fn an_emulated_fleet_joins_spreads_heals_and_survives_a_master_restart() {
    require_root();
    let n: usize = std::env::var("BRAMBLE_FLEET_BOARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut f = Fleet::start(
        dir.path(),
        n,
        &["--node-lost-after", "3s", "--pod-eviction-timeout", "2s"],
    )
    .unwrap();
    assert!(
        f.wait_ready(n, Duration::from_secs(120)),
        "{} of {n} boards Ready",
        f.master().ready_nodes()
    );
    println!("{n} emulated boards joined in {:?}", t0.elapsed());
    // Each board joined under its own hostname (its UTS namespace) and is an arm64 node.
    let nodes = f.master().http().get("/api/v1/nodes").unwrap().json();
    let mut names: Vec<String> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(
                n["metadata"]["labels"]["kubernetes.io/arch"], "arm64",
                "{n}"
            );
            n["metadata"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    names.sort();
    let want: Vec<String> = (1..=n).map(|i| format!("board-{i:02}")).collect();
    assert_eq!(names, want);

    // A Deployment spreads over every board.
    let replicas = 2 * n;
    ok_stdout(
        &f.master()
            .cli_with_stdin(&["apply", "-f", "-"], Some(&deployment(replicas))),
    );
    assert!(
        eventually(Duration::from_secs(120), || running(f.master()) == replicas),
        "{:?}",
        placement(f.master()).0
    );
    let (per_node, _) = placement(f.master());
    assert_eq!(per_node.len(), n, "every board runs some: {per_node:?}");

    // A power cut on board 2: its pods move to the others.
    f.boards[1].kill();
    assert!(
        eventually(Duration::from_secs(60), || {
            let (per_node, _) = placement(f.master());
            !per_node.contains_key("board-02") && per_node.values().sum::<usize>() == replicas
        }),
        "{:?}",
        placement(f.master()).0
    );
    f.restart_board(1).unwrap();
    assert!(f.wait_ready(n, Duration::from_secs(60)));

    // A partition: board 3 loses its link, its pods are replaced elsewhere; after the link
    // comes back, its old pods are gone and nothing runs twice.
    f.lan.link("03", false).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            let (per_node, _) = placement(f.master());
            !per_node.contains_key("board-03") && per_node.values().sum::<usize>() == replicas
        }),
        "{:?}",
        placement(f.master()).0
    );
    f.lan.link("03", true).unwrap();
    assert!(f.wait_ready(n, Duration::from_secs(60)));
    assert!(
        eventually(Duration::from_secs(60), || {
            let (per_node, names) = placement(f.master());
            per_node.values().sum::<usize>() == replicas
                && names.len() == replicas
                && names.values().all(|c| *c == 1)
        }),
        "after healing: {:?}",
        placement(f.master())
    );

    // The master restarts: every board reconnects, spread out by jittered back-off.
    let spread = f
        .restart_master_and_measure(Duration::from_secs(90))
        .unwrap();
    println!("reconnect spread after a master restart: {spread:.2} s over {n} boards");
    // Jittered, not in lockstep; and no board waits past one capped back-off (30 s) after
    // the first is back.
    assert!(
        spread > 0.0 && spread <= 30.0,
        "reconnect spread {spread:.2} s over {n} boards"
    );
    assert!(f.wait_ready(n, Duration::from_secs(60)));
    assert!(
        eventually(Duration::from_secs(60), || running(f.master()) == replicas),
        "{:?}",
        placement(f.master()).0
    );
}
