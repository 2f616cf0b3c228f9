//! Durable small files: a file is replaced whole or not at all, and survives a power cut
//! once the call returns.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The temporary name `write_atomic` uses for `path`: `.NAME.tmp` beside it. A leading dot
/// keeps it apart from every name Bramble writes (DNS names never start with one), so a
/// node called `pi.tmp` or `pi.lab` is never mistaken for, or collides with, a temporary.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Whether a directory entry is a temporary of [`write_atomic`] (to skip when listing).
pub fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Replaces `path` with `data` atomically and durably: written to a temporary with `mode`,
/// synced, renamed over `path`, and the directory synced so the rename itself survives a
/// power cut.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_temp(path, data, mode, true)?;
    std::fs::rename(temp_path(path), path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Replaces `path` with `data` atomically, without syncing: for records that mean nothing
/// after a power cut (a running container's pid), where a sync would only slow a hot path.
pub fn replace(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_temp(path, data, mode, false)?;
    std::fs::rename(temp_path(path), path)
}

fn write_temp(path: &Path, data: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(temp_path(path))?;
    f.write_all(data)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

/// Syncs a directory (its entries: a rename or a new file in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_no_temporary_left() {
        let dir = std::env::temp_dir().join(format!("bramble-support-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pi.lab");
        write_atomic(&p, b"one", 0o600).unwrap();
        replace(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["pi.lab".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporaries_never_look_like_a_name_bramble_writes() {
        for name in ["pi.lab", "pi.tmp", "pi", "credentials.json"] {
            let t = temp_path(Path::new("/d").join(name).as_path());
            assert_eq!(t, Path::new("/d").join(format!(".{name}.tmp")));
            assert!(is_temp(&t.file_name().unwrap().to_string_lossy()));
            assert!(!is_temp(name), "{name}");
        }
    }
}
