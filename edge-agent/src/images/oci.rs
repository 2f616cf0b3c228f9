//! The node's OCI image cache, filled from the master.
//!
//! Under `<data>/image-cache/`: `blobs/sha256/<hex>` holds verified manifests and configs (a
//! layer blob only until it is unpacked), `layers/<chain id>/` one unpacked layer (an overlay
//! lower directory, shared by every image with the same layers below it) with its size in
//! `layers/<chain id>.size`, `refs/<name>.json` what a reference resolved to, and `tmp/` the
//! downloads and unpacks in progress. A blob is downloaded to `tmp/<hex>.partial` (resumed
//! with `Range` after an interruption), verified by digest and size, then renamed into
//! place: nothing reads a partial blob. A layer is unpacked into `tmp/` and renamed when
//! complete.
//!
//! This file holds the cache's layout, its records and the pull policies; `pull` walks an
//! image (tag, index, manifest, config, layers), `fetch` downloads and verifies one blob,
//! `platform` chooses the node's manifest, `cache` collects, and `source` is the seam to the
//! master's registry endpoints, which `http` implements.

mod cache;
mod fetch;
mod http;
mod platform;
mod pull;
mod source;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bramble_api::image::{self, ImageConfigFile, ImageRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use self::cache::CacheLimits;
use self::http::MasterSource;
use self::platform::NodePlatform;
pub use self::source::{BlobBody, BlobSource, SourceError};
use super::unpack;
use super::{ImageError, ImageStore, PreparedImage, PullPolicy, RootfsDirs};

/// What a reference resolved to on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalRef {
    reference: String,
    /// The manifest or index the reference named.
    digest: String,
    /// The manifest chosen for this node's platform.
    manifest: String,
    #[serde(default)]
    config_digest: String,
    config: ImageConfigFile,
    /// Chain ids of the layers, lowest first.
    chain: Vec<String>,
    last_used_ms: u64,
}

/// Where pulls come from.
enum Origin {
    /// The master this node joined, with the credentials read at each pull (a node that
    /// joins after its cache is opened can pull).
    Joined(PathBuf),
    /// A source given to [`OciStore::with_source`].
    Given(Arc<dyn BlobSource>),
}

/// The OCI image cache of a node.
pub struct OciStore {
    root: PathBuf,
    origin: Origin,
    side_loaded: RootfsDirs,
    platform: NodePlatform,
    limits: CacheLimits,
    /// What a layer may unpack to (devices never; set-id bits and size by the board).
    layer_policy: super::unpack::Policy,
    /// One pull or collection at a time.
    lock: Mutex<()>,
}

