//! Reading manifest files, directories and standard input for `apply -f` and `delete -f`.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bramble_api::manifest::{Decoded, MAX_MANIFEST_BYTES, parse_manifests};

fn collect(path: &Path, recursive: bool, top: bool, out: &mut Vec<(String, String)>) -> Result<()> {
    if path.is_dir() {
        if !top && !recursive {
            return Ok(());
        }
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            let is_manifest = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if p.is_dir() || is_manifest {
                collect(&p, recursive, false, out)?;
            }
        }
        return Ok(());
    }
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        bail!(
            "{}: {} bytes is more than the limit of {MAX_MANIFEST_BYTES}",
            path.display(),
            meta.len()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    out.push((path.display().to_string(), text));
    Ok(())
}

/// Reads and decodes every manifest named by `-f`; all errors are reported before any is sent.
pub fn load(files: &[String], recursive: bool) -> Result<Vec<Decoded>> {
    let mut texts = Vec::new();
    for f in files {
        if f == "-" {
            let mut s = String::new();
            std::io::stdin()
                .take(MAX_MANIFEST_BYTES as u64 + 1)
                .read_to_string(&mut s)
                .context("reading standard input")?;
            texts.push(("<stdin>".to_string(), s));
        } else {
            collect(Path::new(f), recursive, true, &mut texts)?;
        }
    }
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for (source, text) in texts {
        match parse_manifests(&text) {
            Ok(docs) => all.extend(docs),
            Err(errs) => errors.extend(errs.into_iter().map(|e| format!("{source}: {e}"))),
        }
    }
    if !errors.is_empty() {
        bail!(
            "invalid manifests, nothing was applied:\n  {}",
            errors.join("\n  ")
        );
    }
    if all.is_empty() {
        bail!("no objects found in {}", files.join(", "));
    }
    Ok(all)
}
