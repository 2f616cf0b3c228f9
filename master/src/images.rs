//! The master as the image source of an offline site: `bramble image import` streams an OCI
//! archive or a `docker save` tarball into a content-addressed blob store in the data dir
//! (every blob verified by its digest), and the store records each reference as an Image
//! object. Agents fetch manifests and blobs by digest.
//!
//! Blobs live at `<data>/blobs/sha256/<hex>`, written to `<data>/blobs/tmp/` first, synced,
//! then renamed: a reader never sees a partial blob and a crash leaves only temporary files,
//! which the next start removes. Blobs no Image references are collected after a removal or a
//! failed import.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bramble_api::image::{
    self, Descriptor, Image, ImageConfigFile, ImagePlatform, ImageRef, ImageSpec, Index, Manifest,
    REF_NAME_ANNOTATION,
};
use bramble_api::{Kind, Object};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The largest JSON document (index, manifest, config, manifest.json) an import reads into
/// memory; layers are streamed.
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// Why an import or a blob operation failed. Messages name the archive entry or digest.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn invalid(m: impl Into<String>) -> ImageError {
    ImageError::Invalid(m.into())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// The content-addressed blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Blobs {
    /// Opens (creating) the blob store under `data_dir` and removes temporary files a crash
    /// left behind.
    pub fn open(data_dir: &Path) -> io::Result<Blobs> {
        let root = data_dir.join("blobs");
        let b = Blobs {
            dir: root.join("sha256"),
            tmp: root.join("tmp"),
        };
        fs::create_dir_all(&b.dir)?;
        let _ = fs::remove_dir_all(&b.tmp);
        fs::create_dir_all(&b.tmp)?;
        Ok(b)
    }

    /// Where a blob is stored; None for a malformed digest.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        image::validate_digest(digest).ok()?;
        Some(self.dir.join(&digest["sha256:".len()..]))
    }

    /// Whether the blob is stored.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_some_and(|p| p.is_file())
    }

    /// A stored blob's bytes (for the small JSON documents).
    pub fn read_small(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self
            .path(digest)
            .ok_or_else(|| invalid(format!("malformed digest {digest:?}")))?;
        let f = File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => invalid(format!("blob {digest} is missing")),
            _ => ImageError::Io {
                what: p.display().to_string(),
                source: e,
            },
        })?;
        let mut v = Vec::new();
        f.take(MAX_JSON_BYTES + 1)
            .read_to_end(&mut v)
            .map_err(io_err(p.display().to_string()))?;
        if v.len() as u64 > MAX_JSON_BYTES {
            return Err(invalid(format!(
                "blob {digest} is larger than {MAX_JSON_BYTES} bytes"
            )));
        }
        Ok(v)
    }

    /// Streams `r` into the store; returns its digest and size. With `expect`, a content
    /// whose digest differs is refused and nothing is kept.
    pub fn put(
        &self,
        r: &mut dyn Read,
        expect: Option<&str>,
        what: &str,
    ) -> Result<(String, u64), ImageError> {
        let mut tmp = tempfile_in(&self.tmp).map_err(io_err(self.tmp.display().to_string()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut size = 0u64;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(io_err(format!("reading {what}")))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            tmp.1
                .write_all(&buf[..n])
                .map_err(io_err(tmp.0.display().to_string()))?;
            size += n as u64;
        }
        let digest = format!("sha256:{}", hex(&h.finalize()));
        if let Some(e) = expect
            && e != digest
        {
            let _ = fs::remove_file(&tmp.0);
            return Err(invalid(format!(
                "{what}: content has digest {digest}, not {e} (a corrupt or tampered archive)"
            )));
        }
        let dest = self.dir.join(&digest["sha256:".len()..]);
        if dest.is_file() {
            let _ = fs::remove_file(&tmp.0);
        } else {
            tmp.1
                .sync_all()
                .map_err(io_err(tmp.0.display().to_string()))?;
            fs::rename(&tmp.0, &dest).map_err(io_err(dest.display().to_string()))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(self.dir.display().to_string()))?;
        }
        Ok((digest, size))
    }

    /// Stores a small document already in memory.
    pub fn put_bytes(&self, bytes: &[u8], what: &str) -> Result<(String, u64), ImageError> {
        self.put(&mut &bytes[..], None, what)
    }

    /// Every stored digest.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(|n| format!("sha256:{n}")))
            .filter(|d| image::validate_digest(d).is_ok())
            .collect()
    }

    /// Removes every blob not in `keep`; returns how many bytes were freed.
    pub fn collect(&self, keep: &BTreeSet<String>) -> u64 {
        let mut freed = 0;
        for d in self.list() {
            if keep.contains(&d) {
                continue;
            }
            if let Some(p) = self.path(&d) {
                freed += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                let _ = fs::remove_file(&p);
            }
        }
        freed
    }

    /// Every digest an image references (index, manifests, configs, layers), for garbage
    /// collection; blobs that cannot be read are skipped.
    pub fn closure(&self, top: &str, out: &mut BTreeSet<String>) {
        if !out.insert(top.to_string()) {
            return;
        }
        let Ok(bytes) = self.read_small(top) else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return;
        };
        if let Ok(i) = serde_json::from_value::<Index>(v.clone())
            && !i.manifests.is_empty()
        {
            for m in &i.manifests {
                self.closure(&m.digest, out);
            }
        }
        if let Ok(m) = serde_json::from_value::<Manifest>(v)
            && !m.config.digest.is_empty()
        {
            out.insert(m.config.digest.clone());
            for l in &m.layers {
                out.insert(l.digest.clone());
            }
        }
    }
}

