//! Where a pull's documents and blobs come from: the narrow [`BlobSource`] seam between the
//! cache's pull logic and the master's registry endpoints, so that the logic is tested with
//! an in-memory source.

use std::io::Read;

use bramble_api::image::ImageSpec;

/// What the master's registry endpoints give a node: the Image a tag names, and blobs by
/// digest (resumable). Calls block.
pub trait BlobSource: Send + Sync {
    /// The Image that `reference` (`repo:tag`, normalized) names.
    fn resolve(&self, reference: &str) -> Result<ImageSpec, SourceError>;
    /// The content of blob `digest`, from byte `offset` if the source can resume there
    /// (`offset` is 0 for a new download). The content is not verified: the caller checks
    /// its digest.
    fn blob(&self, digest: &str, offset: u64) -> Result<BlobBody, SourceError>;
}

/// A blob's content as a source sends it.
pub enum BlobBody {
    /// The whole blob, from its first byte (a fresh download, or a source that does not
    /// resume).
    Whole(Box<dyn Read>),
    /// The rest of the blob, from the offset asked for.
    Rest(Box<dyn Read>),
}

/// Why a source could not answer. The message names the source and the object, and is
/// shown as the pull's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Unreachable, refused, or an unreadable answer.
    #[error("{0}")]
    Failed(String),
    /// The blob is shorter than the offset asked for: what was downloaded so far is not a
    /// prefix of it and is discarded.
    #[error("{0}")]
    OffsetPastEnd(String),
}
