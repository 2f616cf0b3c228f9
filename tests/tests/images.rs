//! OCI images, for real and as root: images built with umoci from busybox-static (amd64 and
//! arm64, and an index of both), imported into a real master, pulled by the agent's image
//! cache over HTTP, unpacked and cross-checked against `umoci unpack`, and run as pods by a
//! real agent through libcontainer.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bramble_agent::images::oci::{CacheLimits, OciStore};
use bramble_agent::images::{ImageError, ImageStore, PullPolicy};
use bramble_tests::oci::{FileFacts, archive, build_layout, tree_facts};
use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, eventually, ok_stdout, require_root,
};

/// A master with the test layout imported as `demo:amd64`, `demo:arm64` and `demo:multi`.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    layout: PathBuf,
    master: MasterProcess,
}

fn fixture() -> Fixture {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let layout = build_layout(&root.join("build")).unwrap();
    let tar = root.join("demo.tar");
    archive(&layout, &tar).unwrap();
    let master = MasterProcess::start(&root.join("master")).unwrap();
    let out = master.cli(&["image", "import", tar.to_str().unwrap(), "--name", "demo"]);
    let text = ok_stdout(&out);
    for r in ["demo:amd64", "demo:arm64", "demo:multi"] {
        assert!(text.contains(&format!("imported {r} sha256:")), "{text}");
    }
    Fixture {
        _dir: dir,
        root,
        layout,
        master,
    }
}

/// An agent data dir that has joined `m` (credentials only: no agent process).
fn joined_cache(m: &MasterProcess, dir: &Path, node: &str, limits: CacheLimits) -> OciStore {
    std::fs::create_dir_all(dir).unwrap();
    let facts = bramble_api::wire::NodeFacts::default();
    let creds = bramble_agent::join::join(&m.url, &m.join_token(), node, &facts).unwrap();
    bramble_agent::join::save(dir, &creds).unwrap();
    let platform = ("linux".to_string(), "amd64".to_string(), String::new());
    OciStore::open(dir, &dir.join("images"), platform, limits).unwrap()
}

/// Mounts the layers read-only as one overlay at `at`.
struct Overlay(PathBuf);
impl Overlay {
    fn mount(layers: &[PathBuf], at: &Path) -> Overlay {
        std::fs::create_dir_all(at).unwrap();
        let lowers: Vec<String> = layers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect();
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowers.join(":")))
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting the overlay of {lowers:?}");
        Overlay(at.to_path_buf())
    }
}
impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn umoci_rootfs(layout: &Path, tag: &str, at: &Path) -> PathBuf {
    let st = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success());
    at.join("rootfs")
}

