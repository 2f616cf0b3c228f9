//! The real kubectl against a real master: every kubectl this machine has (Debian's 1.20,
//! unpacked by `scripts/setup` to /opt/bramble-test/kubectl-1.20, and any `kubectl` on PATH)
//! works the cluster through the master's `kubeconfig.yaml`: discovery, server-side tables
//! (`-o wide`, `-A`, `get all`), `-o json`, a graceful delete it waits for, errors, `apply -f`
//! and re-apply (strategic merge patches), `diff` (a server dry run), `label`, strict field
//! validation.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bramble_tests::{HollowProcess, MasterProcess, eventually, ok_stdout};

const DEBIAN_KUBECTL: &str = "/opt/bramble-test/kubectl-1.20";

/// The kubectls to test: Debian's (required: `scripts/setup` unpacks it) and the one on PATH.
fn kubectls() -> Vec<PathBuf> {
    assert!(
        Path::new(DEBIAN_KUBECTL).exists(),
        "{DEBIAN_KUBECTL} is missing: run scripts/setup"
    );
    let mut out = vec![PathBuf::from(DEBIAN_KUBECTL)];
    if let Ok(path) = std::env::var("PATH")
        && let Some(k) = std::env::split_paths(&path)
            .map(|d| d.join("kubectl"))
            .find(|k| k.is_file())
    {
        out.push(k);
    }
    out
}

struct Kubectl<'a> {
    exe: &'a Path,
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl<'_> {
    /// kubectl with this kubeconfig and cache, and `args`.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.exe);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .env_remove("KUBECONFIG");
        c
    }

    /// As [`command`](Self::command) with a request timeout (before `args`: after an exec's
    /// `--` it would be the command's).
    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--request-timeout", "30s"];
        all.extend_from_slice(args);
        self.command(&all).output().unwrap()
    }

    /// stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}{}",
            self.exe.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// The words of the line of `table` whose first word is `first`.
fn row<'a>(table: &'a str, first: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&first))
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: busybox, command: [sleep, '3600']}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
";

