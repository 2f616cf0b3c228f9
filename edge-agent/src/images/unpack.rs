//! Unpacking one image layer (a tar, plain or gzip) into its own directory, safely.
//!
//! Every layer becomes one overlayfs lower directory, so OCI whiteouts are turned into
//! overlayfs ones: `.wh.NAME` becomes a 0/0 character device `NAME`, `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory. Nothing is ever written outside the layer's
//! directory: absolute paths, `..` components, oversized names, entries whose path passes
//! through a symlink (planted earlier in this layer, or present in a lower layer of the same
//! image), and hard links whose target is outside the layer are refused with an error naming
//! the entry. Entries are created without following symlinks.

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
    /// Device nodes skipped because this process may not create them.
    pub devices_skipped: u64,
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
    let corrupt = |e: io::Error| UnpackError::Corrupt {
        gzip,
        message: e.to_string(),
    };
    let plain: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let mut hashing = Hashing {
        inner: plain,
        hash: Sha256::new(),
    };
    let mut stats = Stats::default();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut u = Unpacker {
            dest,
            lowers,
            checked: HashSet::new(),
            stats: &mut stats,
        };
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            u.entry(&mut entry).map_err(|e| match e {
                UnpackError::Io { what, source } if source.kind() == io::ErrorKind::UnexpectedEof => {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Unpacker<'a> {
    dest: &'a Path,
    lowers: &'a [PathBuf],
    /// Relative directories already known to be real directories in this layer.
    checked: HashSet<PathBuf>,
    stats: &'a mut Stats,
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
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(hostile(entry, "absolute path"));
            }
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
                self.stats.bytes += n;
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io_at(&target))?;
                // After chown, which clears set-id bits.
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_at(&target))?;
                let _ = f.set_modified(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime),
                );
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
                std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                    .map_err(io_at(&target))?;
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
            T::Char | T::Block | T::Fifo => {
                remove_any(&target)?;
                let (kind_flag, dev) = match kind {
                    T::Char => (
                        nix::sys::stat::SFlag::S_IFCHR,
                        dev(h.device_major(), h.device_minor()),
                    ),
                    T::Block => (
                        nix::sys::stat::SFlag::S_IFBLK,
                        dev(h.device_major(), h.device_minor()),
                    ),
                    _ => (nix::sys::stat::SFlag::S_IFIFO, 0),
                };
                match nix::sys::stat::mknod(
                    &target,
                    kind_flag,
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    dev,
                ) {
                    Ok(()) => {
                        chown(&target, uid, gid)?;
                    }
                    Err(nix::errno::Errno::EPERM) => self.stats.devices_skipped += 1,
                    Err(e) => {
                        return Err(UnpackError::Io {
                            what: target.display().to_string(),
                            source: e.into(),
                        });
                    }
                }
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
                        format!("path passes through {}, which is not a directory", rel.display()),
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

fn dev(major: io::Result<Option<u32>>, minor: io::Result<Option<u32>>) -> u64 {
    let ma = major.ok().flatten().unwrap_or(0);
    let mi = minor.ok().flatten().unwrap_or(0);
    nix::sys::stat::makedev(u64::from(ma), u64::from(mi))
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
