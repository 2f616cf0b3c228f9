//! The scheduler on a real master with hollow agents (the real agent code over in-memory
//! containers, each node with its own MQTT connection).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::time::Duration;

use bramble_tests::{HollowProcess, MasterProcess, eventually, ok_stdout};

fn pod(name: &str, cpu: &str, memory: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{extra_spec}  containers:\n  - name: main\n    image: busybox\n    command: [sleep, '3600']\n    resources: {{requests: {{cpu: {cpu}, memory: {memory}}}}}\n"
    )
}

fn placement(m: &MasterProcess) -> BTreeMap<String, usize> {
    let v = m
        .http()
        .get("/api/v1/namespaces/default/pods")
        .unwrap()
        .json();
    let mut out = BTreeMap::new();
    for p in v["items"].as_array().unwrap() {
        if let Some(n) = p["spec"]["nodeName"].as_str() {
            *out.entry(n.to_string()).or_default() += 1;
        }
    }
    out
}

#[test]
fn pending_pods_are_bound_spread_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "hollow", 3, &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || m.ready_nodes() == 3),
        "3 hollow nodes never became Ready"
    );
    let all: String = (0..9)
        .map(|i| pod(&format!("p{i}"), "100m", "64Mi", ""))
        .collect::<Vec<_>>()
        .join("---\n");
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&all)));
    assert!(
        eventually(Duration::from_secs(30), || placement(&m)
            .values()
            .sum::<usize>()
            == 9),
        "not all pods were bound: {:?}",
        placement(&m)
    );
    let spread: Vec<usize> = placement(&m).values().copied().collect();
    assert_eq!(
        spread,
        vec![3, 3, 3],
        "pods should spread evenly over equal nodes"
    );
    // They run on their (hollow) nodes and report back.
    assert!(eventually(Duration::from_secs(30), || {
        m.pods().iter().all(|p| p["status"]["phase"] == "Running")
    }));
    let events = ok_stdout(&m.cli(&["get", "events"]));
    assert!(
        events.contains("Scheduled")
            && events.contains("Successfully assigned default/p0 to hollow-"),
        "{events}"
    );
}

#[test]
fn an_unschedulable_pod_says_why_and_is_placed_when_a_fitting_node_joins() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let one_gib = (1u64 << 30).to_string();
    let _small = HollowProcess::start(
        &m,
        &dir.path().join("small"),
        "small",
        2,
        &["--memory-bytes", &one_gib],
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 2));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&pod("big", "100m", "3Gi", ""))));
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&pod(
            "picky",
            "100m",
            "64Mi",
            "  nodeSelector: {zone: moon}\n",
        )),
    ));
    let condition = |name: &str| {
        m.pod(name).and_then(|p| {
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")
                .map(|c| c["message"].as_str().unwrap_or("").to_string())
        })
    };
    assert!(eventually(Duration::from_secs(10), || condition("big").is_some()));
    assert_eq!(
        condition("big").unwrap(),
        "0/2 nodes are available: 2 Insufficient memory.",
        "{:?}",
        m.pod("big")
    );
    assert!(eventually(Duration::from_secs(10), || condition("picky").is_some()));
    assert_eq!(
        condition("picky").unwrap(),
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    );
    let events = ok_stdout(&m.cli(&["get", "events"]));
    assert!(
        events.contains("FailedScheduling") && events.contains("pod/big"),
        "{events}"
    );
    // No polling: a node that fits joins, and the pod is placed on it.
    let eight_gib = (8u64 << 30).to_string();
    let _big = HollowProcess::start(
        &m,
        &dir.path().join("large"),
        "large",
        1,
        &["--memory-bytes", &eight_gib],
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || m
            .pod("big")
            .is_some_and(|p| p["spec"]["nodeName"] == "large-0")),
        "{:?}",
        m.pod("big").map(|p| p["status"].clone())
    );
    assert!(
        m.pod("picky").unwrap()["spec"]["nodeName"].is_null(),
        "the picky pod still fits nowhere"
    );
}

