//! The real `bramble-master` on 127.0.0.1:0 with a temporary data dir, driven by the real
//! `bramble` CLI and by raw HTTP for what the CLI never sends (bad bodies, stale versions).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use bramble_tests::{MasterProcess, bin, eventually, ok_stdout, pod_json, pod_yaml};

const DEPLOYMENT_AND_SERVICE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  type: NodePort
  selector:
    app: nginx
  ports:
    - protocol: TCP
      port: 80
      targetPort: 80
      nodePort: 30080
"#;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn apply_get_describe_delete_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("app.yaml"), DEPLOYMENT_AND_SERVICE).unwrap();
    std::fs::write(
        manifests.path().join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: edge}\n",
    )
    .unwrap();
    std::fs::write(manifests.path().join("README.txt"), "not a manifest").unwrap();
    let dir_arg = manifests.path().to_str().unwrap();

    let out = ok_stdout(&m.cli(&["apply", "-f", dir_arg]));
    assert_eq!(
        out,
        "namespace/edge created\ndeployment.apps/nginx-deployment created\nservice/my-service created\n"
    );
    let out = ok_stdout(&m.cli(&["apply", "-f", dir_arg]));
    assert!(
        out.contains("deployment.apps/nginx-deployment unchanged"),
        "{out}"
    );

    // A changed manifest is "configured"; from standard input.
    let changed = DEPLOYMENT_AND_SERVICE.replace("replicas: 3", "replicas: 5");
    let out = ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&changed)));
    assert!(
        out.contains("deployment.apps/nginx-deployment configured"),
        "{out}"
    );
    assert!(out.contains("service/my-service unchanged"), "{out}");

    let table = ok_stdout(&m.cli(&["get", "deploy"]));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    // No nodes here: the controller creates pods, none becomes ready.
    assert_eq!(&row[..2], ["nginx-deployment", "0/5"]);

    let svc = ok_stdout(&m.cli(&["get", "svc", "my-service"]));
    assert!(
        svc.contains("NodePort") && svc.contains("80:30080/TCP"),
        "{svc}"
    );

    // Columns are aligned: every row's second column starts at the same offset.
    let pods_in = |ns: &str, name: &str| pod_yaml(name, ns, "app: web");
    let two = format!(
        "{}---\n{}",
        pods_in("default", "a-pod"),
        pods_in("edge", "b-longer-pod-name")
    );
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&two)));
    let all = ok_stdout(&m.cli(&["get", "pods", "-A", "-l", "app=web"]));
    let lines: Vec<&str> = all.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE   NAME"), "{all}");
    let col = lines[0].find("READY").unwrap();
    for l in &lines[1..] {
        assert_eq!(&l[col..col + 3], "0/1", "misaligned table:\n{all}");
    }
    assert_eq!(lines.len(), 3);

    // Output formats and selectors.
    let json: serde_json::Value =
        serde_json::from_str(&ok_stdout(&m.cli(&["get", "po", "a-pod", "-o", "json"]))).unwrap();
    assert_eq!(json["metadata"]["name"], "a-pod");
    assert_eq!(json["status"]["phase"], "Pending");
    let yaml = ok_stdout(&m.cli(&["get", "po", "-n", "edge", "-o", "yaml"]));
    assert!(yaml.contains("name: b-longer-pod-name"), "{yaml}");
    let names = ok_stdout(&m.cli(&["get", "pods", "-A", "-l", "app=web", "-o", "name"]));
    assert_eq!(names, "pod/a-pod\npod/b-longer-pod-name\n");
    let none = m.cli(&["get", "pods", "-l", "app=nothing"]);
    assert!(stderr(&none).contains("No resources found in default namespace."));

    let describe = ok_stdout(&m.cli(&["describe", "deploy", "nginx-deployment"]));
    assert!(
        describe.contains("Name:              nginx-deployment"),
        "{describe}"
    );
    assert!(describe.contains("replicas: 5"), "{describe}");

    // Delete by name and by file.
    let out = ok_stdout(&m.cli(&["delete", "pod", "a-pod"]));
    assert_eq!(out, "pod \"a-pod\" deleted\n");
    let missing = m.cli(&["get", "pod", "a-pod"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("pods \"a-pod\" not found"));
    let app = manifests.path().join("app.yaml");
    let out = ok_stdout(&m.cli(&["delete", "-f", app.to_str().unwrap()]));
    assert!(
        out.contains("deployment \"nginx-deployment\" deleted"),
        "{out}"
    );
    let gone = m.cli(&["delete", "svc", "my-service"]);
    assert!(!gone.status.success());
    assert!(ok_stdout(&m.cli(&["delete", "svc", "my-service", "--ignore-not-found"])).is_empty());
    // Deleting a namespace takes its objects with it.
    ok_stdout(&m.cli(&["delete", "ns", "edge"]));
    let json: serde_json::Value = serde_json::from_str(&ok_stdout(
        &m.cli(&["get", "pods", "-A", "-l", "app=web", "-o", "json"]),
    ))
    .unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 0);
    // The deleted Deployment's pods are collected.
    assert!(eventually(Duration::from_secs(10), || {
        let out = ok_stdout(&m.cli(&["get", "pods", "-A", "-o", "json"]));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    }));
}

