//! The pull logic and the pull policies against an in-memory [`BlobSource`]: no master, no
//! network. Layers are real tars (one gzip), unpacked for real into a temporary cache.

use std::collections::HashMap;
use std::io::{Cursor, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bramble_api::image::{ImagePlatform, ImageSpec};
use serde_json::json;

use super::*;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

/// Tags and blobs held in memory; every request is recorded.
#[derive(Default)]
struct MemorySource {
    tags: Mutex<HashMap<String, ImageSpec>>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    resolved: Mutex<Vec<String>>,
    /// (digest, offset) of every blob request.
    fetched: Mutex<Vec<(String, u64)>>,
    offline: AtomicBool,
}

impl BlobSource for MemorySource {
    fn resolve(&self, reference: &str) -> Result<ImageSpec, SourceError> {
        self.resolved.lock().unwrap().push(reference.to_string());
        if self.offline.load(Ordering::SeqCst) {
            return Err(SourceError::Failed(
                "cannot reach the master at memory: offline".into(),
            ));
        }
        self.tags
            .lock()
            .unwrap()
            .get(reference)
            .cloned()
            .ok_or_else(|| {
                SourceError::Failed(format!(
                    "image {reference:?} is not imported on the master (bramble image import FILE)"
                ))
            })
    }

    fn blob(&self, digest: &str, offset: u64) -> Result<BlobBody, SourceError> {
        self.fetched
            .lock()
            .unwrap()
            .push((digest.to_string(), offset));
        if self.offline.load(Ordering::SeqCst) {
            return Err(SourceError::Failed(
                "cannot reach the master at memory: offline".into(),
            ));
        }
        let blobs = self.blobs.lock().unwrap();
        let Some(b) = blobs.get(digest) else {
            return Err(SourceError::Failed(format!(
                "blob {digest}: blob {digest} is not on the master"
            )));
        };
        let Some(rest) = b.get(offset as usize..) else {
            return Err(SourceError::OffsetPastEnd(format!(
                "blob {digest}: blob {digest} has {} bytes; range starts at {offset}",
                b.len()
            )));
        };
        let body = Box::new(Cursor::new(rest.to_vec()));
        Ok(if offset > 0 {
            BlobBody::Rest(body)
        } else {
            BlobBody::Whole(body)
        })
    }
}

/// A layer blob and its diff id.
#[derive(Clone)]
struct Layer {
    blob: Vec<u8>,
    diff_id: String,
}

/// A layer of regular files owned by this process (so that unpacking needs no root).
fn layer(files: &[(&str, &str)], gzip: bool) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(nix::unistd::geteuid().as_raw().into());
        h.set_gid(nix::unistd::getegid().as_raw().into());
        h.set_cksum();
        b.append_data(&mut h, path, data.as_bytes()).unwrap();
    }
    let plain = b.into_inner().unwrap();
    let diff_id = sha(&plain);
    let blob = if gzip {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&plain).unwrap();
        z.finish().unwrap()
    } else {
        plain
    };
    Layer { blob, diff_id }
}

impl MemorySource {
    fn put(&self, bytes: Vec<u8>) -> (String, u64) {
        let d = sha(&bytes);
        let n = bytes.len() as u64;
        self.blobs.lock().unwrap().insert(d.clone(), bytes);
        (d, n)
    }