#[test]
fn node_affinity_cordon_uncordon_and_drain() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = HollowProcess::start(
        &m,
        &dir.path().join("a"),
        "za",
        1,
        &["--node-labels", "zone=a"],
    )
    .unwrap();
    let _b = HollowProcess::start(
        &m,
        &dir.path().join("b"),
        "zb",
        1,
        &["--node-labels", "zone=b,disk=4"],
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 2));
    let affine = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        - matchExpressions:\n          - {{key: zone, operator: In, values: [b]}}\n          - {{key: disk, operator: Gt, values: ['2']}}\n  containers: [{{name: c, image: busybox}}]\n"
        )
    };
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&affine("to-b"))));
    assert!(eventually(Duration::from_secs(10), || m
        .pod("to-b")
        .is_some_and(|p| p["spec"]["nodeName"] == "zb-0")));
    // Cordoned: nothing new lands there.
    ok_stdout(&m.cli(&["cordon", "zb-0"]));
    let nodes = ok_stdout(&m.cli(&["get", "nodes"]));
    assert!(nodes.contains("Ready,SchedulingDisabled"), "{nodes}");
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&affine("waits"))));
    let message = |name: &str| {
        m.pod(name).and_then(|p| {
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")
                .map(|c| c["message"].as_str().unwrap_or("").to_string())
        })
    };
    assert!(eventually(Duration::from_secs(10), || message("waits").is_some()));
    let msg = message("waits").unwrap();
    assert!(
        msg.starts_with("0/2 nodes are available:") && msg.contains("1 node(s) were unschedulable"),
        "{msg}"
    );
    assert!(
        msg.contains("1 node(s) didn't match Pod's node affinity/selector"),
        "{msg}"
    );
    ok_stdout(&m.cli(&["uncordon", "zb-0"]));
    assert!(eventually(Duration::from_secs(10), || m
        .pod("waits")
        .is_some_and(|p| p["spec"]["nodeName"] == "zb-0")));
    // Drain evicts what runs there and leaves the node cordoned.
    let out = ok_stdout(&m.cli(&["drain", "zb-0"]));
    assert!(
        out.contains("evicting pod default/to-b") && out.contains("drained"),
        "{out}"
    );
    assert!(eventually(Duration::from_secs(20), || m
        .pod("to-b")
        .is_none()
        && m.pod("waits").is_none()));
    let node = m.http().get("/api/v1/nodes/zb-0").unwrap().json();
    assert_eq!(node["spec"]["unschedulable"], true);
}

fn pod_cidrs(m: &MasterProcess) -> BTreeMap<String, String> {
    m.http().get("/api/v1/nodes").unwrap().json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| {
            let cidr = n["spec"]["podCIDR"].as_str()?;
            Some((
                n["metadata"]["name"].as_str()?.to_string(),
                cidr.to_string(),
            ))
        })
        .collect()
}

#[test]
fn every_node_gets_its_own_pod_cidr_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("master");
    let m = MasterProcess::start_with(
        &mdir,
        &[
            "--cluster-cidr",
            "10.99.0.0/22",
            "--node-cidr-mask-size",
            "24",
        ],
    )
    .unwrap();
    let h = HollowProcess::start(&m, &dir.path().join("hollow"), "ipam", 3, &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || pod_cidrs(&m).len() == 3));
    let first = pod_cidrs(&m);
    let mut values: Vec<&String> = first.values().collect();
    values.sort();
    values.dedup();
    assert_eq!(
        values,
        ["10.99.0.0/24", "10.99.1.0/24", "10.99.2.0/24"],
        "{first:?}"
    );
    // A restarted master keeps every assignment.
    drop(h);
    m.terminate();
    let m = MasterProcess::start_with(&mdir, &["--cluster-cidr", "10.99.0.0/22"]).unwrap();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow2"), "more", 2, &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || pod_cidrs(&m).len() == 4));
    let now = pod_cidrs(&m);
    for (node, cidr) in &first {
        assert_eq!(now.get(node), Some(cidr), "{node} kept its CIDR");
    }
    // The pool has four /24s: the fourth node takes the last, the fifth gets none.
    assert_eq!(
        now.values()
            .filter(|c| c.as_str() == "10.99.3.0/24")
            .count(),
        1
    );
    // The allocator has turned the fifth node down (its Warning event says so) and handed
    // out nothing twice.
    assert!(
        eventually(Duration::from_secs(20), || {
            let events = m
                .http()
                .get("/api/v1/namespaces/default/events")
                .unwrap()
                .json();
            events["items"].as_array().is_some_and(|items| {
                items.iter().any(|e| {
                    e["reason"] == "CIDRNotAvailable"
                        && e["involvedObject"]["kind"] == "Node"
                        && !now.contains_key(e["involvedObject"]["name"].as_str().unwrap_or(""))
                })
            })
        }),
        "no CIDRNotAvailable event for the fifth node"
    );
    assert_eq!(pod_cidrs(&m).len(), 4, "no CIDR is handed out twice");
    // A deleted node's CIDR is free again.
    let gone = first.keys().next().unwrap().clone();
    ok_stdout(&m.cli(&["delete", "node", &gone]));
    assert!(eventually(Duration::from_secs(20), || pod_cidrs(&m).len()
        == 4
        && pod_cidrs(&m).values().any(|c| c == &first[&gone])));
}

