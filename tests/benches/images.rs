//! Images (as root, release binaries): import of a ~20 MB image into the master beside a
//! plain `cp` of the same archive; distribution of it (download, verify, unpack) to 1 and to
//! 10 agents' image caches at once beside `cp` of the same bytes as many times at once; and
//! unpacking of its layers beside `umoci unpack` of the same image. Every figure is a
//! median of several rounds in the same run.
//!
//! Run with `scripts/bench`.

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bramble_agent::images::oci::{CacheLimits, OciStore};
use bramble_agent::images::{ImageStore, PullPolicy, unpack};
use bramble_tests::MasterProcess;
use bramble_tests::oci::archive;

const ROUNDS: usize = 5;
const PAYLOAD: usize = 20 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An image of busybox plus ~20 MB of incompressible data, built with umoci.
fn build(work: &Path) -> (PathBuf, PathBuf) {
    let layout = work.join("layout");
    let img = format!("{}:big", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &img]));
    let src = work.join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("bin/sh")).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = Vec::with_capacity(PAYLOAD);
    while data.len() < PAYLOAD {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    for i in 0..4 {
        std::fs::write(
            src.join(format!("data/blob{i}")),
            &data[i * PAYLOAD / 4..(i + 1) * PAYLOAD / 4],
        )
        .unwrap();
    }
    run(Command::new("umoci")
        .args(["insert", "--image", &img])
        .arg(&src)
        .arg("/"));
    let tar = work.join("big.tar");
    archive(&layout, &tar).unwrap();
    (layout, tar)
}

fn joined_cache(m: &MasterProcess, dir: &Path, node: &str) -> OciStore {
    std::fs::create_dir_all(dir).unwrap();
    let facts = bramble_api::wire::NodeFacts::default();
    let creds = bramble_agent::join::join(&m.url, &m.join_token(), node, &facts).unwrap();
    bramble_agent::join::save(dir, &creds).unwrap();
    OciStore::open(
        dir,
        &dir.join("images"),
        (
            "linux".into(),
            bramble_agent::facts::architecture(),
            String::new(),
        ),
        CacheLimits::default(),
    )
    .unwrap()
}

/// The layer blobs of the image, lowest first, with their diff ids.
fn layers(layout: &Path) -> Vec<(PathBuf, String)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let md = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&md)).unwrap()).unwrap();
    let c: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(m["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(c["rootfs"]["diff_ids"].as_array().unwrap())
        .map(|(l, d)| {
            (
                blob(l["digest"].as_str().unwrap()),
                d.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    bramble_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (layout, tar) = build(&work.join("build"));
    let size = std::fs::metadata(&tar).unwrap().len() as f64;
    let mb = size / 1e6;
    println!("## images: a {mb:.1} MB image (busybox + 20 MiB of incompressible data)\n");
    println!("| measure | Bramble | baseline | ratio |");
    println!("|---|---|---|---|");

    // Import beside cp of the archive into the same filesystem.
    let m = MasterProcess::start(&work.join("master")).unwrap();
    let mut imp = Vec::new();
    let mut cp = Vec::new();
    let mut cp_sync = Vec::new();
    for r in 0..ROUNDS {
        // A fresh name each round; blobs already stored are still hashed and rewritten.
        let name = format!("big:r{r}");
        imp.push(timed(|| {
            let out = m.cli(&["image", "import", tar.to_str().unwrap(), "--name", &name]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }));
        let dest = work.join(format!("master/copy{r}.tar"));
        cp.push(timed(|| run(Command::new("cp").arg(&tar).arg(&dest))));
        run(&mut Command::new("sync"));
        // The import makes every blob durable: cp followed by an fsync of the copy.
        let dest = work.join(format!("master/copy{r}-synced.tar"));
        cp_sync.push(timed(|| {
            run(Command::new("cp").arg(&tar).arg(&dest));
            run(Command::new("sync").arg(&dest));
        }));
    }
    let (i, c, cs) = (median(imp), median(cp), median(cp_sync));
    println!(
        "| import (bramble image import), MB/s | {:.0} | cp: {:.0} | {:.2}x |",
        mb / i,
        mb / c,
        c / i
    );
    println!(
        "| import, MB/s | {:.0} | cp + fsync: {:.0} | {:.2}x |",
        mb / i,
        mb / cs,
        cs / i
    );

    // Distribution: N caches pull at once (download, verify, unpack).
    for n in [1usize, 10] {
        let mut pulls = Vec::new();
        let mut cps = Vec::new();
        for r in 0..ROUNDS {
            let caches: Vec<OciStore> = (0..n)
                .map(|k| {
                    joined_cache(
                        &m,
                        &work.join(format!("nodes/r{r}-n{n}-{k}")),
                        &format!("r{r}-n{n}-{k}"),
                    )
                })
                .collect();
            pulls.push(timed(|| {
                std::thread::scope(|s| {
                    for c in &caches {
                        s.spawn(move || c.prepare("big:r0", PullPolicy::IfNotPresent).unwrap());
                    }
                });
            }));
            let dests: Vec<PathBuf> = (0..n).map(|k| work.join(format!("cp-r{r}-{k}"))).collect();
            cps.push(timed(|| {
                std::thread::scope(|s| {
                    for d in &dests {
                        let tar = &tar;
                        s.spawn(move || std::fs::copy(tar, d).unwrap());
                    }
                });
            }));
            for d in dests {
                let _ = std::fs::remove_file(d);
            }
            let _ = std::fs::remove_dir_all(work.join("nodes"));
        }
        let (p, c) = (median(pulls), median(cps));
        println!(
            "| distribution to {n} agent(s) at once (pull + verify + unpack), MB/s total | {:.0} | cp x{n}: {:.0} | {:.2}x |",
            mb * n as f64 / p,
            mb * n as f64 / c,
            c / p
        );
    }

    // Unpack beside umoci unpack of the same image.
    let layer_blobs = layers(&layout);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for r in 0..ROUNDS {
        let base = work.join(format!("unpack{r}"));
        ours.push(timed(|| {
            let mut lowers: Vec<PathBuf> = Vec::new();
            for (k, (blob, diff)) in layer_blobs.iter().enumerate() {
                let dest = base.join(format!("l{k}"));
                std::fs::create_dir_all(&dest).unwrap();
                let gzip = unpack::is_gzip(blob).unwrap();
                let mut f = std::fs::File::open(blob).unwrap();
                unpack::unpack_layer(&mut f, gzip, &dest, &lowers, Some(diff)).unwrap();
                lowers.insert(0, dest);
            }
        }));
        let bundle = work.join(format!("umoci{r}"));
        theirs.push(timed(|| {
            run(Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:big", layout.display()))
                .arg(&bundle))
        }));
        let _ = std::fs::remove_dir_all(&base);
        let _ = std::fs::remove_dir_all(&bundle);
    }
    let (o, t) = (median(ours), median(theirs));
    println!(
        "| unpack all layers, ms | {:.0} | umoci unpack: {:.0} | {:.2}x faster |",
        o * 1e3,
        t * 1e3,
        t / o
    );
}
