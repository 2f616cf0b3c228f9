//! The checks of one image manifest: every document readable, every layer present with the
//! declared size and a media type Bramble unpacks, and a config naming the platform.

use std::collections::BTreeSet;
use std::fs;

use bramble_api::image::{self, ImageConfigFile, ImagePlatform, Manifest};

use super::{Blobs, ImageError, invalid};

/// A document of the image's graph, which must be stored.
pub(super) fn read_doc(blobs: &Blobs, digest: &str, what: &str) -> Result<Vec<u8>, ImageError> {
    if !blobs.has(digest) {
        return Err(invalid(format!(
            "{what} {digest} is not in the archive (nor imported before)"
        )));
    }
    blobs.read_small(digest)
}

/// Checks one manifest; returns its platform (from its config) and the bytes it references.
pub(super) fn check_manifest(
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