#[test]
fn kubectl_reads_the_cluster_with_the_masters_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "kube", 1, &[]).unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 1));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(WEB)));
    assert!(eventually(Duration::from_secs(30), || {
        let pods = m.pods();
        pods.len() == 2 && pods.iter().all(|p| p["status"]["phase"] == "Running")
    }));
    let kubeconfig = dir.path().join("master/kubeconfig.yaml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
        0o600,
        "the kubeconfig holds the admin token"
    );
    for exe in kubectls() {
        let k = Kubectl {
            exe: &exe,
            kubeconfig: kubeconfig.clone(),
            cache: tempfile::tempdir().unwrap(),
        };
        let who = exe.display().to_string();
        let version = k.ok(&["version"]);
        assert!(version.contains("v1.32.0-bramble"), "{who}: {version}");

        let resources = k.ok(&["api-resources"]);
        for (name, short, version, kind) in [
            ("pods", "po", "v1", "Pod"),
            ("deployments", "deploy", "apps/v1", "Deployment"),
            ("cronjobs", "cj", "batch/v1", "CronJob"),
            ("configmaps", "cm", "v1", "ConfigMap"),
        ] {
            let r = row(&resources, name).unwrap_or_else(|| panic!("{who}: {resources}"));
            assert!(
                r.contains(&short) && r.contains(&version) && r.contains(&kind),
                "{who}: {r:?}"
            );
        }

        let nodes = k.ok(&["get", "nodes"]);
        let node = row(&nodes, "kube-0").unwrap_or_else(|| panic!("{who}: {nodes}"));
        assert_eq!(node[1], "Ready", "{who}: {nodes}");

        // Server-side tables: bramble get's columns, the wide ones with -o wide, the
        // namespace from each row's metadata with -A.
        let pods = k.ok(&["get", "pods"]);
        assert!(
            pods.starts_with("NAME") && pods.contains("READY") && pods.contains("Running"),
            "{who}: {pods}"
        );
        assert!(!pods.contains("NODE"), "{who}: {pods}");
        let wide = k.ok(&["get", "pods", "-o", "wide"]);
        assert!(
            wide.contains("NODE") && wide.contains("kube-0"),
            "{who}: {wide}"
        );
        let all_ns = k.ok(&["get", "pods", "-A"]);
        assert!(
            all_ns.starts_with("NAMESPACE") && all_ns.contains("\ndefault "),
            "{who}: {all_ns}"
        );
        let all = k.ok(&["get", "all"]);
        for want in [
            "deployment.apps/web",
            "service/web",
            "replicaset.apps/web-",
            "pod/web-",
        ] {
            assert!(all.contains(want), "{who}: {want} missing from {all}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&k.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
        assert_eq!(json["kind"], "Deployment", "{who}");
        assert_eq!(json["spec"]["replicas"], 2, "{who}");

        // Errors as kubectl words them.
        let missing = k.run(&["get", "pod", "nosuch"]);
        assert!(!missing.status.success());
        let err = String::from_utf8_lossy(&missing.stderr);
        assert!(
            err.contains("Error from server (NotFound)") && err.contains("nosuch"),
            "{who}: {err}"
        );
        let unknown = k.run(&["get", "widgets"]);
        assert!(
            String::from_utf8_lossy(&unknown.stderr)
                .contains("the server doesn't have a resource type \"widgets\""),
            "{who}"
        );

        // A graceful delete of a bound pod: kubectl waits for it to go (watching by
        // fieldSelector), and the ReplicaSet replaces it.
        let web_pods = || {
            m.pods()
                .into_iter()
                .filter(|p| p["metadata"]["labels"]["app"] == "web")
                .collect::<Vec<_>>()
        };
        let victim = web_pods()[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let out = k.ok(&["delete", "pod", &victim]);
        assert!(
            out.contains(&format!("pod \"{victim}\" deleted")),
            "{who}: {out}"
        );
        assert!(
            m.pod(&victim).is_none(),
            "{who}: kubectl returned before the pod was gone"
        );
        assert!(eventually(Duration::from_secs(30), || web_pods().len() == 2));

        // apply -f: create, then re-apply after an edit (a strategic merge patch with the
        // last-applied annotation), diff (a server dry run that changes nothing), label.
        // Debian's 1.20 validates and diffs against OpenAPI v2 (protobuf), 1.32 leaves
        // validation to the server and diffs with OpenAPI v3.
        let old = exe == Path::new(DEBIAN_KUBECTL);
        let name = if old { "applied-old" } else { "applied-new" };
        let file = dir.path().join(format!("{name}.yaml"));
        let manifest = |replicas: u32, extra: &str| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: c, image: busybox, command: [sleep, '3600']}}]\n{extra}"
            )
        };
        let apply = |k: &Kubectl| k.run(&["apply", "-f", file.to_str().unwrap()]);
        let deployment = || {
            m.http()
                .get(&format!(
                    "/apis/apps/v1/namespaces/default/deployments/{name}"
                ))
                .unwrap()
                .json()
        };
        let replicas = || deployment()["spec"]["replicas"].clone();
        std::fs::write(&file, manifest(1, "")).unwrap();
        let out = apply(&k);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("created"),
            "{who}: {out:?}"
        );
        std::fs::write(&file, manifest(2, "")).unwrap();
        {
            let diff = k.run(&["diff", "-f", file.to_str().unwrap()]);
            let text = String::from_utf8_lossy(&diff.stdout);
            assert_eq!(diff.status.code(), Some(1), "{who}: {diff:?}");
            assert!(
                text.contains("-  replicas: 1") && text.contains("+  replicas: 2"),
                "{who}: {text}"
            );
            assert_eq!(
                replicas(),
                1,
                "{who}: the diff's dry run changed the Deployment"
            );
        }
        let out = apply(&k);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("configured"),
            "{who}: {out:?}"
        );
        assert_eq!(replicas(), 2, "{who}");
        let d = deployment();
        assert!(
            d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                .is_string(),
            "{who}: {d}"
        );
        // apply --server-side (an apply patch) and edit (GET, then a strategic merge patch
        // of what the editor changed).
        std::fs::write(&file, manifest(3, "")).unwrap();
        let out = k.ok(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
        assert!(out.contains("serverside-applied"), "{who}: {out}");
        assert_eq!(replicas(), 3, "{who}");
        let mut edit = k.command(&["edit", "deployment", name]);
        edit.env("EDITOR", "sed -i s/replicas:\\ 3/replicas:\\ 2/");
        let out = edit.output().unwrap();
        assert!(out.status.success(), "{who}: {out:?}");
        assert_eq!(replicas(), 2, "{who}");
        k.ok(&["label", "deployment", name, "tier=front"]);
        let d = deployment();
        assert_eq!(d["metadata"]["labels"]["tier"], "front", "{who}: {d}");
        {
            // An unknown field is refused by name: by the server (strict field validation,
            // 1.32) or by kubectl against the schemas of OpenAPI v2 (1.20).
            std::fs::write(&file, manifest(2, "  bogus: 1\n")).unwrap();
            let out = apply(&k);
            assert!(!out.status.success(), "{who}");
            let err = String::from_utf8_lossy(&out.stderr);
            let named = if old {
                err.contains("unknown field \"bogus\" in DeploymentSpec")
            } else {
                err.contains("strict decoding error: unknown field \"spec.bogus\"")
            };
            assert!(named, "{who}: {err}");
        }

        // scale (the /scale subresource), rollout status|history|undo (undo is a JSON patch).
        let deploy = format!("deployment/{name}");
        k.ok(&["scale", &deploy, "--replicas=3"]);
        assert_eq!(replicas(), 3, "{who}");
        k.ok(&["set", "image", &deploy, "c=busybox:2"]);
        let status = k.ok(&["rollout", "status", &deploy, "--timeout=60s"]);
        assert!(
            status.contains("successfully rolled out"),
            "{who}: {status}"
        );
        let history = k.ok(&["rollout", "history", &deploy]);
        assert!(
            row(&history, "1").is_some() && row(&history, "2").is_some(),
            "{who}: {history}"
        );
        let undo = k.ok(&["rollout", "undo", &deploy]);
        assert!(undo.contains("rolled back"), "{who}: {undo}");
        assert_eq!(
            deployment()["spec"]["template"]["spec"]["containers"][0]["image"],
            "busybox",
            "{who}"
        );

        // explain reads the generated schemas: OpenAPI v3 (kubectl >= 1.27) or v2 (1.20).
        {
            let explained = k.ok(&["explain", "pod.spec.containers"]);
            assert!(
                explained.contains("imagePullPolicy")
                    && explained.contains("One container of a pod"),
                "{who}: {explained}"
            );
            let explained = k.ok(&["explain", "deployment.spec.strategy"]);
            assert!(explained.contains("rollingUpdate"), "{who}: {explained}");
        }

        // rollout restart: a strategic patch of the template's restartedAt annotation,
        // which rolls the pods.
        k.ok(&["rollout", "restart", &deploy]);
        assert!(
            deployment()["spec"]["template"]["metadata"]["annotations"]
                ["kubectl.kubernetes.io/restartedAt"]
                .is_string(),
            "{who}: {}",
            deployment()
        );
        let status = k.ok(&["rollout", "status", &deploy, "--timeout=60s"]);
        assert!(
            status.contains("successfully rolled out"),
            "{who}: {status}"
        );
        k.ok(&["annotate", &deploy, "note=kept"]);
        assert_eq!(
            deployment()["metadata"]["annotations"]["note"],
            "kept",
            "{who}"
        );
        k.ok(&["cordon", "kube-0"]);
        let node = m.http().get("/api/v1/nodes/kube-0").unwrap().json();
        assert_eq!(node["spec"]["unschedulable"], true, "{who}");

        // cordon and drain: the node's pods are found by spec.nodeName and deleted (1.32
        // sends its DeleteOptions as protobuf); their owners' new pods wait for a node.
        // A server-side dry run of the drain (1.32 evicts with protobuf bodies carrying
        // dryRun) changes nothing. (1.20 deletes with a dry run, then waits for the pods to
        // go, which they do not.)
        if !who.ends_with("kubectl-1.20") {
            let before = web_pods().len();
            k.ok(&["drain", "kube-0", "--ignore-daemonsets", "--dry-run=server"]);
            assert!(
                bramble_tests::consistently(Duration::from_secs(2), || web_pods().len() == before
                    && m.pods()
                        .iter()
                        .all(|p| p["metadata"]["deletionTimestamp"].is_null())),
                "{who}: the dry run drained"
            );
            k.ok(&["uncordon", "kube-0"]);
        }
        k.ok(&["drain", "kube-0", "--ignore-daemonsets", "--timeout=60s"]);
        let node = m.http().get("/api/v1/nodes/kube-0").unwrap().json();
        assert_eq!(node["spec"]["unschedulable"], true, "{who}");
        assert!(
            eventually(Duration::from_secs(30), || m
                .pods()
                .iter()
                .all(|p| p["spec"]["nodeName"].is_null())),
            "{who}: pods left on the drained node"
        );
        k.ok(&["uncordon", "kube-0"]);
        assert!(
            eventually(Duration::from_secs(30), || web_pods().len() == 2
                && m.pods().iter().all(|p| p["status"]["phase"] == "Running")),
            "{who}: the pods did not come back after uncordon"
        );

        // get -w: each event a one-row Table with the same columns. The list comes first
        // (a header and the 3 pods), then the events of a fourth pod until it runs.
        let mut watch = k
            .command(&["get", "pods", "-w", "-l", &format!("app={name}")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let next = || rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let lines: Vec<String> = (0..4).map(|_| next()).collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].contains("STATUS"),
            "{who}: {lines:?}"
        );
        let listed: Vec<&str> = lines[1..]
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        k.ok(&["scale", &deploy, "--replicas=4"]);
        let mut events = Vec::new();
        loop {
            let line = next();
            let new_pod = line
                .split_whitespace()
                .next()
                .is_some_and(|n| !listed.contains(&n));
            let running = line.contains("Running");
            events.push(line);
            if new_pod && running {
                break;
            }
        }
        watch.kill().unwrap();
        let _ = watch.wait();
        assert!(
            events
                .iter()
                .all(|l| l.contains("Running") || l.contains("Pending")),
            "{who}: events without the status column: {events:?}"
        );

        let info = k.ok(&["cluster-info"]);
        assert!(
            info.contains("is running at") && info.contains(&m.url),
            "{who}: {info}"
        );
    }

    // `bramble kubeconfig --user` makes a token of its own: a reader may read, not delete.
    let text = ok_stdout(&m.cli(&["kubeconfig", "--user", "viewer", "--role", "reader"]));
    let reader = dir.path().join("reader.yaml");
    std::fs::write(&reader, text).unwrap();
    for exe in kubectls() {
        let k = Kubectl {
            exe: &exe,
            kubeconfig: reader.clone(),
            cache: tempfile::tempdir().unwrap(),
        };
        assert!(k.ok(&["get", "deployments"]).contains("web"));
        let denied = k.run(&["delete", "deployment", "web"]);
        assert!(!denied.status.success());
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("Forbidden"),
            "{}",
            String::from_utf8_lossy(&denied.stderr)
        );
    }
}

