//! The node-local cluster DNS: every agent answers its pods' queries on its pod bridge's
//! address (port 53, UDP and TCP) from the network view it already holds, so that names keep
//! resolving on a board that has lost the master and the other boards.
//!
//! - `SERVICE.NAMESPACE.svc.DOMAIN`: the ClusterIP (A); for a headless Service
//!   (`clusterIP: None`) the ready endpoints' pod IPs; `_PORT._PROTO.SERVICE...` SRV for a
//!   named port; `A-B-C-D.SERVICE.NAMESPACE.svc.DOMAIN` (a headless Service's endpoint) and
//!   `A-B-C-D.NAMESPACE.pod.DOMAIN` A records; PTR for ClusterIPs and endpoint IPs.
//! - Everything else is forwarded to the board's own resolvers (hickory's resolver, with a
//!   bounded cache), at most [`MAX_FORWARDS`] at once.
//!
//! What it answers is the pure [`answer`]; [`Handler`] is the shell around it. Each source
//! address has a budget of queries ([`PER_SOURCE_QPS`]), and the server runs on a thread of
//! its own, so one pod's flood neither starves other pods nor the agent's own work.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_support::SourceBudget;
use hickory_resolver::config::{ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, PTR, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};

use super::NetView;
use bramble_api::service::Service;

/// The TTL of cluster answers: short, so that a change is seen at once by resolvers that
/// cache (most pods' do not).
pub const TTL: u32 = 5;
/// Upstream lookups in flight at most; past it, SERVFAIL at once.
pub const MAX_FORWARDS: usize = 256;
/// Queries per second one source address may send (and twice that in a burst).
pub const PER_SOURCE_QPS: f64 = 2_000.0;
/// Forwarded answers kept at most.
const CACHE_ENTRIES: usize = 1024;
/// How long a TCP client may stay silent.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// systemd-resolved's file of the real upstream servers.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// What the cluster DNS says to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// These records (authoritative).
    Records(Vec<Record>),
    /// The name exists, not with this type.
    NoData,
    /// No such name in the cluster.
    NxDomain,
    /// Not a cluster name: ask the upstream servers.
    Forward,
    /// An `ExternalName` Service: this CNAME, then the target's own records (forwarded).
    Alias { cname: Box<Record>, target: String },
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).ok()
}

fn a(owner: &str, ip: Ipv4Addr) -> Option<Record> {
    Some(Record::from_rdata(name(owner)?, TTL, RData::A(A(ip))))
}

/// `10-42-1-7` for 10.42.1.7.
pub fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn undashed(label: &str) -> Option<Ipv4Addr> {
    label.replace('-', ".").parse().ok()
}

fn headless(s: &Service) -> bool {
    s.spec.cluster_ip == "None"
}

