//! Where a container's root filesystem comes from.
//!
//! [`oci::OciStore`] pulls OCI images from the master (the image source of an offline site),
//! verifies every blob by digest, picks the node's platform from an index, and unpacks each
//! layer once into its own directory; a container's rootfs is an overlay of those layers.
//! [`RootfsDirs`] keeps side-loaded root filesystems working: `busybox:1.36` is
//! `<images>/busybox_1.36/rootfs`, or `<images>/busybox/rootfs` for any tag; a side-loaded
//! rootfs wins over a pull.

pub mod oci;
pub mod unpack;

use std::path::{Path, PathBuf};

use bramble_api::image::ImageConfig;

/// Why an image could not be made ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image {image:?} is not present on this node (looked in {looked})")]
    NotPresent { image: String, looked: String },
    #[error("image {0:?} is not a valid image reference")]
    Invalid(String),
    /// Fetching or unpacking failed; retried with back-off.
    #[error("pulling image {image:?}: {message}")]
    Pull { image: String, message: String },
    /// The image has no variant for this node's platform.
    #[error("{0}")]
    NoPlatform(String),
}

/// When to ask the master for an image (`imagePullPolicy`; the master is the registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the tag at the master on every container start; if the master is unreachable,
    /// run what the node has (an offline site keeps working).
    Always,
    /// Use the node's copy if it has one.
    IfNotPresent,
    /// Only the node's copy.
    Never,
}

impl PullPolicy {
    /// Kubernetes' defaulting: `Always` for `:latest` or no tag, else `IfNotPresent`.
    pub fn of(policy: &str, image: &str) -> PullPolicy {
        match policy {
            "Always" => PullPolicy::Always,
            "Never" => PullPolicy::Never,
            "IfNotPresent" => PullPolicy::IfNotPresent,
            _ => match bramble_api::image::ImageRef::parse(image) {
                Ok(r) if r.digest.is_none() && r.tag == "latest" => PullPolicy::Always,
                _ => PullPolicy::IfNotPresent,
            },
        }
    }
}

/// A ready image: its layers (lowest first) and its container defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreparedImage {
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
}

/// Makes images ready for containers. Calls may block (downloads, unpacking).
pub trait ImageStore: Send + Sync + 'static {
    /// The layers and config of `image`, pulling it first if the policy says so.
    fn prepare(&self, image: &str, policy: PullPolicy) -> Result<PreparedImage, ImageError>;
    /// Frees disk by removing images that none of `in_use` names and no container uses, if
    /// the cache is over its limits. Returns the bytes freed.
    fn collect(&self, _in_use: &[String]) -> u64 {
        0
    }
}

/// Unpacked root filesystems in a directory.
pub struct RootfsDirs {
    dir: PathBuf,
}

impl RootfsDirs {
    /// Images under `dir`.
    pub fn new(dir: &Path) -> Self {
        RootfsDirs {
            dir: dir.to_path_buf(),
        }
    }
}

/// Splits `registry/name:tag@digest` into a file-name-safe name and an optional tag.
fn parse(image: &str) -> Result<(String, Option<String>), ImageError> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let (name, tag) = match no_digest.rsplit_once(':') {
        // A colon before the last slash is a registry port, not a tag.
        Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
        _ => (no_digest, None),
    };
    let safe: String = name
        .chars()
        .map(|c| if c == '/' || c == ':' { '_' } else { c })
        .collect();
    if safe.is_empty()
        || safe.starts_with('.')
        || !safe
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(ImageError::Invalid(image.to_string()));
    }
    Ok((safe, tag))
}

impl RootfsDirs {
    /// The side-loaded root filesystem of `image`.
    pub fn rootfs(&self, image: &str) -> Result<PathBuf, ImageError> {
        let (name, tag) = parse(image)?;
        let mut candidates = Vec::new();
        if let Some(t) = &tag {
            candidates.push(self.dir.join(format!("{name}_{t}")).join("rootfs"));
        }
        candidates.push(self.dir.join(&name).join("rootfs"));
        for c in &candidates {
            if c.is_dir() {
                return Ok(c.clone());
            }
        }
        let looked = candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(ImageError::NotPresent {
            image: image.to_string(),
            looked,
        })
    }
}

impl ImageStore for RootfsDirs {
    fn prepare(&self, image: &str, _policy: PullPolicy) -> Result<PreparedImage, ImageError> {
        Ok(PreparedImage {
            layers: vec![self.rootfs(image)?],
            config: ImageConfig::default(),
        })
    }
}

/// Bytes under a directory tree, not following symlinks: the files' lengths, or with
/// `allocated` the blocks they take on disk (as `du` counts them, directories included).
pub(crate) fn tree_size(dir: &std::path::Path, allocated: bool) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if allocated {
                total = total.saturating_add(m.blocks().saturating_mul(512));
            } else if !m.is_dir() {
                total = total.saturating_add(m.len());
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_tagged_then_untagged_and_refuses_traversal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("busybox/rootfs")).unwrap();
        std::fs::create_dir_all(dir.path().join("busybox_1.36/rootfs")).unwrap();
        let s = RootfsDirs::new(dir.path());
        assert_eq!(
            s.rootfs("busybox:1.36").unwrap(),
            dir.path().join("busybox_1.36/rootfs")
        );
        assert_eq!(
            s.rootfs("busybox:latest").unwrap(),
            dir.path().join("busybox/rootfs")
        );
        assert_eq!(
            s.rootfs("busybox").unwrap(),
            dir.path().join("busybox/rootfs")
        );
        assert!(matches!(
            s.rootfs("nginx:1.25"),
            Err(ImageError::NotPresent { .. })
        ));
        assert!(matches!(s.rootfs("../../etc"), Err(ImageError::Invalid(_))));
        assert_eq!(
            parse("registry:5000/team/app:2").unwrap(),
            ("registry_5000_team_app".into(), Some("2".into()))
        );
    }
}
