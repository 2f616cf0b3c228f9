//! The master as the image source of an offline site: `bramble image import` streams an OCI
//! archive or a `docker save` tarball into a content-addressed blob store in the data dir
//! (every blob verified by its digest), and the store records each reference as an Image
//! object. Agents fetch manifests and blobs by digest.
//!
//! Blobs live at `<data>/blobs/sha256/<hex>`, written to `<data>/blobs/tmp/` first, synced,
//! then renamed: a reader never sees a partial blob and a crash leaves only temporary files,
//! which the next start removes. Blobs no Image references are collected after a removal or a
//! failed import.
//!
//! - `blobs`: the content-addressed blob store.
//! - `import`: reading an archive (an OCI layout or a `docker save` tarball) into it.
//! - `manifest` and `describe`: checking an image's graph and describing it.
//! - `gc`: what Images and Pods still reference, and collecting the rest.

mod blobs;
mod describe;
#[cfg(test)]
mod fixtures;
mod gc;
mod import;
mod manifest;

use std::io;

pub use blobs::{Blobs, hex};
pub use describe::describe;
pub use gc::{referenced, users};
pub use import::{Imported, image_object, import_archive};

/// The largest JSON document (index, manifest, config, manifest.json) an import reads into
/// memory; layers are streamed.
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// Why an import or a blob operation failed. Messages name the archive entry or digest.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn invalid(m: impl Into<String>) -> ImageError {
    ImageError::Invalid(m.into())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}
