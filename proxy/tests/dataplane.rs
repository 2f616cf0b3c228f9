//! The proxy's rules carrying real traffic, as root, in network namespaces the test creates
//! and removes: a "node" namespace with a bridge, three backend namespaces on it each
//! answering with its own name (busybox nc), and `bramble-proxy --apply` inside the node.
//! A ClusterIP reaches all three; after an endpoint is removed no request reaches it;
//! re-applying leaves one copy of each rule; `--cleanup` removes Bramble's chains and jumps
//! and leaves a foreign rule alone.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Lab {
    node: String,
    backends: Vec<String>,
    servers: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in self.backends.iter().chain(std::iter::once(&self.node)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn lab() -> Lab {
    let id = std::process::id() % 100_000;
    let node = format!("bpn{id}");
    let mut lab = Lab {
        node: node.clone(),
        backends: Vec::new(),
        servers: Vec::new(),
    };
    sh(&["ip", "netns", "add", &node]);
    in_ns(&node, &["ip", "link", "set", "lo", "up"]);
    in_ns(&node, &["ip", "link", "add", "br0", "type", "bridge"]);
    in_ns(&node, &["ip", "addr", "add", "10.42.0.1/24", "dev", "br0"]);
    in_ns(&node, &["ip", "link", "set", "br0", "up"]);
    // Service addresses route towards the pods until the proxy rewrites them.
    in_ns(&node, &["ip", "route", "add", "10.43.0.0/16", "dev", "br0"]);
    for i in 1..=3 {
        let b = format!("bpb{id}x{i}");
        sh(&["ip", "netns", "add", &b]);
        lab.backends.push(b.clone());
        let (host, peer) = (format!("vh{i}"), format!("vp{i}"));
        in_ns(
            &node,
            &[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ],
        );
        in_ns(&node, &["ip", "link", "set", &peer, "netns", &b]);
        in_ns(&node, &["ip", "link", "set", &host, "master", "br0"]);
        in_ns(&node, &["ip", "link", "set", &host, "up"]);
        in_ns(&b, &["ip", "link", "set", "lo", "up"]);
        in_ns(
            &b,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.42.0.1{i}/24"),
                "dev",
                &peer,
            ],
        );
        in_ns(&b, &["ip", "link", "set", &peer, "up"]);
        in_ns(&b, &["ip", "route", "add", "default", "via", "10.42.0.1"]);
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &b,
                "busybox",
                "nc",
                "-ll",
                "-p",
                "8080",
                "-e",
                "/bin/echo",
            ])
            .arg(format!("backend-{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        lab.servers.push(server);
    }
    // Every backend answers before the test starts.
    for i in 1..=3 {
        let ip = format!("10.42.0.1{i}");
        let up = (0..50).any(|_| {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", &lab.node, "busybox", "nc", "-w", "1", &ip, "8080",
                ])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let answered = String::from_utf8_lossy(&out.stdout).contains("backend-");
            if !answered {
                std::thread::sleep(Duration::from_millis(100));
            }
            answered
        });
        assert!(up, "backend {ip} never answered");
    }
    lab
}

fn manifest(backends: &[u8]) -> String {
    let addrs: Vec<String> = backends
        .iter()
        .map(|i| format!("{{ip: 10.42.0.1{i}}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: 10.43.0.10\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: web, namespace: default}}\nsubsets:\n- addresses: [{}]\n  ports: [{{name: http, port: 8080}}]\n",
        addrs.join(", ")
    )
}

fn apply(lab: &Lab, dir: &std::path::Path, backends: &[u8]) {
    let file = dir.join("svc.yaml");
    std::fs::write(&file, manifest(backends)).unwrap();
    in_ns(
        &lab.node,
        &[
            env!("CARGO_BIN_EXE_bramble-proxy"),
            "--apply",
            file.to_str().unwrap(),
        ],
    );
}

/// `n` requests to the ClusterIP; replies counted by backend.
fn replies(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.node,
                "busybox",
                "nc",
                "-w",
                "2",
                "10.43.0.10",
                "80",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let reply = String::from_utf8_lossy(&out.stdout).trim().to_string();
        *seen.entry(reply).or_default() += 1;
    }
    seen
}

#[test]
fn cluster_ip_traffic_reaches_every_ready_backend_and_cleanup_leaves_foreign_rules() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab();
    // A rule Bramble does not own, which must survive everything below.
    in_ns(
        &lab.node,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "192.0.2.0/24",
            "-j",
            "RETURN",
        ],
    );
    apply(&lab, dir.path(), &[1, 2, 3]);
    let seen = replies(&lab, 45);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["backend-1", "backend-2", "backend-3"],
        "replies: {seen:?}"
    );
    // Backend 2 is gone from the endpoints: no request reaches it afterwards.
    apply(&lab, dir.path(), &[1, 3]);
    let seen = replies(&lab, 30);
    assert!(!seen.contains_key("backend-2"), "replies: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 30);
    // A resync leaves exactly one copy of each rule and jump.
    apply(&lab, dir.path(), &[1, 3]);
    let saved = in_ns(&lab.node, &["iptables-save"]);
    for table in ["nat", "filter"] {
        let text = in_ns(&lab.node, &["iptables-save", "-t", table]);
        for (t, chain, target) in bramble_proxy::iptables::JUMPS {
            if *t != table {
                continue;
            }
            let jump = format!("-A {chain} -j {target}");
            assert_eq!(
                text.lines().filter(|l| *l == jump).count(),
                1,
                "{jump}\n{text}"
            );
        }
    }
    assert_eq!(saved.matches("-j DNAT").count(), 2, "{saved}");
    // Cleanup removes every Bramble chain and jump, and nothing else.
    in_ns(
        &lab.node,
        &[env!("CARGO_BIN_EXE_bramble-proxy"), "--cleanup"],
    );
    let saved = in_ns(&lab.node, &["iptables-save"]);
    assert!(!saved.contains("BRAMBLE"), "{saved}");
    assert!(
        saved.contains("-A POSTROUTING -s 192.0.2.0/24 -j RETURN"),
        "{saved}"
    );
}