/// The ready addresses of a Service's endpoints.
fn ready_ips(view: &NetView, ns: &str, svc: &str) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = view
        .endpoints
        .get(&(ns.to_string(), svc.to_string()))
        .map(|e| {
            e.subsets
                .iter()
                .flat_map(|s| &s.addresses)
                .filter_map(|a| a.ip.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips.dedup();
    ips
}

/// What the cluster DNS answers for `qname` (any case, with or without the final dot) and
/// `qtype`, from `view`, with `domain` the cluster domain (`cluster.local`).
pub fn answer(view: &NetView, domain: &str, qname: &str, qtype: RecordType) -> Answer {
    let qname = qname.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let rest = if qname == domain {
        Some("")
    } else {
        qname.strip_suffix(&format!(".{domain}"))
    };
    match rest {
        Some(rest) => cluster(view, &domain, &qname, rest, qtype),
        None if qtype == RecordType::PTR => match reverse(&qname) {
            Some(ip) => ptr(view, &domain, &qname, ip),
            None => Answer::Forward,
        },
        None => Answer::Forward,
    }
}

/// A name under the cluster domain: `rest` is what comes before it.
fn cluster(view: &NetView, domain: &str, qname: &str, rest: &str, qtype: RecordType) -> Answer {
    let labels: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('.').rev().collect()
    };
    match labels.as_slice() {
        [] | ["svc"] | ["pod"] | ["svc", _] | ["pod", _] => Answer::NoData,
        ["svc", ns, svc] => {
            let Some(s) = view.services.get(&(ns.to_string(), svc.to_string())) else {
                return Answer::NxDomain;
            };
            if s.spec.type_ == "ExternalName" {
                let target = s
                    .spec
                    .external_name
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                return match (name(qname), name(&target)) {
                    (Some(owner), Some(t)) => Answer::Alias {
                        cname: Box::new(Record::from_rdata(owner, TTL, RData::CNAME(CNAME(t)))),
                        target,
                    },
                    _ => Answer::NxDomain,
                };
            }
            if qtype != RecordType::A {
                return Answer::NoData;
            }
            let ips = if headless(s) {
                ready_ips(view, ns, svc)
            } else {
                s.spec.cluster_ip.parse().into_iter().collect()
            };
            records(ips.into_iter().filter_map(|ip| a(qname, ip)).collect())
        }
        ["svc", ns, svc, host] => {
            let Some(s) = view.services.get(&(ns.to_string(), svc.to_string())) else {
                return Answer::NxDomain;
            };
            match undashed(host) {
                Some(ip) if headless(s) && ready_ips(view, ns, svc).contains(&ip) => {
                    if qtype == RecordType::A {
                        records(a(qname, ip).into_iter().collect())
                    } else {
                        Answer::NoData
                    }
                }
                _ => Answer::NxDomain,
            }
        }
        ["svc", ns, svc, proto, port] if proto.starts_with('_') && port.starts_with('_') => srv(
            view,
            domain,
            qname,
            (ns, svc),
            (&port[1..], &proto[1..]),
            qtype,
        ),
        ["pod", _, host] => match undashed(host) {
            Some(ip) if qtype == RecordType::A => records(a(qname, ip).into_iter().collect()),
            Some(_) => Answer::NoData,
            None => Answer::NxDomain,
        },
        _ => Answer::NxDomain,
    }
}

fn records(r: Vec<Record>) -> Answer {
    if r.is_empty() {
        Answer::NoData
    } else {
        Answer::Records(r)
    }
}

/// `_PORT._PROTO.SVC.NS.svc.DOMAIN`: the named port's SRV records.
fn srv(
    view: &NetView,
    domain: &str,
    qname: &str,
    (ns, svc): (&str, &str),
    (port_name, proto): (&str, &str),
    qtype: RecordType,
) -> Answer {
    let Some(s) = view.services.get(&(ns.to_string(), svc.to_string())) else {
        return Answer::NxDomain;
    };
    let same_proto = |p: &str| {
        let p = if p.is_empty() { "tcp" } else { p };
        p.eq_ignore_ascii_case(proto)
    };
    let Some(port) = s
        .spec
        .ports
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(port_name) && same_proto(&p.protocol))
    else {
        return Answer::NxDomain;
    };
    if qtype != RecordType::SRV {
        return Answer::NoData;
    }
    let Some(owner) = name(qname) else {
        return Answer::NxDomain;
    };
    let service = format!("{svc}.{ns}.svc.{domain}");
    let out: Vec<Record> = if headless(s) {
        // Each ready endpoint by its own name, on the endpoints' port of that name.
        let target_port = view
            .endpoints
            .get(&(ns.to_string(), svc.to_string()))
            .and_then(|e| {
                e.subsets
                    .iter()
                    .flat_map(|s| &s.ports)
                    .find(|p| p.name.eq_ignore_ascii_case(port_name))
                    .map(|p| p.port)
            })
            .unwrap_or(port.port);
        ready_ips(view, ns, svc)
            .into_iter()
            .filter_map(|ip| {
                let target = name(&format!("{}.{service}", dashed(ip)))?;
                let srv = SRV::new(0, 100, u16::try_from(target_port).ok()?, target);
                Some(Record::from_rdata(owner.clone(), TTL, RData::SRV(srv)))
            })
            .collect()
    } else {
        name(&service)
            .and_then(|target| {
                let srv = SRV::new(0, 100, u16::try_from(port.port).ok()?, target);
                Some(Record::from_rdata(owner, TTL, RData::SRV(srv)))
            })
            .into_iter()
            .collect()
    };
    records(out)
}