#[test]
fn pulled_layers_match_umoci_and_platforms_resume_and_collection_behave() {
    let f = fixture();
    let ls = ok_stdout(&f.master.cli(&["image", "ls"]));
    assert!(
        ls.contains("demo") && ls.contains("linux/amd64,linux/arm64"),
        "{ls}"
    );
    let node_dir = f.root.join("node");
    let cache = joined_cache(&f.master, &node_dir, "cache-node", CacheLimits::default());

    // The index resolves to this node's (amd64) manifest; the layers as an overlay equal
    // umoci's own unpacking of the same manifest: files, modes, owners, sizes, link targets.
    let img = cache
        .prepare("demo:multi", PullPolicy::IfNotPresent)
        .unwrap();
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.config.working_dir, "/data");
    assert_eq!(
        img.config.entrypoint.as_deref(),
        Some(&["sh".to_string()][..])
    );
    let mounted = Overlay::mount(&img.layers, &f.root.join("merged"));
    let ours = tree_facts(&mounted.0);
    let mut theirs = tree_facts(&umoci_rootfs(&f.layout, "amd64", &f.root.join("umoci")));
    // Bramble clears set-id bits of layers' files unless the board allows them; umoci keeps
    // them: the one difference.
    let suid = theirs.iter().position(|x| x.path == "data/suid").unwrap();
    assert_eq!(
        theirs[suid].mode & 0o4000,
        0o4000,
        "the fixture has a setuid file"
    );
    for x in theirs.iter_mut().filter(|x| x.kind == 'f') {
        x.mode &= !0o6000;
    }
    let only = |a: &[FileFacts], b: &[FileFacts]| -> Vec<FileFacts> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    assert_eq!(only(&ours, &theirs), vec![], "in Bramble's unpack only");
    assert_eq!(only(&theirs, &ours), vec![], "in umoci's unpack only");
    let has = |p: &str| ours.iter().any(|x| x.path == p);
    assert!(
        !has("etc/motd"),
        "the whiteout in layer 2 deletes layer 1's file"
    );
    assert!(
        !has("opt/sub/hidden") && has("opt/new"),
        "the opaque directory hides layer 1's /opt"
    );
    let suid = ours.iter().find(|x| x.path == "data/suid").unwrap();
    assert_eq!(
        (suid.mode, suid.uid, suid.gid),
        (0o755, 1000, 1000),
        "owner kept, setuid cleared"
    );
    drop(mounted);

    // A second image with the same layers shares them (one unpack per chain).
    let again = cache
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap();
    assert_eq!(again.layers, img.layers);

    // No variant for this node: the message the issue asks for.
    let err = cache
        .prepare("demo:arm64", PullPolicy::IfNotPresent)
        .unwrap_err();
    assert_eq!(
        err,
        ImageError::NoPlatform(
            r#"image "demo:arm64" has no linux/amd64 variant (has: linux/arm64)"#.into()
        )
    );
    let err = cache
        .prepare("nothere:1", PullPolicy::IfNotPresent)
        .unwrap_err();
    assert!(
        err.to_string().contains("is not imported on the master"),
        "{err}"
    );
    let err = cache.prepare("demo:never", PullPolicy::Never).unwrap_err();
    assert!(matches!(err, ImageError::NotPresent { .. }), "{err}");
    // Never and IfNotPresent use what the node has, without the master.
    cache.prepare("demo:amd64", PullPolicy::Never).unwrap();

    // An interrupted download resumes with a Range request: a partial file whose first bytes
    // are wrong makes the resumed blob fail its digest (and be discarded) — which a fresh
    // download would not — and the next attempt succeeds from scratch.
    let fresh_dir = f.root.join("fresh");
    let fresh = joined_cache(&f.master, &fresh_dir, "fresh-node", CacheLimits::default());
    let manifest = largest_layer(&f.layout, "amd64");
    let partial = fresh_dir
        .join("image-cache/tmp")
        .join(format!("{}.partial", &manifest.0[7..]));
    let mut bytes = std::fs::read(&manifest.1).unwrap();
    bytes.truncate(bytes.len() / 2);
    bytes[0] ^= 0xff;
    std::fs::write(&partial, &bytes).unwrap();
    let err = fresh
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap_err();
    assert!(err.to_string().contains("discarded"), "{err}");
    assert!(!partial.exists(), "a corrupt download is not kept");
    // A correct partial file is completed, not downloaded again.
    let mut good = std::fs::read(&manifest.1).unwrap();
    good.truncate(good.len() / 2);
    std::fs::write(&partial, &good).unwrap();
    fresh
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap();

    // Collection: over a tiny cache limit, images no pod uses go; the named one stays.
    let small = CacheLimits {
        max_bytes: Some(1),
        ..CacheLimits::default()
    };
    let tight = OciStore::open(
        &node_dir,
        &node_dir.join("images"),
        ("linux".into(), "amd64".into(), String::new()),
        small,
    )
    .unwrap();
    let layers = tight
        .prepare("demo:amd64", PullPolicy::Never)
        .unwrap()
        .layers;
    assert!(layers.iter().all(|l| l.is_dir()));
    let freed = tight.collect(&["demo:amd64".to_string()]);
    assert!(
        layers.iter().all(|l| l.is_dir()),
        "an image in use is never collected"
    );
    let _ = freed;
    let freed = tight.collect(&[]);
    assert!(freed > 1_000_000, "freed {freed} bytes");
    assert!(
        layers.iter().all(|l| !l.exists()),
        "unused layers are collected"
    );
    let err = tight.prepare("demo:amd64", PullPolicy::Never).unwrap_err();
    assert!(matches!(err, ImageError::NotPresent { .. }), "{err}");
}

