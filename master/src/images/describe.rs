//! What `bramble image describe` shows: an image's platforms and size, after checking its whole
//! graph (an index and its manifests, or one manifest).

use std::collections::BTreeSet;

use bramble_api::image::{self, ImagePlatform, ImageSpec, Index};

use super::manifest::{check_manifest, read_doc};
use super::{Blobs, ImageError, invalid};

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
