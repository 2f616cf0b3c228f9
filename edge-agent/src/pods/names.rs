//! A pod's name resolution, as the kubelet sets it up: its `/etc/resolv.conf` (from its
//! `dnsPolicy` and `dnsConfig`), its `/etc/hosts` (its own address and name, `hostAliases`),
//! and the Service environment variables (`WEB_SERVICE_HOST`, the docker-link style
//! `WEB_PORT_80_TCP...`). Pure: the pod manager writes and mounts what these return.

use std::net::Ipv4Addr;

use bramble_api::pod::Pod;
use bramble_api::service::Service;

/// What the node offers for name resolution.
#[derive(Debug, Clone)]
pub struct NodeDns<'a> {
    /// The cluster domain.
    pub domain: &'a str,
    /// The node's cluster DNS server (the bridge's address); None when the agent does not
    /// serve DNS (pods then resolve as with `Default`).
    pub server: Option<Ipv4Addr>,
    /// The board's upstream resolv.conf text (for `Default`).
    pub upstream: &'a str,
}

/// Nameservers, search domains and options of a resolv.conf.
#[derive(Debug, Default, PartialEq)]
struct Resolv {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

impl Resolv {
    fn parse(text: &str) -> Resolv {
        let mut r = Resolv::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(String::from)),
                Some("search" | "domain") => r.searches = words.map(String::from).collect(),
                Some("options") => {
                    for o in words {
                        let (n, v) = match o.split_once(':') {
                            Some((n, v)) => (n.to_string(), Some(v.to_string())),
                            None => (o.to_string(), None),
                        };
                        r.set_option(n, v);
                    }
                }
                _ => {}
            }
        }
        r
    }

    fn set_option(&mut self, name: String, value: Option<String>) {
        match self.options.iter_mut().find(|(n, _)| *n == name) {
            Some(o) => o.1 = value,
            None => self.options.push((name, value)),
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        // The resolver reads at most three nameservers; the kubelet's limits.
        for n in self.nameservers.iter().take(3) {
            out.push_str(&format!("nameserver {n}\n"));
        }
        let mut searches: Vec<&str> = Vec::new();
        for s in &self.searches {
            if !searches.contains(&s.as_str()) && searches.len() < 32 {
                searches.push(s);
            }
        }
        if !searches.is_empty() {
            out.push_str(&format!("search {}\n", searches.join(" ")));
        }
        if !self.options.is_empty() {
            let opts: Vec<String> = self
                .options
                .iter()
                .map(|(n, v)| match v {
                    Some(v) => format!("{n}:{v}"),
                    None => n.clone(),
                })
                .collect();
            out.push_str(&format!("options {}\n", opts.join(" ")));
        }
        out
    }
}

/// The pod's `/etc/resolv.conf`.
pub fn resolv_conf(pod: &Pod, node: &NodeDns) -> String {
    let spec = &pod.spec;
    let cluster = match spec.dns_policy.as_str() {
        "Default" | "None" => false,
        "ClusterFirstWithHostNet" => true,
        // ClusterFirst: a hostNetwork pod falls back to Default, as in Kubernetes.
        _ => !spec.host_network,
    };
    let mut r = match (spec.dns_policy.as_str(), node.server) {
        ("None", _) => Resolv::default(),
        (_, Some(server)) if cluster => {
            let ns = &pod.metadata.namespace;
            let d = node.domain;
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()];
            searches.extend(Resolv::parse(node.upstream).searches);
            Resolv {
                nameservers: vec![server.to_string()],
                searches,
                options: vec![("ndots".into(), Some("5".into()))],
            }
        }
        _ => Resolv::parse(node.upstream),
    };
    if let Some(c) = &spec.dns_config {
        r.nameservers.extend(c.nameservers.iter().cloned());
        r.searches.extend(c.searches.iter().cloned());
        for o in &c.options {
            r.set_option(o.name.clone(), o.value.clone());
        }
    }
    r.render()
}

/// The pod's `/etc/hosts`: localhost, its address with its names (`HOSTNAME` and, with a
/// `subdomain`, `HOSTNAME.SUBDOMAIN.NS.svc.DOMAIN`), then its `hostAliases`.
pub fn hosts(pod: &Pod, pod_ip: &str, domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file (written by bramble-agent).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let hostname = if pod.spec.hostname.is_empty() {
        &pod.metadata.name
    } else {
        &pod.spec.hostname
    };
    if !pod_ip.is_empty() {
        if pod.spec.subdomain.is_empty() {
            out.push_str(&format!("{pod_ip}\t{hostname}\n"));
        } else {
            let ns = &pod.metadata.namespace;
            let sub = &pod.spec.subdomain;
            out.push_str(&format!(
                "{pod_ip}\t{hostname}.{sub}.{ns}.svc.{domain}\t{hostname}\n"
            ));
        }
    }
    if !pod.spec.host_aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in &pod.spec.host_aliases {
            if !a.hostnames.is_empty() {
                out.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.join("\t")));
            }
        }
    }
    out
}

fn env_name(s: &str) -> String {
    s.to_ascii_uppercase().replace('-', "_")
}

