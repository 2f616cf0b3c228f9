//! Golden files: `render` output for the manifests in `tests/golden/*.yaml` equals
//! `tests/golden/*.rules` (regenerate with `BRAMBLE_UPDATE_GOLDEN=1 cargo test -p
//! bramble-proxy`), and every golden ruleset is accepted by the real `iptables-restore` in a
//! network namespace the test creates and removes (root).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bramble_api::Object;
use bramble_api::manifest::parse_manifests;
use bramble_proxy::{NodeContext, render};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn case(name: &str, node: &NodeContext) -> String {
    let yaml = std::fs::read_to_string(golden_dir().join(format!("{name}.yaml"))).unwrap();
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    for d in parse_manifests(&yaml).unwrap() {
        match d.object {
            Object::Service(s) => services.push(s),
            Object::Endpoints(e) => endpoints.push(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    let got = render(&services, &endpoints, node);
    let path = golden_dir().join(format!("{name}.rules"));
    if std::env::var("BRAMBLE_UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with BRAMBLE_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(got, want, "{name}: render differs from {}", path.display());
    got
}

fn node() -> NodeContext {
    NodeContext {
        cluster_cidr: "10.42.0.0/16".into(),
        existing_chains: vec![],
    }
}

#[test]
fn cluster_ip_balances_over_ready_endpoints() {
    let r = case("cluster-ip", &node());
    assert_eq!(
        r.matches("-j DNAT").count(),
        3,
        "the not-ready address gets no rule"
    );
    assert!(r.contains("--probability 0.33333333349") && r.contains("--probability 0.50000000000"));
}

#[test]
fn node_ports_mark_for_masquerade_and_headless_services_are_skipped() {
    let r = case("node-port", &node());
    assert!(r.contains("--dport 30053") && r.contains("-p udp"));
    assert!(!r.contains("kube-system/db") && !r.contains("default/db"));
}

#[test]
fn a_port_without_endpoints_is_rejected() {
    let r = case("no-endpoints", &node());
    assert_eq!(r.matches("REJECT").count(), 2, "cluster IP and node port");
    assert!(!r.contains("DNAT"));
}

#[test]
fn stale_chains_are_flushed_and_deleted() {
    let n = NodeContext {
        existing_chains: vec![
            "BRAMBLE-SVC-0000000000000001".into(),
            "BRAMBLE-SEP-0000000000000002".into(),
            "OTHER-CHAIN".into(),
        ],
        ..node()
    };
    let r = case("stale", &n);
    assert!(r.contains(":BRAMBLE-SVC-0000000000000001 - [0:0]"));
    assert!(r.contains("-X BRAMBLE-SEP-0000000000000002"));
    assert!(
        !r.contains("OTHER-CHAIN"),
        "never touches chains it does not own"
    );
}

/// Applies each golden ruleset with the real iptables-restore inside a fresh network
/// namespace, twice (a resync), and checks the chains are there exactly once.
#[test]
fn golden_rulesets_apply_with_iptables_restore() {
    let ns = format!("bramble-proxy-golden-{}", std::process::id());
    let run = |args: &[&str], input: Option<&str>| -> String {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = input {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let st = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(
        st.success(),
        "creating a network namespace needs root (CI runs as root)"
    );
    struct Drop_(String);
    impl Drop for Drop_ {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _guard = Drop_(ns.clone());
    for name in ["cluster-ip", "node-port", "no-endpoints"] {
        let rules = std::fs::read_to_string(golden_dir().join(format!("{name}.rules"))).unwrap();
        run(&["iptables-restore", "--noflush"], Some(&rules));
        run(&["iptables-restore", "--noflush"], Some(&rules));
        let saved = run(&["iptables-save"], None);
        // iptables-save prints rules in its own normal form: compare rule counts per chain.
        let count = |text: &str, chain: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("-A {chain} ")))
                .count()
        };
        let chains: std::collections::BTreeSet<&str> = rules
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for c in chains {
            assert_eq!(
                count(&saved, c),
                count(&rules, c),
                "{name}: chain {c} after two applies:\n{saved}"
            );
        }
    }
}