fn tempfile_in(dir: &Path) -> io::Result<(PathBuf, File)> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    let p = dir.join(format!("blob-{}", hex(&b)));
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)?;
    Ok((p, f))
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What an import found: one entry per reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub reference: String,
    pub spec: ImageSpec,
}

/// One image of a `docker save` manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Reads an OCI archive (an image layout in a tar) or a `docker save` tarball from `r`,
/// storing every blob, and returns the images it holds. `name` names (or renames) them:
/// `web:1.2` exactly, or `web` with the archive's own tags.
pub fn import_archive(
    blobs: &Blobs,
    r: &mut dyn Read,
    name: Option<&str>,
) -> Result<Vec<Imported>, ImageError> {
    let mut archive = tar::Archive::new(r);
    // JSON documents by path, blobs by path (docker layout) with their digest and size.
    let mut docs: HashMap<String, Vec<u8>> = HashMap::new();
    let mut stored: HashMap<String, (String, u64)> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut saw_layout = false;
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("reading the archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| invalid(format!("an archive entry has a malformed path: {e}")))?
            .to_string_lossy()
            .into_owned();
        let path = raw.trim_start_matches("./").to_string();
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            // docker save links repeated layers to the first copy.
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            let resolved = if kind.is_symlink() {
                resolve_relative(&path, &target)
            } else {
                target.trim_start_matches("./").to_string()
            };
            links.insert(path, resolved);
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if let Some(hex_name) = path.strip_prefix("blobs/sha256/") {
            let expect = format!("sha256:{hex_name}");
            image::validate_digest(&expect)
                .map_err(|e| invalid(format!("archive entry {path:?}: {e}")))?;
            let (d, n) = blobs.put(
                &mut entry,
                Some(&expect),
                &format!("archive entry {path:?}"),
            )?;
            stored.insert(path, (d, n));
        } else if path == "oci-layout" {
            saw_layout = true;
        } else if path == "manifest.json" || path.ends_with(".json") && !path.contains('/') {
            if size > MAX_JSON_BYTES {
                return Err(invalid(format!(
                    "archive entry {path:?} is {size} bytes; JSON documents are limited to {MAX_JSON_BYTES}"
                )));
            }
            let mut v = Vec::new();
            entry
                .read_to_end(&mut v)
                .map_err(|e| invalid(format!("reading archive entry {path:?}: {e}")))?;
            // A docker config is also a blob: keep its bytes by digest.
            let (d, n) = blobs.put_bytes(&v, &format!("archive entry {path:?}"))?;
            stored.insert(path.clone(), (d, n));
            docs.insert(path, v);
        } else if path.ends_with("/layer.tar") || path.ends_with(".tar") {
            let (d, n) = blobs.put(&mut entry, None, &format!("archive entry {path:?}"))?;
            stored.insert(path, (d, n));
        }
    }
    let lookup = |p: &str| -> Option<(String, u64)> {
        let p = p.trim_start_matches("./");
        let p = links.get(p).map_or(p, String::as_str);
        stored.get(p).cloned()
    };
    let images = if let Some(index_json) = docs.get("index.json") {
        if !saw_layout {
            return Err(invalid(
                "the archive has index.json but no oci-layout file: not an OCI image layout",
            ));
        }
        oci_images(blobs, index_json, name)?
    } else if let Some(manifest_json) = docs.get("manifest.json") {
        docker_images(blobs, manifest_json, &lookup, name)?
    } else {
        return Err(invalid(
            "the archive has neither index.json (OCI layout) nor manifest.json (docker save)",
        ));
    };
    let mut out = Vec::new();
    for (reference, digest, media_type) in images {
        let spec = describe(blobs, &reference, &digest, &media_type)?;
        out.push(Imported { reference, spec });
    }
    Ok(out)
}