/// The Service environment variables for `pod` from `services` (those of its namespace
/// with a ClusterIP), unless `enableServiceLinks: false`, as the kubelet makes them.
pub fn service_env<'a>(
    pod: &Pod,
    services: impl IntoIterator<Item = &'a Service>,
) -> Vec<(String, String)> {
    if pod.spec.enable_service_links == Some(false) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for s in services {
        if s.metadata.namespace != pod.metadata.namespace {
            continue;
        }
        let ip = &s.spec.cluster_ip;
        if ip.is_empty() || ip == "None" || s.spec.ports.is_empty() {
            continue;
        }
        let name = env_name(&s.metadata.name);
        let first = &s.spec.ports[0];
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &s.spec.ports {
            if !p.name.is_empty() {
                out.push((
                    format!("{name}_SERVICE_PORT_{}", env_name(&p.name)),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &str| {
            if p.is_empty() {
                "tcp".to_string()
            } else {
                p.to_ascii_lowercase()
            }
        };
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(&first.protocol), first.port),
        ));
        for p in &s.spec.ports {
            let pr = proto(&p.protocol);
            let prefix = format!("{name}_PORT_{}_{}", p.port, pr.to_ascii_uppercase());
            out.push((prefix.clone(), format!("{pr}://{ip}:{}", p.port)));
            out.push((format!("{prefix}_PROTO"), pr));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bramble_api::pod::{HostAlias, PodDnsConfig, PodDnsConfigOption};
    use bramble_api::service::{ServicePort, ServiceSpec};

    use super::*;

    fn pod(yaml_spec: &str) -> Pod {
        let mut p: Pod = serde_norway::from_str(&format!(
            "metadata: {{name: web-0, namespace: shop}}\nspec:\n{yaml_spec}  containers: [{{name: c, image: i}}]\n"
        ))
        .unwrap();
        p.metadata.namespace = "shop".into();
        p
    }

    const UPSTREAM: &str =
        "# host\nnameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch lan\noptions edns0\n";

    fn node(server: Option<Ipv4Addr>) -> NodeDns<'static> {
        NodeDns {
            domain: "cluster.local",
            server,
            upstream: UPSTREAM,
        }
    }

    const GW: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 42, 1, 1));

    #[test]
    fn cluster_first_by_default() {
        assert_eq!(
            resolv_conf(&pod(""), &node(GW)),
            "nameserver 10.42.1.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local lan\noptions ndots:5\n"
        );
        // Without the node's DNS server, or on the host's network: the board's resolvers.
        let board = "nameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch lan\noptions edns0\n";
        assert_eq!(resolv_conf(&pod(""), &node(None)), board);
        assert_eq!(resolv_conf(&pod("  hostNetwork: true\n"), &node(GW)), board);
        assert_eq!(
            resolv_conf(&pod("  dnsPolicy: Default\n"), &node(GW)),
            board
        );
        assert!(
            resolv_conf(
                &pod("  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n"),
                &node(GW)
            )
            .starts_with("nameserver 10.42.1.1\n")
        );
    }

    #[test]
    fn dns_config_merges_or_stands_alone() {
        let mut p = pod("  dnsPolicy: None\n");
        p.spec.dns_config = Some(PodDnsConfig {
            nameservers: vec!["1.1.1.1".into()],
            searches: vec!["a.example".into()],
            options: vec![PodDnsConfigOption {
                name: "ndots".into(),
                value: Some("2".into()),
            }],
        });
        assert_eq!(
            resolv_conf(&p, &node(GW)),
            "nameserver 1.1.1.1\nsearch a.example\noptions ndots:2\n"
        );
        p.spec.dns_policy = String::new();
        assert_eq!(
            resolv_conf(&p, &node(GW)),
            "nameserver 10.42.1.1\nnameserver 1.1.1.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local lan a.example\noptions ndots:2\n",
            "merged: an option given again is replaced"
        );
    }

    #[test]
    fn hosts_name_the_pod_and_its_aliases() {
        let mut p = pod("  hostname: db\n  subdomain: dbs\n");
        p.spec.host_aliases = vec![HostAlias {
            ip: "192.0.2.9".into(),
            hostnames: vec!["foo.local".into(), "bar.local".into()],
        }];
        let h = hosts(&p, "10.42.1.7", "cluster.local");
        assert!(h.contains("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(
            h.contains("10.42.1.7\tdb.dbs.shop.svc.cluster.local\tdb\n"),
            "{h}"
        );
        assert!(h.ends_with("192.0.2.9\tfoo.local\tbar.local\n"), "{h}");
        assert!(hosts(&pod(""), "10.42.1.8", "cluster.local").contains("10.42.1.8\tweb-0\n"));
    }

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = name.into();
        s.metadata.namespace = ns.into();
        s.spec = ServiceSpec {
            cluster_ip: ip.into(),
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    port: 80,
                    ..Default::default()
                },
                ServicePort {
                    name: "metrics".into(),
                    port: 9100,
                    protocol: "UDP".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        s
    }

    #[test]
    fn service_links_as_the_kubelet_writes_them() {
        let services = [
            svc("shop", "redis-main", "10.43.0.5"),
            svc("other", "web", "10.43.0.6"),
            svc("shop", "headless", "None"),
        ];
        let env = service_env(&pod(""), &services);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("REDIS_MAIN_SERVICE_HOST"), Some("10.43.0.5"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT"), Some("80"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT_METRICS"), Some("9100"));
        assert_eq!(get("REDIS_MAIN_PORT"), Some("tcp://10.43.0.5:80"));
        assert_eq!(get("REDIS_MAIN_PORT_80_TCP"), Some("tcp://10.43.0.5:80"));
        assert_eq!(get("REDIS_MAIN_PORT_9100_UDP_PROTO"), Some("udp"));
        assert_eq!(get("REDIS_MAIN_PORT_80_TCP_ADDR"), Some("10.43.0.5"));
        assert_eq!(get("WEB_SERVICE_HOST"), None, "another namespace");
        assert_eq!(get("HEADLESS_SERVICE_HOST"), None, "no ClusterIP");
        let off = pod("  enableServiceLinks: false\n");
        assert!(service_env(&off, &services).is_empty());
    }
}
