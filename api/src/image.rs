//! Images (`bramble.io/v1`, cluster-scoped): what `bramble image import` stored on the master,
//! and the OCI image-spec documents (index, manifest, config) the master and agents read.
//!
//! An Image object records one reference (`web:1.2`) and the digest of its manifest or index;
//! the blobs themselves live in the master's content-addressed blob store. Image objects are
//! written only by the import and removal endpoints, never by `apply`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::meta::ObjectMeta;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The OCI annotation that names a manifest in an image layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// An imported image (`bramble.io/v1`, kind `Image`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Image {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ImageSpec,
}

/// What an image reference points at.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ImageSpec {
    /// The reference as pods name it, normalized: `web:1.2`, `team/app:latest`.
    pub reference: String,
    /// The digest of the manifest or index the reference points at.
    pub digest: String,
    pub media_type: String,
    /// The platforms it runs on: one for a manifest, each manifest's for an index.
    pub platforms: Vec<ImagePlatform>,
    /// Bytes of every blob it references (manifests, configs, layers), shared ones included.
    pub size: u64,
}

/// One platform of an image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ImagePlatform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// The platform's manifest.
    pub digest: String,
}

impl ImagePlatform {
    /// `linux/arm64`, `linux/arm/v7`.
    pub fn display(&self) -> String {
        platform_string(&self.os, &self.architecture, &self.variant)
    }
}

/// `os/arch[/variant]`.
pub fn platform_string(os: &str, arch: &str, variant: &str) -> String {
    if variant.is_empty() {
        format!("{os}/{arch}")
    } else {
        format!("{os}/{arch}/{variant}")
    }
}

/// A digest that is not `sha256:<64 lowercase hex>`, the only form Bramble stores.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("digest {0:?} is not sha256:<64 lowercase hex digits>")]
pub struct DigestError(pub String);

/// Why an image reference does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("image reference {reference:?} has no repository")]
    NoRepository { reference: String },
    #[error(
        "image reference {reference:?}: repository {repository:?} must be lowercase letters, \
         digits, '.', '_', '-' and ':' (a registry port) separated by '/', each part starting and \
         ending with a letter or digit"
    )]
    Repository {
        reference: String,
        repository: String,
    },
    #[error(
        "image reference {reference:?}: tag {tag:?} must be 1-128 letters, digits, '.', '_' \
         or '-', not starting with '.' or '-'"
    )]
    Tag { reference: String, tag: String },
    /// The part after '@'.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A parsed image reference: `[registry/]repository[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub tag: String,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference; the tag defaults to `latest`.
    pub fn parse(text: &str) -> Result<ImageRef, ImageRefError> {
        let t = text.trim();
        let (rest, digest) = match t.split_once('@') {
            Some((r, d)) => {
                validate_digest(d)?;
                (r, Some(d.to_string()))
            }
            None => (t, None),
        };
        let (repository, tag) = match rest.rsplit_once(':') {
            // A colon before the last slash is a registry port, not a tag.
            Some((r, tag)) if !tag.contains('/') => (r, tag),
            _ => (rest, "latest"),
        };
        // Docker Hub's long names are the familiar short ones, as `docker` shows them:
        // `docker.io/library/nginx` is `nginx`, `docker.io/team/app` is `team/app`.
        let repository = [
            "docker.io/library/",
            "index.docker.io/library/",
            "docker.io/",
            "index.docker.io/",
        ]
        .iter()
        .find_map(|p| repository.strip_prefix(p))
        .unwrap_or(repository);
        if repository.is_empty() {
            return Err(ImageRefError::NoRepository {
                reference: text.to_string(),
            });
        }
        if repository.len() > 255
            || !repository.split('/').all(|part| {
                let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
                part.chars().all(repo_char)
                    && alnum(part.chars().next())
                    && alnum(part.chars().last())
            })
        {
            return Err(ImageRefError::Repository {
                reference: text.to_string(),
                repository: repository.to_string(),
            });
        }
        if tag.is_empty()
            || tag.len() > 128
            || tag.starts_with(['.', '-'])
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(ImageRefError::Tag {
                reference: text.to_string(),
                tag: tag.to_string(),
            });
        }
        Ok(ImageRef {
            repository: repository.to_string(),
            tag: tag.to_string(),
            digest,
        })
    }

    /// `repository:tag`, the form Image objects record.
    pub fn tagged(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// The name of the Image object for this reference: readable and unique (a hash of the
    /// reference keeps `a.b:c` and `a:b.c` apart).
    pub fn object_name(&self) -> String {
        object_name(&self.tagged())
    }
}

fn repo_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || "._-:".contains(c)
}

/// The Image object name of a normalized `repository:tag`.
pub fn object_name(tagged: &str) -> String {
    let mut readable: String = tagged
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    readable.truncate(40);
    let readable = readable.trim_matches('-');
    format!("{readable}-{:08x}", fnv1a(tagged.as_bytes()))
}

fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ u32::from(x)).wrapping_mul(0x0100_0193)
    })
}

/// Checks `sha256:<64 lowercase hex>`, the only algorithm Bramble stores.
pub fn validate_digest(d: &str) -> Result<(), DigestError> {
    match d.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) =>
        {
            Ok(())
        }
        _ => Err(DigestError(d.to_string())),
    }
}