fn resolve_relative(path: &str, target: &str) -> String {
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    for t in target.split('/') {
        match t {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            x => parts.push(x),
        }
    }
    parts.join("/")
}

/// Names the image(s) of an OCI layout's index.json: (reference, digest, media type).
fn oci_images(
    blobs: &Blobs,
    index_json: &[u8],
    name: Option<&str>,
) -> Result<Vec<(String, String, String)>, ImageError> {
    let index: Index =
        serde_json::from_slice(index_json).map_err(|e| invalid(format!("index.json: {e}")))?;
    if index.manifests.is_empty() {
        return Err(invalid("index.json lists no manifests"));
    }
    let named: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.annotations.contains_key(REF_NAME_ANNOTATION))
        .collect();
    // Several platform manifests and no names: the layout's index is the multi-arch image.
    if named.is_empty() && index.manifests.len() > 1 {
        let Some(n) = name else {
            return Err(invalid(
                "the archive's index does not name its image; pass --name REPOSITORY:TAG",
            ));
        };
        let r = reference(n, None)?;
        let (d, _) = blobs.put_bytes(index_json, "index.json")?;
        return Ok(vec![(r, d, image::MEDIA_OCI_INDEX.to_string())]);
    }
    let candidates: Vec<&Descriptor> = if named.is_empty() {
        index.manifests.iter().collect()
    } else {
        named
    };
    let explicit_tag = name.is_some_and(|n| ImageRef::parse(n).is_ok() && has_tag(n));
    if explicit_tag && candidates.len() > 1 {
        let refs: Vec<&str> = candidates
            .iter()
            .filter_map(|d| d.annotations.get(REF_NAME_ANNOTATION).map(String::as_str))
            .collect();
        return Err(invalid(format!(
            "the archive holds {} images ({}); --name with a tag names only one: pass a \
             repository without a tag",
            candidates.len(),
            refs.join(", ")
        )));
    }
    let mut out = Vec::new();
    for d in candidates {
        let annotated = d.annotations.get(REF_NAME_ANNOTATION).map(String::as_str);
        let r = match (name, annotated) {
            (Some(n), a) => reference(n, a)?,
            (None, Some(a)) if a.contains(':') || a.contains('/') => reference(a, None)?,
            (None, Some(a)) => {
                return Err(invalid(format!(
                    "the archive names its image only by the tag {a:?}; pass --name REPOSITORY"
                )));
            }
            (None, None) => {
                return Err(invalid(
                    "the archive does not name its image; pass --name REPOSITORY:TAG",
                ));
            }
        };
        let media = if d.media_type.is_empty() {
            image::MEDIA_OCI_MANIFEST.to_string()
        } else {
            d.media_type.clone()
        };
        out.push((r, d.digest.clone(), media));
    }
    Ok(out)
}

