//! Downloading one blob into the cache: resumed from a partial download, verified by digest
//! and size, and renamed into place only when complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bramble_api::image;
use sha2::{Digest as _, Sha256};

use super::source::{BlobBody, BlobSource, SourceError};
use super::{OciStore, hex_of, unpack};

/// The most of a document (index, manifest, config) the cache reads.
const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// Why a blob could not be fetched or a document read.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    #[error(transparent)]
    Digest(#[from] image::DigestError),
    /// The master's answer, as it said it.
    #[error("{0}")]
    Source(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest}: transfer interrupted: {source}")]
    Interrupted {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "blob {digest}: the download has digest {actual} and {len} bytes{}; discarded",
        expected.map(|s| format!(" (expected {s})")).unwrap_or_default()
    )]
    Mismatch {
        digest: String,
        actual: String,
        len: u64,
        expected: Option<u64>,
    },
    #[error("{}: larger than {MAX_DOCUMENT_BYTES} bytes, too large for an image document", path.display())]
    TooLarge { path: PathBuf },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl OciStore {
    /// Where a blob's download in progress is kept (resumed from there after an interruption).
    pub(super) fn partial_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}.partial", hex_of(digest)))
    }

    /// Downloads a blob (resuming a partial one), verifies it, and returns its path.
    pub(super) fn fetch(
        &self,
        src: &dyn BlobSource,
        digest: &str,
        size: Option<u64>,
    ) -> Result<PathBuf, FetchError> {
        image::validate_digest(digest)?;
        let dest = self.blob_path(digest);
        if dest.is_file() {
            return Ok(dest);
        }
        let partial = self.partial_path(digest);
        let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let (file, mut reader) = match src.blob(digest, have) {
            Ok(BlobBody::Rest(r)) => (OpenOptions::new().append(true).open(&partial), r),
            Ok(BlobBody::Whole(r)) => (File::create(&partial), r),
            Err(SourceError::OffsetPastEnd(m)) => {
                let _ = fs::remove_file(&partial);
                return Err(FetchError::Source(m));
            }
            Err(SourceError::Failed(m)) => return Err(FetchError::Source(m)),
        };
        let mut file = file.map_err(io_at(&partial))?;
        // An interrupted transfer keeps what arrived; the next attempt resumes it.
        io::copy(&mut reader, &mut file).map_err(|source| FetchError::Interrupted {
            digest: digest.to_string(),
            source,
        })?;
        file.flush().map_err(io_at(&partial))?;
        drop(file);
        let (actual, len) = hash_file(&partial).map_err(io_at(&partial))?;
        if actual != digest || size.is_some_and(|s| s != len) {
            let _ = fs::remove_file(&partial);
            return Err(FetchError::Mismatch {
                digest: digest.to_string(),
                actual,
                len,
                expected: size,
            });
        }
        fs::rename(&partial, &dest).map_err(io_at(&dest))?;
        Ok(dest)
    }
}

/// A document of the cache; one larger than [`MAX_DOCUMENT_BYTES`] is refused (not cut
/// short into JSON that does not parse).
pub(super) fn read_small(p: &Path) -> Result<Vec<u8>, FetchError> {
    let mut v = Vec::new();
    File::open(p)
        .and_then(|f| f.take(MAX_DOCUMENT_BYTES + 1).read_to_end(&mut v))
        .map_err(io_at(p))?;
    if v.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(FetchError::TooLarge {
            path: p.to_path_buf(),
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_over_the_limit_is_refused_not_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let fits = dir.path().join("fits");
        fs::write(&fits, vec![b' '; MAX_DOCUMENT_BYTES as usize]).unwrap();
        assert_eq!(read_small(&fits).unwrap().len() as u64, MAX_DOCUMENT_BYTES);
        let big = dir.path().join("big");
        fs::write(&big, vec![b' '; MAX_DOCUMENT_BYTES as usize + 1]).unwrap();
        let e = read_small(&big).unwrap_err();
        assert!(matches!(e, FetchError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("too large"), "{e}");
    }
}