#[test]
fn invalid_manifests_apply_nothing_and_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let text = format!(
        "{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: bad}}\nspec:\n  replicas: -1\n  selector: {{matchLabels: {{app: a}}}}\n  template:\n    metadata: {{labels: {{app: a}}}}\n    spec:\n      containers: [{{name: c, image: i}}]\n",
        pod_yaml("good", "default", "")
    );
    let out = m.cli_with_stdin(&["apply", "-f", "-"], Some(&text));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("deployment \"bad\": spec.replicas: must be >= 0, got -1"),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");
    assert!(
        !m.cli(&["get", "pod", "good"]).status.success(),
        "the valid pod must not be applied"
    );

    // Unknown but harmless fields are applied with a warning naming the path.
    let warn = pod_yaml("warned", "default", "").replace(
        "    image: busybox\n",
        "    image: busybox\n    tty: true\n",
    );
    let out = m.cli_with_stdin(&["apply", "-f", "-"], Some(&warn));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown field \"spec.containers[0].tty\" ignored"),
        "{}",
        stderr(&out)
    );

    let out = m.cli(&["get", "gizmos"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown kind \"gizmos\""));
}

#[test]
fn get_watch_prints_new_objects() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let mut child = Command::new(bin("bramble"))
        .args(["--server", &m.url, "--token", &m.token, "get", "pods", "-w"])
        .args(m.ca_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Give the watch a moment to be established, then create until it is seen.
    let mut seen = false;
    for i in 0..50 {
        ok_stdout(&m.cli_with_stdin(
            &["apply", "-f", "-"],
            Some(&pod_yaml(&format!("w{i}"), "default", "")),
        ));
        if let Ok(mut line) = rx.recv_timeout(Duration::from_millis(200)) {
            // When the list ran after the first create, it prints a header and that row.
            if line.starts_with("NAME") {
                line = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            }
            assert!(line.starts_with('w'), "unexpected watch line {line:?}");
            seen = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "bramble get -w printed nothing");
}

#[test]
fn http_errors_are_statuses_with_the_right_codes() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start_with(dir.path(), &["--watch-change-log", "4"]).unwrap();
    let h = m.http();
    let pods = "/api/v1/namespaces/default/pods";

    let r = h.request("GET", pods, None, b"", false).unwrap();
    assert_eq!(r.code, 401);
    assert_eq!(r.json()["kind"], "Status");
    let r = h.request("GET", pods, None, b"", true).unwrap();
    assert_eq!(r.code, 200);
    assert_eq!(r.json()["kind"], "PodList");

    let r = h
        .request("POST", pods, Some("application/json"), b"{not json", true)
        .unwrap();
    assert_eq!(r.code, 400, "{:?}", String::from_utf8_lossy(&r.body));
    let r = h
        .request("POST", pods, Some("text/plain"), b"{}", true)
        .unwrap();
    assert_eq!(r.code, 415);
    // No Content-Type is JSON, as Kubernetes takes it: this one is read, and is invalid.
    let r = h.request("POST", pods, None, b"{}", true).unwrap();
    assert_eq!(r.code, 422, "{:?}", String::from_utf8_lossy(&r.body));
    let big = vec![b' '; 2 << 20];
    let r = h
        .request("POST", pods, Some("application/json"), &big, true)
        .unwrap();
    assert_eq!(r.code, 413);
    let r = h
        .request("POST", pods, Some("application/yaml"), b"kind: [", true)
        .unwrap();
    assert_eq!(r.code, 400);
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for ct in ["application/json", "application/yaml"] {
        let r = h.request("POST", pods, Some(ct), &garbage, true).unwrap();
        assert!((400..500).contains(&r.code), "{ct}: {}", r.code);
    }
    let r = h
        .request(
            "PATCH",
            &format!("{pods}/x"),
            Some("application/json"),
            b"{}",
            true,
        )
        .unwrap();
    assert_eq!(r.code, 415);
    let r = h.get("/api/v1/widgets").unwrap();
    assert_eq!(r.code, 404);
    let r = h
        .get("/api/v1/namespaces/default/pods?labelSelector=a%20b%20c")
        .unwrap();
    assert_eq!(r.code, 400);

    // 422 with the field named in the causes.
    let mut bad = pod_json("bad", "default");
    bad["spec"]["containers"][0]["image"] = serde_json::json!("");
    let r = h.post_json(pods, &bad).unwrap();
    assert_eq!(r.code, 422);
    assert_eq!(
        r.json()["details"]["causes"][0]["field"],
        "spec.containers[0].image"
    );

    // Kind and namespace must match the URL.
    let r = h
        .post_json(
            "/api/v1/namespaces/kube-system/pods",
            &pod_json("p", "default"),
        )
        .unwrap();
    assert_eq!(r.code, 400);
    let r = h
        .post_json(
            "/api/v1/namespaces/default/services",
            &pod_json("p", "default"),
        )
        .unwrap();
    assert_eq!(r.code, 400);
    let r = h
        .post_json("/api/v1/namespaces/nowhere/pods", &pod_json("p", "nowhere"))
        .unwrap();
    assert_eq!(r.code, 404);

    // 201, then 409 for a duplicate and for a stale resourceVersion.
    let r = h.post_json(pods, &pod_json("p", "default")).unwrap();
    assert_eq!(r.code, 201);
    assert_eq!(
        h.post_json(pods, &pod_json("p", "default")).unwrap().code,
        409
    );
    // A Service: no controller writes to it behind the test's back (the scheduler does to
    // an unschedulable pod).
    let svcs = "/api/v1/namespaces/default/services";
    let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80}]}});
    let created = h.post_json(svcs, &svc).unwrap().json();
    let mut first = created.clone();
    first["metadata"]["labels"]["v"] = serde_json::json!("1");
    assert_eq!(h.put_json(&format!("{svcs}/s"), &first).unwrap().code, 200);
    let mut stale = created.clone();
    stale["metadata"]["labels"]["v"] = serde_json::json!("2");
    let r = h.put_json(&format!("{svcs}/s"), &stale).unwrap();
    assert_eq!(r.code, 409);
    assert_eq!(r.json()["reason"], "Conflict");
    let r = h
        .request(
            "DELETE",
            &format!("{pods}/p"),
            Some("application/json"),
            b"{\"gracePeriodSeconds\": \"soon\"}",
            true,
        )
        .unwrap();
    assert_eq!(r.code, 400);

    // 410 for a compacted watch revision (the change log holds 4 changes here).
    for i in 0..8 {
        assert_eq!(
            h.post_json(pods, &pod_json(&format!("c{i}"), "default"))
                .unwrap()
                .code,
            201
        );
    }
    let (code, _) = h
        .watch(&format!("{pods}?watch=true&resourceVersion=1"))
        .unwrap();
    assert_eq!(code, 410);

    // Still healthy after all of that.
    assert_eq!(
        h.request("GET", "/healthz", None, b"", false).unwrap().code,
        200
    );
    assert_eq!(
        h.request("GET", "/readyz", None, b"", false).unwrap().code,
        200
    );
}

