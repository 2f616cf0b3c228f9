//! End-to-end authentication of the wire (see `bramble_api::wire`): the broker relays
//! frames it cannot forge.
//!
//! - Master → agents: an Ed25519 signature by the master's wire key. Agents hold only the
//!   public half, so no board can sign as the master, for any topic.
//! - Agent → master: an HMAC-SHA256 keyed by the node's wire secret, derived from its own
//!   token, which only that board and the master know, so no board can speak for another.
//!   The master keeps the secret, never the token itself ([`NodeSecret`]).
//!
//! Each tag covers the topic and the envelope's bytes.
//!
//! What travels on a node's own topics (desired pods, log requests and replies, status) is
//! also encrypted, with ChaCha20-Poly1305 (fast on boards without AES instructions) under a
//! key derived from the node's token: no other board reads it, whatever the broker lets it
//! subscribe to. The shared network stream is signed only.

use std::path::Path;

use bramble_api::wire::{self, Envelope, Message, Stamp, WireError};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::SecureRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use ring::{hmac, rand};

/// A node's wire secret: HMAC-SHA256 of its token under a fixed label. Both ends derive it;
/// the master stores it instead of the token, so its disk holds nothing that connects as
/// the node or reads blobs as it (the token's SHA-256 checks those).
#[derive(Clone, PartialEq, Eq)]
pub struct NodeSecret([u8; 32]);

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

impl NodeSecret {
    /// The secret of the node whose credential is `node_token`.
    pub fn from_token(node_token: &str) -> NodeSecret {
        let k = hmac::Key::new(hmac::HMAC_SHA256, node_token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&k, b"bramble node wire secret v3").as_ref());
        NodeSecret(out)
    }

    /// Lower-case hex, for the master's credential file.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The secret from [`NodeSecret::to_hex`]'s text.
    pub fn from_hex(text: &str) -> Option<NodeSecret> {
        unhex(text)?.try_into().ok().map(NodeSecret)
    }

    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

/// The master's signing key.
pub struct MasterKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("public", &hex(self.public()))
            .finish()
    }
}

impl MasterKey {
    /// Loads the key from `path` (PKCS#8), or makes one and writes it there (0600,
    /// durably) on first start.
    pub fn load_or_create(path: &Path) -> std::io::Result<MasterKey> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let pkcs8 = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(&rand::SystemRandom::new())
                    .map_err(|_| invalid("cannot generate a key".into()))?;
                crate::fs::write_atomic(path, doc.as_ref(), 0o600)?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(e),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| invalid(format!("{}: not an Ed25519 key: {e}", path.display())))?;
        Ok(MasterKey { pair })
    }

    /// The public half, for agents.
    pub fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The payload of `message` on a shared topic (the network stream), signed.
    pub fn seal(&self, topic: &str, node: &str, message: Message) -> Vec<u8> {
        self.sign(topic, wire::encode(node, message))
    }

    /// The payload of `message` for `node` on one of its own topics: encrypted for that
    /// node (the key comes from its token), then signed. Empty if the system's random
    /// source failed (nothing is sent rather than a reused nonce).
    pub fn seal_for(
        &self,
        topic: &str,
        node: &str,
        secret: &NodeSecret,
        stamp: Stamp,
        message: Message,
    ) -> Vec<u8> {
        match encrypt(secret, topic, &wire::encode_stamped(node, stamp, message)) {
            Some(body) => self.sign(topic, body),
            None => Vec::new(),
        }
    }

    fn sign(&self, topic: &str, body: Vec<u8>) -> Vec<u8> {
        let tag = self
            .pair
            .sign(&wire::authenticated_bytes(topic, &body))
            .as_ref()
            .to_vec();
        wire::frame(body, tag)
    }
}

/// Opens a payload from the master: its signature by `master_public`, then (on the node's
/// own topics, given its secret) the encryption, then the envelope.
pub fn open_from_master(
    master_public: &[u8],
    topic: &str,
    payload: &[u8],
    secret: Option<&NodeSecret>,
) -> Result<Envelope, WireError> {
    let f = wire::unframe(payload)?;
    UnparsedPublicKey::new(&ED25519, master_public)
        .verify(&wire::authenticated_bytes(topic, &f.body), &f.tag)
        .map_err(|_| WireError::Unauthenticated("not signed by the master".into()))?;
    match secret {
        Some(s) => wire::decode(&decrypt(s, topic, f.body)?),
        None => wire::decode(&f.body),
    }
}

/// The node's encryption key: derived from its secret, distinct from its HMAC key.
fn cipher(secret: &NodeSecret) -> Option<LessSafeKey> {
    let derived = hmac::sign(&secret.hmac_key(), b"bramble wire encryption v3");
    let key = UnboundKey::new(&CHACHA20_POLY1305, derived.as_ref().get(..32)?).ok()?;
    Some(LessSafeKey::new(key))
}

/// `nonce ‖ ciphertext ‖ tag` of `plain`, bound to `topic`; None if the system's random
/// source failed.
fn encrypt(secret: &NodeSecret, topic: &str, plain: &[u8]) -> Option<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::SystemRandom::new().fill(&mut nonce).ok()?;
    let mut sealed = plain.to_vec();
    cipher(secret)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(topic.as_bytes()),
            &mut sealed,
        )
        .ok()?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Some(out)
}

fn decrypt(secret: &NodeSecret, topic: &str, mut body: Vec<u8>) -> Result<Vec<u8>, WireError> {
    let refused = || WireError::Unauthenticated("not encrypted for this node".into());
    if body.len() < NONCE_LEN {
        return Err(refused());
    }
    let mut rest = body.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&body).map_err(|_| refused())?;
    let plain = cipher(secret)
        .ok_or_else(refused)?
        .open_in_place(nonce, Aad::from(topic.as_bytes()), &mut rest)
        .map_err(|_| refused())?;
    Ok(plain.to_vec())
}

