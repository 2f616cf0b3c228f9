//! Choosing this node's platform: the manifest of a multi-platform index that fits the node
//! best, and the check that a manifest's config names a platform the node runs.

use bramble_api::image::{self, ImageConfigFile, ImagePlatform, Index};

use crate::images::ImageError;

/// The platform this node runs (`linux`, `arm64`, `v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodePlatform {
    pub os: String,
    pub arch: String,
    pub variant: String,
}

impl NodePlatform {
    /// The manifest of `index` that fits this node best: its digest and the size the index
    /// declares for it. `known`, the platforms the master lists for `image`, are named in
    /// the error when none fits (else the index's own).
    pub fn pick(
        &self,
        image: &str,
        index: &Index,
        known: Option<&[ImagePlatform]>,
    ) -> Result<(String, Option<u64>), ImageError> {
        let listed: Vec<ImagePlatform> = index
            .manifests
            .iter()
            .filter_map(|d| {
                d.platform.as_ref().map(|p| ImagePlatform {
                    os: p.os.clone(),
                    architecture: p.architecture.clone(),
                    variant: p.variant.clone(),
                    digest: d.digest.clone(),
                })
            })
            .collect();
        let chosen = image::select_platform(&listed, &self.os, &self.arch, &self.variant)
            .ok_or_else(|| self.none_fits(image, known.unwrap_or(&listed)))?;
        let size = index
            .manifests
            .iter()
            .find(|d| d.digest == chosen.digest)
            .map(|d| d.size);
        Ok((chosen.digest.clone(), size))
    }

    /// Refuses the manifest `manifest_digest` of `image` if its config names a platform this
    /// node cannot run.
    pub fn check(
        &self,
        image: &str,
        config: &ImageConfigFile,
        manifest_digest: &str,
    ) -> Result<(), ImageError> {
        let mine = ImagePlatform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
            digest: manifest_digest.to_string(),
        };
        if image::platform_fit(&self.os, &self.arch, &self.variant, &mine).is_none() {
            return Err(self.none_fits(image, std::slice::from_ref(&mine)));
        }
        Ok(())
    }

    fn none_fits(&self, image: &str, has: &[ImagePlatform]) -> ImageError {
        ImageError::NoPlatform(image::no_platform_message(
            image,
            &self.os,
            &self.arch,
            &self.variant,
            has,
        ))
    }
}

#[cfg(test)]
mod tests {
    use bramble_api::image::{Descriptor, Platform};

    use super::*;

    fn node(arch: &str, variant: &str) -> NodePlatform {
        NodePlatform {
            os: "linux".into(),
            arch: arch.into(),
            variant: variant.into(),
        }
    }

    fn index(platforms: &[(&str, &str, u64)]) -> Index {
        Index {
            manifests: platforms
                .iter()
                .map(|(arch, variant, size)| Descriptor {
                    media_type: image::MEDIA_OCI_MANIFEST.into(),
                    digest: format!("sha256:{arch}{variant}"),
                    size: *size,
                    platform: Some(Platform {
                        os: "linux".into(),
                        architecture: (*arch).into(),
                        variant: (*variant).into(),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn config(arch: &str, variant: &str) -> ImageConfigFile {
        ImageConfigFile {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_best_fitting_manifest_of_an_index_is_picked_with_its_size() {
        let idx = index(&[("amd64", "", 10), ("arm", "v6", 20), ("arm", "v7", 30)]);
        let (d, size) = node("arm", "v7").pick("web:1", &idx, None).unwrap();
        assert!(d.starts_with("sha256:armv7"), "{d}");
        assert_eq!(size, Some(30));
        // A v6 board runs v6 code only; an amd64 one the amd64 manifest.
        let (d, _) = node("arm", "v6").pick("web:1", &idx, None).unwrap();
        assert!(d.starts_with("sha256:armv6"), "{d}");
        let (d, _) = node("amd64", "").pick("web:1", &idx, None).unwrap();
        assert!(d.starts_with("sha256:amd64"), "{d}");
    }

    #[test]
    fn no_fitting_manifest_names_what_the_image_has() {
        let idx = index(&[("amd64", "", 10)]);
        assert_eq!(
            node("arm64", "").pick("web:1", &idx, None),
            Err(ImageError::NoPlatform(
                r#"image "web:1" has no linux/arm64 variant (has: linux/amd64)"#.into()
            ))
        );
        // The master's list of the image's platforms wins over the index's.
        let known = [ImagePlatform {
            os: "linux".into(),
            architecture: "riscv64".into(),
            ..Default::default()
        }];
        assert_eq!(
            node("arm64", "").pick("web:1", &idx, Some(&known)),
            Err(ImageError::NoPlatform(
                r#"image "web:1" has no linux/arm64 variant (has: linux/riscv64)"#.into()
            ))
        );
    }

    #[test]
    fn a_config_for_another_platform_is_refused() {
        assert_eq!(
            node("arm64", "").check("web:1", &config("arm64", "v8"), "sha256:m"),
            Ok(())
        );
        assert_eq!(
            node("arm64", "").check("web:1", &config("amd64", ""), "sha256:m"),
            Err(ImageError::NoPlatform(
                r#"image "web:1" has no linux/arm64 variant (has: linux/amd64)"#.into()
            ))
        );
        // A v7 board runs v6 code, not the reverse.
        assert!(
            node("arm", "v7")
                .check("x", &config("arm", "v6"), "d")
                .is_ok()
        );
        assert!(
            node("arm", "v6")
                .check("x", &config("arm", "v7"), "d")
                .is_err()
        );
    }
}
