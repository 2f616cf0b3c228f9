//! TLS by default: the cluster CA, CA-pinned joins, MQTT over TLS only, and clients that
//! trust the cluster's CA and nothing else. Real masters, real TLS, real rumqttd.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::process::Command;
use std::time::Duration;

use bramble_agent::join::{self, JoinError};
use bramble_api::join::JoinToken;
use bramble_api::wire::NodeFacts;
use bramble_tests::{MasterProcess, bin};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

fn other_master() -> (tempfile::TempDir, MasterProcess) {
    let d = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(d.path()).unwrap();
    (d, m)
}

#[test]
fn a_join_verifies_the_master_by_the_ca_hash_its_token_carries() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let (_od, other) = other_master();
    let token = JoinToken::parse(&m.join_token()).unwrap();
    let ours = token.ca_hash.clone().expect("the listed token pins the CA");
    assert_eq!(
        ours,
        bramble_support::tls::pem_hash(m.ca_pem.as_deref().unwrap()).unwrap()
    );
    let facts = NodeFacts::default();

    // A bare secret cannot verify an https master: refused before anything is sent.
    let bare = join::join(&m.url, &token.secret, "pi1", &facts).unwrap_err();
    assert!(
        matches!(&bare, JoinError::BadToken(m) if m.contains("CA hash")),
        "{bare}"
    );
    // Another cluster's hash: this is not the master the token was made for.
    let theirs = JoinToken::parse(&other.join_token()).unwrap().ca_hash;
    let wrong = JoinToken {
        ca_hash: theirs.clone(),
        secret: token.secret.clone(),
    };
    let e = join::join(&m.url, &wrong.render(), "pi1", &facts).unwrap_err();
    match &e {
        JoinError::CaMismatch { expected, got, .. } => {
            assert_eq!(Some(expected), theirs.as_ref());
            assert_eq!(got, &ours);
        }
        other => panic!("expected a CA mismatch, got {other}"),
    }
    assert!(e.to_string().contains("pins"), "{e}");
    // The right hash with a wrong secret: the master refuses.
    let guessed = JoinToken {
        ca_hash: Some(ours.clone()),
        secret: "not-the-secret".into(),
    };
    let e = join::join(&m.url, &guessed.render(), "pi1", &facts).unwrap_err();
    assert!(
        matches!(&e, JoinError::Refused(m) if m.contains("not valid")),
        "{e}"
    );
    // The master checks the pin too: a token pinned to another CA is refused even when its
    // secret is right (it was made for another cluster).
    let r = m
        .http()
        .post_json(
            "/bramble/v1/join",
            &serde_json::json!({"token": wrong.render(), "nodeName": "pi1", "facts": facts}),
        )
        .unwrap();
    assert_eq!(r.code, 401);
    assert!(
        String::from_utf8_lossy(&r.body).contains("another cluster's CA"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(m.node_ready("pi1").is_none(), "no refused join made a node");

    // The listed token joins, and the node keeps the CA it verified.
    let creds = join::join(&m.url, &m.join_token(), "pi1", &facts).unwrap();
    assert_eq!(Some(creds.ca_pem.as_str()), m.ca_pem.as_deref());
    assert!(creds.mqtt_tls, "the embedded broker speaks TLS");
    assert_eq!(creds.mqtt_port, m.mqtt_port);
}

/// Connects and waits for the CONNACK (or the failure).
fn connects(opts: MqttOptions) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_client, mut ev) = AsyncClient::new(opts, 8);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
                Err(_) => return Err("timed out".to_string()),
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
            }
        }
    })
}

#[test]
fn the_broker_speaks_only_tls_with_the_cluster_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let (_od, other) = other_master();
    let creds = join::join(&m.url, &m.join_token(), "pi1", &NodeFacts::default()).unwrap();
    // The node's credentials over TLS with the cluster CA: accepted.
    let mut opts = m.mqtt_options("pi1");
    opts.set_credentials("pi1", &creds.node_token);
    connects(opts).unwrap();
    // The same credentials in plaintext on the TLS port: no session.
    let mut plain = MqttOptions::new("pi1", "127.0.0.1", m.mqtt_port);
    plain.set_credentials("pi1", &creds.node_token);
    assert!(connects(plain).is_err(), "plaintext MQTT was accepted");
    // A client that trusts another cluster's CA does not accept this broker.
    let mut wrong = MqttOptions::new("pi1", "127.0.0.1", m.mqtt_port);
    wrong.set_credentials("pi1", &creds.node_token);
    wrong.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(bramble_tests::rustls_client(
            other.ca_pem.as_deref().unwrap(),
        )),
    ));
    let e = connects(wrong).unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // A TLS client with wrong credentials is still refused at CONNECT.
    let mut bad = m.mqtt_options("pi1");
    bad.set_credentials("pi1", "guess");
    assert!(connects(bad).is_err());
}

