//! A small synchronous rtnetlink client (on the netlink-packet-route and netlink-sys crates
//! that libcontainer already brings): links, addresses and routes, in the network namespace
//! of the thread that opened the socket.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The route protocol number Bramble marks its routes with (so it deletes only its own).
pub const BRAMBLE_ROUTE_PROTOCOL: u8 = 0x62;

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink {what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    pub source: std::io::Error,
}

impl NetlinkError {
    /// The errno the kernel answered with, if any.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A route this client reads back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// One rtnetlink socket, bound in the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetlinkError> {
        let err = |source| NetlinkError {
            what: "socket".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects the answers until the ACK or the end of a dump.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let err = |source: std::io::Error| NetlinkError {
            what: what.to_string(),
            source,
        };
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(message));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket
            .send_to(&buf, &SocketAddr::new(0, 0), 0)
            .map_err(err)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(err)?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| err(std::io::Error::other(e.to_string())))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(code) => {
                                    Err(err(std::io::Error::from_raw_os_error(-code.get())))
                                }
                            };
                        }
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::InnerMessage(m) => {
                            out.push(m);
                            if !dump && flags & NLM_F_ACK == 0 {
                                return Ok(out);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// The index of a link by name.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("get link {name}"),
            RouteNetlinkMessage::GetLink(m),
            NLM_F_REQUEST,
        ) {
            Ok(v) => Ok(v.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn new_link(&mut self, what: &str, m: LinkMessage) -> Result<(), NetlinkError> {
        self.request(
            what,
            RouteNetlinkMessage::NewLink(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
    }

    fn set_link(&mut self, what: &str, m: LinkMessage) -> Result<(), NetlinkError> {
        self.request(
            what,
            RouteNetlinkMessage::SetLink(m),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(|_| ())
    }

    /// Creates a bridge.
    pub fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.new_link(&format!("add bridge {name}"), m)
    }

    /// Creates a veth pair.
    pub fn add_veth(&mut self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.new_link(&format!("add veth {name}/{peer}"), m)
    }

    /// Deletes a link (its veth peer goes with it).
    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(
            &format!("delete link {index}"),
            RouteNetlinkMessage::DelLink(m),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(|_| ())
    }

    /// Sets a link up, optionally renaming it, attaching it to a bridge, or moving it to the
    /// network namespace open at `netns_fd`.
    pub fn set_link_up(
        &mut self,
        index: u32,
        rename: Option<&str>,
        master: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags |= LinkFlags::Up;
        m.header.change_mask |= LinkFlags::Up;
        if let Some(n) = rename {
            m.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
        if let Some(b) = master {
            m.attributes.push(LinkAttribute::Controller(b));
        }
        self.set_link(&format!("set link {index} up"), m)
    }

    /// Moves a link into another network namespace.
    pub fn move_to_netns(&mut self, index: u32, netns_fd: RawFd) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::NetNsFd(netns_fd));
        self.set_link(&format!("move link {index} to a namespace"), m)
    }

    /// The IPv4 addresses of a link, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let all = self.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                            Some((*ip, a.header.prefix_len))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds an IPv4 address to a link (Ok if it has it already).
    pub fn add_address(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip.into()));
        m.attributes.push(AddressAttribute::Address(ip.into()));
        let bits = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        m.attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                u32::from(ip) | !bits,
            )));
        self.request(
            &format!("add address {ip}/{prefix}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    fn route_message(
        destination: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        protocol: u8,
    ) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::from(protocol);
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        if prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(destination)));
        }
        if let Some(g) = gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(g)));
        }
        m
    }

    /// Adds or replaces a route through a gateway, marked with `protocol`.
    pub fn replace_route(
        &mut self,
        destination: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        let m = Self::route_message(destination, prefix, Some(gateway), protocol);
        self.request(
            &format!("route {destination}/{prefix} via {gateway}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    /// Deletes a route.
    pub fn del_route(&mut self, r: &Route, protocol: u8) -> Result<(), NetlinkError> {
        let m = Self::route_message(r.destination, r.prefix, r.gateway, protocol);
        self.request(
            &format!("delete route {}/{}", r.destination, r.prefix),
            RouteNetlinkMessage::DelRoute(m),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(|_| ())
    }

    /// The main table's IPv4 routes marked with `protocol`.
    pub fn routes(&mut self, protocol: u8) -> Result<Vec<Route>, NetlinkError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        let all = self.request(
            "list routes",
            RouteNetlinkMessage::GetRoute(m),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.table == RouteHeader::RT_TABLE_MAIN
                        && u8::from(r.header.protocol) == protocol =>
                {
                    let mut out = Route {
                        destination: Ipv4Addr::UNSPECIFIED,
                        prefix: r.header.destination_prefix_length,
                        gateway: None,
                    };
                    for a in &r.attributes {
                        match a {
                            RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                                out.destination = *d
                            }
                            RouteAttribute::Gateway(RouteAddress::Inet(g)) => {
                                out.gateway = Some(*g)
                            }
                            _ => {}
                        }
                    }
                    Some(out)
                }
                _ => None,
            })
            .collect())
    }

    /// Adds the default route through `gateway` (replacing any).
    pub fn replace_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let m = Self::route_message(Ipv4Addr::UNSPECIFIED, 0, Some(gateway), 3 /* boot */);
        self.request(
            &format!("default route via {gateway}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }
}