fn has_tag(r: &str) -> bool {
    let no_digest = r.split('@').next().unwrap_or(r);
    no_digest
        .rsplit_once(':')
        .is_some_and(|(_, t)| !t.contains('/'))
}

/// The normalized reference for `name`, taking the tag from an annotation (a tag or a full
/// reference) when `name` has none.
fn reference(name: &str, annotated: Option<&str>) -> Result<String, ImageError> {
    let r = ImageRef::parse(name).map_err(invalid)?;
    if has_tag(name) {
        return Ok(r.tagged());
    }
    let tag = match annotated {
        Some(a) if has_tag(a) => ImageRef::parse(a).map_err(invalid)?.tag,
        Some(a) if !a.contains('/') => a.to_string(),
        _ => "latest".to_string(),
    };
    ImageRef::parse(&format!("{}:{tag}", r.repository))
        .map(|r| r.tagged())
        .map_err(invalid)
}

type Lookup<'a> = dyn Fn(&str) -> Option<(String, u64)> + 'a;

/// The images of a `docker save` manifest.json, each given an OCI manifest built from its
/// config and layers.
fn docker_images(
    blobs: &Blobs,
    manifest_json: &[u8],
    lookup: &Lookup<'_>,
    name: Option<&str>,
) -> Result<Vec<(String, String, String)>, ImageError> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(manifest_json)
        .map_err(|e| invalid(format!("manifest.json: {e}")))?;
    if entries.is_empty() {
        return Err(invalid("manifest.json lists no images"));
    }
    let mut out = Vec::new();
    for e in &entries {
        let (config_digest, config_size) = lookup(&e.config).ok_or_else(|| {
            invalid(format!(
                "manifest.json names config {:?}, which is not in the archive",
                e.config
            ))
        })?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (d, size) = lookup(l).ok_or_else(|| {
                invalid(format!(
                    "manifest.json names layer {l:?}, which is not in the archive"
                ))
            })?;
            layers.push(Descriptor {
                media_type: sniff_layer(blobs, &d)?.to_string(),
                digest: d,
                size,
                ..Default::default()
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: image::MEDIA_OCI_MANIFEST.into(),
            config: Descriptor {
                media_type: image::MEDIA_OCI_CONFIG.into(),
                digest: config_digest,
                size: config_size,
                ..Default::default()
            },
            layers,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| invalid(e.to_string()))?;
        let (digest, _) = blobs.put_bytes(&bytes, "the generated manifest")?;
        let tags = e.repo_tags.clone().unwrap_or_default();
        let names: Vec<String> = match name {
            Some(n) if has_tag(n) => vec![reference(n, None)?],
            Some(n) => match tags.first() {
                Some(t) => vec![reference(n, Some(t))?],
                None => vec![reference(n, None)?],
            },
            None if tags.is_empty() => {
                return Err(invalid(
                    "the docker archive has an image without RepoTags; pass --name REPOSITORY:TAG",
                ));
            }
            None => tags
                .iter()
                .map(|t| reference(t, None))
                .collect::<Result<_, _>>()?,
        };
        for n in names {
            out.push((n, digest.clone(), image::MEDIA_OCI_MANIFEST.to_string()));
        }
    }
    Ok(out)
}

/// gzip or plain tar, by the magic bytes.
fn sniff_layer(blobs: &Blobs, digest: &str) -> Result<&'static str, ImageError> {
    let p = blobs
        .path(digest)
        .ok_or_else(|| invalid(format!("malformed digest {digest}")))?;
    let mut magic = [0u8; 2];
    let n = File::open(&p)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(io_err(p.display().to_string()))?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        image::MEDIA_OCI_LAYER_GZIP
    } else {
        image::MEDIA_OCI_LAYER
    })
}