    /// Stores a linux/`arch` image of `layers` whose working directory is `workdir`;
    /// returns its manifest's digest and size.
    fn manifest(&self, arch: &str, workdir: &str, layers: &[Layer]) -> (String, u64) {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = json!({"architecture": arch, "os": "linux",
            "config": {"Cmd": ["/app"], "WorkingDir": workdir},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}});
        let (cd, cs) = self.put(serde_json::to_vec(&config).unwrap());
        let descs: Vec<_> = layers
            .iter()
            .map(|l| {
                let (d, s) = self.put(l.blob.clone());
                let media = if l.blob.starts_with(&[0x1f, 0x8b]) {
                    image::MEDIA_OCI_LAYER_GZIP
                } else {
                    image::MEDIA_OCI_LAYER
                };
                json!({"mediaType": media, "digest": d, "size": s})
            })
            .collect();
        let manifest = json!({"schemaVersion": 2, "mediaType": image::MEDIA_OCI_MANIFEST,
            "config": {"mediaType": image::MEDIA_OCI_CONFIG, "digest": cd, "size": cs},
            "layers": descs});
        self.put(serde_json::to_vec(&manifest).unwrap())
    }

    /// Stores an index of linux manifests (arch, digest, size); returns its digest.
    fn index(&self, manifests: &[(&str, &(String, u64))]) -> String {
        let descs: Vec<_> = manifests
            .iter()
            .map(|(arch, (d, s))| {
                json!({"mediaType": image::MEDIA_OCI_MANIFEST, "digest": d, "size": s,
                    "platform": {"os": "linux", "architecture": arch}})
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": image::MEDIA_OCI_INDEX,
            "manifests": descs});
        self.put(serde_json::to_vec(&index).unwrap()).0
    }

    /// Names `digest` `reference`, as an import does; `platforms` are linux architectures.
    fn tag(&self, reference: &str, digest: &str, media_type: &str, platforms: &[&str]) {
        let spec = ImageSpec {
            reference: reference.to_string(),
            digest: digest.to_string(),
            media_type: media_type.to_string(),
            platforms: platforms
                .iter()
                .map(|a| ImagePlatform {
                    os: "linux".into(),
                    architecture: (*a).into(),
                    ..Default::default()
                })
                .collect(),
            size: 0,
        };
        self.tags
            .lock()
            .unwrap()
            .insert(reference.to_string(), spec);
    }

    /// The digests asked for since the last call.
    fn take_fetched(&self) -> Vec<String> {
        let mut f = self.fetched.lock().unwrap();
        f.drain(..).map(|(d, _)| d).collect()
    }

    fn take_resolved(&self) -> Vec<String> {
        std::mem::take(&mut *self.resolved.lock().unwrap())
    }
}

/// `demo:multi` (an index of amd64 and arm64 images sharing a gzip base layer), `demo:amd64`
/// (the amd64 manifest alone), and the layers: (base, amd64 top, arm64 top).
fn demo(src: &MemorySource) -> (Layer, Layer, Layer) {
    let base = layer(&[("base", "shared")], true);
    let amd = layer(&[("arch", "amd64")], false);
    let arm = layer(&[("arch", "arm64")], false);
    let m_amd = src.manifest("amd64", "/amd64", &[base.clone(), amd.clone()]);
    let m_arm = src.manifest("arm64", "/arm64", &[base.clone(), arm.clone()]);
    let idx = src.index(&[("amd64", &m_amd), ("arm64", &m_arm)]);
    src.tag(
        "demo:multi",
        &idx,
        image::MEDIA_OCI_INDEX,
        &["amd64", "arm64"],
    );
    src.tag(
        "demo:amd64",
        &m_amd.0,
        image::MEDIA_OCI_MANIFEST,
        &["amd64"],
    );
    (base, amd, arm)
}

/// A cache in a temporary directory for a linux/`arch` node, pulling from `src`.
fn cache(arch: &str, src: &Arc<MemorySource>) -> (tempfile::TempDir, OciStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = OciStore::open(
        dir.path(),
        &dir.path().join("images"),
        ("linux".into(), arch.into(), String::new()),
        CacheLimits::default(),
    )
    .unwrap()
    .with_source(src.clone());
    (dir, store)
}

