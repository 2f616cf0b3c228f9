//! Pulling an image: resolve the tag, read the index and choose the node's manifest, read the
//! config, and fetch and unpack each layer not already unpacked, then record the reference.

use std::fs::{self, File};
use std::path::PathBuf;

use bramble_api::image::{self, Descriptor, ImageConfigFile, ImageRef, Index, Manifest};

use super::fetch::read_small;
use super::source::BlobSource;
use super::{LocalRef, OciStore, chain_ids, hex_of, now_ms, unpack};
use crate::images::ImageError;

impl OciStore {
    /// Pulls `r` from the node's source; returns the local record.
    pub(super) fn pull(
        &self,
        image: &str,
        r: &ImageRef,
        key: &str,
    ) -> Result<LocalRef, ImageError> {
        let perr = pull_error(image);
        let src = self.source(image)?;
        let src = src.as_ref();
        let (top, platforms) = match &r.digest {
            Some(d) => (d.clone(), None),
            None => {
                let spec = src.resolve(&r.tagged()).map_err(|e| perr(e.to_string()))?;
                (spec.digest, Some(spec.platforms))
            }
        };
        let top_path = self
            .fetch(src, &top, None)
            .map_err(|e| perr(e.to_string()))?;
        let top_doc = read_small(&top_path).map_err(|e| perr(e.to_string()))?;
        let (manifest_digest, manifest_size) = if is_index(&top_doc) {
            let idx: Index =
                serde_json::from_slice(&top_doc).map_err(|e| perr(format!("index {top}: {e}")))?;
            self.platform.pick(image, &idx, platforms.as_deref())?
        } else {
            (top.clone(), None)
        };
        let mpath = self
            .fetch(src, &manifest_digest, manifest_size)
            .map_err(|e| perr(e.to_string()))?;
        let manifest: Manifest =
            serde_json::from_slice(&read_small(&mpath).map_err(|e| perr(e.to_string()))?)
                .map_err(|e| perr(format!("manifest {manifest_digest}: {e}")))?;
        let cpath = self
            .fetch(src, &manifest.config.digest, Some(manifest.config.size))
            .map_err(|e| perr(e.to_string()))?;
        let config: ImageConfigFile =
            serde_json::from_slice(&read_small(&cpath).map_err(|e| perr(e.to_string()))?)
                .map_err(|e| perr(format!("config {}: {e}", manifest.config.digest)))?;
        self.platform.check(image, &config, &manifest_digest)?;
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
            // Unpacked before, by this image or another with the same layers below.
            if self.layer_dir(&chain[i]).is_dir() {
                continue;
            }
            self.unpack(src, image, layer, &chain[..=i], &config.rootfs.diff_ids[i])?;
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

    /// Fetches `layer` and unpacks it as the last of `chain` (chain ids, lowest first) into
    /// `tmp/`, renamed into `layers/` when complete; its blob is removed either way.
    fn unpack(
        &self,
        src: &dyn BlobSource,
        image: &str,
        layer: &Descriptor,
        chain: &[String],
        diff_id: &str,
    ) -> Result<(), ImageError> {
        let perr = pull_error(image);
        let Some((id, below)) = chain.split_last() else {
            return Ok(());
        };
        let dir = self.layer_dir(id);
        let blob = self
            .fetch(src, &layer.digest, Some(layer.size))
            .map_err(|e| perr(e.to_string()))?;
        let lowers: Vec<PathBuf> = below.iter().rev().map(|c| self.layer_dir(c)).collect();
        let tmp = self.root.join("tmp").join(format!("layer-{}", hex_of(id)));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(|e| perr(format!("{}: {e}", tmp.display())))?;
        let result = File::open(&blob)
            .map_err(|e| unpack::UnpackError::Io {
                what: blob.display().to_string(),
                source: e,
            })
            .and_then(|mut f| {
                let gzip = unpack::is_gzip(&blob).unwrap_or(false);
                let policy = self.layer_policy.for_layer(layer.size);
                unpack::unpack_layer_with(&mut f, gzip, &tmp, &lowers, Some(diff_id), policy)
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
        let size = crate::images::tree_size(&tmp, false);
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
        Ok(())
    }
}

/// A pull of `image` failed with a message.
fn pull_error(image: &str) -> impl Fn(String) -> ImageError + Copy + '_ {
    move |message| ImageError::Pull {
        image: image.to_string(),
        message,
    }
}

/// Whether the image's top document is an index: by its media type, or by its shape when it
/// names none.
fn is_index(doc: &[u8]) -> bool {
    let media = serde_json::from_slice::<serde_json::Value>(doc)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_default();
    image::is_index(&media)
        || (media.is_empty()
            && serde_json::from_slice::<Index>(doc).is_ok_and(|i| !i.manifests.is_empty()))
}