/// Pods per value of a node label, for the pods whose name starts with `prefix`.
fn per_zone(m: &MasterProcess, prefix: &str) -> BTreeMap<String, usize> {
    let zones: BTreeMap<String, String> = m.http().get("/api/v1/nodes").unwrap().json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let name = n["metadata"]["name"].as_str().unwrap().to_string();
            let zone = n["metadata"]["labels"]["zone"].as_str().unwrap_or("-");
            (name, zone.to_string())
        })
        .collect();
    let mut out = BTreeMap::new();
    for p in m.pods() {
        let name = p["metadata"]["name"].as_str().unwrap();
        if let (true, Some(node)) = (name.starts_with(prefix), p["spec"]["nodeName"].as_str()) {
            *out.entry(zones[node].clone()).or_default() += 1;
        }
    }
    out
}

#[test]
fn topology_spread_constraints_spread_zones_and_hold_a_pod_that_would_skew() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    // Zone a has two nodes, b and c one each: spreading by node would put half the pods in a.
    let _hollow: Vec<HollowProcess> = [("a", 2), ("b", 1), ("c", 1)]
        .iter()
        .map(|(zone, n)| {
            HollowProcess::start(
                &m,
                &dir.path().join(zone),
                &format!("z{zone}"),
                *n,
                &["--node-labels", &format!("zone={zone}")],
            )
            .unwrap()
        })
        .collect();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 4));
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}, matchLabelKeys: [pod-template-hash]}\n      containers: [{name: c, image: busybox, command: [sleep, '3600']}]\n";
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(deployment)));
    assert!(
        eventually(Duration::from_secs(30), || per_zone(&m, "web-")
            .values()
            .sum::<usize>()
            == 6),
        "{:?}",
        per_zone(&m, "web-")
    );
    let want: BTreeMap<String, usize> = [("a", 2), ("b", 2), ("c", 2)]
        .iter()
        .map(|(z, n)| (z.to_string(), *n))
        .collect();
    assert_eq!(
        per_zone(&m, "web-"),
        want,
        "one zone took more than its share"
    );

    // A constraint on a key no node has: no node fits, and the message says why.
    let solo = |name: &str, zone: &str, spread: bool| {
        let constraint = if spread {
            "  topologySpreadConstraints:\n  - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, nodeAffinityPolicy: Ignore, labelSelector: {matchLabels: {app: solo}}}\n"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: solo}}}}\nspec:\n  nodeSelector: {{zone: {zone}}}\n{constraint}  containers: [{{name: c, image: busybox, command: [sleep, '3600']}}]\n"
        )
    };
    let rack = "apiVersion: v1\nkind: Pod\nmetadata: {name: racked, labels: {app: racked}}\nspec:\n  topologySpreadConstraints:\n  - {maxSkew: 1, topologyKey: rack, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: racked}}}\n  containers: [{name: c, image: busybox}]\n";
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(rack)));
    let message = |name: &str| {
        m.pod(name).and_then(|p| {
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                .map(|c| c["message"].as_str().unwrap_or("").to_string())
        })
    };
    assert!(eventually(Duration::from_secs(10), || message("racked").is_some()));
    let msg = message("racked").unwrap();
    assert!(
        msg.contains(
            "4 node(s) didn't match pod topology spread constraints (missing required label)"
        ),
        "{msg}"
    );

    // Skew: with the node selector ignored for counting, a second `solo` pod in zone a
    // would make a 2 against 0 in b and c; it waits until b and c hold one each.
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&solo("solo-1", "a", true))));
    assert!(eventually(Duration::from_secs(10), || per_zone(
        &m, "solo-"
    )
    .get("a")
        == Some(&1)));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&solo("solo-2", "a", true))));
    assert!(eventually(Duration::from_secs(10), || message("solo-2").is_some()));
    let msg = message("solo-2").unwrap();
    assert!(
        msg.contains("2 node(s) didn't match pod topology spread constraints")
            && msg.contains("2 node(s) didn't match Pod's node affinity/selector"),
        "{msg}"
    );
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&solo("solo-b", "b", false))));
    // One more in b only: the smallest domain (c) still holds none.
    assert!(bramble_tests::consistently(Duration::from_secs(3), || m
        .pod("solo-2")
        .is_some_and(|p| p["spec"]["nodeName"].is_null())));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&solo("solo-c", "c", false))));
    assert!(
        eventually(Duration::from_secs(10), || per_zone(&m, "solo-").get("a")
            == Some(&2)),
        "solo-2 was not placed once every zone held one: {:?}",
        per_zone(&m, "solo-")
    );
}
