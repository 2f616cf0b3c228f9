//! The references an import gives its images: `--name` with or without a tag, completed by
//! the tag an archive records.

use bramble_api::image::ImageRef;

use crate::images::{ImageError, invalid};

/// Whether a reference carries a tag (a colon after its last slash, not a registry port).
pub(super) fn has_tag(r: &str) -> bool {
    let no_digest = r.split('@').next().unwrap_or(r);
    no_digest
        .rsplit_once(':')
        .is_some_and(|(_, t)| !t.contains('/'))
}

/// The normalized reference for `name`, taking the tag from an annotation (a tag or a full
/// reference) when `name` has none.
pub(super) fn reference(name: &str, annotated: Option<&str>) -> Result<String, ImageError> {
    let r = ImageRef::parse(name).map_err(|e| invalid(e.to_string()))?;
    if has_tag(name) {
        return Ok(r.tagged());
    }
    let tag = match annotated {
        Some(a) if has_tag(a) => ImageRef::parse(a).map_err(|e| invalid(e.to_string()))?.tag,
        Some(a) if !a.contains('/') => a.to_string(),
        _ => "latest".to_string(),
    };
    ImageRef::parse(&format!("{}:{tag}", r.repository))
        .map(|r| r.tagged())
        .map_err(|e| invalid(e.to_string()))
}