/// The official Python client (Debian's `python3-kubernetes`, installed by `scripts/setup`):
/// lists, watches, creates, patches and deletes pods and Deployments
/// (`tests/python/kube_client.py`).
#[test]
fn the_official_python_client_lists_watches_creates_patches_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "py", 1, &[]).unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 1));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kube_client.py");
    // Debian's python3, where python3-kubernetes is (not a pyenv one first on PATH).
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(dir.path().join("master/kubeconfig.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("ok\n"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What it did, seen from the master: the Deployment it scaled and deleted is gone, and
    // so are its pods.
    assert!(
        m.http()
            .get("/apis/apps/v1/namespaces/default/deployments/py-web")
            .unwrap()
            .code
            == 404
    );
    assert!(eventually(Duration::from_secs(30), || m.pods().is_empty()));
}

/// What a hostile or broken client sends to the endpoints kubectl uses: discovery without a
/// token, a patch nested 100,000 deep, a strategic patch without merge keys, unknown patch
/// types and directives, a bad field selector, a dry run of another kind, a Scale out of
/// range, a reader token's writes. Each is refused with its reason; nothing changes.
#[test]
fn hostile_kubectl_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(WEB)));
    let h = m.http();
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let before = h.get(path).unwrap().json();
    let patch = |ct: &str, body: &[u8]| h.request("PATCH", path, Some(ct), body, true).unwrap();
    for p in ["/version", "/api", "/apis", "/api/v1", "/openapi/v3"] {
        assert_eq!(
            h.request("GET", p, None, b"", false).unwrap().code,
            401,
            "{p}"
        );
    }
    let deep = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let r = patch("application/merge-patch+json", deep.as_bytes());
    assert_eq!(r.code, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = patch(
        "application/strategic-merge-patch+json",
        br#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#,
    );
    assert_eq!(r.code, 422);
    assert!(
        String::from_utf8_lossy(&r.body)
            .contains("spec.template.spec.containers: element 0 has no merge key"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = patch(
        "application/strategic-merge-patch+json",
        br#"{"spec":{"$explode":1}}"#,
    );
    assert_eq!(r.code, 422, "{}", String::from_utf8_lossy(&r.body));
    let r = patch(
        "application/json-patch+json",
        br#"[{"op":"remove","path":"/nope"}]"#,
    );
    assert_eq!(r.code, 422, "{}", String::from_utf8_lossy(&r.body));
    let r = patch("application/x-who-knows", b"{}");
    assert_eq!(r.code, 415);
    // A patch whose result is invalid is refused by the API's own validation.
    let r = patch(
        "application/merge-patch+json",
        br#"{"spec":{"replicas":-4}}"#,
    );
    assert_eq!(r.code, 422, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("spec.replicas"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = h
        .request(
            "PATCH",
            &format!("{path}?dryRun=Some"),
            Some("application/merge-patch+json"),
            br#"{"spec":{"replicas":9}}"#,
            true,
        )
        .unwrap();
    assert_eq!(r.code, 400, "an unknown dry run must not be ignored");
    let r = h
        .request(
            "PUT",
            &format!("{path}/scale"),
            Some("application/json"),
            br#"{"spec":{"replicas":99999999999}}"#,
            true,
        )
        .unwrap();
    assert_eq!(r.code, 422, "{}", String::from_utf8_lossy(&r.body));
    let r = h
        .get("/api/v1/pods?fieldSelector=spec.secretThing%3Dx")
        .unwrap();
    assert_eq!(r.code, 400);
    let r = h.get("/api/v1/pods?fieldSelector=nonsense").unwrap();
    assert_eq!(r.code, 400);
    // The reader role reads discovery and tables, and writes nothing.
    let reader = m.http_as(
        std::fs::read_to_string(dir.path().join("master/reader.token"))
            .unwrap()
            .trim(),
    );
    assert_eq!(reader.get("/apis/apps/v1").unwrap().code, 200);
    for (method, p, ct) in [
        ("PATCH", path.to_string(), "application/merge-patch+json"),
        ("PUT", format!("{path}/scale"), "application/json"),
    ] {
        let r = reader
            .request(method, &p, Some(ct), br#"{"spec":{"replicas":5}}"#, true)
            .unwrap();
        assert_eq!(r.code, 403, "{method} {p}");
    }
    let after = h.get(path).unwrap().json();
    assert_eq!(before["spec"], after["spec"]);
    // (The controllers write status and annotations meanwhile; the spec's generation
    // counts every change of the spec.)
    assert_eq!(
        before["metadata"]["generation"], after["metadata"]["generation"],
        "a refused request changed the Deployment"
    );
}

/// A pod serving `hi` over HTTP on 8080, on a real board.
const BOX: &str = "apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  nodeName: board-a
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'echo started; echo hi > /tmp/index.html; exec httpd -f -p 8080 -h /tmp']
";

/// A port on 127.0.0.1 nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /index.html` through 127.0.0.1:`port`; the answer, or why there is none.
fn http_get(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Runs `port-forward` (a kubectl or bramble command) to `remote` until dropped; returns
/// the local port once it listens.
struct Forward(std::process::Child);

impl Forward {
    /// Waits for its "Forwarding from" line (a test connection would itself be forwarded).
    fn start(mut c: Command, local: u16) -> Forward {
        use std::io::BufRead;
        let mut child = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // The rest is drained: a closed pipe would end it at its next line.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        assert!(
            line.starts_with("Forwarding from") && line.contains(&local.to_string()),
            "port-forward did not listen on {local}: {line:?}"
        );
        Forward(child)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Output, stderr and exit code of a command fed `stdin`.
fn run_with_stdin(mut c: Command, stdin: &str) -> (String, String, Option<i32>) {
    use std::io::Write;
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.status.code(),
    )
}

/// exec and port-forward through the board's own connection back to the master (the
/// board is never dialled): every kubectl on the machine (1.20 speaks SPDY; 1.32 a
/// websocket for exec, SPDY for port-forward), the official Python client (websocket v4)
/// and `bramble` (its own framing). Output, stderr, stdin, exit codes, a terminal, HTTP
/// through a forwarded port, and a forward to a closed port that ends cleanly.
#[test]
fn exec_and_port_forward_reach_a_pod_through_the_boards_connection_back() {
    bramble_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let _c = bramble_tests::AgentDirCleanup(dir.path().join("agent"));
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = bramble_tests::AgentProcess::start(
        &m,
        &dir.path().join("agent"),
        "board-a",
        &["--metrics-interval", "1s"],
    )
    .unwrap();
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(BOX)));
    let ticker = "apiVersion: v1\nkind: Pod\nmetadata: {name: ticker}\nspec:\n  nodeName: board-a\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: busybox\n    command: [sh, -c, 'trap \"exit 0\" TERM; while true; do echo tick; sleep 0.2; done']\n";
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(ticker)));
    assert!(
        eventually(Duration::from_secs(30), || m
            .pod("box")
            .is_some_and(|p| p["status"]["phase"] == "Running")),
        "the pod never ran: {:?}",
        m.pod("box")
    );
    // httpd is up once a probe through exec finds it listening.
    assert!(eventually(Duration::from_secs(20), || m
        .cli(&[
            "exec",
            "box",
            "--",
            "wget",
            "-q",
            "-O-",
            "http://127.0.0.1:8080/index.html"
        ])
        .stdout
        .starts_with(b"hi")));
    let kubeconfig = dir.path().join("master/kubeconfig.yaml");
    for exe in kubectls() {
        let k = Kubectl {
            exe: &exe,
            kubeconfig: kubeconfig.clone(),
            cache: tempfile::tempdir().unwrap(),
        };
        let who = exe.display().to_string();
        assert_eq!(k.ok(&["logs", "box"]), "started\n", "{who}");
        // Following: the first line arrives on a stream that stays open.
        {
            use std::io::BufRead;
            let mut f = k
                .command(&["logs", "-f", "box"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(f.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "started\n", "{who}");
            assert!(f.try_wait().unwrap().is_none(), "{who}: logs -f ended");
            let _ = f.kill();
            let _ = f.wait();
        }
        let described = k.ok(&["describe", "pod", "box"]);
        for want in [
            "Name:",
            "box",
            "board-a",
            "Running",
            "Containers:",
            "main:",
            "Events:",
        ] {
            assert!(
                described.contains(want),
                "{who}: {want} missing from {described}"
            );
        }
        let yaml = k.ok(&["get", "pod", "box", "-o", "yaml"]);
        assert!(
            yaml.contains("name: box") && yaml.contains("nodeName: board-a"),
            "{who}: {yaml}"
        );
        // top: the agent's reports through metrics.k8s.io (no metrics-server).
        let nodes = k.ok(&["top", "nodes"]);
        let r = row(&nodes, "board-a").unwrap_or_else(|| panic!("{who}: {nodes}"));
        assert!(
            r[1].ends_with('m') && r[3].ends_with("Mi"),
            "{who}: {nodes}"
        );
        // The pod's first report comes within two intervals of its start.
        assert!(
            eventually(Duration::from_secs(10), || k
                .run(&["top", "pod", "box"])
                .status
                .success()),
            "{who}: no metrics for the pod"
        );
        let pods = k.ok(&["top", "pod", "box", "--containers"]);
        let r = row(&pods, "box").unwrap_or_else(|| panic!("{who}: {pods}"));
        assert_eq!(r[1], "main", "{who}: {pods}");
        assert_eq!(
            k.ok(&["exec", "box", "--", "echo", "hello"]),
            "hello\n",
            "{who}"
        );
        let out = k.run(&[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]);
        assert_eq!(out.status.code(), Some(3), "{who}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{who}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("err\n"),
            "{who}: {out:?}"
        );
        let (stdout, _, code) = run_with_stdin(
            k.command(&["exec", "-i", "box", "--", "sh", "-c", "cat; echo done"]),
            "line one\nline two\n",
        );
        assert_eq!(
            (stdout.as_str(), code),
            ("line one\nline two\ndone\n", Some(0)),
            "{who}"
        );
        // attach: the running container's output from now on; no stdin to attach to.
        {
            use std::io::BufRead;
            let mut a = k
                .command(&["attach", "ticker"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(a.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "tick\n", "{who}");
            let _ = a.kill();
            let _ = a.wait();
        }
        let out = k.run(&["attach", "-i", "ticker"]);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no stdin"),
            "{who}: {out:?}"
        );
        // The terminal's size reaches the command (the resize stream).
        let line = format!(
            "stty cols 100 rows 40; {} --kubeconfig {} --cache-dir {} exec -it box -- stty size",
            exe.display(),
            kubeconfig.display(),
            k.cache.path().display()
        );
        let mut script = Command::new("script");
        script.args(["-qec", &line, "/dev/null"]);
        let (stdout, _, _) = run_with_stdin(script, "");
        assert!(stdout.contains("40 100"), "{who}: {stdout:?}");
        // A terminal: `script` gives kubectl one; the shell's is the container's own.
        let line = format!(
            "{} --kubeconfig {} --cache-dir {} exec -it box -- sh",
            exe.display(),
            kubeconfig.display(),
            k.cache.path().display()
        );
        let mut script = Command::new("script");
        script.args(["-qec", &line, "/dev/null"]);
        let (stdout, _, code) = run_with_stdin(script, "tty; echo $((6*7)); exit 5\n");
        assert!(
            stdout.contains("/dev/pts/") && stdout.contains("42"),
            "{who}: {stdout}"
        );
        assert_eq!(code, Some(5), "{who}: {stdout}");

        let local = free_port();
        let _f = Forward::start(
            k.command(&["port-forward", "pod/box", &format!("{local}:8080")]),
            local,
        );
        for _ in 0..2 {
            let got = http_get(local).unwrap();
            assert!(
                got.starts_with("HTTP/1.") && got.ends_with("hi\n"),
                "{who}: {got}"
            );
        }
        // A closed port: the connection ends (kubectl reports it), nothing hangs.
        let closed = free_port();
        let _g = Forward::start(
            k.command(&["port-forward", "pod/box", &format!("{closed}:9999")]),
            closed,
        );
        let t = std::time::Instant::now();
        let got = http_get(closed);
        assert!(
            got.as_ref().map_or(true, String::is_empty) && t.elapsed() < Duration::from_secs(10),
            "{who}: {got:?} after {:?}",
            t.elapsed()
        );
    }

    // The official Python client's exec (websocket v4.channel.k8s.io).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kube_exec.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&kubeconfig)
        .arg("box")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.ends_with(b"ok\n"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let top = ok_stdout(&m.cli(&["top", "pods", "-A"]));
    assert!(
        row(&top, "default").is_some_and(|r| r[1] == "box" && r[2].ends_with('m')),
        "{top}"
    );
    let top = ok_stdout(&m.cli(&["top", "nodes"]));
    assert!(
        row(&top, "board-a").is_some_and(|r| r[2].ends_with('%')),
        "{top}"
    );

    // bramble's own exec and port-forward.
    assert_eq!(
        ok_stdout(&m.cli(&["exec", "box", "--", "echo", "hi"])),
        "hi\n"
    );
    let out = m.cli(&["exec", "box", "--", "sh", "-c", "echo e >&2; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("e\ncommand terminated with exit code 4")
    );
    let out = m.cli_with_stdin(&["exec", "-i", "box", "--", "cat"], Some("piped\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\n", "{out:?}");
    let out = m.cli(&["exec", "box", "-c", "nope", "--", "true"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("container \"nope\" is not valid"),
        "{out:?}"
    );
    let local = free_port();
    let mut c = Command::new(bramble_tests::bin("bramble"));
    c.args(["--config"])
        .arg(dir.path().join("master/client.yaml"))
        .args(["port-forward", "box", &format!("{local}:8080")]);
    let _f = Forward::start(c, local);
    assert!(http_get(local).unwrap().ends_with("hi\n"));
    let metrics = String::from_utf8_lossy(&m.http().get("/metrics").unwrap().body).to_string();
    assert!(metrics.contains("streams_opened"), "{metrics}");
}

/// What a hostile or unlucky client or board sends to the stream endpoints: no token, a
/// reader's token, no upgrade, no command, a pod on an unknown node, a stream id that was
/// never asked for (or asked of another node), a user's token on the boards' endpoint, a
/// node that does not connect back. Each fails at once (or within the connect-back bound)
/// with its reason.
#[test]
fn hostile_stream_requests_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let mut h = HollowProcess::start(&m, &dir.path().join("hollow"), "hs", 1, &[]).unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 1));
    let pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: busybox}}]\n"
        )
    };
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&pod("p", "hs-0"))));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&pod("ghost", "nowhere"))));
    let exec = "/api/v1/namespaces/default/pods/p/exec?command=true&stdout=true";
    let h_admin = m.http();
    let status = |r: &bramble_tests::Reply| {
        (
            r.code,
            r.json()["message"].as_str().unwrap_or("").to_string(),
        )
    };
    let r = h_admin.request("GET", exec, None, b"", false).unwrap();
    assert_eq!(r.code, 401);
    let reader = bramble_tests::Http::with_ca(&m.url, &m.reader_token(), m.ca_pem.as_deref());
    assert_eq!(
        reader
            .upgrade_request("GET", exec, "SPDY/3.1")
            .unwrap()
            .code,
        403
    );
    let (code, msg) = status(&h_admin.get(exec).unwrap());
    assert!(
        code == 400 && msg.contains("needs an upgrade"),
        "{code} {msg}"
    );
    let (code, msg) = status(
        &h_admin
            .upgrade_request(
                "GET",
                "/api/v1/namespaces/default/pods/p/exec?stdout=true",
                "SPDY/3.1",
            )
            .unwrap(),
    );
    assert!(code == 400 && msg.contains("command"), "{code} {msg}");
    let (code, msg) = status(
        &h_admin
            .upgrade_request(
                "GET",
                "/api/v1/namespaces/default/pods/p/exec?command=true",
                "SPDY/3.1",
            )
            .unwrap(),
    );
    assert!(
        code == 400 && msg.contains("at least 1 of stdin"),
        "{code} {msg}"
    );
    let t = std::time::Instant::now();
    let (code, msg) = status(
        &h_admin
            .upgrade_request(
                "GET",
                "/api/v1/namespaces/default/pods/ghost/exec?command=true&stdout=true",
                "bramble-stream/1",
            )
            .unwrap(),
    );
    assert!(code == 503 && msg.contains("nowhere"), "{code} {msg}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let (code, msg) = status(
        &h_admin
            .upgrade_request(
                "GET",
                "/api/v1/namespaces/default/pods/p/portforward?ports=99999",
                "SPDY/3.1",
            )
            .unwrap(),
    );
    assert!(code == 400 && msg.contains("99999"), "{code} {msg}");
    // A hollow node connects back and says why it cannot: no processes to enter.
    let out = m.cli(&["exec", "p", "--", "true"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{out:?}"
    );
    // Nor has it a network namespace to forward into: the connection just ends.
    let local = free_port();
    let mut c = Command::new(bramble_tests::bin("bramble"));
    c.args(["--config"])
        .arg(dir.path().join("master/client.yaml"))
        .args(["port-forward", "p", &format!("{local}:80")]);
    let _f = Forward::start(c, local);
    let got = http_get(local);
    assert!(got.as_ref().map_or(true, String::is_empty), "{got:?}");

    // A hollow node reports no resource use: the metrics API has none, and top says why.
    let metrics = h_admin
        .get("/apis/metrics.k8s.io/v1beta1/nodes")
        .unwrap()
        .json();
    assert_eq!(metrics["items"], serde_json::json!([]), "{metrics}");
    let out = m.cli(&["top", "nodes"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("metrics not available"),
        "{out:?}"
    );

    // The boards' endpoint: a node token for an id never asked, no token, a user's token.
    let creds: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("hollow/hs-0/credentials.json")).unwrap(),
    )
    .unwrap();
    let node = bramble_tests::Http::with_ca(
        &m.url,
        creds["nodeToken"].as_str().unwrap(),
        m.ca_pem.as_deref(),
    );
    let back = "/bramble/v1/streams/00112233445566778899aabbccddeeff";
    assert_eq!(
        node.upgrade_request("GET", back, "bramble-stream/1")
            .unwrap()
            .code,
        404
    );
    assert_eq!(
        h_admin
            .upgrade_request("GET", back, "bramble-stream/1")
            .unwrap()
            .code,
        401
    );
    let anon = bramble_tests::Http::with_ca(&m.url, "", m.ca_pem.as_deref());
    assert_eq!(
        anon.upgrade_request("GET", back, "bramble-stream/1")
            .unwrap()
            .code,
        401
    );

    // A node that no longer answers (its agent is gone, not yet marked lost): the stream
    // fails within the connect-back bound, naming the node.
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    let t = std::time::Instant::now();
    let (code, msg) = status(
        &h_admin
            .upgrade_request(
                "GET",
                "/api/v1/namespaces/default/pods/p/exec?command=true&stdout=true",
                "bramble-stream/1",
            )
            .unwrap(),
    );
    assert!(
        (code == 503 && msg.contains("hs-0")) && t.elapsed() < Duration::from_secs(15),
        "{code} {msg} after {:?}",
        t.elapsed()
    );
}