#[test]
fn watch_streams_one_json_event_per_line_from_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let h = m.http();
    let pods = "/api/v1/namespaces/default/pods";
    let list = h.get(pods).unwrap().json();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, mut reader) = h
        .watch(&format!(
            "{pods}?watch=true&resourceVersion={rv}&labelSelector=app%3Dbench"
        ))
        .unwrap();
    assert_eq!(code, 200);
    h.post_json(pods, &pod_json("one", "default")).unwrap();
    let mut other = pod_json("other", "default");
    other["metadata"]["labels"]["app"] = serde_json::json!("x");
    h.post_json(pods, &other).unwrap();
    let r = h
        .request("DELETE", &format!("{pods}/one"), None, b"", true)
        .unwrap();
    assert_eq!(r.code, 200);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "one");
    // The scheduler may mark it unschedulable in between (MODIFIED); then it is deleted.
    // "other" never appears: the selector filters it out.
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            ev["object"]["metadata"]["name"], "one",
            "the unmatched pod must be filtered out"
        );
        if ev["type"] == "DELETED" {
            break;
        }
        assert_eq!(ev["type"], "MODIFIED");
    }
}

#[test]
fn metrics_count_requests_and_objects() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let h = m.http();
    h.post_json("/api/v1/namespaces/default/pods", &pod_json("p", "default"))
        .unwrap();
    h.get("/api/v1/namespaces/default/pods/missing").unwrap();
    assert_eq!(
        h.request("GET", "/metrics", None, b"", false).unwrap().code,
        401
    );
    let text = String::from_utf8(h.get("/metrics").unwrap().body).unwrap();
    for want in [
        "bramble_apiserver_request_total{verb=\"create\",resource=\"pods\",code=\"201\"} 1",
        "bramble_apiserver_request_total{verb=\"get\",resource=\"pods\",code=\"404\"} 1",
        "bramble_apiserver_request_duration_seconds_count{verb=\"create\"} 1",
        "bramble_store_objects{kind=\"Pod\"} 1",
        "bramble_store_objects{kind=\"Namespace\"} 2",
        "bramble_store_revision ",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn invalid_configuration_exits_64_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| {
        Command::new(bin("bramble-master"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let out = run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "not-an-address",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("--listen"));
    assert!(
        !data.exists(),
        "nothing may be written for an invalid config"
    );
    let cfg = dir.path().join("master.yaml");
    std::fs::write(&cfg, "listen: 127.0.0.1:0\nlistenn: 1\n").unwrap();
    let out = run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "-c",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("listenn"), "{}", stderr(&out));
    assert!(!data.exists());
}

#[test]
fn restart_keeps_objects_and_credentials_and_sigterm_is_graceful() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let token = m.token.clone();
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&pod_yaml("kept", "default", "")),
    ));
    for f in ["admin.token", "reader.token", "client.yaml"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} must be private");
    }
    let client = std::fs::read_to_string(dir.path().join("client.yaml")).unwrap();
    assert!(client.contains(&format!("server: {}", m.url)) && client.contains(&token));
    // An open watch must not hold up a graceful shutdown.
    let (_code, _reader) = m.http().watch("/api/v1/pods?watch=true").unwrap();
    assert_eq!(m.terminate(), Some(0));

    let m = MasterProcess::start(dir.path()).unwrap();
    assert_eq!(m.token, token, "the admin token survives a restart");
    let out = ok_stdout(&m.cli(&["get", "pod", "kept", "-o", "name"]));
    assert_eq!(out, "pod/kept\n");
    // The CLI finds the master through the client config alone.
    let out = Command::new(bin("bramble"))
        .args(["get", "pods", "-o", "name"])
        .env("BRAMBLE_CONFIG", dir.path().join("client.yaml"))
        .env_remove("BRAMBLE_SERVER")
        .env_remove("BRAMBLE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&out), "pod/kept\n");
    assert!(eventually(Duration::from_secs(5), || m
        .http()
        .get("/readyz")
        .map(|r| r.code == 200)
        .unwrap_or(false)));
}