/// An OCI content descriptor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The platform field of an index entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

/// An OCI image index (or a Docker manifest list, which has the same shape).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Index {
    pub schema_version: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// An OCI image manifest (or a Docker v2 schema 2 manifest).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an OCI image config that Bramble uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ImageConfigFile {
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub variant: String,
    pub config: ImageConfig,
    pub rootfs: RootFs,
}

/// The container defaults of an image config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct ImageConfig {
    #[serde(rename = "User")]
    pub user: String,
    #[serde(rename = "Env")]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir")]
    pub working_dir: String,
}

/// The layers' uncompressed digests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// Whether a media type is an index (OCI or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// Whether a media type is an image manifest (OCI or Docker).
pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

/// How well an image platform fits a node: None if it cannot run there, else a rank (higher is
/// better). ARM variants are backward compatible (a v7 board runs v6 code, not the reverse);
/// arm64 treats an empty variant as v8.
pub fn platform_fit(
    node_os: &str,
    node_arch: &str,
    node_variant: &str,
    image: &ImagePlatform,
) -> Option<u8> {
    if image.os != node_os || image.architecture != node_arch {
        return None;
    }
    let norm = |v: &str| -> u8 {
        let v = if v.is_empty() && node_arch == "arm64" {
            "v8"
        } else {
            v
        };
        v.strip_prefix('v')
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (n, i) = (norm(node_variant), norm(&image.variant));
    match (n, i) {
        _ if n == i => Some(3),
        (_, 0) => Some(2),
        (0, _) => Some(1),
        _ if i < n => Some(2),
        _ => None,
    }
}

/// The platform of `platforms` that fits a node best, if any.
pub fn select_platform<'a>(
    platforms: &'a [ImagePlatform],
    node_os: &str,
    node_arch: &str,
    node_variant: &str,
) -> Option<&'a ImagePlatform> {
    platforms
        .iter()
        .filter_map(|p| platform_fit(node_os, node_arch, node_variant, p).map(|r| (r, p)))
        .max_by_key(|(r, _)| *r)
        .map(|(_, p)| p)
}

/// The message of a pod whose image has no platform for its node, as the issue words it:
/// `image "web:1.2" has no linux/arm64 variant (has: linux/amd64)`.
pub fn no_platform_message(
    image: &str,
    node_os: &str,
    node_arch: &str,
    node_variant: &str,
    platforms: &[ImagePlatform],
) -> String {
    let has: Vec<String> = platforms.iter().map(ImagePlatform::display).collect();
    let variant = if node_arch == "arm64" {
        ""
    } else {
        node_variant
    };
    format!(
        "image {image:?} has no {} variant (has: {})",
        platform_string(node_os, node_arch, variant),
        if has.is_empty() {
            "none".to_string()
        } else {
            has.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(arch: &str, variant: &str) -> ImagePlatform {
        ImagePlatform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.into(),
            digest: format!("{arch}{variant}"),
        }
    }

    #[test]
    fn references_parse_with_default_tag_and_registry_ports() {
        let r = ImageRef::parse("web").unwrap();
        assert_eq!(r.tagged(), "web:latest");
        assert_eq!(
            ImageRef::parse("docker.io/library/nginx:1.27")
                .unwrap()
                .tagged(),
            "nginx:1.27"
        );
        assert_eq!(
            ImageRef::parse("docker.io/team/app").unwrap().tagged(),
            "team/app:latest"
        );
        let r = ImageRef::parse("registry:5000/team/app:2").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.tag.as_str()),
            ("registry:5000/team/app", "2")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("web:1.2@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        for bad in [
            "",
            "Web:1",
            "web:",
            "web:-x",
            "a//b",
            "web@sha256:zz",
            "../x:1",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn object_names_are_valid_and_distinct() {
        let a = object_name("a.b:c");
        let b = object_name("a:b.c");
        assert_ne!(a, b);
        for n in [a, b, object_name(&format!("{}:latest", "x".repeat(200)))] {
            crate::names::dns1123_subdomain(&n).unwrap();
        }
    }

    #[test]
    fn platform_selection_prefers_exact_and_respects_arm_compatibility() {
        let ps = [
            p("amd64", ""),
            p("arm64", "v8"),
            p("arm", "v6"),
            p("arm", "v7"),
        ];
        let pick = |a: &str, v: &str| select_platform(&ps, "linux", a, v).map(|p| p.digest.clone());
        assert_eq!(pick("arm64", "").as_deref(), Some("arm64v8"));
        assert_eq!(pick("arm", "v7").as_deref(), Some("armv7"));
        assert_eq!(pick("arm", "v6").as_deref(), Some("armv6"));
        assert_eq!(pick("amd64", "").as_deref(), Some("amd64"));
        assert_eq!(pick("riscv64", ""), None);
        // A v6 board cannot run v7 code.
        assert_eq!(
            select_platform(&[p("arm", "v7")], "linux", "arm", "v6"),
            None
        );
        assert_eq!(
            no_platform_message("web:1.2", "linux", "arm64", "v8", &[p("amd64", "")]),
            r#"image "web:1.2" has no linux/arm64 variant (has: linux/amd64)"#
        );
    }
}
