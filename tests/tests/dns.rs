//! The node-local cluster DNS for real, as root: three boards (network namespaces on a test
//! LAN, as the network test), each agent answering its pods on its bridge's address; an
//! upstream resolver (Debian's dnsmasq) in a namespace of its own. A pod on board A resolves
//! Services whose pods run on boards B and C (ClusterIP, headless, SRV, PTR) and reaches one
//! by name; Service changes show in answers at once; names keep resolving with the master
//! killed and with the upstream unreachable; pods get the kubelet's resolv.conf, hosts
//! file and Service variables. (The flood of garbage packets is the DNS module's own test.)

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bramble_tests::dns::{Code, Reply, Type, ask, ask_tcp};
use bramble_tests::netlab::{Lan, enter_netns, in_netns};
use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, echo_pod, eventually, ok_stdout, require_root,
};

const SERVICES: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-hl}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: www.outside.test
"#;

/// Pods that print what they were given, then ask for `web` by its short, namespace and full
/// names through their own resolver (busybox's nc), and keep running.
const CLIENTS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: board-a
  hostname: probe
  subdomain: web-hl
  hostAliases: [{ip: 192.0.2.9, hostnames: [alias.test]}]
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c]
    args:
    - |
      cat /etc/resolv.conf /etc/hosts; env | sort
      for n in web web.default web.default.svc.cluster.local; do
        for i in 1 2 3 4 5; do
          r=$(echo | nc -w 2 $n 80 | head -n 1) && [ -n "$r" ] && break
          sleep 1
        done
        echo "ASK $n -> $r"
      done
      exec sleep 3600
---
apiVersion: v1
kind: Pod
metadata: {name: own-dns}
spec:
  nodeName: board-a
  enableServiceLinks: false
  dnsPolicy: None
  dnsConfig: {nameservers: [192.0.2.53], searches: [corp.test], options: [{name: ndots, value: "2"}]}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "cat /etc/resolv.conf; env | sort; exec sleep 3600"]
"#;

fn running(m: &MasterProcess, pod: &str) -> bool {
    m.pod(pod)
        .is_some_and(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
}

/// Asks from inside the namespace at `ns`.
fn ask_in(ns: &Path, server: SocketAddr, name: &str, t: Type) -> Option<Reply> {
    let name = name.to_string();
    in_netns(ns, move || ask(server, &name, t, Duration::from_secs(2)))
}

fn records(r: &Option<Reply>) -> Vec<String> {
    r.as_ref().map(|r| r.records.clone()).unwrap_or_default()
}

/// The upstream resolver: dnsmasq answering `outside.test` in the namespace of `host`.
fn upstream(host: &bramble_tests::netlab::Host) -> Child {
    let (path, ip) = (host.path.clone(), host.ip.clone());
    in_netns(&path, move || {
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--port=53",
                "--address=/outside.test/192.0.2.55",
                "--local-ttl=60",
            ])
            .arg(format!("--listen-address={ip}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (scripts/setup installs dnsmasq-base)")
    })
}