/// The address of `d.c.b.a.in-addr.arpa`.
fn reverse(qname: &str) -> Option<Ipv4Addr> {
    let rest = qname.strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = rest
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    if octets.len() != 4 {
        return None;
    }
    octets.reverse();
    Some(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    super::Cidr::parse(cidr).is_ok_and(|c| c.contains(ip))
}

/// PTR for a ClusterIP or a Service's endpoint; other addresses of the cluster's ranges are
/// unknown here (NXDOMAIN), the rest of the world is the upstream's.
fn ptr(view: &NetView, domain: &str, qname: &str, ip: Ipv4Addr) -> Answer {
    let text = ip.to_string();
    let target = view
        .services
        .iter()
        .find(|(_, s)| s.spec.cluster_ip == text)
        .map(|((ns, svc), _)| format!("{svc}.{ns}.svc.{domain}"))
        .or_else(|| {
            view.endpoints.iter().find_map(|((ns, svc), e)| {
                let listed = e
                    .subsets
                    .iter()
                    .flat_map(|s| &s.addresses)
                    .any(|a| a.ip == text);
                listed.then(|| {
                    let headless = view
                        .services
                        .get(&(ns.clone(), svc.clone()))
                        .is_some_and(headless);
                    if headless {
                        format!("{}.{svc}.{ns}.svc.{domain}", dashed(ip))
                    } else {
                        format!("{}.{ns}.pod.{domain}", dashed(ip))
                    }
                })
            })
        });
    match target.and_then(|t| Some((name(qname)?, name(&t)?))) {
        Some((owner, t)) => {
            Answer::Records(vec![Record::from_rdata(owner, TTL, RData::PTR(PTR(t)))])
        }
        None if in_cidr(ip, &view.cluster_cidr) || in_cidr(ip, &view.service_cidr) => {
            Answer::NxDomain
        }
        None => Answer::Forward,
    }
}

/// What the DNS server has done, for the agent's metrics.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub queries: AtomicU64,
    /// Answered from the cluster's view.
    pub cluster: AtomicU64,
    /// Not cluster names: answered from the cache or by the upstream servers.
    pub forwarded: AtomicU64,
    /// Forwarded names answered from the cache.
    pub cache_hits: AtomicU64,
    /// Forwarded lookups that failed (timeout, SERVFAIL, unreachable) or found no slot.
    pub upstream_failures: AtomicU64,
    /// Refused: the source was over its budget.
    pub refused: AtomicU64,
    /// Not a query, or unreadable.
    pub malformed: AtomicU64,
}

/// The board's upstream servers: `explicit` (`--resolv-conf`), else the host's
/// `/etc/resolv.conf`, or systemd-resolved's real upstream file when the host's names only
/// its local stub (127.0.0.53, which the forwarder could use but a pod with `dnsPolicy:
/// Default` could not).
pub fn upstream_conf(explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(p) => p.to_path_buf(),
        None => pick_upstream(Path::new("/etc/resolv.conf"), Path::new(RESOLVED_UPSTREAM)),
    }
}

/// `host` unless every nameserver it names is the 127.0.0.53 stub and `resolved` exists.
fn pick_upstream(host: &Path, resolved: &Path) -> PathBuf {
    let text = std::fs::read_to_string(host).unwrap_or_default();
    let servers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    let only_stub = !servers.is_empty() && servers.iter().all(|s| s.starts_with("127.0.0.53"));
    if only_stub && resolved.exists() {
        resolved.to_path_buf()
    } else {
        host.to_path_buf()
    }
}

type Resolver = hickory_resolver::Resolver<TokioConnectionProvider>;

