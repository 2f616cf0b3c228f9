//! The MQTT side for real: hostile payloads on every topic the master and the agent consume
//! (sent with a real MQTT client), and the whole flow against Debian's mosquitto instead of
//! the embedded broker.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::Duration;

use bramble_api::wire::{self, Channel, Heartbeat, Message, StatusReport};
use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, consistently, eventually, ok_stdout, require_root,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  nodeName: NODE
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'trap "exit 0" TERM; echo steady; while true; do sleep 0.5; done']
"#;

fn ready(m: &MasterProcess, pod: &str) -> bool {
    m.pod(pod)
        .is_some_and(|p| p["status"]["containerStatuses"][0]["ready"] == true)
}

/// Seals a message for a topic the way its rightful sender does.
type Sealer<'a> = &'a dyn Fn(&str, &str, Message) -> Vec<u8>;

/// Every kind of bad payload on `topic` of `node`: properly sealed by `seal` where the test
/// needs to reach the checks behind the authentication, forged by `forge` where it does not.
fn hostile_payloads(
    node: &str,
    topic: &str,
    seal: Sealer,
    forge: Sealer,
) -> Vec<(&'static str, Vec<u8>)> {
    let good = seal(topic, node, Message::Status(StatusReport { pods: vec![] }));
    let mut wrong_version = good.clone();
    wrong_version[0] = wire::PROTOCOL_VERSION as u8 + 6;
    let hb = || {
        Message::Heartbeat(Heartbeat {
            seq: 1,
            usage: None,
        })
    };
    vec![
        (
            "garbage",
            (0..200u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect(),
        ),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("wrong version", wrong_version),
        ("oversized", vec![1u8; wire::MAX_MESSAGE_BYTES + 10]),
        ("other node", seal(topic, "someone-else", hb())),
        ("wrong channel", seal(topic, node, Message::Gone)),
        ("forged", forge(topic, node, hb())),
        ("unsigned", wire::encode(node, hb())),
    ]
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn hostile_payloads_on_every_topic_are_counted_and_dropped() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    // Plaintext: the test plays the master's own client, which in TLS mode reaches rumqttd
    // on loopback only (boards are confined by the TLS front: tests/tests/trust.rs).
    let m =
        MasterProcess::start_with(&dir.path().join("master"), &["--insecure-plaintext"]).unwrap();
    let agent = AgentProcess::start(&m, &agent_dir, "board-g", &[]).unwrap();
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&POD.replace("NODE", "board-g"))));
    assert!(eventually(Duration::from_secs(30), || ready(&m, "steady")));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sent = rt.block_on(async {
        // The master's own MQTT identity is the only one that may publish anywhere.
        let mut opts = m.mqtt_options("bramble-master-hostile-test");
        opts.set_credentials("bramble-master", &m.token);
        opts.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut ev) = AsyncClient::new(opts, 64);
        let pump = tokio::spawn(async move {
            loop {
                if let Err(e) = ev.poll().await {
                    panic!("test client lost its connection: {e}");
                }
            }
        });
        let mut sent = 0;
        let secret = agent.secret();
        let not_the_secret = bramble_support::wire_auth::NodeSecret::from_token("not-the-token");
        let master_key =
            bramble_support::wire_auth::MasterKey::load_or_create(&m.data_dir.join("wire.key"))
                .unwrap();
        let other_key = bramble_support::wire_auth::MasterKey::load_or_create(
            &dir.path().join("other-wire.key"),
        )
        .unwrap();
        // Any stamp: these fail on checks made before freshness.
        let st = wire::Stamp { session: 1, seq: 1 };
        let as_node = |t: &str, n: &str, msg: Message| {
            bramble_support::wire_auth::seal_from_node(&secret, t, n, st, msg)
        };
        let as_other_node = |t: &str, n: &str, msg: Message| {
            bramble_support::wire_auth::seal_from_node(&not_the_secret, t, n, st, msg)
        };
        let as_master =
            |t: &str, n: &str, msg: Message| master_key.seal_for(t, n, &secret, st, msg);
        let as_other_master =
            |t: &str, n: &str, msg: Message| other_key.seal_for(t, n, &secret, st, msg);
        for channel in [
            Channel::Hello,
            Channel::Heartbeat,
            Channel::Status,
            Channel::Will,
            Channel::Reply,
            Channel::Desired,
            Channel::Request,
        ] {
            let topic = channel.topic("board-g");
            let to_agent = matches!(channel, Channel::Desired | Channel::Request);
            let (seal, forge): (Sealer, Sealer) = if to_agent {
                (&as_master, &as_other_master)
            } else {
                (&as_node, &as_other_node)
            };
            for (label, payload) in hostile_payloads("board-g", &topic, seal, forge) {
                let payload = if label == "wrong channel" && channel == Channel::Will {
                    // Gone is right for the will topic: send a heartbeat there instead.
                    seal(
                        &topic,
                        "board-g",
                        Message::Heartbeat(Heartbeat {
                            seq: 9,
                            usage: None,
                        }),
                    )
                } else {
                    payload
                };
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
                sent += 1;
            }
        }
        // A topic outside the scheme, too.
        client
            .publish(
                "bramble/v1/node/board-g",
                QoS::AtLeastOnce,
                false,
                vec![1, 2, 3],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        pump.abort();
        sent
    });
    assert_eq!(sent, 63);

    // The master counted what it consumes (5 channels x 9 payloads).
    let metrics = || String::from_utf8(m.http().get("/metrics").unwrap().body).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let t = metrics();
            [
                "wire_malformed",
                "wire_bad_version",
                "wire_too_large",
                "wire_node_mismatch",
                "wire_wrong_channel",
                "wire_unauthenticated",
            ]
            .iter()
            .all(|r| metric(&t, &format!("bramble_gateway_{r}_total")) >= 5)
        }),
        "master metrics:\n{}",
        metrics()
    );
    // The agent counted what it consumes (desired and request: 2 channels x 9 payloads).
    let prom = agent_dir.join("agent-metrics.prom");
    assert!(
        eventually(Duration::from_secs(10), || {
            let t = std::fs::read_to_string(&prom).unwrap_or_default();
            [
                "malformed",
                "bad_version",
                "too_large",
                "node_mismatch",
                "wrong_channel",
                "unauthenticated",
            ]
            .iter()
            .all(|r| {
                metric(
                    &t,
                    &format!("bramble_agent_dropped_messages_total{{reason=\"{r}\"}}"),
                ) >= 2
            })
        }),
        "agent metrics:\n{}",
        std::fs::read_to_string(&prom).unwrap_or_default()
    );
    // Nothing was lost: the node stays Ready, the pod runs unrestarted, both processes live.
    assert!(consistently(Duration::from_secs(1), || {
        m.node_ready("board-g").is_some_and(|r| r.0 == "True")
            && ready(&m, "steady")
            && m.pod("steady").unwrap()["status"]["containerStatuses"][0]["restartCount"] == 0
    }));
    assert!(ok_stdout(&m.cli(&["logs", "steady"])).contains("steady"));
}