#[test]
fn the_reader_token_reads_and_watches_but_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let reader = m.reader_token();
    assert_ne!(reader, m.token);
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&pod_yaml("seen", "default", "")),
    ));
    let h = m.http_as(&reader);
    let list = h.get("/api/v1/namespaces/default/pods").unwrap();
    assert_eq!(list.code, 200);
    assert_eq!(list.json()["items"][0]["metadata"]["name"], "seen");
    let (code, _stream) = h.watch("/api/v1/pods?watch=true").unwrap();
    assert_eq!(code, 200);
    let write = h
        .post_json(
            "/api/v1/namespaces/default/pods",
            &serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nope"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .unwrap();
    assert_eq!(write.code, 403);
    assert!(
        String::from_utf8_lossy(&write.body).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&write.body)
    );
    let bad = m.http_as("not-a-token").get("/api/v1/pods").unwrap();
    assert_eq!(bad.code, 401);
    // Monitoring scrapes with the reader token.
    let metrics = h.get("/metrics").unwrap();
    assert_eq!(metrics.code, 200);
    assert!(String::from_utf8_lossy(&metrics.body).contains("bramble_store_revision"));
}

#[test]
fn numbers_from_a_request_are_checked_or_clamped_never_overflowed() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let reader = m.reader_token();
    // A watch timeout past the end of time is no timeout (it aborted the master once).
    let r = m.http_as(&reader);
    for t in ["9223372036854775807", "18446744073709551615"] {
        let (code, _stream) = r
            .watch(&format!("/api/v1/pods?watch=true&timeoutSeconds={t}"))
            .unwrap();
        assert_eq!(code, 200, "timeoutSeconds={t}");
    }
    let (code, _) = r
        .watch("/api/v1/pods?watch=true&timeoutSeconds=-1")
        .unwrap();
    assert_eq!(code, 400);
    // Grace periods: the body is checked as the query is.
    let h = m.http();
    let pods = "/api/v1/namespaces/default/pods";
    for (i, body) in [
        "{\"gracePeriodSeconds\": -5}",
        "{\"gracePeriodSeconds\": 9223372036854775807}",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("g{i}");
        assert_eq!(
            h.post_json(pods, &pod_json(&name, "default")).unwrap().code,
            201
        );
        let r = h
            .request(
                "DELETE",
                &format!("{pods}/{name}"),
                Some("application/json"),
                body.as_bytes(),
                true,
            )
            .unwrap();
        assert_eq!(r.code, 400, "{body}: {}", String::from_utf8_lossy(&r.body));
        assert!(
            String::from_utf8_lossy(&r.body).contains("gracePeriodSeconds"),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            h.get(&format!("{pods}/{name}")).unwrap().code,
            200,
            "nothing deleted"
        );
    }
    let r = h
        .request(
            "DELETE",
            &format!("{pods}/g0?gracePeriodSeconds=9223372036854775807"),
            None,
            b"",
            true,
        )
        .unwrap();
    assert_eq!(r.code, 400);
    // Still healthy after all of that.
    assert_eq!(
        h.request("GET", "/healthz", None, b"", false).unwrap().code,
        200
    );
}