/// The names in a directory of the cache.
fn names(store: &OciStore, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.root.join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn read(layer: &Path, file: &str) -> String {
    fs::read_to_string(layer.join(file)).unwrap()
}

#[test]
fn a_pull_through_an_index_takes_the_node_platform() {
    let src = Arc::new(MemorySource::default());
    let (base, amd, arm) = demo(&src);
    let (_d, store) = cache("arm64", &src);
    let img = store
        .prepare("demo:multi", PullPolicy::IfNotPresent)
        .unwrap();
    assert_eq!(img.layers.len(), 2);
    assert_eq!(read(&img.layers[0], "base"), "shared");
    assert_eq!(read(&img.layers[1], "arch"), "arm64");
    assert_eq!(img.config.working_dir, "/arm64");
    assert_eq!(src.take_resolved(), ["demo:multi"]);
    let fetched = src.take_fetched();
    assert!(fetched.contains(&sha(&base.blob)) && fetched.contains(&sha(&arm.blob)));
    assert!(
        !fetched.contains(&sha(&amd.blob)),
        "the other platform's layer is not downloaded"
    );
    assert_eq!(fetched.len(), 5, "index, manifest, config, two layers");
    // The layer blobs are gone once unpacked; the documents stay.
    assert_eq!(names(&store, "blobs/sha256").len(), 3);
    assert_eq!(names(&store, "tmp"), Vec::<String>::new());
    // Unpacked trees live under a directory only root enters.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&store.root).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn a_blob_with_a_wrong_digest_is_refused_and_nothing_is_left_half_unpacked() {
    let src = Arc::new(MemorySource::default());
    let (base, _, _) = demo(&src);
    let base_digest = sha(&base.blob);
    let mut tampered = base.blob.clone();
    tampered[20] ^= 0xff;
    src.blobs
        .lock()
        .unwrap()
        .insert(base_digest.clone(), tampered);
    let (_d, store) = cache("amd64", &src);
    let err = store
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap_err();
    let ImageError::Pull { image, message } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(image, "demo:amd64");
    assert!(
        message.starts_with(&format!(
            "blob {base_digest}: the download has digest sha256:"
        )),
        "{message}"
    );
    assert!(message.ends_with("; discarded"), "{message}");
    assert_eq!(
        names(&store, "tmp"),
        Vec::<String>::new(),
        "no partial kept"
    );
    assert_eq!(names(&store, "layers"), Vec::<String>::new());
    assert_eq!(names(&store, "refs"), Vec::<String>::new());
    assert!(matches!(
        store.prepare("demo:amd64", PullPolicy::Never),
        Err(ImageError::NotPresent { .. })
    ));
    // Once the master serves the right content, the next attempt downloads it afresh.
    src.blobs
        .lock()
        .unwrap()
        .insert(base_digest.clone(), base.blob);
    src.fetched.lock().unwrap().clear();
    let img = store
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap();
    assert_eq!(read(&img.layers[1], "arch"), "amd64");
    assert!(
        src.fetched.lock().unwrap().contains(&(base_digest, 0)),
        "from its first byte"
    );
}

#[test]
fn a_layer_whose_content_is_not_its_diff_id_is_not_unpacked() {
    let src = Arc::new(MemorySource::default());
    let good = layer(&[("app", "v1")], false);
    let lying = Layer {
        diff_id: sha(b"something else"),
        ..good.clone()
    };
    let m = src.manifest("amd64", "/", &[lying]);
    src.tag("liar:1", &m.0, image::MEDIA_OCI_MANIFEST, &["amd64"]);
    let (_d, store) = cache("amd64", &src);
    let err = store
        .prepare("liar:1", PullPolicy::IfNotPresent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "layer {}: the layer's content has digest {}, but the image config says",
            sha(&good.blob),
            good.diff_id
        )),
        "{err}"
    );
    assert_eq!(names(&store, "tmp"), Vec::<String>::new());
    assert_eq!(names(&store, "layers"), Vec::<String>::new());
    assert_eq!(names(&store, "refs"), Vec::<String>::new());
    assert!(
        !names(&store, "blobs/sha256").contains(&sha(&good.blob)[7..].to_string()),
        "the refused layer's blob is not kept"
    );
}

