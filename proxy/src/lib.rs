//! bramble-proxy: turns Services and Endpoints into iptables rules. The agent embeds this
//! library; `bramble-proxy` runs it standalone.
//!
//! [`render`] is a pure function from the cluster's Services and Endpoints to
//! `iptables-restore` input for Bramble's own chains only, in the shape of kube-proxy's
//! iptables mode: `BRAMBLE-SERVICES` matches ClusterIPs (and hands local-address traffic to
//! `BRAMBLE-NODEPORTS`), a `BRAMBLE-SVC-*` chain per service port balances over its
//! endpoints with random probabilities, a `BRAMBLE-SEP-*` chain per endpoint DNATs to it,
//! and traffic that needs it is marked for masquerading in `BRAMBLE-POSTROUTING`. A port
//! without endpoints is rejected in the filter table. Chains a previous ruleset had and this
//! one does not are flushed and deleted, so the whole ruleset applies atomically with
//! `iptables-restore --noflush`, touching no rule Bramble does not own.

pub mod iptables;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use bramble_api::meta::IntOrString;
use bramble_api::service::{Endpoints, Service};

/// The chain that matches service addresses (nat and filter tables).
pub const SERVICES: &str = "BRAMBLE-SERVICES";
/// NodePorts, reached from `BRAMBLE-SERVICES` for traffic to a local address.
pub const NODEPORTS: &str = "BRAMBLE-NODEPORTS";
/// Masquerades marked traffic (jumped to from nat POSTROUTING).
pub const POSTROUTING: &str = "BRAMBLE-POSTROUTING";
/// Marks traffic for masquerading.
pub const MARK_MASQ: &str = "BRAMBLE-MARK-MASQ";
/// The fwmark bit Bramble uses for "masquerade this".
pub const MASQ_MARK: &str = "0x4000/0x4000";

/// What the ruleset depends on besides Services and Endpoints.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    /// The pod network (traffic to a ClusterIP from outside it is masqueraded).
    pub cluster_cidr: String,
    /// Bramble's per-service and per-endpoint chains that exist now (from
    /// `iptables-save`); those no longer needed are deleted.
    pub existing_chains: Vec<String>,
}

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Backend {
    ip: String,
    port: i32,
}

fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `BRAMBLE-SVC-<16 hex>`: 28 characters, within iptables' chain name limit.
fn chain(prefix: &str, key: &str) -> String {
    format!("BRAMBLE-{prefix}-{:016X}", fnv64(key))
}

fn proto(p: &str) -> String {
    if p.is_empty() {
        "tcp".into()
    } else {
        p.to_ascii_lowercase()
    }
}

/// The ready endpoints of one service port: by port name (Endpoints name their ports like
/// the Service), or the only port when the Service has one unnamed port.
fn backends(
    svc: &Service,
    port_name: &str,
    target: &Option<IntOrString>,
    eps: Option<&Endpoints>,
) -> Vec<Backend> {
    let Some(eps) = eps else { return Vec::new() };
    let mut out = BTreeSet::new();
    for subset in &eps.subsets {
        let port = subset
            .ports
            .iter()
            .find(|p| p.name == port_name)
            .or_else(|| {
                (svc.spec.ports.len() == 1)
                    .then(|| subset.ports.first())
                    .flatten()
            })
            .map(|p| p.port)
            .or(match target {
                Some(IntOrString::Int(n)) => Some(*n),
                _ => None,
            });
        let Some(port) = port else { continue };
        for a in &subset.addresses {
            out.insert(Backend {
                ip: a.ip.clone(),
                port,
            });
        }
    }
    out.into_iter().collect()
}

