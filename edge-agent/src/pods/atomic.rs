//! The files of configMap, secret, projected and downwardAPI volumes, swapped atomically as
//! the kubelet's `AtomicWriter` does: the files live in a hidden directory `..TIMESTAMP`,
//! `..data` is a symlink to it, and each top-level name is a symlink through `..data`. An
//! update writes a new directory, then renames a new `..data` link over the old one, so a
//! reader in the container sees the old set or the new one, never a mix.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::config::VolumeFile;

const DATA: &str = "..data";

/// Whether `dir` already holds exactly `files` (same paths, bytes and modes).
fn same(dir: &Path, files: &[VolumeFile]) -> bool {
    let current = dir.join(DATA);
    if !current.is_dir() {
        return false;
    }
    let mut count = 0usize;
    let mut stack = vec![current.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            return false;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                count += 1;
            }
        }
    }
    count == files.len()
        && files.iter().all(|f| {
            let p = current.join(&f.path);
            std::fs::read(&p).is_ok_and(|b| b == f.bytes)
                && std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o7777 == f.mode)
        })
}

/// Makes `dir` hold `files`; returns whether anything changed. Paths were validated by the
/// API (relative, no `..`); they are checked again here, since a wrong one would write
/// outside the volume.
pub fn write(dir: &Path, files: &[VolumeFile], now_nanos: u128) -> io::Result<bool> {
    for f in files {
        if bramble_api::config::check_item_path(&f.path).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing the volume path {:?}", f.path),
            ));
        }
    }
    if same(dir, files) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let stamp = format!("..{now_nanos}");
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755))?;
    for f in files {
        let p = fresh.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, &f.bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))?;
    }
    let old = std::fs::read_link(dir.join(DATA)).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // The top-level names: a link through `..data` for each, none for names gone.
    let top: std::collections::BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.path.split('/').next())
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("{DATA}/{name}"), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            continue;
        }
        if !top.contains(name.as_str()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old
        && old.as_os_str() != stamp.as_str()
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, bytes: &str, mode: u32) -> VolumeFile {
        VolumeFile {
            path: path.into(),
            bytes: bytes.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn an_update_swaps_the_whole_set_through_the_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path();
        let first = [file("a", "1", 0o644), file("conf/b", "2", 0o400)];
        assert!(write(v, &first, 1).unwrap());
        assert_eq!(std::fs::read_to_string(v.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(v.join("conf/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(v.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let mode = std::fs::metadata(v.join("conf/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        assert!(
            !write(v, &first, 2).unwrap(),
            "the same set is not written again"
        );
        let second = [file("a", "one", 0o644), file("c", "3", 0o644)];
        assert!(write(v, &second, 3).unwrap());
        assert_eq!(std::fs::read_to_string(v.join("a")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(v.join("c")).unwrap(), "3");
        assert!(!v.join("conf").exists(), "a name that went is gone");
        assert_eq!(std::fs::read_link(v.join(DATA)).unwrap(), Path::new("..3"));
        assert!(!v.join("..1").exists(), "the old set is removed");
        assert!(write(v, &[file("../escape", "x", 0o644)], 4).is_err());
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