#[test]
fn the_whole_flow_runs_against_mosquitto() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let (_mosquitto, port) = bramble_tests::start_mosquitto(dir.path()).unwrap();
    let broker = format!("127.0.0.1:{port}");
    let m = MasterProcess::start_with(&dir.path().join("master"), &["--external-broker", &broker])
        .unwrap();
    assert_eq!(
        m.mqtt_port, port,
        "the master must point agents at mosquitto"
    );
    let a = AgentProcess::start(&m, &agent_dir, "board-q", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m
        .node_ready("board-q")
        .is_some_and(|r| r.0 == "True")));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&POD.replace("NODE", "board-q"))));
    assert!(eventually(Duration::from_secs(30), || ready(&m, "steady")));
    assert!(eventually(Duration::from_secs(10), || {
        String::from_utf8_lossy(&m.cli(&["logs", "steady"]).stdout).contains("steady")
    }));
    ok_stdout(&m.cli(&["delete", "pod", "steady"]));
    assert!(eventually(Duration::from_secs(20), || m
        .pod("steady")
        .is_none()));
    // mosquitto delivers the agent's last will when it dies.
    a.kill9();
    assert!(
        eventually(Duration::from_secs(5), || m
            .node_ready("board-q")
            .is_some_and(|r| r.0 == "False" && r.1 == "NodeLost")),
        "{:?}",
        m.node_ready("board-q")
    );
}

