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
