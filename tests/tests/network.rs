//! The pod network and Services for real, as root: three boards, each a network namespace
//! on a test LAN (made and removed by the test) running a real agent with its pod bridge,
//! veths, routes and in-process service proxy, and a master in a namespace of its own.
//! Pods on different boards talk by pod IP; a ClusterIP balances over its three ready pods
//! (counted); a NodePort answers a host outside the cluster; a deleted backend leaves the
//! rules at once and gets no more requests; an agent restart keeps an established service
//! connection and leaves one copy of each rule; the host's own namespace is left alone.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bramble_tests::netlab::{Lan, enter_netns, in_netns};
use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, echo_pod, eventually, ok_stdout, require_root,
};

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: board-a
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sleep, "3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: host-net}
spec:
  nodeName: board-b
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sleep, "3600"]
"#;

/// Connects from the current namespace and reads the first line (the backend's name).
fn ask(addr: SocketAddr) -> Option<String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim().to_string()).filter(|l| !l.is_empty())
}

/// `n` requests to `addr` from the namespace at `ns`: replies counted by backend.
fn count_replies(ns: &Path, addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    in_netns(ns, move || {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let who = ask(addr).unwrap_or_else(|| "<no answer>".into());
            *out.entry(who).or_default() += 1;
        }
        out
    })
}

fn ready(m: &MasterProcess, pod: &str) -> bool {
    m.pod(pod)
        .is_some_and(|p| p["status"]["containerStatuses"][0]["ready"] == true)
}

fn iptables_save(board: &bramble_tests::netlab::Host) -> String {
    board.run(&["iptables-save"]).unwrap()
}

