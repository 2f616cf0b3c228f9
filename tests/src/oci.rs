//! Real OCI images for tests and benches, built with Debian's `umoci` from busybox-static
//! binaries (the host's, and arm64's from `busybox-static:arm64`, which `scripts/setup`
//! unpacks to [`ARM64_BUSYBOX`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Where `scripts/setup` puts the arm64 busybox-static binary.
pub const ARM64_BUSYBOX: &str = "/opt/bramble-test/busybox-arm64";

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn umoci(args: &[&str]) -> Result<()> {
    if !Path::new("/usr/bin/umoci").exists() {
        bail!("umoci is missing: apt-get install umoci (scripts/setup does)");
    }
    run(Command::new("umoci").args(args))
}

/// A tree with busybox at `bin/busybox` and a few applets linked to it.
fn busybox_tree(dir: &Path, busybox: &Path) -> Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    for a in ["sh", "ls", "cat", "echo", "sleep", "id", "pwd", "env"] {
        std::os::unix::fs::symlink("busybox", bin.join(a))?;
    }
    Ok(())
}

/// The first layer's extra content: modes, owners, links, a fifo and files that later layers
/// remove or hide.
fn varied_tree(dir: &Path) -> Result<()> {
    let p = |s: &str| dir.join(s);
    for d in ["etc", "data", "opt/sub", "empty"] {
        std::fs::create_dir_all(p(d))?;
    }
    std::fs::write(p("etc/motd"), "removed by a whiteout\n")?;
    std::fs::write(
        p("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/data:/bin/sh\n",
    )?;
    std::fs::write(p("etc/group"), "root:x:0:\napp:x:1000:\n")?;
    std::fs::write(p("data/secret"), "s3cret\n")?;
    std::fs::set_permissions(p("data/secret"), std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(p("data/suid"), "#!/bin/sh\n")?;
    std::os::unix::fs::chown(p("data/suid"), Some(1000), Some(1000))?;
    std::fs::set_permissions(p("data/suid"), std::fs::Permissions::from_mode(0o4755))?;
    std::fs::write(p("data/original"), "linked\n")?;
    std::fs::hard_link(p("data/original"), p("data/hardlink"))?;
    std::os::unix::fs::symlink("/etc/passwd", p("data/abs-link"))?;
    std::os::unix::fs::symlink("../etc", p("data/rel-link"))?;
    std::fs::write(p("opt/sub/hidden"), "hidden by an opaque directory\n")?;
    std::fs::set_permissions(p("empty"), std::fs::Permissions::from_mode(0o1777))?;
    run(Command::new("mkfifo").arg(p("data/fifo")))?;
    Ok(())
}

/// Digest of bytes.
pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// Builds an OCI image layout at `layout` with the tags:
/// - `amd64`: three layers (busybox plus varied files; a whiteout of `/etc/motd`; `/opt`
///   replaced by an opaque directory holding `new`), a config with Cmd, Env and WorkingDir;
///   the host's architecture (amd64 here).
/// - `arm64`: busybox for arm64, architecture arm64.
/// - `multi`: an index of both.
pub fn build_layout(work: &Path) -> Result<PathBuf> {
    let layout = work.join("layout");
    let img = |tag: &str| format!("{}:{tag}", layout.display());
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    // amd64 (the host's busybox).
    umoci(&["new", "--image", &img("amd64")])?;
    let l1 = work.join("l1");
    busybox_tree(&l1, Path::new("/bin/busybox"))?;
    varied_tree(&l1)?;
    umoci(&[
        "insert",
        "--image",
        &img("amd64"),
        &l1.display().to_string(),
        "/",
    ])?;
    umoci(&[
        "insert",
        "--image",
        &img("amd64"),
        "--whiteout",
        "/etc/motd",
    ])?;
    let l3 = work.join("l3/opt");
    std::fs::create_dir_all(&l3)?;
    std::fs::write(l3.join("new"), "from the opaque layer\n")?;
    umoci(&[
        "insert",
        "--image",
        &img("amd64"),
        "--opaque",
        &l3.display().to_string(),
        "/opt",
    ])?;
    umoci(&[
        "config",
        "--image",
        &img("amd64"),
        "--architecture",
        "amd64",
        "--os",
        "linux",
        "--config.env",
        "GREETING=hello from the image config",
        "--config.workingdir",
        "/data",
        "--config.entrypoint",
        "sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo $GREETING; pwd; ls /etc /opt; cat /etc/motd 2>&1; sleep 1000",
    ])?;
    // arm64.
    let arm = Path::new(ARM64_BUSYBOX);
    if !arm.exists() {
        bail!("{ARM64_BUSYBOX} is missing: scripts/setup downloads busybox-static:arm64");
    }
    umoci(&["new", "--image", &img("arm64")])?;
    let a1 = work.join("a1");
    busybox_tree(&a1, arm)?;
    umoci(&[
        "insert",
        "--image",
        &img("arm64"),
        &a1.display().to_string(),
        "/",
    ])?;
    umoci(&[
        "config",
        "--image",
        &img("arm64"),
        "--architecture",
        "arm64",
        "--os",
        "linux",
        "--config.cmd",
        "sh",
    ])?;
    // multi: a nested index naming both manifests with their platforms.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let find = |tag: &str| {
        manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .cloned()
            .with_context(|| format!("tag {tag} not in index.json"))
    };
    let (mut amd, mut arm) = (find("amd64")?, find("arm64")?);
    for (d, a) in [(&mut amd, "amd64"), (&mut arm, "arm64")] {
        if let Some(o) = d.as_object_mut() {
            o.remove("annotations");
        }
        d["platform"] = serde_json::json!({"os": "linux", "architecture": a});
    }
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd, arm],
    }))?;
    let digest = sha256(&nested);
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), &nested)?;
    if let Some(m) = index["manifests"].as_array_mut() {
        m.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    }
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;
    Ok(layout)
}

/// Packs a layout as an OCI archive (a tar of the layout, as `skopeo copy oci-archive:`
/// writes).
pub fn archive(layout: &Path, out: &Path) -> Result<()> {
    run(Command::new("tar")
        .arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(out)
        .arg("."))
}

/// One file of an unpacked tree, as the cross-check compares them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileFacts {
    pub path: String,
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub link: String,
}

/// Every entry under `root` (not the root itself), sorted.
pub fn tree_facts(root: &Path) -> Vec<FileFacts> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = p.symlink_metadata() else {
                continue;
            };
            let t = m.file_type();
            let kind = if t.is_dir() {
                stack.push(p.clone());
                'd'
            } else if t.is_symlink() {
                'l'
            } else if t.is_fifo() {
                'p'
            } else if t.is_char_device() {
                'c'
            } else if t.is_block_device() {
                'b'
            } else {
                'f'
            };
            out.push(FileFacts {
                path: p.strip_prefix(root).unwrap_or(&p).display().to_string(),
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == 'f' { m.size() } else { 0 },
                link: std::fs::read_link(&p)
                    .map(|l| l.display().to_string())
                    .unwrap_or_default(),
            });
        }
    }
    out.sort();
    out
}
