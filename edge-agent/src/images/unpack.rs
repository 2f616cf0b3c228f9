//! Unpacking one image layer (a tar, plain or gzip) into its own directory, safely.
//!
//! Every layer becomes one overlayfs lower directory, so OCI whiteouts are turned into
//! overlayfs ones: `.wh.NAME` becomes a 0/0 character device `NAME`, `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory. Nothing is ever written outside the layer's
//! directory: absolute paths, `..` components, oversized names, entries whose path passes
//! through a symlink (planted earlier in this layer, or present in a lower layer of the same
//! image), and hard links whose target is outside the layer are refused with an error naming
//! the entry. Entries are created without following symlinks.
//!
//! A layer is data, not a way into the board: it never creates a character or block device
//! (a `/dev/sda` in a layer would be a door to the board's disk for any container that can
//! open it), its files lose their setuid and setgid bits unless the board allows them
//! (`--allow-setid-layers`), and what it decompresses to is bounded ([`Policy`]).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The longest entry path accepted (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Why a layer was refused. The layer's directory is discarded by the caller.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {entry:?}: {reason}")]
    Hostile { entry: String, reason: String },
    #[error("the layer is not a valid tar{}: {message}", if *.gzip { " (gzip)" } else { "" })]
    Corrupt { gzip: bool, message: String },
    #[error("the layer's content has digest {actual}, but the image config says {expected}")]
    DiffId { expected: String, actual: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn hostile(entry: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Hostile {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        what: p.display().to_string(),
        source,
    }
}

/// What unpacking did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    pub whiteouts: u64,
    /// Character and block devices in the layer, never created.
    pub devices_skipped: u64,
    /// Files whose setuid or setgid bit was cleared.
    pub setid_cleared: u64,
}

/// The board's rules for layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The most bytes a layer may decompress to (its tar stream, headers included).
    pub max_bytes: u64,
    /// Keep setuid and setgid bits on files.
    pub keep_setid: bool,
}

/// The absolute bound on a layer's decompressed size unless the board sets one.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 8 << 30;
/// A layer may decompress to this many times its compressed size (gzip of real files
/// rarely passes 20x; a gzip bomb reaches 1000x)...
pub const MAX_RATIO: u64 = 100;
/// ... or to this much, whichever is larger (small layers of zeros are legitimate).
pub const RATIO_FLOOR_BYTES: u64 = 256 << 20;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_bytes: DEFAULT_MAX_LAYER_BYTES,
            keep_setid: false,
        }
    }
}

impl Policy {
    /// The policy for one layer of `compressed` bytes: the board's bound, and at most
    /// [`MAX_RATIO`] times its size (at least [`RATIO_FLOOR_BYTES`]).
    pub fn for_layer(self, compressed: u64) -> Policy {
        let relative = compressed.saturating_mul(MAX_RATIO).max(RATIO_FLOOR_BYTES);
        Policy {
            max_bytes: self.max_bytes.min(relative),
            ..self
        }
    }
}