/// `GET /healthz` on a fresh connection: the status code, or 0 when the connection failed.
fn healthz(addr: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return 0;
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let head = String::from_utf8_lossy(&out);
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Whether the peer closed `c` (end of file or a reset) within `within`; false when the
/// socket is still open when the time is up.
fn closed_by_peer(c: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                );
            }
        }
    }
}

#[test]
fn idle_sockets_cannot_starve_the_api() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start_with(
        dir.path(),
        // Raw HTTP on the socket: the cap and the deadline are the same with TLS (see
        // the_tls_port_refuses_what_is_not_tls).
        &[
            "--max-connections",
            "40",
            "--request-header-timeout",
            "1s",
            "--insecure-plaintext",
        ],
    )
    .unwrap();
    let addr = m.url.trim_start_matches("http://").to_string();
    assert_eq!(healthz(&addr), 200);
    // 40 long-lived watches hold every place (they are not subject to the first-request
    // deadline, so the cap is checked without racing it).
    let watch = format!(
        "GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        m.reader_token()
    );
    let watches: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(watch.as_bytes()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = [0u8; 12];
            c.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 200", "a watch is served");
            c
        })
        .collect();
    // Beyond the cap, a flood of sockets is answered 503 at once (not left waiting, not
    // reset).
    let mut extra: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    for c in extra.iter_mut().take(5) {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 503"), "{out:?}");
    }
    assert_eq!(healthz(&addr), 503, "the cap holds");
    drop(extra);
    drop(watches);
    assert!(eventually(Duration::from_secs(5), || healthz(&addr) == 200));
    // Silent sockets are closed after the first-request deadline (1 s), so they cannot
    // hold places either.
    let mut idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    for c in &mut idle {
        assert!(
            closed_by_peer(c, Duration::from_secs(10)),
            "an idle socket was kept open"
        );
    }
    assert!(eventually(Duration::from_secs(5), || healthz(&addr) == 200));
    // Nor can sockets that trickle their headers a byte at a time (slowloris): the whole
    // head of the first request must arrive within the deadline.
    let trickle: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let mut open = trickle;
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for &b in head.iter() {
        open.retain_mut(|c| c.write_all(&[b]).is_ok());
        if open.is_empty() || started.elapsed() > Duration::from_secs(8) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in &mut open {
        assert!(
            closed_by_peer(c, Duration::from_secs(5)),
            "a trickling socket was kept open"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the trickling sockets lived {:?}",
        started.elapsed()
    );
    // A client that speaks in time is not cut off by the deadline.
    let h = m.http();
    assert_eq!(h.get("/api/v1/pods").unwrap().code, 200);
}

#[test]
fn the_tls_port_refuses_what_is_not_tls() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start_with(
        dir.path(),
        &["--max-connections", "3", "--request-header-timeout", "1s"],
    )
    .unwrap();
    assert!(
        m.url.starts_with("https://"),
        "TLS is the default: {}",
        m.url
    );
    let addr = m.url.trim_start_matches("https://").to_string();
    // Plain HTTP gets a plain answer that says what is wrong, then a close.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.0 400") && out.contains("HTTPS"),
        "{out:?}"
    );
    // A TLS record of garbage: closed, nothing served.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    assert!(
        closed_by_peer(&mut c, Duration::from_secs(5)),
        "a garbage handshake was kept open"
    );
    // A socket that never starts its handshake is closed at the deadline.
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    assert!(
        closed_by_peer(&mut silent, Duration::from_secs(10)),
        "a silent socket was kept open"
    );
    // Over the cap, a TLS client is told 503 in TLS.
    let h = m.http();
    let (_w1, _r1) = h.watch("/api/v1/pods?watch=true").unwrap();
    let (_w2, _r2) = h.watch("/api/v1/pods?watch=true").unwrap();
    let (_w3, _r3) = h.watch("/api/v1/pods?watch=true").unwrap();
    assert_eq!(h.get("/healthz").unwrap().code, 503);
    drop((_r1, _r2, _r3));
    assert!(eventually(Duration::from_secs(5), || h
        .get("/healthz")
        .is_ok_and(|r| r.code == 200)));
    // Another cluster's CA does not verify this master.
    let other_dir = tempfile::tempdir().unwrap();
    let other = MasterProcess::start(other_dir.path()).unwrap();
    assert_ne!(other.ca_pem, m.ca_pem, "every cluster makes its own CA");
    let untrusted = bramble_tests::Http::with_ca(&m.url, &m.token, other.ca_pem.as_deref());
    assert!(untrusted.get("/healthz").is_err());
}