#[test]
fn a_second_pull_fetches_no_layer_again() {
    let src = Arc::new(MemorySource::default());
    let (base, amd, _) = demo(&src);
    let (_d, store) = cache("amd64", &src);
    let first = store.prepare("demo:multi", PullPolicy::Always).unwrap();
    assert_eq!(src.take_fetched().len(), 5);
    let again = store.prepare("demo:multi", PullPolicy::Always).unwrap();
    assert_eq!(again, first);
    assert_eq!(src.take_resolved(), ["demo:multi", "demo:multi"]);
    assert_eq!(
        src.take_fetched(),
        Vec::<String>::new(),
        "documents and layers are all in the cache"
    );
    // Another image with the same layers: only its own documents are downloaded.
    let m = src.manifest("amd64", "/other", &[base.clone(), amd.clone()]);
    src.tag("other:1", &m.0, image::MEDIA_OCI_MANIFEST, &["amd64"]);
    let other = store.prepare("other:1", PullPolicy::IfNotPresent).unwrap();
    assert_eq!(other.layers, first.layers, "the layers are shared");
    assert_eq!(other.config.working_dir, "/other");
    let fetched = src.take_fetched();
    assert_eq!(fetched.len(), 2, "manifest and config: {fetched:?}");
    assert!(!fetched.contains(&sha(&base.blob)) && !fetched.contains(&sha(&amd.blob)));
}

#[test]
fn an_image_without_the_node_platform_is_no_platform() {
    let src = Arc::new(MemorySource::default());
    demo(&src);
    let (_d, store) = cache("riscv64", &src);
    assert_eq!(
        store.prepare("demo:multi", PullPolicy::IfNotPresent),
        Err(ImageError::NoPlatform(
            r#"image "demo:multi" has no linux/riscv64 variant (has: linux/amd64, linux/arm64)"#
                .into()
        ))
    );
    assert_eq!(src.take_fetched().len(), 1, "only the index");
    // A single-platform image is checked against its config.
    assert_eq!(
        store.prepare("demo:amd64", PullPolicy::Always),
        Err(ImageError::NoPlatform(
            r#"image "demo:amd64" has no linux/riscv64 variant (has: linux/amd64)"#.into()
        ))
    );
    assert_eq!(src.take_fetched().len(), 2, "the manifest and its config");
    assert_eq!(names(&store, "layers"), Vec::<String>::new());
    assert_eq!(names(&store, "refs"), Vec::<String>::new());
}

#[test]
fn never_and_if_not_present_use_what_the_node_has() {
    let src = Arc::new(MemorySource::default());
    demo(&src);
    let (_d, store) = cache("amd64", &src);
    assert_eq!(
        store.prepare("demo:amd64", PullPolicy::Never),
        Err(ImageError::NotPresent {
            image: "demo:amd64".into(),
            looked: "the node's image cache (imagePullPolicy: Never)".into(),
        })
    );
    assert!(src.take_resolved().is_empty() && src.take_fetched().is_empty());
    let pulled = store
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap();
    assert_eq!(src.take_resolved(), ["demo:amd64"]);
    src.take_fetched();
    // Both now use the node's copy without asking the master.
    assert_eq!(
        store.prepare("demo:amd64", PullPolicy::Never),
        Ok(pulled.clone())
    );
    assert_eq!(
        store.prepare("demo:amd64", PullPolicy::IfNotPresent),
        Ok(pulled.clone())
    );
    assert!(src.take_resolved().is_empty() && src.take_fetched().is_empty());
    // The tag moves at the master: IfNotPresent keeps the node's copy, Always follows it.
    let moved = layer(&[("arch", "amd64 v2")], false);
    let m = src.manifest("amd64", "/v2", &[moved]);
    src.tag("demo:amd64", &m.0, image::MEDIA_OCI_MANIFEST, &["amd64"]);
    assert_eq!(
        store.prepare("demo:amd64", PullPolicy::IfNotPresent),
        Ok(pulled.clone())
    );
    let now = store.prepare("demo:amd64", PullPolicy::Always).unwrap();
    assert_eq!(now.config.working_dir, "/v2");
    assert_eq!(read(&now.layers[0], "arch"), "amd64 v2");
    assert_eq!(store.prepare("demo:amd64", PullPolicy::Never), Ok(now));
}

