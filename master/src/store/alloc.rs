//! ClusterIPs and NodePorts, allocated inside the store's writer: a Service's addresses are
//! decided in the same transaction that stores it, so no two Services ever share one, an
//! explicit `clusterIP` or `nodePort` is honoured only if free and in range, and deleting a
//! Service frees them (they live only in the Service objects).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use bramble_api::error::{FieldError, Invalid};
use bramble_api::net::Cidr;
use bramble_api::service::Service;

use super::StoreError;

/// Where Services' addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRanges {
    /// The service CIDR.
    pub cidr: Cidr,
    /// The NodePort range, inclusive.
    pub node_ports: (i32, i32),
}

impl Default for ServiceRanges {
    fn default() -> Self {
        // k3s's defaults.
        ServiceRanges {
            cidr: Cidr {
                base: Ipv4Addr::new(10, 43, 0, 0),
                prefix: 16,
            },
            node_ports: (30000, 32767),
        }
    }
}

/// Why the Service CIDR or the node port range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error(transparent)]
    Cidr(#[from] bramble_api::net::CidrError),
    #[error("{0:?}: the prefix length must be between 8 and 29")]
    Prefix(String),
    #[error("{0:?} is not a port range like 30000-32767")]
    Ports(String),
}

impl ServiceRanges {
    /// The service CIDR, e.g. `10.43.0.0/16`.
    pub fn cidr_string(&self) -> String {
        self.cidr.to_string()
    }

    /// Parses `10.43.0.0/16` and `30000-32767`.
    pub fn parse(cidr: &str, node_ports: &str) -> Result<ServiceRanges, RangeError> {
        let network = Cidr::parse(cidr)?;
        if !(8..=29).contains(&network.prefix) {
            return Err(RangeError::Prefix(cidr.to_string()));
        }
        let (lo, hi) = node_ports
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<i32>().ok()?, b.parse::<i32>().ok()?)))
            .filter(|(a, b)| 0 < *a && a <= b && *b <= 65535)
            .ok_or_else(|| RangeError::Ports(node_ports.to_string()))?;
        Ok(ServiceRanges {
            cidr: network,
            node_ports: (lo, hi),
        })
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(ip)
    }

    /// The CIDR's host addresses (not its network and broadcast addresses), lowest first.
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.cidr.base);
        let size = 1u32 << (32 - self.cidr.prefix);
        (1..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }
}

fn invalid(svc: &Service, field: &str, msg: String) -> StoreError {
    StoreError::Invalid(Invalid {
        what: format!("service {:?}", svc.metadata.name),
        errors: vec![FieldError::new(field, msg)],
    })
}

/// Addresses in use by the other Services.
pub struct InUse {
    pub ips: BTreeSet<Ipv4Addr>,
    pub ports: BTreeSet<i32>,
}

impl InUse {
    pub fn of<'a>(others: impl Iterator<Item = &'a Service>) -> InUse {
        let mut u = InUse {
            ips: BTreeSet::new(),
            ports: BTreeSet::new(),
        };
        for s in others {
            if let Ok(ip) = s.spec.cluster_ip.parse() {
                u.ips.insert(ip);
            }
            u.ports
                .extend(s.spec.ports.iter().filter_map(|p| p.node_port));
        }
        u
    }
}

fn wants_node_ports(svc: &Service) -> bool {
    matches!(svc.spec.type_.as_str(), "NodePort" | "LoadBalancer")
}

/// Fills in (or checks) the Service's ClusterIP and NodePorts.
pub fn allocate(svc: &mut Service, ranges: &ServiceRanges, used: &InUse) -> Result<(), StoreError> {
    if svc.spec.type_ == "ExternalName" {
        // A DNS alias: no address, no ports on the nodes.
        return Ok(());
    }
    let cip = svc.spec.cluster_ip.clone();
    if cip != "None" {
        if cip.is_empty() {
            let free = ranges
                .hosts()
                .find(|ip| !used.ips.contains(ip))
                .ok_or_else(|| {
                    invalid(
                        svc,
                        "spec.clusterIP",
                        format!(
                            "no free address left in the service CIDR {}/{}",
                            ranges.cidr.base, ranges.cidr.prefix
                        ),
                    )
                })?;
            svc.spec.cluster_ip = free.to_string();
        } else {
            let ip: Ipv4Addr = cip.parse().map_err(|_| {
                invalid(
                    svc,
                    "spec.clusterIP",
                    format!("{cip:?} is not an IPv4 address"),
                )
            })?;
            if !ranges.contains(ip) {
                return Err(invalid(
                    svc,
                    "spec.clusterIP",
                    format!(
                        "{ip} is not in the service CIDR {}/{}",
                        ranges.cidr.base, ranges.cidr.prefix
                    ),
                ));
            }
            if used.ips.contains(&ip) {
                return Err(invalid(
                    svc,
                    "spec.clusterIP",
                    format!("provided IP {ip} is already allocated"),
                ));
            }
        }
        svc.spec.cluster_ips = vec![svc.spec.cluster_ip.clone()];
    }
    if !wants_node_ports(svc) {
        return Ok(());
    }
    let mut taken = used.ports.clone();
    let (lo, hi) = ranges.node_ports;
    for i in 0..svc.spec.ports.len() {
        match svc.spec.ports[i].node_port {
            Some(p) => {
                let field = format!("spec.ports[{i}].nodePort");
                if !(lo..=hi).contains(&p) {
                    return Err(invalid(
                        svc,
                        &field,
                        format!("{p} is not in the node port range {lo}-{hi}"),
                    ));
                }
                if !taken.insert(p) {
                    return Err(invalid(
                        svc,
                        &field,
                        format!("provided port {p} is already allocated"),
                    ));
                }
            }
            None => {
                let p = (lo..=hi).find(|p| !taken.contains(p)).ok_or_else(|| {
                    invalid(
                        svc,
                        &format!("spec.ports[{i}].nodePort"),
                        format!("no free port left in the node port range {lo}-{hi}"),
                    )
                })?;
                taken.insert(p);
                svc.spec.ports[i].node_port = Some(p);
            }
        }
    }
    Ok(())
}
