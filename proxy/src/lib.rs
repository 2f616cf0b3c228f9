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

pub mod follow;
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
/// Accepts forwarded pod traffic (jumped to from filter FORWARD), so that a host whose
/// FORWARD policy is DROP (Docker sets it) still routes pods.
pub const FORWARD: &str = "BRAMBLE-FORWARD";
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

use bramble_support::fnv64;

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

/// `1/n` as `iptables-save` prints it back: the kernel keeps the probability as a 31-bit
/// fraction, printed with 11 decimals.
fn probability(n: usize) -> String {
    let scaled = (2f64.powi(31) / n as f64).round();
    format!("{:.11}", scaled / 2f64.powi(31))
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

/// The ruleset for `services` and their `endpoints` (matched by namespace and name), as
/// `iptables-restore` input that rewrites every Bramble chain and deletes stale ones.
pub fn render(services: &[Service], endpoints: &[Endpoints], node: &NodeContext) -> String {
    build(services, endpoints, node).text(None, &node.existing_chains)
}

/// A ruleset as chains with their rules, per table, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub filter: Vec<(String, Vec<String>)>,
    pub nat: Vec<(String, Vec<String>)>,
}

/// Groups `-A CHAIN ...` lines by chain, in the order of `chains`.
fn group(chains: &[String], text: &str) -> Vec<(String, Vec<String>)> {
    let index: std::collections::HashMap<&str, usize> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut out: Vec<(String, Vec<String>)> =
        chains.iter().map(|c| (c.clone(), Vec::new())).collect();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rest.split(' ').next().unwrap_or("");
        if let Some(&i) = index.get(chain) {
            out[i].1.push(line.to_string());
        }
    }
    out
}

