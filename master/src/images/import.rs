//! Importing an archive: walking a tar (an OCI image layout or a `docker save` tarball),
//! storing every blob by digest, naming the images it holds, and the Image objects for them.

mod docker;
mod layout;
mod naming;

use std::collections::HashMap;
use std::io::Read;

use bramble_api::image::{self, Image, ImageSpec};
use bramble_api::{Kind, Object};

use self::docker::docker_images;
use self::layout::oci_images;
use super::{Blobs, ImageError, MAX_JSON_BYTES, describe, invalid};

/// What an import found: one entry per reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub reference: String,
    pub spec: ImageSpec,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::fixtures::{Archive, import, oci};

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
}
