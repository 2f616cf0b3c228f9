//! Naming the images of an OCI image layout from its index.json: by their ref-name
//! annotations, by `--name`, or as one multi-platform image when the index names none.

use bramble_api::image::{self, Descriptor, ImageRef, Index, REF_NAME_ANNOTATION};

use super::naming::{has_tag, reference};
use crate::images::{Blobs, ImageError, invalid};

/// Names the image(s) of an OCI layout's index.json: (reference, digest, media type).
pub(super) fn oci_images(
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

#[cfg(test)]
mod tests {
    use crate::images::fixtures::{import, oci};

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
}
