//! A `docker save` tarball: its manifest.json's images, each given an OCI manifest built from
//! its config and layers (tar or tar+gzip, told apart by their first bytes).

use std::fs::File;
use std::io::Read;

use bramble_api::image::{self, Descriptor, Manifest};
use serde::Deserialize;

use super::naming::{has_tag, reference};
use crate::images::{Blobs, ImageError, invalid, io_err};

/// One image of a `docker save` manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Finds an archive path's stored blob (digest and size), following links.
type Lookup<'a> = dyn Fn(&str) -> Option<(String, u64)> + 'a;

/// The images of a `docker save` manifest.json, each given an OCI manifest built from its
/// config and layers.
pub(super) fn docker_images(
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

#[cfg(test)]
mod tests {
    use bramble_api::image::{self, Manifest};
    use serde_json::json;

    use crate::images::fixtures::{Archive, import, layer_tar, sha};

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
}