#[test]
fn the_cli_verifies_the_master_with_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let (od, _other) = other_master();
    let bramble = |args: &[&str]| {
        Command::new(bin("bramble"))
            .args(["--server", &m.url, "--token", &m.token])
            .args(args)
            .env_remove("BRAMBLE_CONFIG")
            .env_remove("BRAMBLE_SERVER")
            .env_remove("BRAMBLE_TOKEN")
            .env_remove("BRAMBLE_CERTIFICATE_AUTHORITY")
            .env("HOME", dir.path())
            .output()
            .unwrap()
    };
    // No CA: a clear refusal, not a silent trust.
    let out = bramble(&["get", "nodes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--certificate-authority"), "{err}");
    // Another cluster's CA: the certificate does not verify.
    let other_ca = od.path().join("ca.crt");
    let out = bramble(&[
        "get",
        "nodes",
        "--certificate-authority",
        other_ca.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
    // This cluster's CA, from the file or from client.yaml: served.
    let ours = dir.path().join("ca.crt");
    let out = bramble(&[
        "get",
        "nodes",
        "--certificate-authority",
        ours.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin("bramble"))
        .args(["get", "nodes"])
        .env("BRAMBLE_CONFIG", dir.path().join("client.yaml"))
        .env_remove("BRAMBLE_SERVER")
        .env_remove("BRAMBLE_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = std::fs::read_to_string(dir.path().join("client.yaml")).unwrap();
    assert!(client.contains("server: https://"), "{client}");
    assert!(client.contains("BEGIN CERTIFICATE"), "{client}");
}

/// A raw MQTT session of a board over TLS: connects, then reports whether the broker cut it.
struct Board {
    rt: tokio::runtime::Runtime,
    client: AsyncClient,
    ev: rumqttc::EventLoop,
}

impl Board {
    fn connect(m: &MasterProcess, user: &str, pass: &str) -> Result<Board, String> {
        Self::connect_as(m, user, user, pass)
    }

    fn connect_as(m: &MasterProcess, id: &str, user: &str, pass: &str) -> Result<Board, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut opts = m.mqtt_options(id);
        opts.set_credentials(user, pass);
        opts.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut ev) = AsyncClient::new(opts, 64);
        rt.block_on(async {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
                    Err(_) => return Err("timed out".to_string()),
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                }
            }
        })?;
        Ok(Board { rt, client, ev })
    }

    /// Polls for `window`: the topics of what arrived, or Err when the connection ended.
    fn poll(&mut self, window: Duration) -> Result<Vec<(String, Vec<u8>)>, String> {
        let ev = &mut self.ev;
        self.rt.block_on(async {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + window;
            loop {
                match tokio::time::timeout_at(deadline, ev.poll()).await {
                    Err(_) => return Ok(got),
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        got.push((p.topic.clone(), p.payload.to_vec()))
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                }
            }
        })
    }

    fn subscribe(&mut self, filter: &str) {
        let c = self.client.clone();
        let f = filter.to_string();
        self.rt
            .block_on(async move { c.subscribe(f, rumqttc::QoS::AtLeastOnce).await })
            .unwrap();
    }

    fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        let c = self.client.clone();
        let t = topic.to_string();
        self.rt
            .block_on(async move {
                c.publish(t, rumqttc::QoS::AtLeastOnce, retain, payload)
                    .await
            })
            .unwrap();
    }

    /// Whether the broker ends the session within a few seconds.
    fn is_cut(&mut self) -> bool {
        self.poll(Duration::from_secs(5)).is_err()
    }
}