/// The ruleset for `services` and their `endpoints` (matched by namespace and name).
pub fn render(services: &[Service], endpoints: &[Endpoints], node: &NodeContext) -> String {
    let mut nat_chains: Vec<String> = vec![
        SERVICES.into(),
        NODEPORTS.into(),
        POSTROUTING.into(),
        MARK_MASQ.into(),
    ];
    let mut nat = String::new();
    let mut filter = String::new();
    let _ = writeln!(
        nat,
        "-A {POSTROUTING} -m mark ! --mark {MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(nat, "-A {POSTROUTING} -j MARK --xor-mark 0x4000");
    let _ = writeln!(
        nat,
        "-A {POSTROUTING} -m comment --comment \"bramble service traffic requiring SNAT\" -j MASQUERADE"
    );
    let _ = writeln!(nat, "-A {MARK_MASQ} -j MARK --or-mark 0x4000");
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut svc_rules = String::new();
    let mut nodeport_rules = String::new();
    let mut chain_rules = String::new();
    for svc in sorted {
        let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
        let cip = &svc.spec.cluster_ip;
        if cip.is_empty() || cip == "None" {
            continue;
        }
        let eps = endpoints
            .iter()
            .find(|e| &e.metadata.namespace == ns && &e.metadata.name == name);
        for p in &svc.spec.ports {
            let pr = proto(&p.protocol);
            let label = if p.name.is_empty() {
                format!("{ns}/{name}")
            } else {
                format!("{ns}/{name}:{}", p.name)
            };
            let key = format!("{ns}/{name}:{}:{pr}", p.name);
            let svc_chain = chain("SVC", &key);
            let bs = backends(svc, &p.name, &p.target_port, eps);
            if bs.is_empty() {
                let _ = writeln!(
                    filter,
                    "-A {SERVICES} -d {cip}/32 -p {pr} -m comment --comment \"{label} has no endpoints\" -m {pr} --dport {} -j REJECT --reject-with icmp-port-unreachable",
                    p.port
                );
                if let Some(np) = p.node_port {
                    let _ = writeln!(
                        filter,
                        "-A {NODEPORTS} -p {pr} -m comment --comment \"{label} has no endpoints\" -m addrtype --dst-type LOCAL -m {pr} --dport {np} -j REJECT --reject-with icmp-port-unreachable"
                    );
                }
                continue;
            }
            nat_chains.push(svc_chain.clone());
            let _ = writeln!(
                svc_rules,
                "-A {SERVICES} -d {cip}/32 -p {pr} -m comment --comment \"{label} cluster IP\" -m {pr} --dport {} -j {svc_chain}",
                p.port
            );
            if !node.cluster_cidr.is_empty() {
                let _ = writeln!(
                    chain_rules,
                    "-A {svc_chain} ! -s {} -d {cip}/32 -p {pr} -m comment --comment \"{label} cluster IP\" -m {pr} --dport {} -j {MARK_MASQ}",
                    node.cluster_cidr, p.port
                );
            }
            if let Some(np) = p.node_port {
                let _ = writeln!(
                    nodeport_rules,
                    "-A {NODEPORTS} -p {pr} -m comment --comment \"{label}\" -m {pr} --dport {np} -j {MARK_MASQ}"
                );
                let _ = writeln!(
                    nodeport_rules,
                    "-A {NODEPORTS} -p {pr} -m comment --comment \"{label}\" -m {pr} --dport {np} -j {svc_chain}"
                );
            }
            let n = bs.len();
            for (i, b) in bs.iter().enumerate() {
                let sep = chain("SEP", &format!("{key}:{}:{}", b.ip, b.port));
                nat_chains.push(sep.clone());
                if i + 1 < n {
                    let prob = 1.0 / (n - i) as f64;
                    let _ = writeln!(
                        chain_rules,
                        "-A {svc_chain} -m comment --comment \"{label} -> {}:{}\" -m statistic --mode random --probability {prob:.10} -j {sep}",
                        b.ip, b.port
                    );
                } else {
                    let _ = writeln!(
                        chain_rules,
                        "-A {svc_chain} -m comment --comment \"{label} -> {}:{}\" -j {sep}",
                        b.ip, b.port
                    );
                }
                // Hairpin: a pod reaching itself through the service is masqueraded.
                let _ = writeln!(
                    chain_rules,
                    "-A {sep} -s {}/32 -m comment --comment \"{label}\" -j {MARK_MASQ}",
                    b.ip
                );
                let _ = writeln!(
                    chain_rules,
                    "-A {sep} -p {pr} -m comment --comment \"{label}\" -m {pr} -j DNAT --to-destination {}:{}",
                    b.ip, b.port
                );
            }
        }
    }
    nat.push_str(&svc_rules);
    let _ = writeln!(
        nat,
        "-A {SERVICES} -m comment --comment \"bramble service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j {NODEPORTS}"
    );
    nat.push_str(&nodeport_rules);
    nat.push_str(&chain_rules);
    let wanted: BTreeSet<&String> = nat_chains.iter().collect();
    let stale: Vec<&String> = node
        .existing_chains
        .iter()
        .filter(|c| {
            (c.starts_with("BRAMBLE-SVC-") || c.starts_with("BRAMBLE-SEP-")) && !wanted.contains(c)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = String::from("*filter\n");
    let _ = writeln!(out, ":{SERVICES} - [0:0]");
    let _ = writeln!(out, ":{NODEPORTS} - [0:0]");
    out.push_str(&filter);
    out.push_str("COMMIT\n*nat\n");
    for c in nat_chains.iter().chain(stale.iter().copied()) {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(&nat);
    for c in stale {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chains(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.starts_with(':')).collect()
    }

    #[test]
    fn chain_names_fit_iptables_and_are_stable() {
        let c = chain("SVC", "default/web:http:tcp");
        assert_eq!(c.len(), 28);
        assert_eq!(c, chain("SVC", "default/web:http:tcp"));
        assert_ne!(c, chain("SVC", "default/web:https:tcp"));
    }

    #[test]
    fn an_empty_cluster_has_only_the_base_chains() {
        let r = render(&[], &[], &NodeContext::default());
        assert_eq!(chains(&r).len(), 6);
        assert!(r.contains("-j MASQUERADE"));
        assert!(r.ends_with("COMMIT\n"));
    }
}