/// A subscriber on a node's desired topic sees revisioned messages whose chain is unbroken.
#[test]
fn desired_messages_carry_an_unbroken_revision_chain() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    // Plaintext: the test subscribes as the master's own client (see above).
    let m =
        MasterProcess::start_with(&dir.path().join("master"), &["--insecure-plaintext"]).unwrap();
    let agent = AgentProcess::start(&m, &agent_dir, "board-r", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m
        .node_ready("board-r")
        .is_some_and(|r| r.0 == "True")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let master_key =
        bramble_support::wire_auth::MasterKey::load_or_create(&m.data_dir.join("wire.key"))
            .unwrap();
    let secret = agent.secret();
    let chain = rt.block_on(async {
        let mut opts = m.mqtt_options("bramble-master-chain-test");
        opts.set_credentials("bramble-master", &m.token);
        opts.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut ev) = AsyncClient::new(opts, 64);
        client
            .subscribe(Channel::Desired.topic("board-r"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut applied = false;
        while tokio::time::Instant::now() < deadline && seen.len() < 4 {
            let e = tokio::time::timeout(Duration::from_millis(200), ev.poll()).await;
            if let Ok(Ok(Event::Incoming(Packet::SubAck(_)))) = e {
                for i in 0..4 {
                    let pod = POD
                        .replace("NODE", "board-r")
                        .replace("steady", &format!("chain-{i}"));
                    let h = m.cli_with_stdin(&["apply", "-f", "-"], Some(&pod));
                    assert!(h.status.success());
                }
                applied = true;
            }
            if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) = e
                && let Ok(env) = bramble_support::wire_auth::open_from_master(
                    master_key.public(),
                    &p.topic,
                    &p.payload,
                    Some(&secret),
                )
                && let Message::Desired(d) = env.message
            {
                seen.push((d.prev_revision, d.revision));
            }
        }
        assert!(applied);
        seen
    });
    assert!(chain.len() >= 4, "saw {chain:?}");
    for w in chain.windows(2) {
        // A snapshot (prev 0; sent on every hello, e.g. after a reconnect under load)
        // restarts the chain; every other message follows the one before it.
        if w[1].0 == 0 {
            assert!(w[1].1 >= w[0].1, "a snapshot went back in time: {chain:?}");
            continue;
        }
        assert_eq!(w[1].0, w[0].1, "broken chain: {chain:?}");
        assert!(w[1].1 > w[0].1);
    }
}

