//! Fuzz harnesses: one function per input Bramble takes from the outside, which must never
//! panic (nor write outside its directory) whatever the bytes. `fuzz/` runs them under
//! cargo-fuzz (libFuzzer, nightly); `tests/tests/fuzz.rs` runs them on stable in CI with a
//! small mutator for a bounded time, from the checked-in seed corpus in `fuzz/corpus/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bramble_api::wire::{self, Channel, Message};
use bramble_support::wire_auth::{MasterKey, NodeSecret, open_from_master, open_from_node};

/// The targets, by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[&str] = &[
    "wire", "manifest", "selector", "quantity", "layer", "archive",
];

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "wire" => wire_frames(data),
        "manifest" => manifest(data),
        "selector" => selector(data),
        "quantity" => quantity(data),
        "layer" => layer(data),
        "archive" => archive(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// An MQTT payload as the master and an agent receive it: framed, authenticated, decoded.
pub fn wire_frames(data: &[u8]) {
    let _ = wire::unframe(data);
    let _ = wire::decode(data);
    let secret = NodeSecret::from_token("fuzz-token");
    let topic = Channel::Status.topic("pi1");
    let _ = open_from_node(&secret, &topic, data);
    let _ = open_from_master(&[7u8; 32], &topic, data, Some(&secret));
    let _ = open_from_master(&[7u8; 32], wire::SERVICES_TOPIC, data, None);
}

/// A request body as the API server decodes it: YAML documents (no aliases), then each
/// object decoded and validated.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(docs) = bramble_api::manifest::parse_body_documents(text) {
        for d in docs {
            let _ = bramble_api::manifest::decode(d);
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = bramble_api::manifest::decode(v);
    }
}

/// A `labelSelector=` query, then matched against a few labels.
pub fn selector(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(s) = bramble_api::Selector::parse(&text) {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let _ = s.matches(&labels);
        let _ = s.matches(&BTreeMap::new());
    }
}

/// A resource quantity (`250m`, `1.5Gi`, `1e3`), and what the scheduler reads of it.
pub fn quantity(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(q) = bramble_api::Quantity::parse(&text) {
        let _ = (q.value(), q.millis(), q.is_negative(), q.to_string());
        let _ = bramble_api::Quantity::parse(&q.to_string());
    }
}

/// A directory for one run: the layer's destination and a sibling that must stay empty.
fn scratch(base: &Path) -> (PathBuf, PathBuf) {
    let dest = base.join("layer");
    let outside = base.join("outside");
    for d in [&dest, &outside] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).expect("a scratch directory");
    }
    (dest, outside)
}

/// An image layer as the agent unpacks it (plain or gzip, bounded to 4 MiB): never a panic,
/// never a file outside the layer's directory.
pub fn layer(data: &[u8]) {
    let base = tempfile::tempdir().expect("a temporary directory");
    let (dest, outside) = scratch(base.path());
    let policy = bramble_agent::images::unpack::Policy {
        max_bytes: 4 << 20,
        keep_setid: false,
    };
    let gzip = data.starts_with(&[0x1f, 0x8b]);
    let _ = bramble_agent::images::unpack::unpack_layer_with(
        &mut &data[..],
        gzip,
        &dest,
        std::slice::from_ref(&outside),
        None,
        policy,
    );
    let escaped: Vec<_> = std::fs::read_dir(&outside)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(escaped.is_empty(), "the layer wrote outside: {escaped:?}");
    let beside: Vec<_> = std::fs::read_dir(base.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(
        beside.len(),
        2,
        "the layer wrote beside its directory: {beside:?}"
    );
}

/// An image archive as `POST /bramble/v1/images` imports it (an OCI layout or a `docker
/// save` tarball).
pub fn archive(data: &[u8]) {
    let base = tempfile::tempdir().expect("a temporary directory");
    let blobs = bramble_master::images::Blobs::open(base.path()).expect("a blob store");
    let _ = bramble_master::images::import_archive(&blobs, &mut &data[..], None);
    let _ = bramble_master::images::import_archive(&blobs, &mut &data[..], Some("fuzz:1"));
}

/// Seeds made by the code itself (valid inputs of each target), beside `fuzz/corpus/`.
pub fn generated_seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "wire" => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let key = MasterKey::load_or_create(&dir.path().join("k")).expect("a key");
            let secret = NodeSecret::from_token("fuzz-token");
            let topic = Channel::Status.topic("pi1");
            let stamp = wire::Stamp { session: 1, seq: 2 };
            let hb = || {
                Message::Heartbeat(wire::Heartbeat {
                    seq: 1,
                    usage: None,
                })
            };
            vec![
                wire::encode("pi1", hb()),
                bramble_support::wire_auth::seal_from_node(&secret, &topic, "pi1", stamp, hb()),
                key.seal_for(&topic, "pi1", &secret, stamp, hb()),
                key.seal(wire::SERVICES_TOPIC, "", hb()),
            ]
        }
        _ => Vec::new(),
    }
}

/// The seed corpus of `name`: the files under `fuzz/corpus/<name>/` and the generated seeds.
pub fn seeds(repo: &Path, name: &str) -> Vec<Vec<u8>> {
    let mut out = generated_seeds(name);
    for sub in ["corpus", "regressions"] {
        if let Ok(rd) = std::fs::read_dir(repo.join("fuzz").join(sub).join(name)) {
            let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            out.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
        }
    }
    out
}
