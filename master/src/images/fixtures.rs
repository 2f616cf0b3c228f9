//! Test archives: OCI layouts and `docker save` tarballs built in memory, and an import of
//! one into a fresh blob store.

use bramble_api::image::{self, REF_NAME_ANNOTATION};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::{Blobs, ImageError, Imported, hex, import_archive};

/// The digest of `b`.
pub(super) fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(b)))
}

/// Entries of an archive under construction.
#[derive(Default)]
pub(super) struct Archive(pub(super) Vec<(String, Vec<u8>)>);

impl Archive {
    pub(super) fn add(&mut self, path: &str, data: &[u8]) {
        self.0.push((path.to_string(), data.to_vec()));
    }
    pub(super) fn blob(&mut self, data: &[u8]) -> (String, u64) {
        let d = sha(data);
        self.add(&format!("blobs/sha256/{}", &d[7..]), data);
        (d, data.len() as u64)
    }
    pub(super) fn tar(&self) -> Vec<u8> {
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

/// A one-file layer (`bin/app`).
pub(super) fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o755);
    h.set_cksum();
    b.append_data(&mut h, "bin/app", &b"hi"[..]).unwrap();
    b.into_inner().unwrap()
}

/// An OCI layout with one linux/`arch` image; returns it and the manifest digest.
pub(super) fn oci(arch: &str, ref_name: Option<&str>) -> (Archive, String) {
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

/// Imports `a` into a fresh blob store (kept alive by the returned directory).
pub(super) fn import(
    a: &Archive,
    name: Option<&str>,
) -> (tempfile::TempDir, Blobs, Result<Vec<Imported>, ImageError>) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::open(dir.path()).unwrap();
    let bytes = a.tar();
    let r = import_archive(&blobs, &mut &bytes[..], name);
    (dir, blobs, r)
}