/// The forwarder for the servers of `conf`, leaving out `own` (a loop); None when there
/// are none.
fn resolver(conf: &Path, own: Ipv4Addr) -> Option<Resolver> {
    let text = match std::fs::read(conf) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %conf.display(), error = %e, "cluster DNS: cannot read the upstream servers; only cluster names will resolve");
            return None;
        }
    };
    let (config, mut opts) = match hickory_resolver::system_conf::parse_resolv_conf(&text) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(path = %conf.display(), error = %e, "cluster DNS: cannot parse the upstream servers; only cluster names will resolve");
            return None;
        }
    };
    let servers: Vec<_> = config
        .name_servers()
        .iter()
        .filter(|s| s.socket_addr.ip() != IpAddr::V4(own))
        .cloned()
        .collect();
    if servers.is_empty() {
        tracing::warn!(path = %conf.display(), "cluster DNS: no upstream server; only cluster names will resolve");
        return None;
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), servers);
    // The answers are cached by the handler; the resolver's own cache only for CNAME chains.
    opts.cache_size = 64;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.preserve_intermediates = true;
    opts.ndots = 0;
    let mut b = Resolver::builder_with_config(config, TokioConnectionProvider::default());
    *b.options_mut() = opts;
    Some(b.build())
}

/// Forwarded answers, kept for their TTL (at most [`CACHE_MAX_TTL`]; a negative answer
/// [`CACHE_NEGATIVE_TTL`]), at most [`CACHE_ENTRIES`] of them: a cached answer costs a map
/// lookup, not a trip through the resolver.
#[derive(Default)]
struct AnswerCache {
    entries: HashMap<(String, RecordType), (Instant, ResponseCode, Vec<Record>)>,
}

/// The longest a forwarded answer is kept.
const CACHE_MAX_TTL: u32 = 300;
/// How long NXDOMAIN and empty answers are kept.
const CACHE_NEGATIVE_TTL: u32 = 30;

impl AnswerCache {
    fn get(
        &mut self,
        key: &(String, RecordType),
        now: Instant,
    ) -> Option<(ResponseCode, Vec<Record>)> {
        let (until, code, records) = self.entries.get(key)?;
        if *until <= now {
            self.entries.remove(key);
            return None;
        }
        let left = u32::try_from(until.duration_since(now).as_secs()).unwrap_or(u32::MAX);
        let records = records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.set_ttl(r.ttl().min(left));
                r
            })
            .collect();
        Some((*code, records))
    }

    fn put(
        &mut self,
        key: (String, RecordType),
        code: ResponseCode,
        records: &[Record],
        now: Instant,
    ) {
        let ttl = records
            .iter()
            .map(Record::ttl)
            .min()
            .unwrap_or(CACHE_NEGATIVE_TTL)
            .min(CACHE_MAX_TTL);
        if ttl == 0 {
            return;
        }
        if self.entries.len() >= CACHE_ENTRIES {
            self.entries.retain(|_, (until, _, _)| *until > now);
            if self.entries.len() >= CACHE_ENTRIES {
                // Full of live answers: start again rather than track recency.
                self.entries.clear();
            }
        }
        let until = now + Duration::from_secs(u64::from(ttl));
        self.entries.insert(key, (until, code, records.to_vec()));
    }
}

/// Answers queries from the network view, forwards the rest.
pub struct Handler {
    view: Arc<Mutex<NetView>>,
    domain: String,
    upstream: Option<Resolver>,
    cache: Mutex<AnswerCache>,
    budget: SourceBudget,
    forwards: Arc<tokio::sync::Semaphore>,
    stats: Arc<DnsStats>,
}