/// Checks an image's whole graph (every referenced blob present, sizes as declared, documents
/// readable, layer types supported) and describes it.
pub fn describe(
    blobs: &Blobs,
    reference: &str,
    digest: &str,
    media_type: &str,
) -> Result<ImageSpec, ImageError> {
    let mut seen = BTreeSet::new();
    let mut platforms = Vec::new();
    let mut size = 0u64;
    let top = read_doc(blobs, digest, "the image")?;
    size += top.len() as u64;
    seen.insert(digest.to_string());
    if image::is_index(media_type) {
        let index: Index =
            serde_json::from_slice(&top).map_err(|e| invalid(format!("index {digest}: {e}")))?;
        if index.manifests.is_empty() {
            return Err(invalid(format!("index {digest} lists no manifests")));
        }
        for m in &index.manifests {
            if !image::is_manifest(&m.media_type) && !m.media_type.is_empty() {
                return Err(invalid(format!(
                    "index {digest} lists {} of media type {:?}; nested indexes are not supported",
                    m.digest, m.media_type
                )));
            }
            let (p, s) = check_manifest(blobs, &m.digest, Some(m.size), &mut seen)?;
            let p = match &m.platform {
                Some(pl) => ImagePlatform {
                    os: pl.os.clone(),
                    architecture: pl.architecture.clone(),
                    variant: pl.variant.clone(),
                    digest: m.digest.clone(),
                },
                None => p,
            };
            size += s;
            platforms.push(p);
        }
    } else if image::is_manifest(media_type) {
        // The manifest's own bytes are counted above (it is in `seen`).
        let (p, s) = check_manifest(blobs, digest, None, &mut seen)?;
        size += s;
        platforms.push(p);
    } else {
        return Err(invalid(format!(
            "{reference}: media type {media_type:?} is neither an image index nor a manifest"
        )));
    }
    Ok(ImageSpec {
        reference: reference.to_string(),
        digest: digest.to_string(),
        media_type: media_type.to_string(),
        platforms,
        size,
    })
}

fn read_doc(blobs: &Blobs, digest: &str, what: &str) -> Result<Vec<u8>, ImageError> {
    if !blobs.has(digest) {
        return Err(invalid(format!(
            "{what} {digest} is not in the archive (nor imported before)"
        )));
    }
    blobs.read_small(digest)
}

/// Checks one manifest; returns its platform (from its config) and the bytes it references.
fn check_manifest(
    blobs: &Blobs,
    digest: &str,
    declared: Option<u64>,
    seen: &mut BTreeSet<String>,
) -> Result<(ImagePlatform, u64), ImageError> {
    let bytes = read_doc(blobs, digest, "manifest")?;
    if let Some(s) = declared
        && s != bytes.len() as u64
    {
        return Err(invalid(format!(
            "manifest {digest} is {} bytes, but its descriptor says {s}",
            bytes.len()
        )));
    }
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("manifest {digest}: {e}")))?;
    let mut size = if seen.insert(digest.to_string()) {
        bytes.len() as u64
    } else {
        0
    };
    let config_bytes = read_doc(
        blobs,
        &m.config.digest,
        &format!("manifest {digest}: config"),
    )?;
    let config: ImageConfigFile = serde_json::from_slice(&config_bytes)
        .map_err(|e| invalid(format!("config {}: {e}", m.config.digest)))?;
    if seen.insert(m.config.digest.clone()) {
        size += config_bytes.len() as u64;
    }
    for l in &m.layers {
        if !matches!(
            l.media_type.as_str(),
            image::MEDIA_OCI_LAYER
                | image::MEDIA_OCI_LAYER_GZIP
                | image::MEDIA_DOCKER_LAYER
                | image::MEDIA_DOCKER_LAYER_GZIP
        ) {
            return Err(invalid(format!(
                "manifest {digest}: layer {} has media type {:?}; Bramble unpacks tar and \
                 tar+gzip layers",
                l.digest, l.media_type
            )));
        }
        let p = blobs
            .path(&l.digest)
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                invalid(format!(
                    "manifest {digest}: layer {} is not in the archive (nor imported before)",
                    l.digest
                ))
            })?;
        let actual = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if actual != l.size {
            return Err(invalid(format!(
                "manifest {digest}: layer {} is {actual} bytes, but the manifest says {}",
                l.digest, l.size
            )));
        }
        if seen.insert(l.digest.clone()) {
            size += actual;
        }
    }
    if config.os.is_empty() || config.architecture.is_empty() {
        return Err(invalid(format!(
            "config {}: os and architecture are required",
            m.config.digest
        )));
    }
    Ok((
        ImagePlatform {
            os: config.os,
            architecture: config.architecture,
            variant: config.variant,
            digest: digest.to_string(),
        },
        size,
    ))
}