/// Reads at most `limit` bytes, then fails (and says so in `hit`).
struct Bounded<R> {
    inner: R,
    left: u64,
    hit: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.hit.set(true);
            return Err(io::Error::other("the layer decompresses beyond its bound"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads through to a SHA-256 of everything read.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Counts what the tar reader consumed and whether the stream has ended, so that a layer
/// that stops right after its last entry's data can be told from a truncated one.
struct Tracking<R> {
    inner: R,
    seen: std::rc::Rc<std::cell::Cell<(u64, bool)>>,
}

impl<R: Read> Read for Tracking<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let (total, _) = self.seen.get();
        self.seen.set((total + n as u64, n == 0 && !buf.is_empty()));
        Ok(n)
    }
}

/// Unpacks a layer from `blob` into `dest` (an empty directory). `gzip` says whether the blob
/// is compressed (or sniff it with [`is_gzip`]); `lowers` are the image's lower layers, top
/// first; `diff_id`, if given, is checked against the uncompressed content.
pub fn unpack_layer(
    blob: &mut dyn Read,
    gzip: bool,
    dest: &Path,
    lowers: &[PathBuf],
    diff_id: Option<&str>,
) -> Result<Stats, UnpackError> {
    unpack_layer_with(blob, gzip, dest, lowers, diff_id, Policy::default())
}

/// [`unpack_layer`] under the board's `policy`.
pub fn unpack_layer_with(
    blob: &mut dyn Read,
    gzip: bool,
    dest: &Path,
    lowers: &[PathBuf],
    diff_id: Option<&str>,
    policy: Policy,
) -> Result<Stats, UnpackError> {
    let bomb = std::rc::Rc::new(std::cell::Cell::new(false));
    let too_large = || UnpackError::Hostile {
        entry: String::new(),
        reason: format!(
            "the layer decompresses to more than {} bytes (the bound for it on this board)",
            policy.max_bytes
        ),
    };
    let corrupt = |e: io::Error| {
        if bomb.get() {
            return too_large();
        }
        UnpackError::Corrupt {
            gzip,
            message: e.to_string(),
        }
    };
    let plain: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let bounded = Bounded {
        inner: plain,
        left: policy.max_bytes,
        hit: bomb.clone(),
    };
    let mut hashing = Hashing {
        inner: bounded,
        hash: Sha256::new(),
    };
    let mut stats = Stats::default();
    {
        let seen = std::rc::Rc::new(std::cell::Cell::new((0u64, false)));
        let tracking = Tracking {
            inner: &mut hashing,
            seen: seen.clone(),
        };
        let mut archive = tar::Archive::new(tracking);
        // Where the last entry's data ended.
        let mut last_end = 0u64;
        let mut u = Unpacker {
            dest,
            lowers,
            checked: HashSet::new(),
            stats: &mut stats,
            keep_setid: policy.keep_setid,
        };
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = match entry {
                Ok(e) => e,
                // Some writers (umoci 0.4.7, as Debian 12 ships it) end a layer right after
                // the last entry's data, without padding or the end-of-archive blocks; Go's
                // archive/tar, which Docker and containerd use, accepts that, and so does
                // Bramble. Anything cut shorter is an error.
                Err(_) if seen.get().1 && seen.get().0 < last_end + 512 => break,
                Err(e) => return Err(corrupt(e)),
            };
            last_end = entry.raw_file_position() + entry.header().entry_size().unwrap_or(0);
            u.entry(&mut entry).map_err(|e| match e {
                _ if bomb.get() => too_large(),
                UnpackError::Io { what, source }
                    if source.kind() == io::ErrorKind::UnexpectedEof =>
                {
                    UnpackError::Corrupt {
                        gzip,
                        message: format!("{what}: truncated"),
                    }
                }
                e => e,
            })?;
        }
    }
    // The tar ends with zero blocks; read the rest so the digest covers the whole stream.
    io::copy(&mut hashing, &mut io::sink()).map_err(corrupt)?;
    if let Some(expected) = diff_id {
        let actual = format!("sha256:{}", hex(&hashing.hash.finalize()));
        if actual != expected {
            return Err(UnpackError::DiffId {
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(stats)
}

/// Whether a blob starts with the gzip magic.
pub fn is_gzip(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 2];
    let n = File::open(path)?.read(&mut magic)?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// Lowercase hex of bytes.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Unpacker<'a> {
    dest: &'a Path,
    lowers: &'a [PathBuf],
    /// Relative directories already known to be real directories in this layer.
    checked: HashSet<PathBuf>,
    stats: &'a mut Stats,
    keep_setid: bool,
}

/// The entry's path relative to the layer root, refusing anything that could leave it.
fn clean(raw: &[u8], entry: &str) -> Result<PathBuf, UnpackError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(hostile(
            &entry.chars().take(64).collect::<String>(),
            format!("path is {} bytes, more than {MAX_PATH_BYTES}", raw.len()),
        ));
    }
    if raw.contains(&0) {
        return Err(hostile(entry, "path contains a NUL byte"));
    }
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    let mut absolute = false;
    for c in p.components() {
        match c {
            Component::Normal(n) => {
                if absolute {
                    return Err(hostile(entry, "absolute path"));
                }
                out.push(n);
            }
            Component::CurDir => {}
            // "/" alone names the layer root (umoci writes it); anything below it is refused.
            Component::RootDir | Component::Prefix(_) => absolute = true,
            Component::ParentDir => {
                return Err(hostile(entry, "path contains '..'"));
            }
        }
    }
    Ok(out)
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let rel = clean(&raw, &shown)?;
        self.stats.entries += 1;
        let kind = e.header().entry_type();
        if rel.as_os_str().is_empty() {
            // The layer root itself ("./"): nothing to create.
            return Ok(());
        }
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        self.ensure_parents(&parent, &shown)?;
        if name == OPAQUE {
            let dir = self.dest.join(&parent);
            set_xattr(&dir, "trusted.overlay.opaque", b"y").map_err(io_at(&dir))?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(hostile(&shown, "malformed whiteout"));
            }
            let target = self.dest.join(&parent).join(hidden);
            remove_any(&target)?;
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .map_err(|e| UnpackError::Io {
                what: format!("whiteout {}", target.display()),
                source: e.into(),
            })?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        let target = self.dest.join(&rel);
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let uid = h.uid().unwrap_or(0) as u32;
        let gid = h.gid().unwrap_or(0) as u32;
        let mtime = h.mtime().unwrap_or(0);
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target)?;
                        fs::create_dir(&target).map_err(io_at(&target))?;
                    }
                    Err(_) => fs::create_dir(&target).map_err(io_at(&target))?,
                }
                self.checked.insert(rel.clone());
                chown(&target, uid, gid)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_at(&target))?;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                if kind == T::GNUSparse {
                    return Err(hostile(&shown, "sparse files are not supported"));
                }
                remove_any(&target)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_at(&target))?;
                let n = io::copy(e, &mut f).map_err(io_at(&target))?;
                let declared = e.header().size().unwrap_or(0);
                if n != declared {
                    return Err(UnpackError::Corrupt {
                        gzip: false,
                        message: format!(
                            "entry {shown:?} is truncated: its header says {declared} bytes, the layer holds {n}"
                        ),
                    });
                }
                self.stats.bytes += n;
                let mode = if mode & 0o6000 != 0 && !self.keep_setid {
                    self.stats.setid_cleared += 1;
                    mode & !0o6000
                } else {
                    mode
                };
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io_at(&target))?;
                // After chown, which clears set-id bits.
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_at(&target))?;
                let _ =
                    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime));
            }
            T::Symlink => {
                let link = e
                    .link_name_bytes()
                    .ok_or_else(|| hostile(&shown, "symlink without a target"))?;
                if link.len() > MAX_PATH_BYTES || link.contains(&0) {
                    return Err(hostile(&shown, "malformed symlink target"));
                }
                remove_any(&target)?;
                use std::os::unix::ffi::OsStrExt;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link), &target)
                    .map_err(io_at(&target))?;
                std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io_at(&target))?;
            }
            T::Link => {
                let link = e
                    .link_name_bytes()
                    .ok_or_else(|| hostile(&shown, "hard link without a target"))?;
                let link_rel = clean(&link, &shown)
                    .map_err(|_| hostile(&shown, "hard link target leaves the layer"))?;
                let parent = link_rel.parent().map(Path::to_path_buf).unwrap_or_default();
                if !self.is_real_dir_chain(&parent) {
                    return Err(hostile(
                        &shown,
                        format!(
                            "hard link target {} is not in this layer or passes through a symlink",
                            link_rel.display()
                        ),
                    ));
                }
                let src = self.dest.join(&link_rel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(hostile(
                            &shown,
                            format!(
                                "hard link target {} is not a file of this layer",
                                link_rel.display()
                            ),
                        ));
                    }
                }
                remove_any(&target)?;
                fs::hard_link(&src, &target).map_err(io_at(&target))?;
            }
            T::Char | T::Block => {
                // Never made (whiteouts, above, are the layer format's own 0/0 devices).
                self.stats.devices_skipped += 1;
            }
            T::Fifo => {
                remove_any(&target)?;
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFIFO,
                    nix::sys::stat::Mode::from_bits_truncate(mode & 0o777),
                    0,
                )
                .map_err(|e| UnpackError::Io {
                    what: target.display().to_string(),
                    source: e.into(),
                })?;
                chown(&target, uid, gid)?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => {
                return Err(hostile(
                    &shown,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ));
            }
        }
        Ok(())
    }

    /// Makes every parent directory of an entry a real directory of this layer, refusing a
    /// symlink (of this layer or of a lower one) anywhere on the way.
    fn ensure_parents(&mut self, parent: &Path, shown: &str) -> Result<(), UnpackError> {
        let mut rel = PathBuf::new();
        for c in parent.components() {
            rel.push(c);
            if self.checked.contains(&rel) {
                continue;
            }
            let here = self.dest.join(&rel);
            match fs::symlink_metadata(&here) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(hostile(
                        shown,
                        format!(
                            "path passes through {}, a symlink planted earlier in this layer",
                            rel.display()
                        ),
                    ));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(hostile(
                        shown,
                        format!(
                            "path passes through {}, which is not a directory",
                            rel.display()
                        ),
                    ));
                }
                Err(_) => {
                    if let Some(lower) = self.lower_symlink(&rel) {
                        return Err(hostile(
                            shown,
                            format!(
                                "path passes through {}, a symlink in a lower layer ({})",
                                rel.display(),
                                lower
                            ),
                        ));
                    }
                    fs::create_dir(&here).map_err(io_at(&here))?;
                    fs::set_permissions(&here, fs::Permissions::from_mode(0o755))
                        .map_err(io_at(&here))?;
                }
            }
            self.checked.insert(rel.clone());
        }
        Ok(())
    }

    /// Whether `rel` is a chain of real directories of this layer (the root included).
    fn is_real_dir_chain(&self, rel: &Path) -> bool {
        let mut p = PathBuf::new();
        for c in rel.components() {
            p.push(c);
            match fs::symlink_metadata(self.dest.join(&p)) {
                Ok(m) if m.is_dir() => {}
                _ => return false,
            }
        }
        true
    }

    /// The merged lower view at `rel`: the target if it is a symlink there.
    fn lower_symlink(&self, rel: &Path) -> Option<String> {
        for l in self.lowers {
            match fs::symlink_metadata(l.join(rel)) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Some(
                        fs::read_link(l.join(rel))
                            .map(|t| format!("-> {}", t.display()))
                            .unwrap_or_default(),
                    );
                }
                // A whiteout or anything else hides what is below.
                Ok(m) if m.file_type().is_char_device() => return None,
                Ok(_) => return None,
                Err(_) => {}
            }
        }
        None
    }
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<(), UnpackError> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(io_at(p))
}