#[test]
fn always_runs_the_cached_image_when_the_master_is_unreachable() {
    let src = Arc::new(MemorySource::default());
    demo(&src);
    let (_d, store) = cache("amd64", &src);
    let pulled = store.prepare("demo:amd64", PullPolicy::Always).unwrap();
    src.offline.store(true, Ordering::SeqCst);
    assert_eq!(store.prepare("demo:amd64", PullPolicy::Always), Ok(pulled));
    assert_eq!(
        store.prepare("demo:multi", PullPolicy::Always),
        Err(ImageError::Pull {
            image: "demo:multi".into(),
            message: "cannot reach the master at memory: offline".into(),
        })
    );
}

#[test]
fn a_pinned_digest_is_pulled_without_resolving_a_tag() {
    let src = Arc::new(MemorySource::default());
    demo(&src);
    let digest = src.tags.lock().unwrap()["demo:multi"].digest.clone();
    let (_d, store) = cache("arm64", &src);
    let img = store
        .prepare(&format!("demo@{digest}"), PullPolicy::IfNotPresent)
        .unwrap();
    assert_eq!(read(&img.layers[1], "arch"), "arm64");
    assert!(src.take_resolved().is_empty());
    // Recorded under the pinned key, not the tag.
    assert!(matches!(
        store.prepare("demo:multi", PullPolicy::Never),
        Err(ImageError::NotPresent { .. })
    ));
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let src = Arc::new(MemorySource::default());
    let (base, _, _) = demo(&src);
    let digest = sha(&base.blob);
    let (_d, store) = cache("amd64", &src);
    let partial = store.partial_path(&digest);
    let half = base.blob.len() / 2;
    // A wrong first half: the completed blob fails its digest and is discarded.
    let mut wrong = base.blob[..half].to_vec();
    wrong[0] ^= 0xff;
    fs::write(&partial, &wrong).unwrap();
    let err = store
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap_err();
    assert!(err.to_string().contains("discarded"), "{err}");
    assert!(!partial.exists());
    // A right first half is completed, not downloaded again.
    fs::write(&partial, &base.blob[..half]).unwrap();
    src.fetched.lock().unwrap().clear();
    store
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap();
    assert!(
        src.fetched
            .lock()
            .unwrap()
            .contains(&(digest.clone(), half as u64)),
        "resumed at byte {half}"
    );
    assert!(!partial.exists());
}

#[test]
fn a_partial_download_longer_than_the_blob_is_discarded() {
    let src = Arc::new(MemorySource::default());
    let (base, _, _) = demo(&src);
    let digest = sha(&base.blob);
    let (_d, store) = cache("amd64", &src);
    let partial = store.partial_path(&digest);
    fs::write(&partial, vec![0u8; base.blob.len() + 1]).unwrap();
    let err = store
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap_err();
    assert!(err.to_string().contains("range starts at"), "{err}");
    assert!(!partial.exists());
    store
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap();
}

#[test]
fn a_node_that_has_not_joined_cannot_pull() {
    let dir = tempfile::tempdir().unwrap();
    let store = OciStore::open(
        dir.path(),
        &dir.path().join("images"),
        ("linux".into(), "amd64".into(), String::new()),
        CacheLimits::default(),
    )
    .unwrap();
    assert_eq!(
        store.prepare("demo:1", PullPolicy::IfNotPresent),
        Err(ImageError::Pull {
            image: "demo:1".into(),
            message: "this node has not joined a master to pull from".into(),
        })
    );
}