#[test]
fn pods_talk_across_boards_and_services_balance_over_ready_pods() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut lan = Lan::new().unwrap();
    let mhost = lan.host("m", 1).unwrap();
    let names = ["a", "b", "c"];
    let boards: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| lan.host(n, 11 + i as u8).unwrap())
        .collect();
    let outside = lan.host("x", 50).unwrap();
    let _cleanups: Vec<AgentDirCleanup> = names
        .iter()
        .map(|n| AgentDirCleanup(dir.path().join(format!("agent-{n}"))))
        .collect();
    // This test's thread lives in the master's namespace from here on; the host's is kept
    // open to look at it in the end.
    let host_ns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let host_ns_path = PathBuf::from(format!("/proc/self/fd/{}", host_ns.as_raw_fd()));
    enter_netns(&mhost.path).unwrap();
    let listen = format!("{}:0", mhost.ip);
    let m = MasterProcess::start_with(
        &dir.path().join("master"),
        &["--listen", &listen, "--mqtt-listen", &listen],
    )
    .unwrap();
    let token = m.join_token();
    let start_agent = |n: &str, join: bool| {
        let board = boards[names.iter().position(|x| *x == n).unwrap()].clone();
        let (url, token, data) = (
            m.url.clone(),
            token.clone(),
            dir.path().join(format!("agent-{n}")),
        );
        let node = format!("board-{n}");
        in_netns(&board.path, move || {
            if join {
                AgentProcess::join_with_pod_network(&url, &token, &data, &node)
            } else {
                AgentProcess::restart_with_pod_network(&data, &node)
            }
        })
        .unwrap()
    };
    let mut agents: Vec<AgentProcess> = names.iter().map(|n| start_agent(n, true)).collect();
    for n in names {
        let node = format!("board-{n}");
        assert!(
            eventually(Duration::from_secs(30), || m
                .node_ready(&node)
                .is_some_and(|r| r.0 == "True")),
            "{node} never became Ready"
        );
    }
    let mut cidrs = BTreeMap::new();
    for n in names {
        let node = m
            .http()
            .get(&format!("/api/v1/nodes/board-{n}"))
            .unwrap()
            .json();
        let cidr = node["spec"]["podCIDR"].as_str().unwrap().to_string();
        cidrs.insert(format!("board-{n}"), cidr);
    }
    let distinct: std::collections::BTreeSet<_> = cidrs.values().collect();
    assert_eq!(distinct.len(), 3, "every node its own pod CIDR: {cidrs:?}");

    let manifest = format!(
        "{}{}{}{SERVICE}",
        echo_pod("echo-a", "board-a", "echo"),
        echo_pod("echo-b", "board-b", "echo"),
        echo_pod("echo-c", "board-c", "echo"),
    );
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&manifest)));
    for p in ["echo-a", "echo-b", "echo-c", "client"] {
        assert!(
            eventually(Duration::from_secs(60), || ready(&m, p)
                && !m.pod_field(p, &["status", "podIP"]).is_empty()),
            "{p} never became ready with a pod IP: {:?}",
            m.pod(p).map(|p| p["status"].clone())
        );
    }
    // Each pod's IP is from its node's CIDR; hostIP is its board's address.
    let mut ips = BTreeMap::new();
    for (p, b) in [("echo-a", 0), ("echo-b", 1), ("echo-c", 2), ("client", 0)] {
        let ip = m.pod_field(p, &["status", "podIP"]);
        let node = format!("board-{}", names[b]);
        let prefix = cidrs[&node].trim_end_matches("0/24");
        assert!(ip.starts_with(prefix), "{p}: {ip} not in {}", cidrs[&node]);
        assert_eq!(m.pod_field(p, &["status", "hostIP"]), boards[b].ip, "{p}");
        ips.insert(p, ip);
    }
    // hostNetwork still works: the pod has its board's address and no veth.
    assert!(eventually(Duration::from_secs(30), || ready(
        &m, "host-net"
    )));
    assert_eq!(m.pod_field("host-net", &["status", "podIP"]), boards[1].ip);
    // Every board routes to the two other boards' pod CIDRs through their addresses, and
    // has one veth per pod on its bridge.
    for (i, b) in boards.iter().enumerate() {
        let routes = b.run(&["ip", "route", "show", "proto", "98"]).unwrap();
        for (j, other) in boards.iter().enumerate() {
            let want = format!("{} via {}", cidrs[&format!("board-{}", names[j])], other.ip);
            assert_eq!(routes.contains(&want), i != j, "board {i}: {routes}");
        }
        let veths = b
            .run(&["ip", "-o", "link", "show", "master", "bramble0"])
            .unwrap();
        let pods = if i == 0 { 2 } else { 1 };
        assert_eq!(veths.lines().count(), pods, "board {i}: {veths}");
    }
    let client_uid = m.pod_field("client", &["metadata", "uid"]);
    let client_ns = dir.path().join("agent-a/netns").join(&client_uid);

    // Board A's pod reaches board B's pod by pod IP (and C's).
    for target in ["echo-b", "echo-c"] {
        let addr: SocketAddr = format!("{}:8080", ips[target]).parse().unwrap();
        let ns = client_ns.clone();
        let got = in_netns(&ns, move || {
            let mut last = None;
            eventually(Duration::from_secs(10), || {
                last = ask(addr);
                last.is_some()
            });
            last
        });
        assert_eq!(got.as_deref(), Some(target), "client -> {target} by pod IP");
    }

    // A pod reaches a host outside the cluster (which has no route to pod addresses):
    // its traffic leaves masqueraded to its board's address.
    let listener = in_netns(&outside.path, || {
        std::net::TcpListener::bind("0.0.0.0:7777").unwrap()
    });
    let peer = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(b"outside\n").unwrap();
        peer.ip().to_string()
    });
    let out_addr: SocketAddr = format!("{}:7777", outside.ip).parse().unwrap();
    let got = in_netns(&client_ns, move || ask(out_addr));
    assert_eq!(
        got.as_deref(),
        Some("outside"),
        "client pod -> outside host"
    );
    assert_eq!(peer.join().unwrap(), boards[0].ip, "egress is masqueraded");

    // The ClusterIP balances over all three ready pods.
    let svc = m
        .http()
        .get("/api/v1/namespaces/default/services/echo")
        .unwrap()
        .json();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    let vip: SocketAddr = format!("{cluster_ip}:80").parse().unwrap();
    let mut replies = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            replies = count_replies(&client_ns, vip, 30);
            ["echo-a", "echo-b", "echo-c"]
                .iter()
                .all(|b| replies.get(*b).is_some_and(|n| *n > 0))
        }),
        "30 requests to {vip} from the client pod: {replies:?}"
    );
    assert_eq!(replies.values().sum::<usize>(), 30);
    assert!(!replies.contains_key("<no answer>"), "{replies:?}");

    // The NodePort answers a host outside the cluster, on any board.
    for b in [&boards[0], &boards[1]] {
        let addr: SocketAddr = format!("{}:{node_port}", b.ip).parse().unwrap();
        let replies = count_replies(&outside.path, addr, 15);
        assert!(
            replies.keys().all(|k| k.starts_with("echo-")),
            "NodePort {addr} from outside: {replies:?}"
        );
    }

    // An established service connection survives an agent (and so proxy) restart, and the
    // restarted proxy leaves exactly one copy of each rule.
    let (mut conn, first) = in_netns(&client_ns, move || {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        (s, line.trim().to_string())
    });
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut echo = |text: &str| -> String {
        conn.write_all(format!("{text}\n").as_bytes()).unwrap();
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        line.trim().to_string()
    };
    assert_eq!(echo("before"), "before", "connection to {first}");
    let before_rules = iptables_save(&boards[0]);
    let a = agents.remove(0);
    a.terminate();
    assert_eq!(echo("between"), "between", "while the agent is down");
    // While the proxy is down, one of its chains is emptied behind its back: the restarted
    // proxy's first (full) sync puts it back, which also tells that the sync has run.
    let marked = before_rules
        .lines()
        .find(|l| l.starts_with("-A BRAMBLE-SVC-"))
        .expect("a service chain")
        .to_string();
    let chain = marked.split(' ').nth(1).unwrap().to_string();
    boards[0]
        .run(&["iptables", "-t", "nat", "-F", &chain])
        .unwrap();
    assert!(!iptables_save(&boards[0]).contains(&marked));
    agents.insert(0, start_agent("a", false));
    assert!(
        eventually(Duration::from_secs(20), || iptables_save(&boards[0])
            .contains(&marked)),
        "the restarted proxy did not restore {chain}"
    );
    assert_eq!(echo("after"), "after", "after the agent restarted");
    let rules = iptables_save(&boards[0]);
    for jump in [
        "-j BRAMBLE-SERVICES",
        "-j BRAMBLE-POSTROUTING",
        "-j BRAMBLE-NODEPORTS",
        "-j BRAMBLE-FORWARD",
    ] {
        let before = before_rules
            .lines()
            .filter(|l| l.contains(jump) && !l.starts_with("-A BRAMBLE"))
            .count();
        let after = rules
            .lines()
            .filter(|l| l.contains(jump) && !l.starts_with("-A BRAMBLE"))
            .count();
        assert_eq!(before, after, "{jump}: {rules}");
    }
    let mut seen = std::collections::HashSet::new();
    let mut table = "";
    for l in rules.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t;
        } else if l.starts_with("-A ") {
            assert!(
                seen.insert((table, l)),
                "duplicate rule after the restart: {table} {l}"
            );
        }
    }

    // Deleting a backend takes it out of every board's rules within a second, and no
    // request reaches it afterwards.
    let gone_ip = ips["echo-c"].clone();
    let t0 = Instant::now();
    ok_stdout(&m.cli(&["delete", "pod", "echo-c"]));
    let dnat = format!("--to-destination {gone_ip}:8080");
    assert!(
        eventually(Duration::from_secs(5), || boards
            .iter()
            .all(|b| !iptables_save(b).contains(&dnat))),
        "echo-c's endpoint was never removed"
    );
    let took = t0.elapsed();
    println!("a deleted backend left all three boards' rules in {took:?}");
    assert!(
        took <= Duration::from_secs(1),
        "removing the endpoint took {took:?}"
    );
    let replies = count_replies(&client_ns, vip, 30);
    assert!(!replies.contains_key("echo-c"), "{replies:?}");
    // Its veth goes with it.
    assert!(
        eventually(Duration::from_secs(15), || boards[2]
            .run(&["ip", "-o", "link", "show", "master", "bramble0"])
            .unwrap()
            .trim()
            .is_empty()),
        "echo-c's veth stayed"
    );
    assert!(
        replies.keys().all(|k| k == "echo-a" || k == "echo-b"),
        "{replies:?}"
    );

    // A node that leaves the cluster leaves the other boards' routes.
    let c = agents.remove(2);
    c.terminate();
    ok_stdout(&m.cli(&["delete", "node", "board-c"]));
    let c_cidr = cidrs["board-c"].clone();
    assert!(
        eventually(Duration::from_secs(10), || !boards[0]
            .run(&["ip", "route", "show", "proto", "98"])
            .unwrap()
            .contains(&c_cidr)),
        "board-a still routes to the deleted node's pods"
    );

    // Nothing of this reached the host's own namespace.
    let host = in_netns(&host_ns_path, || {
        let link = Command::new("ip")
            .args(["link", "show", "bramble0"])
            .output()
            .unwrap();
        let routes = Command::new("ip")
            .args(["route", "show", "proto", "98"])
            .output()
            .unwrap();
        (
            link.status.success(),
            String::from_utf8_lossy(&routes.stdout).into_owned(),
        )
    });
    assert!(!host.0, "a pod bridge appeared in the host's namespace");
    assert!(
        host.1.trim().is_empty(),
        "pod routes in the host's namespace: {}",
        host.1
    );
    drop(agents);
    drop(m);
}