/// The Image object for an import.
pub fn image_object(i: &Imported) -> Object {
    let mut img = Image {
        api_version: Kind::Image.api_version().into(),
        kind: Kind::Image.name().into(),
        spec: i.spec.clone(),
        ..Default::default()
    };
    img.metadata.name = image::object_name(&i.reference);
    Object::Image(img)
}

/// The digests every Image in `images` references.
pub fn referenced(blobs: &Blobs, images: &[ImageSpec]) -> BTreeSet<String> {
    let mut keep = BTreeSet::new();
    for i in images {
        blobs.closure(&i.digest, &mut keep);
    }
    keep
}

/// Pods (namespace/name) whose containers use `reference`.
pub fn users(pods: &[bramble_api::pod::Pod], reference: &str) -> Vec<String> {
    pods.iter()
        .filter(|p| {
            p.spec
                .containers
                .iter()
                .any(|c| ImageRef::parse(&c.image).is_ok_and(|r| r.tagged() == reference))
        })
        .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex(&Sha256::digest(b)))
    }

    /// Entries of an archive under construction.
    #[derive(Default)]
    struct Archive(Vec<(String, Vec<u8>)>);

    impl Archive {
        fn add(&mut self, path: &str, data: &[u8]) {
            self.0.push((path.to_string(), data.to_vec()));
        }
        fn blob(&mut self, data: &[u8]) -> (String, u64) {
            let d = sha(data);
            self.add(&format!("blobs/sha256/{}", &d[7..]), data);
            (d, data.len() as u64)
        }
        fn tar(&self) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            for (p, d) in &self.0 {
                let mut h = tar::Header::new_gnu();
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, p, &d[..]).unwrap();
            }
            b.into_inner().unwrap()
        }
    }

    fn layer_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, "bin/app", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    /// An OCI layout with one linux/`arch` image; returns it and the manifest digest.
    fn oci(arch: &str, ref_name: Option<&str>) -> (Archive, String) {
        let mut a = Archive::default();
        a.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        let layer = layer_tar();
        let (ld, ls) = a.blob(&layer);
        let config = serde_json::to_vec(&json!({"architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/app"]}, "rootfs": {"type": "layers", "diff_ids": [ld]}}))
        .unwrap();
        let (cd, cs) = a.blob(&config);
        let manifest = serde_json::to_vec(&json!({"schemaVersion": 2,
            "mediaType": image::MEDIA_OCI_MANIFEST,
            "config": {"mediaType": image::MEDIA_OCI_CONFIG, "digest": cd, "size": cs},
            "layers": [{"mediaType": image::MEDIA_OCI_LAYER, "digest": ld, "size": ls}]}))
        .unwrap();
        let (md, ms) = a.blob(&manifest);
        let mut desc = json!({"mediaType": image::MEDIA_OCI_MANIFEST, "digest": md, "size": ms});
        if let Some(r) = ref_name {
            desc["annotations"] = json!({REF_NAME_ANNOTATION: r});
        }
        a.add(
            "index.json",
            &serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [desc]})).unwrap(),
        );
        (a, md)
    }

    fn import(
        a: &Archive,
        name: Option<&str>,
    ) -> (tempfile::TempDir, Blobs, Result<Vec<Imported>, ImageError>) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let bytes = a.tar();
        let r = import_archive(&blobs, &mut &bytes[..], name);
        (dir, blobs, r)
    }

    #[test]
    fn an_oci_layout_imports_with_its_platform_and_name() {
        let (a, md) = oci("arm64", Some("1.2"));
        let (_d, blobs, r) = import(&a, Some("web"));
        let i = r.unwrap();
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].reference, "web:1.2");
        assert_eq!(i[0].spec.digest, md);
        assert_eq!(i[0].spec.platforms[0].display(), "linux/arm64");
        assert!(blobs.has(&md));
        // Without a name the tag alone is not enough.
        let (_d, _b, r) = import(&a, None);
        assert!(r.unwrap_err().to_string().contains("pass --name"));
        let (a, _) = oci("amd64", Some("registry:5000/team/app:2"));
        let (_d, _b, r) = import(&a, None);
        assert_eq!(r.unwrap()[0].reference, "registry:5000/team/app:2");
    }

    #[test]
    fn a_docker_save_tarball_imports_with_a_generated_manifest() {
        let mut a = Archive::default();
        let layer = layer_tar();
        a.add("abc/layer.tar", &layer);
        let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]}}))
        .unwrap();
        let cfg_name = format!("{}.json", &sha(&config)[7..]);
        a.add(&cfg_name, &config);
        a.add(
            "manifest.json",
            &serde_json::to_vec(&json!([{"Config": cfg_name, "RepoTags": ["busybox:1.36"],
                "Layers": ["abc/layer.tar"]}]))
            .unwrap(),
        );
        let (_d, blobs, r) = import(&a, None);
        let i = r.unwrap();
        assert_eq!(i[0].reference, "busybox:1.36");
        let m: Manifest =
            serde_json::from_slice(&blobs.read_small(&i[0].spec.digest).unwrap()).unwrap();
        assert_eq!(m.layers[0].digest, sha(&layer));
        assert_eq!(m.layers[0].media_type, image::MEDIA_OCI_LAYER);
    }

    #[test]
    fn broken_archives_are_refused_with_the_reason() {
        // A blob whose content does not match its name.
        let (mut a, _) = oci("amd64", Some("1"));
        a.add(&format!("blobs/sha256/{}", "1".repeat(64)), b"tampered");
        let (_d, _b, r) = import(&a, Some("x"));
        assert!(r.unwrap_err().to_string().contains("content has digest"));
        // A manifest naming a layer the archive lacks.
        let (mut a, _) = oci("amd64", Some("1"));
        a.0.retain(|(p, d)| !(p.starts_with("blobs/") && d.len() > 1000));
        let (_d, blobs, r) = import(&a, Some("x"));
        assert!(r.unwrap_err().to_string().contains("is not in the archive"));
        assert!(
            !blobs.list().is_empty(),
            "the caller collects what a failed import left"
        );
        // No oci-layout.
        let (mut a, _) = oci("amd64", Some("1"));
        a.0.retain(|(p, _)| p != "oci-layout");
        let (_d, _b, r) = import(&a, Some("x"));
        assert!(r.unwrap_err().to_string().contains("oci-layout"));
        // Neither layout.
        let (_d, _b, r) = import(&Archive::default(), Some("x"));
        assert!(r.unwrap_err().to_string().contains("neither index.json"));
        // Not a tar at all.
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let r = import_archive(&blobs, &mut &[7u8; 700][..], Some("x"));
        assert!(r.is_err());
    }

    #[test]
    fn unreferenced_blobs_are_collected() {
        let (a, md) = oci("amd64", Some("1"));
        let (_d, blobs, r) = import(&a, Some("x"));
        let i = r.unwrap();
        blobs.put_bytes(b"orphan", "test").unwrap();
        let keep = referenced(&blobs, &[i[0].spec.clone()]);
        assert_eq!(keep.len(), 3, "manifest, config, layer");
        blobs.collect(&keep);
        assert_eq!(blobs.list().len(), 3);
        assert!(blobs.has(&md));
        blobs.collect(&BTreeSet::new());
        assert!(blobs.list().is_empty());
    }
}