#[test]
fn a_board_is_confined_to_its_own_topics_on_the_embedded_broker() {
    use bramble_api::wire::{self, Channel, Heartbeat, Message, PodReport, StatusReport};
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let facts = NodeFacts::default();
    let a = join::join(&m.url, &m.join_token(), "board-a", &facts).unwrap();
    let _b = join::join(&m.url, &m.join_token(), "board-b", &facts).unwrap();
    // A pod bound to B, with a secret marker in an env var.
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "secret-pod", "namespace": "default"},
        "spec": {"nodeName": "board-b", "containers": [{"name": "c", "image": "busybox",
            "env": [{"name": "PASSWORD", "value": "marker-7f3a9c"}]}]}
    });
    assert_eq!(
        m.http()
            .post_json("/api/v1/namespaces/default/pods", &pod)
            .unwrap()
            .code,
        201
    );
    let connect = || Board::connect(&m, "board-a", &a.node_token).unwrap();

    // Subscribing to everything, or to B's desired state: cut, and nothing delivered.
    for filter in [
        "#",
        "bramble/v1/node/+/desired",
        &Channel::Desired.topic("board-b"),
    ] {
        let mut s = connect();
        s.subscribe(filter);
        assert!(s.is_cut(), "a subscription to {filter} was allowed");
    }
    // Its own desired topic is allowed, and B's pod never reaches it.
    let mut own = connect();
    own.subscribe(&Channel::Desired.topic("board-a"));
    let got = own.poll(Duration::from_secs(2)).unwrap();
    assert!(
        !got.iter()
            .any(|(_, p)| String::from_utf8_lossy(p).contains("marker-7f3a9c")),
        "B's pod spec reached A"
    );

    // Passing for B: heartbeats (to look Ready), a pod status (podIP 6.6.6.6), a will, a
    // log reply; desired state and network views for B; a retained message of its own.
    let forged_status = wire::encode(
        "board-b",
        Message::Status(StatusReport {
            pods: vec![PodReport {
                namespace: "default".into(),
                name: "secret-pod".into(),
                phase: "Running".into(),
                pod_ip: "6.6.6.6".into(),
                ..Default::default()
            }],
        }),
    );
    let heartbeat = |node: &str| {
        wire::encode(
            node,
            Message::Heartbeat(Heartbeat {
                seq: 1,
                usage: None,
            }),
        )
    };
    let forgeries: Vec<(String, Vec<u8>, bool)> = vec![
        (
            Channel::Heartbeat.topic("board-b"),
            heartbeat("board-b"),
            false,
        ),
        (Channel::Status.topic("board-b"), forged_status, false),
        (
            Channel::Will.topic("board-b"),
            wire::encode("board-b", Message::Gone),
            false,
        ),
        (Channel::Reply.topic("board-b"), b"forged".to_vec(), false),
        (Channel::Desired.topic("board-b"), b"forged".to_vec(), false),
        (Channel::Network.topic("board-b"), b"forged".to_vec(), false),
        (wire::SERVICES_TOPIC.to_string(), b"forged".to_vec(), false),
        (
            Channel::Heartbeat.topic("board-a"),
            heartbeat("board-a"),
            true,
        ),
    ];
    for (topic, payload, retain) in forgeries {
        let mut s = connect();
        s.publish(&topic, payload, retain);
        assert!(
            s.is_cut(),
            "a publish on {topic} (retain {retain}) was allowed"
        );
    }
    // B never looked Ready, and its pod's status is untouched.
    assert_ne!(
        m.node_ready("board-b").map(|r| r.0).as_deref(),
        Some("True")
    );
    let p = m.pod("secret-pod").unwrap();
    assert_ne!(p["status"]["podIP"], "6.6.6.6");
    assert_ne!(p["status"]["phase"], "Running");

    // The master's identity cannot be used through the front, even with the admin token,
    // and an anonymous or unknown client is refused.
    assert!(Board::connect_as(&m, "bramble-master-1", "bramble-master", &m.token).is_err());
    assert!(Board::connect_as(&m, "board-a", "board-a", "guess").is_err());
    let mut anon = m.mqtt_options("anon");
    anon.set_keep_alive(Duration::from_secs(5));
    assert!(connects(anon).is_err(), "an anonymous client was served");
    // A's own topics still work: its heartbeat is taken.
    let mut s = connect();
    s.publish(
        &Channel::Heartbeat.topic("board-a"),
        heartbeat("board-a"),
        false,
    );
    assert!(
        s.poll(Duration::from_secs(1)).is_ok(),
        "A's own heartbeat was refused"
    );
}

#[test]
fn a_deleted_node_is_cut_off_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let creds = join::join(&m.url, &m.join_token(), "board-r", &NodeFacts::default()).unwrap();
    let mut s = Board::connect(&m, "board-r", &creds.node_token).unwrap();
    assert!(s.poll(Duration::from_millis(300)).is_ok());
    let blob = |token: &str| {
        let h = bramble_tests::Http::with_ca(&m.url, token, m.ca_pem.as_deref());
        h.get("/bramble/v1/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000")
            .unwrap()
            .code
    };
    assert_ne!(blob(&creds.node_token), 401, "a live node may read blobs");
    let start = std::time::Instant::now();
    let r = m
        .http()
        .request("DELETE", "/api/v1/nodes/board-r", None, b"", true)
        .unwrap();
    assert_eq!(r.code, 200);
    assert!(s.is_cut(), "the deleted node's session was kept");
    eprintln!("session cut {:?} after the delete", start.elapsed());
    assert!(
        Board::connect(&m, "board-r", &creds.node_token).is_err(),
        "a revoked node reconnected"
    );
    assert_eq!(blob(&creds.node_token), 401);
    // Recorded.
    let events = m
        .http()
        .get("/api/v1/namespaces/default/events")
        .unwrap()
        .json();
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "CredentialsRevoked"),
        "{events}"
    );
}