#[test]
fn pods_resolve_services_across_boards_without_the_master() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut lan = Lan::new().unwrap();
    let mhost = lan.host("m", 1).unwrap();
    let names = ["a", "b", "c"];
    let boards: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| lan.host(n, 11 + i as u8).unwrap())
        .collect();
    let uhost = lan.host("u", 53).unwrap();
    let mut dnsmasq = upstream(&uhost);
    let resolv = dir.path().join("upstream.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {}\nsearch lan.test\n", uhost.ip),
    )
    .unwrap();
    let _cleanups: Vec<AgentDirCleanup> = names
        .iter()
        .map(|n| AgentDirCleanup(dir.path().join(format!("agent-{n}"))))
        .collect();
    let host_ns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let _host_ns_path = PathBuf::from(format!("/proc/self/fd/{}", host_ns.as_raw_fd()));
    enter_netns(&mhost.path).unwrap();
    let listen = format!("{}:0", mhost.ip);
    let m = MasterProcess::start_with(
        &dir.path().join("master"),
        &["--listen", &listen, "--mqtt-listen", &listen],
    )
    .unwrap();
    let token = m.join_token();
    let _agents: Vec<AgentProcess> = names
        .iter()
        .zip(&boards)
        .map(|(n, board)| {
            let (url, token, data, resolv) = (
                m.url.clone(),
                token.clone(),
                dir.path().join(format!("agent-{n}")),
                resolv.display().to_string(),
            );
            let node = format!("board-{n}");
            in_netns(&board.path, move || {
                AgentProcess::join_with_pod_network_args(
                    &url,
                    &token,
                    &data,
                    &node,
                    &["--resolv-conf", &resolv],
                )
            })
            .unwrap()
        })
        .collect();
    for n in names {
        let node = format!("board-{n}");
        assert!(
            eventually(Duration::from_secs(30), || m
                .node_ready(&node)
                .is_some_and(|r| r.0 == "True")),
            "{node} never became Ready"
        );
    }
    let manifest = format!(
        "{}{}{SERVICES}",
        echo_pod("web-b", "board-b", "web"),
        echo_pod("web-c", "board-c", "web")
    );
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&manifest)));
    for p in ["web-b", "web-c"] {
        assert!(
            eventually(Duration::from_secs(60), || m.pod(p).is_some_and(
                |p| p["status"]["containerStatuses"][0]["ready"] == true
            )),
            "{p} never became ready"
        );
    }
    let cluster_ip = {
        let s = m
            .http()
            .get("/api/v1/namespaces/default/services/web")
            .unwrap()
            .json();
        s["spec"]["clusterIP"].as_str().unwrap().to_string()
    };
    let want_ip = vec![cluster_ip.clone()];
    let web_ips: Vec<String> = {
        let mut v: Vec<String> = ["web-b", "web-c"]
            .iter()
            .map(|p| m.pod_field(p, &["status", "podIP"]))
            .collect();
        v.sort();
        v
    };
    // The clients start after the Services exist: they get their variables.
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(CLIENTS)));
    for p in ["client", "own-dns"] {
        assert!(
            eventually(Duration::from_secs(60), || running(&m, p)),
            "{p} never ran: {:?}",
            m.pod(p).map(|p| p["status"].clone())
        );
    }
    let client_ip: Ipv4Addr = m.pod_field("client", &["status", "podIP"]).parse().unwrap();
    // The board's DNS server: its bridge's address (the pod CIDR's first host).
    let o = client_ip.octets();
    let server = SocketAddr::from((Ipv4Addr::new(o[0], o[1], o[2], 1), 53));
    let client_uid = m.pod_field("client", &["metadata", "uid"]);
    let ns = dir.path().join("agent-a/netns").join(&client_uid);

    // The pod's own files and variables, and names through its own resolver.
    let logs = |pod: &str| String::from_utf8_lossy(&m.cli(&["logs", pod]).stdout).into_owned();
    assert!(
        eventually(Duration::from_secs(60), || logs("client")
            .contains("ASK web.default.svc.cluster.local ->")),
        "the client never finished: {}",
        logs("client")
    );
    let out = logs("client");
    assert!(
        out.contains(&format!("nameserver {}\n", server.ip())),
        "{out}"
    );
    assert!(
        out.contains("search default.svc.cluster.local svc.cluster.local cluster.local lan.test\n"),
        "{out}"
    );
    assert!(out.contains("options ndots:5\n"), "{out}");
    assert!(
        out.contains(&format!(
            "{client_ip}\tprobe.web-hl.default.svc.cluster.local\tprobe\n"
        )),
        "{out}"
    );
    assert!(out.contains("192.0.2.9\talias.test\n"), "{out}");
    assert!(
        out.contains(&format!("WEB_SERVICE_HOST={cluster_ip}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("WEB_PORT_80_TCP=tcp://{cluster_ip}:80\n")),
        "{out}"
    );
    assert!(
        !out.contains("WEB_HL_SERVICE_HOST"),
        "a headless Service has none: {out}"
    );
    for n in ["web", "web.default", "web.default.svc.cluster.local"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("ASK {n} ->")))
            .unwrap_or_default();
        assert!(
            line.ends_with("web-b") || line.ends_with("web-c"),
            "{n} by name through the pod's resolver: {line:?}\n{out}"
        );
    }
    let own = logs("own-dns");
    assert!(
        own.starts_with("nameserver 192.0.2.53\nsearch corp.test\noptions ndots:2\n"),
        "{own}"
    );
    assert!(
        !own.contains("_SERVICE_HOST"),
        "enableServiceLinks: false: {own}"
    );

    // Records, asked from the pod's namespace.
    let q = |name: &str, t: Type| ask_in(&ns, server, name, t);
    assert_eq!(
        records(&q("web.default.svc.cluster.local", Type::A)),
        want_ip
    );
    assert_eq!(
        records(&q("web-hl.default.svc.cluster.local", Type::A)),
        web_ips
    );
    let srv = records(&q("_http._tcp.web.default.svc.cluster.local", Type::SRV));
    assert_eq!(srv, ["0 100 80 web.default.svc.cluster.local."]);
    let o: Vec<&str> = cluster_ip.split('.').collect();
    let arpa = format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
    assert_eq!(
        records(&q(&arpa, Type::PTR)),
        ["web.default.svc.cluster.local."]
    );
    let nx = q("nope.default.svc.cluster.local", Type::A).unwrap();
    assert_eq!(nx.code, Code::NXDomain);
    // Forwarded to the board's upstream (dnsmasq).
    assert_eq!(records(&q("www.outside.test", Type::A)), ["192.0.2.55"]);
    // An ExternalName Service: the alias, then its target's address.
    assert_eq!(
        records(&q("ext.default.svc.cluster.local", Type::A)),
        ["192.0.2.55", "www.outside.test."]
    );
    // Over TCP too.
    let tcp = in_netns(&ns, move || {
        ask_tcp(
            server,
            "web.default.svc.cluster.local",
            Type::A,
            Duration::from_secs(2),
        )
    });
    assert_eq!(records(&tcp), want_ip);
    // Board B answers the same names for its own pods.
    let b_uid = m.pod_field("web-b", &["metadata", "uid"]);
    let b_ip: Ipv4Addr = m.pod_field("web-b", &["status", "podIP"]).parse().unwrap();
    let bo = b_ip.octets();
    let b_server = SocketAddr::from((Ipv4Addr::new(bo[0], bo[1], bo[2], 1), 53));
    let b_ns = dir.path().join("agent-b/netns").join(&b_uid);
    let b_asks = || {
        records(&ask_in(
            &b_ns,
            b_server,
            "web.default.svc.cluster.local",
            Type::A,
        ))
    };
    assert_eq!(b_asks(), want_ip);

    // A Service created, changed and deleted shows in the answers at once.
    let late = "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec:\n  selector: {app: none}\n  ports: [{name: x, port: 81}]\n";
    let t = Instant::now();
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(late)));
    let mut seen = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            seen = q("late.default.svc.cluster.local", Type::A);
            seen.as_ref()
                .is_some_and(|r| r.code == Code::NoError && !r.records.is_empty())
        }),
        "the new Service never resolved: {seen:?}"
    );
    eprintln!("a new Service resolved {:?} after its create", t.elapsed());
    let changed = late.replace("[{name: x, port: 81}]", "[{name: y, port: 82}]");
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&changed)));
    assert!(eventually(Duration::from_secs(5), || records(&q(
        "_y._tcp.late.default.svc.cluster.local",
        Type::SRV
    ))
    .first()
    .is_some_and(|r| r.starts_with("0 100 82 "))));
    ok_stdout(&m.cli(&["delete", "service", "late"]));
    assert!(
        eventually(Duration::from_secs(5), || q(
            "late.default.svc.cluster.local",
            Type::A
        )
        .is_some_and(|r| r.code == Code::NXDomain)),
        "the deleted Service still resolves"
    );

    // The upstream gone: cluster names still answer at once; outside names fail cleanly.
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    let t = Instant::now();
    assert_eq!(
        records(&q("web.default.svc.cluster.local", Type::A)),
        want_ip
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // An outside name not in the cache: SERVFAIL once the upstream does not answer (the
    // forwarder's timeouts are 2 s, twice), never a hang or a made-up answer.
    let out = {
        let ns = ns.clone();
        in_netns(&ns, move || {
            ask(
                server,
                "other.outside.test",
                Type::A,
                Duration::from_secs(8),
            )
        })
    };
    assert_eq!(out.map(|r| r.code), Some(Code::ServFail));
    // A name it answered before is still answered from the cache.
    assert_eq!(records(&q("www.outside.test", Type::A)), ["192.0.2.55"]);

    // The master killed: every board still answers from its view.
    m.kill9();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        records(&q("web-hl.default.svc.cluster.local", Type::A)),
        web_ips
    );
    assert_eq!(b_asks(), want_ip);
}
