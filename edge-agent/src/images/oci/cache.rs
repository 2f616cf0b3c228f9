//! Keeping the cache within its limits: what it holds, and removing the images no container
//! uses (least recently used first) and the layers and blobs no remaining image needs.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::PathBuf;

use bramble_api::image::ImageRef;

use super::{LocalRef, OciStore, cache_key, hex_of};

/// Limits of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Collect when the filesystem holding the cache is fuller than this (percent).
    pub high_percent: u8,
    /// ... down to this.
    pub low_percent: u8,
    /// Collect when the cache itself holds more than this many bytes.
    pub max_bytes: Option<u64>,
}

impl Default for CacheLimits {
    fn default() -> Self {
        // The kubelet's image GC thresholds.
        CacheLimits {
            high_percent: 85,
            low_percent: 80,
            max_bytes: None,
        }
    }
}

impl OciStore {
    /// Bytes the cache holds: unpacked layers (as measured when unpacked) and blobs.
    fn usage(&self) -> u64 {
        let mut total = 0;
        for d in ["layers", "blobs/sha256"] {
            if let Ok(rd) = fs::read_dir(self.root.join(d)) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "size") {
                        total += fs::read_to_string(&p)
                            .ok()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .unwrap_or(0);
                    } else if p.is_file() {
                        total += e.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                }
            }
        }
        total
    }

    fn disk_percent(&self) -> u8 {
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(s) if s.blocks() > 0 => {
                let used = s.blocks().saturating_sub(s.blocks_available());
                ((used as u128 * 100) / s.blocks() as u128) as u8
            }
            _ => 0,
        }
    }

    fn over(&self, usage: u64, low: bool) -> bool {
        let pct = if low {
            self.limits.low_percent
        } else {
            self.limits.high_percent
        };
        self.limits.max_bytes.is_some_and(|m| usage > m) || self.disk_percent() > pct
    }

    fn all_refs(&self) -> Vec<(PathBuf, LocalRef)> {
        let Ok(rd) = fs::read_dir(self.root.join("refs")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let p = e.path();
                let r: LocalRef = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
                Some((p, r))
            })
            .collect()
    }

    /// Removes unpacked layers no remaining reference and no mounted overlay uses, and blobs
    /// no remaining reference names.
    fn sweep(&self, refs: &[(PathBuf, LocalRef)]) -> u64 {
        let mounted = mounted_lowers();
        let keep: HashSet<String> = refs
            .iter()
            .flat_map(|(_, r)| r.chain.iter().map(|c| hex_of(c).to_string()))
            .collect();
        let keep_blobs: HashSet<String> = refs
            .iter()
            .flat_map(|(_, r)| {
                [
                    r.digest.clone(),
                    r.manifest.clone(),
                    r.config_digest.clone(),
                ]
                .into_iter()
                .map(|d| hex_of(&d).to_string())
            })
            .collect();
        let mut freed = 0;
        if let Ok(rd) = fs::read_dir(self.root.join("layers")) {
            for e in rd.flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) || mounted.contains(&p) {
                    continue;
                }
                let size_file = p.with_extension("size");
                freed += fs::read_to_string(&size_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if fs::remove_dir_all(&p).is_ok() {
                    let _ = fs::remove_file(&size_file);
                }
            }
        }
        // Keep the documents of remaining refs (an `Always` pull checks them again).
        if let Ok(rd) = fs::read_dir(self.root.join("blobs/sha256")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep_blobs.contains(&name) {
                    freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        freed
    }

    /// Frees disk if the cache is over its limits: removes images none of `in_use` names,
    /// least recently used first, until it is under the low mark. Returns the bytes freed.
    pub(super) fn collect_unused(&self, in_use: &[String]) -> u64 {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.over(self.usage(), false) {
            return 0;
        }
        let used: BTreeSet<String> = in_use
            .iter()
            .filter_map(|i| ImageRef::parse(i).ok().map(|r| cache_key(&r)))
            .collect();
        let mut refs = self.all_refs();
        refs.sort_by_key(|(_, r)| r.last_used_ms);
        let mut freed = self.sweep(&refs);
        let mut i = 0;
        while i < refs.len() && self.over(self.usage(), true) {
            if used.contains(&refs[i].1.reference) {
                i += 1;
                continue;
            }
            let (path, r) = refs.remove(i);
            let _ = fs::remove_file(&path);
            tracing::info!(image = r.reference, "image removed from the node's cache");
            freed += self.sweep(&refs);
        }
        if freed > 0 {
            tracing::info!(bytes = freed, usage = self.usage(), "image cache collected");
        }
        freed
    }
}

/// Every overlay lower directory mounted on this host (containers using layers).
fn mounted_lowers() -> HashSet<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = HashSet::new();
    for line in text.lines() {
        for opt in line.split([' ', ',']) {
            if let Some(v) = opt.strip_prefix("lowerdir=") {
                out.extend(v.split(':').map(PathBuf::from));
            }
        }
    }
    out
}
