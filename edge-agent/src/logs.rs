//! Container logs: a size-rotated file per container instance (`N.log`, and `N.log.1` for
//! the previous rotation), written by the shim and read by the agent for `bramble logs`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Appends to a log file, rotating it to `<file>.1` when it passes `max_bytes`.
pub struct RotatingWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl RotatingWriter {
    /// Opens (appending) the log at `path`.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(4096),
        })
    }

    /// Writes bytes, rotating first if they would pass the limit.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + data.len() as u64 > self.max_bytes {
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// The last `tail` lines (all if None) of a log and its rotation, at most `limit` bytes
/// (the newest); returns the bytes and the offset in the current file to follow from.
pub fn read_tail(path: &Path, tail: Option<u64>, limit: u64) -> (Vec<u8>, u64) {
    let current = read_all(path);
    let next = current.len() as u64;
    let mut all = read_all(&rotated(path));
    all.extend_from_slice(&current);
    let mut start = 0usize;
    if let Some(n) = tail {
        // Find the start of the n-th line from the end (a final newline ends the last line).
        let body_end = if all.ends_with(b"\n") {
            all.len() - 1
        } else {
            all.len()
        };
        let mut seen = 0u64;
        start = 0;
        for i in (0..body_end).rev() {
            if all[i] == b'\n' {
                seen += 1;
                if seen == n {
                    start = i + 1;
                    break;
                }
            }
        }
        if n == 0 {
            start = all.len();
        }
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if all.len() - start > limit {
        start = all.len() - limit;
    }
    (all[start..].to_vec(), next)
}

/// What was appended to the current file since `offset` (from 0 after a rotation).
pub fn read_from(path: &Path, offset: u64, limit: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let from = if offset > len { 0 } else { offset };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    let next = from + buf.len() as u64;
    Ok((buf, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_tails_across_the_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c/0.log");
        let mut w = RotatingWriter::open(&p, 4096).unwrap();
        for i in 0..600 {
            w.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        assert!(rotated(&p).exists(), "the log should have rotated");
        assert!(std::fs::metadata(&p).unwrap().len() <= 4096);
        let (tail, _) = read_tail(&p, Some(3), 1 << 20);
        assert_eq!(tail, b"line 0597\nline 0598\nline 0599\n");
        let (limited, _) = read_tail(&p, None, 10);
        assert_eq!(limited, b"line 0599\n");
        let (none, _) = read_tail(&p, Some(0), 1 << 20);
        assert!(none.is_empty());
    }

    #[test]
    fn follows_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        let mut w = RotatingWriter::open(&p, 1 << 20).unwrap();
        w.write(b"a\n").unwrap();
        let (_, off) = read_tail(&p, None, 1 << 20);
        w.write(b"b\n").unwrap();
        let (data, next) = read_from(&p, off, 1 << 20).unwrap();
        assert_eq!((data.as_slice(), next), (&b"b\n"[..], 4));
        assert_eq!(
            read_from(&dir.path().join("missing"), 0, 10)
                .unwrap()
                .0
                .len(),
            0
        );
    }
}