async fn send<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    mut header: Header,
    code: ResponseCode,
    answers: &[Record],
) -> ResponseInfo {
    header.set_response_code(code);
    let builder = MessageResponseBuilder::from_message_request(request);
    let msg = builder.build(
        header,
        answers.iter(),
        std::iter::empty(),
        std::iter::empty(),
        std::iter::empty(),
    );
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cluster DNS: cannot send an answer");
            header.into()
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let stats = &self.stats;
        stats.queries.fetch_add(1, Relaxed);
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        if !self.budget.take(request.src().ip(), Instant::now()) {
            stats.refused.fetch_add(1, Relaxed);
            return send(request, response, header, ResponseCode::Refused, &[]).await;
        }
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            stats.malformed.fetch_add(1, Relaxed);
            return send(request, response, header, ResponseCode::NotImp, &[]).await;
        }
        let Ok(info) = request.request_info() else {
            stats.malformed.fetch_add(1, Relaxed);
            return send(request, response, header, ResponseCode::FormErr, &[]).await;
        };
        let qname = info.query.name().to_string();
        let qtype = info.query.query_type();
        let said = {
            let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            answer(&view, &self.domain, &qname, qtype)
        };
        let (code, records) = match said {
            Answer::Records(r) => (ResponseCode::NoError, r),
            Answer::NoData => (ResponseCode::NoError, Vec::new()),
            Answer::NxDomain => (ResponseCode::NXDomain, Vec::new()),
            Answer::Forward => {
                stats.forwarded.fetch_add(1, Relaxed);
                let (code, records) = self.forward(&qname, qtype).await;
                if code == ResponseCode::ServFail {
                    stats.upstream_failures.fetch_add(1, Relaxed);
                }
                return send(request, response, header, code, &records).await;
            }
            Answer::Alias { cname, target } => {
                // The alias, then what its target is, as CoreDNS answers an ExternalName.
                stats.cluster.fetch_add(1, Relaxed);
                let mut records = vec![*cname];
                if qtype != RecordType::CNAME {
                    let (code, more) = self.forward(&target, qtype).await;
                    if code == ResponseCode::NoError {
                        records.extend(more);
                    }
                }
                return send(request, response, header, ResponseCode::NoError, &records).await;
            }
        };
        stats.cluster.fetch_add(1, Relaxed);
        header.set_authoritative(true);
        send(request, response, header, code, &records).await
    }
}

impl Handler {
    async fn forward(&self, qname: &str, qtype: RecordType) -> (ResponseCode, Vec<Record>) {
        let Some(resolver) = &self.upstream else {
            return (ResponseCode::ServFail, Vec::new());
        };
        let key = (qname.trim_end_matches('.').to_ascii_lowercase(), qtype);
        let cache = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache().get(&key, Instant::now()) {
            self.stats.cache_hits.fetch_add(1, Relaxed);
            return hit;
        }
        let Ok(_slot) = self.forwards.clone().try_acquire_owned() else {
            return (ResponseCode::ServFail, Vec::new());
        };
        let Some(fqdn) = name(qname) else {
            return (ResponseCode::FormErr, Vec::new());
        };
        let keep = |code, records: Vec<Record>| {
            cache().put(key.clone(), code, &records, Instant::now());
            (code, records)
        };
        match tokio::time::timeout(Duration::from_secs(5), resolver.lookup(fqdn, qtype)).await {
            Ok(Ok(lookup)) => keep(ResponseCode::NoError, lookup.records().to_vec()),
            Ok(Err(e)) if e.is_nx_domain() => keep(ResponseCode::NXDomain, Vec::new()),
            Ok(Err(e)) if e.is_no_records_found() => keep(ResponseCode::NoError, Vec::new()),
            Ok(Err(e)) => {
                tracing::debug!(name = qname, error = %e, "cluster DNS: upstream lookup failed");
                (ResponseCode::ServFail, Vec::new())
            }
            Err(_) => (ResponseCode::ServFail, Vec::new()),
        }
    }
}

/// Where and what the DNS server serves.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// The cluster domain (`--cluster-domain`).
    pub domain: String,
    /// The upstream servers' file ([`upstream_conf`]).
    pub upstream: PathBuf,
    /// The port (53).
    pub port: u16,
    /// Whether the agent serves DNS on the bridge (`--no-dns` turns it off).
    pub serve: bool,
}

/// A socket bound to `addr` even before the address is on an interface (the bridge comes
/// up with the first pod): IP_FREEBIND.
fn bind(addr: SocketAddr, stream: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(v4) = addr else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let ty = if stream {
        SockType::Stream
    } else {
        SockType::Datagram
    };
    let fd = socket::socket(
        AddressFamily::Inet,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::IpFreebind, &true)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if !stream {
        // Room for a burst of queries (the kernel caps it at net.core.rmem_max).
        let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
    }
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(v4))?;
    if stream {
        socket::listen(
            &fd,
            socket::Backlog::new(128).map_err(std::io::Error::from)?,
        )?;
    }
    Ok(fd)
}

