//! Downloading one blob into the cache: resumed from a partial download, verified by digest
//! and size, and renamed into place only when complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bramble_api::image;
use sha2::{Digest as _, Sha256};

use super::source::{BlobBody, BlobSource, SourceError};
use super::{OciStore, hex_of, unpack};

impl OciStore {
    /// Downloads a blob (resuming a partial one), verifies it, and returns its path.
    pub(super) fn fetch(
        &self,
        src: &dyn BlobSource,
        digest: &str,
        size: Option<u64>,
    ) -> Result<PathBuf, String> {
        image::validate_digest(digest).map_err(|e| e.to_string())?;
        let dest = self.blob_path(digest);
        if dest.is_file() {
            return Ok(dest);
        }
        let partial = self
            .root
            .join("tmp")
            .join(format!("{}.partial", hex_of(digest)));
        let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let (file, mut reader) = match src.blob(digest, have) {
            Ok(BlobBody::Rest(r)) => (OpenOptions::new().append(true).open(&partial), r),
            Ok(BlobBody::Whole(r)) => (File::create(&partial), r),
            Err(SourceError::OffsetPastEnd(m)) => {
                let _ = fs::remove_file(&partial);
                return Err(m);
            }
            Err(SourceError::Failed(m)) => return Err(m),
        };
        let mut file = file.map_err(|e| format!("{}: {e}", partial.display()))?;
        // An interrupted transfer keeps what arrived; the next attempt resumes it.
        io::copy(&mut reader, &mut file)
            .map_err(|e| format!("blob {digest}: transfer interrupted: {e}"))?;
        file.flush().map_err(|e| e.to_string())?;
        drop(file);
        let (actual, len) =
            hash_file(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        if actual != digest || size.is_some_and(|s| s != len) {
            let _ = fs::remove_file(&partial);
            return Err(format!(
                "blob {digest}: the download has digest {actual} and {len} bytes{}; discarded",
                size.map(|s| format!(" (expected {s})")).unwrap_or_default()
            ));
        }
        fs::rename(&partial, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        Ok(dest)
    }
}

/// A document of the cache (at most 4 MiB of it).
pub(super) fn read_small(p: &Path) -> Result<Vec<u8>, String> {
    let mut v = Vec::new();
    File::open(p)
        .and_then(|f| f.take(4 << 20).read_to_end(&mut v))
        .map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(v)
}

/// The digest and length of a file.
fn hash_file(p: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let hex = unpack::hex(&h.finalize());
    Ok((format!("sha256:{hex}"), n))
}