/// The digest and blob path of the largest layer of a tag in the layout.
fn largest_layer(layout: &Path, tag: &str) -> (String, PathBuf) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(m["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let l = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap();
    let d = l["digest"].as_str().unwrap().to_string();
    let p = blob(&d);
    (d, p)
}

fn waiting_message(m: &MasterProcess, pod: &str) -> String {
    m.pod(pod)
        .and_then(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

#[test]
fn pods_run_imported_images_with_their_config_and_removal_waits_for_them() {
    let f = fixture();
    let agent_dir = f.root.join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let m = &f.master;
    let _a = AgentProcess::start(m, &agent_dir, "board-a", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m.ready_nodes() == 1));
    let pod = |name: &str, image: &str, node: &str| {
        let node_line = if node.is_empty() {
            String::new()
        } else {
            format!("  nodeName: {node}\n")
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{node_line}  \
             terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n"
        )
    };
    // The image's Entrypoint, Cmd, Env and WorkingDir run; layer 2's whiteout hides motd.
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&pod("web", "demo:multi", ""))));
    assert!(
        eventually(Duration::from_secs(30), || {
            let out = m.cli(&["logs", "web"]);
            String::from_utf8_lossy(&out.stdout).contains("opt")
        }),
        "the pod never logged; status: {:?}",
        m.pod("web").map(|p| p["status"].clone())
    );
    let logs = ok_stdout(&m.cli(&["logs", "web"]));
    assert!(logs.contains("hello from the image config"), "{logs}");
    assert!(logs.contains("/data"), "WorkingDir: {logs}");
    assert!(
        logs.contains("No such file"),
        "cat /etc/motd after its whiteout: {logs}"
    );
    assert!(!logs.contains("removed by a whiteout"), "{logs}");

    // The scheduler knows the image's platforms.
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&pod("armonly", "demo:arm64", "")),
    ));
    let expect = "0/1 nodes are available: 1 node(s) didn't match the image's platform";
    assert!(
        eventually(Duration::from_secs(10), || {
            m.pod("armonly").is_some_and(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["message"].as_str().is_some_and(|s| s.contains(expect)))
            })
        }),
        "{:?}",
        m.pod("armonly").map(|p| p["status"].clone())
    );
    // Bound by hand past the scheduler, the agent says why it cannot run it.
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&pod("pinned", "demo:arm64", "board-a")),
    ));
    assert!(
        eventually(Duration::from_secs(15), || waiting_message(m, "pinned")
            == r#"image "demo:arm64" has no linux/amd64 variant (has: linux/arm64)"#),
        "{}",
        waiting_message(m, "pinned")
    );

    // Importing an amd64 image under that name: the scheduler places the waiting pod.
    let retag = f.root.join("retag.tar");
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:amd64", f.layout.display()))
        .arg(format!("oci-archive:{}:demo:arm64", retag.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok_stdout(&m.cli(&["image", "import", retag.to_str().unwrap()]));
    assert!(
        eventually(Duration::from_secs(10), || m
            .pod("armonly")
            .is_some_and(|p| p["spec"]["nodeName"] == "board-a")),
        "an image import does not wake the scheduler"
    );

    // Removal waits for the pods that use the image, unless forced.
    let out = m.cli(&["image", "rm", "demo:multi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is used by pod default/web"), "{err}");
    ok_stdout(&m.cli(&[
        "delete",
        "pod",
        "web",
        "armonly",
        "pinned",
        "--grace-period",
        "0",
        "--force",
    ]));
    assert!(eventually(Duration::from_secs(15), || m.pods().is_empty()));
    let before = std::fs::read_dir(f.root.join("master/blobs/sha256"))
        .unwrap()
        .count();
    ok_stdout(&m.cli(&["image", "rm", "demo:multi", "demo:arm64"]));
    let after = std::fs::read_dir(f.root.join("master/blobs/sha256"))
        .unwrap()
        .count();
    assert!(
        after < before,
        "the removed images' own blobs are collected ({before} -> {after})"
    );
    let ls = ok_stdout(&m.cli(&["image", "ls"]));
    assert!(ls.contains("amd64") && !ls.contains("multi"), "{ls}");
    // The amd64 image's blobs remain whole: a new node can still pull it.
    let cache = joined_cache(m, &f.root.join("late"), "late-node", CacheLimits::default());
    cache.prepare("demo:amd64", PullPolicy::Always).unwrap();
}

#[test]
fn broken_archives_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let blobs = dir.path().join("master/blobs/sha256");
    let garbage = dir.path().join("garbage.tar");
    std::fs::write(&garbage, vec![0x5au8; 10_000]).unwrap();
    let out = m.cli(&["image", "import", garbage.to_str().unwrap(), "--name", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("error:"), "{err}");
    // A layout whose manifest names a layer the archive lacks.
    let work = dir.path().join("work");
    let layout = work.join("layout");
    std::fs::create_dir_all(&work).unwrap();
    let st = Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success());
    let img = format!("{}:t", layout.display());
    assert!(
        Command::new("umoci")
            .args(["new", "--image", &img])
            .status()
            .unwrap()
            .success()
    );
    std::fs::create_dir_all(work.join("src")).unwrap();
    std::fs::write(work.join("src/file"), "x".repeat(5000)).unwrap();
    assert!(
        Command::new("umoci")
            .args(["insert", "--image", &img])
            .arg(work.join("src"))
            .arg("/src")
            .status()
            .unwrap()
            .success()
    );
    let (layer, path) = largest_layer(&layout, "t");
    std::fs::remove_file(&path).unwrap();
    let tar = dir.path().join("missing.tar");
    archive(&layout, &tar).unwrap();
    let out = m.cli(&["image", "import", tar.to_str().unwrap(), "--name", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&format!("layer {layer} is not in the archive")),
        "{err}"
    );
    // Tampered content under a digest's name.
    std::fs::write(&path, "tampered").unwrap();
    archive(&layout, &tar).unwrap();
    let out = m.cli(&["image", "import", tar.to_str().unwrap(), "--name", "x"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("content has digest"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "nothing kept"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("master/blobs/tmp"))
            .unwrap()
            .count(),
        0
    );
    let ls = m.cli(&["image", "ls"]);
    assert!(String::from_utf8_lossy(&ls.stderr).contains("No images found"));
}

#[test]
fn archives_written_by_skopeo_import_docker_and_oci_alike() {
    let f = fixture();
    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let layout = f.layout.display().to_string();
    // A `docker save`-format tarball, named by its RepoTags.
    let docker = f.root.join("docker.tar");
    skopeo(&[
        "copy",
        &format!("oci:{layout}:amd64"),
        &format!("docker-archive:{}:demo:docker", docker.display()),
    ]);
    let out = ok_stdout(&f.master.cli(&["image", "import", docker.to_str().unwrap()]));
    assert!(
        out.contains("imported demo:docker sha256:") && out.contains("linux/amd64"),
        "{out}"
    );
    // An OCI archive of the two-platform index, as `skopeo copy --all ... oci-archive:`
    // writes it, named by its own annotation.
    let multi = f.root.join("multi.tar");
    skopeo(&[
        "copy",
        "--all",
        &format!("oci:{layout}:multi"),
        &format!("oci-archive:{}:demo:skopeo", multi.display()),
    ]);
    let out = ok_stdout(&f.master.cli(&["image", "import", multi.to_str().unwrap()]));
    assert!(
        out.contains("imported demo:skopeo") && out.contains("linux/amd64, linux/arm64"),
        "{out}"
    );

    // The docker tarball's layers are the same layers (same diff ids): one unpacked copy.
    let cache = joined_cache(
        &f.master,
        &f.root.join("node"),
        "n1",
        CacheLimits::default(),
    );
    let a = cache
        .prepare("demo:amd64", PullPolicy::IfNotPresent)
        .unwrap();
    let d = cache
        .prepare("demo:docker", PullPolicy::IfNotPresent)
        .unwrap();
    let s = cache
        .prepare("demo:skopeo", PullPolicy::IfNotPresent)
        .unwrap();
    assert_eq!(a.layers, d.layers);
    assert_eq!(a.layers, s.layers);
    assert_eq!(d.config.working_dir, "/data");

    // The master gone, `Always` runs what the node has (an offline site keeps working), and
    // an image the node lacks says why it cannot be pulled.
    let Fixture { master, _dir, .. } = f;
    master.kill9();
    let again = cache.prepare("demo:amd64", PullPolicy::Always).unwrap();
    assert_eq!(again.layers, a.layers);
    let err = cache.prepare("demo:arm64", PullPolicy::Always).unwrap_err();
    assert!(err.to_string().contains("cannot reach the master"), "{err}");
}

#[test]
fn blobs_need_a_node_or_admin_token_and_honour_ranges() {
    let f = fixture();
    let m = &f.master;
    let facts = bramble_api::wire::NodeFacts::default();
    let node = bramble_agent::join::join(&m.url, &m.join_token(), "reader", &facts).unwrap();
    let (digest, path) = largest_layer(&f.layout, "amd64");
    let full = std::fs::read(&path).unwrap();
    let mut config = ureq::Agent::config_builder().http_status_as_error(false);
    if let Some(ca) = &m.ca_pem {
        config = config.tls_config(bramble_tests::ureq_tls(ca));
    }
    let agent: ureq::Agent = config.build().into();
    let get = |p: &str, token: Option<&str>, range: Option<&str>| {
        let mut r = agent.get(format!("{}{p}", m.url));
        if let Some(t) = token {
            r = r.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(x) = range {
            r = r.header("Range", x);
        }
        let resp = r.call().unwrap();
        let code = resp.status().as_u16();
        let content_range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap();
        (code, content_range, body)
    };
    let blob = format!("/bramble/v1/blobs/{digest}");
    assert_eq!(get(&blob, None, None).0, 401);
    assert_eq!(get(&blob, Some("not-a-token"), None).0, 401);
    let (code, _, body) = get(&blob, Some(&node.node_token), None);
    assert_eq!(
        (code, bramble_tests::oci::sha256(&body)),
        (200, digest.clone())
    );
    assert_eq!(body, full);
    // A resumed download: the rest from an offset.
    let (code, range, body) = get(&blob, Some(&node.node_token), Some("bytes=100-"));
    assert_eq!(code, 206);
    assert_eq!(body, full[100..]);
    assert_eq!(
        range.unwrap(),
        format!("bytes 100-{}/{}", full.len() - 1, full.len())
    );
    let past = format!("bytes={}-", full.len() + 1);
    assert_eq!(get(&blob, Some(&node.node_token), Some(&past)).0, 416);
    assert_eq!(
        get(
            "/bramble/v1/blobs/sha256:nothex",
            Some(&node.node_token),
            None
        )
        .0,
        400
    );
    let missing = format!("/bramble/v1/blobs/sha256:{}", "0".repeat(64));
    assert_eq!(get(&missing, Some(&node.node_token), None).0, 404);
    // A node token reads images, not the rest of the API.
    assert_eq!(
        get(
            "/bramble/v1/images/resolve?reference=demo:amd64",
            Some(&node.node_token),
            None
        )
        .0,
        200
    );
    assert_eq!(get("/api/v1/pods", Some(&node.node_token), None).0, 401);
    // Images enter by import only.
    let r = m
        .http()
        .request(
            "POST",
            "/apis/bramble.io/v1/images",
            Some("application/json"),
            b"{}",
            true,
        )
        .unwrap();
    assert_eq!(r.code, 405);
    assert!(String::from_utf8_lossy(&r.body).contains("bramble image import"));
}
