//! The pod dataplane: a bridge holding the first address of the node's pod CIDR, one veth
//! pair per pod (the pod's end renamed `eth0` in its network namespace, with the pod IP and
//! a default route through the bridge), routes to the other nodes' pod CIDRs through their
//! addresses (host-gw: boards share a LAN), and the sysctls that routing needs. All through
//! netlink; egress masquerading and forwarding rules come with the proxy's ruleset.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::Cidr;
use super::netlink::{BRAMBLE_ROUTE_PROTOCOL, Netlink, NetlinkError, Route};

/// Why the node's or a pod's network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{path}: {source}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("bridge {0} vanished")]
    BridgeVanished(String),
    #[error("{path}: {source}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Duplicating the handle of the pod's namespace for a thread.
    #[error("{0}")]
    CloneNetns(#[source] std::io::Error),
    #[error("entering the pod's network namespace: {0}")]
    EnterNetns(#[source] nix::Error),
    #[error("the pod network thread panicked")]
    ThreadPanicked,
    #[error("the veth peer vanished")]
    PeerVanished,
    #[error("the host veth vanished")]
    HostVethVanished,
    #[error("the veth did not arrive in the pod's namespace")]
    PeerNotInPod,
}

/// Work done with a netlink socket inside a pod's network namespace.
type InPod = Box<dyn FnOnce(&mut Netlink) -> Result<(), DataplaneError> + Send>;

/// The dataplane of one node.
#[derive(Debug, Clone)]
pub struct Dataplane {
    pub bridge: String,
}

use bramble_support::fnv64;

/// The host end of a pod's veth pair: `bv` and 12 hex digits (interface names have at most
/// 15 characters).
pub fn host_veth(uid: &str) -> String {
    format!("bv{:012x}", fnv64(uid) & 0xffff_ffff_ffff)
}

fn peer_veth(uid: &str) -> String {
    format!("bp{:012x}", fnv64(uid) & 0xffff_ffff_ffff)
}

fn write_sysctl(path: &'static str, value: &str) -> Result<(), DataplaneError> {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == value => Ok(()),
        _ => std::fs::write(path, value).map_err(|source| DataplaneError::Sysctl { path, source }),
    }
}

impl Dataplane {
    pub fn new(bridge: &str) -> Dataplane {
        Dataplane {
            bridge: bridge.to_string(),
        }
    }

    /// Makes sure the bridge exists, holds the CIDR's gateway address and is up, and that
    /// the node forwards (and, for Services between pods on this bridge, passes bridged
    /// traffic through iptables). Returns the bridge's index.
    pub fn ensure_bridge(&self, nl: &mut Netlink, cidr: Cidr) -> Result<u32, DataplaneError> {
        let index = match nl.link_index(&self.bridge)? {
            Some(i) => i,
            None => {
                nl.add_bridge(&self.bridge)?;
                tracing::info!(bridge = self.bridge, %cidr, "created the pod bridge");
                nl.link_index(&self.bridge)?
                    .ok_or_else(|| DataplaneError::BridgeVanished(self.bridge.clone()))?
            }
        };
        let gw = super::gateway(cidr);
        let have = nl.addresses(index)?;
        if !have.contains(&(gw, cidr.prefix)) {
            nl.add_address(index, gw, cidr.prefix)?;
        }
        nl.set_link_up(index, None, None)?;
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        let nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        if !Path::new(nf).exists() {
            // The module is not loaded: try, as kube-proxy's preflight does.
            let _ = std::process::Command::new("modprobe")
                .arg("br_netfilter")
                .status();
        }
        if let Err(e) = write_sysctl(nf, "1") {
            tracing::warn!(
                error = %e,
                "cannot pass bridged traffic through iptables (br_netfilter); a pod reaching a Service whose endpoint is on the same node will fail"
            );
        }
        Ok(index)
    }

