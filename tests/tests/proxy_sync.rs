//! The proxy's syncs against a real kernel (as root, in a network namespace the test makes
//! and removes): a full sync compares with what `iptables-save` shows and writes only what
//! differs — nothing when the kernel already matches (so the rendered rules are exactly what
//! iptables prints back), one chain when one chain was flushed behind the proxy's back —
//! and puts back a missing or doubled jump; a partial sync writes only the changed chains.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use bramble_api::service::{Endpoints, Service};
use bramble_proxy::{NodeContext, Syncer, iptables};
use bramble_tests::netlab::{Lan, in_netns};
use bramble_tests::require_root;

/// 20 Services with 3 endpoints each; the first has `first_endpoints` and a NodePort.
fn cluster(n: usize, first_endpoints: usize) -> (Vec<Service>, Vec<Endpoints>) {
    bramble_tests::services::cluster(n, 3, first_endpoints, Some(30080))
}

#[test]
fn full_syncs_write_only_what_the_kernel_lacks() {
    require_root();
    let mut lan = Lan::new().unwrap();
    let host = lan.host("p", 2).unwrap();
    let h = host.clone();
    in_netns(&host.path, move || {
        let b = iptables::detect().unwrap();
        let node = NodeContext {
            cluster_cidr: "10.42.0.0/16".into(),
            existing_chains: Vec::new(),
        };
        let (s, e) = cluster(20, 5);
        let mut sy = Syncer::new(b);
        let first = sy.sync(&s, &e, &node).unwrap();
        assert!(first.full && first.lines > 100, "{first:?}");
        // A new proxy (a restart) finds everything in place: nothing to write.
        let mut again = Syncer::new(b);
        let st = again.sync(&s, &e, &node).unwrap();
        assert!(st.full);
        assert_eq!(
            st.lines, 0,
            "the kernel's rules differ from the rendered ones"
        );
        // One endpoint fewer: a partial sync rewrites that service's chain and drops one
        // endpoint chain, nothing else.
        let (s2, e2) = cluster(20, 4);
        let st = again.sync(&s2, &e2, &node).unwrap();
        assert!(!st.full);
        assert!(st.lines > 0 && st.lines < 12, "{st:?}");
        // A chain flushed behind the proxy's back, a jump removed and one doubled: the next
        // full sync puts back exactly that.
        let save = h.run(&["iptables-save", "-t", "nat"]).unwrap();
        let svc_chain = save
            .lines()
            .find_map(|l| l.strip_prefix(":BRAMBLE-SVC-"))
            .map(|l| format!("BRAMBLE-SVC-{}", l.split(' ').next().unwrap()))
            .unwrap();
        h.run(&["iptables", "-t", "nat", "-F", &svc_chain]).unwrap();
        h.run(&[
            "iptables",
            "-t",
            "nat",
            "-D",
            "OUTPUT",
            "-j",
            "BRAMBLE-SERVICES",
        ])
        .unwrap();
        h.run(&[
            "iptables",
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "-j",
            "BRAMBLE-SERVICES",
        ])
        .unwrap();
        let mut fresh = Syncer::new(b);
        let st = fresh.sync(&s2, &e2, &node).unwrap();
        assert!(st.full);
        assert!(st.lines > 0 && st.lines < 10, "{st:?}");
        let after = h.run(&["iptables-save"]).unwrap();
        let live = iptables::parse_live(&after);
        assert!(live.jumps.iter().all(|n| *n == 1), "{:?}", live.jumps);
        let mut check = Syncer::new(b);
        assert_eq!(check.sync(&s2, &e2, &node).unwrap().lines, 0, "{after}");
        iptables::cleanup(b).unwrap();
    });
    let all = host.run(&["iptables-save"]).unwrap();
    assert!(!all.contains("BRAMBLE"), "{all}");
}
