//! The content-addressed blob store: blobs at `<data>/blobs/sha256/<hex>`, written to
//! `<data>/blobs/tmp/` first, verified, synced and renamed into place.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bramble_api::image;
use sha2::{Digest as _, Sha256};

use super::{ImageError, MAX_JSON_BYTES, invalid, io_err};

/// The content-addressed blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Blobs {
    /// Opens (creating) the blob store under `data_dir` and removes temporary files a crash
    /// left behind.
    pub fn open(data_dir: &Path) -> io::Result<Blobs> {
        let root = data_dir.join("blobs");
        let b = Blobs {
            dir: root.join("sha256"),
            tmp: root.join("tmp"),
        };
        fs::create_dir_all(&b.dir)?;
        let _ = fs::remove_dir_all(&b.tmp);
        fs::create_dir_all(&b.tmp)?;
        Ok(b)
    }

    /// Where a blob is stored; None for a malformed digest.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        image::validate_digest(digest).ok()?;
        Some(self.dir.join(&digest["sha256:".len()..]))
    }

    /// Whether the blob is stored.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_some_and(|p| p.is_file())
    }

    /// A stored blob's bytes (for the small JSON documents).
    pub fn read_small(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self
            .path(digest)
            .ok_or_else(|| invalid(format!("malformed digest {digest:?}")))?;
        let f = File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => invalid(format!("blob {digest} is missing")),
            _ => ImageError::Io {
                what: p.display().to_string(),
                source: e,
            },
        })?;
        let mut v = Vec::new();
        f.take(MAX_JSON_BYTES + 1)
            .read_to_end(&mut v)
            .map_err(io_err(p.display().to_string()))?;
        if v.len() as u64 > MAX_JSON_BYTES {
            return Err(invalid(format!(
                "blob {digest} is larger than {MAX_JSON_BYTES} bytes"
            )));
        }
        Ok(v)
    }

    /// Streams `r` into the store; returns its digest and size. With `expect`, a content
    /// whose digest differs is refused and nothing is kept.
    pub fn put(
        &self,
        r: &mut dyn Read,
        expect: Option<&str>,
        what: &str,
    ) -> Result<(String, u64), ImageError> {
        let mut tmp = tempfile_in(&self.tmp).map_err(io_err(self.tmp.display().to_string()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut size = 0u64;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(io_err(format!("reading {what}")))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            tmp.1
                .write_all(&buf[..n])
                .map_err(io_err(tmp.0.display().to_string()))?;
            size += n as u64;
        }
        let digest = format!("sha256:{}", hex(&h.finalize()));
        if let Some(e) = expect
            && e != digest
        {
            let _ = fs::remove_file(&tmp.0);
            return Err(invalid(format!(
                "{what}: content has digest {digest}, not {e} (a corrupt or tampered archive)"
            )));
        }
        let dest = self.dir.join(&digest["sha256:".len()..]);
        if dest.is_file() {
            let _ = fs::remove_file(&tmp.0);
        } else {
            tmp.1
                .sync_all()
                .map_err(io_err(tmp.0.display().to_string()))?;
            fs::rename(&tmp.0, &dest).map_err(io_err(dest.display().to_string()))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(self.dir.display().to_string()))?;
        }
        Ok((digest, size))
    }

    /// Stores a small document already in memory.
    pub fn put_bytes(&self, bytes: &[u8], what: &str) -> Result<(String, u64), ImageError> {
        self.put(&mut &bytes[..], None, what)
    }

    /// Every stored digest.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(|n| format!("sha256:{n}")))
            .filter(|d| image::validate_digest(d).is_ok())
            .collect()
    }
}

fn tempfile_in(dir: &Path) -> io::Result<(PathBuf, File)> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    let p = dir.join(format!("blob-{}", hex(&b)));
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)?;
    Ok((p, f))
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