/// Lists in chunks (`limit`, `continue`, as kubectl and client-go's pagers ask), watch
/// bookmarks, evictions (`kubectl drain`'s way of deleting) and propagation policies: 25
/// ConfigMaps come in pages of 10 (JSON and Tables) that add up to the whole list in order;
/// kubectl with `--chunk-size 10` prints them all; a bad token, limit or policy is refused;
/// a watch that allows bookmarks ends with one at the revision it reached.
#[test]
fn lists_come_in_chunks_watches_carry_bookmarks_and_pods_are_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let mut all = String::new();
    for i in 0..25 {
        all.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i:02}}}\ndata: {{k: v}}\n"
        ));
    }
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&all)));
    let h = m.http();
    let base = "/api/v1/namespaces/default/configmaps";
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let path = if token.is_empty() {
            format!("{base}?limit=10")
        } else {
            format!("{base}?limit=10&continue={token}")
        };
        let page = h.get(&path).unwrap().json();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            names.push(item["metadata"]["name"].as_str().unwrap().to_string());
        }
        match page["metadata"]["continue"].as_str() {
            Some(t) => {
                assert_eq!(
                    page["metadata"]["remainingItemCount"],
                    25 - names.len(),
                    "{page}"
                );
                token = t.to_string();
            }
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!((names, pages), (want, 3));
    // Tables carry the token too (kubectl's chunked get).
    let req = |path: &str| {
        h.request_with(
            "GET",
            path,
            &[("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
        )
        .unwrap()
        .json()
    };
    let t = req(&format!("{base}?limit=10"));
    assert_eq!(t["rows"].as_array().unwrap().len(), 10, "{t}");
    assert!(t["metadata"]["continue"].is_string(), "{t}");
    for exe in kubectls() {
        let k = Kubectl {
            exe: &exe,
            kubeconfig: dir.path().join("master/kubeconfig.yaml"),
            cache: tempfile::tempdir().unwrap(),
        };
        let out = k.ok(&["get", "configmaps", "--chunk-size", "10", "--no-headers"]);
        assert_eq!(out.lines().count(), 25, "{}: {out}", exe.display());
    }
    for bad in [
        format!("{base}?limit=-1"),
        format!("{base}?limit=x"),
        format!("{base}?limit=5&continue=not-a-token"),
    ] {
        assert_eq!(h.get(&bad).unwrap().code, 400, "{bad}");
    }

    // A watch that allows bookmarks ends (timeoutSeconds) with one at the revision reached.
    let list_rv: u64 = h.get(base).unwrap().json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let w = h
        .get(&format!(
            "{base}?watch=true&resourceVersion={list_rv}&allowWatchBookmarks=true&timeoutSeconds=1"
        ))
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&w.body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().expect("a bookmark");
    assert_eq!(last["type"], "BOOKMARK", "{lines:?}");
    assert_eq!(last["object"]["kind"], "ConfigMap");
    let rv: u64 = last["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv >= list_rv, "{rv} < {list_rv}");
    // Without asking, no bookmark.
    let w = h
        .get(&format!(
            "{base}?watch=true&resourceVersion={list_rv}&timeoutSeconds=1"
        ))
        .unwrap();
    assert!(!String::from_utf8_lossy(&w.body).contains("BOOKMARK"));

    // Propagation: an unknown policy is refused; Foreground deletes; Orphan leaves the
    // dependents, without their reference to the owner, and nothing collects them.
    let cm = format!("{base}/cm-00");
    let r = h
        .request(
            "DELETE",
            &cm,
            Some("application/json"),
            br#"{"propagationPolicy":"Sideways"}"#,
            true,
        )
        .unwrap();
    assert_eq!(r.code, 400);
    assert_eq!(h.get(&cm).unwrap().code, 200);
    let r = h
        .request(
            "DELETE",
            &format!("{cm}?propagationPolicy=Foreground"),
            None,
            b"",
            true,
        )
        .unwrap();
    assert_eq!(r.code, 200);
    let web = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: keep}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: keep}}\n  template:\n    metadata: {labels: {app: keep}}\n    spec:\n      containers: [{name: c, image: busybox}]\n";
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(web)));
    let owned = |kind: &str| -> Vec<serde_json::Value> {
        let path = match kind {
            "replicasets" => "/apis/apps/v1/namespaces/default/replicasets".to_string(),
            _ => "/api/v1/namespaces/default/pods".to_string(),
        };
        h.get(&path).unwrap().json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["metadata"]["labels"]["app"] == "keep")
            .cloned()
            .collect()
    };
    assert!(eventually(Duration::from_secs(20), || owned("pods").len() == 2));
    let k = Kubectl {
        exe: &kubectls()[0],
        kubeconfig: dir.path().join("master/kubeconfig.yaml"),
        cache: tempfile::tempdir().unwrap(),
    };
    k.ok(&["delete", "deployment", "keep", "--cascade=orphan"]);
    let rs = owned("replicasets");
    assert_eq!(rs.len(), 1, "the ReplicaSet was not kept: {rs:?}");
    assert!(
        rs[0]["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{rs:?}"
    );
    let rs_name = rs[0]["metadata"]["name"].as_str().unwrap().to_string();
    let r = h
        .request(
            "DELETE",
            &format!("/apis/apps/v1/namespaces/default/replicasets/{rs_name}"),
            Some("application/json"),
            br#"{"propagationPolicy":"Orphan"}"#,
            true,
        )
        .unwrap();
    assert_eq!(r.code, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        bramble_tests::consistently(Duration::from_secs(3), || {
            let pods = owned("pods");
            pods.len() == 2
                && pods.iter().all(|p| {
                    p["metadata"]["ownerReferences"]
                        .as_array()
                        .is_none_or(|a| a.is_empty())
                        && p["metadata"]["deletionTimestamp"].is_null()
                })
        }),
        "the orphaned pods were collected or kept their owner: {:?}",
        owned("pods")
    );

    // Eviction: a pod (unscheduled here) is deleted through policy/v1 Eviction; the
    // discovery that makes kubectl drain use it is there.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: ev}\nspec:\n  containers: [{name: c, image: busybox}]\n";
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(pod)));
    let eviction = serde_json::json!({
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": "ev", "namespace": "default"},
        "deleteOptions": {"gracePeriodSeconds": 0},
    });
    // Dry runs, by the query or the options, delete nothing.
    let mut dry = eviction.clone();
    dry["deleteOptions"]["dryRun"] = serde_json::json!(["All"]);
    for (path, body) in [
        (
            "/api/v1/namespaces/default/pods/ev/eviction?dryRun=All",
            &eviction,
        ),
        ("/api/v1/namespaces/default/pods/ev/eviction", &dry),
    ] {
        assert_eq!(h.post_json(path, body).unwrap().code, 201, "{path}");
        assert_eq!(
            h.get("/api/v1/namespaces/default/pods/ev").unwrap().code,
            200,
            "{path}"
        );
    }
    let r = h
        .post_json("/api/v1/namespaces/default/pods/ev/eviction", &eviction)
        .unwrap();
    assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(eventually(Duration::from_secs(10), || h
        .get("/api/v1/namespaces/default/pods/ev")
        .unwrap()
        .code
        == 404));
    assert_eq!(
        h.post_json("/api/v1/namespaces/default/pods/ev/eviction", &eviction)
            .unwrap()
            .code,
        404
    );
    let core = h.get("/api/v1").unwrap().json();
    assert!(
        core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods/eviction" && r["group"] == "policy"),
        "{core}"
    );
    let reader = bramble_tests::Http::with_ca(&m.url, &m.reader_token(), m.ca_pem.as_deref());
    assert_eq!(
        reader
            .post_json("/api/v1/namespaces/default/pods/ev/eviction", &eviction)
            .unwrap()
            .code,
        403
    );
}