#[test]
fn hostile_yaml_bodies_are_refused_before_they_are_built() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(dir.path()).unwrap();
    let h = m.http();
    let pods = "/api/v1/namespaces/default/pods";
    // A linear alias bomb: one big anchor, copied by every alias.
    let mut aliases = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bomb\n  labels: &big {{{}}}\n  annotations:\n",
        (0..200)
            .map(|i| format!("k{i}: v"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for i in 0..2000 {
        aliases.push_str(&format!("    a{i}: *big\n"));
    }
    let deep = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: deep}}\nspec: {}",
        "[".repeat(100_000)
    );
    for (body, why) in [(aliases, "aliases"), (deep, "nested more than 100 levels")] {
        let r = h
            .request(
                "POST",
                pods,
                Some("application/yaml"),
                body.as_bytes(),
                true,
            )
            .unwrap();
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.code, 400, "{text}");
        assert!(text.contains(why), "{text}");
    }
    assert_eq!(
        h.request("GET", "/healthz", None, b"", false).unwrap().code,
        200
    );

    // Large bodies that are valid YAML (nearly 1 MiB each, eight at once) are decoded off
    // the async workers, one per core at a time: health checks are answered meanwhile.
    let big = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: big\n  annotations:\n{}spec:\n  containers: [{{name: c, image: busybox}}]\n",
        (0..14_000)
            .map(|i| format!("    k{i:05}: \"{}\"\n", "v".repeat(56)))
            .collect::<String>()
    );
    assert!(
        big.len() > 900 << 10 && big.len() < 1 << 20,
        "{}",
        big.len()
    );
    let posts: Vec<_> = (0..8)
        .map(|_| {
            let (h, big) = (m.http(), big.clone());
            std::thread::spawn(move || {
                h.request("POST", pods, Some("application/yaml"), big.as_bytes(), true)
                    .map(|r| r.code)
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    while !posts.iter().all(|p| p.is_finished()) {
        let t = std::time::Instant::now();
        assert_eq!(
            h.request("GET", "/healthz", None, b"", false).unwrap().code,
            200
        );
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in posts {
        let code = p.join().unwrap().unwrap();
        assert!((200..500).contains(&code), "a big body got {code}");
    }
    assert!(
        slowest < Duration::from_secs(2),
        "/healthz took {slowest:?}"
    );
}

/// 1,100 idle connections to the broker's and the API's ports of a master limited to 1,024
/// open files (systemd's default): nothing floods the log (rumqttd's accept loop once wrote
/// 7.5 GB of "Too many open files" in 70 s), and once they are gone, the master serves the
/// API and boards connect again.
#[test]
fn a_socket_flood_at_the_file_limit_neither_floods_the_log_nor_sticks() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("master.log");
    let m =
        MasterProcess::start_limited(&dir.path().join("m"), &[], Some(1024), Some(&log)).unwrap();
    let probe = bramble_agent::join::join(
        &m.url,
        &m.join_token(),
        "probe",
        &bramble_api::wire::NodeFacts::default(),
    )
    .unwrap();
    let api = m.url.trim_start_matches("https://").to_string();
    let mqtt = format!("127.0.0.1:{}", m.mqtt_port);
    let mut flood = Vec::new();
    for i in 0..1100 {
        let to = if i % 2 == 0 { &api } else { &mqtt };
        if let Ok(c) = std::net::TcpStream::connect(to) {
            flood.push(c);
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(
        size < 256 << 10,
        "the log grew to {size} bytes during the flood"
    );
    drop(flood);
    assert!(
        eventually(Duration::from_secs(15), || m
            .http()
            .get("/api/v1/nodes")
            .is_ok_and(|r| r.code == 200)),
        "the API did not come back"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connected = rt.block_on(async {
        // A board connects as usual.
        let mut opts = m.mqtt_options("probe");
        opts.set_credentials("probe", &probe.node_token);
        let (_c, mut ev) = rumqttc::AsyncClient::new(opts, 8);
        let r = tokio::time::timeout(Duration::from_secs(10), ev.poll()).await;
        matches!(
            r,
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))))
        )
    });
    assert!(connected, "the broker did not answer after the flood");
    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(size < 256 << 10, "the log grew to {size} bytes");
}