fn now_ms() -> u64 {
    u64::try_from(bramble_api::time::now_millis()).unwrap_or(0)
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn sha256_hex(b: &[u8]) -> String {
    unpack::hex(&Sha256::digest(b))
}

/// OCI chain ids: the first layer's diff id, then sha256 of "<parent chain> <diff id>".
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!("sha256:{}", sha256_hex(format!("{parent} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

impl OciStore {
    /// The cache under `<data_dir>/image-cache`, with side-loaded root filesystems in
    /// `side_loaded`, for a node of `os/arch/variant`. Leftovers of interrupted unpacks are
    /// removed; partial downloads are kept to be resumed.
    pub fn open(
        data_dir: &Path,
        side_loaded: &Path,
        platform: (String, String, String),
        limits: CacheLimits,
    ) -> io::Result<OciStore> {
        let root = data_dir.join("image-cache");
        for d in ["blobs/sha256", "layers", "refs", "tmp"] {
            fs::create_dir_all(root.join(d))?;
        }
        // Layers' files keep the modes their image gave them (a world-writable directory, a
        // setgid one): no other user of the board reaches them.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
        }
        if let Ok(rd) = fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "partial") {
                    continue;
                }
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        Ok(OciStore {
            root,
            origin: Origin::Joined(data_dir.to_path_buf()),
            side_loaded: RootfsDirs::new(side_loaded),
            platform: NodePlatform {
                os: platform.0,
                arch: platform.1,
                variant: platform.2,
            },
            limits,
            layer_policy: super::unpack::Policy::default(),
            lock: Mutex::new(()),
        })
    }

    /// Unpacks layers under the board's `policy` instead of the default one.
    pub fn with_layer_policy(mut self, policy: super::unpack::Policy) -> OciStore {
        self.layer_policy = policy;
        self
    }

    /// Pulls from `source` instead of the master this node joined (tests, simulations).
    pub fn with_source(mut self, source: Arc<dyn BlobSource>) -> OciStore {
        self.origin = Origin::Given(source);
        self
    }

    /// Where `image` is pulled from.
    fn source(&self, image: &str) -> Result<Arc<dyn BlobSource>, ImageError> {
        match &self.origin {
            Origin::Joined(data_dir) => Ok(Arc::new(MasterSource::joined(data_dir, image)?)),
            Origin::Given(s) => Ok(s.clone()),
        }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    fn layer_dir(&self, chain: &str) -> PathBuf {
        self.root.join("layers").join(hex_of(chain))
    }

    fn ref_path(key: &str, root: &Path) -> PathBuf {
        root.join("refs")
            .join(format!("{}.json", image::object_name(key)))
    }

    fn load_ref(&self, key: &str) -> Option<LocalRef> {
        let b = fs::read(Self::ref_path(key, &self.root)).ok()?;
        let r: LocalRef = serde_json::from_slice(&b).ok()?;
        // Only complete images count.
        r.chain
            .iter()
            .all(|c| self.layer_dir(c).is_dir())
            .then_some(r)
    }

    fn save_ref(&self, key: &str, r: &LocalRef) -> io::Result<()> {
        let path = Self::ref_path(key, &self.root);
        let json = serde_json::to_vec(r).map_err(io::Error::other)?;
        bramble_support::fs::write_atomic(&path, &json, 0o600)
    }

    fn prepared(&self, r: &LocalRef) -> PreparedImage {
        PreparedImage {
            layers: r.chain.iter().map(|c| self.layer_dir(c)).collect(),
            config: r.config.config.clone(),
        }
    }
}

/// The key a reference is cached under: `repo:tag`, or `repo@digest` when pinned.
fn cache_key(r: &ImageRef) -> String {
    match &r.digest {
        Some(d) => format!("{}@{d}", r.repository),
        None => r.tagged(),
    }
}

impl ImageStore for OciStore {
    fn prepare(&self, image: &str, policy: PullPolicy) -> Result<PreparedImage, ImageError> {
        if let Ok(p) = self.side_loaded.prepare(image, policy) {
            return Ok(p);
        }
        let r = ImageRef::parse(image).map_err(|_| ImageError::Invalid(image.to_string()))?;
        let key = cache_key(&r);
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let local = self.load_ref(&key);
        let chosen = match (policy, local) {
            (PullPolicy::Never, Some(l)) | (PullPolicy::IfNotPresent, Some(l)) => l,
            (PullPolicy::Never, None) => {
                return Err(ImageError::NotPresent {
                    image: image.to_string(),
                    looked: "the node's image cache (imagePullPolicy: Never)".into(),
                });
            }
            (PullPolicy::IfNotPresent, None) => self.pull(image, &r, &key)?,
            (PullPolicy::Always, local) => match (self.pull(image, &r, &key), local) {
                (Ok(l), _) => l,
                // The master is the registry; an offline site keeps running what it has.
                (Err(ImageError::Pull { message, .. }), Some(cached)) => {
                    tracing::warn!(
                        image,
                        error = message,
                        "pull failed; using the cached image"
                    );
                    cached
                }
                (Err(e), _) => return Err(e),
            },
        };
        let mut chosen = chosen;
        // Recency for garbage collection, written at most hourly to spare the SD card.
        if now_ms().saturating_sub(chosen.last_used_ms) > 3_600_000 {
            chosen.last_used_ms = now_ms();
            let _ = self.save_ref(&key, &chosen);
        }
        Ok(self.prepared(&chosen))
    }

    fn collect(&self, in_use: &[String]) -> u64 {
        self.collect_unused(in_use)
    }
}