impl Ruleset {
    /// `iptables-restore --noflush` input. With `previous` (what was applied last), only
    /// chains whose rules changed are written: one endpoint change rewrites one service
    /// chain and its endpoint chains, not thousands of rules. Chains in `previous` or
    /// `existing` that this ruleset lacks are flushed and deleted.
    pub fn text(&self, previous: Option<&Ruleset>, existing: &[String]) -> String {
        let mut out = String::new();
        for (table, chains, before) in [
            ("filter", &self.filter, previous.map(|p| &p.filter)),
            ("nat", &self.nat, previous.map(|p| &p.nat)),
        ] {
            let before_map: Option<std::collections::HashMap<&String, &Vec<String>>> =
                before.map(|b| b.iter().map(|(c, r)| (c, r)).collect());
            let changed: Vec<&(String, Vec<String>)> = chains
                .iter()
                .filter(|(c, rules)| {
                    before_map
                        .as_ref()
                        .is_none_or(|m| m.get(c).is_none_or(|r| *r != rules))
                })
                .collect();
            let mut stale: BTreeSet<&String> = BTreeSet::new();
            if table == "nat" {
                let known = before
                    .into_iter()
                    .flat_map(|b| b.iter().map(|(c, _)| c))
                    .chain(existing.iter())
                    .filter(|c| c.starts_with("BRAMBLE-SVC-") || c.starts_with("BRAMBLE-SEP-"));
                let current: BTreeSet<&String> = chains.iter().map(|(c, _)| c).collect();
                stale = known.filter(|c| !current.contains(c)).collect();
            }
            let _ = writeln!(out, "*{table}");
            for (c, _) in &changed {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for c in &stale {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for (_, rules) in &changed {
                for r in rules {
                    out.push_str(r);
                    out.push('\n');
                }
            }
            for c in &stale {
                let _ = writeln!(out, "-X {c}");
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// The ruleset for `services` and their `endpoints`.
pub fn build(services: &[Service], endpoints: &[Endpoints], node: &NodeContext) -> Ruleset {
    let mut nat_chains: Vec<String> = vec![
        SERVICES.into(),
        NODEPORTS.into(),
        POSTROUTING.into(),
        MARK_MASQ.into(),
    ];
    let mut nat = String::new();
    let mut filter = String::new();
    if !node.cluster_cidr.is_empty() {
        let c = &node.cluster_cidr;
        let _ = writeln!(
            nat,
            "-A {POSTROUTING} -s {c} ! -d {c} -m comment --comment \"pod traffic leaving the cluster\" -j MASQUERADE"
        );
        let _ = writeln!(
            filter,
            "-A {FORWARD} -s {c} -m comment --comment \"pod traffic\" -j ACCEPT"
        );
        let _ = writeln!(
            filter,
            "-A {FORWARD} -d {c} -m comment --comment \"pod traffic\" -j ACCEPT"
        );
    }
    let _ = writeln!(
        nat,
        "-A {POSTROUTING} -m mark ! --mark {MASQ_MARK} -j RETURN"
    );
    // Rules are written as `iptables-save` prints them back, so that a full resync can
    // compare the kernel's rules with these line by line (`--xor-mark 0x4000` reads back as
    // this, `--or-mark` as the one below).
    let _ = writeln!(nat, "-A {POSTROUTING} -j MARK --set-xmark 0x4000/0x0");
    let _ = writeln!(
        nat,
        "-A {POSTROUTING} -m comment --comment \"bramble service traffic requiring SNAT\" -j MASQUERADE"
    );
    let _ = writeln!(nat, "-A {MARK_MASQ} -j MARK --set-xmark 0x4000/0x4000");
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
                    let prob = probability(n - i);
                    let _ = writeln!(
                        chain_rules,
                        "-A {svc_chain} -m comment --comment \"{label} -> {}:{}\" -m statistic --mode random --probability {prob} -j {sep}",
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
    Ruleset {
        filter: group(
            &[
                SERVICES.to_string(),
                NODEPORTS.to_string(),
                FORWARD.to_string(),
            ],
            &filter,
        ),
        nat: group(&nat_chains, &nat),
    }
}

/// Keeps the node's rules in step: a full sync (every chain, stale ones deleted, as read
/// from `iptables-save`) first, after a failure and every `resync_every`; otherwise only the
/// chains that changed since the last apply.
pub struct Syncer {
    backend: iptables::Backend,
    previous: Option<Ruleset>,
    last_full: Option<std::time::Instant>,
    pub resync_every: std::time::Duration,
}

/// What one sync did.
#[derive(Debug, Clone, Copy)]
pub struct SyncStats {
    pub full: bool,
    /// Chain declarations and rules written (0: nothing differed).
    pub lines: usize,
}

impl Syncer {
    pub fn new(backend: iptables::Backend) -> Syncer {
        Syncer {
            backend,
            previous: None,
            last_full: None,
            resync_every: std::time::Duration::from_secs(60),
        }
    }

    /// Renders and applies; a partial sync when nothing is due, else a full one.
    pub fn sync(
        &mut self,
        services: &[Service],
        endpoints: &[Endpoints],
        node: &NodeContext,
    ) -> Result<SyncStats, iptables::IptablesError> {
        let ruleset = build(services, endpoints, node);
        let full = self.previous.is_none()
            || self
                .last_full
                .is_none_or(|t| t.elapsed() >= self.resync_every);
        // A full sync compares with what the kernel holds (not with what was applied last),
        // so rules changed or removed behind the proxy's back are put back; either way only
        // the chains that differ are written.
        let live = if full {
            Some(iptables::read(self.backend)?)
        } else {
            None
        };
        let against = live.as_ref().map(|l| &l.rules).or(self.previous.as_ref());
        let text = ruleset.text(against, &[]);
        self.previous = None;
        let lines = text
            .lines()
            .filter(|l| l.starts_with('-') || l.starts_with(':'))
            .count();
        if lines > 0 {
            iptables::restore(self.backend, &text)?;
        }
        if let Some(l) = &live {
            iptables::fix_jumps(self.backend, &l.jumps)?;
        }
        self.previous = Some(ruleset);
        if full {
            self.last_full = Some(std::time::Instant::now());
        }
        Ok(SyncStats { full, lines })
    }
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
    fn a_change_rewrites_only_the_chains_it_touches() {
        use bramble_api::service::{EndpointAddress, EndpointPort, EndpointSubset, ServicePort};
        let svc = |name: &str, ip: &str| {
            let mut s = Service::default();
            s.metadata.name = name.into();
            s.metadata.namespace = "default".into();
            s.spec.cluster_ip = ip.into();
            s.spec.ports = vec![ServicePort {
                name: "http".into(),
                port: 80,
                ..Default::default()
            }];
            s
        };
        let eps = |name: &str, ips: &[&str]| {
            let mut e = Endpoints::default();
            e.metadata.name = name.into();
            e.metadata.namespace = "default".into();
            e.subsets = vec![EndpointSubset {
                addresses: ips
                    .iter()
                    .map(|ip| EndpointAddress {
                        ip: ip.to_string(),
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
            e
        };
        let services = [svc("a", "10.43.0.1"), svc("b", "10.43.0.2")];
        let node = NodeContext::default();
        let before = build(
            &services,
            &[
                eps("a", &["10.42.0.5", "10.42.0.6"]),
                eps("b", &["10.42.0.7"]),
            ],
            &node,
        );
        let after = build(
            &services,
            &[eps("a", &["10.42.0.5"]), eps("b", &["10.42.0.7"])],
            &node,
        );
        let text = after.text(Some(&before), &[]);
        let declared = chains(&text);
        // a's service chain (one jump fewer) and the removed endpoint's chain, nothing else.
        assert_eq!(declared.len(), 2, "{text}");
        assert!(text.contains("default/a:http -> 10.42.0.5:8080"));
        assert!(!text.contains("default/b"), "b is untouched: {text}");
        assert_eq!(text.matches("\n-X BRAMBLE-SEP-").count(), 1, "{text}");
        // Nothing changed: nothing is written.
        assert!(chains(&after.text(Some(&after), &[])).is_empty());
    }

    #[test]
    fn an_empty_cluster_has_only_the_base_chains() {
        let r = render(&[], &[], &NodeContext::default());
        assert_eq!(chains(&r).len(), 7);
        assert!(r.contains("-j MASQUERADE"));
        assert!(r.ends_with("COMMIT\n"));
        assert!(
            !r.contains("leaving the cluster"),
            "no pod network, no egress rule"
        );
        let with_pods = render(
            &[],
            &[],
            &NodeContext {
                cluster_cidr: "10.42.0.0/16".into(),
                existing_chains: Vec::new(),
            },
        );
        assert!(with_pods.contains(
            "-A BRAMBLE-POSTROUTING -s 10.42.0.0/16 ! -d 10.42.0.0/16 -m comment --comment \"pod traffic leaving the cluster\" -j MASQUERADE"
        ));
        assert!(with_pods.contains("-A BRAMBLE-FORWARD -d 10.42.0.0/16"));
    }
}