/// kubectl's typed generators: `create deployment|configmap|secret|service|namespace|job|
/// cronjob` (1.32 sends them as Kubernetes protobuf, 1.20 as JSON, its configmap without a
/// Content-Type); each object comes out as asked.
#[test]
fn kubectl_create_generators_make_their_objects() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let h = m.http();
    for (i, exe) in kubectls().iter().enumerate() {
        let k = Kubectl {
            exe,
            kubeconfig: dir.path().join("master/kubeconfig.yaml"),
            cache: tempfile::tempdir().unwrap(),
        };
        let who = exe.display().to_string();
        // 1.20 makes batch/v1beta1 CronJobs, which Kubernetes 1.25 removed and Bramble never
        // served.
        let old = exe.ends_with("kubectl-1.20");
        let n = |s: &str| format!("{s}-{i}");
        let (web, none, cm, sec, svc, ns, job, cj) = (
            n("web"),
            n("none"),
            n("cm"),
            n("sec"),
            n("svc"),
            n("ns"),
            n("job"),
            n("cj"),
        );
        k.ok(&[
            "create",
            "deployment",
            &web,
            "--image=busybox",
            "--replicas=2",
            "--port=80",
        ]);
        k.ok(&[
            "create",
            "deployment",
            &none,
            "--image=busybox",
            "--replicas=0",
        ]);
        k.ok(&["create", "configmap", &cm, "--from-literal=a=b"]);
        k.ok(&["create", "secret", "generic", &sec, "--from-literal=p=q"]);
        k.ok(&["create", "service", "clusterip", &svc, "--tcp=80:8080"]);
        k.ok(&["create", "namespace", &ns]);
        k.ok(&["create", "job", &job, "--image=busybox", "--", "echo", "hi"]);
        if !old {
            k.ok(&[
                "create",
                "cronjob",
                &cj,
                "--image=busybox",
                "--schedule=*/5 * * * *",
                "--",
                "echo",
                "hi",
            ]);
        }
        let get = |path: String| {
            let r = h.get(&path).unwrap();
            assert_eq!(
                r.code,
                200,
                "{who}: {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            r.json()
        };
        let d = get(format!(
            "/apis/apps/v1/namespaces/default/deployments/{web}"
        ));
        assert_eq!(d["spec"]["replicas"], 2, "{who}: {d}");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80,
            "{who}: {d}"
        );
        let d = get(format!(
            "/apis/apps/v1/namespaces/default/deployments/{none}"
        ));
        assert_eq!(
            d["spec"]["replicas"], 0,
            "{who}: a zero replica count is kept: {d}"
        );
        assert_eq!(
            get(format!("/api/v1/namespaces/default/configmaps/{cm}"))["data"]["a"],
            "b"
        );
        assert_eq!(
            get(format!("/api/v1/namespaces/default/secrets/{sec}"))["data"]["p"],
            "cQ=="
        );
        let s = get(format!("/api/v1/namespaces/default/services/{svc}"));
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 8080, "{who}: {s}");
        get(format!("/api/v1/namespaces/{ns}"));
        let j = get(format!("/apis/batch/v1/namespaces/default/jobs/{job}"));
        assert_eq!(
            j["spec"]["template"]["spec"]["containers"][0]["command"][1],
            "hi"
        );
        if !old {
            let c = get(format!("/apis/batch/v1/namespaces/default/cronjobs/{cj}"));
            assert_eq!(c["spec"]["schedule"], "*/5 * * * *", "{who}: {c}");
        }
    }
}
