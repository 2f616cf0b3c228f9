//! End-to-end authentication of the wire (see `bramble_api::wire`): the broker relays
//! frames it cannot forge.
//!
//! - Master → agents: an Ed25519 signature by the master's wire key. Agents hold only the
//!   public half, so no board can sign as the master, for any topic.
//! - Agent → master: an HMAC-SHA256 keyed by the node's own token, which only that board
//!   and the master know, so no board can speak for another.
//!
//! Each tag covers the topic and the envelope's bytes.

use std::path::Path;

use bramble_api::wire::{self, Envelope, Message, WireError};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use ring::{hmac, rand};

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

    /// The payload of `message` for `node` on `topic`, signed.
    pub fn seal(&self, topic: &str, node: &str, message: Message) -> Vec<u8> {
        let body = wire::encode(node, message);
        let tag = self
            .pair
            .sign(&wire::authenticated_bytes(topic, &body))
            .as_ref()
            .to_vec();
        wire::frame(body, tag)
    }
}

/// Opens a payload from the master: its signature by `master_public`, then the envelope.
pub fn open_from_master(
    master_public: &[u8],
    topic: &str,
    payload: &[u8],
) -> Result<Envelope, WireError> {
    let f = wire::unframe(payload)?;
    UnparsedPublicKey::new(&ED25519, master_public)
        .verify(&wire::authenticated_bytes(topic, &f.body), &f.tag)
        .map_err(|_| WireError::Unauthenticated("not signed by the master".into()))?;
    wire::decode(&f.body)
}

fn node_key(node_token: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, node_token.as_bytes())
}

/// The payload of `message` from `node` on `topic`, tagged with the node's token.
pub fn seal_from_node(node_token: &str, topic: &str, node: &str, message: Message) -> Vec<u8> {
    let body = wire::encode(node, message);
    let tag = hmac::sign(
        &node_key(node_token),
        &wire::authenticated_bytes(topic, &body),
    )
    .as_ref()
    .to_vec();
    wire::frame(body, tag)
}

/// Opens a payload from a node whose token is `node_token`.
pub fn open_from_node(
    node_token: &str,
    topic: &str,
    payload: &[u8],
) -> Result<Envelope, WireError> {
    let f = wire::unframe(payload)?;
    hmac::verify(
        &node_key(node_token),
        &wire::authenticated_bytes(topic, &f.body),
        &f.tag,
    )
    .map_err(|_| WireError::Unauthenticated("not tagged with the node's credential".into()))?;
    wire::decode(&f.body)
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

        let sealed = key.seal(&topic, "pi1", hb());
        assert_eq!(
            open_from_master(key.public(), &topic, &sealed)
                .unwrap()
                .node,
            "pi1"
        );
        // Another key, another topic, a flipped byte: refused.
        let forged = other.seal(&topic, "pi1", hb());
        assert!(matches!(
            open_from_master(key.public(), &topic, &forged),
            Err(WireError::Unauthenticated(_))
        ));
        let elsewhere = Channel::Desired.topic("pi2");
        assert!(open_from_master(key.public(), &elsewhere, &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open_from_master(key.public(), &topic, &flipped).is_err());

        let topic = Channel::Heartbeat.topic("pi1");
        let tagged = seal_from_node("token-1", &topic, "pi1", hb());
        assert!(open_from_node("token-1", &topic, &tagged).is_ok());
        assert!(open_from_node("token-2", &topic, &tagged).is_err());
        assert!(open_from_node("token-1", &Channel::Heartbeat.topic("pi2"), &tagged).is_err());
        // An unsigned payload of the old shape is not a frame.
        assert!(open_from_node("token-1", &topic, &wire::encode("pi1", hb())).is_err());
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
