//! Garbage-collection references: the blobs an Image reaches (index, manifests, configs,
//! layers), the Pods that use an Image, and removing the blobs nothing references.

use std::collections::BTreeSet;
use std::fs;

use bramble_api::image::{ImageRef, ImageSpec, Index, Manifest};

use super::Blobs;

impl Blobs {
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
    use crate::images::fixtures::{import, oci};

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