/// Removes whatever is at `p` (a later entry replaces an earlier one), never following it.
fn remove_any(p: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(io_at(p)),
        Ok(_) => fs::remove_file(p).map_err(io_at(p)),
        Err(_) => Ok(()),
    }
}

/// Sets an extended attribute on `p` itself.
fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    let name = std::ffi::CString::new(name)?;
    #[allow(unsafe_code)]
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid
    // slice of the length passed.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A tar entry written by hand, so that tests can say what no well-behaved tool writes.
    struct Raw {
        name: Vec<u8>,
        kind: u8,
        data: Vec<u8>,
        link: Vec<u8>,
        mode: u32,
        /// The size field, if it should lie.
        claimed: Option<u64>,
    }

    fn file(name: &str, data: &str) -> Raw {
        Raw {
            name: name.into(),
            kind: b'0',
            data: data.into(),
            link: vec![],
            mode: 0o644,
            claimed: None,
        }
    }
    fn dir(name: &str) -> Raw {
        Raw {
            kind: b'5',
            mode: 0o755,
            ..file(name, "")
        }
    }
    fn symlink(name: &str, target: &str) -> Raw {
        Raw {
            kind: b'2',
            link: target.into(),
            mode: 0o777,
            ..file(name, "")
        }
    }
    fn hardlink(name: &str, target: &str) -> Raw {
        Raw {
            kind: b'1',
            link: target.into(),
            ..file(name, "")
        }
    }

    fn octal(field: &mut [u8], v: u64) {
        let s = format!("{:0width$o}\0", v, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }

    fn header(name: &[u8], kind: u8, size: u64, link: &[u8], mode: u32) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[156] = kind;
        h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        h
    }

    fn tar(entries: &[Raw]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            if e.name.len() > 100 {
                // A pax header carries the long path.
                let rec_body = format!(" path={}\n", String::from_utf8_lossy(&e.name));
                let mut len = rec_body.len() + 1;
                while format!("{len}{rec_body}").len() != len {
                    len += 1;
                }
                let rec = format!("{len}{rec_body}");
                out.extend_from_slice(&header(b"pax", b'x', rec.len() as u64, b"", 0o644));
                out.extend_from_slice(rec.as_bytes());
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
            let size = e.claimed.unwrap_or(e.data.len() as u64);
            out.extend_from_slice(&header(&e.name, e.kind, size, &e.link, e.mode));
            out.extend_from_slice(&e.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    /// A sandbox: `<root>/layer` to unpack into, `<root>/outside` that must stay empty.
    struct Sandbox {
        _t: tempfile::TempDir,
        layer: PathBuf,
        lower: PathBuf,
        outside: PathBuf,
    }

    fn sandbox() -> Sandbox {
        let t = tempfile::tempdir().unwrap();
        let layer = t.path().join("layer");
        let lower = t.path().join("lower");
        let outside = t.path().join("outside");
        for d in [&layer, &lower, &outside] {
            fs::create_dir(d).unwrap();
        }
        Sandbox {
            layer,
            lower,
            outside,
            _t: t,
        }
    }

    fn run(sb: &Sandbox, blob: &[u8], gzip: bool) -> Result<Stats, UnpackError> {
        unpack_layer(
            &mut &blob[..],
            gzip,
            &sb.layer,
            std::slice::from_ref(&sb.lower),
            None,
        )
    }

    fn names_under(p: &Path) -> Vec<String> {
        let mut v = Vec::new();
        let mut stack = vec![p.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let m = e.path().symlink_metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                }
                v.push(e.path().strip_prefix(p).unwrap().display().to_string());
            }
        }
        v.sort();
        v
    }

    #[test]
    fn hostile_layers_are_refused_and_write_nothing_outside() {
        let outside = |sb: &Sandbox| sb.outside.display().to_string();
        type Make = Box<dyn Fn(&Sandbox) -> (Vec<u8>, bool)>;
        let cases: Vec<(&str, Make, &str)> = vec![
            (
                "parent traversal",
                Box::new(|_| (tar(&[file("../evil", "x")]), false)),
                "path contains '..'",
            ),
            (
                "traversal inside a path",
                Box::new(|_| (tar(&[dir("a"), file("a/../../evil", "x")]), false)),
                "path contains '..'",
            ),
            (
                "absolute path",
                Box::new(move |sb| (tar(&[file(&format!("{}/evil", outside(sb)), "x")]), false)),
                "absolute path",
            ),
            (
                "symlink escape within the layer",
                Box::new(move |sb| {
                    (
                        tar(&[symlink("esc", &outside(sb)), file("esc/evil", "x")]),
                        false,
                    )
                }),
                "a symlink planted earlier in this layer",
            ),
            (
                "symlink escape through a lower layer",
                Box::new(move |sb| {
                    std::os::unix::fs::symlink(&sb.outside, sb.lower.join("esc")).unwrap();
                    (tar(&[file("esc/evil", "x")]), false)
                }),
                "a symlink in a lower layer",
            ),
            (
                "hard link escape",
                Box::new(|_| (tar(&[hardlink("hl", "../../../etc/passwd")]), false)),
                "hard link target leaves the layer",
            ),
            (
                "hard link to an absolute path",
                Box::new(|_| (tar(&[hardlink("hl", "/etc/passwd")]), false)),
                "hard link target leaves the layer",
            ),
            (
                "hard link through a symlink",
                Box::new(move |sb| {
                    fs::write(sb.outside.join("secret"), "s").unwrap();
                    (
                        tar(&[symlink("ln", &outside(sb)), hardlink("hl", "ln/secret")]),
                        false,
                    )
                }),
                "passes through a symlink",
            ),
            (
                "oversized path header",
                Box::new(|_| (tar(&[file(&"a/".repeat(3000), "x")]), false)),
                "more than 4096",
            ),
            (
                "entry larger than the archive",
                Box::new(|_| {
                    let mut e = file("big", "x");
                    e.claimed = Some(1 << 30);
                    let mut t = tar(&[e]);
                    t.truncate(2048);
                    (t, false)
                }),
                "is truncated",
            ),
            (
                "truncated gzip",
                Box::new(|_| {
                    let mut g = gz(&tar(&[file("a", &"y".repeat(100_000))]));
                    g.truncate(g.len() / 2);
                    (g, true)
                }),
                "not a valid tar (gzip)",
            ),
            (
                "malformed whiteout",
                Box::new(|_| (tar(&[file(".wh.", "")]), false)),
                "malformed whiteout",
            ),
        ];
        assert!(cases.len() >= 10);
        for (what, make, expect) in cases {
            let sb = sandbox();
            let (blob, gzip) = make(&sb);
            let before = names_under(&sb.outside);
            let err = run(&sb, &blob, gzip).expect_err(what).to_string();
            assert!(err.contains(expect), "{what}: {err}");
            assert_eq!(names_under(&sb.outside), before, "{what} wrote outside");
            assert!(
                !names_under(sb.layer.parent().unwrap())
                    .iter()
                    .any(|n| n.ends_with("evil") && !n.starts_with("layer/")),
                "{what}: an 'evil' file appeared outside the layer"
            );
        }
    }

    #[test]
    fn files_links_modes_and_whiteouts_unpack() {
        let sb = sandbox();
        let mut exe = file("bin/tool", "#!/bin/sh\n");
        exe.mode = 0o4755;
        let blob = gz(&tar(&[
            dir("bin"),
            exe,
            symlink("bin/sh", "/bin/busybox"),
            hardlink("bin/tool2", "bin/tool"),
            file("etc/deep/conf", "c"),
            file("etc/.wh.old", ""),
            file("opt/.wh..wh..opq", ""),
        ]));
        let stats = run(&sb, &blob, true).unwrap();
        assert_eq!(stats.whiteouts, 2);
        let l = &sb.layer;
        let m = fs::metadata(l.join("bin/tool")).unwrap();
        assert_eq!(
            m.permissions().mode() & 0o7777,
            0o755,
            "set-uid cleared by default"
        );
        assert_eq!(stats.setid_cleared, 1);
        // A board that allows them keeps set-id bits (after chown, which clears them).
        let kept = sandbox();
        let policy = Policy {
            keep_setid: true,
            ..Policy::default()
        };
        unpack_layer_with(&mut &blob[..], true, &kept.layer, &[], None, policy).unwrap();
        assert_eq!(
            fs::metadata(kept.layer.join("bin/tool"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o4755
        );
        assert_eq!(
            fs::read_link(l.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(m.ino(), fs::metadata(l.join("bin/tool2")).unwrap().ino());
        assert_eq!(fs::read_to_string(l.join("etc/deep/conf")).unwrap(), "c");
        let wh = fs::symlink_metadata(l.join("etc/old")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "overlay whiteout"
        );
        assert!(l.join("opt").is_dir());
    }

    #[test]
    fn layers_make_no_devices_and_a_gzip_bomb_stops_at_its_bound() {
        let sb = sandbox();
        let dev = |name: &str, kind: u8| Raw {
            kind,
            mode: 0o666,
            ..file(name, "")
        };
        let blob = tar(&[
            dev("dev/mem", b'3'),
            dev("dev/sda", b'4'),
            dev("run/fifo", b'6'),
            file("etc/ok", "ok"),
        ]);
        let stats = run(&sb, &blob, false).unwrap();
        assert_eq!(stats.devices_skipped, 2);
        for d in ["dev/mem", "dev/sda"] {
            assert!(
                fs::symlink_metadata(sb.layer.join(d)).is_err(),
                "{d} was made"
            );
        }
        assert!(
            fs::symlink_metadata(sb.layer.join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(fs::read_to_string(sb.layer.join("etc/ok")).unwrap(), "ok");

        // 8 MiB of zeros gzip to a few KB: past a 1 MiB bound, the layer is refused as soon
        // as the bound is passed, naming it.
        let zeros = String::from_utf8(vec![0u8; 8 << 20]).unwrap();
        let bomb = gz(&tar(&[file("zeros", &zeros)]));
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        let small = Policy {
            max_bytes: 1 << 20,
            ..Policy::default()
        };
        let sb = sandbox();
        let e = unpack_layer_with(&mut &bomb[..], true, &sb.layer, &[], None, small).unwrap_err();
        assert!(
            matches!(&e, UnpackError::Hostile { reason, .. } if reason.contains("more than 1048576 bytes")),
            "{e}"
        );
        // The bound for one layer: the board's, and a ratio of its compressed size.
        let board = Policy::default();
        assert_eq!(board.for_layer(1 << 20).max_bytes, RATIO_FLOOR_BYTES);
        assert_eq!(board.for_layer(10 << 20).max_bytes, (10 << 20) * MAX_RATIO);
        assert_eq!(board.for_layer(1 << 40).max_bytes, DEFAULT_MAX_LAYER_BYTES);
        assert_eq!(board.for_layer(u64::MAX).max_bytes, DEFAULT_MAX_LAYER_BYTES);
    }

    #[test]
    fn a_layer_without_its_end_of_archive_blocks_unpacks() {
        // What umoci 0.4.7 writes: the last file's data, then nothing.
        let sb = sandbox();
        let mut t = tar(&[dir("bin"), file("bin/f", "x\n")]);
        t.truncate(512 * 2 + 2);
        let digest = format!("sha256:{}", hex(&Sha256::digest(&t)));
        unpack_layer(&mut &t[..], false, &sb.layer, &[], Some(&digest)).unwrap();
        assert_eq!(fs::read_to_string(sb.layer.join("bin/f")).unwrap(), "x\n");
        // Cut inside the data, it is refused.
        let sb = sandbox();
        let mut t = tar(&[file("f", &"y".repeat(2000))]);
        t.truncate(512 + 1000);
        let e = unpack_layer(&mut &t[..], false, &sb.layer, &[], None).unwrap_err();
        assert!(e.to_string().contains("is truncated"), "{e}");
    }

    #[test]
    fn the_diff_id_is_checked_on_the_uncompressed_stream() {
        let sb = sandbox();
        let t = tar(&[file("a", "1")]);
        let right = format!("sha256:{}", hex(&Sha256::digest(&t)));
        let blob = gz(&t);
        unpack_layer(&mut &blob[..], true, &sb.layer, &[], Some(&right)).unwrap();
        let sb = sandbox();
        let wrong = format!("sha256:{}", "0".repeat(64));
        let e = unpack_layer(&mut &blob[..], true, &sb.layer, &[], Some(&wrong)).unwrap_err();
        assert!(matches!(e, UnpackError::DiffId { .. }), "{e}");
    }
}
