//! Where a container's root filesystem comes from.
//!
//! Until OCI image distribution lands, an image name resolves to an unpacked root filesystem
//! in the agent's images directory: `busybox:1.36` is `<images>/busybox_1.36/rootfs`, or
//! `<images>/busybox/rootfs` for any tag. The images issue replaces this implementation
//! behind the same trait.

use std::path::{Path, PathBuf};

/// Why an image could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image {image:?} is not present on this node (looked in {looked})")]
    NotPresent { image: String, looked: String },
    #[error("image {0:?} is not a valid image reference")]
    Invalid(String),
}

/// Resolves image references to root filesystems.
pub trait ImageStore: Send + Sync + 'static {
    /// The root filesystem directory of `image`.
    fn rootfs(&self, image: &str) -> Result<PathBuf, ImageError>;
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

impl ImageStore for RootfsDirs {
    fn rootfs(&self, image: &str) -> Result<PathBuf, ImageError> {
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