/// A Service without a selector, and its hand-written Endpoints.
fn manual_service(ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: ext}}
spec:
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: ext}}
subsets:
- addresses: [{{ip: {ip}}}]
  ports: [{{port: 8080}}]
"#
    )
}

#[test]
fn the_standalone_proxy_follows_the_master_and_cleans_up() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut lan = Lan::new().unwrap();
    let host = lan.host("s", 2).unwrap();
    enter_netns(&host.path).unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&manual_service("10.42.0.11"))));
    // The read-only token is enough to follow the master.
    let token = dir.path().join("master/reader.token");
    let mut proxy = Command::new(bramble_tests::bin("bramble-proxy"))
        .args(["--server", &m.url, "--token-file"])
        .arg(&token)
        .args(m.ca_args())
        .args(["--resync", "2s"])
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let rules = || host.run(&["iptables-save", "-t", "nat"]).unwrap();
    let proxy_guard = Kill(&mut proxy);
    assert!(
        eventually(Duration::from_secs(10), || rules()
            .contains("--to-destination 10.42.0.11:8080")),
        "{}",
        rules()
    );
    // An Endpoints change moves the rule.
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&manual_service("10.42.0.12"))));
    assert!(eventually(Duration::from_secs(5), || {
        let r = rules();
        r.contains("--to-destination 10.42.0.12:8080") && !r.contains("10.42.0.11")
    }));
    // A full resync (every 2 s here) puts back a chain emptied behind the proxy's back and
    // leaves one copy of each jump.
    let marked = rules()
        .lines()
        .find(|l| l.contains("--to-destination 10.42.0.12:8080"))
        .unwrap()
        .to_string();
    let chain = marked.split(' ').nth(1).unwrap().to_string();
    host.run(&["iptables", "-t", "nat", "-F", &chain]).unwrap();
    assert!(!rules().contains(&marked));
    assert!(
        eventually(Duration::from_secs(10), || rules().contains(&marked)),
        "the periodic resync did not restore {chain}"
    );
    let r = rules();
    assert_eq!(
        r.lines()
            .filter(|l| *l == "-A PREROUTING -j BRAMBLE-SERVICES")
            .count(),
        1,
        "{r}"
    );
    // The Service's deletion takes its chains away.
    ok_stdout(&m.cli(&["delete", "service", "ext"]));
    assert!(eventually(Duration::from_secs(5), || !rules().contains("BRAMBLE-SVC-")));
    drop(proxy_guard);
    let out = Command::new(bramble_tests::bin("bramble-proxy"))
        .arg("--cleanup")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = host.run(&["iptables-save"]).unwrap();
    assert!(!all.contains("BRAMBLE"), "{all}");
    drop(m);
}