/// Runs `mosquitto_passwd -b FILE USER PASS` (creating the file with `create`).
fn mosquitto_user(file: &std::path::Path, user: &str, pass: &str, create: bool) {
    let mut c = std::process::Command::new("mosquitto_passwd");
    c.arg("-b");
    if create {
        c.arg("-c");
    }
    let out = c.arg(file).args([user, pass]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Connects with these credentials (Err: refused) and publishes `payload` to each of
/// `publish` (QoS 1); returns the client and its event loop's task once the publishes are
/// acknowledged.
async fn connect(
    port: u16,
    user: &str,
    pass: &str,
) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let mut opts = MqttOptions::new(
        format!("probe-{user}-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_credentials(user, pass);
    let (client, mut ev) = AsyncClient::new(opts, 16);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Err(_) => return Err("timed out".into()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok((client, ev)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// Which of `topics` a node's client can publish to, as seen by a master-credentialed spy
/// subscribed to all of them (the broker drops what the ACL denies).
fn delivered(port: u16, node: &str, token: &str, topics: &[&str]) -> Vec<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (spy, mut spy_ev) = connect(port, "bramble-master", "master-secret")
            .await
            .unwrap();
        for t in topics {
            spy.subscribe(*t, QoS::AtLeastOnce).await.unwrap();
        }
        let mut acked = 0;
        while acked < topics.len() {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = spy_ev.poll().await {
                acked += 1;
            }
        }
        let (node_client, mut node_ev) = connect(port, node, token).await.unwrap();
        for t in topics {
            node_client
                .publish(*t, QoS::AtLeastOnce, false, b"probe".to_vec())
                .await
                .unwrap();
        }
        let mut seen = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                e = spy_ev.poll() => if let Ok(Event::Incoming(Packet::Publish(p))) = e {
                    seen.insert(p.topic);
                },
                _ = node_ev.poll() => {}
            }
        }
        topics.iter().map(|t| seen.contains(*t)).collect()
    })
}

fn refused(port: u16, user: &str, pass: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(connect(port, user, pass)).is_err()
}

/// The master authenticates at an external broker that requires passwords, and the broker's
/// ACL confines each node to its own topics (plus the shared network stream).
#[test]
fn an_external_broker_with_passwords_confines_each_node_to_its_topics() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let pw = dir.path().join("mosquitto.passwd");
    mosquitto_user(&pw, "bramble-master", "master-secret", true);
    let acl = dir.path().join("mosquitto.acl");
    std::fs::write(
        &acl,
        "pattern readwrite bramble/v1/node/%u/#\npattern read bramble/v1/services\n\nuser bramble-master\ntopic readwrite #\n",
    )
    .unwrap();
    let (mosquitto, port) = bramble_tests::start_mosquitto_with(
        dir.path(),
        &format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\n",
            pw.display(),
            acl.display()
        ),
    )
    .unwrap();
    let secret = dir.path().join("master.secret");
    std::fs::write(&secret, "master-secret\n").unwrap();
    let broker = format!("127.0.0.1:{port}");
    let m = MasterProcess::start_with(
        &dir.path().join("master"),
        &[
            "--external-broker",
            &broker,
            "--external-broker-password-file",
            secret.to_str().unwrap(),
        ],
    )
    .unwrap();
    // Join through the API, give the node its broker account, then start its agent.
    let creds = bramble_agent::join::join(
        &m.url,
        &m.join_token(),
        "board-s",
        &bramble_api::wire::NodeFacts::default(),
    )
    .unwrap();
    std::fs::create_dir_all(&agent_dir).unwrap();
    bramble_agent::join::save(&agent_dir, &creds).unwrap();
    bramble_tests::busybox_image(&agent_dir.join("images")).unwrap();
    mosquitto_user(&pw, "board-s", &creds.node_token, false);
    bramble_tests::send_signal(mosquitto.0.id() as i32, libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || !refused(
            port,
            "board-s",
            &creds.node_token
        )),
        "mosquitto never accepted the node's new account"
    );
    let _a = AgentProcess::restart(&agent_dir, "board-s", &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || m
            .node_ready("board-s")
            .is_some_and(|r| r.0 == "True")),
        "the node never became Ready through the authenticated broker"
    );
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&POD.replace("NODE", "board-s"))));
    assert!(eventually(Duration::from_secs(30), || ready(&m, "steady")));
    // The node may publish on its own topics, not on another node's (nor on the stream).
    let seen = delivered(
        port,
        "board-s",
        &creds.node_token,
        &[
            "bramble/v1/node/board-s/probe",
            "bramble/v1/node/board-t/probe",
            "bramble/v1/services",
        ],
    );
    assert_eq!(seen, vec![true, false, false]);
    assert!(
        refused(port, "board-s", "wrong"),
        "a wrong password connected"
    );
    assert!(refused(port, "", ""), "an anonymous client connected");
}
