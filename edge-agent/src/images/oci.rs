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

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bramble_api::image::{self, Image, ImageConfigFile, ImagePlatform, ImageRef, Index, Manifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::unpack;
use super::{ImageError, ImageStore, PreparedImage, PullPolicy, RootfsDirs};
use crate::join;

/// Limits of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Collect when the filesystem holding the cache is fuller than this (percent).
    pub high_percent: u8,
    /// ... down to this.
    pub low_percent: u8,
    /// Collect when the cache itself holds more than this many bytes.
    pub max_bytes: Option<u64>,
}

impl Default for CacheLimits {
    fn default() -> Self {
        // The kubelet's image GC thresholds.
        CacheLimits {
            high_percent: 85,
            low_percent: 80,
            max_bytes: None,
        }
    }
}

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

/// Where a pulled image comes from: the master, with this node's credentials.
struct Source {
    server: String,
    token: String,
    http: ureq::Agent,
}

/// The OCI image cache of a node.
pub struct OciStore {
    root: PathBuf,
    data_dir: PathBuf,
    side_loaded: RootfsDirs,
    os: String,
    arch: String,
    variant: String,
    limits: CacheLimits,
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
            data_dir: data_dir.to_path_buf(),
            side_loaded: RootfsDirs::new(side_loaded),
            os: platform.0,
            arch: platform.1,
            variant: platform.2,
            limits,
            lock: Mutex::new(()),
        })
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
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(r).unwrap_or_default())?;
        fs::rename(&tmp, &path)
    }

    fn prepared(&self, r: &LocalRef) -> PreparedImage {
        PreparedImage {
            layers: r.chain.iter().map(|c| self.layer_dir(c)).collect(),
            config: r.config.config.clone(),
        }
    }

    fn source(&self, image: &str) -> Result<Source, ImageError> {
        let creds = join::load(&self.data_dir)
            .ok()
            .flatten()
            .ok_or_else(|| ImageError::Pull {
                image: image.to_string(),
                message: "this node has not joined a master to pull from".into(),
            })?;
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Source {
            server: creds.server.trim_end_matches('/').to_string(),
            token: creds.node_token,
            http,
        })
    }

    /// Pulls `r` from the master; returns the local record.
    fn pull(&self, image: &str, r: &ImageRef, key: &str) -> Result<LocalRef, ImageError> {
        let perr = |m: String| ImageError::Pull {
            image: image.to_string(),
            message: m,
        };
        let src = self.source(image)?;
        let (top, platforms) = match &r.digest {
            Some(d) => (d.clone(), None),
            None => {
                let url = format!("{}/bramble/v1/images/resolve", src.server);
                let resp = src
                    .http
                    .get(&url)
                    .query("reference", r.tagged())
                    .header("Authorization", &format!("Bearer {}", src.token))
                    .call()
                    .map_err(|e| perr(format!("cannot reach the master at {}: {e}", src.server)))?;
                let code = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_vec()
                    .map_err(|e| perr(format!("reading the master's answer: {e}")))?;
                if code != 200 {
                    return Err(perr(api_message(code, &body)));
                }
                let img: Image = serde_json::from_slice(&body)
                    .map_err(|e| perr(format!("unreadable Image from the master: {e}")))?;
                (img.spec.digest, Some(img.spec.platforms))
            }
        };
        let top_path = self.fetch(&src, &top, None).map_err(perr)?;
        let top_doc = read_small(&top_path).map_err(perr)?;
        let media = serde_json::from_slice::<serde_json::Value>(&top_doc)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            .unwrap_or_default();
        let is_index = image::is_index(&media)
            || (media.is_empty()
                && serde_json::from_slice::<Index>(&top_doc)
                    .is_ok_and(|i| !i.manifests.is_empty()));
        let (manifest_digest, manifest_size) = if is_index {
            let idx: Index =
                serde_json::from_slice(&top_doc).map_err(|e| perr(format!("index {top}: {e}")))?;
            let listed: Vec<ImagePlatform> = idx
                .manifests
                .iter()
                .filter_map(|d| {
                    d.platform.as_ref().map(|p| ImagePlatform {
                        os: p.os.clone(),
                        architecture: p.architecture.clone(),
                        variant: p.variant.clone(),
                        digest: d.digest.clone(),
                    })
                })
                .collect();
            let chosen = image::select_platform(&listed, &self.os, &self.arch, &self.variant)
                .ok_or_else(|| {
                    ImageError::NoPlatform(image::no_platform_message(
                        image,
                        &self.os,
                        &self.arch,
                        &self.variant,
                        platforms.as_deref().unwrap_or(&listed),
                    ))
                })?;
            let size = idx
                .manifests
                .iter()
                .find(|d| d.digest == chosen.digest)
                .map(|d| d.size);
            (chosen.digest.clone(), size)
        } else {
            (top.clone(), None)
        };
        let mpath = self
            .fetch(&src, &manifest_digest, manifest_size)
            .map_err(perr)?;
        let manifest: Manifest = serde_json::from_slice(&read_small(&mpath).map_err(perr)?)
            .map_err(|e| perr(format!("manifest {manifest_digest}: {e}")))?;
        let cpath = self
            .fetch(&src, &manifest.config.digest, Some(manifest.config.size))
            .map_err(perr)?;
        let config: ImageConfigFile = serde_json::from_slice(&read_small(&cpath).map_err(perr)?)
            .map_err(|e| perr(format!("config {}: {e}", manifest.config.digest)))?;
        let mine = ImagePlatform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
            digest: manifest_digest.clone(),
        };
        if image::platform_fit(&self.os, &self.arch, &self.variant, &mine).is_none() {
            return Err(ImageError::NoPlatform(image::no_platform_message(
                image,
                &self.os,
                &self.arch,
                &self.variant,
                std::slice::from_ref(&mine),
            )));
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(perr(format!(
                "config {} lists {} layer digests for {} layers",
                manifest.config.digest,
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let chain = chain_ids(&config.rootfs.diff_ids);
        for (i, layer) in manifest.layers.iter().enumerate() {
            let dir = self.layer_dir(&chain[i]);
            if dir.is_dir() {
                continue;
            }
            let blob = self
                .fetch(&src, &layer.digest, Some(layer.size))
                .map_err(perr)?;
            let lowers: Vec<PathBuf> = chain[..i].iter().rev().map(|c| self.layer_dir(c)).collect();
            let tmp = self
                .root
                .join("tmp")
                .join(format!("layer-{}", hex_of(&chain[i])));
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir(&tmp).map_err(|e| perr(format!("{}: {e}", tmp.display())))?;
            let result = File::open(&blob)
                .map_err(|e| unpack::UnpackError::Io {
                    what: blob.display().to_string(),
                    source: e,
                })
                .and_then(|mut f| {
                    let gzip = unpack::is_gzip(&blob).unwrap_or(false);
                    unpack::unpack_layer(
                        &mut f,
                        gzip,
                        &tmp,
                        &lowers,
                        Some(&config.rootfs.diff_ids[i]),
                    )
                });
            let stats = match result {
                Ok(s) => s,
                Err(e) => {
                    let _ = fs::remove_dir_all(&tmp);
                    // A refused layer is not downloaded again and again.
                    let _ = fs::remove_file(&blob);
                    return Err(perr(format!("layer {}: {e}", layer.digest)));
                }
            };
            let size = dir_size(&tmp);
            let _ = fs::write(dir.with_extension("size"), size.to_string());
            fs::rename(&tmp, &dir).map_err(|e| perr(format!("{}: {e}", dir.display())))?;
            let _ = fs::remove_file(&blob);
            tracing::info!(
                image,
                layer = layer.digest,
                entries = stats.entries,
                bytes = stats.bytes,
                devices_skipped = stats.devices_skipped,
                "layer unpacked"
            );
        }
        if let Some(old) = self.load_ref(key)
            && old.digest == top
            && old.manifest == manifest_digest
        {
            // Nothing changed (an `Always` pull of the same digest): no write.
            return Ok(old);
        }
        let local = LocalRef {
            reference: key.to_string(),
            digest: top,
            manifest: manifest_digest,
            config_digest: manifest.config.digest.clone(),
            config,
            chain,
            last_used_ms: now_ms(),
        };
        self.save_ref(key, &local)
            .map_err(|e| perr(format!("saving the image record: {e}")))?;
        Ok(local)
    }

    /// Downloads a blob (resuming a partial one), verifies it, and returns its path.
    fn fetch(&self, src: &Source, digest: &str, size: Option<u64>) -> Result<PathBuf, String> {
        image::validate_digest(digest)?;
        let dest = self.blob_path(digest);
        if dest.is_file() {
            return Ok(dest);
        }
        let partial = self
            .root
            .join("tmp")
            .join(format!("{}.partial", hex_of(digest)));
        let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let url = format!("{}/bramble/v1/blobs/{digest}", src.server);
        let mut req = src
            .http
            .get(&url)
            .header("Authorization", &format!("Bearer {}", src.token));
        if have > 0 {
            req = req.header("Range", &format!("bytes={have}-"));
        }
        let resp = req
            .call()
            .map_err(|e| format!("cannot reach the master at {}: {e}", src.server))?;
        let code = resp.status().as_u16();
        let mut file = match code {
            206 => OpenOptions::new().append(true).open(&partial),
            200 => File::create(&partial),
            _ => {
                let body = resp
                    .into_body()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_vec()
                    .unwrap_or_default();
                if code == 416 {
                    let _ = fs::remove_file(&partial);
                }
                return Err(format!("blob {digest}: {}", api_message(code, &body)));
            }
        }
        .map_err(|e| format!("{}: {e}", partial.display()))?;
        let mut body = resp.into_body();
        let mut reader = body.with_config().limit(u64::MAX).reader();
        // An interrupted transfer keeps what arrived; the next attempt resumes it.
        io::copy(&mut reader, &mut file)
            .map_err(|e| format!("blob {digest}: transfer interrupted: {e}"))?;
        file.flush().map_err(|e| e.to_string())?;
        drop(file);
        let (actual, len) =
            hash_file(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        if actual != digest || size.is_some_and(|s| s != len) {
            let _ = fs::remove_file(&partial);
            return Err(format!(
                "blob {digest}: the download has digest {actual} and {len} bytes{}; discarded",
                size.map(|s| format!(" (expected {s})")).unwrap_or_default()
            ));
        }
        fs::rename(&partial, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        Ok(dest)
    }

    /// Bytes the cache holds: unpacked layers (as measured when unpacked) and blobs.
    fn usage(&self) -> u64 {
        let mut total = 0;
        for d in ["layers", "blobs/sha256"] {
            if let Ok(rd) = fs::read_dir(self.root.join(d)) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "size") {
                        total += fs::read_to_string(&p)
                            .ok()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .unwrap_or(0);
                    } else if p.is_file() {
                        total += e.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                }
            }
        }
        total
    }

    fn disk_percent(&self) -> u8 {
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(s) if s.blocks() > 0 => {
                let used = s.blocks().saturating_sub(s.blocks_available());
                ((used as u128 * 100) / s.blocks() as u128) as u8
            }
            _ => 0,
        }
    }

    fn over(&self, usage: u64, low: bool) -> bool {
        let pct = if low {
            self.limits.low_percent
        } else {
            self.limits.high_percent
        };
        self.limits.max_bytes.is_some_and(|m| usage > m) || self.disk_percent() > pct
    }

    fn all_refs(&self) -> Vec<(PathBuf, LocalRef)> {
        let Ok(rd) = fs::read_dir(self.root.join("refs")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let p = e.path();
                let r: LocalRef = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
                Some((p, r))
            })
            .collect()
    }

    /// Removes unpacked layers no remaining reference and no mounted overlay uses, and blobs
    /// no remaining reference names.
    fn sweep(&self, refs: &[(PathBuf, LocalRef)]) -> u64 {
        let mounted = mounted_lowers();
        let keep: HashSet<String> = refs
            .iter()
            .flat_map(|(_, r)| r.chain.iter().map(|c| hex_of(c).to_string()))
            .collect();
        let keep_blobs: HashSet<String> = refs
            .iter()
            .flat_map(|(_, r)| {
                [
                    r.digest.clone(),
                    r.manifest.clone(),
                    r.config_digest.clone(),
                ]
                .into_iter()
                .map(|d| hex_of(&d).to_string())
            })
            .collect();
        let mut freed = 0;
        if let Ok(rd) = fs::read_dir(self.root.join("layers")) {
            for e in rd.flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) || mounted.contains(&p) {
                    continue;
                }
                let size_file = p.with_extension("size");
                freed += fs::read_to_string(&size_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if fs::remove_dir_all(&p).is_ok() {
                    let _ = fs::remove_file(&size_file);
                }
            }
        }
        // Keep the documents of remaining refs (an `Always` pull checks them again).
        if let Ok(rd) = fs::read_dir(self.root.join("blobs/sha256")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep_blobs.contains(&name) {
                    freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        freed
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
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.over(self.usage(), false) {
            return 0;
        }
        let used: BTreeSet<String> = in_use
            .iter()
            .filter_map(|i| ImageRef::parse(i).ok().map(|r| cache_key(&r)))
            .collect();
        let mut refs = self.all_refs();
        refs.sort_by_key(|(_, r)| r.last_used_ms);
        let mut freed = self.sweep(&refs);
        let mut i = 0;
        while i < refs.len() && self.over(self.usage(), true) {
            if used.contains(&refs[i].1.reference) {
                i += 1;
                continue;
            }
            let (path, r) = refs.remove(i);
            let _ = fs::remove_file(&path);
            tracing::info!(image = r.reference, "image removed from the node's cache");
            freed += self.sweep(&refs);
        }
        if freed > 0 {
            tracing::info!(bytes = freed, usage = self.usage(), "image cache collected");
        }
        freed
    }
}

/// Every overlay lower directory mounted on this host (containers using layers).
fn mounted_lowers() -> HashSet<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = HashSet::new();
    for line in text.lines() {
        for opt in line.split([' ', ',']) {
            if let Some(v) = opt.strip_prefix("lowerdir=") {
                out.extend(v.split(':').map(PathBuf::from));
            }
        }
    }
    out
}

fn read_small(p: &Path) -> Result<Vec<u8>, String> {
    let mut v = Vec::new();
    File::open(p)
        .and_then(|f| f.take(4 << 20).read_to_end(&mut v))
        .map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(v)
}

fn hash_file(p: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let hex = unpack::hex(&h.finalize());
    Ok((format!("sha256:{hex}"), n))
}

/// Bytes of the regular files under `p` (hard links counted once per name).
fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// The `message` of a Status body, or the code.
fn api_message(code: u16, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("the master answered HTTP {code}"))
}
