//! The agent's cluster DNS against Debian's dnsmasq serving the same records on the same
//! machine in the same run: queries/s and latency for cluster names (1,000 Services, asked
//! at random) and for cached external names (forwarded to a third server, an upstream
//! dnsmasq, and answered from each server's cache), and what the DNS server adds to a
//! process's RSS.
//!
//! Everything on loopback (127.0.0.3 upstream, .4 the agent's server, .5 dnsmasq, port 53);
//! the load comes from 32 source addresses (as 32 pods, each within the per-source budget),
//! 32 threads with one query in flight each. `BRAMBLE_BENCH_DNS_SECS` sets each
//! measurement's length (3 s), `BRAMBLE_BENCH_DNS_ROUNDS` the alternating rounds (3).
//! Needs root (port 53) and dnsmasq (`scripts/setup`).

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_agent::network::NetView;
use bramble_agent::network::dns::{DnsSettings, DnsStats, serve};
use bramble_api::meta::ObjectMeta;
use bramble_api::service::{Service, ServicePort, ServiceSpec};
use bramble_tests::dns::{Type, parse_reply, query_bytes};
use bramble_tests::percentile;

const SERVICES: usize = 1000;
const CLIENTS: usize = 32;
const EXTERNAL: [&str; 8] = [
    "a.ext.test",
    "b.ext.test",
    "c.ext.test",
    "d.ext.test",
    "e.ext.test",
    "f.ext.test",
    "g.ext.test",
    "h.ext.test",
];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn service_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 43, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn dnsmasq(listen: &str, extra: &[String]) -> Child {
    // setpriv: dnsmasq dies with this bench, even when the bench stops on a failure.
    Command::new("setpriv")
        .args([
            "--pdeathsig",
            "KILL",
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--port=53",
        ])
        .arg(format!("--listen-address={listen}"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (scripts/setup installs dnsmasq-base)")
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("the DNS server's process is gone")
}

/// Queries/s and p50/p99 latency (ms) against `server` for `secs`, names from `names`.
/// With `clients` threads, one query in flight each.
fn load(server: SocketAddr, names: &[String], secs: f64, clients: usize) -> (f64, f64, f64) {
    let names = Arc::new(names.to_vec());
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let names = names.clone();
            std::thread::spawn(move || {
                let src = Ipv4Addr::new(127, 0, 1, 1 + c as u8);
                let sock = UdpSocket::bind((src, 0)).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut lat = Vec::new();
                let mut buf = [0u8; 1500];
                let mut i = c;
                let mut id = (c as u16) << 10;
                while Instant::now() < deadline {
                    let name = &names[i % names.len()];
                    i = i.wrapping_mul(31).wrapping_add(7) % 1_000_003;
                    id = id.wrapping_add(1);
                    let q = query_bytes(id, name, Type::A);
                    let t = Instant::now();
                    sock.send_to(&q, server).unwrap();
                    // A lost query (no answer in 500 ms) is not counted.
                    while let Ok((n, _)) = sock.recv_from(&mut buf) {
                        if let Some(r) = parse_reply(id, &buf[..n]) {
                            assert!(!r.records.is_empty(), "{name}: {r:?}");
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                            break;
                        }
                    }
                    if clients == 1 {
                        // Unloaded: about 1,000 queries/s (within the per-source budget).
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                lat
            })
        })
        .collect();
    let lat: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let qps = lat.len() as f64 / secs;
    (qps, percentile(lat.clone(), 0.5), percentile(lat, 0.99))
}

/// The child: the agent's DNS server over 1,000 Services; prints its RSS (kB) before the
/// server starts, then serves until killed.
fn child(upstream_conf: PathBuf) {
    // Dies with the bench.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).unwrap();
    let ip = |i: usize| service_ip(i).to_string();
    // The agent's server, in this process on a thread of its own as in the agent.
    let mut view = NetView::default();
    view.cluster_cidr = "10.42.0.0/16".into();
    view.service_cidr = "10.43.0.0/16".into();
    for i in 0..SERVICES {
        let name = format!("web-{i}");
        view.services.insert(
            ("default".into(), name.clone()),
            Service {
                metadata: ObjectMeta {
                    name,
                    namespace: "default".into(),
                    ..Default::default()
                },
                spec: ServiceSpec {
                    cluster_ip: ip(i),
                    ports: vec![ServicePort {
                        name: "http".into(),
                        port: 80,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ..Default::default()
            },
        );
    }
    let ours = SocketAddr::from(([127, 0, 0, 4], 53));
    println!("{}", rss_kb(std::process::id()));
    let settings = DnsSettings {
        domain: "cluster.local".into(),
        upstream: PathBuf::from(&upstream_conf),
        port: 53,
        serve: true,
    };
    let view = Arc::new(Mutex::new(view));
    let server = std::thread::Builder::new()
        .name("cluster-dns".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(
                ours,
                &settings,
                view,
                Arc::new(DnsStats::default()),
                std::future::pending(),
            ))
            .unwrap();
        })
        .unwrap();
    let _ = server.join();
}

fn main() {
    if let Some(conf) = std::env::var_os("BRAMBLE_BENCH_DNS_CHILD") {
        return child(PathBuf::from(conf));
    }
    let secs = env("BRAMBLE_BENCH_DNS_SECS", 3) as f64;
    let rounds = env("BRAMBLE_BENCH_DNS_ROUNDS", 3).max(1);
    let dir = tempfile::tempdir().unwrap();
    let ip = |i: usize| service_ip(i).to_string();
    // The upstream: the "internet" for the external names.
    let mut upstream = dnsmasq(
        "127.0.0.3",
        &[
            "--no-resolv".into(),
            "--address=/ext.test/192.0.2.1".into(),
            // A TTL, so that both servers cache its answers.
            "--local-ttl=300".into(),
        ],
    );
    // dnsmasq with the same cluster records (a hosts file) and the same upstream.
    let hosts = dir.path().join("cluster.hosts");
    let mut f = std::fs::File::create(&hosts).unwrap();
    for i in 0..SERVICES {
        writeln!(f, "{}\tweb-{i}.default.svc.cluster.local", ip(i)).unwrap();
    }
    drop(f);
    let mut baseline = dnsmasq(
        "127.0.0.5",
        &[
            "--no-resolv".into(),
            "--server=127.0.0.3".into(),
            format!("--addn-hosts={}", hosts.display()),
            "--cache-size=1000".into(),
            "--local-ttl=5".into(),
        ],
    );
    // The agent's server, in a child process (this bench's binary again), on a thread of
    // its own as in the agent.
    let upstream_conf = dir.path().join("upstream.conf");
    std::fs::write(&upstream_conf, "nameserver 127.0.0.3\n").unwrap();
    let ours = SocketAddr::from(([127, 0, 0, 4], 53));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("BRAMBLE_BENCH_DNS_CHILD", &upstream_conf)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rss_before: u64 = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().parse().unwrap()
    };
    let theirs = SocketAddr::from(([127, 0, 0, 5], 53));
    // Both answer before measuring.
    let cluster: Vec<String> = (0..SERVICES)
        .map(|i| format!("web-{i}.default.svc.cluster.local"))
        .collect();
    let external: Vec<String> = EXTERNAL.iter().map(|s| s.to_string()).collect();
    for s in [ours, theirs] {
        let t = Instant::now();
        while load(s, &cluster[..1], 0.2, CLIENTS).0 == 0.0 {
            assert!(t.elapsed() < Duration::from_secs(10), "{s} never answered");
        }
        load(s, &external, 0.5, CLIENTS); // fills the caches
    }
    let mut figures: BTreeMap<&str, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for r in 0..rounds {
        for (label, server) in [("bramble", ours), ("dnsmasq", theirs)] {
            let c = load(server, &cluster, secs, CLIENTS);
            let e = load(server, &external, secs, CLIENTS);
            // Latency unloaded: one client, one query at a time, a millisecond apart.
            let one = load(server, &cluster, secs, 1);
            println!(
                "round {}: {label}: one client, cluster names: p50 {:.3} p99 {:.3} ms",
                r + 1,
                one.1,
                one.2
            );
            figures
                .entry(if label == "bramble" { "b1" } else { "d1" })
                .or_default()
                .push(one);
            println!(
                "round {}: {label}: cluster {:.0} q/s p50 {:.3} p99 {:.3} ms; external (cached) {:.0} q/s p50 {:.3} p99 {:.3} ms",
                r + 1,
                c.0,
                c.1,
                c.2,
                e.0,
                e.1,
                e.2
            );
            figures
                .entry(if label == "bramble" { "bc" } else { "dc" })
                .or_default()
                .push(c);
            figures
                .entry(if label == "bramble" { "be" } else { "de" })
                .or_default()
                .push(e);
        }
    }
    let rss_after = rss_kb(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let _ = upstream.kill();
    let _ = baseline.kill();
    let _ = upstream.wait();
    let _ = baseline.wait();
    let med = |k: &str, f: fn(&(f64, f64, f64)) -> f64| {
        percentile(figures[k].iter().map(f).collect(), 0.5)
    };
    println!(
        "| benchmark ({rounds} rounds of {secs} s, medians) | bramble-agent DNS | dnsmasq (same run) | ratio |"
    );
    println!("|---|---|---|---|");
    for (what, b, d) in [
        ("cluster names (1,000 Services)", "bc", "dc"),
        ("external names, cached", "be", "de"),
    ] {
        println!(
            "| {what}: queries/s | {:.0} | {:.0} | {:.2}x |",
            med(b, |f| f.0),
            med(d, |f| f.0),
            med(b, |f| f.0) / med(d, |f| f.0)
        );
        println!(
            "| {what}: p50 / p99 latency, 32 clients | {:.3} / {:.3} ms | {:.3} / {:.3} ms | |",
            med(b, |f| f.1),
            med(b, |f| f.2),
            med(d, |f| f.1),
            med(d, |f| f.2)
        );
    }
    println!(
        "| cluster names, one client, a query every millisecond: p50 / p99 latency | {:.3} / {:.3} ms | {:.3} / {:.3} ms | |",
        med("b1", |f| f.1),
        med("b1", |f| f.2),
        med("d1", |f| f.1),
        med("d1", |f| f.2)
    );
    println!(
        "| RSS the DNS server adds to its process (1,000 Services, after the load) | {:.1} MB | | |",
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0
    );
}