#[test]
fn join_tokens_expire_run_out_are_deleted_and_cannot_take_over_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let facts = NodeFacts::default();
    let create = |args: &[&str]| {
        let mut a = vec!["token", "create"];
        a.extend_from_slice(args);
        bramble_tests::ok_stdout(&m.cli(&a)).trim().to_string()
    };
    let refusal = |token: &str, node: &str| match join::join(&m.url, token, node, &facts) {
        Err(JoinError::Refused(msg)) => msg,
        other => panic!("expected a refusal for {node}, got {other:?}"),
    };

    // Single use: the second join is refused.
    let once = create(&["--uses", "1", "--ttl", "1h"]);
    assert!(once.starts_with("B10"), "{once}");
    join::join(&m.url, &once, "one-a", &facts).unwrap();
    assert!(refusal(&once, "one-b").contains("used up"));

    // Expired: refused with the time it expired (reusable, so that a join made before the
    // second is up does not use it up).
    let short = create(&["--ttl", "1s", "--reusable"]);
    let listed = bramble_tests::ok_stdout(&m.cli(&["token", "list"]));
    // Listed by ID: the secret is shown at creation only (the master keeps its hash).
    let secret = short.split("::").nth(1).unwrap();
    let id = secret.split('.').next().unwrap();
    assert!(!listed.contains(secret), "{listed}");
    let line = listed.lines().find(|l| l.starts_with(id)).unwrap();
    let expires = line.split_whitespace().nth(2).unwrap().to_string();
    let mut msg = String::new();
    assert!(
        bramble_tests::eventually(Duration::from_secs(5), || {
            match join::join(&m.url, &short, "late", &facts) {
                Err(JoinError::Refused(m)) if m.contains("expired") => {
                    msg = m;
                    true
                }
                _ => false,
            }
        }),
        "the 1 s token was still taken after 5 s"
    );
    assert!(msg.contains(&expires), "{msg}");

    // Single use is the default: a fleet asks for --uses N or --reusable.
    let default = create(&[]);
    join::join(&m.url, &default, "dflt-a", &facts).unwrap();
    assert!(refusal(&default, "dflt-b").contains("used up"));
    let fleet = create(&["--reusable"]);
    for n in ["fleet-a", "fleet-b", "fleet-c"] {
        join::join(&m.url, &fleet, n, &facts).unwrap();
    }
    // Bound to node names: a rack's boards join, no other name does.
    let rack = create(&["--reusable", "--nodes", "rack1-*"]);
    join::join(&m.url, &rack, "rack1-a", &facts).unwrap();
    join::join(&m.url, &rack, "rack1-b", &facts).unwrap();
    assert!(refusal(&rack, "rack2-a").contains("bound to node names"));
    assert!(
        !m.cli(&["token", "create", "--nodes", "Bad_*"])
            .status
            .success()
    );

    // Deleted by ID, as listed: refused.
    let by_id = create(&[]);
    let id = by_id.split("::").nth(1).unwrap().split('.').next().unwrap();
    bramble_tests::ok_stdout(&m.cli(&["token", "delete", id]));
    assert!(refusal(&by_id, "by-id").contains("not valid"));
    // Deleted: refused; deleting again says there is none.
    let gone = create(&[]);
    let out = m.cli(&["token", "delete", &gone]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(refusal(&gone, "deleted").contains("not valid"));
    assert!(!m.cli(&["token", "delete", &gone]).status.success());
    for bad in [["--ttl", "soon"], ["--uses", "0"]] {
        assert!(!m.cli(&["token", "create", bad[0], bad[1]]).status.success());
    }

    // A joined node cannot be taken over with a join token, even a valid one.
    let any = m.join_token();
    let first = join::join(&m.url, &any, "pi1", &facts).unwrap();
    let msg = refusal(&any, "pi1");
    assert!(msg.contains("already joined"), "{msg}");
    let mut s = Board::connect(&m, "pi1", &first.node_token).unwrap();
    assert!(
        s.poll(Duration::from_millis(300)).is_ok(),
        "the real board keeps its credential"
    );
    drop(s);
    // The master's names are reserved.
    assert!(refusal(&any, "bramble-master-7").contains("reserved"));
    // An admin's approval lets one join replace the credential (a card written afresh): the
    // old credential is refused from then on, and a second join needs a second approval.
    assert!(msg.contains("bramble node approve pi1"), "{msg}");
    let out = bramble_tests::ok_stdout(&m.cli(&["node", "approve", "pi1"]));
    assert!(out.contains("until"), "{out}");
    let again = join::join(&m.url, &any, "pi1", &facts).unwrap();
    assert_ne!(again.node_token, first.node_token);
    assert!(
        Board::connect(&m, "pi1", &first.node_token).is_err(),
        "the replaced credential still connects"
    );
    let mut s = Board::connect(&m, "pi1", &again.node_token).unwrap();
    assert!(s.poll(Duration::from_millis(300)).is_ok());
    drop(s);
    assert!(
        refusal(&any, "pi1").contains("already joined"),
        "approval spent"
    );
    assert!(!m.cli(&["node", "approve", "never-joined"]).status.success());
    // Reset revokes at once: the name is free for a join token.
    bramble_tests::ok_stdout(&m.cli(&["node", "reset", "pi1"]));
    assert!(Board::connect(&m, "pi1", &again.node_token).is_err());
    join::join(&m.url, &any, "pi1", &facts).unwrap();
    // Once the node is deleted, a board may join under its name again.
    let r = m
        .http()
        .request("DELETE", "/api/v1/nodes/pi1", None, b"", true)
        .unwrap();
    assert_eq!(r.code, 200);
    assert!(bramble_tests::eventually(Duration::from_secs(5), || {
        join::join(&m.url, &any, "pi1", &facts).is_ok()
    }));
}