    /// Connects a pod's network namespace: veth pair, `eth0` with `ip`, default route via
    /// the bridge. Idempotent: a pair left by an earlier attempt is replaced.
    pub fn attach(
        &self,
        uid: &str,
        netns: &Path,
        ip: Ipv4Addr,
        cidr: Cidr,
    ) -> Result<(), DataplaneError> {
        let mut nl = Netlink::open()?;
        let bridge = self.ensure_bridge(&mut nl, cidr)?;
        let (host, peer) = (host_veth(uid), peer_veth(uid));
        for name in [&host, &peer] {
            if let Some(i) = nl.link_index(name)? {
                nl.del_link(i)?;
            }
        }
        let ns = std::fs::File::open(netns).map_err(|source| DataplaneError::OpenNetns {
            path: netns.to_path_buf(),
            source,
        })?;
        // The pod's side may still be there from an earlier attempt whose host side went.
        let gw = super::gateway(cidr);
        let prefix = cidr.prefix;
        let in_pod = |f: InPod| {
            let ns = ns.try_clone().map_err(DataplaneError::CloneNetns)?;
            std::thread::spawn(move || -> Result<(), DataplaneError> {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(DataplaneError::EnterNetns)?;
                let mut nl = Netlink::open()?;
                f(&mut nl)
            })
            .join()
            .map_err(|_| DataplaneError::ThreadPanicked)?
        };
        in_pod(Box::new(|nl| {
            if let Some(i) = nl.link_index("eth0")? {
                nl.del_link(i)?;
            }
            Ok(())
        }))?;
        nl.add_veth(&host, &peer)?;
        let peer_index = nl.link_index(&peer)?.ok_or(DataplaneError::PeerVanished)?;
        nl.move_to_netns(peer_index, ns.as_raw_fd())?;
        let host_index = nl
            .link_index(&host)?
            .ok_or(DataplaneError::HostVethVanished)?;
        nl.set_link_up(host_index, None, Some(bridge))?;
        in_pod(Box::new(move |nl| {
            let i = nl.link_index(&peer)?.ok_or(DataplaneError::PeerNotInPod)?;
            nl.set_link_up(i, Some("eth0"), None)?;
            nl.add_address(i, ip, prefix)?;
            Ok(nl.replace_default_route(gw)?)
        }))
    }

    /// Removes a pod's veth pair (gone anyway once its namespace is).
    pub fn detach(&self, uid: &str) -> Result<(), DataplaneError> {
        let mut nl = Netlink::open()?;
        if let Some(i) = nl.link_index(&host_veth(uid))? {
            nl.del_link(i)?;
        }
        Ok(())
    }

    /// Makes Bramble's routes exactly `wanted` (other nodes' pod CIDRs via their
    /// addresses); routes of other owners are not touched. Returns (added, removed).
    pub fn sync_routes(
        &self,
        wanted: &[(Cidr, Ipv4Addr)],
    ) -> Result<(usize, usize), DataplaneError> {
        let mut nl = Netlink::open()?;
        let have: BTreeSet<Route> = nl.routes(BRAMBLE_ROUTE_PROTOCOL)?.into_iter().collect();
        let want: BTreeSet<Route> = wanted
            .iter()
            .map(|(c, via)| Route {
                destination: c.base,
                prefix: c.prefix,
                gateway: Some(*via),
            })
            .collect();
        let mut added = 0;
        for r in want.difference(&have) {
            let via = r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED);
            match nl.replace_route(r.destination, r.prefix, via, BRAMBLE_ROUTE_PROTOCOL) {
                Ok(()) => added += 1,
                Err(e) => {
                    tracing::warn!(route = %format!("{}/{} via {via}", r.destination, r.prefix), error = %e, "cannot add a route to a node's pods")
                }
            }
        }
        let mut removed = 0;
        for r in have.difference(&want) {
            // A replaced route (new gateway) was overwritten above.
            if want
                .iter()
                .any(|w| w.destination == r.destination && w.prefix == r.prefix)
            {
                continue;
            }
            match nl.del_route(r, BRAMBLE_ROUTE_PROTOCOL) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(error = %e, "cannot remove a stale pod route"),
            }
        }
        Ok((added, removed))
    }
}