/// Serves DNS on `addr` until the node's pod CIDR moves away from it (returns) or the
/// sockets cannot be bound (returns the error).
pub async fn serve(
    addr: SocketAddr,
    settings: &DnsSettings,
    view: Arc<Mutex<NetView>>,
    stats: Arc<DnsStats>,
    moved: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let IpAddr::V4(own) = addr.ip() else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let udp = std::net::UdpSocket::from(bind(addr, false)?);
    let tcp = std::net::TcpListener::from(bind(addr, true)?);
    let handler = Handler {
        view,
        domain: settings.domain.clone(),
        upstream: resolver(&settings.upstream, own),
        cache: Mutex::default(),
        budget: SourceBudget::new(2.0 * PER_SOURCE_QPS, PER_SOURCE_QPS, 4096),
        forwards: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS)),
        stats,
    };
    let mut server = ServerFuture::new(handler);
    server.register_socket_std(udp)?;
    server.register_listener_std(tcp, TCP_TIMEOUT)?;
    tracing::info!(%addr, domain = settings.domain, upstream = %settings.upstream.display(), "cluster DNS listening");
    moved.await;
    let _ = server.shutdown_gracefully().await;
    Ok(())
}

impl DnsStats {
    /// The counters in node_exporter's textfile format.
    pub fn render(&self) -> String {
        let mut text = String::from("# TYPE bramble_agent_dns_queries_total counter\n");
        for (what, n) in [
            ("cluster", &self.cluster),
            ("forwarded", &self.forwarded),
            ("refused", &self.refused),
            ("malformed", &self.malformed),
        ] {
            text.push_str(&format!(
                "bramble_agent_dns_queries_total{{answer=\"{what}\"}} {}\n",
                n.load(Relaxed)
            ));
        }
        text.push_str(&format!(
            "# TYPE bramble_agent_dns_cache_hits_total counter\nbramble_agent_dns_cache_hits_total {}\n",
            self.cache_hits.load(Relaxed)
        ));
        text.push_str(&format!(
            "# TYPE bramble_agent_dns_upstream_failures_total counter\nbramble_agent_dns_upstream_failures_total {}\n",
            self.upstream_failures.load(Relaxed)
        ));
        text
    }
}

/// Writes `stats` to `path` every 10 s while they change.
async fn write_stats(stats: Arc<DnsStats>, path: PathBuf) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = stats.queries.load(Relaxed);
        if now == last {
            continue;
        }
        last = now;
        if let Err(e) = bramble_support::fs::write_atomic(&path, stats.render().as_bytes(), 0o644) {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the DNS metrics");
        }
    }
}

/// Runs the DNS server on a thread of its own, on the bridge's address of the node's pod
/// CIDR once there is one (and again when it changes); its counters go to `metrics`
/// (node_exporter's textfile format).
pub fn spawn(
    settings: DnsSettings,
    network: Arc<super::PodNetwork>,
    view: Arc<Mutex<NetView>>,
    metrics: PathBuf,
) {
    let stats = Arc::new(DnsStats::default());
    let run = move || async move {
        tokio::spawn(write_stats(stats.clone(), metrics));
        let mut logged = None;
        loop {
            let Some(cidr) = network.pod_cidr() else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let addr = SocketAddr::from((super::gateway(cidr), settings.port));
            let net = network.clone();
            let moved = async move {
                while net.pod_cidr() == Some(cidr) {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            };
            if let Err(e) = serve(addr, &settings, view.clone(), stats.clone(), moved).await {
                let msg = e.to_string();
                if logged.as_deref() != Some(msg.as_str()) {
                    tracing::error!(%addr, error = %e, "cluster DNS cannot listen (is another DNS server bound to port {} on all addresses? see `bramble-agent doctor`); retrying every 10s", settings.port);
                    logged = Some(msg);
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    if let Err(e) = bramble_support::spawn_with_runtime("cluster-dns", run) {
        tracing::error!(error = %e, "cluster DNS cannot start");
    }
}

#[cfg(test)]
mod tests;