/// An external broker over TLS (mqtts://, its own CA): the master verifies it, hands its CA to
/// joining boards over the pinned API, and the boards verify it too, so no node token crosses
/// the network in clear on the way to the broker.
#[test]
fn agents_and_the_master_reach_an_external_broker_over_tls() {
    bramble_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = bramble_tests::AgentDirCleanup(agent_dir.clone());
    // The broker's own CA and certificate (for 127.0.0.1), not the cluster's.
    let bdir = dir.path().join("broker-pki");
    std::fs::create_dir_all(&bdir).unwrap();
    bramble_master::pki::load_or_create(&bdir, &["127.0.0.1".to_string()]).unwrap();
    let f = |name: &str| bdir.join(name).display().to_string();
    let tls = format!(
        // As root: the key is 0600, and mosquitto would otherwise read it as its own user.
        "user root\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
        f("ca.crt"),
        f("serving.crt"),
        f("serving.key")
    );
    let (_mosquitto, port) = bramble_tests::start_mosquitto_with(dir.path(), &tls).unwrap();
    let broker = format!("mqtts://127.0.0.1:{port}");
    let m = MasterProcess::start_with(
        &dir.path().join("master"),
        &[
            "--external-broker",
            &broker,
            "--external-broker-ca",
            &f("ca.crt"),
        ],
    )
    .unwrap();
    let a = bramble_tests::AgentProcess::start(&m, &agent_dir, "board-t", &["--runtime", "memory"])
        .unwrap();
    assert!(
        bramble_tests::eventually(Duration::from_secs(20), || m
            .node_ready("board-t")
            .is_some_and(|r| r.0 == "True")),
        "the board never became Ready through the broker over TLS"
    );
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: over-tls}\nspec:\n  nodeName: board-t\n  containers:\n  - {name: c, image: busybox, command: [sleep, '3600']}\n";
    bramble_tests::ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(pod)));
    assert!(
        bramble_tests::eventually(Duration::from_secs(20), || m
            .pod("over-tls")
            .is_some_and(|p| p["status"]["phase"] == "Running")),
        "the pod's desired state or status did not cross the broker"
    );
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.data_dir.join("credentials.json")).unwrap())
            .unwrap();
    assert_eq!(creds["mqttTls"], true);
    assert_eq!(
        creds["mqttCaPem"].as_str(),
        Some(
            std::fs::read_to_string(bdir.join("ca.crt"))
                .unwrap()
                .as_str()
        ),
        "the board trusts the broker's CA, handed over at join"
    );
    // A plaintext MQTT client gets nowhere on that port, and the master refuses to start with
    // mqtts:// and no CA for it.
    assert!(connects(MqttOptions::new("plain", "127.0.0.1", port)).is_err());
    let out = Command::new(bin("bramble-master"))
        .args(["--data-dir", &dir.path().join("m2").display().to_string()])
        .args(["--external-broker", &broker])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--external-broker-ca"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With an external broker that confines nobody (anonymous mosquitto, no ACL), a board that
