use std::collections::BTreeMap;

use bramble_api::meta::ObjectMeta;
use bramble_api::service::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};

use super::*;

fn svc(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        },
        spec: ServiceSpec {
            cluster_ip: ip.into(),
            ports: ports
                .iter()
                .map(|(n, p, proto)| ServicePort {
                    name: n.to_string(),
                    port: *p,
                    protocol: proto.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn eps(ns: &str, name: &str, ready: &[&str], not_ready: &[&str], port: (&str, i32)) -> Endpoints {
    let addr = |ip: &&str| EndpointAddress {
        ip: ip.to_string(),
        ..Default::default()
    };
    Endpoints {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        },
        subsets: vec![EndpointSubset {
            addresses: ready.iter().map(addr).collect(),
            not_ready_addresses: not_ready.iter().map(addr).collect(),
            ports: vec![EndpointPort {
                name: port.0.into(),
                port: port.1,
                protocol: String::new(),
            }],
        }],
        ..Default::default()
    }
}

fn view() -> NetView {
    let mut v = NetView {
        cluster_cidr: "10.42.0.0/16".into(),
        service_cidr: "10.43.0.0/16".into(),
        ..Default::default()
    };
    let mut services = BTreeMap::new();
    for s in [
        svc(
            "default",
            "web",
            "10.43.0.10",
            &[("http", 80, ""), ("dns", 53, "UDP")],
        ),
        svc("default", "db", "None", &[("pg", 5432, "")]),
        svc("prod", "web", "10.43.0.20", &[("", 80, "")]),
    ] {
        services.insert((s.metadata.namespace.clone(), s.metadata.name.clone()), s);
    }
    let mut ext = svc("default", "db-ext", "", &[]);
    ext.spec.type_ = "ExternalName".into();
    ext.spec.external_name = "db.example.com.".into();
    services.insert(("default".into(), "db-ext".into()), ext);
    v.services = services;
    for e in [
        eps("default", "web", &["10.42.1.5"], &[], ("http", 8080)),
        eps(
            "default",
            "db",
            &["10.42.2.7", "10.42.1.9"],
            &["10.42.3.3"],
            ("pg", 5433),
        ),
    ] {
        v.endpoints
            .insert((e.metadata.namespace.clone(), e.metadata.name.clone()), e);
    }
    v
}

fn ips(a: &Answer) -> Vec<String> {
    match a {
        Answer::Records(r) => r.iter().map(|r| r.data().to_string()).collect(),
        other => panic!("no records: {other:?}"),
    }
}

const D: &str = "cluster.local";

#[test]
fn services_by_name() {
    let v = view();
    let q = |n: &str, t| answer(&v, D, n, t);
    assert_eq!(
        ips(&q("web.default.svc.cluster.local.", RecordType::A)),
        ["10.43.0.10"]
    );
    assert_eq!(
        ips(&q("WEB.Default.svc.Cluster.Local", RecordType::A)),
        ["10.43.0.10"],
        "any case"
    );
    assert_eq!(
        ips(&q("web.prod.svc.cluster.local", RecordType::A)),
        ["10.43.0.20"],
        "by namespace"
    );
    // Headless: the ready endpoints only, sorted.
    assert_eq!(
        ips(&q("db.default.svc.cluster.local", RecordType::A)),
        ["10.42.1.9", "10.42.2.7"]
    );
    assert_eq!(
        ips(&q("10-42-2-7.db.default.svc.cluster.local", RecordType::A)),
        ["10.42.2.7"]
    );
    assert_eq!(
        q("10-42-3-3.db.default.svc.cluster.local", RecordType::A),
        Answer::NxDomain,
        "not ready"
    );
    assert_eq!(
        q("10-42-1-5.web.default.svc.cluster.local", RecordType::A),
        Answer::NxDomain,
        "not headless"
    );
    // The name exists, not as AAAA.
    assert_eq!(
        q("web.default.svc.cluster.local", RecordType::AAAA),
        Answer::NoData
    );
    assert_eq!(
        q("default.svc.cluster.local", RecordType::A),
        Answer::NoData
    );
    assert_eq!(q("cluster.local", RecordType::SOA), Answer::NoData);
    // Unknown names under the domain are the cluster's to deny, never forwarded.
    for n in [
        "nope.default.svc.cluster.local",
        "web.other.svc.cluster.local",
        "a.b.c.d.e.f.svc.cluster.local",
        "x.cluster.local",
        "web.default.svc.cluster.local.default.svc.cluster.local",
    ] {
        assert_eq!(q(n, RecordType::A), Answer::NxDomain, "{n}");
    }
    assert_eq!(
        ips(&q("10-42-9-9.default.pod.cluster.local", RecordType::A)),
        ["10.42.9.9"]
    );
    assert_eq!(
        q("junk.default.pod.cluster.local", RecordType::A),
        Answer::NxDomain
    );
    // Everything else goes upstream.
    assert_eq!(q("example.com", RecordType::A), Answer::Forward);
    assert_eq!(
        q("cluster.local.example.com", RecordType::A),
        Answer::Forward
    );
    // Another domain.
    assert_eq!(
        ips(&answer(
            &v,
            "bramble.lan",
            "web.default.svc.bramble.lan",
            RecordType::A
        )),
        ["10.43.0.10"]
    );
    assert_eq!(
        answer(
            &v,
            "bramble.lan",
            "web.default.svc.cluster.local",
            RecordType::A
        ),
        Answer::Forward
    );
}

#[test]
fn srv_for_named_ports() {
    let v = view();
    let q = |n: &str| answer(&v, D, n, RecordType::SRV);
    assert_eq!(
        ips(&q("_http._tcp.web.default.svc.cluster.local")),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        ips(&q("_dns._udp.web.default.svc.cluster.local")),
        ["0 100 53 web.default.svc.cluster.local."]
    );
    assert_eq!(
        q("_dns._tcp.web.default.svc.cluster.local"),
        Answer::NxDomain,
        "wrong protocol"
    );
    assert_eq!(
        q("_nope._tcp.web.default.svc.cluster.local"),
        Answer::NxDomain
    );
    // Headless: one per ready endpoint, on the endpoints' port.
    assert_eq!(
        ips(&q("_pg._tcp.db.default.svc.cluster.local")),
        [
            "0 100 5433 10-42-1-9.db.default.svc.cluster.local.",
            "0 100 5433 10-42-2-7.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        answer(
            &v,
            D,
            "_http._tcp.web.default.svc.cluster.local",
            RecordType::A
        ),
        Answer::NoData
    );
}

#[test]
fn reverse_lookups() {
    let v = view();
    let q = |n: &str| answer(&v, D, n, RecordType::PTR);
    assert_eq!(
        ips(&q("10.0.43.10.in-addr.arpa.")),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        ips(&q("7.2.42.10.in-addr.arpa")),
        ["10-42-2-7.db.default.svc.cluster.local."]
    );
    assert_eq!(
        ips(&q("5.1.42.10.in-addr.arpa")),
        ["10-42-1-5.default.pod.cluster.local."]
    );
    assert_eq!(
        q("99.1.42.10.in-addr.arpa"),
        Answer::NxDomain,
        "the cluster's range"
    );
    assert_eq!(q("1.1.168.192.in-addr.arpa"), Answer::Forward);
    assert_eq!(
        q("1.300.168.192.in-addr.arpa"),
        Answer::Forward,
        "not an address"
    );
}

#[test]
fn the_upstream_file_skips_a_stub_only_host_file() {
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("mine.conf");
    assert_eq!(upstream_conf(Some(&own)), own, "an explicit file wins");
    let host = dir.path().join("resolv.conf");
    let resolved = dir.path().join("resolved.conf");
    std::fs::write(&host, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
    assert_eq!(
        pick_upstream(&host, &resolved),
        host,
        "no resolved file: the host's"
    );
    std::fs::write(&resolved, "nameserver 192.0.2.1\n").unwrap();
    assert_eq!(
        pick_upstream(&host, &resolved),
        resolved,
        "the stub only: resolved's upstream"
    );
    std::fs::write(&host, "nameserver 127.0.0.53\nnameserver 192.0.2.9\n").unwrap();
    assert_eq!(
        pick_upstream(&host, &resolved),
        host,
        "a real server too: the host's"
    );
}

#[test]
fn the_forwarder_leaves_out_its_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("resolv.conf");
    std::fs::write(&conf, "nameserver 10.42.1.1\n").unwrap();
    assert!(
        resolver(&conf, Ipv4Addr::new(10, 42, 1, 1)).is_none(),
        "only itself: none"
    );
    std::fs::write(&conf, "nameserver 10.42.1.1\nnameserver 192.0.2.53\n").unwrap();
    let r = resolver(&conf, Ipv4Addr::new(10, 42, 1, 1)).unwrap();
    let servers: Vec<_> = r
        .config()
        .name_servers()
        .iter()
        .map(|s| s.socket_addr.ip().to_string())
        .collect();
    assert!(servers.iter().all(|s| s == "192.0.2.53"), "{servers:?}");
    assert!(resolver(&dir.path().join("missing"), Ipv4Addr::LOCALHOST).is_none());
}

fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    use hickory_server::proto::op::{Message, Query};
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(super::name(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn reply(sock: &std::net::UdpSocket, id: u16) -> Option<(ResponseCode, Vec<String>)> {
    use hickory_server::proto::op::Message;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if m.id() == id {
            return Some((
                m.response_code(),
                m.answers().iter().map(|r| r.data().to_string()).collect(),
            ));
        }
    }
}

/// The server for real on loopback: answers, then survives a flood of garbage and of
/// valid-looking queries from one source, refusing that source past its budget while
/// another source is still answered.
#[test]
fn the_server_answers_through_a_flood() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let view = Arc::new(Mutex::new(view()));
    let settings = DnsSettings {
        domain: "cluster.local".into(),
        upstream: PathBuf::from("/nonexistent"),
        port,
        serve: true,
    };
    let stats = Arc::new(DnsStats::default());
    let server_stats = stats.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(serve(
            addr,
            &settings,
            view,
            server_stats,
            std::future::pending(),
        ))
        .unwrap();
    });
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut first = None;
    for _ in 0..20 {
        sock.send_to(
            &query(1, "web.default.svc.cluster.local", RecordType::A),
            addr,
        )
        .unwrap();
        first = reply(&sock, 1);
        if first.is_some() {
            break;
        }
    }
    assert_eq!(
        first,
        Some((ResponseCode::NoError, vec!["10.43.0.10".to_string()]))
    );
    let valid = query(2, "web.default.svc.cluster.local", RecordType::A);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let flood = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    for i in 0..3000 {
        let pkt: Vec<u8> = match i % 3 {
            0 => (0..(next() % 600) as usize).map(|_| next() as u8).collect(),
            1 => valid[..(next() as usize % valid.len())].to_vec(),
            _ => {
                let mut v = valid.clone();
                let at = next() as usize % v.len();
                v[at] ^= next() as u8 | 1;
                v
            }
        };
        let _ = flood.send_to(&pkt, addr);
    }
    // A resolver asks again after a second: the query that met a full socket buffer is
    // asked again, and answered.
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut after = None;
    for k in 0..3 {
        sock.send_to(
            &query(100 + k, "web.default.svc.cluster.local", RecordType::A),
            addr,
        )
        .unwrap();
        after = reply(&sock, 100 + k);
        if after.is_some() {
            break;
        }
    }
    assert_eq!(
        after,
        Some((ResponseCode::NoError, vec!["10.43.0.10".to_string()])),
        "answered after the flood"
    );
    // One source past its budget is refused; the others are not.
    let many = (3.0 * PER_SOURCE_QPS) as usize;
    for i in 0..many {
        let _ = flood.send_to(
            &query(
                10_000 + i as u16,
                "web.default.svc.cluster.local",
                RecordType::A,
            ),
            addr,
        );
        if i % 100 == 99 {
            // Paced, so that the queries reach the server rather than a full socket buffer.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let refused = || stats.refused.load(Relaxed);
    let t = std::time::Instant::now();
    while refused() == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused() > 0, "a source far over its budget is refused");
    assert!(
        stats
            .render()
            .contains("bramble_agent_dns_queries_total{answer=\"refused\"}")
    );
    sock.send_to(
        &query(4, "web.default.svc.cluster.local", RecordType::A),
        addr,
    )
    .unwrap();
    assert_eq!(
        reply(&sock, 4).map(|r| r.0),
        Some(ResponseCode::NoError),
        "another source is answered"
    );
}

#[test]
fn forwarded_answers_are_kept_for_their_ttl_and_bounded() {
    let mut c = AnswerCache::default();
    let t0 = Instant::now();
    let mut rec = a("www.example.com", Ipv4Addr::new(192, 0, 2, 1)).unwrap();
    rec.set_ttl(60);
    let key = ("www.example.com".to_string(), RecordType::A);
    c.put(
        key.clone(),
        ResponseCode::NoError,
        std::slice::from_ref(&rec),
        t0,
    );
    let (code, got) = c.get(&key, t0 + Duration::from_secs(50)).unwrap();
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(got[0].ttl(), 10, "the TTL counts down");
    assert!(
        c.get(&key, t0 + Duration::from_secs(61)).is_none(),
        "expired"
    );
    // A negative answer is kept for CACHE_NEGATIVE_TTL.
    let nx = ("nope.example.com".to_string(), RecordType::A);
    c.put(nx.clone(), ResponseCode::NXDomain, &[], t0);
    assert_eq!(
        c.get(&nx, t0 + Duration::from_secs(29)).unwrap().0,
        ResponseCode::NXDomain
    );
    assert!(c.get(&nx, t0 + Duration::from_secs(31)).is_none());
    // Never more than CACHE_ENTRIES.
    for i in 0..(CACHE_ENTRIES * 2) {
        c.put(
            (format!("n{i}.example.com"), RecordType::A),
            ResponseCode::NoError,
            std::slice::from_ref(&rec),
            t0,
        );
        assert!(c.entries.len() <= CACHE_ENTRIES);
    }
}

#[test]
fn an_external_name_is_an_alias() {
    let v = view();
    for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        match answer(&v, D, "db-ext.default.svc.cluster.local", t) {
            Answer::Alias { cname, target } => {
                assert_eq!(target, "db.example.com");
                assert_eq!(cname.data().to_string(), "db.example.com.");
                assert_eq!(cname.record_type(), RecordType::CNAME);
            }
            other => panic!("{t}: {other:?}"),
        }
    }
}