/// The payload of `message` from `node` on `topic`: encrypted and tagged with the node's
/// secret (empty if the system's random source failed).
pub fn seal_from_node(
    secret: &NodeSecret,
    topic: &str,
    node: &str,
    stamp: Stamp,
    message: Message,
) -> Vec<u8> {
    let Some(body) = encrypt(secret, topic, &wire::encode_stamped(node, stamp, message)) else {
        return Vec::new();
    };
    let tag = hmac::sign(&secret.hmac_key(), &wire::authenticated_bytes(topic, &body))
        .as_ref()
        .to_vec();
    wire::frame(body, tag)
}

/// Opens a payload from a node whose secret is `secret`: its tag, then its encryption.
pub fn open_from_node(
    secret: &NodeSecret,
    topic: &str,
    payload: &[u8],
) -> Result<Envelope, WireError> {
    let f = wire::unframe(payload)?;
    hmac::verify(
        &secret.hmac_key(),
        &wire::authenticated_bytes(topic, &f.body),
        &f.tag,
    )
    .map_err(|_| WireError::Unauthenticated("not tagged with the node's credential".into()))?;
    wire::decode(&decrypt(secret, topic, f.body)?)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lower- or upper-case hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_api::wire::{Channel, Heartbeat};

    const ST: Stamp = Stamp { session: 5, seq: 6 };

    fn hb() -> Message {
        Message::Heartbeat(Heartbeat {
            seq: 1,
            usage: None,
        })
    }

    #[test]
    fn only_the_master_signs_and_only_the_node_tags() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load_or_create(&dir.path().join("wire.key")).unwrap();
        let again = MasterKey::load_or_create(&dir.path().join("wire.key")).unwrap();
        assert_eq!(key.public(), again.public(), "the key is kept");
        let other = MasterKey::load_or_create(&dir.path().join("other.key")).unwrap();
        let topic = Channel::Desired.topic("pi1");
        let s1 = NodeSecret::from_token("token-1");
        let s2 = NodeSecret::from_token("token-2");
        let t1 = Some(&s1);

        let sealed = key.seal_for(&topic, "pi1", &s1, ST, hb());
        let opened = open_from_master(key.public(), &topic, &sealed, t1).unwrap();
        assert_eq!((opened.node.as_str(), opened.stamp), ("pi1", ST));
        // Another key, another topic, a flipped byte, another node's token: refused.
        let forged = other.seal_for(&topic, "pi1", &s1, ST, hb());
        assert!(matches!(
            open_from_master(key.public(), &topic, &forged, t1),
            Err(WireError::Unauthenticated(_))
        ));
        let elsewhere = Channel::Desired.topic("pi2");
        assert!(open_from_master(key.public(), &elsewhere, &sealed, t1).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open_from_master(key.public(), &topic, &flipped, t1).is_err());
        assert!(open_from_master(key.public(), &topic, &sealed, Some(&s2)).is_err());
        // The shared stream is signed only.
        let shared = key.seal(wire::SERVICES_TOPIC, "", hb());
        assert!(open_from_master(key.public(), wire::SERVICES_TOPIC, &shared, None).is_ok());

        let topic = Channel::Heartbeat.topic("pi1");
        let tagged = seal_from_node(&s1, &topic, "pi1", ST, hb());
        assert!(open_from_node(&s1, &topic, &tagged).is_ok());
        assert!(open_from_node(&s2, &topic, &tagged).is_err());
        assert!(open_from_node(&s1, &Channel::Heartbeat.topic("pi2"), &tagged).is_err());
        // An unsigned payload of the old shape is not a frame.
        assert!(open_from_node(&s1, &topic, &wire::encode("pi1", hb())).is_err());
    }

    #[test]
    fn a_node_s_messages_are_unreadable_without_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load_or_create(&dir.path().join("wire.key")).unwrap();
        let marker = "marker-9d2e";
        let msg = || {
            Message::LogReply(bramble_api::wire::LogReply {
                id: 1,
                data: marker.as_bytes().to_vec(),
                next_offset: 0,
                error: String::new(),
            })
        };
        let s1 = NodeSecret::from_token("token-1");
        let t = Channel::Reply.topic("pi1");
        let from_node = seal_from_node(&s1, &t, "pi1", ST, msg());
        let t2 = Channel::Request.topic("pi1");
        let from_master = key.seal_for(&t2, "pi1", &s1, ST, msg());
        for payload in [&from_node, &from_master] {
            assert!(
                !payload
                    .windows(marker.len())
                    .any(|w| w == marker.as_bytes()),
                "the plain text is in the payload"
            );
        }
        // Two sealings of the same message differ (a fresh nonce each time).
        assert_ne!(from_node, seal_from_node(&s1, &t, "pi1", ST, msg()));
        assert!(open_from_node(&s1, &t, &from_node).is_ok());
        assert!(open_from_master(key.public(), &t2, &from_master, Some(&s1)).is_ok());
    }

    #[test]
    fn the_secret_is_derived_and_round_trips() {
        let s = NodeSecret::from_token("token-1");
        assert_eq!(s, NodeSecret::from_token("token-1"));
        assert_ne!(s, NodeSecret::from_token("token-2"));
        assert!(!s.to_hex().contains("token"));
        assert_eq!(NodeSecret::from_hex(&s.to_hex()), Some(s));
        assert_eq!(NodeSecret::from_hex("abcd"), None, "too short");
        assert_eq!(
            format!("{:?}", NodeSecret::from_token("t")),
            "NodeSecret(..)"
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