/// publishes on another board's topics still changes nothing: every message is authenticated
/// end to end, the master's by its wire key and a node's by its own token.
#[test]
fn forgeries_through_an_open_external_broker_change_nothing() {
    use bramble_api::wire::{
        self, Channel, Desired, DesiredChange, DesiredPod, Heartbeat, Message, PodReport,
        StatusReport,
    };
    bramble_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = bramble_tests::AgentDirCleanup(agent_dir.clone());
    let (_mosquitto, port) = bramble_tests::start_mosquitto(dir.path()).unwrap();
    let m = MasterProcess::start_with(
        &dir.path().join("master"),
        &["--external-broker", &format!("127.0.0.1:{port}")],
    )
    .unwrap();
    let facts = NodeFacts::default();
    let a = join::join(&m.url, &m.join_token(), "board-a", &facts).unwrap();
    join::join(&m.url, &m.join_token(), "board-idle", &facts).unwrap();
    // Board A listens to everything the open broker carries, from before B starts.
    let spy_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel::<()>();
    let spy = {
        let stop = spy_stop.clone();
        let mut opts = MqttOptions::new("board-a-spy", "127.0.0.1", port);
        opts.set_max_packet_size(16 << 20, 16 << 20);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, mut ev) = AsyncClient::new(opts, 64);
                client
                    .subscribe("#", rumqttc::QoS::AtMostOnce)
                    .await
                    .unwrap();
                let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), ev.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            seen.push((p.topic.clone(), p.payload.to_vec()))
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            let _ = subscribed_tx.send(());
                        }
                        _ => {}
                    }
                }
                seen
            })
        })
    };
    // Subscribed before B's pod exists, so the spy sees its spec go by.
    subscribed_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the spy's subscription to # was acknowledged");
    let b = bramble_tests::AgentProcess::start(&m, &agent_dir, "board-b", &[]).unwrap();
    assert!(bramble_tests::eventually(Duration::from_secs(20), || m
        .node_ready("board-b")
        .is_some_and(|r| r.0 == "True")));
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "real", "namespace": "default"},
        "spec": {"nodeName": "board-b", "containers": [{"name": "c", "image": "busybox",
            "command": ["sleep", "3600"], "env": [{"name": "PASSWORD", "value": "marker-41c7e"}]}]}
    });
    assert_eq!(
        m.http()
            .post_json("/api/v1/namespaces/default/pods", &pod)
            .unwrap()
            .code,
        201
    );
    assert!(bramble_tests::eventually(Duration::from_secs(30), || m
        .pod("real")
        .is_some_and(|p| p["status"]["phase"] == "Running")));

    // Board A, holding its own real token, on a broker that lets it publish anywhere.
    let seal_a = |topic: &str, node: &str, msg: Message| {
        bramble_support::wire_auth::seal_from_node(
            &bramble_support::wire_auth::NodeSecret::from_token(&a.node_token),
            topic,
            node,
            wire::Stamp {
                session: 1,
                seq: u64::MAX,
            },
            msg,
        )
    };
    let hb = |_node: &str| {
        Message::Heartbeat(Heartbeat {
            seq: 1,
            usage: None,
        })
    };
    let forged_pod = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "evil", "namespace": "default", "uid": "evil-uid"},
        "spec": {"nodeName": "board-b", "hostNetwork": true, "containers": [{"name": "c",
            "image": "busybox", "command": ["sleep", "3600"]}]}
    }))
    .unwrap();
    let forged_desired = Message::Desired(Desired {
        revision: u64::MAX - 1,
        prev_revision: 0,
        change: DesiredChange::Snapshot(vec![DesiredPod {
            uid: "evil-uid".into(),
            revision: 1,
            pod_json: forged_pod,
            config: vec![],
        }]),
    });
    let forged_status = Message::Status(StatusReport {
        pods: vec![PodReport {
            namespace: "default".into(),
            name: "real".into(),
            phase: "Failed".into(),
            pod_ip: "6.6.6.6".into(),
            ..Default::default()
        }],
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let send_as_a = |sends: Vec<(String, Vec<u8>)>| {
        let mut raw = MqttOptions::new("board-a", "127.0.0.1", port);
        raw.set_max_packet_size(16 << 20, 16 << 20);
        rt.block_on(async {
            let (client, mut ev) = AsyncClient::new(raw, 64);
            let pump = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
            for (topic, payload) in sends {
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            pump.abort();
        })
    };
    {
        let sends: Vec<(String, Vec<u8>)> = vec![
            // B's desired state: tagged by A, and bare.
            (
                Channel::Desired.topic("board-b"),
                seal_a(
                    &Channel::Desired.topic("board-b"),
                    "board-b",
                    forged_desired.clone(),
                ),
            ),
            (
                Channel::Desired.topic("board-b"),
                wire::encode("board-b", forged_desired.clone()),
            ),
            // Passing for B and for the idle board: status, heartbeats, a will.
            (
                Channel::Status.topic("board-b"),
                seal_a(
                    &Channel::Status.topic("board-b"),
                    "board-b",
                    forged_status.clone(),
                ),
            ),
            (
                Channel::Heartbeat.topic("board-idle"),
                seal_a(
                    &Channel::Heartbeat.topic("board-idle"),
                    "board-idle",
                    hb("board-idle"),
                ),
            ),
            (
                Channel::Will.topic("board-b"),
                seal_a(&Channel::Will.topic("board-b"), "board-b", Message::Gone),
            ),
            (
                Channel::Will.topic("board-b"),
                wire::encode("board-b", Message::Gone),
            ),
        ];
        send_as_a(sends);
    }
    // Nothing changed: B is Ready with its real pod running, the idle board is not Ready,
    // the forged pod never reached B's disk, and both ends counted the forgeries.
    assert!(bramble_tests::consistently(Duration::from_secs(2), || {
        m.node_ready("board-b").is_some_and(|r| r.0 == "True")
            && m.node_ready("board-idle").is_none_or(|r| r.0 != "True")
            && m.pod("real").is_some_and(|p| {
                p["status"]["phase"] == "Running" && p["status"]["podIP"] != "6.6.6.6"
            })
    }));
    assert!(
        !agent_dir.join("pods/evil-uid").exists(),
        "the forged pod reached B"
    );
    let prom = std::fs::read_to_string(agent_dir.join("agent-metrics.prom")).unwrap_or_default();
    assert!(
        prom.lines()
            .any(|l| l.contains("reason=\"unauthenticated\"") && !l.ends_with(" 0")),
        "{prom}"
    );
    let metrics = String::from_utf8(m.http().get("/metrics").unwrap().body).unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("bramble_gateway_wire_unauthenticated_total") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    // What A read on the open broker: B's pod spec went by, encrypted for B only.
    spy_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = spy.join().unwrap();
    assert!(seen.len() > 5, "the spy saw {} messages", seen.len());
    let marker = b"marker-41c7e";
    assert!(
        !seen
            .iter()
            .any(|(_, p)| p.windows(marker.len()).any(|w| w == marker)),
        "B's pod spec was readable on the broker"
    );

    // A replays everything it recorded on B's topics, as recorded: B's hello, heartbeats
    // and status to the master, the master's desired messages to B (its first snapshot, from
    // before B's pod existed, among them). Stale, so nothing changes.
    let of_b: Vec<(String, Vec<u8>)> = seen
        .iter()
        .filter(|(t, _)| t.starts_with("bramble/v1/node/board-b/"))
        .cloned()
        .collect();
    for channel in ["hello", "heartbeat", "desired"] {
        assert!(
            of_b.iter().any(|(t, _)| t.ends_with(channel)),
            "the spy recorded no {channel} of B"
        );
    }
    send_as_a(of_b.clone());
    assert!(bramble_tests::consistently(Duration::from_secs(2), || {
        m.node_ready("board-b").is_some_and(|r| r.0 == "True")
            && m.pod("real")
                .is_some_and(|p| p["status"]["phase"] == "Running")
    }));
    let prom = std::fs::read_to_string(agent_dir.join("agent-metrics.prom")).unwrap_or_default();
    assert!(
        prom.lines()
            .any(|l| l.contains("reason=\"stale_snapshot\"") && !l.ends_with(" 0")),
        "B took its old snapshot again: {prom}"
    );
    assert!(
        std::fs::read_dir(agent_dir.join("pods"))
            .map(|d| d.count())
            .unwrap_or(0)
            >= 1,
        "B's real pod is gone from its disk"
    );
    let replayed = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("bramble_gateway_wire_replayed_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let metrics = String::from_utf8(m.http().get("/metrics").unwrap().body).unwrap();
    assert!(replayed(&metrics) > 0, "{metrics}");

    // B stops (its will says so); its recorded heartbeats replayed do not bring it back.
    drop(b);
    assert!(bramble_tests::eventually(Duration::from_secs(10), || m
        .node_ready("board-b")
        .is_some_and(|r| r.0 != "True")));
    let beats: Vec<(String, Vec<u8>)> = of_b
        .into_iter()
        .filter(|(t, _)| t.ends_with("/heartbeat") || t.ends_with("/hello"))
        .collect();
    send_as_a(beats);
    assert!(bramble_tests::consistently(Duration::from_secs(2), || m
        .node_ready("board-b")
        .is_some_and(|r| r.0 != "True")));
}

#[test]
fn people_and_programs_get_named_tokens_with_a_role() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let create = |args: &[&str]| {
        let mut a = vec!["token", "create"];
        a.extend_from_slice(args);
        bramble_tests::ok_stdout(&m.cli(&a)).trim().to_string()
    };
    let ci = create(&["--user", "ci", "--role", "reader"]);
    let ops = create(&["--user", "ops", "--role", "admin", "--ttl", "1h"]);
    assert!(ci.starts_with("bramble_") && ops.starts_with("bramble_"));
    // Stored hashed: neither token is anywhere in the data dir.
    for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if e.path().is_file() {
            let b = std::fs::read(e.path()).unwrap();
            let text = String::from_utf8_lossy(&b);
            assert!(
                !text.contains(&ci) && !text.contains(&ops),
                "a user token in clear in {}",
                e.path().display()
            );
        }
    }
    let pods = "/api/v1/namespaces/default/pods";
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    // The reader reads and may not write; the admin writes and manages tokens.
    let reader = m.http_as(&ci);
    assert_eq!(reader.get(pods).unwrap().code, 200);
    let r = reader.post_json(pods, &pod).unwrap();
    assert_eq!(r.code, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(reader.get("/bramble/v1/tokens").unwrap().code, 403);
    let admin = m.http_as(&ops);
    assert_eq!(admin.post_json(pods, &pod).unwrap().code, 201);
    assert_eq!(admin.get("/bramble/v1/tokens").unwrap().code, 200);
    // Listed with role, expiry and last use, never the token.
    let list = bramble_tests::ok_stdout(&m.cli(&["token", "list"]));
    let line = list.lines().find(|l| l.starts_with("ci ")).unwrap();
    assert!(line.contains("reader") && line.contains("never"), "{list}");
    assert!(
        !line.trim_end().ends_with('-'),
        "ci's last use is shown: {list}"
    );
    let line = list.lines().find(|l| l.starts_with("ops ")).unwrap();
    assert!(line.contains("admin") && !line.contains("never"), "{list}");
    assert!(!list.contains(&ci) && !list.contains(&ops));
    // Revoked at once.
    let out = m.cli(&["token", "delete", "--user", "ci"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(reader.get(pods).unwrap().code, 401);
    assert!(!m.cli(&["token", "delete", "--user", "ci"]).status.success());
    // A bad role is refused by the CLI and the API alike.
    assert!(
        !m.cli(&["token", "create", "--user", "x", "--role", "root"])
            .status
            .success()
    );
    let r = m
        .http()
        .post_json(
            "/bramble/v1/tokens",
            &serde_json::json!({"user": "x", "role": "root"}),
        )
        .unwrap();
    assert_eq!(r.code, 400);
    // Hostile token requests: numbers out of range, fields that do not belong, bad names.
    for body in [
        serde_json::json!({"ttlSeconds": u64::MAX}),
        serde_json::json!({"uses": 0}),
        serde_json::json!({"uses": 2, "reusable": true}),
        serde_json::json!({"nodes": "../etc"}),
        serde_json::json!({"surprise": 1}),
        serde_json::json!({"role": "admin"}),
        serde_json::json!({"user": "Not_A_Name", "role": "admin"}),
        serde_json::json!({"user": "x", "role": "reader", "uses": 3}),
    ] {
        let r = m.http().post_json("/bramble/v1/tokens", &body).unwrap();
        assert_eq!(r.code, 400, "{body}: {}", String::from_utf8_lossy(&r.body));
    }
}

#[test]
fn an_admin_revokes_a_node_and_it_may_join_again() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let facts = NodeFacts::default();
    let token = m.join_token();
    let old = join::join(&m.url, &token, "board-x", &facts).unwrap();
    let mut s = Board::connect(&m, "board-x", &old.node_token).unwrap();
    assert!(s.poll(Duration::from_millis(300)).is_ok());
    let out = bramble_tests::ok_stdout(&m.cli(&["token", "revoke-node", "board-x"]));
    assert!(out.contains("1 connection(s) cut"), "{out}");
    assert!(s.is_cut());
    assert!(Board::connect(&m, "board-x", &old.node_token).is_err());
    // The Node stays (with its pods' history), and a board may join under its name again.
    assert_eq!(m.http().get("/api/v1/nodes/board-x").unwrap().code, 200);
    let new = join::join(&m.url, &token, "board-x", &facts).unwrap();
    assert_ne!(new.node_token, old.node_token);
    assert!(Board::connect(&m, "board-x", &new.node_token).is_ok());
    // Nothing to revoke: a clear refusal.
    assert!(
        !m.cli(&["token", "revoke-node", "no-such-node"])
            .status
            .success()
    );
}

/// Whether the peer ends the stream (end of file or an error) within `within`.
fn ends(stream: &mut impl std::io::Read, within: std::time::Instant) -> bool {
    let mut buf = [0u8; 1024];
    while std::time::Instant::now() < within {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn the_broker_front_drops_what_is_not_mqtt_over_tls() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let addr = format!("127.0.0.1:{}", m.mqtt_port);
    let tcp = || {
        let c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        c
    };
    let soon = || std::time::Instant::now() + Duration::from_secs(10);
    // Garbage, and a plain MQTT CONNECT, on the TLS port: closed.
    let mut c = tcp();
    c.write_all(&[0xde; 300]).unwrap();
    assert!(ends(&mut c, soon()), "garbage kept open");
    let mut c = tcp();
    c.write_all(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x05\x00\x04pi-1")
        .unwrap();
    assert!(ends(&mut c, soon()), "plaintext MQTT kept open");
    // Inside TLS: a packet type only a broker sends, a length past the limit, bytes that
    // are not MQTT. Each is cut by the front.
    let tls = |bytes: &[u8]| {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(
            bramble_tests::rustls_client(m.ca_pem.as_deref().unwrap()),
            name,
        )
        .unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp());
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
        s
    };
    for (what, bytes) in [
        ("a CONNACK from a client", vec![0x20, 0x02, 0x00, 0x00]),
        ("a 256 MiB length", vec![0x30, 0xff, 0xff, 0xff, 0x7f]),
        ("not MQTT", vec![0xf0; 64]),
    ] {
        let mut s = tls(&bytes);
        assert!(ends(&mut s, soon()), "{what} kept open");
    }
    // And the broker still serves a board.
    let creds = join::join(&m.url, &m.join_token(), "pi1", &NodeFacts::default()).unwrap();
    let mut ok = m.mqtt_options("pi1");
    ok.set_credentials("pi1", &creds.node_token);
    connects(ok).unwrap();
}

/// A source that keeps failing to authenticate is held back (429 with Retry-After) for a
/// few seconds: guessing tokens goes at a few tries per second; valid tokens, the health
/// checks and other sources are served meanwhile.
#[test]
fn a_source_that_keeps_failing_to_authenticate_is_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let guess = m.http_as("not-a-token");
    let codes: Vec<u16> = (0..40)
        .map(|_| guess.get("/api/v1/pods").unwrap().code)
        .collect();
    assert_eq!(codes[0], 401);
    let held = codes
        .iter()
        .position(|&c| c == 429)
        .expect("never held back");
    assert!((15..=30).contains(&held), "held after {held}: {codes:?}");
    let r = guess.get("/api/v1/pods").unwrap();
    assert_eq!(r.code, 429);
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("retry-after") && v.parse::<u64>().is_ok()),
        "{:?}",
        r.headers
    );
    // A failed join counts as well (its token is in the body).
    let join = m
        .http()
        .request(
            "POST",
            "/bramble/v1/join",
            Some("application/json"),
            br#"{"token":"B10x::y","nodeName":"n","facts":{}}"#,
            false,
        )
        .unwrap();
    assert_eq!(join.code, 429, "a join from a held source");
    // The admin, the health checks and the CA are served meanwhile.
    assert_eq!(m.http().get("/api/v1/pods").unwrap().code, 200);
    assert_eq!(guess.get("/healthz").unwrap().code, 200);
    assert_eq!(guess.get("/cacerts").unwrap().code, 200);
    // A few seconds later the source may try again.
    assert!(bramble_tests::eventually(Duration::from_secs(5), || {
        guess.get("/api/v1/pods").unwrap().code == 401
    }));
}
